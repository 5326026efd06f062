"""DAPO's dynamic sampling (arXiv 2503.14476, §3.2): train only on groups that carry a signal.

A group whose rewards are all equal (every completion right, or every one wrong) has advantage 0
on every token: it adds nothing to the policy gradient but still counts in the batch, so the
effective batch shrinks as accuracy rises. DAPO over-samples and keeps filling the batch with
groups whose rewards differ. The GRPO module samples in rounds; these are the pure parts:
which groups are informative, which to keep, and joining the rounds' rollouts into one.
"""

from __future__ import annotations

import torch
from torch import Tensor

# rollout fields padded on the left (prompts are left-padded); every other 2-D field on the right
LEFT_PADDED = {"prompt_ids", "prompt_mask"}


def informative_groups(advantages: Tensor, group_size: int) -> Tensor:
    """(P,) True where a group's advantages are not all exactly 0 (its rewards had a spread).
    ``group_advantages`` and ``process_advantages`` return exact zeros for constant groups."""
    return advantages.reshape(advantages.shape[0] // group_size, -1).abs().amax(dim=1) > 0  # (P,)


def select_groups(informative: list[bool], size: int) -> tuple[list[int], int]:
    """(indices of ``size`` groups to train on, how many of them are informative): the first
    ``size`` informative groups in sampling order; if there are fewer, the batch is filled up with
    the earliest constant ones (their advantage is 0: they add no policy gradient, only the KL
    term), so the batch always has its configured size."""
    good = [i for i, flag in enumerate(informative) if flag][:size]
    rest = [i for i, flag in enumerate(informative) if not flag][: size - len(good)]
    return sorted(good + rest), len(good)


def pad_cat(tensors: list[Tensor], value: float | int | bool = 0, left: bool = False) -> Tensor:
    """Concatenate (N_i, T_i, …) tensors along dim 0, padding dim 1 to the widest with ``value``."""
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = t.new_full((t.shape[0], width - t.shape[1], *t.shape[2:]), value)
        padded.append(torch.cat([pad, t] if left else [t, pad], dim=1))
    return torch.cat(padded)


def concat_rollouts(parts: list[dict], pad_id: int) -> dict:
    """One rollout from several rounds' rollouts (dicts of per-completion rows): lists are joined,
    1-D tensors concatenated, 2-D ones padded (prompts on the left with ``pad_id``/0, the rest on
    the right with 0: masks and log-probs are 0 off the completion), nested dicts joined alike,
    None stays None, anything else is taken from the first part."""
    out = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, dict):
            out[key] = concat_rollouts(values, pad_id)
        elif isinstance(first, list):
            out[key] = [x for v in values for x in v]
        elif isinstance(first, Tensor) and first.dim() == 1:
            out[key] = torch.cat(values)
        elif isinstance(first, Tensor):
            value = pad_id if key == "prompt_ids" else (False if first.dtype == torch.bool else 0)
            out[key] = pad_cat(values, value, left=key in LEFT_PADDED)
        else:
            out[key] = first
    return out


def take_rows(roll: dict, rows: Tensor) -> dict:
    """The rollout restricted to ``rows`` (completions), nested dicts alike."""
    out = {}
    index = rows.tolist()
    for key, value in roll.items():
        if isinstance(value, dict):
            out[key] = take_rows(value, rows)
        elif isinstance(value, list):
            out[key] = [value[i] for i in index]
        elif isinstance(value, Tensor):
            out[key] = value[rows.to(value.device)]
        else:
            out[key] = value
    return out
