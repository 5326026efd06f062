"""Backbones: the tiny preset (random init, local tokenizer) or any Hugging Face causal LM."""

from r1lab.models.backbone import Backbone, count_parameters
from r1lab.models.tokenizer import build_tiny_tokenizer, load_tokenizer

__all__ = ["Backbone", "build_tiny_tokenizer", "count_parameters", "load_tokenizer"]
