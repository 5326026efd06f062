"""Math-Shepherd's step labels (arXiv 2312.08935, §3.3): a step is as good as the continuations from it.

    python -m r1lab.train stage=prm_labels                     # from the cold start (conf/stage/prm_labels.yaml)
    python -m r1lab.train job=mc_step_labels job.policy=<hf folder> job.continuations=8

No rule checks the steps of most tasks; Math-Shepherd labels them with the policy itself. For every
prompt a *generator* samples ``solutions`` completions; each is split into steps by the PRM's rule
(``r1lab.rewards.steps.split_steps``); from the prefix that ends with step i a *completer* (the
same policy) samples ``continuations`` completions to the end, and the step's label is

- ``hard`` (HE, Math-Shepherd's default): 1 if any continuation reaches the right answer, else 0;
- ``soft`` (SE): the share of continuations that reach it.

The accuracy reward decides "right answer" (``r1lab.rewards.filters.is_correct``), so any task with
a verifier (the tiny world, reasoning-gym, code with tests) gets step labels. Where the tiny world's
rule verifier also applies (arithmetic chains), each row carries its exact labels too
(``rule_labels``), and the job reports how often the Monte Carlo labels agree with them: how noisy
Math-Shepherd's labels are on a task where the truth is known.

Output, resumable like every job (``r1lab.jobs.durable.ChunkedJsonl``: batches of prompts, each
seeded by (seed, batch); a job killed at any moment and started again writes the files of an
uninterrupted run)::

    <out>/data.jsonl      PRM rows: prompt, completion, labels, success (per step), rule_labels, answer, task, id
    <out>/run.json        the settings, written first; a resumed job must match them
    <out>/stats.json      label balance, agreement with the rule verifier, samples drawn
    <out>/manifest.json   written last: source checkpoint, settings, numbers, sha256 of data.jsonl

``stage=prm data=mc_step_labels`` trains the process reward model on ``data.jsonl``.

A continuation is sampled with the full ``max_new_tokens`` after its prefix (the engines take one
budget per call), so a continued completion may run longer than the generator's own.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from r1lab.data.collate import Tokenized, left_pad
from r1lab.generation import RolloutEngine, SamplingParams, generate_for_records, mix_seed
from r1lab.jobs.durable import ChunkedJsonl, JobError, checkpoint_sha256, sha256_file, write_atomic
from r1lab.rewards.filters import is_correct
from r1lab.rewards.steps import StepsNotApplicable, arithmetic_step_labels, split_steps

ESTIMATES = ("hard", "soft")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class MonteCarloConfig:
    """How solutions are drawn and their steps continued."""

    solutions: int = 2  # completions per prompt to label (the generator's samples)
    continuations: int = 8  # completions from every step's prefix (Math-Shepherd: N = 8)
    estimate: str = "hard"  # hard: any continuation right; soft: the share that is
    rule: str = "sentence"  # the step rule: the one the PRM will score with
    batch_size: int = 8  # prompts per chunk
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("solutions", "continuations", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise JobError(f"job.{key}: must be an integer >= 1, got {value!r}")
        if self.estimate not in ESTIMATES:
            raise JobError(f"job.estimate: one of {ESTIMATES}, got {self.estimate!r}")
        split_steps("", self.rule)  # a bad regex fails now
        self.params()

    def params(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, key="job")


def step_prefixes(completion: str, rule: str) -> list[str]:
    """The completion up to the end of each of its steps (step i's prefix ends with step i)."""
    return [completion[:end] for _, end in split_steps(completion, rule)]


def continue_prefixes(engine: RolloutEngine, tok: Tokenized, prompts: list[str], prefixes: list[str], n: int,
                      params: SamplingParams, seed: int | None) -> list[list[str]]:
    """``n`` continuations of each (prompt, completion prefix), as whole completions (prefix + continuation)."""
    encode = lambda text: tok.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    ids, mask = left_pad([tok.prompt_ids(p) + encode(x) for p, x in zip(prompts, prefixes)], tok.pad)
    texts = engine.generate(ids, mask, params, n=n, seed=seed).texts
    return [[prefix + text for text in texts[i * n : (i + 1) * n]] for i, prefix in enumerate(prefixes)]


def monte_carlo_labels(engine: RolloutEngine, tok: Tokenized, records: list[dict], completions: list[str],
                       config: MonteCarloConfig, seed: int | None = None) -> list[list[float]]:
    """Per completion, the share of ``config.continuations`` continuations from each step's prefix that
    reach the right answer (one generation call for every prefix of the batch); [] for no steps."""
    owners, prompts, prefixes = [], [], []
    for i, (record, completion) in enumerate(zip(records, completions)):
        for prefix in step_prefixes(completion, config.rule):
            owners.append(i)
            prompts.append(record["prompt"])
            prefixes.append(prefix)
    success: list[list[float]] = [[] for _ in completions]
    if not prefixes:
        return success
    continued = continue_prefixes(engine, tok, prompts, prefixes, config.continuations, config.params(), seed)
    for i, prompt, texts in zip(owners, prompts, continued):
        right = sum(is_correct(prompt, text, records[i]) for text in texts)
        success[i].append(right / len(texts))
    return success


def estimate_labels(success: list[float], estimate: str) -> list[float]:
    """Math-Shepherd's hard (any continuation right) or soft (the share right) estimate of each step."""
    if estimate == "hard":
        return [1.0 if s > 0 else 0.0 for s in success]
    return list(success)


def rule_labels(record: dict, completion: str, rule: str) -> list[float] | None:
    """The tiny world's exact step labels where its rule verifier applies (arithmetic), else None."""
    if record.get("task", "arith") != "arith":
        return None
    try:
        return arithmetic_step_labels(record["prompt"], completion, record, rule)
    except StepsNotApplicable:
        return None


def label_batch(engine: RolloutEngine, tok: Tokenized, records: list[dict], config: MonteCarloConfig,
                batch: int = 0, first_index: int = 0) -> list[dict]:
    """Sample ``config.solutions`` completions per record and label their steps; PRM rows (completions
    without steps are left out). The samples of batch ``batch`` are seeded by (``config.seed``, batch)."""
    params = config.params()
    sampled, _ = generate_for_records(engine, tok, records, params, config.solutions,
                                      mix_seed(config.seed, batch, stream=0))
    owners = [r for r, texts in zip(records, sampled) for _ in texts]
    indices = [first_index + i for i, texts in enumerate(sampled) for _ in texts]
    completions = [text for texts in sampled for text in texts]
    success = monte_carlo_labels(engine, tok, owners, completions, config, mix_seed(config.seed, batch, stream=1))
    rows = []
    for j, (index, record, completion, s) in enumerate(zip(indices, owners, completions, success)):
        if not s:
            continue
        rows.append({
            "id": f"{record.get('id', index)}/{j % config.solutions}",
            "prompt": record["prompt"],
            "completion": completion,
            "labels": estimate_labels(s, config.estimate),
            "success": s,
            "rule_labels": rule_labels(record, completion, config.rule),
            "correct": bool(is_correct(record["prompt"], completion, record)),
            "answer": record.get("answer"),
            "task": record.get("task", "math"),
            "prompt_index": index,
        })
    return rows


def summarize(rows: list[dict], prompts: int, config: MonteCarloConfig) -> dict:
    """Label balance, the samples drawn, and agreement with the rule verifier where it applies."""
    steps = [label for r in rows for label in r["labels"]]
    checked = [(m > 0.5, t > 0.5) for r in rows if r.get("rule_labels") is not None
               and len(r["rule_labels"]) == len(r["labels"]) for m, t in zip(r["labels"], r["rule_labels"])]
    agree = sum(m == t for m, t in checked)
    wrong_steps = [m for m, t in checked if not t]
    right_steps = [m for m, t in checked if t]
    return {
        "prompts": prompts,
        "rows": len(rows),
        "steps": len(steps),
        "mean_label": sum(steps) / max(1, len(steps)),
        "solutions_correct": sum(r["correct"] for r in rows) / max(1, len(rows)),
        "continuations": len(steps) * config.continuations,
        "rule_checked_steps": len(checked),
        # the share of steps where the Monte Carlo label (> 0.5) equals the rule verifier's
        "rule_agreement": agree / len(checked) if checked else None,
        # rule-wrong steps the Monte Carlo label calls right (a later step undid the error, or a lucky guess)
        "false_right": sum(wrong_steps) / len(wrong_steps) if wrong_steps else None,
        # rule-right steps it calls wrong (every continuation from a right prefix failed)
        "false_wrong": sum(not m for m in right_steps) / len(right_steps) if right_steps else None,
    }


def run_mc_step_labels(engine: RolloutEngine, records: list[dict], out: str | Path, *, config: MonteCarloConfig,
                       policy: str = "", data: str = "", template: str = "chat", system_prompt: str | None = "",
                       max_prompt_tokens: int = 256, on_batch_end=None) -> dict:
    """Label the steps of sampled solutions of ``records`` into ``out`` (resuming an unfinished run);
    returns the manifest. ``on_batch_end(b)`` runs after batch b is on disk (tests interrupt there)."""
    if not records:
        raise JobError(f"no prompts to label ({data})")
    missing = [i for i, r in enumerate(records) if not str(r.get("prompt", "")).strip() or r.get("answer") is None]
    if missing:
        raise JobError(f"{data}: record {missing[0]} has no prompt or no answer (step labels need both)")
    prompts_json = json.dumps([r["prompt"] for r in records], ensure_ascii=False)
    settings = {"policy": str(policy), "data": data, "n_prompts": len(records),
                "prompts_sha256": hashlib.sha256(prompts_json.encode()).hexdigest(), "config": asdict(config),
                "template": template, "system_prompt": system_prompt, "max_prompt_tokens": max_prompt_tokens,
                "format_version": FORMAT_VERSION}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "manifest.json").is_file():
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest.get("settings") != settings:
            raise JobError(f"{folder} holds finished step labels made with other settings; give another job.out")
        return manifest
    writer = ChunkedJsonl({"data": folder / "data.jsonl"}, folder / "progress.json", settings)
    if not (folder / "run.json").is_file():
        write_atomic(folder / "run.json", json.dumps(settings, indent=2, ensure_ascii=False))
    tok = Tokenized(engine.tokenizer, template, max_prompt_tokens, config.max_new_tokens, system_prompt)
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, len(records), config.batch_size)):
        if writer.done(b):
            continue
        batch = records[start : start + config.batch_size]
        writer.write(b, {"data": label_batch(engine, tok, batch, config, b, start)})
        if on_batch_end is not None:
            on_batch_end(b)
    rows = writer.rows("data")
    overall = summarize(rows, len(records), config)
    write_atomic(folder / "stats.json", json.dumps(overall, indent=2))
    manifest = {"data": str(folder / "data.jsonl"), "data_sha256": sha256_file(folder / "data.jsonl"),
                "source_checkpoint": settings["policy"],
                "source_checkpoint_sha256": checkpoint_sha256(settings["policy"]) if settings["policy"] else None,
                "settings": settings, "overall": overall, "seconds_last_session": round(time.perf_counter() - t0, 2),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": True}
    writer.mark_complete()
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


class MonteCarloStepLabelsJob:
    """The Hydra job (``conf/job/mc_step_labels.yaml``; the pipeline-style ``prm_labels`` stage).

    Args:
        policy: the generator and completer (a stage's ``hf/`` export or any causal LM).
        source, split, limit, prompts: where the prompts come from (as in the rejection job).
        out: the output folder (None: the run's folder).
        solutions, continuations, estimate, rule, batch_size, max_new_tokens, temperature, top_p, seed:
            ``MonteCarloConfig``.
        template, system_prompt, max_prompt_tokens: how prompts are rendered (the policy's stage's own).
        dtype, device, rollout: how the policy is loaded and sampled.
    """

    def __init__(self, policy: str, source=None, split: str = "train", limit: int | None = None,
                 prompts: str | None = None, out: str | None = None, template: str = "chat",
                 system_prompt: str | None = "", max_prompt_tokens: int = 256, dtype: str = "auto",
                 device: str = "auto", rollout=None, **config) -> None:
        from r1lab.jobs.base import check_model_path

        if source is None and prompts is None:
            raise JobError("job.source: give the data source (or job.prompts, a file) to take prompts from")
        try:
            self.config = MonteCarloConfig(**config)
        except TypeError as error:
            raise JobError(f"job: {error}") from None
        check_model_path("job.policy", policy)
        self.policy, self.source, self.split, self.limit, self.prompts, self.out = (
            str(policy), source, split, limit, prompts, out)
        self.template, self.system_prompt, self.max_prompt_tokens = template, system_prompt, int(max_prompt_tokens)
        self.dtype, self.device, self.rollout = dtype, device, rollout

    def run(self, output_dir: str | Path) -> dict[str, float]:
        from r1lab.jobs.base import load_policy, prompt_records

        records, described = prompt_records(self.source, self.split, self.prompts, self.limit)
        with load_policy(self.policy, self.dtype, self.device, self.rollout)[1] as engine:
            manifest = run_mc_step_labels(engine, records, Path(self.out or output_dir), config=self.config,
                                          policy=self.policy, data=described, template=self.template,
                                          system_prompt=self.system_prompt, max_prompt_tokens=self.max_prompt_tokens)
        o = manifest["overall"]
        agreement = "n/a" if o["rule_agreement"] is None else f"{o['rule_agreement']:.3f}"
        print(f"{manifest['data']}: {o['rows']} labelled completions, {o['steps']} steps, mean label "
              f"{o['mean_label']:.3f}, {o['continuations']} continuations; agreement with the rule verifier "
              f"{agreement} over {o['rule_checked_steps']} steps", flush=True)
        return {f"mc_labels/{k}": float(v) for k, v in o.items() if v is not None}
