"""Language-consistency reward.

DeepSeek-R1 (arXiv 2501.12948, §2.3.2) adds this reward in reasoning RL because R1-Zero's chains
of thought mix languages: it is "calculated as the proportion of target language words in the
CoT". The paper notes it slightly lowers accuracy but makes the reasoning readable.

A "word" here is script-based, not a language model's guess: a maximal run of Latin letters is
one English word, each CJK ideograph is one Chinese word (Chinese has no spaces between words).
Digits, punctuation, math symbols and tags belong to no language and are ignored. To support a
new language, add its script to SCRIPTS.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from r1lab.rewards.format import extract_think


@dataclass(frozen=True)
class Script:
    """A script that marks a language: its characters (a regex class body) and how words split."""

    chars: str
    per_char: bool  # True: every character is a word (ideographs); False: a run of them is one


SCRIPTS: dict[str, Script] = {
    "en": Script("A-Za-z\u00c0-\u024f", per_char=False),  # Latin, accented letters included
    "zh": Script("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff", per_char=True),  # CJK ideographs
    "ru": Script("\u0400-\u04ff", per_char=False),  # Cyrillic
}

_TAG = re.compile(r"</?[A-Za-z]+>")  # <think>, </answer>: markup, not words
_WORD = re.compile(
    "|".join(f"(?P<{lang}>[{s.chars}]{'' if s.per_char else '+'})" for lang, s in SCRIPTS.items())
)


def words_by_language(text: str) -> Counter:
    """Number of words per language in the text, e.g. Counter({"en": 2, "zh": 2})."""
    return Counter(m.lastgroup for m in _WORD.finditer(_TAG.sub(" ", text)))


def language_consistency(text: str, target: str = "en") -> float:
    """(words in the target language) / (all words that have a language); 1.0 if there are none.

    "12 plus 7 is 19. 19减5得14。" has en words {plus, is} and zh words {减, 得}: 2 / 4 = 0.5.
    """
    if target not in SCRIPTS:
        raise ValueError(f"language {target!r} is not supported; known: {sorted(SCRIPTS)}")
    counts = words_by_language(text)
    total = sum(counts.values())
    return counts[target] / total if total else 1.0


def language_consistency_reward(prompt: str, completion: str, reference: dict) -> float:
    """R1's language-consistency reward on the chain of thought (<think>…</think>, or the whole
    completion when there is no think tag), in the language reference["language"] (default "en")."""
    return language_consistency(extract_think(completion), reference.get("language") or "en")
