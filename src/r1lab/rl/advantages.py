"""Group-relative advantages: GRPO outcome and process supervision, and their variants.

Outcome supervision (DeepSeekMath, arXiv 2402.03300, §4.1.2): every token of completion o_i gets
Â_i = (r_i − mean(r_group)) / (std(r_group) + ε). Variants, by the ``scale`` flag:

- ``"group"``: divide by the group's std (GRPO, arXiv 2402.03300).
- ``"batch"``: centre by the group mean, divide by the std of the whole batch (TRL's
  ``scale_rewards="batch"``): keeps the reward scale without up-weighting groups whose rewards
  barely differ, the "question-level difficulty bias" of Dr. GRPO (arXiv 2503.20783, §3.1).
- ``"none"``: do not divide at all (Dr. GRPO, arXiv 2503.20783).

The std is the *sample* (unbiased, N − 1) std, ``torch.std``'s default, as in TRL's GRPOTrainer.
The paper does not say which; with G = 16 the two differ by 3%.
"""

from __future__ import annotations

import torch
from torch import Tensor

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """Outcome-supervised advantages, one per completion.

    Args:
        rewards: one reward per completion, groups contiguous: [p0 s0..s(G−1), p1 s0.., …].  # (N,)
        group_size: G, completions per prompt; N must be a multiple of it.
        scale: "group" (GRPO, arXiv 2402.03300), "batch" (whole-batch std) or "none"
            (Dr. GRPO, arXiv 2503.20783). For "batch" under data parallelism, the caller passes
            the rewards of the global batch (gathered), or the std is per device.
        eps: added to the std, never to a zero numerator.

    Returns:
        Â, same shape as ``rewards``. A group whose rewards are all equal gets exactly 0 (no
        signal, never NaN); so does every completion when G = 1 (the std is undefined).
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(ADVANTAGE_SCALES)}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    if group_size == 1:
        return torch.zeros_like(rewards)
    grouped = rewards.view(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (P, G)
    # mean([0.1]*3) != 0.1 in floating point: force constant groups to exactly 0
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (P, 1)
    centred = torch.where(constant, torch.zeros_like(centred), centred)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.reshape(-1)  # (N,)


def process_advantages(
    step_rewards: Tensor,
    step_end_index: Tensor,
    group_size: int,
    seq_len: int,
    *,
    step_mask: Tensor | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """Process-supervised advantages (DeepSeekMath, arXiv 2402.03300, §4.1.3).

    GRPO uses it with ``module.supervision=process|both`` (``r1lab.rl.process.combined_advantages``),
    with step rewards from the tiny world's rule verifier or a process reward model.

    Each step reward is normalised over all steps of all completions in its group,
    r̃ = (r − mean) / (std + ε) (sample std, as in ``group_advantages``), and the advantage of
    token t is the sum of the normalised rewards of the steps that end at or after t:
    Â_{i,t} = Σ_{j : end(j) ≥ t} r̃_{i,j}. Tokens after the last step get 0.

    Args:
        step_rewards: reward of each step, padded to K steps.           # (N, K)
        step_end_index: index of the last token of each step.           # (N, K)
        group_size: G, contiguous as in ``group_advantages``.
        seq_len: T, completion length of the returned advantages.
        step_mask: which of the K steps are real (default: all).        # (N, K)

    Returns:
        token advantages.  # (N, T)
    """
    n, k = step_rewards.shape
    if n % group_size != 0:
        raise ValueError(f"{n} completions are not a multiple of group_size={group_size}")
    mask = torch.ones_like(step_rewards, dtype=torch.bool) if step_mask is None else step_mask.bool()
    r = step_rewards.float().view(-1, group_size * k)  # (P, G·K)
    m = mask.view(-1, group_size * k).float()  # (P, G·K)
    count = m.sum(dim=1, keepdim=True)  # (P, 1)
    mean = (r * m).sum(dim=1, keepdim=True) / count.clamp(min=1)  # (P, 1)
    var = (((r - mean) * m) ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)  # (P, 1)
    normed = (r - mean) / (var.sqrt() + eps)  # (P, G·K)
    lo = torch.where(m.bool(), r, float("inf")).amin(dim=1, keepdim=True)  # (P, 1)
    hi = torch.where(m.bool(), r, float("-inf")).amax(dim=1, keepdim=True)  # (P, 1)
    no_signal = (count < 2) | (lo == hi)  # (P, 1) fewer than two steps, or all equal: exactly 0
    normed = torch.where(no_signal | ~m.bool(), torch.zeros_like(normed), normed).view(n, k)  # (N, K)
    per_token = normed.new_zeros(n, seq_len)  # (N, T)
    per_token.scatter_add_(1, step_end_index.long().clamp(0, seq_len - 1), normed)
    # reverse cumulative sum: token t collects every step ending at or after t
    return per_token.flip(1).cumsum(1).flip(1)  # (N, T)
