"""Pure tensor math of GRPO and PPO: advantages (group, RLOO, REINFORCE++, GAE), clipped surrogate, value
loss, aggregation, KL estimators (no models)."""

from r1lab.rl.advantages import ADVANTAGE_SCALES, group_advantages
from r1lab.rl.estimators import (
    discounted_returns,
    explained_variance,
    gae,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
    value_loss,
    whiten,
)
from r1lab.rl.kl import KL_ESTIMATORS, kl_estimate
from r1lab.rl.losses import AGGREGATIONS, aggregate, clipped_surrogate, entropy_from_logits, grpo_loss

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "aggregate",
    "clipped_surrogate",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "group_advantages",
    "grpo_loss",
    "kl_estimate",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_rewards",
    "value_loss",
    "whiten",
]
