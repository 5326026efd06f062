"""Supervised fine-tuning: cold start, SFT round 2, and plain language-model pretraining of a base model.

DeepSeek-R1's cold start fine-tunes the base model on a few thousand long, readable chains of thought
with the usual token cross-entropy on the response only (prompt tokens masked). ``loss_on="all"``
trains on every token instead: that is how the tiny world's *base* model is pretrained on its corpus.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lab.data.collate import IGNORE
from r1lab.modules.base import PolicyModule


def response_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over the labelled tokens, and their count.

    logits: (B, T, V) for input positions; labels: (B, T) with IGNORE (-100) where no loss is taken.
    Position t predicts label t+1 (the usual causal shift).
    """
    shift_logits = logits[:, :-1].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    n_tokens = (shift_labels != IGNORE).sum()
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss / n_tokens.clamp(min=1), n_tokens


class ColdStartSFT(PolicyModule):
    """Args (besides ``PolicyModule``'s):
        loss_on: ``response`` (SFT, prompt masked) or ``all`` (base-model pretraining on whole sequences).
    """

    def __init__(self, backbone, optimizer=None, scheduler=None, evaluation=None, loss_on: str = "response",
                 rollout: dict | None = None, nonfinite: str = "stop") -> None:
        super().__init__(backbone, optimizer, scheduler, evaluation, rollout, nonfinite)
        if loss_on not in ("response", "all"):
            raise ValueError(f"module.loss_on: {loss_on!r} is not 'response' or 'all'")
        self.loss_on = loss_on

    def _labels(self, batch: dict) -> torch.Tensor:
        if self.loss_on == "response":
            return batch["labels"]
        return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        logits = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n_tokens = response_cross_entropy(logits, self._labels(batch))
        finite = self.finite_or_skip("train/loss", loss)
        self.log_skipped()
        if not finite:
            return None  # no backward, no optimiser step
        self.log_dict({"train/loss": loss, "train/tokens": n_tokens.float()}, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, _ = response_cross_entropy(logits, self._labels(batch))
        self.log("val/loss", loss, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        super().validation_step(batch, batch_idx)
