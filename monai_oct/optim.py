"""Learning-rate schedules shared by the training bundles (stepped once per iteration)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["SCHEDULES", "make_lr_scheduler", "lr_factor"]

#: schedule names accepted by :func:`make_lr_scheduler`.
SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(step: int, total_steps: int, warmup_steps: int = 0, schedule: str = "cosine", min_factor: float = 0.0) -> float:
    """The multiplier of the base learning rate at iteration ``step`` (0-based).

    Linear warm-up from ``1 / (warmup_steps + 1)`` to 1 over ``warmup_steps`` iterations, then ``constant``,
    ``cosine`` (half a cosine down to ``min_factor`` at ``total_steps``) or ``linear`` decay.

    Args:
        step: the iteration.
        total_steps: iterations of the whole run (warm-up included).
        warmup_steps: iterations of linear warm-up.
        schedule: one of :data:`SCHEDULES`.
        min_factor: the final multiplier of the decaying schedules.

    Returns:
        a float in ``(0, 1]``.

    Raises:
        ValueError: for an unknown schedule name.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    decay = 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t
    return min_factor + (1.0 - min_factor) * decay


def make_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                      schedule: str | None = "cosine", min_factor: float = 0.0) -> LambdaLR:
    """A per-iteration ``LambdaLR`` following :func:`lr_factor` (``schedule=None`` means constant).

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        total_steps: iterations of the whole run (e.g. ``max_epochs * len(dataloader)``).
        warmup_steps: iterations of linear warm-up.
        schedule: ``"constant"``, ``"cosine"``, ``"linear"`` or None.
        min_factor: the final multiplier of the decaying schedules.

    Returns:
        the scheduler; step it once per iteration (``monai.handlers.LrScheduleHandler(epoch_level=False)``).

    Raises:
        ValueError: for an unknown schedule or ``total_steps < 1``.
    """
    schedule = schedule or "constant"
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return LambdaLR(optimizer, lambda s: lr_factor(s, int(total_steps), int(warmup_steps), schedule, min_factor))
