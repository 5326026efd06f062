"""A baseline for reward models: how well a policy's own likelihood ranks preference pairs.

``python -m r1lab.rm.likelihood --policy outputs/pipeline/tiny/sft2/hf --pairs <pairs.jsonl> --last 256``
scores each pair's chosen and rejected response by the policy's summed log-probability of the
response tokens (and by the lowest single token log-probability) and prints the share of pairs in
which the chosen one scores higher. No training is involved: a trained reward model that ranks
fewer pairs than this has not learnt what its initialisation already knew. On the tiny world a
wrong step is an unlikely token under a strong policy, so this baseline is high (see the README).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from r1lab.data.collate import Tokenized, sequences
from r1lab.data.preferences import PreferenceFile
from r1lab.data.sources import DataError
from r1lab.models.backbone import Backbone
from r1lab.rm.model import response_logprobs


@torch.no_grad()
def response_scores(model, tok: Tokenized, prompts: list[str], responses: list[str],
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, min) over each response's tokens of log π(token | prefix); each (N,)."""
    sums, mins = [], []
    for i in range(0, len(responses), batch_size):
        batch = sequences(tok, prompts[i : i + batch_size], responses[i : i + batch_size])
        logp, keep = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        sums.append(logp.sum(-1))
        mins.append(logp.masked_fill(~keep, float("inf")).min(-1).values)
    return torch.cat(sums), torch.cat(mins)


def ranking_accuracy(policy: str | Path, pairs: list[dict], template: str = "chat", system_prompt: str = "",
                     max_prompt_tokens: int = 256, max_response_tokens: int = 256) -> dict[str, float]:
    """Share of pairs whose chosen response the policy finds more likely (summed and worst-token log-prob)."""
    backbone = Backbone(name_or_path=str(policy), dtype="auto")
    model = backbone.build_model().eval()
    tok = Tokenized(backbone.tokenizer, template, max_prompt_tokens, max_response_tokens, system_prompt)
    prompts = [p["prompt"] for p in pairs]
    chosen_sum, chosen_min = response_scores(model, tok, prompts, [p["chosen"] for p in pairs])
    rejected_sum, rejected_min = response_scores(model, tok, prompts, [p["rejected"] for p in pairs])
    return {"pairs": len(pairs), "sum_logprob": (chosen_sum > rejected_sum).float().mean().item(),
            "min_logprob": (chosen_min > rejected_min).float().mean().item()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m r1lab.rm.likelihood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="a Hugging Face causal-LM folder (a stage's hf/ export)")
    parser.add_argument("--pairs", required=True, type=Path, help="a preference JSONL (prompt, chosen, rejected)")
    parser.add_argument("--last", type=int, default=256,
                        help="score the file's last N pairs (the reward model's held-out test split); 0 = all")
    args = parser.parse_args(argv)
    # the reward-model stage's own reader: the held-out test pairs are the file's last N, and a bad
    # row fails with its file and line
    source = PreferenceFile(str(args.pairs), sizes={"test": args.last} if args.last else {})
    try:
        rows = source.load("test" if args.last else "train", ("prompt", "chosen", "rejected"))
    except DataError as error:
        raise SystemExit(f"error: {error}") from None
    result = ranking_accuracy(args.policy, rows)
    print(f"{args.policy} on {result['pairs']} pairs of {args.pairs}: the summed response log-prob ranks "
          f"{result['sum_logprob']:.3f} of them right, the worst token's log-prob {result['min_logprob']:.3f}")
    return result


if __name__ == "__main__":
    main()
