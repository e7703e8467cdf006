"""The one learning-rate schedule of every trainer: linear warm-up, then cosine decay to a floor."""

from __future__ import annotations

import math


def warmup_cosine(step: int, total: int, warmup: int = 0, min_ratio: float = 0.0, time_fraction: float = 0.0) -> float:
    """Factor on the peak learning rate at optimiser step ``step`` of ``total``.

    Linear warm-up over ``warmup`` steps ((step + 1) / warmup), then cosine decay from 1 to
    ``min_ratio`` over the remaining steps. ``time_fraction``: the part of a time budget already
    spent; the decay follows whichever of steps and time is further along, so a budgeted run
    ends at the low learning rate.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, max((step - warmup) / span, time_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
