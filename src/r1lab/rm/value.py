"""PPO's value model (critic): V(s_t) before every completion token, a scalar head on a causal LM body.

The network is the reward model's (``build_reward_model``: a ``*ForSequenceClassification`` with one
label), read at every position instead of the last one, as OpenRLHF's and veRL's critics are. It
starts either as a copy of the policy's body with a zero head (V = 0 at the first step: the first
advantages are plain returns), or from a scalar reward model's export, head included (InstructGPT,
arXiv 2203.02155 §3.5, initialises the value function from the reward model).
"""

from __future__ import annotations

import torch

from r1lab.models.backbone import Backbone, plain_model
from r1lab.rm.model import build_reward_model, reward_head, reward_kind
from r1lab.tensors import positions_from_mask

CRITIC_SOURCES = ("policy", "reward_model")


class ValueModel(torch.nn.Module):
    """Wraps a one-label sequence-classification model; ``forward`` gives V(s_t) (B, T) in float32."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                completion_mask: torch.Tensor) -> torch.Tensor:
        """V of the state before each completion token: the head at the position that predicts it.

        prompt (B, P) left-padded, completion (B, T) right-padded → (B, T), 0 off the completion mask.
        """
        prompt_len, length = prompt_ids.shape[1], completion_ids.shape[1]
        attention = torch.cat([prompt_mask, completion_mask], dim=1).long()  # (B, P+T)
        hidden = self.model.base_model(input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
                                       attention_mask=attention, position_ids=positions_from_mask(attention),
                                       use_cache=False).last_hidden_state  # (B, P+T, H)
        states = hidden[:, prompt_len - 1:prompt_len + length - 1]  # (B, T, H): position t-1 predicts token t
        return reward_head(self.model)(states).squeeze(-1).float() * completion_mask


def build_value_model(backbone: Backbone, policy: torch.nn.Module, source: str = "policy",
                      path: str | None = None) -> ValueModel:
    """The critic: ``policy`` (a copy of its current body, zero head) or ``reward_model`` (the scalar
    reward model exported at ``path``, head included)."""
    if source not in CRITIC_SOURCES:
        raise ValueError(f"module.critic.source: {source!r} is not one of {', '.join(CRITIC_SOURCES)}")
    if source == "reward_model":
        if path is None or reward_kind(path) != "scalar":
            raise ValueError(f"module.critic.path: {path!r} is not a scalar reward model's export (a folder whose "
                             "config.json names a *ForSequenceClassification architecture; the rm stage's hf/)")
        return ValueModel(build_reward_model(Backbone(name_or_path=path, dtype=backbone.dtype,
                                                      attn_implementation=backbone.attn_implementation)))
    model = build_reward_model(backbone)
    model.base_model.load_state_dict(plain_model(policy).base_model.state_dict())
    head = reward_head(model)
    torch.nn.init.zeros_(head.weight)
    if getattr(head, "bias", None) is not None:
        torch.nn.init.zeros_(head.bias)
    return ValueModel(model)
