"""Preference pairs as a data source: the reward-model stage's reader (``data=preferences``).

The pairs themselves are written by the preference job (``r1lab.jobs.preferences``): ranked policy
samples, or synthetic corruptions of reference solutions.
"""

from __future__ import annotations

import json
from pathlib import Path

from r1lab.data.sources import DataError, FileSource


class PreferenceFile(FileSource):
    """A file of preference pairs (JSONL, Parquet, …) with held-out pairs cut from its end.

    Args:
        path: the pairs file (``train``; ``val``/``test`` files may be given apart).
        sizes: pairs per split, as the tiny world counts records: ``val`` and ``test`` pairs are
            taken from the end of the file, ``train`` caps the rest (missing or null = all of it).
            Training drops pairs whose prompt is held out, so the held-out prompts are unseen.
        fields: record name -> column name (see ``FileSource``).
    """

    def __init__(self, path: str, sizes: dict | None = None, fields: dict | None = None, val: str | None = None,
                 test: str | None = None) -> None:
        sizes = dict(sizes or {})
        if set(sizes) - {"train", "val", "test"}:
            raise ValueError(f"data.source.sizes: unknown split(s) {sorted(set(sizes) - {'train', 'val', 'test'})}")
        super().__init__(train=str(path), val=val, test=test, fields=fields,
                         val_size=int(sizes.get("val") or 0), test_size=int(sizes.get("test") or 0))
        self.train_size = sizes.get("train")

    def _rows(self, split: str) -> list[tuple[str, dict]]:
        path = Path(self.files["train"]).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no preference pairs there yet; write them with `python -m r1lab.train "
                            f"stage=preferences` (or job=preferences job.out={path})")
        rows = super()._rows(split)
        if split != "train":
            return rows
        column = self.fields.get("prompt", "prompt")
        held = super()._rows("val") + super()._rows("test")
        held_out = {json.dumps(row.get(column)) for _, row in held}
        rows = [(where, row) for where, row in rows if json.dumps(row.get(column)) not in held_out]
        return rows[: self.train_size] if self.train_size is not None else rows
