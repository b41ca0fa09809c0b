"""What the console and TensorBoard show of a run: the progress-bar decision, the log interval, loss and learning rate.

The bundles configure MONAI's own ``StatsHandler`` / ``TensorBoardStatsHandler`` and ignite's ``ProgressBar``
with these small pieces:

- :func:`show_progress`: ``--progress auto`` (the default) shows progress bars only on a terminal; in a log file
  their carriage-return redraws pile up into one unreadable line;
- :func:`every_n_iterations`: the event filter of ``StatsHandler(iteration_log=...)``, which, unlike
  ``TensorBoardStatsHandler``, takes no interval;
- :func:`loss_and_lr`: an ``output_transform`` giving ``{"train_loss": ..., "lr": ...}``, so one handler prints
  (or writes) both.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, TextIO

from ignite.engine.events import CallableEventWithFilter
from torch.optim import Optimizer

__all__ = ["show_progress", "every_n_iterations", "loss_and_lr"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def show_progress(value: Any = "auto", stream: TextIO | None = None) -> bool:
    """Whether to show progress bars: ``"auto"`` (or None) means "when ``stream`` is a terminal".

    Args:
        value: ``"auto"``/None, or a bool or its command-line spelling (``true``/``false``, ``1``/``0``,
            ``yes``/``no``, ``on``/``off``) that forces the choice.
        stream: where the bars are drawn (default ``sys.stderr``, where ignite's ``ProgressBar`` / tqdm write).

    Returns:
        True to show them.

    Raises:
        ValueError: for any other value (the message names it).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        stream = sys.stderr if stream is None else stream
        try:
            return bool(stream.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream: not a terminal
            return False
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE or v in _FALSE:
            return v in _TRUE
        raise ValueError(f"--progress {value!r}: use auto, true or false")
    if isinstance(value, (bool, int)):
        return bool(value)
    raise ValueError(f"--progress {value!r}: use auto, true or false")


def every_n_iterations(interval: Any) -> Callable[[Any, int], bool] | bool:
    """The ``iteration_log`` of MONAI's ``StatsHandler`` for one line every ``interval`` iterations.

    ``StatsHandler`` accepts a bool or an ignite event filter (``TensorBoardStatsHandler`` also an int); this is the
    filter ``ignite``'s ``Events.ITERATION_COMPLETED(every=interval)`` would apply.

    Args:
        interval: iterations between lines (counted over the whole run); 0 or None: no iteration lines.

    Returns:
        ``False`` (off) or ``filter(engine, iteration) -> bool``.

    Raises:
        ValueError: for a negative or non-integer interval.
    """
    try:
        n = int(interval or 0)
    except (TypeError, ValueError):
        raise ValueError(f"--log_interval {interval!r}: expected a whole number of iterations (0: off)") from None
    if n < 0 or n != float(interval or 0):
        raise ValueError(f"--log_interval {interval!r}: expected a whole number of iterations (0: off)")
    if n == 0:
        return False
    return CallableEventWithFilter.every_event_filter(n)


def loss_and_lr(optimizer: Optimizer | None = None, loss_key: str = "loss", loss_name: str = "train_loss",
                lr_name: str = "lr") -> Callable[[Mapping[str, Any]], dict[str, float]]:
    """An ``output_transform`` for ``StatsHandler`` / ``TensorBoardStatsHandler``: the loss and the learning rate.

    Args:
        optimizer: whose first parameter group's ``lr`` is reported (None: the loss only).
        loss_key: the loss in the trainer's (not decollated) output dict.
        loss_name / lr_name: the names printed and the TensorBoard tags.

    Returns:
        ``output -> {loss_name: float, lr_name: float}``.
    """

    def _transform(output: Mapping[str, Any]) -> dict[str, float]:
        loss = output[loss_key]
        out = {loss_name: float(loss.item() if hasattr(loss, "item") else loss)}
        if optimizer is not None:
            out[lr_name] = float(optimizer.param_groups[0]["lr"])
        return out

    return _transform
