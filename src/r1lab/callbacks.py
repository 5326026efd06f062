"""Callbacks of every stage."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

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
        import torch
        from lightning.pytorch.callbacks import ModelCheckpoint

        monitoring = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
        best = monitoring[0].best_model_path if monitoring else ""
        if not best or not Path(best).is_file():
            raise FileNotFoundError("callbacks.hf_export.weights=best: no best checkpoint was written (is a "
                                    "ModelCheckpoint monitoring `optimized_metric`, and did validation run?)")
        state = torch.load(best, map_location=pl_module.device, weights_only=False)["state_dict"]
        pl_module.load_state_dict(state)
        log.info(f"Restored the best weights ({monitoring[0].monitor} = {float(monitoring[0].best_model_score):.4f}) "
                 f"from {best}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weights == "best":
            self.restore_best(trainer, pl_module)
        path = pl_module.export_hf(self.dirpath)
        if trainer.is_global_zero:
            log.info(f"Exported Hugging Face model to {path}")
