"""Advantage estimators besides GRPO's group normalisation: PPO's GAE with a value model, and the
critic-free RLOO and REINFORCE++. Pure tensor math; ``r1lab.modules`` picks one by ``module.estimator``.

The token reward every estimator starts from (``token_rewards``): the outcome reward at the last token
of the completion, and, when the KL goes in the reward (InstructGPT, arXiv 2203.02155 §3.5; OpenRLHF's
default), −β·D_t at every token. GRPO's way instead puts β·D in the loss (``r1lab.rl.losses``).

- GAE (Schulman et al., arXiv 1506.02438): δ_t = r_t + γ V_{t+1} − V_t, Â_t = Σ_l (γλ)^l δ_{t+l},
  returns R_t = Â_t + V_t (the value model's target). V is 0 after the last token (the episode ends
  at EOS, or at the length limit, as in OpenRLHF and veRL).
- RLOO (Ahmadian et al., arXiv 2402.14740, eq. 6; Kool et al. 2019): Â_i = r_i − mean_{j≠i} r_j, the
  leave-one-out baseline, = G/(G−1) · (r_i − mean(r)). No division by a std.
- REINFORCE++ (Hu, arXiv 2501.03262, §3): the return Σ_{s≥t} r_s of the token rewards (γ = 1),
  normalised over the whole batch's tokens, (R − mean) / std: no critic and no group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.tensors import last_token_index, masked_mean


def token_rewards(outcome: Tensor, mask: Tensor, kl: Tensor | None = None, beta: float = 0.0) -> Tensor:
    """Per-token rewards: −β·D_t at every completion token, plus the outcome reward at the last one.

    Args:
        outcome: one reward per completion.                          # (N,)
        mask: completion mask (1 = a token of the completion).       # (N, T)
        kl: per-token KL estimate D_t (``kl_estimate``), or None.    # (N, T)
        beta: the KL coefficient in the reward (0: outcome only).

    Returns:
        token rewards, 0 off the mask; a completion with no tokens gets none.  # (N, T)
    """
    m = mask.float()
    rewards = torch.zeros_like(m)  # (N, T)
    rewards[torch.arange(len(outcome), device=m.device), last_token_index(m)] = outcome.float()
    rewards = rewards * m
    if kl is not None and beta != 0.0:
        rewards = rewards - beta * kl.float() * m
    return rewards


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a completion's tokens (arXiv 1506.02438, eq. 16).

    Args:
        rewards: per-token rewards (``token_rewards``).                  # (N, T)
        values: V(s_t), the value of the state before token t.           # (N, T)
        mask: completion mask, a prefix of ones per row (right padding). # (N, T)
        gamma, lam: discount γ and GAE's λ (λ = 1: Monte Carlo returns; λ = 0: one-step TD).

    Returns:
        (advantages, returns), both 0 off the mask.  # (N, T), (N, T)
    """
    m = mask.float()
    v = values.float() * m
    r = rewards.float() * m
    advantages = torch.zeros_like(r)  # (N, T)
    running = torch.zeros_like(r[:, 0])  # (N,) Â_{t+1}
    next_value = torch.zeros_like(r[:, 0])  # (N,) V_{t+1}, 0 past the last token
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = v[:, t]
    return advantages, (advantages + v) * m


def whiten(x: Tensor, mask: Tensor, total: tuple[Tensor, Tensor, Tensor] | None = None, eps: float = 1e-8) -> Tensor:
    """(x − mean) / std over the masked entries (the sample std, N − 1); 0 off the mask.

    ``total`` = (count, sum, sum of squares) over the whole batch when it spans several devices
    (the caller all-reduces them); by default this tensor's own. One masked value, or all equal: 0.
    """
    m = mask.float()
    xf = x.float() * m
    count, s, sq = total if total is not None else (m.sum(), xf.sum(), (xf * xf).sum())
    mean = s / count.clamp(min=1)
    var = (sq - count * mean * mean) / (count - 1).clamp(min=1)
    std = var.clamp(min=0).sqrt()
    if float(count) < 2 or float(std) <= eps:
        return torch.zeros_like(xf)
    return (xf - mean) / (std + eps) * m


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Leave-one-out advantages, one per completion (RLOO, arXiv 2402.14740, eq. 6).

    Args:
        rewards: one per completion, groups contiguous as in ``group_advantages``.  # (N,)
        group_size: G ≥ 2 completions per prompt.

    Returns:
        Â_i = r_i − (Σ_j r_j − r_i) / (G − 1); a group with equal rewards gets exactly 0.  # (N,)
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a baseline from the other samples), got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)  # (P, G)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (P, G)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)  # (P, 1)
    return torch.where(constant, torch.zeros_like(grouped), grouped - baseline).reshape(-1)  # (N,)


def reinforce_pp_advantages(rewards: Tensor, mask: Tensor, gamma: float = 1.0,
                            total: tuple[Tensor, Tensor, Tensor] | None = None) -> Tensor:
    """REINFORCE++ advantages (arXiv 2501.03262, §3): batch-normalised returns of the token rewards.

    Args:
        rewards: per-token rewards (``token_rewards``: outcome at the end, −β·KL per token). # (N, T)
        mask: completion mask.                                                              # (N, T)
        gamma: discount of the return (the paper: 1).
        total: the whole batch's (count, sum, sum of squares) of the returns, for ``whiten``.

    Returns:
        (R_t − mean) / std over every completion token of the batch.  # (N, T)
    """
    returns = discounted_returns(rewards, mask, gamma)
    return whiten(returns, mask, total)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """R_t = Σ_{s≥t} γ^{s−t} r_s over each row's masked tokens.  # (N, T)"""
    m = mask.float()
    r = rewards.float() * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = (r[:, t] + gamma * running) * m[:, t]
        out[:, t] = running
    return out


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's clipped value loss per token (arXiv 1707.06347 baselines; OpenRLHF ``ValueLoss``).

    ½ · max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, −c, c): the value model
    cannot move further than c from the values it had at sampling. ``clip=None``: ½ (V − R)².

    Args:
        values: V_θ(s_t), with grad.        # (N, T)
        old_values: V at sampling time.     # (N, T)
        returns: the targets R_t (``gae``). # (N, T)

    Returns:
        per-token loss (N, T) and where the clipped term is the larger (N, T) bool.
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var(R − V) / Var(R) over the masked tokens: how much of the return the value model explains."""
    m = mask.float()
    var_r = masked_mean((returns - masked_mean(returns, m)) ** 2, m)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, m)) ** 2, m)
    return 1.0 - var_d / var_r.clamp(min=1e-8)
