"""The rollout sampler: batched, KV-cached generation that also returns per-token log-probs.

One prefill of the left-padded prompts, then one cached forward per new token for the whole batch;
the loop stops as soon as every row has produced EOS. Llama/Qwen2 models decode with the static-cache
decoder of ``fast_decode`` (same weights and modules, fewer ops per token); any other model, or a
configuration it does not cover, uses the model's own Hugging Face forward (``HFDecoder``). Both feed
the same sampling loop, so under one generator seed they draw the same tokens. The log-probs it returns are those of the
temperature-scaled policy, log softmax(z / T), before top-p truncation: the same quantity the
training pass computes (``sequence_logprobs``), so that π_old of GRPO is exactly the sampling policy
(as TRL and verl do). ``sequence_logprobs`` of the same sequences must agree with them (tested).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from r1lab.rl.fast_decode import SUPPORTED, StaticCacheDecoder


@dataclass
class Rollout:
    completion_ids: torch.Tensor  # (B, T) right-padded with pad_id after EOS
    completion_mask: torch.Tensor  # (B, T) 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (B, T) log π(token) at sampling time, 0 off the mask
    truncated: torch.Tensor  # (B,) True where no EOS came within max_new_tokens

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) gathered at ``tokens``, in float32 without materialising (…, V) log-probs."""
    logits = logits.float()  # (..., V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _cache_keyword(model) -> str:
    """The forward's KV-cache argument: ``cache`` in transformers >= 5.2x (which deprecates
    ``past_key_values`` and removes it in 5.40), ``past_key_values`` before."""
    try:
        return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def _returned_cache(out):
    """The KV cache a forward returned, under either name (see ``_cache_keyword``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class HFDecoder:
    """The generic path for any Hugging Face causal LM: its own forward with a ``DynamicCache``."""

    def __init__(self, model) -> None:
        self.model, self.cache_keyword = model, _cache_keyword(model)

    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        self.attention = prompt_mask.long()
        positions = (self.attention.cumsum(-1) - 1).clamp(min=0)  # (B, P) left padding shifts positions
        out = self.model(input_ids=prompt_ids, attention_mask=self.attention, position_ids=positions, use_cache=True)
        self.cache, self.next_pos = _returned_cache(out), positions[:, -1:] + 1  # (B, 1)
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.attention = torch.cat([self.attention, torch.ones_like(self.attention[:, :1])], dim=-1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attention, position_ids=self.next_pos,
                         use_cache=True, **{self.cache_keyword: self.cache})
        self.cache, self.next_pos = _returned_cache(out), self.next_pos + 1
        return out.logits[:, -1]


def make_decoder(model, max_new_tokens: int, fast: bool = True):
    """The static-cache decoder where the architecture allows it (``fast_decode``), else the generic one."""
    if fast and StaticCacheDecoder.unsupported(model) is None:
        return StaticCacheDecoder(model, max_new_tokens)
    return HFDecoder(model)


def _sample_categorical(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (B, V) ``probs`` by inverting the CDF with one uniform per row.

    The same distribution as ``torch.multinomial(probs, 1)``, which on CPU draws B·V exponentials
    (most of a tiny model's sampling time). Zero-probability tokens are never drawn: ``searchsorted``
    returns the first index whose cumulative mass exceeds u, and mass is flat across them.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


@torch.no_grad()
def sample(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    fast: bool = True,
) -> Rollout:
    """Generate completions for left-padded prompts (B, P) with a KV cache.

    ``fast=False`` forces the generic Hugging Face forward even where the static-cache decoder applies.
    """
    batch = prompt_ids.shape[0]
    decoder = make_decoder(model, max_new_tokens, fast)
    logits = decoder.prefill(prompt_ids, prompt_mask)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    tokens, logps, masks = [], [], []
    for step in range(max_new_tokens):
        scaled = logits.float() if temperature == 1.0 else logits.float() / temperature  # (B, V)
        if greedy:
            token = scaled.argmax(-1)
        else:
            probs = (_top_p_filter(scaled, top_p) if top_p < 1.0 else scaled).softmax(-1)
            token = _sample_categorical(probs, generator)
        tokens.append(token)
        logps.append(token_logprobs(scaled, token))  # temperature already applied
        masks.append(~finished)
        finished = finished | (token == eos_id)
        if step == max_new_tokens - 1 or finished.all():
            break  # no forward for a token that will not be sampled
        # a finished row's next input is its own token: its logits are never used, and the rows are independent
        logits = decoder.step(token)

    mask = torch.stack(masks, 1)  # (B, T) alive before the token: the token is generated (EOS included)
    return Rollout(
        completion_ids=torch.stack(tokens, 1).masked_fill(~mask, pad_id),
        completion_mask=mask.long(),
        logprobs=torch.stack(logps, 1).masked_fill(~mask, 0.0),
        truncated=~finished,
    )


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _can_share_prompts(model) -> bool:
    """The shared-prompt forward needs the model's KV cache (off under activation checkpointing)."""
    return _accepts_logits_to_keep(model) and not any(
        getattr(m, "gradient_checkpointing", False) is True for m in model.modules()
    )


def completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *,
                      hidden: bool = False) -> torch.Tensor:
    """The (B, T, V) logits that predict each completion token, with grad.

    Where prompts repeat (GRPO's G completions per prompt), each distinct prompt runs once and its KV
    cache, expanded to every row that shares it, is the prefix of one forward over the completions:
    the same function of the weights as one forward over [prompt, completion] (autograd goes through
    the cache), with the prompt's share of the FLOPs divided by G. Otherwise, or where the model
    cannot do it, one full forward. ``hidden=True`` returns the (B, T, H) final hidden states at the
    same positions instead (the inner ``model.model``, before ``lm_head``; see ``_head_split``).
    """
    net, field = (model.model, "last_hidden_state") if hidden else (model, "logits")
    prompt_len, length = prompt_ids.shape[1], completion_ids.shape[1]
    attention = torch.cat([prompt_mask, completion_mask], dim=1).long()  # (B, P+T)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    unique, row_of = torch.unique(torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1), dim=0,
                                  return_inverse=True)
    if len(unique) == len(prompt_ids) or length < 2 or not _can_share_prompts(model):
        keep = length + 1  # lm_head only where a completion token is predicted (and the last position)
        extra = {"logits_to_keep": keep} if not hidden and _accepts_logits_to_keep(model) else {}
        out = getattr(net(input_ids=torch.cat([prompt_ids, completion_ids], dim=1), attention_mask=attention,
                          position_ids=positions, **extra), field)
        return out[:, -keep:-1]
    unique_mask = unique[:, prompt_len:].long()
    extra = {} if hidden else {"logits_to_keep": 1}
    prompt = net(input_ids=unique[:, :prompt_len], attention_mask=unique_mask,
                 position_ids=(unique_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **extra)
    cache = _returned_cache(prompt)
    cache.batch_select_indices(row_of)  # (U, ...) -> (B, ...): each row gets its prompt's keys and values
    # the last completion token predicts nothing that is scored: the completion pass stops before it
    rest = getattr(net(input_ids=completion_ids[:, :-1], attention_mask=attention[:, :-1],
                       position_ids=positions[:, prompt_len:-1], use_cache=True, **{_cache_keyword(net): cache}),
                   field)
    return torch.cat([getattr(prompt, field)[:, -1:][row_of], rest], dim=1)


def _head_split(model) -> bool:
    """Whether the logits are exactly ``model.lm_head(model.model(...).last_hidden_state)``: a Llama/Qwen2
    causal LM (no logit scaling or soft-capping) whose head is a plain bias-free linear layer without hooks,
    so that ``sequence_logprobs`` may fuse the head with the log-softmax (``_LinearLogprob``)."""
    head = getattr(model, "lm_head", None)
    return (type(model).__name__ in SUPPORTED and type(head) is torch.nn.Linear and head.bias is None
            and not head._forward_hooks and not head._forward_pre_hooks and not model._forward_hooks
            and not model._forward_pre_hooks and type(model.model).__name__.endswith("Model"))


class _LinearLogprob(torch.autograd.Function):
    """log softmax(h Wᵀ / T) at ``tokens`` and its entropy, row chunk by row chunk: the (N, V) logits are
    never materialised (each chunk's stay in cache), and the backward recomputes each chunk's logits
    (one more head matmul) instead of keeping them. Values as ``_LogprobEntropy`` of ``lm_head(h)``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, entropy):
        rows = max(16, (1 << 17) // weight.shape[0])  # ~512 KB of float32 logits per chunk
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, 1, dtype=torch.float32, device=hidden.device)
        ent = torch.zeros(n if entropy else 0, dtype=torch.float32, device=hidden.device)
        for start in range(0, n, rows):
            end = min(start + rows, n)
            z = (hidden[start:end] @ weight.t()).float()
            if temperature != 1.0:
                z = z / temperature
            torch.logsumexp(z, dim=-1, keepdim=True, out=lse[start:end])
            logz = z.sub_(lse[start:end])
            logp[start:end] = logz.gather(-1, tokens[start:end, None]).squeeze(-1)
            if entropy:
                ent[start:end] = -(logz.exp() * logz).sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.rows = temperature, rows
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, tokens, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_logp = grad_logp.float()
        for start in range(0, hidden.shape[0], ctx.rows):
            end = min(start + ctx.rows, hidden.shape[0])
            h, g = hidden[start:end], grad_logp[start:end, None]
            z = (h @ weight.t()).float()
            if ctx.temperature != 1.0:
                z = z / ctx.temperature
            grad = z.sub_(lse[start:end]).exp_().mul_(-g)  # d logp / dz = onehot − softmax(z)
            grad.scatter_add_(-1, tokens[start:end, None], g)
            if ctx.temperature != 1.0:
                grad = grad / ctx.temperature
            grad = grad.to(hidden.dtype)
            if need_h:
                torch.mm(grad, weight, out=grad_h[start:end])
            if need_w:
                grad_w.addmm_(grad.t(), h)
        return grad_h, grad_w, None, None, None


class _LogprobEntropy(torch.autograd.Function):
    """log softmax(z / T) at ``tokens`` and the entropy of softmax(z / T), from one pass over (…, V) logits.

    The log-prob is ``token_logprobs``' value (z_token − logsumexp(z)); the entropy −Σ p·log p uses the
    same logsumexp, and p = exp(z − logsumexp) is kept for the backward, d logp / dz = (onehot − p) / T,
    instead of autograd's logsumexp + gather backward (two (…, V) passes and a zero-filled buffer). The
    entropy is a diagnostic: no gradient flows through it.
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature):
        z = logits.float()
        if temperature != 1.0:
            z = z / temperature
        logz = z - torch.logsumexp(z, dim=-1, keepdim=True)
        logp = logz.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        probs = logz.exp()
        entropy = -(probs * logz).sum(-1)
        ctx.save_for_backward(probs, tokens)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        probs, tokens = ctx.saved_tensors
        grad = probs * -grad_logp.unsqueeze(-1)
        grad.scatter_add_(-1, tokens.unsqueeze(-1), grad_logp.unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad = grad / ctx.temperature
        return grad.to(ctx.dtype), None, None


def sequence_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """Per-token log-probs (B, T) of the completions under ``model`` (with grad), from ``completion_logits``.

    With ``return_entropy`` also the policy's per-token entropy (B, T) (a diagnostic, no grad), from
    the same pass over the logits. Llama/Qwen2 models fuse ``lm_head`` with the log-softmax in row
    chunks (``_LinearLogprob``: no (B, T, V) logits in memory); others go through the logits
    (``_LogprobEntropy``).
    """
    if _head_split(model):
        hidden = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask, hidden=True)
        logp, entropy = _LinearLogprob.apply(hidden.flatten(0, 1), model.lm_head.weight, completion_ids.flatten(),
                                             temperature, return_entropy)
        logp = logp.view(completion_mask.shape) * completion_mask
        if not return_entropy:
            return logp
        return logp, entropy.view_as(logp) * completion_mask
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    if not return_entropy:
        return token_logprobs(logits, completion_ids, temperature) * completion_mask
    logp, entropy = _LogprobEntropy.apply(logits, completion_ids, temperature)
    return logp * completion_mask, entropy * completion_mask


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts, without the EOS and padding."""
    eos = tokenizer.eos_token_id  # a property: read once, not per token
    rows = [[t for t, m in zip(ids, mask) if m and t != eos]
            for ids, mask in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist())]
    return tokenizer.batch_decode(rows, skip_special_tokens=False)
