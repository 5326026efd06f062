"""Weighted sums of rule rewards, built from the Hydra `reward` config.

DeepSeek-R1 (arXiv 2501.12948): R1-Zero adds accuracy and format rewards with equal weight
(§2.2.2); reasoning RL "sums the accuracy of reasoning tasks and the reward for language
consistency" (§2.3.2). A RewardSet is that sum, with every term kept for logging.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

RewardFn = Callable[[str, str, dict], float]


@dataclass(frozen=True)
class RewardFunction:
    """One term of the reward: r = weight · fn(prompt, completion, reference)."""

    name: str
    fn: RewardFn
    weight: float = 1.0


def resolve_reward(spec: str | RewardFn, key: str = "module.rewards.functions.?") -> RewardFn:
    """A reward function from a short name in REWARDS, a dotted import path, or a callable.

    `key` names the config entry in error messages ("module.rewards.functions.foo: ...").
    """
    from r1lab.rewards import REWARDS  # the registry imports this module, so look it up late

    if callable(spec) or hasattr(spec, "score_batch"):
        return spec
    if not isinstance(spec, str):
        # ValueError, not TypeError: every bad reward config entry raises the same error type
        raise ValueError(f"{key}: expected a reward name, a dotted path or a callable, got {spec!r}")  # noqa: TRY004
    if spec in REWARDS:
        return REWARDS[spec]
    module_name, _, attr = spec.rpartition(".")
    if not module_name:
        raise ValueError(f"{key}: unknown reward {spec!r}; known names: {sorted(REWARDS)}, or a dotted path")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"{key}: cannot import {spec!r} ({error})") from error
    if not callable(fn):
        raise ValueError(f"{key}: {spec!r} is not callable")  # noqa: TRY004
    return fn


class RewardSet:
    """Scores a batch of completions with several rewards and their weighted sum.

    functions: config key → short name ("accuracy"), dotted path or callable.
    weights: config key → weight; a key missing here weighs 1.0, a key not in `functions` is an error.
    Completions of code tasks (reference["task"] == "code") are scored on `max_workers` threads:
    their rewards spend their time waiting on a sandbox subprocess, not holding the GIL.
    A function object with ``score_batch(prompts, completions, references) -> (N,)`` (a neural
    reward model, ``r1lab.rm.NeuralReward``) is called once per batch instead of once per completion.
    """

    def __init__(
        self,
        functions: Mapping[str, str | RewardFn],
        weights: Mapping[str, float] | None = None,
        max_workers: int = 4,
    ) -> None:
        weights = dict(weights or {})
        for key in weights:
            if key not in functions:
                raise ValueError(f"module.rewards.weights.{key}: no reward function of that name")
        self.functions = [
            RewardFunction(
                str(key), resolve_reward(spec, f"module.rewards.functions.{key}"), self._weight(key, weights)
            )
            for key, spec in functions.items()
        ]
        if not self.functions:
            raise ValueError("module.rewards.functions: at least one reward function is needed")
        self.max_workers = max_workers

    @staticmethod
    def _weight(key: str, weights: Mapping[str, float]) -> float:
        try:
            return float(weights.get(key, 1.0))
        except (TypeError, ValueError) as error:
            raise ValueError(f"module.rewards.weights.{key}: not a number ({weights[key]!r})") from error

    def score(
        self, prompts: list[str], completions: list[str], references: list[dict]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total (N,), {name: (N,)}): each reward per completion and their weighted sum."""
        n = len(completions)
        if len(prompts) != n or len(references) != n:
            raise ValueError(f"score: {len(prompts)} prompts, {n} completions, {len(references)} references")
        batched = [f for f in self.functions if hasattr(f.fn, "score_batch")]
        jobs = [(f, i) for f in self.functions if f not in batched for i in range(n)]
        slow = [(f, i) for f, i in jobs if references[i].get("task") == "code"]
        values: dict[tuple[str, int], float] = {}
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:  # starts threads only on submit
            futures = {
                (f.name, i): pool.submit(f.fn, prompts[i], completions[i], references[i]) for f, i in slow
            }
            for f, i in jobs:
                if (f.name, i) not in futures:
                    values[f.name, i] = f.fn(prompts[i], completions[i], references[i])
            values.update({k: fut.result() for k, fut in futures.items()})
        per_function = {
            f.name: torch.tensor([float(values[f.name, i]) for i in range(n)], dtype=torch.float32)
            for f in self.functions if f not in batched
        }  # name -> (N,)
        for f in batched:
            per_function[f.name] = torch.as_tensor(
                f.fn.score_batch(prompts, completions, references)).detach().float().cpu().reshape(n)
        for name, values in per_function.items():
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            if bad:  # a NaN reward would become a NaN advantage, loss and update
                i = bad[0]
                raise ValueError(f"module.rewards.functions.{name}: returned {values[i].item()} for completion {i} "
                                 f"of the batch (prompt {prompts[i][:80]!r}); a reward must be a finite number")
        total = torch.zeros(n, dtype=torch.float32)  # (N,)
        for f in self.functions:
            total += f.weight * per_function[f.name]
        return total, per_function

    __call__ = score

    def __repr__(self) -> str:
        terms = " + ".join(f"{f.weight:g}·{f.name}" for f in self.functions)
        return f"RewardSet({terms})"
