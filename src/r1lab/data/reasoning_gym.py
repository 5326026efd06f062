"""reasoning-gym as a data source: procedural reasoning tasks with their own verifiers.

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ generates tasks
(``reasoning_gym.create_dataset(name, seed=, size=, **config)``, entries with ``question``,
``answer`` and ``metadata``) and scores answers with each data set's ``score_answer(answer, entry)``.
``ReasoningGym`` mixes several of them by weight into seeded train/val/test splits with the same
protocol as ``TinyWorld``: test is drawn first, then val, then train, each skipping questions already
taken, so the splits are disjoint by question text and growing one never changes another.

A record has the project's fields (``prompt``, ``answer`` as a string, ``task`` = the
reasoning-gym data set's name, ``language``, ``id``) and ``reasoning_gym``: the data set's name,
its config and the entry's metadata, as plain JSON, which is what
``r1lab.rewards.reasoning_gym`` needs to call the data set's own ``score_answer`` later. It departs
from reasoning-gym's ``CompositeDataset`` (which also mixes data sets by weight) in drawing the
splits from separate seeds and removing repeated questions; the per-index entries themselves are
reasoning-gym's.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping

SPLITS = ("train", "val", "test")
# The mix used when data.source.tasks is null (conf/data/reasoning_gym.yaml sets the difficulty).
DEFAULT_TASKS = {"chain_sum": 1.0, "basic_arithmetic": 1.0}


def _plain(value):
    """Hydra's DictConfig/ListConfig (and tuples) as plain dicts and lists."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or (hasattr(value, "__iter__") and not isinstance(value, str | bytes)):
        return [_plain(v) for v in value]
    return value


def as_json(value):
    """``value`` as it reads back from a JSON file (tuples become lists, odd objects strings)."""
    return json.loads(json.dumps(value, default=str))


def entry_of(record: Mapping) -> dict:
    """The reasoning-gym entry (``question``, ``answer``, ``metadata``) that a record stands for."""
    rg = record.get("reasoning_gym") or {}
    return {
        "question": record.get("prompt", ""),
        "answer": str(record.get("answer", "")),
        "metadata": dict(rg.get("metadata") or {}),
    }


def split_seed(seed: int, split: str, task: str) -> int:
    """A 32-bit seed per (world seed, split, task).

    reasoning-gym seeds entry ``i`` with ``Random(seed + i)``, so neighbouring seeds give shifted
    copies of the same entries; hashing keeps the splits' seeds far apart.
    """
    digest = hashlib.sha256(f"reasoning_gym/{seed}/{split}/{task}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class ReasoningGym:
    """Weighted mixture of reasoning-gym tasks with seeded, disjoint splits.

    Args:
        tasks: reasoning-gym data set name -> sampling weight, e.g. ``{chain_sum: 1.0}``; None is
            ``DEFAULT_TASKS``.
        config: data set name -> its config (``ChainSumConfig`` fields, e.g.
            ``{chain_sum: {min_terms: 2, max_terms: 3, max_digits: 1}}``); missing fields, and tasks
            without an entry, keep reasoning-gym's defaults. Entries of tasks not in ``tasks`` are
            ignored, so one config can hold the difficulty of many tasks and ``tasks`` pick some.
        seed: the source's seed; the same seed gives the same splits on any machine (for one
            reasoning-gym version).
        sizes: records per split, e.g. ``{train: 2000, val: 64, test: 200}``.
        check: on the first record of every task and split, check that the data set's own
            ``score_answer`` gives 1.0 to the reference answer after the record went through JSON
            (a task whose metadata does not survive JSON cannot be scored later).
    """

    def __init__(
        self,
        tasks: Mapping[str, float] | None = None,
        config: Mapping[str, Mapping] | None = None,
        seed: int = 0,
        sizes: Mapping[str, int] | None = None,
        check: bool = True,
    ) -> None:
        try:
            from reasoning_gym.factory import DATASETS
        except ImportError as error:
            raise ImportError("data=reasoning_gym needs the reasoning-gym package: pip install -e .[real] "
                              "(or pip install reasoning-gym)") from error

        self.tasks = {str(k): float(v) for k, v in _plain(tasks or DEFAULT_TASKS).items()}
        config = {str(k): dict(v or {}) for k, v in _plain(config or {}).items()}
        self.seed = int(seed)
        self.sizes = {str(k): int(v) for k, v in _plain(sizes or {"train": 2000, "val": 64, "test": 200}).items()}
        self.check = check
        unknown = set(self.sizes) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.source.sizes: unknown split(s) {sorted(unknown)} (use {SPLITS})")
        if not self.tasks or any(w < 0 for w in self.tasks.values()) or not any(self.tasks.values()):
            raise ValueError("data.source.tasks: needs at least one task with a weight > 0")
        for key, names in (("tasks", self.tasks), ("config", config)):
            for name in names:
                if name not in DATASETS or name == "composite":
                    raise ValueError(f"data.source.{key}: {name!r} is not a reasoning-gym data set "
                                     f"(known: {', '.join(sorted(n for n in DATASETS if n != 'composite'))})")
        self.config = {name: config[name] for name in self.tasks if name in config}
        for name, cfg in self.config.items():
            bad = {"seed", "size"} & set(cfg)
            if bad:
                raise ValueError(f"data.source.config.{name}: {sorted(bad)} are set by the source (data.source.seed, "
                                 "data.source.sizes)")
        self._splits: dict[str, list[dict]] | None = None

    def _dataset(self, name: str, split: str, size: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(name, seed=split_seed(self.seed, split, name), size=size,
                                                **self.config.get(name, {}))
        except (TypeError, AssertionError, ValueError) as error:
            raise ValueError(f"data.source.config.{name}: reasoning-gym refused the config "
                             f"{self.config.get(name, {})} ({error})") from error

    def _record(self, name: str, entry: dict, split: str, index: int) -> dict:
        return {
            "prompt": str(entry["question"]),
            "answer": str(entry["answer"]),
            "task": name,
            "language": "en",
            "id": f"{split}-{index}",
            "reasoning_gym": as_json({
                "dataset": name,
                "config": self.config.get(name, {}),
                "metadata": entry.get("metadata", {}),
            }),
        }

    def _check(self, dataset, record: dict) -> None:
        score = dataset.score_answer(record["answer"], entry_of(record))
        if score != 1.0:
            raise ValueError(
                f"data.source: reasoning-gym's {record['task']} scores its own reference answer "
                f"{record['answer']!r} {score} once the record went through JSON; this task cannot be "
                "scored from saved records (drop it, or set data.source.check=false to keep it anyway)"
            )

    def _build(self) -> dict[str, list[dict]]:
        names, weights = zip(*self.tasks.items())
        taken: set[str] = set()
        splits: dict[str, list[dict]] = {}
        for split in ("test", "val", "train"):
            want = self.sizes.get(split, 0)
            limit = 50 * want + 1000
            rng = random.Random(f"reasoning_gym/{self.seed}/{split}")
            datasets: dict[str, object] = {}
            cursor = dict.fromkeys(names, 0)
            checked: set[str] = set()
            records: list[dict] = []
            attempts = 0
            while len(records) < want:
                attempts += 1
                if attempts > limit:
                    raise ValueError(
                        f"data.source: cannot draw {want} distinct {split} questions from {self.tasks} with "
                        f"config {self.config}; widen the tasks' ranges or lower data.source.sizes"
                    )
                name = rng.choices(names, weights)[0]
                if name not in datasets:
                    datasets[name] = self._dataset(name, split, limit)
                try:
                    entry = datasets[name][cursor[name]]
                except Exception as error:  # reasoning-gym checks some configs only while generating
                    raise ValueError(f"data.source.config.{name}: reasoning-gym cannot generate an entry with "
                                     f"config {self.config.get(name, {})} ({type(error).__name__}: {error})") from error
                cursor[name] += 1
                if entry["question"] in taken:
                    continue
                taken.add(entry["question"])
                record = self._record(name, entry, split, len(records))
                if self.check and name not in checked:
                    self._check(datasets[name], record)
                    checked.add(name)
                records.append(record)
            splits[split] = records
        return splits

    def load(self, split: str, required: tuple[str, ...] = ()) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (use {SPLITS})")
        if self._splits is None:
            self._splits = self._build()
        return self._splits[split]

    def describe(self) -> str:
        config = f", config {self.config}" if self.config else ""
        return f"reasoning-gym (seed {self.seed}, tasks {self.tasks}{config})"
