"""What the jobs share: the device, a policy loaded through ``Backbone`` with its rollout engine, and
the prompt records of a data source or a file."""

from __future__ import annotations

from pathlib import Path

import torch

from r1lab.data.sources import FileSource
from r1lab.generation import RolloutEngine, make_engine
from r1lab.jobs.durable import JobError
from r1lab.models.backbone import Backbone


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the current CUDA device when there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_model_path(key: str, path: str) -> None:
    """Raise ``JobError`` naming ``key`` when ``path`` looks local (or exists) but is no model folder;
    a hub id (``org/name``) passes."""
    folder = Path(str(path)).expanduser()
    looks_local = str(path).startswith((".", "/", "~")) or str(path).count("/") > 1
    if (looks_local or folder.exists()) and not (folder / "config.json").is_file():
        raise JobError(f"{key}: no model folder at {path} (a stage's export is its folder's hf/; run that "
                       "stage first, or point the key at another folder)")


def load_policy(path: str, dtype: str = "auto", device: str = "auto", rollout=None,
                key: str = "job.policy") -> tuple[Backbone, RolloutEngine]:
    """A policy export (a stage's ``hf/`` folder, or any causal LM) on ``device``, in eval mode, and the
    rollout engine that samples it. A local path that is not a model folder fails naming ``key``."""
    check_model_path(key, path)
    backbone = Backbone(name_or_path=path, dtype=dtype)
    model = backbone.build_model().to(pick_device(device)).eval()
    return backbone, make_engine(rollout, model, backbone.tokenizer)


def prompt_records(source, split: str, prompts: str | None = None, limit: int | None = None,
                   required: tuple[str, ...] = ("prompt", "answer")) -> tuple[list[dict], str]:
    """The first ``limit`` records of ``split`` of the data source (or of the JSONL/Parquet file
    ``prompts``, which replaces it), checked for ``required`` fields, and a description for logs."""
    if prompts is not None:
        records, described = FileSource(train=prompts).load("train", required=required), str(prompts)
    else:
        records, described = source.load(split, required=required), f"{source.describe()} [{split}]"
    return records[:limit] if limit is not None else records, described
