"""Data: the tiny world's task generators, external data sources, prompt templates, collators and
the one LightningDataModule shared by every stage."""

from r1lab.data.datamodule import MODES, R1DataModule

__all__ = ["MODES", "R1DataModule"]
