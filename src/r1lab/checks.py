"""Checks of config values that name the key at fault, so that a bad value fails before any model is
built with one line that says which key, what it got and what it accepts."""

from __future__ import annotations

import math


def check_choice(key: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def check_number(key: str, value, low: float | None = None, high: float | None = None, *, integer: bool = False,
                 allow_none: bool = False, low_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``key`` unless ``value`` is a finite number (an integer if asked) in
    [low, high] — (low, high] when ``low_open`` — or None where that is allowed."""
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: must be {kind}, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lower = "-inf" if low is None else low
        upper = "inf" if high is None else high
        raise ValueError(f"{key}: must be {kind} in {'(' if low_open else '['}{lower}, {upper}], got {value!r}")
