"""What every policy stage shares: the backbone, optimisers from partial configs, evaluation, export.

SFT, GRPO and distillation subclass ``PolicyModule``; each adds its own ``training_step``. The model is
created in ``configure_model`` so that sharded strategies (FSDP, DeepSpeed) can build it in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics import MeanMetric

from r1lab.evaluation import METRICS, EvalConfig, evaluate_batch, examples_markdown
from r1lab.generation import RolloutConfig, RolloutEngine, make_engine, mix_seed
from r1lab.models.backbone import Backbone, plain_model
from r1lab.models.tokenizer import save_tokenizer
from r1lab.modules.guards import (
    FiniteSteps,
    NonFiniteError,
    check_finite_parameters,
    check_nonfinite_mode,
    check_optimizer,
)


def export_hf(model: torch.nn.Module, tokenizer, path: str | Path, trainer=None, extra=None) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder; under DDP/FSDP every rank calls this.

    The full (unsharded) state dict is gathered to rank zero, which alone writes, so the export of a
    sharded FSDP run loads like any other. (DeepSpeed ZeRO-3 needs its own gather: use ZeRO-2 or FSDP.)
    Weights with NaN or inf are refused (``NonFiniteError``). The folder is written next to ``path``
    and then renamed into place, so a kill while exporting leaves the previous export (or none), never
    half of one; ``extra(folder)`` may add files before the rename.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    path = Path(path)
    model = plain_model(model)  # LoRA adapters merged: the export loads without peft
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    state = None
    if distributed:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if trainer is None or trainer.is_global_zero:
        check_finite_parameters(model, f"export to {path}")
        if state is not None and not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
            raise NonFiniteError(f"export to {path}: the gathered weights hold non-finite values; nothing was written")
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        model.save_pretrained(str(partial), state_dict=state, safe_serialization=True)
        save_tokenizer(tokenizer, partial)
        if extra is not None:
            extra(partial)
        replace_folder(partial, path)
    if trainer is not None:
        trainer.strategy.barrier("r1lab-export-hf")
    return path


def replace_folder(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path``; an old ``path`` is moved away first and removed after, so
    ``path`` is at every moment the old folder, absent, or the new one."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def peak_memory_gb(device: torch.device) -> float:
    """The run's peak memory so far, in GB: the accelerator's allocated peak on CUDA, else the
    process's peak resident set (``ru_maxrss``: every model, optimiser state and activation held)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux


def _metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def log_epoch_metrics(module: L.LightningModule, split: str, names, key=lambda name: name) -> dict:
    """Compute the ``module.eval_metrics[f"{split}_{key(name)}"]`` that were updated this epoch, reset
    all of them, and log the values as ``split/name`` (synchronised across ranks)."""
    logged = {}
    for name in names:
        metric = module.eval_metrics[f"{split}_{key(name)}"]
        if metric.update_called:
            logged[f"{split}/{name}"] = metric.compute()
        metric.reset()
    if logged:
        module.log_dict(logged, sync_dist=True)
    return logged


class PolicyModule(FiniteSteps, L.LightningModule):
    """Base of the policy stages.

    Hyperparameters (saved in every checkpoint) are the plain-data init arguments: the objects in
    ``not_hparams`` (models, factories, reward functions) stay out, so that a checkpoint holds tensors
    and plain data only and loads with ``torch.load(weights_only=True)``.

    Args:
        backbone: the ``Backbone`` (model + tokenizer) this stage trains.
        optimizer: a partial optimizer (``_partial_: true``), completed with the parameters here.
        scheduler: a partial schedule taking ``optimizer`` and ``total_steps``, or None.
        evaluation: ``EvalConfig`` fields (generation settings of validation and test).
        rollout: the ``rollout`` config (which engine samples: ``r1lab.generation.RolloutConfig``).
        nonfinite: ``stop`` or ``skip`` a step whose loss or gradient norm is not finite (``guards``).
    """

    not_hparams: tuple[str, ...] = ("backbone", "optimizer", "scheduler")

    def __init__(self, backbone: Backbone, optimizer=None, scheduler=None, evaluation: dict | None = None,
                 rollout: dict | None = None, nonfinite: str = "stop") -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.not_hparams), logger=False)
        self.nonfinite = check_nonfinite_mode(nonfinite)
        check_optimizer(optimizer, scheduler)
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_cfg = EvalConfig(**(evaluation or {}))
        self.rollout_cfg = RolloutConfig.of(rollout)
        self.policy: torch.nn.Module | None = None
        self._engine: RolloutEngine | None = None
        self.eval_metrics = torch.nn.ModuleDict(
            {f"{split}_{_metric_key(m)}": MeanMetric() for split in ("val", "test") for m in METRICS}
        )
        self._examples: dict[str, list[dict]] = {}
        self.test_rows: list[dict] = []  # per test prompt: its scores (train.py writes test_predictions.jsonl)

    # -- model ---------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is None:
            self.policy = self.backbone.build_model().train()  # from_pretrained returns eval mode

    def forward(self, **inputs):
        return self.policy(**inputs)

    @property
    def engine(self) -> RolloutEngine:
        """The rollout engine bound to the policy (built on first use, after ``configure_model``)."""
        if self._engine is None or self._engine.model is not self.policy:
            self._engine = make_engine(self.rollout_cfg, self.policy, self.tokenizer)
        return self._engine

    def close_engine(self) -> None:
        """Free the rollout engine (an engine with its own weights, vLLM, holds memory and a process group
        until closed); the next use builds a new one. ``r1lab.train`` calls it when a stage ends."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("module.optimizer is not set")
        return self.optimizers_for([p for p in self.parameters() if p.requires_grad])

    def optimizers_for(self, params: list):
        """The configured optimiser (and schedule) over ``params``: tensors, or parameter groups."""
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- evaluation ----------------------------------------------------------------------------
    def _eval_seed(self, split: str) -> int:
        """The seed of an evaluation batch's samples: per rank, and per step for validation (the test
        split is sampled alike at every step, so two stages' test numbers compare like with like)."""
        return mix_seed(0, self.global_rank, 1234 + (0 if split == "test" else self.global_step))

    def _eval_step(self, batch: dict, split: str) -> None:
        scores, examples = evaluate_batch(self.engine, batch, self.eval_cfg, self._eval_seed(split))
        for name, values in scores.items():
            key = f"{split}_{_metric_key(name)}"
            values = values[~values.isnan()]  # NaN: the metric does not apply to that prompt (chain_correct)
            if key in self.eval_metrics and values.numel():
                self.eval_metrics[key].update(values.to(self.device))
        if not self._examples.get(split):
            self._examples[split] = examples
        if split == "test":
            for i, record in enumerate(batch["records"]):
                self.test_rows.append({"prompt": record["prompt"], "answer": record.get("answer"),
                                       **{name: float(values[i]) for name, values in scores.items()
                                          if not values[i].isnan()}})

    def _eval_epoch_end(self, split: str) -> dict[str, float]:
        logged = log_epoch_metrics(self, split, METRICS, _metric_key)
        self._log_text(f"{split}/completions", examples_markdown(self._examples.pop(split, [])))
        return logged

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self.test_rows = []

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
        if self.trainer.world_size > 1:  # every rank's shard, on every rank
            shards = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shards, self.test_rows)
            self.test_rows = [row for shard in shards for row in shard]

    @rank_zero_only
    def _log_text(self, tag: str, text: str) -> None:
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger) and text:
                logger.experiment.add_text(tag, text, global_step=self.global_step)

    # -- export --------------------------------------------------------------------------------
    def export_hf(self, path: str | Path) -> Path:
        """Save the policy and tokenizer in Hugging Face format (``from_pretrained`` loads it)."""
        return export_hf(self.policy, self.tokenizer, path, self.trainer if self._trainer is not None else None)
