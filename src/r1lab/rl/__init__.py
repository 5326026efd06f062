"""Pure tensor math of GRPO: advantages, clipped surrogate, aggregation, KL estimators (no models)."""

from r1lab.rl.advantages import ADVANTAGE_SCALES, group_advantages
from r1lab.rl.kl import KL_ESTIMATORS, kl_estimate
from r1lab.rl.losses import AGGREGATIONS, aggregate, clipped_surrogate, entropy_from_logits, grpo_loss

__all__ = [
    "ADVANTAGE_SCALES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "aggregate",
    "clipped_surrogate",
    "entropy_from_logits",
    "group_advantages",
    "grpo_loss",
    "kl_estimate",
]
