"""Process reward model training: a logit at every step's last token against its 0/1 label.

The network and its export are the outcome reward model's (``*ForSequenceClassification``, one
logit; ``r1lab.rm.model``), read at each step's end (``r1lab.rm.process``): one forward scores every
step of a batch. ``python -m r1lab.train stage=prm``: the shared DataModule in mode ``steps`` hands
over step-labelled rows ``{prompt, completion, labels}`` (``data=step_labels``: the tiny world's
references and arithmetic slips, labelled by the rule verifier), which this module tokenizes with its
step rule (``r1lab.rm.process.step_batch``) the way the DataModule tokenizes everything else.
Validation and test report the step accuracy and the share of completions whose every step is
classified right. The export (``hf/``) is what GRPO's ``module.step_rewards`` loads
(``r1lab.rm.ProcessReward``).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from r1lab.data.collate import Tokenized
from r1lab.models.backbone import Backbone
from r1lab.modules.base import PolicyModule, export_hf
from r1lab.modules.guards import check_optimizer
from r1lab.rm.model import build_reward_model
from r1lab.rm.process import step_batch, step_logits, step_loss, write_process_settings


class ProcessRewardModel(L.LightningModule):
    """Args:
        backbone: the ``Backbone`` whose architecture (and, from a path, body weights) the PRM takes.
        optimizer, scheduler: partial factories, as in every stage.
        step_rule: the rule its steps are split by (recorded in the export).
        evaluation: the policy stages' generation settings (``debug=fast`` sets them for every stage);
            unused: a PRM is evaluated by classifying the held-out steps, not by generating.
    """

    def __init__(self, backbone: Backbone, optimizer=None, scheduler=None, step_rule: str = "sentence",
                 evaluation: dict | None = None) -> None:
        super().__init__()
        check_optimizer(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        self.backbone, self.tokenizer, self.step_rule = backbone, backbone.tokenizer, step_rule
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model: torch.nn.Module | None = None
        self.tok: Tokenized | None = None  # how the rows are tokenized: the DataModule's (``setup``)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = build_reward_model(self.backbone).train()

    configure_optimizers = PolicyModule.configure_optimizers
    optimizers_for = PolicyModule.optimizers_for

    def forward(self, batch: dict) -> torch.Tensor:
        """(B, K) step logits."""
        return step_logits(self.model, batch["input_ids"], batch["attention_mask"], batch["step_index"])

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if "records" in batch:  # from the DataModule (mode steps): tokenized here, with the step rule
            batch = self.step_tensors(batch["records"])
        return step_loss(self(batch), batch["step_labels"], batch["step_mask"])

    def step_tensors(self, rows: list[dict]) -> dict:
        batch = step_batch(self.tok, [r["prompt"] for r in rows], [r["completion"] for r in rows], self.step_rule,
                           labels=[r["labels"] for r in rows])
        return {k: v.to(self.device) for k, v in batch.items()}

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.tok is None and datamodule is not None:
            self.tok = datamodule.tokenized()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, metrics = self._loss(batch)
        self.log_dict({"train/loss": loss.detach(), "train/step_accuracy": metrics["step_accuracy"]}, sync_dist=True)
        return loss

    def _eval_step(self, batch: dict, split: str) -> None:
        tensors = self.step_tensors(batch["records"])
        logits = self(tensors)
        loss, metrics = step_loss(logits, tensors["step_labels"], tensors["step_mask"])
        mask = tensors["step_mask"]
        right = ((logits > 0) == (tensors["step_labels"] > 0.5)) | ~mask  # (B, K)
        # the loss and step accuracy are means over steps, so the epoch weights each batch by its steps
        self.log_dict({f"{split}/loss": loss, f"{split}/step_accuracy": metrics["step_accuracy"]},
                      sync_dist=True, batch_size=max(1, int(mask.sum())), on_epoch=True, on_step=False)
        self.log(f"{split}/all_steps_accuracy", right.all(-1).float().mean(), sync_dist=True,
                 batch_size=len(batch["records"]), on_epoch=True, on_step=False)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def export_hf(self, path: str | Path, tok: Tokenized | None = None) -> Path:
        """A ``*ForSequenceClassification`` folder, its tokenizer and ``r1lab_reward.json`` (kind:
        process, the step rule, how ``tok`` tokenizes), which ``r1lab.rm.ProcessReward`` loads."""
        tok = tok if tok is not None else self.tok
        trainer = self._trainer if self._trainer is not None else None
        return export_hf(self.model, self.tokenizer, path, trainer,
                         extra=lambda folder: write_process_settings(folder, tok, self.step_rule))
