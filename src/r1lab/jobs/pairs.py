"""Preference pairs from ranked candidates: the rules that rank, and the pairs they make.

R1 (arXiv 2501.12948 §2.3.4) trains its reward models on human preference pairs; the tiny world
stands in for the annotators with a stated rule. A rule is any function
``rank(prompt, completion, reference) -> comparable score`` (a tuple, compared left to right); of
two completions of one prompt, the higher score is ``chosen``, equal scores are no pair. The
default, ``r1_preference``, ranks as R1's guidelines read: a correct answer beats a wrong one;
among correct ones the well-formed one wins, then the single-language one, then the more concise.
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable

from r1lab.rewards.accuracy import accuracy_reward
from r1lab.rewards.format import extract_think, final_answer_view, has_format
from r1lab.rewards.language import language_consistency

Rule = Callable[[str, str, dict], object]


# -- rules -------------------------------------------------------------------------------------
def r1_preference(prompt: str, completion: str, reference: dict) -> tuple:
    """(1, well-formed, single-language, −length bucket) for a correct completion, (0,) for a wrong one.

    Wrong completions all tie (no pair between two wrong answers). Correct: strict R1 format, then a
    chain of thought wholly in the target language, then conciseness: the completion's length in
    characters, in buckets of ×1.25 (floor(log_1.25 chars)), so a few characters never decide.
    """
    if accuracy_reward(prompt, completion, reference) < 1.0:
        return (0,)
    target = reference.get("language") or "en"
    single_language = language_consistency(extract_think(completion), target) >= 0.999
    bucket = math.floor(math.log(max(len(completion), 1), 1.25))
    return (1, int(has_format(completion, strict=True)), int(single_language), -bucket)


def correctness(prompt: str, completion: str, reference: dict) -> tuple:
    """Only the answer counts: (accuracy,)."""
    return (accuracy_reward(prompt, completion, reference),)


RULES: dict[str, Rule] = {"r1_preference": r1_preference, "correctness": correctness}


def resolve_rule(spec: str | Rule) -> Rule:
    """A rule from a short name in RULES or a dotted import path (``my.module.rank``)."""
    if callable(spec):
        return spec
    if spec in RULES:
        return RULES[spec]
    module_name, _, attr = spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"rule: unknown rule {spec!r}; known: {sorted(RULES)}, or a dotted path ({error})") from error


def preference_margin(better, worse) -> float:
    """How clearly ``better`` wins: 2^-k for tuples that first differ at position k (correctness 1,
    format 0.5, language 0.25, length 0.125 under ``r1_preference``); the difference for numbers."""
    if isinstance(better, tuple) and isinstance(worse, tuple):
        k = next((i for i, (a, b) in enumerate(zip(better, worse)) if a != b), min(len(better), len(worse)))
        return 2.0**-k
    return float(better - worse)


def rank_pairs(texts: list[str], scores: list, rng: random.Random, max_pairs: int | None) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs with a strictly higher chosen score, at most ``max_pairs`` drawn
    at random; identical texts never pair."""
    pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts))
             if scores[i] > scores[j] and texts[i] != texts[j]]
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = sorted(rng.sample(pairs, max_pairs))
    return pairs


def make_pairs(record: dict, candidates: list[tuple[str, str]], rule: Rule, rule_name: str,
               rng: random.Random, max_pairs: int | None, view: str = "response", source: str = "") -> list[dict]:
    """Preference records for one prompt's candidates, ranked by ``rule`` (on the whole completion)."""
    kinds, texts = [k for k, _ in candidates], [t for _, t in candidates]
    scores = [rule(record["prompt"], t, record) for t in texts]
    shown = [final_answer_view(t) for t in texts] if view == "answer" else texts
    plain = [list(x) if isinstance(x, tuple) else x for x in scores]  # JSON has no tuples
    meta = {"answer": str(record.get("answer", "")), "task": record.get("task", "math"),
            "language": record.get("language", "en"), "rule": rule_name, "prompt_id": record.get("id"),
            "source": source}
    return [
        {"prompt": record["prompt"], "chosen": shown[i], "rejected": shown[j],
         "margin": preference_margin(scores[i], scores[j]), **meta, "chosen_kind": kinds[i],
         "rejected_kind": kinds[j], "chosen_score": plain[i], "rejected_score": plain[j]}
        for i, j in rank_pairs(shown, scores, rng, max_pairs)
    ]
