"""Durable files for the data-generating jobs: atomic replaces, checksums, and the one resumable
JSONL writer that every job appends its rows through.

``ChunkedJsonl`` writes rows chunk by chunk (a chunk: a fixed batch of prompts) into one or more JSONL
files. A chunk's rows are appended to every file and made durable (flush + fsync) and only then is
the chunk recorded, with each file's size after it, in a progress file replaced atomically. Reopened
with the same settings, the writer truncates each file back to the sizes of the last recorded chunk
(a half-written chunk and a torn last line vanish) and reports the recorded chunks as done, so a job
killed at any moment resumes to exactly the files of an uninterrupted run. Reopened with other
settings it refuses, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path


class JobError(ValueError):
    """A job that cannot start or resume as asked; the message says what to change."""


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict]:
    """Every row of a JSONL file; a corrupt line is an error naming the file and line."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise JobError(f"{path}:{lineno}: corrupt line ({e.msg})") from None
    return rows


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_sha256(path: str | Path) -> str | None:
    """One sha256 over a Hugging Face folder's config and weight files (None if not a local folder)."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(folder.iterdir()):
        if file.name == "config.json" or file.suffix in (".safetensors", ".bin"):
            digest.update(file.name.encode())
            digest.update(sha256_file(file).encode())
    return digest.hexdigest()


class ChunkedJsonl:
    """Resumable, chunk-by-chunk JSONL output (see the module docstring).

    Args:
        files: name -> path of each JSONL file the job writes.
        progress: the progress file (JSON: settings, done chunks, file sizes).
        settings: what the output depends on; a resumed writer must be given the same.
        force: start over (truncate the files) even when a progress file exists.
    """

    def __init__(self, files: Mapping[str, str | Path], progress: str | Path, settings: dict,
                 force: bool = False) -> None:
        self.files = {name: Path(path) for name, path in files.items()}
        self.progress = Path(progress)
        settings = json.loads(json.dumps(settings))  # the form it takes on disk (tuples become lists)
        state = None
        if self.progress.is_file() and not force:
            state = json.loads(self.progress.read_text(encoding="utf-8"))
            if state.get("settings") != settings:
                before = state.get("settings") or {}
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise JobError(f"{self.progress.parent} was started with other settings ({', '.join(changed)} "
                               "differ); resume it with the same ones, or start it over in another folder")
        if state is None and not force:
            foreign = [str(p) for p in self.files.values() if p.is_file() and p.stat().st_size > 0]
            if foreign:
                raise JobError(f"{foreign[0]} exists and was not written by this job (no {self.progress.name}); "
                               "move it away, or pass force=true to overwrite it")
        if state is None or any(not path.is_file() and state["sizes"].get(name, 0) for name, path in
                                self.files.items()):
            state = {"settings": settings, "chunks": [], "sizes": dict.fromkeys(self.files, 0), "complete": False}
        for name, path in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:  # drop whatever followed the last recorded chunk
                f.truncate(state["sizes"].get(name, 0))
        self.state = state
        self._save()

    @property
    def complete(self) -> bool:
        return bool(self.state.get("complete"))

    def done(self, chunk: int) -> bool:
        return chunk in self.state["chunks"]

    def write(self, chunk: int, rows: Mapping[str, Iterable[dict]]) -> None:
        """Append one chunk's rows to each named file (durably), then record the chunk."""
        for name, path in self.files.items():
            with path.open("a", encoding="utf-8") as f:
                f.write(jsonl_text(rows.get(name, ())))
                f.flush()
                os.fsync(f.fileno())
            self.state["sizes"][name] = path.stat().st_size
        self.state["chunks"].append(chunk)
        self._save()

    def rows(self, name: str) -> list[dict]:
        """The rows of the recorded chunks in file ``name``."""
        return read_jsonl(self.files[name])

    def mark_complete(self) -> None:
        self.state["complete"] = True
        self._save()

    def _save(self) -> None:
        write_atomic(self.progress, json.dumps(self.state))
