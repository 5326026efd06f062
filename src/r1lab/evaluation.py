"""Evaluation shared by every policy stage: generate on held-out prompts and check the answers.

Per prompt: one greedy completion (accuracy, format, language consistency, length, truncation) and,
with ``k > 0``, k sampled completions at the paper's evaluation settings (temperature 0.6, top-p 0.95):
pass@1 averaged over the k samples and majority-vote accuracy (cons@k), as DeepSeek-R1 reports.
Answers are checked by the accuracy reward: exact numbers for the tiny world, math-verify for math.
For the tiny world's arithmetic tasks the greedy chain of thought is also checked step by step by the
rule verifier (``chain_correct``: the whole right chain, no step wrong or missing); other tasks have
no rule-checkable steps and leave that metric out (NaN in the per-prompt scores).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from r1lab.generation import RolloutEngine, SamplingParams
from r1lab.rewards.accuracy import accuracy_reward, extract_answer
from r1lab.rewards.format import extract_think, has_format
from r1lab.rewards.language import language_consistency
from r1lab.rewards.steps import chain_correct

METRICS = ("accuracy", "format", "language", "length", "truncated", "pass@1", "maj@k", "chain_correct")


@dataclass
class EvalConfig:
    max_new_tokens: int = 96
    k: int = 4  # samples per prompt for pass@1 and majority vote; 0 = greedy only
    temperature: float = 0.6
    top_p: float = 0.95
    num_text_samples: int = 4  # completions logged as text per evaluation

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"module.evaluation.k: must be an integer >= 0, got {self.k!r}")
        SamplingParams(self.max_new_tokens, self.temperature, self.top_p, key="module.evaluation")

    def greedy(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, greedy=True, key="module.evaluation")

    def sampled(self) -> SamplingParams:
        return SamplingParams(self.max_new_tokens, self.temperature, self.top_p, key="module.evaluation")


def majority_answer(completions: list[str]) -> str | None:
    answers = [a for a in (extract_answer(c) for c in completions) if a]
    return Counter(answers).most_common(1)[0][0] if answers else None


def score_completions(prompts: list[str], completions: list[str], records: list[dict]) -> dict[str, list[float]]:
    """Per-completion accuracy, strict format and language consistency of the chain of thought, and,
    when some record is a tiny-world arithmetic task, ``chain_correct`` (NaN for the other records)."""
    scores = {
        "accuracy": [accuracy_reward(p, c, r) for p, c, r in zip(prompts, completions, records)],
        "format": [float(has_format(c, strict=True)) for c in completions],
        "language": [language_consistency(extract_think(c), r.get("language", "en"))
                     for c, r in zip(completions, records)],
    }
    chains = [chain_correct(p, c, r) for p, c, r in zip(prompts, completions, records)]
    if any(v is not None for v in chains):
        scores["chain_correct"] = [float("nan") if v is None else v for v in chains]
    return scores


@torch.no_grad()
def evaluate_batch(engine: RolloutEngine, batch: dict, cfg: EvalConfig, seed: int | None = None
                   ) -> tuple[dict, list[dict]]:
    """Metrics per prompt (each a (B,) float tensor) and a few example rows for the text log.

    ``seed`` seeds the k sampled completions (the greedy one needs none)."""
    records = batch["records"]
    prompts = [r["prompt"] for r in records]
    greedy = engine.generate(batch["prompt_ids"], batch["prompt_mask"], cfg.greedy())
    texts = greedy.texts
    scores = score_completions(prompts, texts, records)
    out = {name: torch.tensor(values) for name, values in scores.items()}
    out["length"] = greedy.lengths.float().cpu()
    out["truncated"] = greedy.truncated.float().cpu()
    if cfg.k > 0:
        sampled_texts = engine.generate(batch["prompt_ids"], batch["prompt_mask"], cfg.sampled(), n=cfg.k,
                                        seed=seed).texts
        rep = [r for r in records for _ in range(cfg.k)]
        correct = torch.tensor([accuracy_reward(r["prompt"], c, r) for r, c in zip(rep, sampled_texts)])
        out["pass@1"] = correct.view(-1, cfg.k).mean(-1)
        votes = [majority_answer(sampled_texts[i * cfg.k : (i + 1) * cfg.k]) for i in range(len(records))]
        out["maj@k"] = torch.tensor([
            0.0 if v is None else accuracy_reward(r["prompt"], f"<answer> {v} </answer>", r)
            for v, r in zip(votes, records)
        ])
    examples = [
        {"prompt": p, "completion": t, "answer": r.get("answer"), "correct": out["accuracy"][i].item()}
        for i, (p, t, r) in enumerate(zip(prompts, texts, records))
    ][: cfg.num_text_samples]
    return out, examples


def examples_markdown(examples: list[dict]) -> str:
    rows = ["| prompt | completion | answer | correct |", "|---|---|---|---|"]
    for e in examples:
        keys = ("prompt", "completion", "answer", "correct")
        cells = [str(e[k]).replace("|", "\\|").replace("\n", " ") for k in keys]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
