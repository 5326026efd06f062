"""Evaluation shared by every policy stage: generate on held-out prompts and check the answers.

Per prompt: one greedy completion (accuracy, format, language consistency, length, truncation) and,
with ``k > 0``, k sampled completions at the paper's evaluation settings (temperature 0.6, top-p 0.95):
pass@1 averaged over the k samples and majority-vote accuracy (cons@k), as DeepSeek-R1 reports.
Answers are checked by the accuracy reward: exact numbers for the tiny world, math-verify for math.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from r1lab.rewards.accuracy import accuracy_reward, extract_answer
from r1lab.rewards.format import has_format
from r1lab.rewards.language import language_consistency
from r1lab.rl.sampler import decode, sample

METRICS = ("accuracy", "format", "language", "length", "truncated", "pass@1", "maj@k")


@dataclass
class EvalConfig:
    max_new_tokens: int = 96
    k: int = 4  # samples per prompt for pass@1 and majority vote; 0 = greedy only
    temperature: float = 0.6
    top_p: float = 0.95
    num_text_samples: int = 4  # completions logged as text per evaluation


def thought(completion: str) -> str:
    if "<think>" in completion:
        return completion.split("<think>", 1)[1].split("</think>", 1)[0]
    return completion


def majority_answer(completions: list[str]) -> str | None:
    answers = [a for a in (extract_answer(c) for c in completions) if a]
    return Counter(answers).most_common(1)[0][0] if answers else None


def score_completions(prompts: list[str], completions: list[str], records: list[dict]) -> dict[str, list[float]]:
    """Per-completion accuracy, strict format and language consistency of the chain of thought."""
    return {
        "accuracy": [accuracy_reward(p, c, r) for p, c, r in zip(prompts, completions, records)],
        "format": [float(has_format(c, strict=True)) for c in completions],
        "language": [language_consistency(thought(c), r.get("language", "en")) for c, r in zip(completions, records)],
    }


@torch.no_grad()
def evaluate_batch(model, tokenizer, batch: dict, cfg: EvalConfig, generator=None) -> tuple[dict, list[dict]]:
    """Metrics per prompt (each a (B,) float tensor) and a few example rows for the text log."""
    records = batch["records"]
    prompts = [r["prompt"] for r in records]
    kwargs = dict(max_new_tokens=cfg.max_new_tokens, eos_id=tokenizer.eos_token_id,
                  pad_id=tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    greedy = sample(model, batch["prompt_ids"], batch["prompt_mask"], greedy=True, **kwargs)
    texts = decode(tokenizer, greedy)
    scores = score_completions(prompts, texts, records)
    out = {name: torch.tensor(values) for name, values in scores.items()}
    out["length"] = greedy.lengths.float().cpu()
    out["truncated"] = greedy.truncated.float().cpu()
    if cfg.k > 0:
        ids = batch["prompt_ids"].repeat_interleave(cfg.k, 0)
        mask = batch["prompt_mask"].repeat_interleave(cfg.k, 0)
        sampled = sample(model, ids, mask, temperature=cfg.temperature, top_p=cfg.top_p, generator=generator, **kwargs)
        sampled_texts = decode(tokenizer, sampled)
        rep = [r for r in records for _ in range(cfg.k)]
        correct = torch.tensor([accuracy_reward(r["prompt"], c, r) for r, c in zip(rep, sampled_texts)])
        out["pass@1"] = correct.view(-1, cfg.k).mean(-1)
        votes = [majority_answer(sampled_texts[i * cfg.k : (i + 1) * cfg.k]) for i in range(len(records))]
        out["maj@k"] = torch.tensor([
            0.0 if v is None else accuracy_reward(r["prompt"], f"<answer> {v} </answer>", r)
            for v, r in zip(votes, records)
        ])
    if was_training:
        model.train()
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
