"""Synthetic preference candidates: the tiny world's reference solution and controlled corruptions of it,
so that a reward model can be trained before any policy exists.

Two independent kinds of corruption: an error (the solution becomes wrong: a wrong final number, an
arithmetic slip carried to the end) and a style (it stays right but reads worse: broken tags,
Chinese words in the chain of thought, a padded verbose chain of thought). Wrong candidates get a
random style too, so that no style gives away correctness: a reward model cannot learn "verbose is
good" in place of "right is good". The rule (``r1lab.jobs.pairs``), not the corruption, decides who wins.
"""

from __future__ import annotations

import random
import re

from r1lab.data.tinyworld.arithmetic import STEP_WORDS
from r1lab.rewards.format import tag_blocks

Solution = tuple[str, str]  # (chain of thought, final answer), both without tags


def compose_solution(think: str, answer: str) -> str:
    """A completion in the R1 format from its chain of thought and answer."""
    return f"<think> {think} </think> <answer> {answer} </answer>"


def _parts(record: dict) -> Solution | None:
    think, answer = tag_blocks(record["response"], "think"), tag_blocks(record["response"], "answer")
    return (think[0].strip(), answer[0].strip()) if think and answer else None


def wrong_answer(record: dict, rng: random.Random) -> Solution | None:
    """Error: the final answer's last number moved by 1–3, contradicting the chain of thought."""
    think, answer = _parts(record) or (None, None)
    numbers = list(re.finditer(r"\d+", answer or ""))
    if not numbers:
        return None
    m = numbers[-1]
    value = int(m.group())
    new = value + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0])
    return think, answer[: m.start()] + str(new) + answer[m.end():]


_CHAIN = re.compile(r"What is (\d+(?: [+-] \d+)+)\?")


def arithmetic_slip(record: dict, rng: random.Random) -> Solution | None:
    """Error: one step of an arithmetic chain computed wrong and carried on (consistent, but wrong)."""
    match = _CHAIN.fullmatch(record["prompt"].strip()) if record.get("task") == "arith" else None
    if match is None:
        return None
    tokens = match.group(1).split()
    operands, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    words = STEP_WORDS.get(record.get("cot_language", "en"), STEP_WORDS["en"])
    space = " " if words is STEP_WORDS["en"] else ""
    slip_at = rng.randrange(len(ops))
    value, steps = operands[0], []
    for i, (op, b) in enumerate(zip(ops, operands[1:])):
        result = value + b if op == "+" else value - b
        if i == slip_at:
            result += rng.choice([d for d in (-2, -1, 1, 2) if result + d >= 0])
        steps.append(f"{value}{space}{words[op]}{space}{b}{space}{words['is']}{space}{result}")
        value = result
    return words["sep"].join(steps) + words["end"], str(value)


def broken_tags(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: the R1 tags broken (a missing tag, swapped blocks, or an untagged answer)."""
    return rng.choice([
        f"<think> {think} <answer> {answer} </answer>",
        f"{think} </think> <answer> {answer} </answer>",
        f"<answer> {answer} </answer> <think> {think} </think>",
        f"<think> {think} </think> {answer}",
    ])


ZH_WORDS = {"plus": "加", "minus": "减", "is": "得", "then": "然后", "add": "加", "subtract": "减",
            "multiply": "乘", "by": "以", "to": "到", "from": "从"}


def mixed_language(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: about half of the translatable English words of the chain of thought in Chinese."""
    words = list(re.finditer(r"[A-Za-z]+", think))
    translatable = [m for m in words if m.group() in ZH_WORDS]
    n = max(1, len(translatable) // 2)
    if not translatable or n >= len(words):  # every word would be Chinese: not a mixed chain of thought
        return None
    for m in sorted(rng.sample(translatable, n), key=lambda m: m.start(), reverse=True):
        think = think[: m.start()] + ZH_WORDS[m.group()] + think[m.end():]
    return compose_solution(think, answer)


def verbose(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: a padded chain of thought, with filler and the whole chain said twice."""
    return compose_solution(f"Let me work through this step by step. {think} Let me double-check that: {think}", answer)


def clean(think: str, answer: str, rng: random.Random) -> str | None:
    return compose_solution(think, answer)


ERRORS = {"wrong_answer": wrong_answer, "arithmetic_slip": arithmetic_slip}
STYLES = {"clean": clean, "broken_tags": broken_tags, "mixed_language": mixed_language, "verbose": verbose}


def synthetic_candidates(record: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(kind, completion) candidates of one task: the reference, each style of the right solution
    (``clean`` is the reference itself), and each error in a randomly drawn style.

    (Every error in every style, i.e. many minimal right/wrong pairs, trained the tiny reward model
    worse: 0.60 against 0.76 held-out pair accuracy after 750 steps; the easy style pairs seem to
    bootstrap the features that checking an answer needs.)"""
    candidates = [("reference", record["response"])]
    right = _parts(record)
    if right is None:
        return candidates
    kinds = [(None, style) for style in STYLES if style != "clean"]
    kinds += [(error, rng.choice(list(STYLES))) for error in ERRORS]
    for error, style in kinds:
        solution = right if error is None else ERRORS[error](record, rng)
        text = None if solution is None else STYLES[style](*solution, rng)
        if text is not None and text not in (t for _, t in candidates):
            candidates.append((style if error is None else f"{error}+{style}", text))
    return candidates
