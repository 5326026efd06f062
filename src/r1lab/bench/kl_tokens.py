"""Next-token distributions of a trained policy and its reference, for the KL-estimator study.

Samples completions from the policy on held-out tiny-world prompts (as a GRPO rollout would) and
returns both models' logits at every completion position: the distributions that GRPO's per-token
KL estimate is taken over.
"""

from __future__ import annotations

import torch

from r1lab.data.collate import Tokenized, left_pad
from r1lab.data.tinyworld import TinyWorld
from r1lab.generation import SamplingParams, TorchEngine
from r1lab.models import Backbone
from r1lab.tensors import positions_from_mask


@torch.no_grad()
def capture_logits(policy_path: str, reference_path: str, n_prompts: int = 64, max_new_tokens: int = 48,
                   template: str = "chat", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) policy and reference logits at the N completion positions of policy samples."""
    policy_bb, ref_bb = Backbone(name_or_path=policy_path), Backbone(name_or_path=reference_path)
    tokenizer = policy_bb.tokenizer
    if tokenizer.get_vocab() != ref_bb.tokenizer.get_vocab():
        raise ValueError(f"--policy {policy_path} and --reference {reference_path} use different tokenizers")
    policy, reference = policy_bb.build_model().eval(), ref_bb.build_model().eval()
    records = TinyWorld(sizes={"train": 0, "val": 0, "test": n_prompts}).load("test")
    tok = Tokenized(tokenizer, template, 256, max_new_tokens)
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in records], tokenizer.pad_token_id)
    out = TorchEngine(policy, tokenizer).generate(ids, mask, SamplingParams(max_new_tokens), seed=seed)
    full = torch.cat([ids, out.completion_ids], 1)
    attention = torch.cat([mask, out.completion_mask], 1)
    positions = positions_from_mask(attention)
    keep = out.completion_mask.bool()  # (B, T) positions that predicted a sampled token

    def logits(model):
        z = model(input_ids=full, attention_mask=attention, position_ids=positions).logits
        return z[:, ids.shape[1] - 1 : -1][keep].float()  # (N, V)

    return logits(policy), logits(reference)
