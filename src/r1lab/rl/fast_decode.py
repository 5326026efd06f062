"""A static-KV-cache decoder for Llama/Qwen2-family causal LMs, used by the rollout sampler.

Why: for small models a decode step of the Hugging Face forward spends much of its time outside the
matmuls: it rebuilds a 4D mask from the growing attention mask, grows the ``DynamicCache`` with
``torch.cat`` (copying the whole cache every token), recomputes the rotary embedding, and goes through
output dataclasses and decorators. This decoder runs the same layers, with the model's own modules and
weights, and does per token only what the token needs:

* the K/V cache is allocated once per rollout, (B, kv_heads, P + max_new_tokens, head_dim) per layer,
  and each new token's K/V is written in place at its slot;
* the attention mask is one preallocated boolean "this slot is left padding" row per sequence,
  sliced to the slots written so far and applied with ``masked_fill``;
* RoPE cos/sin of every decode position are computed once per rollout, by the model's own
  ``rotary_emb``, and applied with the modeling module's own ``apply_rotary_pos_emb``;
* attention is two batched matmuls and a float32 softmax (as the eager HF attention; on CPU this is
  faster than ``scaled_dot_product_attention`` for one query token), and grouped-query attention needs
  no copy of the cache: the G query heads that share a K/V head are folded into the query axis;
* the prompt is prefilled once per distinct prompt (GRPO repeats each prompt G times) and its K/V rows
  are then copied to every row that has that prompt.

The norms, projections, MLP, final norm and ``lm_head`` are the model's own modules; the softmax scale
is the attention module's ``scaling``. Positions follow the sampler: left padding shifts them
(``cumsum(mask) - 1``), and every slot after the prompt is attended to, as with the generic path's
growing attention mask. Left-padding slots attend only to themselves, so their (never read) hidden
states stay finite.

``StaticCacheDecoder.unsupported(model)`` returns None when this decoder applies and otherwise the
reason the sampler falls back to the generic Hugging Face path: the model must be exactly a
``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (pre-norm attention + MLP with RoPE; other classes, PEFT
or ``torch.compile`` wrappers fall back), with unwrapped, unsharded layers (no FSDP/DeepSpeed), no
forward hooks, no sliding-window layers, a position-independent RoPE variant (not ``dynamic`` or
``longrope``), and no attention dropout in training mode.
"""

from __future__ import annotations

import sys

import torch

SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM")


class StaticCacheDecoder:
    """``prefill(prompt_ids, prompt_mask)`` then ``step(tokens)`` per new token; both return (B, V) logits."""

    @staticmethod
    def unsupported(model: torch.nn.Module) -> str | None:
        """Why ``model`` cannot use this decoder, or None when it can."""
        name = type(model).__name__
        if name not in SUPPORTED:
            return f"{name} is not one of {SUPPORTED}"
        config = model.config
        if not hasattr(sys.modules[type(model).__module__], "apply_rotary_pos_emb"):
            return "the modeling module has no apply_rotary_pos_emb"
        if getattr(config, "sliding_window", None) is not None or "sliding_attention" in (
            getattr(config, "layer_types", None) or []
        ):
            return "sliding-window attention"
        if getattr(model.model.rotary_emb, "rope_type", "default") in ("dynamic", "longrope"):
            return "RoPE that depends on the sequence length"
        if model.training and getattr(config, "attention_dropout", 0.0):
            return "attention dropout in training mode"
        if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
            return "forward hooks are registered"
        for layer in model.model.layers:
            if type(layer).__module__ != type(model).__module__:
                return f"decoder layer is wrapped ({type(layer).__name__})"
            attn = layer.self_attn
            for proj, heads in ((attn.q_proj, config.num_attention_heads), (attn.k_proj, config.num_key_value_heads)):
                if type(proj.weight) is not torch.nn.Parameter or proj.weight.shape != (
                        heads * attn.head_dim, config.hidden_size):
                    return "projection weights are sharded or reshaped"
        return None

    def __init__(self, model: torch.nn.Module, max_new_tokens: int) -> None:
        self.model, self.max_new_tokens = model, max_new_tokens
        self.apply_rope = sys.modules[type(model).__module__].apply_rotary_pos_emb
        self.heads, self.kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
        self.head_dim = model.model.layers[0].self_attn.head_dim

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        batch, prompt_len = prompt_ids.shape
        device = prompt_ids.device
        self.prompt_len, self.length = prompt_len, prompt_len + self.max_new_tokens
        self.padding = torch.zeros(batch, self.length, dtype=torch.bool, device=device)  # slot is left padding
        self.padding[:, :prompt_len] = prompt_mask == 0
        positions = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P) left padding shifts positions
        decode_positions = positions[:, -1:] + 1 + torch.arange(self.max_new_tokens, device=device)
        self.cos, self.sin = self.model.model.rotary_emb(self.model.model.embed_tokens.weight, decode_positions)

        # One prefill per distinct prompt; its K/V and logits are then gathered for every row.
        rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
        unique, row_of = torch.unique(rows, dim=0, return_inverse=True)
        unique_ids, unique_real = unique[:, :prompt_len], unique[:, prompt_len:] != 0
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).tril()
        eye = torch.eye(prompt_len, dtype=torch.bool, device=device)
        blocked = ~((unique_real[:, None, None, :] & causal) | eye)  # (U, 1, P, P); padding sees itself
        unique_positions = (unique_real.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.model.model.rotary_emb(self.model.model.embed_tokens.weight, unique_positions)
        self.cache, self.slot = [], 0
        logits = self._forward(unique_ids, cos, sin, blocked)  # fills self.cache with (U, kv, P, hd)
        full = []
        for k, v in self.cache:  # (U, ...) -> (B, kv, P + max_new_tokens, hd)
            k_full = k.new_empty(batch, self.kv_heads, self.length, self.head_dim)
            v_full = torch.empty_like(k_full)
            k_full[:, :, :prompt_len] = k[row_of]
            v_full[:, :, :prompt_len] = v[row_of]
            full.append((k_full, v_full))
        self.cache = full
        return logits[row_of]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        t = self.slot - self.prompt_len  # index of this token among the new ones
        blocked = self.padding[:, None, None, : self.slot + 1]  # (B, 1, 1, slots so far + this one)
        return self._forward(tokens[:, None], self.cos[:, t : t + 1], self.sin[:, t : t + 1], blocked)

    def _forward(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """Run S new tokens (B, S) into cache slots [slot, slot + S); returns the logits (B, V) of the last.

        In the prefill (slot 0) the cache is created here with exactly S slots.
        """
        model, heads, kv, hd = self.model, self.heads, self.kv_heads, self.head_dim
        batch, s = ids.shape
        start, end = self.slot, self.slot + s
        groups = heads // kv
        if s > 1 and groups > 1:  # query rows are ordered (group, position): repeat the mask rows per group
            blocked = blocked.repeat(1, 1, groups, 1)
        x = model.model.embed_tokens(ids)  # (B, S, H)
        for i, layer in enumerate(model.model.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(batch, s, heads, hd).transpose(1, 2)  # (B, heads, S, hd)
            k = attn.k_proj(h).view(batch, s, kv, hd).transpose(1, 2)  # (B, kv, S, hd)
            v = attn.v_proj(h).view(batch, s, kv, hd).transpose(1, 2)
            q, k = self.apply_rope(q, k, cos, sin)
            if start == 0:
                self.cache.append((k.contiguous(), v.contiguous()))
            else:
                self.cache[i][0][:, :, start:end] = k
                self.cache[i][1][:, :, start:end] = v
            k_all, v_all = self.cache[i]
            # GQA without repeating K/V: the G query heads of one K/V head become G·S query rows.
            scores = torch.matmul(q.reshape(batch, kv, groups * s, hd), k_all[:, :, :end].transpose(-1, -2))
            scores = scores.mul_(attn.scaling).masked_fill_(blocked, float("-inf"))  # (B, kv, G·S, slots)
            out = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v_all.dtype), v_all[:, :, :end])
            out = out.reshape(batch, heads, s, hd).transpose(1, 2).reshape(batch, s, heads * hd)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.slot = end
        return model.lm_head(model.model.norm(x[:, -1]))  # (B, V)
