"""The tiny world as a data source: seeded, disjoint train/val/test splits of task records.

A record is a dict with at least ``prompt``, ``answer`` and ``task``; ``response`` holds the
reference solution in R1 format. With ``corpus=True`` the train split becomes a *base* pretraining
corpus instead (see ``base_corpus_document``): worked solutions in prose, English and Chinese mixed,
which is what R1-Zero and the cold start begin from. Val/test stay tasks so every stage is scored alike.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from r1lab.data.templates import R1_ZERO_TEMPLATE
from r1lab.data.tinyworld.arithmetic import generate_arithmetic_task, short_response

SPLITS = ("train", "val", "test")
FAMILIES = ("arith", "code")
SOLUTIONS = ("full", "short")


def _generate(family: str, rng: random.Random, difficulty: int, max_operand: int, language: str) -> dict:
    if family == "arith":
        return generate_arithmetic_task(rng, difficulty, max_operand, language)
    if family == "code":
        from r1lab.data.tinyworld.code_tasks import generate_code_task

        record = generate_code_task(rng, min(difficulty, 3), language)
        record["cot_language"] = language
        record["language"] = "en"
        return record
    raise ValueError(f"data.source.families: unknown task family {family!r} (known: arith, code)")


def base_corpus_document(record: dict, rng: random.Random, dialogue_share: float = 0.15,
                         tagged_share: float = 0.2) -> str:
    """A base-model pretraining document: mostly a question and its worked solution in prose.

    A ``dialogue_share`` of the documents are the R1-Zero instruction followed by an answer; of
    those, a ``tagged_share`` happen to answer in the instructed <think>/<answer> format and the
    rest in prose. This models a base model that follows the instruction only sometimes (a ~1M
    parameter model cannot follow instructions in context the way DeepSeek-V3-Base does); R1-Zero's
    RL then has to raise the format rate from that small prior. No SFT on the format happens here.
    """
    thought = record["response"].split("<think>")[1].split("</think>")[0].strip()
    closing = "The answer is" if record.get("cot_language", "en") == "en" else "答案是"
    prose = f"{thought} {closing} {record['answer']}."
    if rng.random() < dialogue_share:
        answer = record["response"] if rng.random() < tagged_share else prose
        return f"{R1_ZERO_TEMPLATE.format(prompt=record['prompt'])} {answer}"
    return f"{record['prompt']} {prose}"


class TinyWorld:
    """Procedurally generated, verifiable tasks with a fixed seed and disjoint splits.

    Args:
        seed: the world's seed; the same seed gives the same splits on any machine.
        sizes: records per split, e.g. ``{"train": 2000, "val": 64, "test": 200}``.
        families: task family -> sampling weight (``arith``, ``code``).
        difficulty: ``[min, max]`` number of operations, drawn uniformly per task.
        max_operand: largest operand of the arithmetic tasks.
        zh_fraction: share of train solutions whose chain of thought is written in Chinese.
        corpus: make the train split a base pretraining corpus (see module docstring).
        solutions: ``full`` (step-by-step chains of thought) or ``short`` (arithmetic solutions as one
            line, "12 + 7 - 5 = 14", as most data sets give them; code tasks are unchanged). Prompts
            and answers are the same either way; the distillation study compares a student trained
            on the short solutions with one taught the teacher's chains of thought.
    """

    def __init__(
        self,
        seed: int = 0,
        sizes: Mapping[str, int] | None = None,
        families: Mapping[str, float] | None = None,
        difficulty: tuple[int, int] | list[int] = (1, 3),
        max_operand: int = 20,
        zh_fraction: float = 0.0,
        corpus: bool = False,
        solutions: str = "full",
    ) -> None:
        self.seed = seed
        self.sizes = dict(sizes or {"train": 2000, "val": 64, "test": 200})
        self.families = dict(families or {"arith": 1.0})
        unknown = set(self.sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.source.sizes: unknown split(s) {sorted(unknown)} (use {SPLITS})")
        if not self.families or any(w < 0 for w in self.families.values()):
            raise ValueError("data.source.families: needs at least one family with a weight >= 0")
        for split, n in self.sizes.items():
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                raise ValueError(f"data.source.sizes.{split}: must be an integer >= 0, got {n!r}")
        unknown_families = set(self.families) - set(FAMILIES)
        if unknown_families:
            raise ValueError(f"data.source.families: unknown task family {sorted(unknown_families)} "
                             f"(known: {', '.join(FAMILIES)})")
        if isinstance(max_operand, bool) or not isinstance(max_operand, int) or max_operand < 1:
            raise ValueError(f"data.source.max_operand: must be an integer >= 1, got {max_operand!r}")
        if not 0.0 <= zh_fraction <= 1.0:
            raise ValueError(f"data.source.zh_fraction: must lie in [0, 1], got {zh_fraction}")
        self.difficulty = (int(difficulty[0]), int(difficulty[1]))
        if not 1 <= self.difficulty[0] <= self.difficulty[1]:
            raise ValueError(f"data.source.difficulty: need 1 <= min <= max, got {list(difficulty)}")
        self.max_operand = max_operand
        self.zh_fraction = zh_fraction
        self.corpus = corpus
        if solutions not in SOLUTIONS:
            raise ValueError(f"data.source.solutions: {solutions!r} is not one of {SOLUTIONS}")
        self.solutions = solutions
        self._splits: dict[str, list[dict]] | None = None

    def _build(self) -> dict[str, list[dict]]:
        # Test first, then val, then train, each skipping prompts already taken: the splits are
        # disjoint by construction, and growing the train split never changes val or test.
        names, weights = zip(*self.families.items())
        taken: set[str] = set()
        splits: dict[str, list[dict]] = {}
        for split in ("test", "val", "train"):
            rng = random.Random(f"tinyworld/{self.seed}/{split}")
            records: list[dict] = []
            want = self.sizes.get(split, 0)
            attempts = 0
            while len(records) < want:
                attempts += 1
                if attempts > 50 * want + 1000:
                    raise ValueError(
                        f"data.source: cannot draw {want} distinct {split} tasks; raise max_operand or "
                        "difficulty, or lower sizes"
                    )
                family = rng.choices(names, weights)[0]
                language = "zh" if split == "train" and rng.random() < self.zh_fraction else "en"
                difficulty = rng.randint(*self.difficulty)
                record = _generate(family, rng, difficulty, self.max_operand, language)
                if record["prompt"] in taken:
                    continue
                taken.add(record["prompt"])
                record["id"] = f"{split}-{len(records)}"
                if self.solutions == "short" and record["task"] == "arith" and not (self.corpus and split == "train"):
                    record["response"] = short_response(record)
                records.append(record)
            splits[split] = records
        if self.corpus:
            rng = random.Random(f"tinyworld/{self.seed}/corpus")
            splits["train"] = [
                {**r, "prompt": "", "response": base_corpus_document(r, rng)} for r in splits["train"]
            ]
        return splits

    def load(self, split: str, required: tuple[str, ...] = ()) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (use {SPLITS})")
        if self._splits is None:
            self._splits = self._build()
        return self._splits[split]

    def describe(self) -> str:
        solutions = "" if self.solutions == "full" else f", {self.solutions} solutions"
        return f"tiny world (seed {self.seed}, families {self.families}, difficulty {list(self.difficulty)}{solutions})"
