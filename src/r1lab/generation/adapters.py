"""Models with LoRA adapters (peft) in the rollout and log-prob code.

A ``PeftModel`` wraps the transformers model whose linear layers peft has replaced by LoRA layers;
running that inner model runs the adapters, so the decoders and the training pass work on
``unwrap(model)``. The static-KV decoder fuses weight matrices once per rollout: for a LoRA layer it
uses the effective weight W + Σ scale·B·A of its active adapters (``effective_weight``), so it samples
from exactly the adapted policy without merging anything into the model.
"""

from __future__ import annotations

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a ``PeftModel`` (with its LoRA layers in place), or ``model``."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and type(model).__name__.startswith("Peft") else model


def is_lora_linear(module: torch.nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")


def effective_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight a linear layer applies: its own, or for a LoRA layer the base weight plus the deltas of
    its active adapters (none when the adapters are disabled or already merged into the base)."""
    if not is_lora_linear(module):
        return module.weight
    weight = module.base_layer.weight
    if module.disable_adapters or module.merged:
        return weight
    for name in module.active_adapters:
        if name in module.lora_A:
            weight = weight + module.get_delta_weight(name).to(weight.dtype)
    return weight


def effective_bias(module: torch.nn.Module) -> torch.Tensor | None:
    return module.base_layer.bias if is_lora_linear(module) else module.bias


def is_linear(module: torch.nn.Module) -> bool:
    """A plain ``nn.Linear`` or a LoRA layer around one (what the static-KV decoder can fuse)."""
    return type(module) is torch.nn.Linear or (is_lora_linear(module) and type(module.base_layer) is torch.nn.Linear)
