"""Tensor helpers that the math (rl/, kd/, rm/) and the model code (generation/, rm/model) share.

Pure functions of tensors, no models: positions from a padding mask, a mean over masked positions,
and log-probabilities gathered at chosen tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor


def positions_from_mask(mask: Tensor) -> Tensor:
    """Position ids (…, T) for a left- or right-padded attention mask (…, T): the count of real tokens
    before each position, so left padding shifts the positions of the real tokens to start at 0
    (padding positions get 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of each row's last position with mask 1 (0 for an empty row); left or right padding."""
    positions = torch.arange(mask.shape[-1], device=mask.device)  # (T,)
    return (positions * (mask > 0)).argmax(-1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1; 0 where there are none (never NaN).

    ``x`` must be finite at masked-out positions too (it is multiplied by the mask).
    """
    m = mask.to(x.dtype)
    num = (x * m).sum() if dim is None else (x * m).sum(dim)
    den = m.sum() if dim is None else m.sum(dim)
    return num / torch.where(den > 0, den, torch.ones_like(den))


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T) gathered at ``tokens``, in float32 without materialising (…, V) log-probs.

    logits (…, V), tokens (…) → (…).
    """
    logits = logits.float()  # (..., V)
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)
