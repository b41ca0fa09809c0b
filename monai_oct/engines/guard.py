"""The one check that stops training on a non-finite loss, shared by every trainer of the project."""

from __future__ import annotations

import torch
from ignite.engine import Engine

__all__ = ["check_finite_loss"]


def check_finite_loss(loss: torch.Tensor | float, engine: Engine, what: str = "loss") -> None:
    """Raise when ``loss`` is NaN or infinite, naming the iteration, the epoch and the value.

    Called before the backward pass (the diffusion trainer's step, ``NonFiniteLossGuard`` at MONAI's
    ``LOSS_COMPLETED``), so the weights never take a non-finite step and no checkpoint or final model holds one.

    Args:
        loss: the loss of the current iteration.
        engine: the trainer (its ``state.iteration`` and ``state.epoch`` are named).
        what: what the loss is, for the message (e.g. ``"diffusion loss"``).

    Raises:
        FloatingPointError: when ``loss`` is not finite.
    """
    value = torch.as_tensor(loss).detach()
    if not bool(torch.isfinite(value).all()):
        raise FloatingPointError(
            f"{what} is {value.float().mean().item()} at iteration {engine.state.iteration}, epoch {engine.state.epoch}: "
            "training stopped and no final model was written; lower --learning_rate, keep gradient clipping on, "
            "or check the data for NaN/inf")
