"""Format rewards and the tag parsing that every other reward shares.

DeepSeek-R1 (arXiv 2501.12948, §2.2.2) rewards R1-Zero for "putting its thinking process between
'<think>' and '</think>' tags"; the template asks for the final answer inside <answer></answer>.
Two variants are kept because they train differently: the strict one is the paper's rule, the
lenient one gives a small model a gradient before it stops writing text around the tags.
All functions take any string and never raise.
"""

from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# Leading and trailing whitespace is tolerated; any other text outside the two blocks is not.
_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
_BOXED = "\\boxed{"


def tag_blocks(completion: str, tag: str) -> list[str]:
    """The raw (unstripped) contents of every <tag>…</tag> block, in order."""
    return re.findall(f"<{tag}>(.*?)</{tag}>", completion, re.DOTALL)


def extract_answer(completion: str) -> str | None:
    """The final answer: the stripped text of the LAST <answer>…</answer> block.

    Without an answer tag, falls back to the last ``\\boxed{…}`` (R1 asks for "the final answer
    in a box" on math benchmarks); returns None when there is neither.
    """
    blocks = tag_blocks(completion, "answer")
    if blocks:
        return blocks[-1].strip()
    return _last_boxed(completion)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, matching nested braces (\\boxed{\\frac{1}{2}})."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
    return None  # unbalanced: the generation was cut off inside the box


def extract_think(completion: str) -> str:
    """The chain of thought: all <think>…</think> blocks joined.

    A generation cut off after "<think>" keeps the text after the tag; without any think tag the
    whole completion is the chain of thought (R1-Zero's early samples often have none).
    """
    blocks = tag_blocks(completion, "think")
    if blocks:
        return "\n".join(blocks)
    if THINK_OPEN in completion:
        return completion.split(THINK_OPEN, 1)[1]
    return completion


def has_format(completion: str, strict: bool = True) -> bool:
    """True when the completion follows the R1 template (strict or lenient, see the rewards)."""
    if not strict:
        return _LENIENT.search(completion) is not None
    match = _STRICT.fullmatch(completion)
    if match is None:
        return False
    # One of each tag: a non-greedy match could otherwise swallow a second block into X or Y.
    if any(completion.count(tag) != 1 for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)):
        return False
    think, answer = match.groups()
    return bool(think.strip()) and bool(answer.strip())


def format_reward_strict(prompt: str, completion: str, reference: dict) -> float:
    """1.0 iff the completion is exactly "<think> X </think> <answer> Y </answer>" (X, Y non-empty).

    R1's format reward (arXiv 2501.12948 §2.2.2); whitespace around and inside the tags is allowed.
    """
    return float(has_format(completion, strict=True))


def format_reward_lenient(prompt: str, completion: str, reference: dict) -> float:
    """1.0 iff a <think>…</think> block comes before an <answer>…</answer> block, anywhere.

    A shaping variant (not in the paper) that lets a small model collect format reward before it
    learns to stop writing text outside the tags.
    """
    return float(has_format(completion, strict=False))


def final_answer_view(completion: str) -> str:
    """What R1's helpfulness model judges: the response after the chain of thought (after the last
    ``</think>``), or the whole completion when it has none."""
    return completion.rsplit(THINK_CLOSE, 1)[1].strip() if THINK_CLOSE in completion else completion
