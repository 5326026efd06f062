"""Strategy factories for configs that need Python objects (FSDP's wrapping policy)."""

from __future__ import annotations

import functools

import torch


def _is_decoder_layer(module: torch.nn.Module) -> bool:
    # Every transformers decoder-only family names its block *DecoderLayer (LlamaDecoderLayer, ...).
    return type(module).__name__.endswith("DecoderLayer")


def fsdp(sharding_strategy: str = "FULL_SHARD", activation_checkpointing: bool = False, **kwargs):
    """An ``FSDPStrategy`` that wraps each decoder layer of any Hugging Face causal LM."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=_is_decoder_layer)
    extra = {}
    if activation_checkpointing:
        extra["activation_checkpointing_policy"] = policy
    return FSDPStrategy(auto_wrap_policy=policy, sharding_strategy=sharding_strategy, **extra, **kwargs)
