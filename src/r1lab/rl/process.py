"""Step rewards as tensors, and outcome plus process advantages (DeepSeekMath, arXiv 2402.03300, §4.1).

``process_advantages`` (``r1lab.rl.advantages``) takes step rewards padded to K steps with the token
where each step ends; ``pad_steps`` builds those from ragged per-completion lists, and
``combined_advantages`` gives GRPO's three forms of supervision one shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1lab.rl.advantages import process_advantages

SUPERVISIONS = ("outcome", "process", "both")


def pad_steps(rewards: list[list[float]], ends: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """(step rewards (N, K), step end index (N, K), step mask (N, K)) from ragged lists, K the most
    steps of any completion (at least 1); padded steps have reward 0, end 0 and mask False."""
    if len(rewards) != len(ends) or any(len(r) != len(e) for r, e in zip(rewards, ends)):
        raise ValueError("pad_steps: every completion needs one end index per step reward")
    k = max([1, *map(len, rewards)])
    r = torch.zeros(len(rewards), k)  # (N, K)
    e = torch.zeros(len(rewards), k, dtype=torch.long)  # (N, K)
    m = torch.zeros(len(rewards), k, dtype=torch.bool)  # (N, K)
    for i, (ri, ei) in enumerate(zip(rewards, ends)):
        r[i, : len(ri)] = torch.tensor(ri, dtype=torch.float32)
        e[i, : len(ei)] = torch.tensor(ei, dtype=torch.long)
        m[i, : len(ri)] = True
    return r, e, m


def combined_advantages(
    supervision: str,
    outcome: Tensor,
    group_size: int,
    *,
    seq_len: int,
    step_rewards: Tensor | None = None,
    step_end_index: Tensor | None = None,
    step_mask: Tensor | None = None,
) -> Tensor:
    """GRPO's advantages under outcome, process or both kinds of supervision.

    ``outcome`` are the outcome advantages, (N,) (``group_advantages``) or (N, T) per token.
    - ``outcome``: returned as they are.
    - ``process``: ``process_advantages(step_rewards, …)``, one per token (§4.1.3).           # (N, T)
    - ``both``: their sum, the outcome advantage broadcast to every token of its completion.  # (N, T)
      DeepSeekMath defines the two forms apart; the sum, each term normalised over its group on
      its own so that both weigh alike, is how PRIME (arXiv 2502.01456, §3) adds its outcome and
      process returns. Process rewards are always divided by their group's std, as §4.1.3 does.
    """
    if supervision not in SUPERVISIONS:
        raise ValueError(f"unknown supervision {supervision!r}; valid: {', '.join(SUPERVISIONS)}")
    if supervision == "outcome":
        return outcome
    if step_rewards is None or step_end_index is None:
        raise ValueError(f"supervision={supervision!r} needs step rewards and their end indices")
    process = process_advantages(step_rewards, step_end_index, group_size, seq_len, step_mask=step_mask)  # (N, T)
    if supervision == "process":
        return process
    return process + (outcome.unsqueeze(-1) if outcome.dim() == 1 else outcome)
