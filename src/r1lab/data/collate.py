"""Collators: records -> padded tensors, one per DataModule mode.

Prompt and response are tokenized apart and concatenated, so the loss mask is exact and the sampler
continues from exactly the prompt tokens that training saw. Sequences for loss are right-padded;
prompts for generation are left-padded (every row's last prompt token sits at the same position).
"""

from __future__ import annotations

import torch

from r1lab.data.templates import render_prompt

IGNORE = -100


class Tokenized:
    """Tokenizes records once per text (small caches keep repeated epochs cheap)."""

    def __init__(self, tokenizer, template: str, max_prompt_tokens: int, max_response_tokens: int,
                 system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def prompt_ids(self, prompt: str, cut: bool = True) -> list[int]:
        text = render_prompt(prompt, self.template, self.tokenizer, self.system_prompt)
        ids = self.tokenizer(text, add_special_tokens=self.template != "chat").input_ids if text else []
        if self.tokenizer.bos_token_id is not None and not ids:
            ids = [self.tokenizer.bos_token_id]
        return ids[-self.max_prompt_tokens:] if cut else ids  # keep the end: it holds the question and "Assistant:"

    def response_ids(self, response: str, cut: bool = True) -> list[int]:
        ids = self.tokenizer(response, add_special_tokens=False).input_ids + [self.eos]
        return ids[: self.max_response_tokens] if cut else ids

    def cut_counts(self, records: list[dict], response_fields: tuple[str, ...]) -> dict[str, int]:
        """How many records' prompts (and each response field) exceed the token limits and are cut."""
        counts = {"prompt": sum(len(self.prompt_ids(r["prompt"], cut=False)) > self.max_prompt_tokens
                                for r in records if "prompt" in r)}
        for name in response_fields:
            counts[name] = sum(len(self.response_ids(str(r[name]), cut=False)) > self.max_response_tokens
                               for r in records if r.get(name) is not None)
        return counts


def _right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def left_pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def sequences(tok: Tokenized, prompts: list[str], responses: list[str], prefix: str = "") -> dict:
    """Right-padded prompt+response: ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the response)."""
    ids, labels = [], []
    for prompt, response in zip(prompts, responses):
        p, r = tok.prompt_ids(prompt), tok.response_ids(response)
        ids.append(p + r)
        labels.append([IGNORE] * len(p) + r)
    input_ids = _right_pad(ids, tok.pad)
    attention = _right_pad([[1] * len(r) for r in ids], 0)
    return {
        f"{prefix}input_ids": input_ids,
        f"{prefix}attention_mask": attention,
        f"{prefix}labels": _right_pad(labels, IGNORE),
    }


def prompts(tok: Tokenized, records: list[dict]) -> dict:
    """Left-padded prompts for generation, and the records themselves (references for the rewards)."""
    ids, mask = left_pad([tok.prompt_ids(r["prompt"]) for r in records], tok.pad)
    return {"prompt_ids": ids, "prompt_mask": mask, "records": records}


class Collator:
    """Builds the batch of one mode. ``with_prompts`` adds the generation inputs (for evaluation)."""

    def __init__(self, tok: Tokenized, mode: str, with_prompts: bool = False) -> None:
        self.tok, self.mode, self.with_prompts = tok, mode, with_prompts

    def __call__(self, records: list[dict]) -> dict:
        batch: dict = {}
        if self.mode in ("sft", "distill"):
            batch |= sequences(self.tok, [r["prompt"] for r in records], [r["response"] for r in records])
        elif self.mode == "preference":
            ps = [r["prompt"] for r in records]
            batch |= sequences(self.tok, ps, [r["chosen"] for r in records], prefix="chosen_")
            batch |= sequences(self.tok, ps, [r["rejected"] for r in records], prefix="rejected_")
            batch["margin"] = torch.tensor([float(r.get("margin", 0.0)) for r in records])
            batch["records"] = records
        elif self.mode == "steps":  # tokenized by the module, which knows the step rule
            batch["records"] = records
        if self.mode == "rl" or self.with_prompts:
            batch |= prompts(self.tok, records)
        return batch
