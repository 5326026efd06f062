"""A static-KV-cache decoder for Llama/Qwen2-family causal LMs, used by the sampling loop.

Why: for small models a decode step of the Hugging Face forward spends much of its time outside the
matmuls: it rebuilds a 4D mask from the growing attention mask, grows the ``DynamicCache`` with
``torch.cat`` (copying the whole cache every token), recomputes the rotary embedding, and goes through
output dataclasses and decorators. This decoder runs the same layers, with the model's own modules and
weights, and does per token only what the token needs:

* the K/V cache is allocated once per rollout, P + max_new_tokens slots per layer, and each new
  token's K/V is written in place at its slot;
* the attention mask is one preallocated "this slot is left padding" row per sequence (0 or -inf),
  sliced to the slots written so far;
* RoPE cos/sin of every decode position are computed once per rollout, by the model's own
  ``rotary_emb`` (the prefill applies them with the modeling module's ``apply_rotary_pos_emb``);
* attention is two batched matmuls and a float32 softmax (as the eager HF attention; on CPU this is
  faster than ``scaled_dot_product_attention`` for one query token), and grouped-query attention needs
  no copy of the cache: the G query heads that share a K/V head are folded into the query axis; the
  K cache is kept transposed, so that scaling, the padding mask (additive) and q·Kᵀ are one ``baddbmm``;
* per token, few large ops rather than many small ones (at a tiny model's sizes each op's fixed cost
  is most of a step): the weights are fused once per rollout, q, k, v and rotate_half(q), rotate_half(k)
  come out of one projection (the rotation is a signed permutation of the q/k weight rows), so RoPE is
  one multiply and one ``addcmul``; gate and up are one projection; output and down projections add
  into the residual stream with ``addmm``; RMS norms are ``F.rms_norm`` with the modules' weights;
* the prompt is prefilled once per distinct prompt (GRPO repeats each prompt G times) and its K/V rows
  are then copied to every row that has that prompt.

The weights, norms' epsilons, MLP activation and ``lm_head`` are the model's own (read at each rollout,
so the decoder always samples from the current policy); the softmax scale is the attention module's
``scaling``. Tested against the Hugging Face forward, token by token. Positions follow the sampler:
left padding shifts them (``cumsum(mask) - 1``), and every slot after the prompt is attended to, as
with the generic path's growing attention mask. Left-padding slots attend only to themselves, so
their (never read) hidden states stay finite.

``StaticCacheDecoder.unsupported(model)`` returns None when this decoder applies and otherwise the
reason the sampler falls back to the generic Hugging Face path: the model must be exactly a
``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` (pre-norm attention + MLP with RoPE; other classes, PEFT
or ``torch.compile`` wrappers fall back), with unwrapped, unsharded layers (no FSDP/DeepSpeed), no
forward hooks, no sliding-window layers, a position-independent RoPE variant (not ``dynamic`` or
``longrope``), and no attention dropout in training mode. LoRA layers (peft) are fused with their
adapters' deltas (``r1lab.generation.adapters``).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from r1lab.generation.adapters import effective_bias, effective_weight, is_linear
from r1lab.tensors import positions_from_mask

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
            attn, mlp = layer.self_attn, layer.mlp
            linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            if not all(is_linear(m) for m in linears):
                return "a projection is neither a Linear layer nor a LoRA layer around one"
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
        positions = positions_from_mask(prompt_mask)  # (B, P) left padding shifts positions
        decode_positions = positions[:, -1:] + 1 + torch.arange(self.max_new_tokens, device=device)
        self.cos, self.sin = self.model.model.rotary_emb(self.model.model.embed_tokens.weight, decode_positions)

        # One prefill per distinct prompt; its K/V and logits are then gathered for every row.
        rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
        unique, row_of = torch.unique(rows, dim=0, return_inverse=True)
        unique_ids, unique_real = unique[:, :prompt_len], unique[:, prompt_len:] != 0
        causal = torch.ones(prompt_len, prompt_len, dtype=torch.bool, device=device).tril()
        eye = torch.eye(prompt_len, dtype=torch.bool, device=device)
        blocked = ~((unique_real[:, None, None, :] & causal) | eye)  # (U, 1, P, P); padding sees itself
        unique_positions = positions_from_mask(unique_real)
        cos, sin = self.model.model.rotary_emb(self.model.model.embed_tokens.weight, unique_positions)
        self.cache, self.slot = [], 0
        logits = self._forward(unique_ids, cos, sin, blocked)  # fills self.cache with (U, kv, P, hd)
        full = []
        for k, v in self.cache:  # (U, ...) -> K (B, kv, hd, P + max_new_tokens), V (B, kv, P + max_new_tokens, hd)
            k_full = k.new_empty(batch, self.kv_heads, self.head_dim, self.length)
            v_full = v.new_empty(batch, self.kv_heads, self.length, self.head_dim)
            k_full[:, :, :, :prompt_len] = k[row_of].transpose(-1, -2)
            v_full[:, :, :prompt_len] = v[row_of]
            full.append((k_full, v_full))
        self.cache = full
        self.cos_qk, self.sin_qk = self.cos[:, :, None], self.sin[:, :, None]  # (B, T, 1, hd)
        self.mask_add = torch.zeros(batch, self.kv_heads, 1, self.length, dtype=logits.dtype, device=device)
        self.mask_add.masked_fill_(self.padding[:, None, None, :], float("-inf"))
        self.mask_add = self.mask_add.view(batch * self.kv_heads, 1, self.length)
        self.packed = None
        return logits[row_of]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One new token per row (B,) -> logits (B, V), with the per-rollout fused weights (``_pack``).

        The same layers as ``_forward`` with fewer, larger ops per token: one projection gives q, k, v
        and rotate_half(q), rotate_half(k) (their weights are the q/k rows permuted and negated, so
        RoPE is q·cos + rot(q)·sin without slicing and concatenating), the scaled, masked scores are
        one ``baddbmm`` over the K cache kept transposed, output and down projections add into the
        residual stream with ``addmm``, the gate and up projections are one matmul, and the RMS norms
        are ``F.rms_norm`` with the modules' weights and epsilon.
        """
        if self.packed is None:
            self.packed = self._pack()
        model = self.model
        batch = tokens.shape[0]
        heads, kv, hd = self.heads, self.kv_heads, self.head_dim
        groups, n_qk = heads // kv, (heads + kv) * hd
        t, slot = self.slot - self.prompt_len, self.slot
        end = slot + 1
        cos, sin = self.cos_qk[:, t], self.sin_qk[:, t]  # (B, 1, hd)
        mask = self.mask_add[:, :, :end]  # (B·kv, 1, slots): 0, or -inf on left padding
        x = model.model.embed_tokens(tokens)  # (B, H)
        for i, layer in enumerate(model.model.layers):
            w_qkv, b_qkv, w_o, b_o, w_gu, b_gu, w_down, b_down = self.packed[i]
            k_cache, v_cache = self.cache[i]  # (B, kv, hd, L) and (B, kv, L, hd)
            h = self._norm(layer.input_layernorm, x)
            proj = F.linear(h, w_qkv, b_qkv)  # (B, [q, k, v, rot q, rot k])
            qk = torch.addcmul(proj[:, :n_qk].view(batch, heads + kv, hd) * cos,
                               proj[:, n_qk + kv * hd:].view(batch, heads + kv, hd), sin)
            k_cache[:, :, :, slot] = qk[:, heads:]
            v_cache[:, :, slot] = proj[:, n_qk : n_qk + kv * hd].view(batch, kv, hd)
            q = qk[:, :heads].reshape(batch * kv, groups, hd)  # the G query heads of one K/V head
            scores = torch.baddbmm(mask, q, k_cache.view(batch * kv, hd, -1)[:, :, :end],
                                   alpha=layer.self_attn.scaling)
            probs = scores.softmax(-1, dtype=torch.float32).to(x.dtype)
            out = torch.bmm(probs, v_cache.view(batch * kv, -1, hd)[:, :end]).view(batch, heads * hd)
            x = torch.addmm(x, out, w_o) if b_o is None else torch.addmm(x + b_o, out, w_o)
            gate, up = F.linear(self._norm(layer.post_attention_layernorm, x), w_gu, b_gu).chunk(2, dim=-1)
            act = layer.mlp.act_fn(gate).mul_(up)
            x = torch.addmm(x, act, w_down) if b_down is None else torch.addmm(x + b_down, act, w_down)
        self.slot = end
        return model.lm_head(self._norm(model.model.norm, x))  # (B, V)

    @staticmethod
    def _norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        eps = getattr(norm, "variance_epsilon", None)
        if eps is None or x.dtype != torch.float32:
            return norm(x)
        return F.rms_norm(x, norm.weight.shape, norm.weight, eps)  # = Llama/Qwen2 RMSNorm in float32

    def _pack(self) -> list[tuple]:
        """Per layer: the fused projection weights of ``step``, built once per rollout from the live weights."""
        hd, half = self.head_dim, self.head_dim // 2

        def rot(t: torch.Tensor, n: int) -> torch.Tensor:  # rows giving rotate_half of each head's output
            t = t.reshape(n, hd, *t.shape[1:])
            return torch.cat([-t[:, half:], t[:, :half]], dim=1).reshape(n * hd, *t.shape[2:])

        packed = []
        w, b = effective_weight, effective_bias  # a LoRA layer's weight includes its adapters' deltas
        for layer in self.model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            q, k, v = (w(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
            w_qkv = torch.cat([q, k, v, rot(q, self.heads), rot(k, self.kv_heads)])
            b_qkv = None
            biases = [b(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)]
            if any(x is not None for x in biases):
                zeros = [x if x is not None else m.new_zeros(m.shape[0]) for x, m in zip(biases, (q, k, v))]
                b_qkv = torch.cat([*zeros, rot(zeros[0], self.heads), rot(zeros[1], self.kv_heads)])
            gate, up = w(mlp.gate_proj), w(mlp.up_proj)
            b_gu = None
            gate_b, up_b = b(mlp.gate_proj), b(mlp.up_proj)
            if gate_b is not None or up_b is not None:
                b_gu = torch.cat([x if x is not None else m.new_zeros(m.shape[0])
                                  for x, m in ((gate_b, gate), (up_b, up))])
            packed.append((w_qkv, b_qkv, w(attn.o_proj).t(), b(attn.o_proj), torch.cat([gate, up]), b_gu,
                           w(mlp.down_proj).t(), b(mlp.down_proj)))
        return packed

    def _forward(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
        """The prefill: run the prompts (B, S) with the model's modules; returns the logits (B, V) of the
        last position and leaves each layer's K/V (B, kv, S, hd) in ``self.cache``.
        """
        model, heads, kv, hd = self.model, self.heads, self.kv_heads, self.head_dim
        batch, s = ids.shape
        end = self.slot + s
        groups = heads // kv
        if s > 1 and groups > 1:  # query rows are ordered (group, position): repeat the mask rows per group
            blocked = blocked.repeat(1, 1, groups, 1)
        x = model.model.embed_tokens(ids)  # (B, S, H)
        for layer in model.model.layers:
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(batch, s, heads, hd).transpose(1, 2)  # (B, heads, S, hd)
            k = attn.k_proj(h).view(batch, s, kv, hd).transpose(1, 2)  # (B, kv, S, hd)
            v = attn.v_proj(h).view(batch, s, kv, hd).transpose(1, 2)
            q, k = self.apply_rope(q, k, cos, sin)
            k_all, v_all = k.contiguous(), v.contiguous()
            self.cache.append((k_all, v_all))
            # GQA without repeating K/V: the G query heads of one K/V head become G·S query rows.
            scores = torch.matmul(q.reshape(batch, kv, groups * s, hd), k_all[:, :, :end].transpose(-1, -2))
            scores = scores.mul_(attn.scaling).masked_fill_(blocked, float("-inf"))  # (B, kv, G·S, slots)
            out = torch.matmul(scores.softmax(-1, dtype=torch.float32).to(v_all.dtype), v_all[:, :, :end])
            out = out.reshape(batch, heads, s, hd).transpose(1, 2).reshape(batch, s, heads * hd)
            x = x + attn.o_proj(out)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.slot = end
        return model.lm_head(model.model.norm(x[:, -1]))  # (B, V)
