"""Accuracy rewards: is the final answer right?

DeepSeek-R1 (arXiv 2501.12948, §2.2.2): "for math problems with deterministic results, the model
is required to provide the final answer in a specified format (e.g., within a box), enabling
reliable rule-based verification of correctness"; for code, a compiler runs predefined tests.
Numbers of the tiny world are compared exactly; real math answers go through `math_verify`.
Every function takes any completion string and never raises because of it. One error comes from
the machine instead: where the kernel cannot contain programs, code_reward, and so accuracy_reward
on a "code" task, raises SandboxUnavailable unless R1LAB_SANDBOX_ALLOW_UNSAFE=1 is set
(docs/sandbox.md), rather than score every program 0.0.
"""

from __future__ import annotations

import re
from fractions import Fraction

import sympy
from math_verify import parse, verify

from r1lab.rewards.code import code_reward
from r1lab.rewards.format import extract_answer

__all__ = [
    "accuracy_reward",
    "accuracy_reward_math",
    "extract_answer",
    "math_verify_match",
    "numeric_match",
]

# The exponent is capped at 3 digits: Fraction("1e999999999") would build a billion-digit integer.
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?")

# math_verify runs without its signal-based timeout (see math_verify_match), so answers that
# would make sympy work for minutes are refused up front. Measured: (x+1)^1000 takes ~5 s to
# compare, 9^(10^8) and 9^(9^9) never finish.
MAX_ANSWER_CHARS = 1000
MAX_EXPONENT_NUMERIC_BASE = 10_000
MAX_EXPONENT_SYMBOLIC_BASE = 100
MAX_FACTORIAL = 10_000


def _as_number(text: str | None) -> Fraction | None:
    """The exact value of a plain number ("1,234.", " -3.5 ", "2e3"), or None."""
    if text is None:
        return None
    text = text.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if len(text) > 100 or not _PLAIN_NUMBER.fullmatch(text):
        return None
    return Fraction(text)


def numeric_match(pred: str | None, ref: str) -> bool:
    """Exact numeric equality ("19" == " 19. " == "19.0", "1,000" == "1000"); False on garbage."""
    a, b = _as_number(pred), _as_number(ref)
    return a is not None and b is not None and a == b


def _tame(parsed: list) -> bool:
    """False when a parsed answer holds a power tower, a huge power or a huge factorial."""
    for expr in parsed:
        if not isinstance(expr, sympy.Basic):
            continue  # math_verify also returns the matched strings
        for node in sympy.preorder_traversal(expr):
            if isinstance(node, sympy.Pow):
                base, exp = node.args
                if exp.is_Number:
                    limit = MAX_EXPONENT_SYMBOLIC_BASE if base.free_symbols else MAX_EXPONENT_NUMERIC_BASE
                    if abs(exp) > limit:
                        return False
                elif not exp.free_symbols and exp.has(sympy.Pow, sympy.factorial):
                    return False  # a numeric tower such as 9^(9^9)
            elif (
                isinstance(node, sympy.factorial)
                and node.args[0].is_Number
                and abs(node.args[0]) > MAX_FACTORIAL
            ):
                return False
    return True


def _parse(text: str) -> list:
    """math_verify.parse without the SIGALRM timeout, trying the text as LaTeX first.

    A bare "2\\pi" is read by the plain-expression parser as 2; wrapped in $…$ it is 2π.
    """
    delimited = any(mark in text for mark in ("$", "\\(", "\\[", "\\boxed"))
    parsed = [] if delimited else parse(f"${text}$", parsing_timeout=None)
    return parsed or parse(text, parsing_timeout=None)


def math_verify_match(pred: str | None, ref: str) -> bool:
    """Mathematical equivalence of two answers (1/2 == 0.5 == \\frac{1}{2}) via `math_verify`.

    math_verify's default timeouts use signal.alarm, which raises outside the main thread; here
    both timeouts are off (parsing_timeout=None, timeout_seconds=None) so the reward works in
    threads, dataloader workers and DDP processes alike, and `_tame` refuses the answers that
    would otherwise hang. Any exception counts as a mismatch.
    """
    if pred is None or not pred.strip() or len(pred) > MAX_ANSWER_CHARS:
        return False
    try:
        gold, target = _parse(str(ref)), _parse(pred)
        if not gold or not target or not (_tame(gold) and _tame(target)):
            return False
        return bool(verify(gold, target, timeout_seconds=None))
    except Exception:  # noqa: BLE001 -- sympy and latex2sympy raise many types on odd input
        return False


def accuracy_reward(prompt: str, completion: str, reference: dict) -> float:
    """1.0 if the completion's final answer is right, else 0.0 (R1's accuracy reward).

    task "code": the share of the reference's tests the program passes (see code.code_reward);
    raises SandboxUnavailable where the sandbox cannot contain programs and running them anyway
    was not allowed. A reasoning-gym record (it carries ``reasoning_gym``): that task's own verifier
    gives full marks (``r1lab.rewards.reasoning_gym``). Otherwise ("arith", "math", default): exact
    numeric match, and when the reference is not a plain number (a fraction, an expression)
    math-verify equivalence.
    """
    if reference.get("task") == "code":
        return code_reward(prompt, completion, reference)
    if reference.get("reasoning_gym") is not None:
        from r1lab.rewards.reasoning_gym import reasoning_gym_accuracy

        return reasoning_gym_accuracy(prompt, completion, reference)
    pred, ref = extract_answer(completion), str(reference.get("answer", ""))
    if numeric_match(pred, ref):
        return 1.0
    if _as_number(ref) is not None:
        return 0.0  # a plain-number reference is decided by numeric_match alone
    return float(math_verify_match(pred, ref))


def accuracy_reward_math(prompt: str, completion: str, reference: dict) -> float:
    """1.0 if math-verify finds the final answer equivalent to reference["answer"], else 0.0."""
    return float(math_verify_match(extract_answer(completion), str(reference.get("answer", ""))))
