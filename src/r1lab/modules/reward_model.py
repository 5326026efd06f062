"""Reward-model training on preference pairs (the neural reward of R1 §2.3.4, DeepSeekMath §4.2).

One forward scores every chosen and rejected sequence of a batch; the Bradley–Terry loss of
``r1lab.rm.losses`` ranks them. Two kinds of reward (``r1lab.rm.model``): ``scalar``, a head read at
each sequence's last real token (InstructGPT, R1), and ``likelihood``, β times the causal LM's own
log-probability of the response (optionally relative to a frozen reference: DPO's implicit reward).
Validation and test report held-out pair accuracy (share of pairs the model orders as the data
does), the mean margin r_chosen − r_rejected and the range of the rewards. The export is a
``*ForSequenceClassification`` folder (scalar) or a causal-LM folder (likelihood) plus
``r1lab_reward.json`` (the kind and how it tokenizes), which ``r1lab.rm.NeuralReward`` loads inside GRPO.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.aggregation import MaxMetric, MeanMetric, MinMetric

from r1lab.data.collate import IGNORE
from r1lab.models.backbone import DTYPES, Backbone
from r1lab.modules.base import PolicyModule, export_hf, log_epoch_metrics
from r1lab.modules.guards import FiniteSteps, check_nonfinite_mode, check_optimizer
from r1lab.rm.losses import bradley_terry_loss
from r1lab.rm.model import (
    KINDS,
    REDUCTIONS,
    SETTINGS_FILE,
    build_reward_model,
    export_settings,
    likelihood_rewards,
    reward_kind,
    sequence_rewards,
)

EVAL_METRICS = {"loss": MeanMetric, "accuracy": MeanMetric, "margin": MeanMetric, "reward_mean": MeanMetric,
                "reward_min": MinMetric, "reward_max": MaxMetric}


def _pad_to(ids: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=value)


class RewardModel(FiniteSteps, L.LightningModule):
    """Args:
        backbone: the ``Backbone`` whose architecture (and, from a path, weights) the model takes.
        optimizer: a partial optimizer (``_partial_: true``), completed with the parameters here.
        scheduler: a partial schedule taking ``optimizer`` and ``total_steps``, or None.
        center_coef: c of the reward-centering term c·mean((r_c + r_r)²) (0 = off).
        use_margin: subtract each pair's ``margin`` inside the sigmoid (Llama 2's margin loss).
        kind: ``scalar`` (a head at the last token) or ``likelihood`` (β·log π_θ of the response).
        beta, reduction, reference: the likelihood kind's scale β, ``sum`` or ``mean`` over response
            tokens, and an optional frozen reference model (a causal-LM folder) whose log-probability
            is subtracted (DPO's implicit reward); ignored by the scalar kind.
        evaluation: the policy stages' evaluation settings; only ``num_text_samples`` applies here
            (held-out pairs logged as text with their rewards); pair accuracy needs no generation.
        nonfinite: ``stop`` or ``skip`` a step whose loss or gradient norm is not finite.
    """

    def __init__(self, backbone: Backbone, optimizer=None, scheduler=None, center_coef: float = 0.0,
                 use_margin: bool = False, evaluation: dict | None = None, kind: str = "scalar",
                 beta: float = 1.0, reduction: str = "sum", reference: str | None = None,
                 nonfinite: str = "stop") -> None:
        super().__init__()
        self.nonfinite = check_nonfinite_mode(nonfinite)
        check_optimizer(optimizer, scheduler)
        if kind not in KINDS:
            raise ValueError(f"module.kind: {kind!r} is not one of {KINDS}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"module.reduction: {reduction!r} is not one of {REDUCTIONS}")
        if kind == "likelihood" and not beta > 0:
            raise ValueError(f"module.beta: the likelihood reward's scale must be > 0, got {beta}")
        self.kind, self.beta, self.reduction = kind, float(beta), reduction
        self.reference_path = None if reference in (None, "") else str(reference)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.center_coef, self.use_margin = center_coef, use_margin
        self.num_text_samples = int((evaluation or {}).get("num_text_samples", 4))
        self.model: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.eval_metrics = torch.nn.ModuleDict(
            {f"{split}_{name}": cls() for split in ("val", "test") for name, cls in EVAL_METRICS.items()}
        )

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.check_continuation()
        if self.kind == "scalar":
            self.model = build_reward_model(self.backbone).train()  # from_pretrained returns eval mode
            return
        self.model = self.backbone.build_model().train()
        if self.reference_path is not None:
            dtype = next(name for name, d in DTYPES.items() if d == self.model.dtype)
            self.reference = Backbone(name_or_path=self.reference_path, dtype=dtype).build_model()
            self.reference.eval().requires_grad_(False)

    def check_continuation(self) -> None:
        """Continuing an earlier reward model (iterative RL) must keep what its scores mean: the same
        kind and, for the likelihood kind, the β, reduction and reference its export recorded."""
        path = self.backbone.name_or_path
        start = reward_kind(path) if path else None
        if start is None:
            return
        if start != self.kind:
            raise ValueError(f"module.kind: {self.kind!r}, but backbone.name_or_path {path} "
                             f"is a {start!r} reward model; continue it with module.kind={start}")
        if self.kind == "likelihood":
            recorded = export_settings(path)
            for key, ours in (("beta", self.beta), ("reduction", self.reduction), ("reference", self.reference_path)):
                if key in recorded and recorded[key] != ours:
                    raise ValueError(f"module.{key}: {ours}, but {path} was trained with {key} {recorded[key]}; "
                                     f"continue it with module.{key}={recorded[key]}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) rewards of right- or left-padded sequences; the likelihood kind needs ``labels``
        (token ids on the response, ``IGNORE`` elsewhere)."""
        if self.kind == "scalar":
            return sequence_rewards(self.model, input_ids, attention_mask)
        if labels is None:
            raise ValueError("a likelihood reward model scores the response tokens: pass labels")
        return likelihood_rewards(self.model, input_ids, attention_mask, labels, self.beta, self.reduction,
                                  self.reference)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: no dropout, whatever the trainer switches
        return self

    # the same completion of partial optimizer/scheduler configs as every policy stage
    configure_optimizers = PolicyModule.configure_optimizers
    optimizers_for = PolicyModule.optimizers_for

    def pair_rewards(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen (B,), r_rejected (B,)) from one forward over all 2B sequences."""
        chosen, rejected = batch["chosen_input_ids"], batch["rejected_input_ids"]
        width = max(chosen.shape[1], rejected.shape[1])
        pad = self.tokenizer.pad_token_id
        ids = torch.cat([_pad_to(chosen, width, pad), _pad_to(rejected, width, pad)])  # (2B, T)
        mask = torch.cat([_pad_to(batch["chosen_attention_mask"], width, 0),
                          _pad_to(batch["rejected_attention_mask"], width, 0)])
        labels = None
        if self.kind == "likelihood":
            labels = torch.cat([_pad_to(batch["chosen_labels"], width, IGNORE),
                                _pad_to(batch["rejected_labels"], width, IGNORE)])
        return self(ids, mask, labels).chunk(2)

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r_chosen, r_rejected = self.pair_rewards(batch)
        margin = batch["margin"].to(r_chosen) if self.use_margin else None
        return bradley_terry_loss(r_chosen, r_rejected, margin=margin, center_coef=self.center_coef)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        loss, metrics = self._loss(batch)
        finite = self.finite_or_skip("train/loss", loss)
        self.log_skipped()
        if not finite:
            return None  # no backward, no optimiser step
        log = {"train/loss": loss.detach()} | {f"train/{k}": v for k, v in metrics.items()
                                               if k in ("accuracy", "margin", "reward_mean")}
        self.log_dict(log, prog_bar=True, sync_dist=True, batch_size=batch["margin"].shape[0])
        return loss

    # -- held-out pairs ------------------------------------------------------------------------
    def _eval_step(self, batch: dict, split: str, batch_idx: int) -> None:
        r_chosen, r_rejected = self.pair_rewards(batch)
        margin = batch["margin"].to(r_chosen) if self.use_margin else None
        loss, metrics = bradley_terry_loss(r_chosen, r_rejected, margin=margin, center_coef=self.center_coef)
        n = batch["margin"].shape[0]
        if batch_idx == 0:
            self._log_pairs(f"{split}/pairs", batch["records"], r_chosen, r_rejected)
        for name, value in ({"loss": loss.detach()} | metrics).items():
            metric = self.eval_metrics[f"{split}_{name}"]
            if isinstance(metric, MeanMetric):
                metric.update(value, weight=n)  # a mean over pairs, not over batches
            else:
                metric.update(value)

    def _eval_epoch_end(self, split: str) -> None:
        log_epoch_metrics(self, split, EVAL_METRICS)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    @rank_zero_only
    def _log_pairs(self, tag: str, records: list[dict], r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> None:
        rows = ["| prompt | chosen | r_chosen | rejected | r_rejected |", "|---|---|---|---|---|"]
        for record, rc, rr in list(zip(records, r_chosen.tolist(), r_rejected.tolist()))[: self.num_text_samples]:
            cells = [record["prompt"], record["chosen"], f"{rc:.3f}", record["rejected"], f"{rr:.3f}"]
            rows.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and self.num_text_samples:
                logger.experiment.add_text(tag, "\n".join(rows), global_step=self.global_step)

    # -- export --------------------------------------------------------------------------------
    def export_hf(self, path: str | Path) -> Path:
        """A ``*ForSequenceClassification`` (scalar) or causal-LM (likelihood) folder that
        ``from_pretrained`` loads, its tokenizer, and ``r1lab_reward.json``: the kind (with β, the
        reduction and the reference for the likelihood kind) and how it tokenizes (template, system
        prompt, token limits)."""
        trainer = self.trainer if self._trainer is not None else None
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        settings = {"kind": self.kind}
        if self.kind == "likelihood":
            settings |= {"beta": self.beta, "reduction": self.reduction, "reference": self.reference_path}
        settings |= {key: getattr(datamodule, key) for key in
                     ("template", "system_prompt", "max_prompt_tokens", "max_response_tokens")
                     if hasattr(datamodule, key)}  # without a datamodule, NeuralReward's defaults apply

        def write_settings(folder: Path) -> None:  # inside the export before it gets its name
            (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))

        return export_hf(self.model, self.tokenizer, path, trainer, extra=write_settings)
