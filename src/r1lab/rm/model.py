"""The reward model's network: the policy's architecture with a scalar head read at the last real token.

R1 (arXiv 2501.12948 §2.3.4) and DeepSeekMath train reward models that share the policy's
architecture; here that is any Hugging Face causal LM body (the tiny Llama included) with
``nn.Linear(hidden, 1)``: exactly a transformers ``*ForSequenceClassification`` with ``num_labels=1``
(its head is ``score``). Building it that way makes the export a folder that
``AutoModelForSequenceClassification.from_pretrained`` loads unchanged, and continuing an earlier
reward model (iterative RL) is just loading that folder again.

The reward is read at the last token whose attention mask is 1, so left and right padding give
the same rewards (transformers instead looks for the last token that is not ``pad_token_id``, which
agrees whenever the pad token differs from EOS, as in the tiny tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from r1lab.models.backbone import DTYPES, Backbone

SETTINGS_FILE = "r1lab_reward.json"  # how the exported reward model tokenizes (template, limits)


def is_reward_export(path: str | Path) -> bool:
    """True when ``path`` holds a sequence-classification export (an earlier reward model)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def build_reward_model(backbone: Backbone) -> torch.nn.Module:
    """``*ForSequenceClassification`` (num_labels=1) of the backbone's architecture.

    The tiny preset is built with random, seeded weights; a path loads its transformer body (a
    causal-LM export: the head starts random; a reward-model export: the head is loaded too).
    """
    config = backbone.model_config()
    config.num_labels = 1
    config.pad_token_id = backbone.tokenizer.pad_token_id
    kwargs = {"attn_implementation": backbone.attn_implementation} if backbone.attn_implementation else {}
    if backbone.tiny is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(backbone.seed)
            model = AutoModelForSequenceClassification.from_config(config, **kwargs)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            backbone.name_or_path, config=config, dtype=DTYPES[backbone.dtype],
            trust_remote_code=backbone.trust_remote_code, **kwargs,
        )
    if backbone.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model


def reward_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head: ``score`` (Llama, Qwen2, Mistral, GPT-2, …) or ``classifier`` (others)."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has neither a `score` nor a `classifier` head")
    return head


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of each row's last position with mask 1; works for left and right padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)  # (T,)
    return (positions * (attention_mask > 0)).argmax(-1)


def sequence_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) float32 rewards: the head applied to the hidden state of each row's last real token."""
    mask = attention_mask.long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding shifts positions
    hidden = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              use_cache=False).last_hidden_state  # (B, T, H)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]  # (B, H)
    return reward_head(model)(last).squeeze(-1).float()
