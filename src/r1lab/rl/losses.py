"""The GRPO policy loss: clipped surrogate, KL penalty, token aggregation.

DeepSeekMath (arXiv 2402.03300) eq. 3, to maximise:

    J = 1/G Σ_i 1/|o_i| Σ_t [ min(ρ Â, clip(ρ, 1 − ε_low, 1 + ε_high) Â) − β D_{i,t} ]

with ρ = π_θ/π_old per token and D the k3 estimate of KL(π_θ‖π_ref), in the loss rather than in
the reward (as PPO would). We minimise −J. Departures, each behind a flag:

- ``clip_high > clip_low``: "clip-higher" of DAPO (arXiv 2503.14476, §3.1).
- ``aggregation``: "seq_mean_token_mean" is the paper's 1/G Σ_i 1/|o_i| Σ_t; "token_mean" is
  DAPO's token-level loss (arXiv 2503.14476, §3.3); "seq_sum_norm" divides the token sum by a
  constant max length, Dr. GRPO (arXiv 2503.20783, §3.2).
- ``kl_estimator``: k1/k2/k3 of Schulman, "Approximating KL Divergence" (2020).
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.rl.kl import kl_estimate
from r1lab.tensors import masked_mean

AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_sum_norm")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim, H = −Σ p log p with log p = log_softmax(z).

    logits (B, T, V) → (B, T), in at least float32. log_softmax subtracts the logsumexp before
    anything is summed, so large logits lose no precision (the form logsumexp(z) − Σ p·z cancels
    two large numbers); −inf logits (banned tokens) contribute 0.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logp = torch.log_softmax(z, dim=-1)  # (B, T, V)
    return -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0.0)).sum(-1)  # (B, T)


def clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate per token, as a loss: −min(ρÂ, clip(ρ, 1−ε_low, 1+ε_high)Â).

    Args:
        logp: log π_θ of the sampled tokens.                          # (B, T)
        old_logp: log π_old of the same tokens, kept from sampling.   # (B, T)
        advantages: Â per completion (outcome) or per token (process).  # (B,) or (B, T)
        clip_low, clip_high: ε_low, ε_high; ε_high > ε_low is DAPO's clip-higher
            (arXiv 2503.14476, §3.1); equal values are PPO/GRPO (arXiv 2402.03300).

    Returns:
        per-token loss (B, T) and stats: ``ratio`` (B, T) detached; ``clipped_low`` (B, T) bool,
        Â < 0 and ρ < 1 − ε_low; ``clipped_high`` (B, T) bool, Â > 0 and ρ > 1 + ε_high. Those
        are exactly the tokens whose gradient the clip removes.
    """
    adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = ratio * adv  # (B, T)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # (B, T)
    per_token = -torch.minimum(unclipped, clipped)  # (B, T)
    r = ratio.detach()
    stats = {
        "ratio": r,
        "clipped_low": (adv < 0) & (r < 1.0 - clip_low),
        "clipped_high": (adv > 0) & (r > 1.0 + clip_high),
    }
    return per_token, stats


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "seq_mean_token_mean",
    *,
    num_sequences: int | Tensor | None = None,
    num_tokens: int | Tensor | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss (B, T) to a scalar, one micro-batch's share of the batch loss.

    Modes:
        "seq_mean_token_mean": Σ_i (Σ_t l·m / Σ_t m) / num_sequences — GRPO (arXiv 2402.03300, eq. 3).
        "token_mean":          Σ_{i,t} l·m / num_tokens — DAPO (arXiv 2503.14476, §3.3).
        "seq_sum_norm":        Σ_{i,t} l·m / (num_sequences · max_len) — Dr. GRPO (arXiv 2503.20783).

    ``num_sequences`` and ``num_tokens`` are the counts over the WHOLE optimisation batch (every
    micro-batch, every device: ``num_tokens`` is the all-reduced sum of the completion mask), and
    ``max_len`` is the generation length limit, not the padded width of this micro-batch. The caller
    computes them once per optimiser step. Then the sum of the micro-batch losses, and of their
    gradients, equals the loss and gradient of the full batch, so results do not depend on the
    micro-batch size or the device count (DDP *averages* gradients over ranks: multiply the loss by
    the world size to turn that average back into the sum). Left as None, each count defaults to
    this micro-batch's own — correct only when it is the whole batch.

    A sequence with no mask tokens contributes 0 (and still counts in ``num_sequences``).
    """
    m = mask.to(per_token.dtype)  # (B, T)
    if num_sequences is None:
        num_sequences = per_token.shape[0]
    if mode == "seq_mean_token_mean":
        return masked_mean(per_token, m, dim=-1).sum() / num_sequences
    if mode == "token_mean":
        if num_tokens is None:
            num_tokens = m.sum().clamp(min=1)
        return (per_token * m).sum() / num_tokens
    if mode == "seq_sum_norm":
        if max_len is None:
            max_len = per_token.shape[-1]
        return (per_token * m).sum() / (num_sequences * max_len)
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "seq_mean_token_mean",
    num_sequences: int | Tensor | None = None,
    num_tokens: int | Tensor | None = None,
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """−J of DeepSeekMath eq. 3 (arXiv 2402.03300): aggregate(surrogate + β·D).

    Args:
        logp, old_logp: log-probs of the sampled tokens under π_θ and π_old.  # (B, T)
            ``old_logp=None`` means one step per batch (μ = 1): π_old = π_θ, so ρ = 1 in value
            while its gradient is that of ρ·Â (the loss is ~0, the gradient is not).
        advantages: Â.                                                      # (B,) or (B, T)
        mask: completion mask (1 = token of the completion that is trained). # (B, T)
        ref_logp: log π_ref of the same tokens; required when β > 0.        # (B, T)
        beta: KL coefficient β (DeepSeekMath 0.04, R1 0.001; DAPO drops it: 0).
        kl_estimator: D = kl_estimate(logp, ref_logp, kind); "k3" in the paper (Schulman 2020).
        clip_low, clip_high: see ``clipped_surrogate`` (DAPO clip-higher when high > low).
        aggregation, num_sequences, num_tokens, max_len: see ``aggregate``.

    Returns:
        the loss (scalar, to minimise) and detached scalar metrics of this micro-batch:
        ``policy_loss`` (the surrogate alone, aggregated the same way), ``kl`` (masked token mean
        of D; 0 when β = 0 or no reference), ``clip_frac_low``, ``clip_frac_high``, ``ratio_mean``.
    """
    if old_logp is None:
        old_logp = logp.detach()
    per_token, stats = clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high)  # (B, T)
    counts = {"num_sequences": num_sequences, "num_tokens": num_tokens, "max_len": max_len}
    policy_loss = aggregate(per_token, mask, aggregation, **counts)
    kl = logp.new_zeros(())
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probs of the reference model)")
        kl_per_token = kl_estimate(logp, ref_logp, kl_estimator)  # (B, T)
        loss = aggregate(per_token + beta * kl_per_token, mask, aggregation, **counts)
        kl = masked_mean(kl_per_token.detach(), mask)
    else:
        loss = policy_loss
    metrics = {
        "policy_loss": policy_loss.detach(),
        "kl": kl,
        "clip_frac_low": masked_mean(stats["clipped_low"].to(logp.dtype), mask).detach(),
        "clip_frac_high": masked_mean(stats["clipped_high"].to(logp.dtype), mask).detach(),
        "ratio_mean": masked_mean(stats["ratio"], mask),
    }
    return loss, metrics
