"""Rejection-sampling filters: which sampled completions become SFT data.

DeepSeek-R1 (arXiv 2501.12948, §2.3.3): from the reasoning-RL checkpoint, sample several responses
per prompt and "only retain the correct ones"; "we have filtered out chain-of-thought with mixed
languages, long paragraphs, and code blocks". Each filter here is a pure predicate on
(prompt, completion, reference) that never raises, and ``RejectionFilters.reasons`` gives the names of the
filters that failed ([] = keep; the data set's statistics count them).

Where this departs from the paper: R1 also keeps prompts whose answers cannot be checked by rules,
judged by DeepSeek-V3 (a generative reward model); here correctness is the rule-based accuracy reward
only. "Long paragraph" and "code block" are not defined in the paper; the thresholds are knobs, and a
code block is a Markdown fence (``` or ~~~), allowed on code tasks (their answer is a program).
``valid_steps`` is not in the paper either (off by default): the accuracy reward checks only the final
answer, so a weak policy's lucky guesses after wrong steps ("13 plus 12 is 26") pass it; this rule
checks every arithmetic step of the tiny world's chains ("a plus b is c", "a加b得c").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from r1lab.rewards.accuracy import accuracy_reward
from r1lab.rewards.format import extract_think, has_format
from r1lab.rewards.language import language_consistency

# The names a rejected completion is counted under, in the order the filters run.
REASONS = ("incorrect", "malformed", "mixed_language", "long_paragraph", "code_block", "invalid_step")

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WORD = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_FENCE = re.compile(r"^[ \t]*(```|~~~)", re.MULTILINE)
# One step of the tiny world's arithmetic chains, English or Chinese (r1lab.data.tinyworld.arithmetic).
_STEP = re.compile(r"(-?\d+)\s*(plus|minus|加|减)\s*(-?\d+)\s*(?:is|得)\s*(-?\d+)")


def is_correct(prompt: str, completion: str, reference: dict) -> bool:
    """The accuracy reward is 1: the right final answer (code: every test passes)."""
    return accuracy_reward(prompt, completion, reference) >= 1.0


def is_well_formed(completion: str) -> bool:
    """Exactly "<think> X </think> <answer> Y </answer>" (R1's strict format, X and Y non-empty)."""
    return has_format(completion, strict=True)


def is_single_language(completion: str, reference: dict, threshold: float = 1.0) -> bool:
    """Language consistency of the chain of thought >= ``threshold`` in reference["language"] (default en)."""
    try:
        return language_consistency(extract_think(completion), reference.get("language") or "en") >= threshold
    except ValueError:  # a target language the word counter does not know: cannot check, do not keep
        return False


def paragraphs(text: str) -> list[str]:
    """Paragraphs are separated by blank lines (Markdown's rule)."""
    return [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]


def count_words(text: str) -> int:
    """Words of any language for the paragraph-length filter: whitespace-separated runs, each CJK
    ideograph counting as one (Chinese has no spaces); numbers and punctuation count too.
    (``r1lab.rewards.language.words_by_language`` counts only words of a language, per language.)"""
    return len(_WORD.findall(text))


def has_long_paragraph(completion: str, max_chars: int | None = None, max_words: int | None = None) -> bool:
    """Any paragraph longer than ``max_chars`` characters or ``max_words`` words (None = no limit)."""
    for paragraph in paragraphs(completion):
        text = paragraph.strip()
        if max_chars is not None and len(text) > max_chars:
            return True
        if max_words is not None and count_words(text) > max_words:
            return True
    return False


def has_code_block(completion: str) -> bool:
    """A Markdown code fence (``` or ~~~) at the start of a line."""
    return _FENCE.search(completion) is not None


def has_valid_steps(completion: str) -> bool:
    """Every "a plus/minus b is c" step of the chain of thought is right (True when there is none)."""
    for a, op, b, c in _STEP.findall(extract_think(completion)):
        if int(a) + (int(b) if op in ("plus", "加") else -int(b)) != int(c):
            return False
    return True


@dataclass(frozen=True)
class RejectionFilters:
    """The filters of R1's rejection sampling, each of which can be switched off.

    Args:
        correct: keep only completions whose final answer is right (accuracy reward == 1).
        well_formed: keep only R1-format completions (strict format reward == 1).
        min_language: least language consistency of the chain of thought (R1: no mixed languages,
            i.e. 1.0); None = off.
        max_paragraph_chars, max_paragraph_words: longest paragraph allowed; None = no limit.
        code_blocks_for: tasks (reference["task"]) whose completions may hold code blocks; every
            other task's completion with a code fence is dropped. None = code blocks always allowed.
        valid_steps: also drop chains with a wrong arithmetic step (not in R1; see the module docstring).
    """

    correct: bool = True
    well_formed: bool = True
    min_language: float | None = 1.0
    max_paragraph_chars: int | None = 1000
    max_paragraph_words: int | None = 200
    code_blocks_for: tuple[str, ...] | None = ("code",)
    valid_steps: bool = False

    def reasons(self, prompt: str, completion: str, reference: dict) -> list[str]:
        """The names (from ``REASONS``) of every filter the completion fails; [] = keep."""
        failed = []
        if self.correct and not is_correct(prompt, completion, reference):
            failed.append("incorrect")
        if self.well_formed and not is_well_formed(completion):
            failed.append("malformed")
        if self.min_language is not None and not is_single_language(completion, reference, self.min_language):
            failed.append("mixed_language")
        if has_long_paragraph(completion, self.max_paragraph_chars, self.max_paragraph_words):
            failed.append("long_paragraph")
        if (
            self.code_blocks_for is not None
            and reference.get("task") not in self.code_blocks_for
            and has_code_block(completion)
        ):
            failed.append("code_block")
        if self.valid_steps and not has_valid_steps(completion):
            failed.append("invalid_step")
        return failed

    def to_dict(self) -> dict:
        out = asdict(self)
        out["code_blocks_for"] = None if self.code_blocks_for is None else list(self.code_blocks_for)
        return out
