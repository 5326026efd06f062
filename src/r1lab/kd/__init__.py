"""Token-level knowledge distillation losses (forward/reverse KL, generalised JSD)."""

from r1lab.kd.losses import KD_KINDS, distill_objective, kd_loss, kd_per_token

__all__ = ["KD_KINDS", "distill_objective", "kd_loss", "kd_per_token"]
