"""Rejection sampling (DeepSeek-R1, arXiv 2501.12948, §2.3.3): a policy's filtered samples become SFT data.

    python -m r1lab.train stage=sft_data                       # the pipeline's stage (conf/stage/sft_data.yaml)
    python -m r1lab.train job=rejection job.policy=<hf folder> job.sampling.k=8

For every prompt of a split (the data config's source, or ``job.prompts=<file.jsonl>``) sample k
completions through the rollout engine, keep those that pass ``RejectionFilters`` (correct,
well-formed, one language, no long paragraph, no code block outside code tasks), optionally dedupe
and cap them per prompt, and write a versioned data set::

    <out>/v1/data.jsonl     SFT rows: prompt, response, answer, task, language, (tests), id, source
    <out>/v1/prompts.jsonl  one line per prompt: kept count, pass rate, rejection reasons
    <out>/v1/run.json       the settings, written first; a resumed job must match them
    <out>/v1/stats.json     overall numbers and the per-prompt kept count and pass rate
    <out>/v1/manifest.json  written last: source checkpoint, settings, filters, numbers, sha256 of data.jsonl

Resumable: prompts are sampled in fixed batches (batch b holds prompts b·B … (b+1)·B−1, its sampler
seeded with (seed, b)), written through ``ChunkedJsonl``: a job killed at any moment and started
again writes exactly the files of an uninterrupted run. Without ``job.version`` the job resumes the
latest unfinished version or starts the next one (v1, v2, …).

R1 adds ~200k non-reasoning samples to its ~600k reasoning samples: ``job.extra=[file.jsonl]`` (rows
with prompt and response) appends such data after the sampled rows. Sequence-level distillation (what
R1 does for its small models) is this job on the teacher followed by SFT of the student on data.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from r1lab.data.collate import Tokenized
from r1lab.data.sources import FileSource
from r1lab.generation import RolloutEngine, SamplingParams, generate_for_records, mix_seed
from r1lab.jobs.durable import ChunkedJsonl, JobError, checkpoint_sha256, sha256_file, write_atomic
from r1lab.rewards.filters import REASONS, RejectionFilters, is_correct

FORMAT_VERSION = 1
EXTRA_CHUNK = -1  # the chunk that holds the non-reasoning rows, written after every sampled batch


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are drawn. R1 gives no rejection-sampling temperature; the default is its
    evaluation setting (temperature 0.6, top-p 0.95)."""

    k: int = 8
    batch_size: int = 16  # prompts per generation batch (k × this completions per forward)
    max_new_tokens: int = 128
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.batch_size < 1:
            raise JobError("job.sampling.k and job.sampling.batch_size must be >= 1")
        self.params()

    def params(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, key="job.sampling")


@dataclass(frozen=True)
class SelectionConfig:
    """What happens to the completions that pass the filters."""

    dedupe: bool = True  # drop repeats of a kept completion (same text up to whitespace)
    max_per_prompt: int | None = None  # keep at most this many per prompt (None = all)


@dataclass
class PromptFormat:
    """How prompts are rendered: the same template and limits as the stage that trained the policy."""

    template: str = "chat"
    system_prompt: str | None = ""
    max_prompt_tokens: int = 256


@dataclass
class Settings:
    """Everything a run writes into run.json; a resumed run must have the same."""

    policy: str
    data: str
    n_prompts: int
    prompts_sha256: str
    sampling: SamplingConfig
    selection: SelectionConfig
    filters: dict
    prompt_format: PromptFormat
    extra: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"format_version": FORMAT_VERSION}


def resolve_version(out: Path, version: str | None) -> Path:
    """``out/version``; without a version the latest unfinished vN (to resume) or the next one."""
    numbered = sorted(
        (int(p.name[1:]), p) for p in out.glob("v*") if p.is_dir() and p.name[1:].isdigit()
    ) if out.is_dir() else []
    if version is None:
        if numbered and not (numbered[-1][1] / "manifest.json").is_file():
            return numbered[-1][1]
        return out / f"v{numbered[-1][0] + 1 if numbered else 1}"
    path = out / version
    if (path / "manifest.json").is_file():
        following = f"v{numbered[-1][0] + 1}" if numbered else "v2"
        raise JobError(f"{path} is a finished data set; pass another job.version (e.g. {following}) "
                       "or none to start the next one")
    return path


# -- one batch ---------------------------------------------------------------------------------
def select_completions(
    record: dict, completions: list[str], filters: RejectionFilters, selection: SelectionConfig,
    pool: ThreadPoolExecutor | None = None,
) -> tuple[list[str], dict]:
    """The completions of one prompt to keep, and that prompt's statistics."""
    prompt = record["prompt"]

    def judge(text: str) -> tuple[list[str], bool]:
        failed = filters.reasons(prompt, text, record)
        correct = "incorrect" not in failed if filters.correct else is_correct(prompt, text, record)
        return failed, correct

    verdicts = list(pool.map(judge, completions)) if pool is not None else [judge(c) for c in completions]
    reasons = Counter(reason for failed, _ in verdicts for reason in failed)
    passed = [c for c, (failed, _) in zip(completions, verdicts) if not failed]
    unique, seen = [], set()
    for text in passed:
        key = " ".join(text.split())
        if selection.dedupe and key in seen:
            continue
        seen.add(key)
        unique.append(text)
    written = unique if selection.max_per_prompt is None else unique[: selection.max_per_prompt]
    n_correct = sum(correct for _, correct in verdicts)
    stats = {
        "k": len(completions),
        "correct": n_correct,
        "pass_rate": n_correct / max(1, len(completions)),
        "kept": len(passed),
        "unique": len(unique),
        "written": len(written),
        "reasons": {r: reasons[r] for r in REASONS if reasons[r]},
    }
    return written, stats


def _row(record: dict, index: int, j: int, response: str) -> dict:
    row = {
        "id": f"{record.get('id', index)}/{j}",
        "prompt": record["prompt"],
        "response": response,
        "answer": record.get("answer"),
        "task": record.get("task", "math"),
        "language": record.get("language", "en"),
    }
    if record.get("tests") is not None:
        row["tests"] = record["tests"]
    return row | {"source": "rejection", "prompt_index": index}


def load_extra(paths: list[str]) -> list[dict]:
    """Non-reasoning SFT rows (prompt, response) from JSONL files, checked row by row."""
    rows = []
    for path in paths:
        for record in FileSource(train=path).load("train", required=("prompt", "response")):
            rows.append(record | {"source": f"extra:{Path(path).name}"})
    return rows


def _summary(progress: list[dict], rows: list[dict], extra_rows: int) -> dict:
    reasons = Counter()
    for line in progress:
        reasons.update(line["reasons"])
    samples = sum(line["k"] for line in progress)
    kept_hist = Counter(line["written"] for line in progress)
    return {
        "prompts": len(progress),
        "samples": samples,
        "correct": sum(line["correct"] for line in progress),
        "pass_rate": sum(line["correct"] for line in progress) / max(1, samples),
        "kept": sum(line["kept"] for line in progress),
        "keep_rate": sum(line["kept"] for line in progress) / max(1, samples),
        "written": sum(line["written"] for line in progress),
        "prompts_with_data": sum(1 for line in progress if line["written"]),
        "truncated": sum(line["truncated"] for line in progress),
        "rejected_by": {r: reasons[r] for r in REASONS},
        "written_per_prompt_histogram": {str(k): kept_hist[k] for k in sorted(kept_hist)},
        "extra_rows": extra_rows,
        "rows": len(rows),
    }


# -- the job -----------------------------------------------------------------------------------
def run_rejection(
    engine: RolloutEngine,
    records: list[dict],
    out: str | Path,
    *,
    policy: str = "",
    data: str = "",
    version: str | None = None,
    sampling: SamplingConfig = SamplingConfig(),
    selection: SelectionConfig = SelectionConfig(),
    filters: RejectionFilters | None = None,
    prompt_format: PromptFormat | None = None,
    extra: list[str] | None = None,
    on_batch_end: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Sample, filter and write one data set version; resumes an unfinished one. Returns the manifest.

    ``on_batch_end(batch_index)`` runs after each batch is on disk (tests interrupt the job there).
    """
    prompt_format = prompt_format or PromptFormat()
    filters = filters or RejectionFilters()
    extra = [str(p) for p in (extra or [])]
    if not records:
        raise JobError(f"no prompts to sample from ({data})")
    missing = [i for i, r in enumerate(records) if not str(r.get("prompt", "")).strip() or r.get("answer") is None]
    if missing:
        raise JobError(f"{data}: record {missing[0]} has no prompt or no answer (rejection needs both)")
    extra_rows = load_extra(extra)  # fail on a bad extra file now, not after hours of sampling
    prompts_json = json.dumps([r["prompt"] for r in records], ensure_ascii=False)
    settings = Settings(policy=str(policy), data=data, n_prompts=len(records),
                        prompts_sha256=hashlib.sha256(prompts_json.encode()).hexdigest(), sampling=sampling,
                        selection=selection, filters=filters.to_dict(), prompt_format=prompt_format,
                        extra=extra).as_dict()

    folder = resolve_version(Path(out), version)
    folder.mkdir(parents=True, exist_ok=True)
    writer = ChunkedJsonl({"data": folder / "data.jsonl", "prompts": folder / "prompts.jsonl"},
                          folder / "progress.json", settings)
    if not (folder / "run.json").is_file():
        write_atomic(folder / "run.json", json.dumps(settings, indent=2, ensure_ascii=False))
    batches = [range(start, min(start + sampling.batch_size, len(records)))
               for start in range(0, len(records), sampling.batch_size)]
    todo = [b for b in range(len(batches)) if not writer.done(b)]
    tok = Tokenized(engine.tokenizer, prompt_format.template, prompt_format.max_prompt_tokens,
                    sampling.max_new_tokens, prompt_format.system_prompt)
    params = sampling.params()
    has_code = any(r.get("task") == "code" for r in records)
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("rejection sampling"), BarColumn(), MofNCompleteColumn(),
               TextColumn("kept {task.fields[kept]}"), TimeRemainingColumn()]
    kept_so_far = len(writer.rows("data"))
    with Progress(*columns, disable=not progress) as bar, ThreadPoolExecutor(4) as pool:
        remaining = sum(len(batches[b]) for b in todo)
        task = bar.add_task("prompts", total=len(records), completed=len(records) - remaining, kept=kept_so_far)
        for b in todo:
            batch = [records[i] for i in batches[b]]
            completions, truncated = generate_for_records(engine, tok, batch, params, sampling.k,
                                                          mix_seed(sampling.seed, stream=b))
            rows, lines = [], []
            for index, record, texts, n_trunc in zip(batches[b], batch, completions, truncated):
                written, stats = select_completions(record, texts, filters, selection, pool if has_code else None)
                rows += [_row(record, index, j, text) for j, text in enumerate(written)]
                lines.append({"prompt_index": index, "batch": b, "id": record.get("id", index), **stats,
                              "truncated": n_trunc})
            writer.write(b, {"data": rows, "prompts": lines})
            kept_so_far += len(rows)
            bar.update(task, advance=len(batch), kept=kept_so_far)
            if on_batch_end is not None:
                on_batch_end(b)
    if not writer.done(EXTRA_CHUNK):
        writer.write(EXTRA_CHUNK, {"data": extra_rows})
    return _finish(folder, writer, settings, time.perf_counter() - t0)


def _finish(folder: Path, writer: ChunkedJsonl, settings: dict, seconds: float) -> dict:
    """Write stats.json and, last, manifest.json."""
    rows = writer.rows("data")
    n_extra = sum(1 for r in rows if r.get("source") != "rejection")
    progress = sorted(writer.rows("prompts"), key=lambda line: line["prompt_index"])
    overall = _summary(progress, rows, n_extra)
    per_prompt = [{"id": p["id"], "written": p["written"], "kept": p["kept"], "pass_rate": p["pass_rate"]}
                  for p in progress]
    write_atomic(folder / "stats.json", json.dumps({"overall": overall, "per_prompt": per_prompt}, indent=1,
                                                   ensure_ascii=False))
    manifest = {
        "data": str(folder / "data.jsonl"),
        "data_sha256": sha256_file(folder / "data.jsonl"),
        "version": folder.name,
        "source_checkpoint": settings["policy"],
        "source_checkpoint_sha256": checkpoint_sha256(settings["policy"]) if settings["policy"] else None,
        "settings": settings,
        "overall": overall,
        "seconds_last_session": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": True,
    }
    writer.mark_complete()
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


class RejectionJob:
    """The Hydra job of rejection sampling (``conf/job/rejection.yaml``); the pipeline's ``sft_data`` and
    ``distill_data`` stages.

    Args:
        policy: the policy to sample (a stage's ``hf/`` export or any causal LM).
        source: the data source whose ``split`` gives the prompts (the data config's, by default).
        split, limit: which records (``limit``: only the first N).
        prompts: a JSONL/Parquet file with prompt and answer instead of ``source``.
        out: the data set folder (versions go to ``<out>/v1``, …); None = the run's folder.
        version: vN to write or resume (None: resume the latest unfinished one, or start the next).
        sampling, selection, filters: ``SamplingConfig``, ``SelectionConfig``, ``RejectionFilters`` fields.
        template, system_prompt, max_prompt_tokens: how prompts are rendered (the policy's stage's own).
        extra: non-reasoning SFT files to append (R1's ~200k other samples).
        dtype, device: how the policy is loaded.
        rollout: the ``rollout`` config (the engine that samples).
        progress: show a progress bar.
    """

    def __init__(self, policy: str, source=None, split: str = "train", limit: int | None = None,
                 prompts: str | None = None, out: str | None = None, version: str | None = None,
                 sampling: dict | None = None, selection: dict | None = None, filters: dict | None = None,
                 template: str = "chat", system_prompt: str | None = "", max_prompt_tokens: int = 256,
                 extra: list[str] | None = None, dtype: str = "auto", device: str = "auto", rollout=None,
                 progress: bool = True) -> None:
        from r1lab.jobs.base import check_model_path

        if source is None and prompts is None:
            raise JobError("job.source: give the data source (or job.prompts, a file) to take prompts from")
        self.sampling = SamplingConfig(**(sampling or {}))
        self.selection = SelectionConfig(**(selection or {}))
        filters = dict(filters or {})
        if filters.get("code_blocks_for") is not None:
            filters["code_blocks_for"] = tuple(filters["code_blocks_for"])
        try:
            self.filters = RejectionFilters(**filters)
        except TypeError as error:
            raise JobError(f"job.filters: {error}") from None
        check_model_path("job.policy", policy)
        self.policy, self.source, self.split, self.limit, self.prompts = str(policy), source, split, limit, prompts
        self.out, self.version = out, version
        self.prompt_format = PromptFormat(template, system_prompt, int(max_prompt_tokens))
        self.extra = [str(p) for p in (extra or [])]
        self.dtype, self.device, self.rollout, self.progress = dtype, device, rollout, progress

    def run(self, output_dir: str | Path) -> dict[str, float]:
        from r1lab.jobs.base import load_policy, prompt_records

        records, described = prompt_records(self.source, self.split, self.prompts, self.limit)
        with load_policy(self.policy, self.dtype, self.device, self.rollout)[1] as engine:
            manifest = run_rejection(engine, records, Path(self.out or output_dir), policy=self.policy,
                                     data=described, version=self.version, sampling=self.sampling,
                                     selection=self.selection, filters=self.filters, prompt_format=self.prompt_format,
                                     extra=self.extra, progress=self.progress)
        o = manifest["overall"]
        print(f"{manifest['data']}: {o['rows']} rows ({o['written']} sampled + {o['extra_rows']} extra) from "
              f"{o['prompts']} prompts; pass rate {o['pass_rate']:.3f}, keep rate {o['keep_rate']:.3f}, "
              f"{o['prompts_with_data']} prompts with data; rejected by {o['rejected_by']}", flush=True)
        return {f"rejection/{k}": float(o[k]) for k in ("prompts", "samples", "pass_rate", "keep_rate", "written",
                                                       "prompts_with_data", "truncated", "rows")}
