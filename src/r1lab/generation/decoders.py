"""The generic decoder for any Hugging Face causal LM, and the choice between it and the static-KV one.

A decoder has ``prefill(prompt_ids, prompt_mask) -> (B, V) logits`` and ``step(tokens) -> (B, V)``;
the sampling loop (``r1lab.generation.sampling``) drives either. ``HFDecoder`` runs the model's own
forward with its ``DynamicCache``; ``StaticCacheDecoder`` (``r1lab.generation.static_kv``) does fewer ops
per token for Llama/Qwen2 models. Both give the same tokens and log-probs for a seed (tested).
"""

from __future__ import annotations

import inspect

import torch

from r1lab.generation.static_kv import StaticCacheDecoder
from r1lab.tensors import positions_from_mask

DECODERS = ("auto", "static_kv", "hf")


def cache_keyword(model) -> str:
    """The forward's KV-cache argument: ``cache`` in transformers >= 5.2x (which deprecates
    ``past_key_values`` and removes it in 5.40), ``past_key_values`` before."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name (see ``cache_keyword``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class HFDecoder:
    """The generic path for any Hugging Face causal LM: its own forward with a ``DynamicCache``."""

    name = "hf"

    def __init__(self, model) -> None:
        self.model, self.cache_keyword = model, cache_keyword(model)

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        self.attention = prompt_mask.long()
        positions = positions_from_mask(self.attention)  # (B, P)
        out = self.model(input_ids=prompt_ids, attention_mask=self.attention, position_ids=positions, use_cache=True)
        self.cache, self.next_pos = returned_cache(out), positions[:, -1:] + 1  # (B, 1)
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=-1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attention, position_ids=self.next_pos,
                         use_cache=True, **{self.cache_keyword: self.cache})
        self.cache, self.next_pos = returned_cache(out), self.next_pos + 1
        return out.logits[:, -1]


def make_decoder(model, max_new_tokens: int, decoder: str = "auto"):
    """``static_kv`` where the architecture allows it (``auto``, or asked for by name: then a model it
    does not cover is an error), else the generic ``hf`` one. Returns (decoder, description)."""
    if decoder not in DECODERS:
        raise ValueError(f"rollout.engine: unknown decoder {decoder!r} (use one of {DECODERS})")
    if decoder == "hf":
        return HFDecoder(model), "hf"
    why = StaticCacheDecoder.unsupported(model)
    if why is None:
        return StaticCacheDecoder(model, max_new_tokens), "static_kv"
    if decoder == "static_kv":
        raise ValueError(f"rollout.engine=static_kv: this model cannot use the static-KV decoder ({why}); "
                         "use rollout.engine=auto or hf")
    return HFDecoder(model), f"hf ({why})"
