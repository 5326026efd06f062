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
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = pl_module.export_hf(self.dirpath)
        if trainer.is_global_zero:
            log.info(f"Exported Hugging Face model to {path}")
