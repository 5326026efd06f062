"""The Bradley–Terry loss of reward-model training, as a pure function of the two rewards.

P(chosen ≻ rejected) = σ(r_c − r_r) (Bradley & Terry 1952; InstructGPT arXiv 2203.02155 eq. 1), so the
loss is −log σ(r_c − r_r) averaged over pairs. Two optional terms, both off by default:

- ``margin``: −log σ(r_c − r_r − m), a per-pair margin the pair must be won by (Llama 2,
  arXiv 2307.09288 §3.2.2, where m grows with how clearly the annotators preferred the chosen one);
- ``center_coef``: + c·mean((r_c + r_r)²), which pins the mean reward near zero (the BT loss alone
  is invariant to a constant shift; "reward centering" of Eisenstein et al., arXiv 2312.09244, as TRL's
  ``center_rewards_coefficient``). A reward used next to 0/1 rule rewards then has a known offset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean −log σ(r_c − r_r − margin) (+ c·mean((r_c + r_r)²)) and the pair metrics.

    r_chosen, r_rejected: (B,) scalar rewards of each pair's chosen and rejected response.
    margin: (B,) or a float, or None for no margin.
    Metrics (detached): ``accuracy`` (share of pairs with r_c > r_r; a tie counts as wrong),
    ``margin`` (mean r_c − r_r), ``reward_mean``/``reward_min``/``reward_max`` over all 2B rewards.
    """
    diff = r_chosen.float() - r_rejected.float()  # (B,)
    logits = diff if margin is None else diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * (r_chosen.float() + r_rejected.float()).pow(2).mean()
    both = torch.cat([r_chosen, r_rejected]).detach().float()  # (2B,)
    metrics = {
        "accuracy": (diff > 0).float().mean().detach(),
        "margin": diff.mean().detach(),
        "reward_mean": both.mean(),
        "reward_min": both.min(),
        "reward_max": both.max(),
    }
    return loss, metrics
