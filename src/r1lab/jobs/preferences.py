"""Preference pairs for reward-model training, as a job (``conf/job/preferences.yaml``).

    python -m r1lab.train stage=preferences                     # the pipeline's stage: sampled pairs
    python -m r1lab.train job=preferences job.mode=synthetic job.out=pairs.jsonl

Two ways to get candidates per prompt:

- ``sample``: k completions from each of one or more policy checkpoints, through the rollout engine;
  several checkpoints are ranked together (pairs also compare one checkpoint's answer with another's);
- ``synthetic``: the reference solution and controlled corruptions of it (``r1lab.jobs.synthetic_pairs``),
  so a reward model can be trained before any policy exists.

A rule (``r1lab.jobs.pairs``) ranks the candidates of each prompt. Output: one JSON object per line,
grouped by prompt, with ``prompt``, ``chosen``, ``rejected``, ``margin`` and metadata (``answer``,
``task``, ``language``, ``rule``, the two candidates' kinds and scores, ``prompt_id``). Deterministic
for a seed, and resumable: the file is written prompt chunk by prompt chunk through ``ChunkedJsonl``
(progress in ``<out>.progress.json``); a rerun with the same settings continues it, and a finished
file is left as it is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

from r1lab.checks import check_choice, check_number
from r1lab.data.collate import Tokenized
from r1lab.generation import SamplingParams, generate_for_records, mix_seed
from r1lab.jobs.base import check_model_path
from r1lab.jobs.durable import ChunkedJsonl, JobError
from r1lab.jobs.pairs import make_pairs, resolve_rule
from r1lab.jobs.synthetic_pairs import synthetic_candidates

MODES = ("synthetic", "sample")
VIEWS = ("response", "answer")


def _chunks(records: list[dict], size: int) -> Iterator[tuple[int, list[dict]]]:
    for start in range(0, len(records), size):
        yield start // size, records[start : start + size]


def _writer(out: str | Path, settings: dict, force: bool) -> ChunkedJsonl:
    out = Path(out)
    return ChunkedJsonl({"pairs": out}, out.with_name(out.name + ".progress.json"), settings, force=force)


def write_synthetic(records: list[dict], out: str | Path, rule: str = "r1_preference", pairs_per_prompt: int | None = 4,
                    seed: int = 0, view: str = "response", chunk_size: int = 256, force: bool = False) -> int:
    """Synthetic pairs for ``records`` (tasks with reference responses); returns the pair count."""
    if any("response" not in r for r in records):
        raise JobError("job.mode=synthetic needs records with a reference `response` (the tiny world's)")
    settings = {"mode": "synthetic", "rule": rule, "pairs_per_prompt": pairs_per_prompt, "seed": seed, "view": view,
                "chunk_size": chunk_size, "prompts": [r.get("id") or r["prompt"] for r in records]}
    writer, fn = _writer(out, settings, force), resolve_rule(rule)
    for chunk, part in _chunks(records, chunk_size):
        if writer.done(chunk):
            continue
        rows = []
        for record in part:
            rng = random.Random(f"{seed}/{record.get('id') or record['prompt']}")
            rows += make_pairs(record, synthetic_candidates(record, rng), fn, rule, rng, pairs_per_prompt, view,
                               "synthetic")
        writer.write(chunk, {"pairs": rows})
    writer.mark_complete()
    return len(writer.rows("pairs"))


def write_sampled(records: list[dict], engines: list, out: str | Path, *, policies: list[str], k: int = 8,
                  rule: str = "r1_preference", pairs_per_prompt: int | None = 4, seed: int = 0,
                  view: str = "response", template: str = "chat", system_prompt: str | None = "",
                  max_prompt_tokens: int = 256, max_new_tokens: int = 96, temperature: float = 1.0,
                  top_p: float = 1.0, batch_size: int = 32, force: bool = False) -> int:
    """Pairs ranked among k samples per prompt from each engine (one per checkpoint in ``policies``,
    sharing one tokenizer); returns the pair count. A sample's kind names its checkpoint
    (``<i>:sample<j>``, i its place in the list) when there are several."""
    if k < 2:
        raise JobError(f"job.k: need at least 2 completions per prompt to rank, got {k}")
    settings = {"mode": "sample", "policy": policies[0] if len(policies) == 1 else policies, "k": k,
                "rule": rule, "pairs_per_prompt": pairs_per_prompt,
                "seed": seed, "view": view, "template": template, "system_prompt": system_prompt,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "batch_size": batch_size, "prompts": [r.get("id") or r["prompt"] for r in records]}
    writer, fn = _writer(out, settings, force), resolve_rule(rule)
    params = SamplingParams(max_new_tokens, temperature, top_p, key="job")
    tok = Tokenized(engines[0].tokenizer, template, max_prompt_tokens, max_new_tokens, system_prompt)
    for chunk, part in _chunks(records, batch_size):
        if writer.done(chunk):
            continue
        candidates: list[list[tuple[str, str]]] = [[] for _ in part]
        for p, engine in enumerate(engines):
            texts, _ = generate_for_records(engine, tok, part, params, k, mix_seed(seed, p, chunk))
            prefix = f"{p}:" if len(engines) > 1 else ""
            for i, completions in enumerate(texts):
                candidates[i] += [(f"{prefix}sample{j}", t) for j, t in enumerate(completions)]
        rows = []
        for record, cands in zip(part, candidates):
            rng = random.Random(f"{seed}/{record.get('id') or record['prompt']}")
            rows += make_pairs(record, cands, fn, rule, rng, pairs_per_prompt, view, ",".join(policies))
        writer.write(chunk, {"pairs": rows})
    writer.mark_complete()
    return len(writer.rows("pairs"))


class PreferenceJob:
    """The preference pairs job (the pipeline's ``preferences`` stage).

    Args:
        mode: ``sample`` (policy samples) or ``synthetic`` (corruptions of reference solutions).
        source, split, limit, prompts: where the prompts come from (see ``RejectionJob``).
        out: the pairs file (default: ``pairs.jsonl`` in the run's folder).
        rule: a rule name (``r1_preference``, ``correctness``) or a dotted path.
        pairs_per_prompt: at most this many pairs per prompt (None: all).
        view: ``response`` (whole completions) or ``answer`` (what follows ``</think>``: R1's helpfulness view).
        seed: seeds the sampler and the choice of pairs.
        policies, k, max_new_tokens, temperature, top_p, batch_size: the ``sample`` mode's policies
            (several are ranked together) and sampling.
        template, system_prompt, max_prompt_tokens: how prompts are rendered for the policies.
        dtype, device, rollout: how the policies are loaded and sampled.
        force: start the file over instead of resuming it.
    """

    def __init__(self, mode: str = "sample", source=None, split: str = "train", limit: int | None = None,
                 prompts: str | None = None, out: str | None = None, rule: str = "r1_preference",
                 pairs_per_prompt: int | None = 4, view: str = "response", seed: int = 0,
                 policies: list[str] | None = None, k: int = 8, max_new_tokens: int = 96, temperature: float = 1.0,
                 top_p: float = 1.0, batch_size: int = 32, template: str = "chat", system_prompt: str | None = "",
                 max_prompt_tokens: int = 256, dtype: str = "auto", device: str = "auto", rollout=None,
                 force: bool = False) -> None:
        check_choice("job.mode", mode, MODES)
        check_choice("job.view", view, VIEWS)
        check_number("job.pairs_per_prompt", pairs_per_prompt, 1, integer=True, allow_none=True)
        check_number("job.batch_size", batch_size, 1, integer=True)
        if source is None and prompts is None:
            raise JobError("job.source: give the data source (or job.prompts, a file) to take prompts from")
        if mode == "sample":
            if not policies:
                raise JobError("job.policies: the sample mode needs at least one policy checkpoint")
            for path in policies:
                check_model_path("job.policies", path)
            check_number("job.k", k, 2, integer=True)
            SamplingParams(max_new_tokens, temperature, top_p, key="job")
        resolve_rule(rule)  # an unknown rule fails here, before any model is loaded
        self.mode, self.source, self.split, self.limit, self.prompts = mode, source, split, limit, prompts
        self.out, self.rule, self.pairs_per_prompt, self.view, self.seed = out, rule, pairs_per_prompt, view, seed
        self.policies = [str(p) for p in (policies or [])]
        self.k, self.max_new_tokens, self.temperature, self.top_p = k, max_new_tokens, temperature, top_p
        self.batch_size, self.template, self.system_prompt = batch_size, template, system_prompt
        self.max_prompt_tokens, self.dtype, self.device, self.rollout = max_prompt_tokens, dtype, device, rollout
        self.force = force

    def records(self) -> list[dict]:
        from r1lab.jobs.base import prompt_records

        records, _ = prompt_records(self.source, self.split, self.prompts, self.limit)
        if self.prompts is not None:  # a file's rows get ids by position, for the pair metadata
            records = [dict(r, id=r.get("id") or f"{self.prompts}:{i}") for i, r in enumerate(records)]
        return records

    def run(self, output_dir: str | Path) -> dict[str, float]:
        out = Path(self.out) if self.out else Path(output_dir) / "pairs.jsonl"
        records = self.records()
        if self.mode == "synthetic":
            n = write_synthetic(records, out, self.rule, self.pairs_per_prompt, self.seed, self.view, force=self.force)
        else:
            n = self._sample(records, out)
        print(f"{n} preference pairs from {len(records)} prompts in {out}", flush=True)
        return {"preferences/pairs": float(n), "preferences/prompts": float(len(records))}

    def _sample(self, records: list[dict], out: Path) -> int:
        from r1lab.jobs.base import load_policy

        with ExitStack() as engines:  # every policy's engine is closed however sampling ends
            loaded = []
            for p in self.policies:
                backbone, engine = load_policy(p, self.dtype, self.device, self.rollout, key="job.policies")
                loaded.append((backbone, engines.enter_context(engine)))
            vocab = loaded[0][0].tokenizer.get_vocab()
            for path, (backbone, _) in zip(self.policies[1:], loaded[1:]):
                if backbone.tokenizer.get_vocab() != vocab:
                    raise JobError(f"job.policies: {path} does not share the tokenizer of {self.policies[0]}")
            return write_sampled(records, [engine for _, engine in loaded], out, policies=self.policies, k=self.k,
                                 rule=self.rule, pairs_per_prompt=self.pairs_per_prompt, seed=self.seed,
                                 view=self.view, template=self.template, system_prompt=self.system_prompt,
                                 max_prompt_tokens=self.max_prompt_tokens, max_new_tokens=self.max_new_tokens,
                                 temperature=self.temperature, top_p=self.top_p, batch_size=self.batch_size,
                                 force=self.force)
