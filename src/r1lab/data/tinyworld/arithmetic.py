"""Multi-step integer arithmetic with a step-by-step solution.

A task is a left-to-right chain of additions and subtractions, e.g. "What is 12 + 7 - 5?", solved as
"<think> 12 plus 7 is 19. 19 minus 5 is 14. </think> <answer> 14 </answer>". Difficulty is the number
of operations; the operand range is a separate knob. The chain of thought can be written in English
or Chinese (``language``), which is what gives the language-consistency reward of R1 something to
fix: a policy trained on a bilingual base corpus mixes the two, as R1-Zero did.
"""

from __future__ import annotations

import random

# The words of a reasoning step, per language. Numbers are shared by every language.
STEP_WORDS = {
    "en": {"+": "plus", "-": "minus", "is": "is", "sep": ". ", "end": "."},
    "zh": {"+": "加", "-": "减", "is": "得", "sep": "。", "end": "。"},
}


def _step(a: int, op: str, b: int, result: int, language: str) -> str:
    w = STEP_WORDS[language]
    if language == "en":
        return f"{a} {w[op]} {b} {w['is']} {result}"
    return f"{a}{w[op]}{b}{w['is']}{result}"


def solve_chain(operands: list[int], ops: list[str], language: str = "en") -> tuple[str, int]:
    """The chain of thought (without tags) and the final value of a left-to-right chain."""
    value = operands[0]
    steps = []
    for op, b in zip(ops, operands[1:]):
        result = value + b if op == "+" else value - b
        steps.append(_step(value, op, b, result, language))
        value = result
    w = STEP_WORDS[language]
    return w["sep"].join(steps) + w["end"], value


def generate_arithmetic_task(
    rng: random.Random,
    difficulty: int = 2,
    max_operand: int = 20,
    language: str = "en",
    allow_negative: bool = False,
) -> dict:
    """One task record: prompt, full R1-format response, reference answer and metadata.

    ``difficulty`` is the number of operations (1 = "a + b"). Unless ``allow_negative``, operands of a
    subtraction are drawn so that no intermediate result is negative, which keeps every token of
    the solution inside the digits the tiny model has seen.
    """
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    operands = [rng.randint(1, max_operand)]
    ops: list[str] = []
    value = operands[0]
    for _ in range(difficulty):
        op = rng.choice("+-")
        if op == "-" and not allow_negative and value < 1:
            op = "+"
        b = rng.randint(1, max_operand if (op == "+" or allow_negative) else min(max_operand, value))
        ops.append(op)
        operands.append(b)
        value = value + b if op == "+" else value - b
    expression = " ".join([str(operands[0])] + [f"{op} {b}" for op, b in zip(ops, operands[1:])])
    thought, answer = solve_chain(operands, ops, language)
    return {
        "prompt": f"What is {expression}?",
        "response": f"<think> {thought} </think> <answer> {answer} </answer>",
        "answer": str(answer),
        "task": "arith",
        "language": "en",  # the target language of the chain of thought (R1's consistency reward)
        "cot_language": language,
        "difficulty": difficulty,
    }


def short_response(record: dict) -> str:
    """The arithmetic task's solution as many data sets write it: the expression and its value in one
    line, e.g. "<think> 12 + 7 - 5 = 14 </think> <answer> 14 </answer>", with no intermediate steps."""
    expression = record["prompt"].removeprefix("What is ").removesuffix("?")
    return f"<think> {expression} = {record['answer']} </think> <answer> {record['answer']} </answer>"
