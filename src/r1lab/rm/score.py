"""How much a reward model likes each policy's answers to held-out prompts.

``python -m r1lab.rm.score --reward-model outputs/pipeline/tiny/rm/hf --policy outputs/pipeline/tiny/sft2/hf
outputs/pipeline/tiny/grpo_rm/hf`` samples k completions per test prompt from every policy (same
prompts, same seeds), scores them with the reward model's raw output (no normalisation) and with
the rule rewards, and prints one row per policy: the reward model's mean score, its mean on the
correct and on the wrong answers, and the answers' accuracy. Comparing the policy that GRPO started
from with the one it ended at answers "did RL with the reward model raise its score?" on prompts
neither saw, free of the batch-to-batch noise of the score logged during training
(``train/reward/reward_model_raw``). ``--out DIR`` also writes ``scores.json`` and ``summary.md``
(which the pipeline's results page includes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def policy_samples(policy: str, records: list[dict], fmt, k: int, max_new_tokens: int, temperature: float,
                   top_p: float, seed: int, batch_size: int = 50) -> list[str]:
    """k completions per record (record-major) from the policy at ``policy``, seeded per batch; drawn
    by the rejection-sampling job's ``sample_completions``."""
    from transformers import AutoModelForCausalLM

    from r1lab.models.tokenizer import load_tokenizer
    from r1lab.rejection import SamplingConfig, sample_completions

    tokenizer = load_tokenizer(policy)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(policy).to(device).eval()
    sampling = SamplingConfig(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    texts: list[str] = []
    for start in range(0, len(records), batch_size):
        generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + start)
        per_record, _ = sample_completions(model, tokenizer, fmt, records[start : start + batch_size], sampling,
                                           generator, device)
        texts += [text for completions in per_record for text in completions]
    return texts


def score_policies(reward_model: str, policies: list[str], records: list[dict], fmt, k: int = 4,
                   max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 1.0,
                   seed: int = 0) -> list[dict]:
    """One row per policy: ``score`` (the reward model's mean raw score) and ``score_se`` (its standard
    error), ``score_correct`` and ``score_wrong`` (its mean on right and wrong answers; None when there
    are none), ``accuracy``; from the second policy on also ``change`` and ``change_se``: the mean and
    standard error over prompts of each prompt's mean score minus the first policy's (paired by prompt)."""
    from r1lab.evaluation import score_completions
    from r1lab.rm.scorer import NeuralReward

    scorer = NeuralReward(reward_model, normalize="none")
    prompts = [r["prompt"] for r in records for _ in range(k)]
    references = [r for r in records for _ in range(k)]
    rows, first = [], None
    for policy in policies:
        texts = policy_samples(policy, records, fmt, k, max_new_tokens, temperature, top_p, seed)
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


def main(argv: list[str] | None = None) -> list[dict]:
    from r1lab.rejection import load_prompts

    p = argparse.ArgumentParser(prog="python -m r1lab.rm.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--reward-model", required=True, help="a reward-model export (a stage=rm run's hf/)")
    p.add_argument("--policy", required=True, nargs="+", help="policy exports to compare (stages' hf/)")
    p.add_argument("--split", default="test", help="the data config's split whose prompts are used")
    p.add_argument("--prompts", default=None, help="JSONL with prompt and answer instead of the data config")
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override of conf/train.yaml for the prompts (e.g. data.source.seed=1)")
    p.add_argument("--k", type=int, default=4, help="samples per prompt and policy")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=1.0, help="1.0: the policy's own distribution, as in RL")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for scores.json and summary.md")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k: need at least one sample per prompt, got {args.k}")
    records, fmt, described = load_prompts(args.split, args.prompts, args.override)
    records = records[: args.limit] if args.limit else records
    if not records:
        p.error(f"no prompts in {described}")
    rows = score_policies(args.reward_model, args.policy, records, fmt, args.k, args.max_new_tokens,
                          args.temperature, args.top_p, args.seed)
    text = summary(args.reward_model, rows, args.k, len(records), args.temperature)
    print(text, end="")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        (args.out / "scores.json").write_text(json.dumps({"settings": settings, "prompts": described,
                                                          "rows": rows}, indent=2))
        (args.out / "summary.md").write_text(text)
    return rows


if __name__ == "__main__":
    main()
