"""External data sets: local JSONL/JSON/Parquet files or hub data sets, mapped onto the record schema.

Records are dicts with ``prompt`` and ``answer`` (RL and evaluation), ``response`` (SFT and
distillation) and ``chosen``/``rejected`` (preference pairs); ``fields`` maps those names onto the
file's own column names. Chat-style columns (a list of ``{"role", "content"}`` messages) are
accepted for prompts and responses: the last user message is the prompt, the last assistant message
the response. Every row is checked before training starts, and a bad one is reported with its file
and line (JSONL) or row (Parquet/hub).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

REQUIRED = {
    "sft": ("prompt", "response"),
    "rl": ("prompt", "answer"),
    "preference": ("prompt", "chosen", "rejected"),
    "distill": ("prompt", "response"),
    "steps": ("prompt", "completion", "labels"),
    "eval": ("prompt", "answer"),
}
SCHEMA = ("prompt", "answer", "response", "chosen", "rejected", "task", "language", "tests", "margin", "id",
          "completion", "labels")  # completion + labels: a step-labelled row (mode steps)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file and line/row."""


def _text(value, role: str | None):
    """A plain string, or the last message of ``role`` in a chat-style list of messages."""
    if isinstance(value, list) and value and isinstance(value[0], Mapping):
        chosen = [m.get("content", "") for m in value if role is None or m.get("role") == role]
        return chosen[-1] if chosen else None
    return value


def normalise_record(row: Mapping, fields: Mapping[str, str], where: str, required: tuple[str, ...]) -> dict:
    """Map one raw row onto the record schema; raise ``DataError`` naming ``where`` on a bad row."""
    record: dict = {}
    for name in SCHEMA:
        column = fields.get(name, name)
        if column in row and row[column] is not None:
            value = row[column]
            if name == "prompt":
                value = _text(value, "user")
            elif name in ("response", "chosen", "rejected"):
                value = _text(value, "assistant")
            record[name] = value
    for name in required:
        if name not in record:
            column = fields.get(name, name)
            raise DataError(f"{where}: missing field {column!r} (needed as {name!r}; set data.source.fields.{name})")
        value = record[name]
        if name == "labels":
            if not isinstance(value, list) or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and 0 <= x <= 1 for x in value):
                raise DataError(f"{where}: field {fields.get(name, name)!r} must be a list of step labels in [0, 1]")
        elif name != "tests" and (not isinstance(value, str | int | float) or str(value).strip() == ""):
            raise DataError(f"{where}: field {fields.get(name, name)!r} is empty or not text")
    if "answer" in record:
        record["answer"] = str(record["answer"])
    record.setdefault("task", "math")
    record.setdefault("language", "en")
    return record


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(location, row) pairs of a local file; JSONL locations are ``file:line``."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                    f"{e.start + 1}); JSONL files are UTF-8") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                rows.append((f"{path}:{lineno}", row))
        return rows
    if suffix in (".json", ".parquet", ".csv"):
        import datasets

        kind = {".json": "json", ".parquet": "parquet", ".csv": "csv"}[suffix]
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - pyarrow, json and csv readers raise many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: cannot be read as {kind} ({first})") from None
        return [(f"{path} row {i}", row) for i, row in enumerate(ds)]
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .parquet or .csv)")


class FileSource:
    """Local files, one per split (``val``/``test`` may be cut from ``train`` by fraction).

    Args:
        train, val, test: file paths (``.jsonl``, ``.json``, ``.parquet``, ``.csv``).
        fields: record name -> column name, e.g. ``{prompt: question, answer: final}``.
        val_size, test_size: when a split has no file, take this many rows from the end of train.
        required: which fields every row must have (by default what ``data.mode`` needs).
        limit: keep only the first ``limit`` rows of each split (quick experiments).
    """

    def __init__(
        self,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        fields: Mapping[str, str] | None = None,
        val_size: int = 0,
        test_size: int = 0,
        required: tuple[str, ...] | list[str] | None = None,
        limit: int | None = None,
    ) -> None:
        if train is None and val is None and test is None:
            raise ValueError("data.source: give at least one of train, val, test")
        self.files = {"train": train, "val": val, "test": test}
        self.fields = dict(fields or {})
        self.val_size, self.test_size = val_size, test_size
        self.required = tuple(required) if required else None
        self.limit = limit
        self._cache: dict[str, list[dict]] = {}

    def _rows(self, split: str) -> list[tuple[str, dict]]:
        path = self.files.get(split)
        if path is not None and split != "train":
            return read_rows(Path(path).expanduser())
        if self.files["train"] is None:
            return []
        rows = read_rows(Path(self.files["train"]).expanduser())
        n_test, n_val = self.test_size, self.val_size
        test_rows = rows[len(rows) - n_test:] if self.files["test"] is None and n_test else []
        rest = rows[: len(rows) - len(test_rows)]
        val_rows = rest[len(rest) - n_val:] if self.files["val"] is None and n_val else []
        rest = rest[: len(rest) - len(val_rows)]
        return {"train": rest, "val": val_rows, "test": test_rows}[split]

    def load(self, split: str, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
        if split not in self._cache:
            need = self.required or required
            rows = self._rows(split)[: self.limit]
            self._cache[split] = [normalise_record(row, self.fields, where, need) for where, row in rows]
        return self._cache[split]

    def describe(self) -> str:
        return f"files {self.files}"


class HubSource(FileSource):
    """A data set by hub name through ``datasets.load_dataset`` (needs network or a local cache)."""

    def __init__(self, name: str, config: str | None = None, splits: Mapping[str, str] | None = None, **kwargs):
        kwargs.pop("train", None)
        super().__init__(train=name, **kwargs)
        self.name, self.config = name, config
        self.splits = dict(splits or {"train": "train", "test": "test"})

    def _rows(self, split: str) -> list[tuple[str, dict]]:
        if split not in self.splits:
            if split == "val" and self.val_size and "train" in self.splits:
                return self._hub_rows("train")[-self.val_size:]
            return []
        rows = self._hub_rows(split)
        if split == "train" and "val" not in self.splits and self.val_size:
            rows = rows[: -self.val_size]
        return rows

    def _hub_rows(self, split: str) -> list[tuple[str, dict]]:
        import datasets

        ds = datasets.load_dataset(self.name, self.config, split=self.splits[split])
        return [(f"{self.name}[{self.splits[split]}] row {i}", row) for i, row in enumerate(ds)]

    def describe(self) -> str:
        return f"hub data set {self.name} ({self.config})"


class MixedSource:
    """The train split from one source, val and test from another.

    SFT round 2 (R1 §2.3.3) trains on a rejection-sampled JSONL (a ``FileSource``) and is evaluated
    on the tiny world's val/test splits like every other stage (a ``TinyWorld``).

    Args:
        train: the source of the train split.
        eval: the source of the val and test splits.
        sizes: the most records to take per split (a missing split or None = all), the same knob
            as ``TinyWorld(sizes=...)``, so the tiny-world overrides of the tests apply here too.
    """

    def __init__(self, train, eval, sizes: Mapping[str, int | None] | None = None) -> None:
        self.train, self.eval = train, eval
        self.sizes = dict(sizes or {})

    def load(self, split: str, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
        records = (self.train if split == "train" else self.eval).load(split, required)
        cap = self.sizes.get(split)
        return records if cap is None else records[:cap]

    def describe(self) -> str:
        return f"train: {self.train.describe()}; val/test: {self.eval.describe()}"
