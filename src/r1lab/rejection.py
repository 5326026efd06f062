"""Rejection sampling (DeepSeek-R1, arXiv 2501.12948, §2.3.3): a policy's filtered samples become SFT data.

    python -m r1lab.rejection --policy outputs/pipeline/tiny/grpo/hf --out outputs/pipeline/tiny/sft_data

For every prompt of a split (the tiny world's train split by default, or ``--prompts file.jsonl``)
sample k completions with the KV-cached sampler, keep those that pass ``RejectionFilters`` (correct,
well-formed, one language, no long paragraph, no code block outside code tasks), optionally dedupe
and cap them per prompt, and write a versioned data set::

    <out>/v1/data.jsonl     SFT rows: prompt, response, answer, task, language, (tests), id, source
    <out>/v1/prompts.jsonl  one line per prompt: kept count, pass rate, rejection reasons (the progress log)
    <out>/v1/run.json       the settings, written first; a resumed job must match them
    <out>/v1/stats.json     overall numbers and the per-prompt kept count and pass rate
    <out>/v1/manifest.json  written last: source checkpoint, settings, filters, numbers, sha256 of data.jsonl

Resumable: prompts are sampled in fixed batches (batch b holds prompts b·B … (b+1)·B−1, its sampler
seeded with (seed, b)); a finished batch appends its rows to data.jsonl and then its per-prompt lines
to prompts.jsonl, each with fsync. A restarted job keeps the batches whose every prompt line is on
disk, drops anything else (a torn last line, rows of an unfinished batch), and goes on from there: the
final files are exactly those of an uninterrupted run. Without ``--version`` the job resumes the latest
unfinished version or starts the next one (v1, v2, …).

R1 adds ~200k non-reasoning samples to its ~600k reasoning samples: ``--extra file.jsonl`` (rows with
prompt and response) appends such data after the sampled rows. Sequence-level distillation (what R1
does for its small models) is this job on the teacher followed by SFT of the student on data.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.data.sources import DataError, FileSource
from r1lab.rewards.filters import REASONS, RejectionFilters, is_correct
from r1lab.rl.sampler import decode, sample

CONF = Path(__file__).resolve().parents[2] / "conf"
FORMAT_VERSION = 1


class RejectionError(RuntimeError):
    """A job that cannot start or resume as asked; the message says what to change."""


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
class Job:
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

    def settings(self) -> dict:
        out = asdict(self)
        out["format_version"] = FORMAT_VERSION
        return out


# -- files -------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and make them durable (flush + fsync) before returning."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_jsonl_prefix(path: Path) -> list[dict]:
    """The complete lines of a JSONL file that a crash may have cut: a torn last line is dropped."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # no newline after it: the write was interrupted
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise RejectionError(f"{path}:{lineno}: corrupt line inside the file ({e.msg})") from None
    return rows


def _jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


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
        raise RejectionError(f"{path} is a finished data set; pass another --version (e.g. {following}) "
                             "or none to start the next one")
    return path


# -- one batch ---------------------------------------------------------------------------------
def _normalised(text: str) -> str:
    return " ".join(text.split())


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
        key = _normalised(text)
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


@torch.no_grad()
def sample_completions(model, tokenizer, fmt: PromptFormat, records: list[dict], sampling: SamplingConfig,
                       generator: torch.Generator, device) -> tuple[list[list[str]], list[int]]:
    """k completions per record (texts without EOS) and the number of truncated ones per record."""
    tok = Tokenized(tokenizer, fmt.template, fmt.max_prompt_tokens, sampling.max_new_tokens,
                    fmt.system_prompt)
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in records], tokenizer.pad_token_id)
    k = sampling.k
    out = sample(model, ids.repeat_interleave(k, 0).to(device), mask.repeat_interleave(k, 0).to(device),
                 max_new_tokens=sampling.max_new_tokens, eos_id=tokenizer.eos_token_id,
                 pad_id=tokenizer.pad_token_id, temperature=sampling.temperature, top_p=sampling.top_p,
                 generator=generator)
    texts = decode(tokenizer, out)
    truncated = out.truncated.view(len(records), k).sum(-1).tolist()
    return [texts[i * k : (i + 1) * k] for i in range(len(records))], truncated


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


# -- the job -----------------------------------------------------------------------------------
def _batches(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def _recover(folder: Path, batches: list[range]) -> set[int]:
    """Keep only whole batches on disk; return the indices of the prompts already done."""
    progress_path, data_path = folder / "prompts.jsonl", folder / "data.jsonl"
    lines = read_jsonl_prefix(progress_path)
    done_by_batch: dict[int, set[int]] = {}
    for line in lines:
        done_by_batch.setdefault(line["batch"], set()).add(line["prompt_index"])
    whole = {b for b, indices in done_by_batch.items() if b < len(batches) and indices == set(batches[b])}
    done = {i for b in whole for i in batches[b]}
    kept_lines = [line for line in lines if line["batch"] in whole]
    rows = [r for r in read_jsonl_prefix(data_path)
            if r.get("source") == "rejection" and r["prompt_index"] in done]
    write_atomic(progress_path, _jsonl_text(kept_lines))
    write_atomic(data_path, _jsonl_text(rows))
    return done


def load_extra(paths: list[str]) -> list[dict]:
    """Non-reasoning SFT rows (prompt, response) from JSONL files, checked row by row."""
    rows = []
    for path in paths:
        for record in FileSource(train=path).load("train", required=("prompt", "response")):
            rows.append(record | {"source": f"extra:{Path(path).name}"})
    return rows


def _summary(progress: list[dict], rows: list[dict], extra_rows: int) -> dict:
    n = len(progress)
    reasons = Counter()
    for line in progress:
        reasons.update(line["reasons"])
    samples = sum(line["k"] for line in progress)
    kept_hist = Counter(line["written"] for line in progress)
    return {
        "prompts": n,
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


def run_rejection(
    model,
    tokenizer,
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
    device: str | torch.device = "cpu",
    on_batch_end: Callable[[int], None] | None = None,
    progress: bool = True,
) -> dict:
    """Sample, filter and write one data set version; resumes an unfinished one. Returns the manifest.

    ``on_batch_end(batch_index)`` runs after each batch is on disk (tests interrupt the job there).
    """
    prompt_format = prompt_format or PromptFormat()
    filters = filters or RejectionFilters()
    extra = [str(p) for p in (extra or [])]
    if sampling.k < 1 or sampling.batch_size < 1:
        raise RejectionError("k and batch_size must be >= 1")
    if not records:
        raise RejectionError(f"no prompts to sample from ({data})")
    missing = [i for i, r in enumerate(records)
               if not str(r.get("prompt", "")).strip() or r.get("answer") is None]
    if missing:
        raise RejectionError(f"{data}: record {missing[0]} has no prompt or no answer (rejection needs both)")
    load_extra(extra)  # fail on a bad extra file now, not after hours of sampling
    prompts_json = json.dumps([r["prompt"] for r in records], ensure_ascii=False)
    job = Job(policy=str(policy), data=data, n_prompts=len(records),
              prompts_sha256=hashlib.sha256(prompts_json.encode()).hexdigest(), sampling=sampling,
              selection=selection, filters=filters.to_dict(), prompt_format=prompt_format, extra=extra)
    settings = job.settings()

    folder = resolve_version(Path(out), version)
    folder.mkdir(parents=True, exist_ok=True)
    run_path = folder / "run.json"
    if run_path.is_file():
        before = json.loads(run_path.read_text())
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise RejectionError(f"{folder} was started with other settings ({', '.join(changed)} differ); "
                                 "resume it with the same ones or pass a new --version")
    else:
        write_atomic(run_path, json.dumps(settings, indent=2, ensure_ascii=False))

    batches = _batches(len(records), sampling.batch_size)
    done = _recover(folder, batches)
    todo = [b for b in range(len(batches)) if batches[b][0] not in done]
    model.eval()
    has_code = any(r.get("task") == "code" for r in records)
    t0 = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("rejection sampling"), BarColumn(), MofNCompleteColumn(),
               TextColumn("kept {task.fields[kept]}"), TimeRemainingColumn()]
    kept_so_far = sum(1 for _ in read_jsonl_prefix(folder / "data.jsonl"))
    with Progress(*columns, disable=not progress) as bar, ThreadPoolExecutor(4) as pool:
        task = bar.add_task("prompts", total=len(records), completed=len(done), kept=kept_so_far)
        for b in todo:
            batch = [records[i] for i in batches[b]]
            generator = torch.Generator(device=device).manual_seed(sampling.seed * 1_000_003 + b)
            completions, truncated = sample_completions(model, tokenizer, prompt_format, batch, sampling,
                                                        generator, device)
            rows, lines = [], []
            for index, record, texts, n_trunc in zip(batches[b], batch, completions, truncated):
                written, stats = select_completions(record, texts, filters, selection,
                                                    pool if has_code else None)
                rows += [_row(record, index, j, text) for j, text in enumerate(written)]
                lines.append({"prompt_index": index, "batch": b, "id": record.get("id", index), **stats,
                              "truncated": n_trunc})
            append_jsonl(folder / "data.jsonl", rows)  # rows first: a batch counts as done only
            append_jsonl(folder / "prompts.jsonl", lines)  # once its prompt lines are on disk too
            kept_so_far += len(rows)
            bar.update(task, advance=len(batch), kept=kept_so_far)
            if on_batch_end is not None:
                on_batch_end(b)
    return _finish(folder, job, settings, time.perf_counter() - t0)


def _finish(folder: Path, job: Job, settings: dict, seconds: float) -> dict:
    """Append the extra rows (idempotent), then write stats.json and, last, manifest.json."""
    rows = [r for r in read_jsonl_prefix(folder / "data.jsonl") if r.get("source") == "rejection"]
    extra_rows = load_extra(job.extra)
    write_atomic(folder / "data.jsonl", _jsonl_text(rows + extra_rows))
    progress = sorted(read_jsonl_prefix(folder / "prompts.jsonl"), key=lambda line: line["prompt_index"])
    overall = _summary(progress, rows + extra_rows, len(extra_rows))
    per_prompt = [{"id": p["id"], "written": p["written"], "kept": p["kept"], "pass_rate": p["pass_rate"]}
                  for p in progress]
    write_atomic(folder / "stats.json", json.dumps({"overall": overall, "per_prompt": per_prompt}, indent=1,
                                                   ensure_ascii=False))
    manifest = {
        "data": str(folder / "data.jsonl"),
        "data_sha256": sha256_file(folder / "data.jsonl"),
        "version": folder.name,
        "source_checkpoint": job.policy,
        "source_checkpoint_sha256": checkpoint_sha256(job.policy) if job.policy else None,
        "settings": settings,
        "overall": overall,
        "seconds_last_session": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "complete": True,
    }
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


# -- command line ------------------------------------------------------------------------------
def load_prompts(split: str, prompts: str | None, overrides: list[str]):
    """The records to sample from and how to render them, from conf/train.yaml's data group.

    By default the tiny world (``data=tiny``) with its template, so prompts are exactly those the
    stages train on; ``prompts`` replaces the source by a JSONL file with prompt and answer.
    """
    import hydra
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    fmt = PromptFormat(cfg.data.template, cfg.data.system_prompt, int(cfg.data.max_prompt_tokens))
    if prompts is not None:
        source = FileSource(train=prompts)
        return source.load("train", required=("prompt", "answer")), fmt, f"{prompts}"
    source = hydra.utils.instantiate(cfg.data.source)
    records = source.load(split, required=("prompt", "answer"))
    return records, fmt, f"{source.describe()} [{split}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m r1lab.rejection", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--policy", required=True, help="Hugging Face folder (a stage's hf/ export) or hub id")
    p.add_argument("--out", required=True, help="data set folder; versions go to <out>/v1, v2, …")
    p.add_argument("--version", default=None, help="vN to write or resume (default: resume or next)")
    p.add_argument("--split", default="train")
    p.add_argument("--prompts", default=None, help="JSONL with prompt and answer instead of the data config")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of conf/train.yaml (data=…, data.source.sizes.train=…, "
                   "data.template=…)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dedupe", action="store_true")
    p.add_argument("--max-per-prompt", type=int, default=None)
    p.add_argument("--no-correct", action="store_true", help="keep wrong answers too")
    p.add_argument("--no-format", action="store_true", help="keep malformed completions too")
    p.add_argument("--min-language", type=float, default=1.0, help="least language consistency; <0 = off")
    p.add_argument("--max-paragraph-chars", type=int, default=1000)
    p.add_argument("--max-paragraph-words", type=int, default=200)
    p.add_argument("--allow-code-blocks", action="store_true",
                   help="do not drop code blocks in non-code tasks")
    p.add_argument("--valid-steps", action="store_true",
                   help="also drop chains with a wrong arithmetic step (tiny world; not in R1)")
    p.add_argument("--extra", action="append", default=[], help="non-reasoning SFT JSONL to append")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (the checkpoint's)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console

    from r1lab.models.backbone import Backbone

    args = parse_args(argv)
    console = Console(stderr=True)
    overrides = ["data=tiny", *args.override] if not any(o.startswith("data=") for o in args.override) \
        else list(args.override)
    try:
        records, fmt, data = load_prompts(args.split, args.prompts, overrides)
    except DataError as e:
        raise SystemExit(f"rejection: {e}") from None
    records = records[: args.limit]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    backbone = Backbone(name_or_path=args.policy, dtype=args.dtype)
    console.print(f"policy {args.policy} -> {device}; {len(records)} prompts from {data}")
    model = backbone.build_model().to(device)
    filters = RejectionFilters(
        correct=not args.no_correct, well_formed=not args.no_format,
        min_language=None if args.min_language < 0 else args.min_language,
        max_paragraph_chars=args.max_paragraph_chars, max_paragraph_words=args.max_paragraph_words,
        code_blocks_for=None if args.allow_code_blocks else ("code",), valid_steps=args.valid_steps,
    )
    sampling = SamplingConfig(k=args.k, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    try:
        manifest = run_rejection(
            model, backbone.tokenizer, records, args.out, policy=args.policy, data=data, version=args.version,
            sampling=sampling, selection=SelectionConfig(not args.no_dedupe, args.max_per_prompt),
            filters=filters, prompt_format=fmt, extra=args.extra, device=device,
            progress=not args.no_progress,
        )
    except (RejectionError, DataError) as e:
        raise SystemExit(f"rejection: {e}") from None
    o = manifest["overall"]
    console.print(f"{manifest['data']}: {o['rows']} rows ({o['written']} sampled + {o['extra_rows']} "
                  f"extra) from "
                  f"{o['prompts']} prompts; pass rate {o['pass_rate']:.3f}, keep rate {o['keep_rate']:.3f}, "
                  f"{o['prompts_with_data']} prompts with data; rejected by {o['rejected_by']}")
    return manifest


if __name__ == "__main__":
    main()
