"""A process reward model (PRM): a score at the end of every reasoning step, from one batched forward.

DeepSeekMath's process supervision (arXiv 2402.03300, §4.1.3) reads a reward at the end of each
step. The network is the outcome reward model's (``*ForSequenceClassification`` with one logit,
``r1lab.rm.model``), read at each step's last token instead of the sequence's last token, so its
export loads with ``AutoModelForSequenceClassification`` like the outcome model's; its
``r1lab_reward.json`` says ``kind: process`` and records the step rule and how it tokenizes.

Training is binary cross-entropy of each step's logit against a 0/1 step label (Math-Shepherd,
arXiv 2312.08935, trains its PRM the same way on its labels). Labels here come from the tiny world's
rule verifier (``step_label_rows``); Math-Shepherd's Monte Carlo labels (the share of continuations
from a step's prefix that reach the right answer) are not implemented. The score of a step is
σ(logit), in [0, 1], on the scale of the rule verifier's labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from r1lab.data.collate import Tokenized, _right_pad
from r1lab.rewards.steps import arithmetic_step_labels, split_steps, token_spans
from r1lab.rm.model import SETTINGS_FILE, build_reward_model, export_settings, reward_head
from r1lab.tensors import positions_from_mask


def step_label_rows(records: list[dict], completions: list[str], rule: str = "sentence") -> list[dict]:
    """PRM training rows ``{prompt, completion, labels}`` labelled by the rule verifier; completions
    without steps are left out (there is nothing to label)."""
    rows = []
    for record, completion in zip(records, completions):
        labels = arithmetic_step_labels(record["prompt"], completion, record, rule)
        if labels:
            rows.append({"prompt": record["prompt"], "completion": completion, "labels": labels})
    return rows


def step_batch(tok: Tokenized, prompts: list[str], completions: list[str], rule: str = "sentence",
               labels: list[list[float]] | None = None, spans: list[list[tuple[int, int]]] | None = None) -> dict:
    """Right-padded prompt+completion ``input_ids``/``attention_mask`` (B, T), each step's last token
    ``step_index`` (B, K), ``step_mask`` (B, K), and ``step_labels`` (B, K) when labels are given.
    A step cut off by ``max_response_tokens`` is read at the last token kept."""
    decode = lambda ids: tok.tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    ids, ends = [], []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        p, r = tok.prompt_ids(prompt), tok.response_ids(completion)
        step_spans = split_steps(completion, rule) if spans is None else spans[i]
        raw = tok.tokenizer(completion, add_special_tokens=False).input_ids
        ends.append([len(p) + min(last, len(r) - 1) for _, last in token_spans(step_spans, raw, decode)])
        ids.append(p + r)
    k = max([1, *map(len, ends)])
    batch = {
        "input_ids": _right_pad(ids, tok.pad),
        "attention_mask": _right_pad([[1] * len(x) for x in ids], 0),
        "step_index": torch.tensor([e + [0] * (k - len(e)) for e in ends], dtype=torch.long),
        "step_mask": torch.tensor([[True] * len(e) + [False] * (k - len(e)) for e in ends]),
    }
    if labels is not None:
        batch["step_labels"] = torch.tensor([list(map(float, x)) + [0.0] * (k - len(x)) for x in labels])
    return batch


def step_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                step_index: torch.Tensor) -> torch.Tensor:
    """(B, K) float32 logits of the head at each step's last token, one forward for the batch."""
    mask = attention_mask.long()
    hidden = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                              use_cache=False).last_hidden_state  # (B, T, H)
    picked = hidden.gather(1, step_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, K, H)
    return reward_head(model)(picked).squeeze(-1).float()  # (B, K)


def step_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean binary cross-entropy over real steps, and the step accuracy (σ(logit) > 0.5 against the label)."""
    m = mask.float()  # (B, K)
    per_step = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")  # (B, K)
    loss = (per_step * m).sum() / m.sum().clamp(min=1)
    right = ((logits > 0).float() == (labels > 0.5).float()).float()
    return loss, {"step_accuracy": ((right * m).sum() / m.sum().clamp(min=1)).detach()}


class ProcessReward:
    """A PRM export as GRPO's step-reward source (``module.step_rewards``): ``score_steps(prompts,
    completions, references, spans)`` returns σ(logit) at every step, all completions in one forward
    (or ``batch_size`` per forward)."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int | None = None) -> None:
        self.path = Path(path)
        settings = export_settings(self.path)
        if settings.get("kind") != "process":
            raise FileNotFoundError(f"module.step_rewards.path: {self.path} holds no process reward model export "
                                    f"(an r1lab_reward.json with kind: process)")
        self.settings, self.device, self.batch_size = settings, device, batch_size
        self._model = self._tok = None

    def _load(self) -> None:
        from r1lab.models.backbone import Backbone

        backbone = Backbone(name_or_path=str(self.path), dtype="float32")
        self._model = build_reward_model(backbone).to(self.device).eval().requires_grad_(False)
        s = self.settings
        self._tok = Tokenized(backbone.tokenizer, s.get("template", "plain"), s.get("max_prompt_tokens", 256),
                              s.get("max_response_tokens", 256), s.get("system_prompt"))

    @torch.no_grad()
    def score_steps(self, prompts: list[str], completions: list[str], references: list[dict],
                    spans: list[list[tuple[int, int]]]) -> list[list[float]]:
        if self._model is None:
            self._load()
        out: list[list[float]] = []
        size = self.batch_size or max(len(prompts), 1)
        for i in range(0, len(prompts), size):
            batch = step_batch(self._tok, prompts[i : i + size], completions[i : i + size], spans=spans[i : i + size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            probs = torch.sigmoid(step_logits(self._model, batch["input_ids"], batch["attention_mask"],
                                              batch["step_index"])).cpu()
            out += [p[: len(s)].tolist() for p, s in zip(probs, spans[i : i + size])]
        return out

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_tok")} | {"_model": None, "_tok": None}

    def __repr__(self) -> str:
        return f"ProcessReward({self.path})"


def write_process_settings(folder: Path, tok: Tokenized, rule: str) -> None:
    """The ``r1lab_reward.json`` of a PRM export: its kind, step rule and tokenization."""
    settings = {"kind": "process", "step_rule": rule, "template": tok.template, "system_prompt": tok.system_prompt,
                "max_prompt_tokens": tok.max_prompt_tokens, "max_response_tokens": tok.max_response_tokens}
    (Path(folder) / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))


__all__ = ["ProcessReward", "step_batch", "step_label_rows", "step_logits", "step_loss",
           "write_process_settings"]
