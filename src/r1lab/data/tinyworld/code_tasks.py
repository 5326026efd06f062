"""Tiny code tasks: write a one-line Python function of x, checked by running tests.

The tiny world's stand-in for R1's code problems (arXiv 2501.12948, §2.2.2: code answers are scored
by "predefined test cases"). A task is a chain of operations on x, e.g.

    prompt    Write a Python function f(x) that returns x times 3 plus 1.
    response  <think> multiply x by 3 then add 1 </think> <answer> def f(x): return x*3+1 </answer>

Programs are kept short and regular so a few-layer transformer can learn them from a few hundred
examples. "times" only ever comes before any "plus"/"minus", so reading the prompt left to right and
Python's operator precedence agree and no program needs brackets. Difficulty is the number of
operations. With language="zh" the chain of thought is written in Chinese; the prompt stays English.
"""

from __future__ import annotations

import random

OPERATIONS = {  # name -> (Python symbol, smallest and largest constant)
    "times": ("*", 2, 5),
    "plus": ("+", 1, 9),
    "minus": ("-", 1, 9),
}
THINK_WORDS = {  # how a step reads in the chain of thought; {c} is the constant
    "en": {
        "first": {"times": "multiply x by {c}", "plus": "add {c} to x", "minus": "subtract {c} from x"},
        "next": {"times": "multiply by {c}", "plus": "add {c}", "minus": "subtract {c}"},
        "then": " then ",
    },
    "zh": {
        "first": {"times": "乘 {c}", "plus": "加 {c}", "minus": "减 {c}"},
        "next": {"times": "乘 {c}", "plus": "加 {c}", "minus": "减 {c}"},
        "then": " 然后 ",
    },
}
N_TESTS = 5


def _apply(steps: list[tuple[str, int]], x: int) -> int:
    """The steps applied to x left to right (equal to Python's precedence, see the module docstring)."""
    for op, c in steps:
        x = x * c if op == "times" else x + c if op == "plus" else x - c
    return x


def generate_code_task(rng: random.Random, difficulty: int = 1, language: str = "en") -> dict:
    """One code task record: prompt, R1-format response, reference program and its tests.

    Uses only `rng`, so a seeded Random gives the same tasks on any machine. Tests are
    [[x], f(x)] pairs for distinct integers x in 0..9, as the code reward expects.
    """
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    if language not in THINK_WORDS:
        raise ValueError(f"language must be one of {sorted(THINK_WORDS)}, got {language!r}")
    steps: list[tuple[str, int]] = []
    for _ in range(difficulty):
        # times may follow only times: x*2+3 needs no brackets, (x+3)*2 would
        choices = ["times", "plus", "minus"] if all(op == "times" for op, _ in steps) else ["plus", "minus"]
        op = rng.choice(choices)
        _, low, high = OPERATIONS[op]
        steps.append((op, rng.randint(low, high)))

    expression = "x" + "".join(f"{OPERATIONS[op][0]}{c}" for op, c in steps)
    program = f"def f(x): return {expression}"
    words = THINK_WORDS[language]
    thought = words["then"].join(
        words["first" if i == 0 else "next"][op].format(c=c) for i, (op, c) in enumerate(steps)
    )
    inputs = rng.sample(range(10), N_TESTS)
    tests = [[[x], _apply(steps, x)] for x in inputs]
    return {
        "prompt": "Write a Python function f(x) that returns x "
        + " ".join(f"{op} {c}" for op, c in steps)
        + ".",
        "response": f"<think> {thought} </think> <answer> {program} </answer>",
        "answer": program,
        "task": "code",
        "tests": tests,
        "language": language,
        "difficulty": difficulty,
    }
