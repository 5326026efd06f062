"""Reasoning steps of a completion and their rule-checked rewards (process supervision).

DeepSeekMath (arXiv 2402.03300, §4.1.3) gives GRPO a reward at the end of each reasoning step. Two
things make that hard in general: splitting a solution into steps, and labelling each step. In the
tiny world both are exact:

- ``split_steps``: the chain of thought (what lies between ``<think>`` and ``</think>``; see
  ``reasoning_region`` for completions without the tags) cut into steps by a rule: ``line`` (one step per
  non-empty line), ``sentence`` (one step per sentence, ending at ``.``/``!``/``?`` before a space
  or the end, or at ``。！？``), or any other string, a regular expression whose matches are the
  steps. A completion with no chain of thought has no steps; a completion cut mid-sentence ends
  with the unfinished step. Steps are character spans of the completion text.
- ``token_spans``: those character spans as token spans of the sampled ids, found by decoding
  prefixes of the ids (so it holds for any tokenizer, whatever re-tokenizing the text would give).
- ``arithmetic_step_labels``: the tiny world's rule verifier. The prompt "What is 12 + 7 - 5?" has
  one right chain, "12 plus 7 is 19. 19 minus 5 is 14."; step j is right (1.0) when it states the
  j-th equation of that chain exactly (operands, operation and result; English or Chinese words),
  and wrong (0.0) otherwise: a false equation, a true one off the chain, a step beyond the chain's
  length, or text that is no equation. Code tasks have no checkable steps: the verifier refuses them
  (``StepsNotApplicable``); a learned process reward model (``r1lab.rm.process``) can score them.
  ``chain_correct`` asks whether a whole chain is right (evaluation's ``chain_correct``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

STEP_RULES = ("line", "sentence")
_RULE_PATTERNS = {
    "line": r"[^\n]+",
    # a sentence ends at . ! ? followed by white space or the end (so "3.5" stays whole), or at 。！？
    "sentence": r"(?:[^.!?。！？\n]|[.!?](?=\S))+(?:[.!?](?=\s|$)|[。！？])?",
}
_THINK_OPEN, _THINK_CLOSE, _ANSWER_OPEN = "<think>", "</think>", "<answer>"


class StepsNotApplicable(ValueError):
    """The rule verifier has no way to check the steps of this task (code tasks)."""


@lru_cache(maxsize=64)
def step_pattern(rule: str) -> re.Pattern:
    """The compiled pattern of a rule name or a regular expression; ValueError if it does not compile."""
    try:
        return re.compile(_RULE_PATTERNS.get(rule, rule))
    except re.error as error:
        names = " nor ".join(STEP_RULES)
        raise ValueError(f"step rule {rule!r}: neither {names} nor a valid regex ({error})") from None


def reasoning_region(completion: str) -> tuple[int, int]:
    """(start, end) characters of the chain of thought: after ``<think>`` (or from 0 when the tag is
    missing, as when a template puts it in the prompt) up to ``</think>``, else up to ``<answer>``,
    else to the end (a completion cut mid-thought)."""
    open_at = completion.find(_THINK_OPEN)
    start = 0 if open_at < 0 else open_at + len(_THINK_OPEN)
    for tag in (_THINK_CLOSE, _ANSWER_OPEN):
        close_at = completion.find(tag, start)
        if close_at >= 0:
            return start, close_at
    return start, len(completion)


def split_steps(completion: str, rule: str = "sentence") -> list[tuple[int, int]]:
    """Character spans [start, end) of the reasoning steps, white space trimmed, empty ones dropped."""
    start, end = reasoning_region(completion)
    spans = []
    for match in step_pattern(rule).finditer(completion, start, end):
        text = match.group()
        lead, trail = len(text) - len(text.lstrip()), len(text) - len(text.rstrip())
        if text.strip():
            spans.append((match.start() + lead, match.end() - trail))
    return spans


def token_spans(char_spans: list[tuple[int, int]], ids: list[int],
                decode: Callable[[list[int]], str]) -> list[tuple[int, int]]:
    """Token spans [first, last] (inclusive) of character spans of ``decode(ids)``.

    The token that holds character c is the first k whose prefix ``decode(ids[:k + 1])`` is longer
    than c, found by binary search over prefix lengths (decoded once each, cached). A span's last
    token holds its last character: that is where a process reward is read.
    """
    lengths: dict[int, int] = {}

    def prefix_len(k: int) -> int:
        if k not in lengths:
            lengths[k] = len(decode(ids[:k]))
        return lengths[k]

    def token_of(char: int) -> int:  # smallest k with prefix_len(k + 1) > char
        lo, hi = 0, len(ids) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if prefix_len(mid + 1) > char:
                hi = mid
            else:
                lo = mid + 1
        return lo

    if not ids:
        return []
    return [(token_of(a), token_of(b - 1)) for a, b in char_spans]


# -- the tiny world's rule verifier ------------------------------------------------------------------
_EXPRESSION = re.compile(r"What is (-?\d+(?:\s*[+-]\s*\d+)+)\?")
_TERM = re.compile(r"([+-])\s*(\d+)")
_EQUATION = re.compile(r"(-?\d+)\s*(plus|minus|加|减|\+|-)\s*(-?\d+)\s*(?:is|得|=)\s*(-?\d+)")
_OPS = {"plus": "+", "加": "+", "+": "+", "minus": "-", "减": "-", "-": "-"}


def reference_chain(prompt: str) -> list[tuple[int, str, int, int]] | None:
    """The right steps (a, op, b, a op b) of an arithmetic prompt, left to right; None if it is none."""
    match = _EXPRESSION.search(prompt)
    if match is None:
        return None
    expression = match.group(1)
    value = int(re.match(r"-?\d+", expression).group())
    chain = []
    for op, b in _TERM.findall(expression[len(str(value)):]):
        result = value + int(b) if op == "+" else value - int(b)
        chain.append((value, op, int(b), result))
        value = result
    return chain


def parse_equation(step: str) -> tuple[int, str, int, int] | None:
    """(a, op, b, c) of a step "a plus b is c" / "a加b得c" / "a + b = c" (the whole step, bar a final
    full stop), else None."""
    match = _EQUATION.fullmatch(step.strip().rstrip(".。").strip())
    if match is None:
        return None
    a, op, b, c = match.groups()
    return int(a), _OPS[op], int(b), int(c)


def arithmetic_step_labels(prompt: str, completion: str, reference: dict, rule: str = "sentence",
                           spans: list[tuple[int, int]] | None = None) -> list[float]:
    """1.0 / 0.0 per step of ``split_steps(completion, rule)`` (or of the given ``spans``): does the
    step state the next equation of the prompt's one right chain? Raises ``StepsNotApplicable`` for
    a task whose steps no rule checks (code)."""
    task = reference.get("task", "arith")
    chain = reference_chain(reference.get("prompt", prompt)) if task == "arith" else None
    if chain is None:
        raise StepsNotApplicable(
            f"the rule step verifier checks the tiny world's arithmetic chains only; task {task!r} "
            f"(prompt {prompt[:60]!r}) has no rule-checkable steps: use a process reward model or outcome supervision")
    spans = split_steps(completion, rule) if spans is None else spans
    return [float(j < len(chain) and parse_equation(completion[a:b]) == chain[j]) for j, (a, b) in enumerate(spans)]


def chain_correct(prompt: str, completion: str, reference: dict, rule: str = "sentence") -> float | None:
    """1.0 when the chain of thought is the prompt's right chain, step for step (every step right and
    none missing: a chain that stops early is not fully correct), else 0.0; None for a record that is
    not a tiny-world arithmetic task (``task`` other than ``arith``), whose steps no rule checks.
    Evaluation's held-out share of fully correct chains of thought (``test/chain_correct``)."""
    if reference.get("task") != "arith":
        return None
    chain = reference_chain(reference.get("prompt", prompt))
    if chain is None:
        return None
    labels = arithmetic_step_labels(prompt, completion, reference, rule)
    return float(len(labels) == len(chain) and all(labels))


class RuleStepReward:
    """The rule verifier as GRPO's step-reward source (``module.step_rewards``):
    ``score_steps(prompts, completions, references, spans) -> one list of 0/1 rewards per completion``."""

    def score_steps(self, prompts: list[str], completions: list[str], references: list[dict],
                    spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        return [arithmetic_step_labels(p, c, r, spans=s) for p, c, r, s in zip(prompts, completions, references, spans)]

    def __repr__(self) -> str:
        return "RuleStepReward(tiny-world arithmetic)"
