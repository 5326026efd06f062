"""Callbacks of every stage, and the checkpoint writer of every trainer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class HFExport(L.Callback):
    """At the end of fit, export the trained policy (or reward model) in Hugging Face format.

    The next stage of the pipeline loads this folder by name (``backbone.name_or_path=<run>/hf``), and
    so can transformers, vLLM or any other tool.

    ``weights="best"`` first restores the weights of the best checkpoint that the monitoring
    ``ModelCheckpoint`` kept (early stopping: a reward model that overfits its pairs exports its
    best held-out score), so the test that follows also scores those weights; ``"final"`` (the
    default) exports the weights as training left them.
    """

    def __init__(self, dirpath: str, weights: str = "final") -> None:
        if weights not in ("final", "best"):
            raise ValueError(f"callbacks.hf_export.weights: 'final' or 'best', got {weights!r}")
        self.dirpath, self.weights = Path(dirpath), weights

    def restore_best(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitoring = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
        best = monitoring[0].best_model_path if monitoring else ""
        if not best or not Path(best).is_file():
            raise FileNotFoundError("callbacks.hf_export.weights=best: no best checkpoint was written (is a "
                                    "ModelCheckpoint monitoring `optimized_metric`, and did validation run?)")
        state = torch.load(best, map_location=pl_module.device, weights_only=True)["state_dict"]
        pl_module.load_state_dict(state)
        log.info(f"Restored the best weights ({monitoring[0].monitor} = {float(monitoring[0].best_model_score):.4f}) "
                 f"from {best}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weights == "best":
            self.restore_best(trainer, pl_module)
        path = pl_module.export_hf(self.dirpath)
        if trainer.is_global_zero:
            log.info(f"Exported Hugging Face model to {path}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: ``torch.save`` into a temporary file in the checkpoint's
    own folder, flushed to disk, then renamed over the old file, so a kill while a checkpoint is being
    written leaves the previous one intact (Lightning's own writer stages the file in the system's
    temporary folder, from which the final move is a copy when that is another file system)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest state, every ``every_n_train_steps`` optimizer steps (a kill loses at
    most that many) and after the last step, so that a finished run can be continued too (saved then,
    before an export restores the best weights)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if 0 < trainer.max_steps <= trainer.global_step:
            self._save_final(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1:
            self._save_final(trainer)

    def _save_final(self, trainer: L.Trainer) -> None:
        if trainer.global_step != self._last_global_step_saved:
            path = self.format_checkpoint_name({})
            trainer.save_checkpoint(path)
            self._last_global_step_saved = trainer.global_step
            self.last_model_path = path
