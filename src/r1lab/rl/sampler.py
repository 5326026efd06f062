"""The rollout sampler: batched, KV-cached generation that also returns per-token log-probs.

One prefill of the left-padded prompts, then one cached forward per new token for the whole batch;
the loop stops as soon as every row has produced EOS. The log-probs it returns are those of the
temperature-scaled policy, log softmax(z / T), before top-p truncation: the same quantity the
training pass computes (``sequence_logprobs``), so that π_old of GRPO is exactly the sampling policy
(as TRL and verl do). ``sequence_logprobs`` of the same sequences must agree with them (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
    logits = logits.float() / temperature  # (..., V)
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


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
) -> Rollout:
    """Generate completions for left-padded prompts (B, P) with a KV cache."""
    batch = prompt_ids.shape[0]
    device = prompt_ids.device
    attention = prompt_mask.long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, P) left padding shifts positions
    out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=positions, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1]
    next_pos = positions[:, -1:] + 1  # (B, 1)

    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, logps, masks = [], [], []
    for _ in range(max_new_tokens):
        scaled = logits.float() / temperature  # (B, V)
        if greedy:
            token = scaled.argmax(-1)
        else:
            probs = (_top_p_filter(scaled, top_p) if top_p < 1.0 else scaled).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        logp = token_logprobs(scaled, token)  # temperature already applied
        alive = ~finished
        tokens.append(torch.where(alive, token, torch.full_like(token, pad_id)))
        logps.append(torch.where(alive, logp, torch.zeros_like(logp)))
        masks.append(alive.long())
        finished = finished | (alive & (token == eos_id))
        if finished.all():
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=-1)
        out = model(
            input_ids=tokens[-1][:, None], attention_mask=attention, position_ids=next_pos,
            past_key_values=cache, use_cache=True,
        )
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_pos = next_pos + 1

    return Rollout(
        completion_ids=torch.stack(tokens, 1),
        completion_mask=torch.stack(masks, 1),
        logprobs=torch.stack(logps, 1),
        truncated=~finished,
    )


def sequence_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """Per-token log-probs (B, T) of the completions under ``model`` (with grad), one full forward.

    With ``return_entropy`` also the policy's per-token entropy (B, T) (a diagnostic, no grad).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+T)
    attention = torch.cat([prompt_mask, completion_mask], dim=1).long()
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    logits = logits[:, prompt_ids.shape[1] - 1 : -1]  # (B, T, V) the logits that predict each completion token
    logp = token_logprobs(logits, completion_ids, temperature) * completion_mask
    if not return_entropy:
        return logp
    with torch.no_grad():
        logz = F.log_softmax(logits.float() / temperature, dim=-1)
        entropy = -(logz.exp() * logz).sum(-1) * completion_mask
    return logp, entropy


def decode(tokenizer, rollout: Rollout) -> list[str]:
    """Completion texts, without the EOS and padding."""
    texts = []
    for ids, mask in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist()):
        ids = [t for t, m in zip(ids, mask) if m and t != tokenizer.eos_token_id]
        texts.append(tokenizer.decode(ids, skip_special_tokens=False))
    return texts
