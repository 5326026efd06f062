"""No non-finite value reaches the weights or an export.

A step whose loss or gradient norm is not finite either stops the run, naming the step and the
quantity (``nonfinite: stop``, the default), or is skipped (``nonfinite: skip``): its gradients are
dropped, so the optimiser leaves every weight as it was (AdamW skips parameters without a gradient),
and the skip is counted (``train/skipped_steps``, kept in checkpoints). Exports check every parameter.
"""

from __future__ import annotations

import torch

NONFINITE = ("stop", "skip")
MAX_SKIPS_IN_A_ROW = 20  # a run that keeps producing NaN is broken: skipping would loop over the data forever


class NonFiniteError(RuntimeError):
    """A loss, gradient norm or weight that is not finite; the message names the step and the quantity."""


def check_finite_parameters(model: torch.nn.Module, where: str) -> None:
    """Raise ``NonFiniteError`` naming the first parameter of ``model`` that holds NaN or inf."""
    for name, param in model.named_parameters():
        if param.is_floating_point() and not torch.isfinite(param).all():
            raise NonFiniteError(f"{where}: parameter {name} holds non-finite values; nothing was written")


class FiniteSteps:
    """Mixin of the stage modules (``nonfinite`` is their config key ``module.nonfinite``)."""

    nonfinite: str = "stop"
    skipped_steps: int = 0
    _skips_in_a_row: int = 0

    def _any_rank(self, bad: bool) -> bool:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.world_size == 1:
            return bad
        flag = torch.tensor(float(bad), device=self.device)
        return bool(trainer.strategy.reduce(flag, reduce_op="max") > 0)  # every rank skips, or none

    def finite_or_skip(self, quantity: str, value: torch.Tensor) -> bool:
        """True when ``value`` is finite (on every rank); otherwise raise (stop) or return False (skip)."""
        if not self._any_rank(not bool(torch.isfinite(value.detach()).all())):
            self._skips_in_a_row = 0
            return True
        shown = value.detach().float().flatten()
        shown = shown[~torch.isfinite(shown)][0].item() if shown.numel() else shown
        if self.nonfinite == "stop":
            raise NonFiniteError(f"step {self.global_step}: {quantity} is {shown} (module.nonfinite=skip skips "
                                 "such steps; lower the learning rate or check the data and rewards)")
        self.skipped_steps += 1
        self._skips_in_a_row += 1
        if self._skips_in_a_row > MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(f"step {self.global_step}: {quantity} is {shown} in {self._skips_in_a_row} "
                                 "checks in a row; the run is stopped (lower the learning rate or check the data)")
        return False

    def gradient_norm(self) -> torch.Tensor:
        grads = [p.grad.detach().float().norm() for p in self.parameters() if p.grad is not None]
        return torch.stack(grads).norm() if grads else torch.zeros((), device=self.device)

    def drop_gradients(self) -> None:
        for p in self.parameters():
            p.grad = None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Automatic optimisation: a non-finite gradient norm stops the run or drops the gradients."""
        if not self.finite_or_skip("the gradient norm", self.gradient_norm()):
            self.drop_gradients()

    def log_skipped(self) -> None:
        if self.nonfinite == "skip":
            self.log("train/skipped_steps", float(self.skipped_steps))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["r1lab_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.skipped_steps = int(checkpoint.get("r1lab_skipped_steps", 0))


def check_nonfinite_mode(value: str) -> str:
    if value not in NONFINITE:
        raise ValueError(f"module.nonfinite: {value!r} is not one of {', '.join(NONFINITE)}")
    return value


def check_optimizer(optimizer, scheduler=None, key: str = "module") -> None:
    """Build the partial optimizer (and schedule) once on a dummy parameter, so that a bad value (a
    learning rate of "fast", a negative weight decay) fails now, naming ``module.optimizer``, and not
    after the model is built."""
    if optimizer is None:
        return
    for name, value in (getattr(optimizer, "keywords", None) or {}).items():
        if name in ("lr", "weight_decay", "eps", "momentum") and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key}.optimizer.{name}: must be a number, got {value!r}")
    try:
        built = optimizer(params=[torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}.optimizer: {error}") from None
    if scheduler is not None:
        try:
            scheduler(optimizer=built, total_steps=10)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{key}.scheduler: {error}") from None

