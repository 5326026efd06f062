"""The training-side log-prob pass: per-token log-probs (and entropy) of given completions, with grad.

``sequence_logprobs`` is what GRPO's policy and reference passes call, and what the sampler's
log-probs must agree with (tested): log softmax(z / T) at each completion token. Two savings over one
plain forward, each tested equal to it in values and gradients:

* where prompts repeat (GRPO's G completions per prompt), each distinct prompt runs once and its KV
  cache is the prefix of one forward over the completions (``completion_logits``);
* for Llama/Qwen2 the output layer is fused with the log-softmax in row chunks (``_LinearLogprob``), so
  the (B, T, V) logits are never in memory: with a 49k-token vocabulary they would dominate the step.
"""

from __future__ import annotations

import inspect

import torch

from r1lab.generation.adapters import unwrap
from r1lab.generation.decoders import cache_keyword, returned_cache
from r1lab.generation.static_kv import SUPPORTED
from r1lab.tensors import positions_from_mask, token_logprobs


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
    positions = positions_from_mask(attention)
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
                 position_ids=positions_from_mask(unique_mask), use_cache=True, **extra)
    cache = returned_cache(prompt)
    cache.batch_select_indices(row_of)  # (U, ...) -> (B, ...): each row gets its prompt's keys and values
    # the last completion token predicts nothing that is scored: the completion pass stops before it
    rest = getattr(net(input_ids=completion_ids[:, :-1], attention_mask=attention[:, :-1],
                       position_ids=positions[:, prompt_len:-1], use_cache=True, **{cache_keyword(net): cache}),
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
    model = unwrap(model)  # a LoRA model runs its adapters from inside (and keeps the fused head)
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
