"""Stop a MONAI trainer on a non-finite loss before the optimizer steps (the segmentation bundle's NaN guard)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ignite.engine import Engine
from monai.engines import IterationEvents
from monai.utils import CommonKeys

from monai_oct.engines.guard import check_finite_loss

__all__ = ["NonFiniteLossGuard"]


class NonFiniteLossGuard:
    """Raise ``FloatingPointError`` (naming iteration, epoch and loss) when a MONAI trainer's loss is NaN/inf.

    Ignite's ``TerminateOnNan`` looks at the output after the optimizer step and ends the run as if it had
    completed, so ``COMPLETED`` handlers would still write a final model; this handler checks at MONAI's
    ``IterationEvents.LOSS_COMPLETED`` (before the backward pass and the step) and raises, so the run exits
    non-zero and no final weights are written. The check is the one the diffusion trainer uses.

    Args:
        output_transform: takes ``engine.state.output`` and returns the loss (default: its ``"loss"`` entry).
        what: what the loss is, for the message.
    """

    def __init__(self, output_transform: Callable[[Any], Any] | None = None, what: str = "training loss") -> None:
        self.output_transform = output_transform or (lambda out: out[CommonKeys.LOSS] if isinstance(out, Mapping) else out)
        self.what = what

    def attach(self, engine: Engine) -> None:
        """Check after every loss computation of ``engine`` (a MONAI ``SupervisedTrainer``)."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Check the current loss.

        Raises:
            FloatingPointError: when it is not finite.
        """
        check_finite_loss(self.output_transform(engine.state.output), engine, self.what)
