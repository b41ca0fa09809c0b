"""Image sizes a network can take: its sides must divide by its total down-sampling."""

from __future__ import annotations

from typing import Sequence

__all__ = ["check_divisible"]


def check_divisible(size: Sequence[int], factor: int, why: str) -> None:
    """Check that the last two sides of ``size`` divide by ``factor`` (a network's total down-sampling).

    Args:
        size: ``(..., H, W)``.
        factor: what both sides must divide by.
        why: the network's reason, for the message (e.g. "the UNet down-samples 3 times ...").

    Raises:
        ValueError: naming the size, the factor, ``why`` and the nearest sizes that work.
    """
    f = int(factor)
    h, w = (int(s) for s in tuple(size)[-2:])
    if h % f or w % f:
        ok = [max(f, round(x / f) * f) for x in (h, w)]
        raise ValueError(f"image size {[h, w]} does not divide by {f} ({why}); use e.g. --image_size \"{ok}\"")
