"""Process reward model training: a logit at every step's last token against its 0/1 label.

The network and its export are the outcome reward model's (``*ForSequenceClassification``, one
logit; ``r1lab.rm.model``), read at each step's end (``r1lab.rm.process``): one forward scores every
step of a batch. Batches come from ``r1lab.rm.process.step_batch`` over rows labelled by the rule
verifier (``step_label_rows``). Not yet a Hydra stage: the shared DataModule has no mode for
step-labelled rows, so the model is trained by a loop of its own (see tests/test_process_reward_model.py).
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
from r1lab.rm.process import step_logits, step_loss, write_process_settings


class ProcessRewardModel(L.LightningModule):
    """Args:
        backbone: the ``Backbone`` whose architecture (and, from a path, body weights) the PRM takes.
        optimizer, scheduler: partial factories, as in every stage.
        step_rule: the rule its steps are split by (recorded in the export).
    """

    def __init__(self, backbone: Backbone, optimizer=None, scheduler=None, step_rule: str = "sentence") -> None:
        super().__init__()
        check_optimizer(optimizer, scheduler)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"], logger=False)
        self.backbone, self.tokenizer, self.step_rule = backbone, backbone.tokenizer, step_rule
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.model: torch.nn.Module | None = None

    def configure_model(self) -> None:
        if self.model is None:
            self.model = build_reward_model(self.backbone).train()

    configure_optimizers = PolicyModule.configure_optimizers

    def forward(self, batch: dict) -> torch.Tensor:
        """(B, K) step logits."""
        return step_logits(self.model, batch["input_ids"], batch["attention_mask"], batch["step_index"])

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return step_loss(self(batch), batch["step_labels"], batch["step_mask"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, metrics = self._loss(batch)
        self.log_dict({"train/loss": loss.detach(), "train/step_accuracy": metrics["step_accuracy"]}, sync_dist=True)
        return loss

    def export_hf(self, path: str | Path, tok: Tokenized) -> Path:
        """A ``*ForSequenceClassification`` folder, its tokenizer and ``r1lab_reward.json`` (kind:
        process, the step rule, how ``tok`` tokenizes), which ``r1lab.rm.ProcessReward`` loads."""
        trainer = self._trainer if self._trainer is not None else None
        return export_hf(self.model, self.tokenizer, path, trainer,
                         extra=lambda folder: write_process_settings(folder, tok, self.step_rule))
