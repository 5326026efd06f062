"""Preference pairs for reward-model training: ranked policy samples, or the tiny world's reference
solutions against controlled corruptions.

R1 (arXiv 2501.12948 §2.3.4) trains its reward models on human preference pairs; the tiny world
stands in for the annotators with a stated rule. A rule is any function
``rank(prompt, completion, reference) -> comparable score`` (a tuple, compared left to right);
of two completions of one prompt, the higher score is ``chosen``, equal scores are no pair.
The default, ``r1_preference``, ranks as R1's guidelines read: a correct answer beats a wrong one;
among correct ones the well-formed one wins, then the single-language one, then the more concise.

Two ways to get candidates per prompt:

- ``sample``: k completions from any policy checkpoint (a Hugging Face folder), one batched,
  KV-cached ``r1lab.rl.sampler.sample`` per chunk of prompts;
- ``synthetic``: the reference solution and controlled corruptions of it, so a reward model can be
  trained before any policy exists: errors (a wrong final number, an arithmetic slip carried to
  the end) and styles (broken tags, Chinese words in the chain of thought, a padded verbose chain
  of thought), each error in a random style. The rule, not the corruption, decides who wins.

    python -m r1lab.data.preferences synthetic --out outputs/pipeline/tiny/preferences/pairs.jsonl
    python -m r1lab.data.preferences sample --policy outputs/pipeline/tiny/sft/hf --out pairs.jsonl --k 8

Output: one JSON object per line, grouped by prompt, with ``prompt``, ``chosen``, ``rejected``,
``margin`` and metadata (``answer``, ``task``, ``language``, ``rule``, the two candidates' kinds and
scores, ``prompt_id``). Deterministic for a seed; a rerun with the same settings resumes an
interrupted file (``<out>.partial`` and ``<out>.progress.json``) and otherwise does nothing; ``<out>``
appears only once it is complete.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from r1lab.data.sources import DataError, FileSource
from r1lab.data.tinyworld.arithmetic import STEP_WORDS
from r1lab.rewards.accuracy import accuracy_reward
from r1lab.rewards.format import extract_think, has_format, tag_blocks
from r1lab.rewards.language import language_consistency

Rule = Callable[[str, str, dict], object]


# -- rules -------------------------------------------------------------------------------------
def r1_preference(prompt: str, completion: str, reference: dict) -> tuple:
    """(1, well-formed, single-language, −length bucket) for a correct completion, (0,) for a wrong one.

    Wrong completions all tie (no pair between two wrong answers). Correct: strict R1 format, then a
    chain of thought wholly in the target language, then conciseness: the completion's length in
    characters, in buckets of ×1.25 (floor(log_1.25 chars)), so a few characters never decide.
    """
    if accuracy_reward(prompt, completion, reference) < 1.0:
        return (0,)
    target = reference.get("language") or "en"
    single_language = language_consistency(extract_think(completion), target) >= 0.999
    bucket = math.floor(math.log(max(len(completion), 1), 1.25))
    return (1, int(has_format(completion, strict=True)), int(single_language), -bucket)


def correctness(prompt: str, completion: str, reference: dict) -> tuple:
    """Only the answer counts: (accuracy,)."""
    return (accuracy_reward(prompt, completion, reference),)


RULES: dict[str, Rule] = {"r1_preference": r1_preference, "correctness": correctness}


def resolve_rule(spec: str | Rule) -> Rule:
    """A rule from a short name in RULES or a dotted import path (``my.module.rank``)."""
    if callable(spec):
        return spec
    if spec in RULES:
        return RULES[spec]
    module_name, _, attr = spec.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"rule: unknown rule {spec!r}; known: {sorted(RULES)}, or a dotted path ({error})") from error


def preference_margin(better, worse) -> float:
    """How clearly ``better`` wins: 2^-k for tuples that first differ at position k (correctness 1,
    format 0.5, language 0.25, length 0.125 under ``r1_preference``); the difference for numbers."""
    if isinstance(better, tuple) and isinstance(worse, tuple):
        k = next((i for i, (a, b) in enumerate(zip(better, worse)) if a != b), min(len(better), len(worse)))
        return 2.0**-k
    return float(better - worse)


def rank_pairs(texts: list[str], scores: list, rng: random.Random, max_pairs: int | None) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs with a strictly higher chosen score, at most ``max_pairs`` drawn
    at random; identical texts never pair."""
    pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts))
             if scores[i] > scores[j] and texts[i] != texts[j]]
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = sorted(rng.sample(pairs, max_pairs))
    return pairs


# -- synthetic candidates: the reference and corruptions of it -----------------------------------
# Two independent kinds of corruption: an error (the solution becomes wrong) and a style (it stays
# right but reads worse). Wrong candidates get a random style too, so that no style gives away
# correctness: a reward model cannot learn "verbose is good" in place of "right is good".
Solution = tuple[str, str]  # (chain of thought, final answer), both without tags


def _compose(think: str, answer: str) -> str:
    return f"<think> {think} </think> <answer> {answer} </answer>"


def _parts(record: dict) -> Solution | None:
    think, answer = tag_blocks(record["response"], "think"), tag_blocks(record["response"], "answer")
    return (think[0].strip(), answer[0].strip()) if think and answer else None


def wrong_answer(record: dict, rng: random.Random) -> Solution | None:
    """Error: the final answer's last number moved by 1–3, contradicting the chain of thought."""
    think, answer = _parts(record) or (None, None)
    numbers = list(re.finditer(r"\d+", answer or ""))
    if not numbers:
        return None
    m = numbers[-1]
    value = int(m.group())
    new = value + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0])
    return think, answer[: m.start()] + str(new) + answer[m.end():]


_CHAIN = re.compile(r"What is (\d+(?: [+-] \d+)+)\?")


def arithmetic_slip(record: dict, rng: random.Random) -> Solution | None:
    """Error: one step of an arithmetic chain computed wrong and carried on (consistent, but wrong)."""
    match = _CHAIN.fullmatch(record["prompt"].strip()) if record.get("task") == "arith" else None
    if match is None:
        return None
    tokens = match.group(1).split()
    operands, ops = [int(t) for t in tokens[0::2]], tokens[1::2]
    words = STEP_WORDS.get(record.get("cot_language", "en"), STEP_WORDS["en"])
    space = " " if words is STEP_WORDS["en"] else ""
    slip_at = rng.randrange(len(ops))
    value, steps = operands[0], []
    for i, (op, b) in enumerate(zip(ops, operands[1:])):
        result = value + b if op == "+" else value - b
        if i == slip_at:
            result += rng.choice([d for d in (-2, -1, 1, 2) if result + d >= 0])
        steps.append(f"{value}{space}{words[op]}{space}{b}{space}{words['is']}{space}{result}")
        value = result
    return words["sep"].join(steps) + words["end"], str(value)


def broken_tags(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: the R1 tags broken (a missing tag, swapped blocks, or an untagged answer)."""
    return rng.choice([
        f"<think> {think} <answer> {answer} </answer>",
        f"{think} </think> <answer> {answer} </answer>",
        f"<answer> {answer} </answer> <think> {think} </think>",
        f"<think> {think} </think> {answer}",
    ])


ZH_WORDS = {"plus": "加", "minus": "减", "is": "得", "then": "然后", "add": "加", "subtract": "减",
            "multiply": "乘", "by": "以", "to": "到", "from": "从"}


def mixed_language(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: about half of the translatable English words of the chain of thought in Chinese."""
    words = list(re.finditer(r"[A-Za-z]+", think))
    translatable = [m for m in words if m.group() in ZH_WORDS]
    n = max(1, len(translatable) // 2)
    if not translatable or n >= len(words):  # every word would be Chinese: not a mixed chain of thought
        return None
    for m in sorted(rng.sample(translatable, n), key=lambda m: m.start(), reverse=True):
        think = think[: m.start()] + ZH_WORDS[m.group()] + think[m.end():]
    return _compose(think, answer)


def verbose(think: str, answer: str, rng: random.Random) -> str | None:
    """Style: a padded chain of thought, with filler and the whole chain said twice."""
    return _compose(f"Let me work through this step by step. {think} Let me double-check that: {think}", answer)


def clean(think: str, answer: str, rng: random.Random) -> str | None:
    return _compose(think, answer)


ERRORS = {"wrong_answer": wrong_answer, "arithmetic_slip": arithmetic_slip}
STYLES = {"clean": clean, "broken_tags": broken_tags, "mixed_language": mixed_language, "verbose": verbose}


def synthetic_candidates(record: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(kind, completion) candidates of one task: the reference, each style of the right solution
    (``clean`` is the reference itself), and each error in a randomly drawn style.

    (Every error in every style, i.e. many minimal right/wrong pairs, trained the tiny reward model
    worse: 0.60 against 0.76 held-out pair accuracy after 750 steps; the easy style pairs seem to
    bootstrap the features that checking an answer needs.)"""
    candidates = [("reference", record["response"])]
    right = _parts(record)
    if right is None:
        return candidates
    kinds = [(None, style) for style in STYLES if style != "clean"]
    kinds += [(error, rng.choice(list(STYLES))) for error in ERRORS]
    for error, style in kinds:
        solution = right if error is None else ERRORS[error](record, rng)
        text = None if solution is None else STYLES[style](*solution, rng)
        if text is not None and text not in (t for _, t in candidates):
            candidates.append((style if error is None else f"{error}+{style}", text))
    return candidates


# -- pairs ---------------------------------------------------------------------------------------
def make_pairs(record: dict, candidates: list[tuple[str, str]], rule: Rule, rule_name: str,
               rng: random.Random, max_pairs: int | None, view: str = "response", source: str = "") -> list[dict]:
    """Preference records for one prompt's candidates, ranked by ``rule`` (on the whole completion)."""
    from r1lab.rm.scorer import final_answer_view

    kinds, texts = [k for k, _ in candidates], [t for _, t in candidates]
    scores = [rule(record["prompt"], t, record) for t in texts]
    shown = [final_answer_view(t) for t in texts] if view == "answer" else texts
    plain = [list(x) if isinstance(x, tuple) else x for x in scores]  # JSON has no tuples
    meta = {"answer": str(record.get("answer", "")), "task": record.get("task", "math"),
            "language": record.get("language", "en"), "rule": rule_name, "prompt_id": record.get("id"),
            "source": source}
    return [
        {"prompt": record["prompt"], "chosen": shown[i], "rejected": shown[j],
         "margin": preference_margin(scores[i], scores[j]), **meta, "chosen_kind": kinds[i],
         "rejected_kind": kinds[j], "chosen_score": plain[i], "rejected_score": plain[j]}
        for i, j in rank_pairs(shown, scores, rng, max_pairs)
    ]


def replay_mix(new: list[dict], old: list[dict], fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """DeepSeekMath's replay (arXiv 2402.03300 §4.2): the fresh pairs plus a random ``fraction`` of
    the old ones. Replayed pairs come first, so held-out pairs cut from the end are fresh ones."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"replay fraction must be in [0, 1], got {fraction}")
    k = round(fraction * len(old))
    replay = random.Random(seed).sample(old, k)
    return [dict(r, replay=True) for r in replay] + [dict(r, replay=False) for r in new]


class PairWriter:
    """Writes pairs one chunk at a time to ``<out>.partial``, renamed to ``<out>`` once every chunk is
    in (so ``<out>`` exists only when complete). ``<out>.progress.json`` records the settings, the
    finished chunks and the partial file's size after each: a rerun skips finished chunks and cuts
    off a half-written one; a rerun of a finished file does nothing."""

    def __init__(self, path: str | Path, settings: dict, force: bool = False) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.progress = self.path.with_name(self.path.name + ".progress.json")
        state = json.loads(self.progress.read_text()) if self.progress.is_file() and not force else None
        if state is None and self.path.is_file() and not force:
            raise ValueError(f"{self.path} exists and was not written by this tool (no {self.progress.name}); "
                             "pass --force to overwrite it")
        if state is not None and state["settings"] != settings:
            raise ValueError(f"{self.path} was written with other settings ({self.progress}); "
                             "pass --force to start it over")
        complete = state is not None and state.get("complete") and self.path.is_file()
        if not complete and (state is None or not self.partial.is_file()):
            state = {"settings": settings, "chunks": [], "bytes": 0, "pairs": 0}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not complete:
            with self.partial.open("ab") as f:
                f.truncate(state["bytes"])
        self.state = state

    def done(self, chunk: int) -> bool:
        return bool(self.state.get("complete")) or chunk in self.state["chunks"]

    def _save(self) -> None:
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.progress)

    def write(self, chunk: int, rows: list[dict]) -> None:
        with self.partial.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.state["chunks"].append(chunk)
        self.state["bytes"] = self.partial.stat().st_size
        self.state["pairs"] += len(rows)
        self._save()

    def finish(self) -> int:
        """Publish the file (if not done before); returns the number of pairs in it."""
        if not self.state.get("complete"):
            self.partial.replace(self.path)
            self.state["complete"] = True
            self._save()
        return self.state["pairs"]


def _chunks(records: list[dict], size: int) -> Iterator[tuple[int, list[dict]]]:
    for start in range(0, len(records), size):
        yield start // size, records[start : start + size]


def write_synthetic(records: list[dict], out: str | Path, rule: str = "r1_preference", pairs_per_prompt: int | None = 4,
                    seed: int = 0, view: str = "response", chunk_size: int = 256, force: bool = False) -> int:
    """Synthetic pairs for ``records`` (tiny-world tasks with reference responses); returns the pair count."""
    settings = {"mode": "synthetic", "rule": rule, "pairs_per_prompt": pairs_per_prompt, "seed": seed, "view": view,
                "chunk_size": chunk_size, "prompts": [r.get("id") or r["prompt"] for r in records]}
    writer, fn = PairWriter(out, settings, force), resolve_rule(rule)
    for chunk, part in _chunks(records, chunk_size):
        if writer.done(chunk):
            continue
        rows = []
        for record in part:
            rng = random.Random(f"{seed}/{record.get('id') or record['prompt']}")
            rows += make_pairs(record, synthetic_candidates(record, rng), fn, rule, rng, pairs_per_prompt, view,
                               "synthetic")
        writer.write(chunk, rows)
    return writer.finish()


def write_sampled(records: list[dict], policy: str | Path | list, out: str | Path, *, k: int = 8,
                  rule: str = "r1_preference", pairs_per_prompt: int | None = 4, seed: int = 0,
                  view: str = "response", template: str = "chat",
                  system_prompt: str | None = "", max_prompt_tokens: int = 256, max_new_tokens: int = 96,
                  temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 32, device: str = "auto",
                  force: bool = False) -> int:
    """Pairs ranked among k samples per prompt from the policy at ``policy``; returns the pair count.

    ``policy`` may be a list of checkpoints (sharing one tokenizer): each draws k samples per prompt
    and the rule ranks them all together, so pairs also compare one checkpoint's answer with another's
    (reward-model data from several model variants, as Llama 2 collected it); a sample's kind names
    its checkpoint (``<i>:sample<j>``, i its place in the list).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from r1lab.data.collate import Tokenized, prompts
    from r1lab.models.tokenizer import load_tokenizer
    from r1lab.rl.sampler import decode, sample

    if k < 2:
        raise ValueError(f"k: need at least 2 completions per prompt to rank, got {k}")
    policies = [str(p) for p in policy] if isinstance(policy, (list, tuple)) else [str(policy)]
    if not policies:
        raise ValueError("policy: at least one checkpoint to sample from")
    settings = {"mode": "sample", "policy": policies[0] if len(policies) == 1 else policies, "k": k,
                "rule": rule, "pairs_per_prompt": pairs_per_prompt,
                "seed": seed, "view": view, "template": template, "system_prompt": system_prompt,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                "batch_size": batch_size, "prompts": [r.get("id") or r["prompt"] for r in records]}
    writer, fn = PairWriter(out, settings, force), resolve_rule(rule)
    if all(writer.done(chunk) for chunk, _ in _chunks(records, batch_size)):
        return writer.finish()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    tokenizer = load_tokenizer(policies[0])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    for other in policies[1:]:
        if load_tokenizer(other).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"policy: {other} does not share the tokenizer of {policies[0]}")
    models = [AutoModelForCausalLM.from_pretrained(p).to(device).eval() for p in policies]
    tok = Tokenized(tokenizer, template, max_prompt_tokens, max_new_tokens, system_prompt)
    for chunk, part in _chunks(records, batch_size):
        if writer.done(chunk):
            continue
        batch = prompts(tok, part)
        candidates: list[list[tuple[str, str]]] = [[] for _ in part]
        for p, model in enumerate(models):
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + chunk + 7_919 * p)
            rollout = sample(model, batch["prompt_ids"].repeat_interleave(k, 0).to(device),
                             batch["prompt_mask"].repeat_interleave(k, 0).to(device), max_new_tokens=max_new_tokens,
                             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, temperature=temperature,
                             top_p=top_p, generator=generator)
            texts = decode(tokenizer, rollout)
            prefix = f"{p}:" if len(models) > 1 else ""
            for i in range(len(part)):
                candidates[i] += [(f"{prefix}sample{j}", t) for j, t in enumerate(texts[i * k : (i + 1) * k])]
        rows = []
        for record, cands in zip(part, candidates):
            rng = random.Random(f"{seed}/{record.get('id') or record['prompt']}")
            rows += make_pairs(record, cands, fn, rule, rng, pairs_per_prompt, view, ",".join(policies))
        writer.write(chunk, rows)
    return writer.finish()


# -- the data source of the reward-model stage ---------------------------------------------------
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
            raise DataError(f"{path}: no preference pairs there yet; write them with `python -m "
                            f"r1lab.data.preferences synthetic --out {path}` (or `sample --policy <hf folder>`)")
        rows = super()._rows(split)
        if split != "train":
            return rows
        column = self.fields.get("prompt", "prompt")
        held = super()._rows("val") + super()._rows("test")
        held_out = {json.dumps(row.get(column)) for _, row in held}
        rows = [(where, row) for where, row in rows if json.dumps(row.get(column)) not in held_out]
        return rows[: self.train_size] if self.train_size is not None else rows


# -- command line --------------------------------------------------------------------------------
def world_records(n: int, seed: int = 0, split: str = "train", difficulty: tuple[int, int] = (1, 3),
                  max_operand: int = 10, families: dict | None = None, val_size: int = 64,
                  test_size: int = 200) -> list[dict]:
    """The first ``n`` tasks of a tiny-world split (val/test sizes as in conf/data/tiny.yaml, so the
    train prompts are the policy's train prompts and never its evaluation prompts)."""
    from r1lab.data.tinyworld import TinyWorld

    sizes = {"train": n if split == "train" else 0, "val": max(val_size, n if split == "val" else 0),
             "test": max(test_size, n if split == "test" else 0)}
    world = TinyWorld(seed=seed, sizes=sizes, families=families, difficulty=difficulty, max_operand=max_operand)
    return world.load(split)[:n]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m r1lab.data.preferences", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("synthetic", "sample"):
        p = sub.add_parser(mode)
        p.add_argument("--out", required=True, help="the JSONL file to write")
        p.add_argument("--rule", default="r1_preference", help=f"a name in {sorted(RULES)} or a dotted path")
        p.add_argument("--n-prompts", type=int, default=2000 if mode == "synthetic" else 512)
        p.add_argument("--pairs-per-prompt", type=int, default=0, help="at most this many pairs per prompt (0: all)")
        p.add_argument("--view", choices=("response", "answer"), default="response",
                       help="write whole responses, or only what follows </think> (R1's helpfulness view)")
        p.add_argument("--prompts", help="a JSONL/Parquet file of prompt+answer records instead of the tiny world")
        p.add_argument("--split", default="train", help="tiny-world split to take prompts from")
        p.add_argument("--world-seed", type=int, default=0)
        p.add_argument("--difficulty", type=int, nargs=2, default=(1, 3))
        p.add_argument("--max-operand", type=int, default=10, help="as conf/data/tiny.yaml")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--force", action="store_true", help="start the file over instead of resuming it")
        if mode == "sample":
            p.add_argument("--policy", required=True, nargs="+",
                           help="Hugging Face model folders (stages' hf/ exports); several are ranked together")
            p.add_argument("--k", type=int, default=8, help="completions per prompt")
            p.add_argument("--temperature", type=float, default=1.0)
            p.add_argument("--top-p", type=float, default=1.0)
            p.add_argument("--max-new-tokens", type=int, default=96)
            p.add_argument("--batch-size", type=int, default=32, help="prompts per sampling batch")
            p.add_argument("--template", default="chat")
            p.add_argument("--system-prompt", default="", help="'' = none (the tiny world's data config)")
            p.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ValueError as error:  # DataError included: a message that names the file, no traceback
        raise SystemExit(f"error: {error}") from None


def _run(args: argparse.Namespace) -> int:
    if args.prompts:
        records = FileSource(train=args.prompts).load("train", ("prompt", "answer"))[: args.n_prompts]
        records = [dict(r, id=r.get("id") or f"{args.prompts}:{i}") for i, r in enumerate(records)]
    else:
        records = world_records(args.n_prompts, args.world_seed, args.split, tuple(args.difficulty), args.max_operand)
    per_prompt = args.pairs_per_prompt or None
    if args.mode == "synthetic":
        if any("response" not in r for r in records):
            raise SystemExit("synthetic mode needs records with a reference `response`")
        n = write_synthetic(records, args.out, args.rule, per_prompt, args.seed, args.view, force=args.force)
    else:
        n = write_sampled(records, args.policy, args.out, k=args.k, rule=args.rule, pairs_per_prompt=per_prompt,
                          seed=args.seed, view=args.view, template=args.template, system_prompt=args.system_prompt,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          batch_size=args.batch_size, device=args.device, force=args.force)
    print(f"{n} preference pairs from {len(records)} prompts in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
