"""Learning-rate schedules shared by the training bundles, stepped once per iteration.

Built from the libraries' own schedulers: MONAI's :class:`~monai.optimizers.WarmupCosineSchedule` for ``cosine``
and torch's ``LinearLR`` / ``ConstantLR`` (joined by ``SequentialLR`` after a warm-up) for ``linear`` and
``constant``. Every schedule is a multiple of the optimizer's base learning rate, so
:func:`scale_base_lr` can change that base on resume without bending the curve.
"""

from __future__ import annotations

import torch
from monai.optimizers import WarmupCosineSchedule
from torch.optim.lr_scheduler import ConstantLR, LinearLR, LRScheduler, SequentialLR

__all__ = ["SCHEDULES", "make_lr_scheduler", "scale_base_lr"]

#: schedule names accepted by :func:`make_lr_scheduler`.
SCHEDULES = ("constant", "cosine", "linear")


def make_lr_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                      schedule: str | None = "cosine") -> LRScheduler:
    """A per-iteration schedule: linear warm-up, then ``constant``, ``cosine`` (to 0) or ``linear`` (to 0) decay.

    The warm-up multiplier rises linearly from ``1 / (warmup_steps + 1)`` (so the first iteration already
    learns) to 1 at iteration ``warmup_steps``; the decays reach 0 at iteration ``total_steps``.

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        total_steps: iterations of the whole run, warm-up included (e.g. ``max_epochs * len(dataloader)``).
        warmup_steps: iterations of linear warm-up.
        schedule: ``"constant"``, ``"cosine"``, ``"linear"`` or None (constant).

    Returns:
        the scheduler; step it once per iteration (``monai.handlers.LrScheduleHandler(epoch_level=False)``).

    Raises:
        ValueError: for an unknown schedule, ``total_steps < 1`` or a negative ``warmup_steps``.
    """
    schedule = schedule or "constant"
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    total, warmup = int(total_steps), int(warmup_steps)
    if total < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    start = 1.0 / (warmup + 1)
    if schedule == "cosine":
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total, warmup_multiplier=start if warmup else 0.0)
    if schedule == "constant":
        if not warmup:
            return ConstantLR(optimizer, factor=1.0, total_iters=0)
        return LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    decay = LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=max(1, total - warmup))
    if not warmup:
        return decay
    ramp = LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, decay], milestones=[warmup])


def scale_base_lr(optimizer: torch.optim.Optimizer, scheduler: LRScheduler | None, ratio: float) -> None:
    """Multiply the base and the current learning rate of every group (and of ``scheduler``) by ``ratio``.

    What a resumed run with another ``--learning_rate`` needs: the restored optimizer and scheduler states hold
    the old base rate; scaling both keeps the run on its schedule, at the new height.

    Args:
        optimizer: the optimizer (after its state was restored).
        scheduler: its scheduler (after its state was restored), or None; ``SequentialLR``'s parts are scaled too.
        ratio: new base rate / old base rate.
    """
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    todo = [scheduler] if scheduler is not None else []
    while todo:
        s = todo.pop()
        if hasattr(s, "base_lrs"):
            s.base_lrs = [lr * ratio for lr in s.base_lrs]
        if getattr(s, "_last_lr", None):
            s._last_lr = [lr * ratio for lr in s._last_lr]
        todo.extend(getattr(s, "_schedulers", []))


def depends_on_length(schedule: str | None) -> bool:
    """Whether a schedule's curve is fixed by the run's length (cosine, linear: they decay to its end); constant
    (or None) is not, so a resumed run may grow ``max_epochs`` under it."""
    return (schedule or "constant") != "constant"
