"""How much a reward model likes each policy's answers to held-out prompts (``conf/job/rm_score.yaml``).

``python -m r1lab.train stage=rm_score`` (or ``job=rm_score job.reward_model=<rm hf>
job.policies=[<a hf>,<b hf>]``) samples k completions per test prompt from every policy (same prompts,
same seeds), scores them with the reward model's raw output (no normalisation) and with the rule
rewards, and prints one row per policy: the reward model's mean score, its mean on the correct and
on the wrong answers, and the answers' accuracy. Comparing the policy that GRPO started from with
the one it ended at answers "did RL with the reward model raise its score?" on prompts neither saw,
free of the batch-to-batch noise of the score logged during training
(``train/reward/reward_model_raw``). It writes ``scores.json`` and ``summary.md`` (which the
pipeline's results page includes) into its folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from r1lab.checks import check_number
from r1lab.data.collate import Tokenized
from r1lab.evaluation import score_completions
from r1lab.generation import RolloutEngine, SamplingParams, generate_for_records, mix_seed
from r1lab.jobs.base import check_model_path, load_policy, prompt_records
from r1lab.jobs.durable import JobError, write_atomic
from r1lab.jobs.rejection import PromptFormat
from r1lab.rm.scorer import NeuralReward


def policy_samples(engine: RolloutEngine, records: list[dict], tok: Tokenized, params: SamplingParams, k: int,
                   seed: int, batch_size: int = 50) -> list[str]:
    """k completions per record (record-major), each batch of records seeded by its start index."""
    texts: list[str] = []
    for start in range(0, len(records), batch_size):
        per_record, _ = generate_for_records(engine, tok, records[start : start + batch_size], params, k,
                                             mix_seed(seed, stream=start))
        texts += [text for completions in per_record for text in completions]
    return texts


def score_policies(reward_model: str, policies: list[str], records: list[dict], fmt: PromptFormat, k: int = 4,
                   max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 1.0,
                   seed: int = 0, rollout=None) -> list[dict]:
    """One row per policy: ``score`` (the reward model's mean raw score) and ``score_se`` (its standard
    error), ``score_correct`` and ``score_wrong`` (its mean on right and wrong answers; None when there
    are none), ``accuracy``; from the second policy on also ``change`` and ``change_se``: the mean and
    standard error over prompts of each prompt's mean score minus the first policy's (paired by prompt)."""
    scorer = NeuralReward(reward_model, normalize="none")
    params = SamplingParams(max_new_tokens, temperature, top_p, key="job")
    prompts = [r["prompt"] for r in records for _ in range(k)]
    references = [r for r in records for _ in range(k)]
    rows, first = [], None
    for policy in policies:
        backbone, engine = load_policy(policy, rollout=rollout, key="job.policies")
        tok = Tokenized(backbone.tokenizer, fmt.template, fmt.max_prompt_tokens, max_new_tokens, fmt.system_prompt)
        with engine:  # one policy's engine at a time
            texts = policy_samples(engine, records, tok, params, k, seed)
        scores = scorer.raw_scores(prompts, texts).double()
        correct = torch.tensor(score_completions(prompts, texts, references)["accuracy"]) > 0.5
        per_prompt = scores.view(len(records), k).mean(1)
        row = {
            "policy": policy, "samples": len(texts), "score": scores.mean().item(),
            "score_se": _standard_error(scores),
            "score_correct": scores[correct].mean().item() if correct.any() else None,
            "score_wrong": scores[~correct].mean().item() if (~correct).any() else None,
            "accuracy": correct.float().mean().item(),
        }
        if first is None:
            first = per_prompt
        else:
            row |= {"change": (per_prompt - first).mean().item(), "change_se": _standard_error(per_prompt - first)}
        rows.append(row)
    return rows


def _standard_error(values: torch.Tensor) -> float:
    return (values.std() / values.numel() ** 0.5).item() if values.numel() > 1 else 0.0


def label(path: str) -> str:
    """A stage's export (``<run>/hf``) by its run folder's name, anything else by its path."""
    return Path(path).parent.name if Path(path).name == "hf" else str(path)


def summary(reward_model: str, rows: list[dict], k: int, n_prompts: int, temperature: float) -> str:
    def cell(value):
        return "–" if value is None else f"{value:.3f}"

    lines = [f"Reward model `{label(reward_model)}`'s raw score on {k} samples (temperature {temperature}) "
             f"per held-out prompt ({n_prompts} prompts):", "",
             f"| policy | RM score ± s.e. | change vs {label(rows[0]['policy'])} ± s.e. (paired by prompt) "
             "| on correct | on wrong | accuracy |", "|---|---|---|---|---|---|"]
    for r in rows:
        change = f"{r['change']:+.3f} ± {r['change_se']:.3f}" if "change" in r else "–"
        lines.append(f"| {label(r['policy'])} | {r['score']:.3f} ± {r['score_se']:.3f} | {change} "
                     f"| {cell(r['score_correct'])} | {cell(r['score_wrong'])} | {r['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


class RMScoreJob:
    """The reward model's raw score on held-out answers of several policies (the pipeline's ``rm_score``).

    Args:
        reward_model: a reward-model export (a ``stage=rm`` run's ``hf/``).
        policies: policy exports to compare; the first is the baseline of the paired change.
        source, split, limit, prompts: where the prompts come from (the data config's test split).
        k: samples per prompt and policy; max_new_tokens, temperature, top_p, seed: their sampling.
        template, system_prompt, max_prompt_tokens: how prompts are rendered for the policies.
        rollout: the rollout engine.
    """

    def __init__(self, reward_model: str, policies: list[str], source=None, split: str = "test",
                 limit: int | None = None, prompts: str | None = None, k: int = 4, max_new_tokens: int = 96,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, template: str = "chat",
                 system_prompt: str | None = "", max_prompt_tokens: int = 256, rollout=None) -> None:
        if not policies:
            raise JobError("job.policies: at least one policy export to score")
        check_model_path("job.reward_model", reward_model)
        for path in policies:
            check_model_path("job.policies", path)
        check_number("job.k", k, 1, integer=True)
        SamplingParams(max_new_tokens, temperature, top_p, key="job")
        if source is None and prompts is None:
            raise JobError("job.source: give the data source (or job.prompts, a file) to take prompts from")
        self.reward_model, self.policies = str(reward_model), [str(p) for p in policies]
        self.source, self.split, self.limit, self.prompts = source, split, limit, prompts
        self.k, self.max_new_tokens, self.seed = k, max_new_tokens, seed
        self.temperature, self.top_p = temperature, top_p
        self.fmt = PromptFormat(template, system_prompt, int(max_prompt_tokens))
        self.rollout = rollout

    def run(self, output_dir: str | Path) -> dict[str, float]:
        records, described = prompt_records(self.source, self.split, self.prompts, self.limit)
        if not records:
            raise JobError(f"job: no prompts in {described}")
        rows = score_policies(self.reward_model, self.policies, records, self.fmt, self.k, self.max_new_tokens,
                              self.temperature, self.top_p, self.seed, self.rollout)
        text = summary(self.reward_model, rows, self.k, len(records), self.temperature)
        print(text, end="", flush=True)
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        settings = {"reward_model": self.reward_model, "policy": self.policies, "split": self.split,
                    "prompts": self.prompts, "limit": self.limit, "k": self.k, "max_new_tokens": self.max_new_tokens,
                    "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed}
        write_atomic(out / "scores.json", json.dumps({"settings": settings, "prompts": described, "rows": rows},
                                                     indent=2))
        write_atomic(out / "summary.md", text)
        metrics = {}
        for row in rows:
            name = label(row["policy"])
            metrics |= {f"rm_score/{name}/score": row["score"], f"rm_score/{name}/accuracy": row["accuracy"]}
            if "change" in row:
                metrics[f"rm_score/{name}/change"] = row["change"]
        return metrics
