"""The reward model's networks: a scalar head read at the last real token, or the policy's own likelihood.

R1 (arXiv 2501.12948 §2.3.4) and DeepSeekMath train reward models that share the policy's
architecture; here that is any Hugging Face causal LM body (the tiny Llama included) with
``nn.Linear(hidden, 1)``: exactly a transformers ``*ForSequenceClassification`` with ``num_labels=1``
(its head is ``score``). Building it that way makes the export a folder that
``AutoModelForSequenceClassification.from_pretrained`` loads unchanged, and continuing an earlier
reward model (iterative RL) is just loading that folder again.

The reward is read at the last token whose attention mask is 1, so left and right padding give
the same rewards (transformers instead looks for the last token that is not ``pad_token_id``, which
agrees whenever the pad token differs from EOS, as in the tiny tokenizer).

The second kind, ``likelihood``, adds no head: the reward is the causal LM's own log-probability of
the response, r = β·Σ_t log π_θ(y_t | x, y_<t) (``reduction: sum``) or its per-token mean (``mean``,
SimPO's length normalisation, arXiv 2405.14734), optionally minus a frozen reference's, which makes
it DPO's implicit reward β·log π_θ(y|x)/π_ref(y|x) (Rafailov et al., arXiv 2305.18290 §5). Trained
with the same Bradley–Terry loss it is reference-free preference optimisation (CPO, arXiv 2401.08417,
without its NLL term). It starts from everything the policy knows about which steps are likely: on
the tiny world a wrong sum is an unlikely token, which a head at the last token learns slowly. The
export is a causal-LM folder whose ``r1lab_reward.json`` records the kind, β, the reduction and the
reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from r1lab.data.collate import IGNORE
from r1lab.models.backbone import DTYPES, Backbone, enable_checkpointing
from r1lab.tensors import last_token_index, positions_from_mask, token_logprobs

SETTINGS_FILE = "r1lab_reward.json"  # how the exported reward model tokenizes (template, limits) and its kind
KINDS = ("scalar", "likelihood")
REDUCTIONS = ("sum", "mean")


def export_settings(path: str | Path) -> dict:
    """The ``r1lab_reward.json`` of an export ({} when it has none)."""
    settings = Path(path) / SETTINGS_FILE
    return json.loads(settings.read_text()) if settings.is_file() else {}


def reward_kind(path: str | Path) -> str | None:
    """``scalar`` for a sequence-classification export, ``likelihood`` for a causal-LM export whose
    ``r1lab_reward.json`` says so, None for anything else (a policy, a missing folder)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    architectures = json.loads(config.read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "scalar"
    return "likelihood" if export_settings(path).get("kind") == "likelihood" else None


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
        enable_checkpointing(model)
    return model


def reward_head(model: torch.nn.Module) -> torch.nn.Module:
    """The scalar head: ``score`` (Llama, Qwen2, Mistral, GPT-2, …) or ``classifier`` (others)."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has neither a `score` nor a `classifier` head")
    return head


def sequence_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) float32 rewards: the head applied to the hidden state of each row's last real token."""
    mask = attention_mask.long()
    positions = positions_from_mask(mask)  # (B, T): left padding shifts positions
    hidden = model.base_model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                              use_cache=False).last_hidden_state  # (B, T, H)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(mask)]  # (B, H)
    return reward_head(model)(last).squeeze(-1).float()


def response_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(token | prefix) (B, T-1), response mask (B, T-1)): position t scores token t+1, and the
    mask keeps the tokens whose label is not ``IGNORE`` (the response). Left or right padding."""
    mask = attention_mask.long()
    positions = positions_from_mask(mask)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    return token_logprobs(logits, target.clamp(min=0)) * keep, keep


def likelihood_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       labels: torch.Tensor, beta: float = 1.0, reduction: str = "sum",
                       reference: torch.nn.Module | None = None) -> torch.Tensor:
    """(B,) float32 rewards β·Σ log π(response) (``sum``) or β·mean (``mean``), minus the reference's
    when one is given (DPO's implicit reward)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction {reduction!r} is not one of {REDUCTIONS}")
    logp, keep = response_logprobs(model, input_ids, attention_mask, labels)
    if reference is not None:
        with torch.no_grad():
            logp = logp - response_logprobs(reference, input_ids, attention_mask, labels)[0]
    total = logp.sum(-1)
    if reduction == "mean":
        total = total / keep.sum(-1).clamp(min=1)
    return beta * total.float()
