"""r1lab: the DeepSeek-R1 training pipeline as a PyTorch Lightning + Hydra experiment project."""

__version__ = "0.1.0"
