"""Accuracy rewards for reasoning-gym records: the task's own verifier on the <answer> block.

The answer is the last ``<answer>…</answer>`` block (``r1lab.rewards.format.extract_answer``, with
its ``\\boxed{}`` fallback), scored by the ``score_answer(answer, entry)`` of the record's
reasoning-gym data set, rebuilt from the config the record carries (``r1lab.data.reasoning_gym``).
A record without that field (one that went through a stage that keeps only the common fields) is
scored from ``task`` and ``answer`` alone, which is enough for every verifier that reads only
``entry["answer"]``.

Two functions: ``reasoning_gym_reward`` returns reasoning-gym's score as it is, including its
partial credit (many tasks give ``len(reference) / len(answer)`` when the reference is a substring
of a wrong answer, so "-17" earns 0.67 against "17"); ``reasoning_gym_accuracy`` is R1's binary
accuracy reward (arXiv 2501.12948 §2.2.2): 1.0 only when the verifier gives full marks. Neither raises.
"""

from __future__ import annotations

import functools
import json
import math

from r1lab.rewards.format import extract_answer

__all__ = ["reasoning_gym_accuracy", "reasoning_gym_reward", "score_answer"]

# Completions are capped by the generation length anyway; this only keeps a verifier that is
# quadratic in the answer (substring search, sympy) away from a pathological string.
MAX_ANSWER_CHARS = 5000


@functools.lru_cache(maxsize=64)
def _dataset(name: str, config_json: str):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=0, size=1, **json.loads(config_json))


def score_answer(answer: str | None, reference: dict) -> float:
    """reasoning-gym's score in [0, 1] of an extracted answer; 0.0 on any failure."""
    if answer is None or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    from r1lab.data.reasoning_gym import entry_of  # here: importing the rewards stays free of the data stack

    try:
        rg = reference.get("reasoning_gym") or {}
        name = rg.get("dataset") or reference.get("task")
        dataset = _dataset(str(name), json.dumps(rg.get("config") or {}, sort_keys=True))
        score = float(dataset.score_answer(answer, entry_of(reference)))
    except Exception:  # noqa: BLE001 -- verifiers of 100 tasks raise many types on odd answers
        return 0.0
    if not math.isfinite(score):
        return 0.0
    return min(max(score, 0.0), 1.0)


def reasoning_gym_reward(prompt: str, completion: str, reference: dict) -> float:
    """reasoning-gym's own score of the completion's final answer (partial credit included)."""
    try:
        return score_answer(extract_answer(completion), reference)
    except Exception:  # noqa: BLE001 -- a reward never raises
        return 0.0


def reasoning_gym_accuracy(prompt: str, completion: str, reference: dict) -> float:
    """1.0 if reasoning-gym's verifier gives the final answer full marks, else 0.0."""
    return float(reasoning_gym_reward(prompt, completion, reference) >= 1.0)
