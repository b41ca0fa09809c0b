"""Small helpers the label-map transforms share (class-count checks, scalar levels, tensor views)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["MODES", "check_mode", "check_classes", "scalar_levels", "as_tensor", "split_shape", "integer_ids"]

#: The encodings a label map can enter a network with.
MODES = ("scalar", "onehot")


def check_classes(num_classes: int) -> int:
    """``num_classes`` as an int; raises ValueError unless it is an integer >= 2."""
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def scalar_levels(num_classes: int) -> np.ndarray:
    """The C nominal levels of the scalar encoding: ``linspace(-1, 1, C)`` (level ``k`` is class ``k``)."""
    return np.linspace(-1.0, 1.0, check_classes(num_classes))


def as_tensor(x) -> torch.Tensor:
    """A plain tensor view of ``x`` (ndarray, tensor or MetaTensor)."""
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def split_shape(shape: Sequence[int], channels: int | None, what: str) -> bool:
    """Return True for a batch ``(B, ch, H, W)``, False for ``(ch, H, W)``; raise otherwise."""
    ok_single = len(shape) == 3 and (channels is None or shape[0] == channels)
    ok_batch = len(shape) == 4 and (channels is None or shape[1] == channels)
    if not (ok_single or ok_batch):
        ch = "C" if channels is None else str(channels)
        raise ValueError(f"{what} must have shape ({ch}, H, W) or (B, {ch}, H, W), got {tuple(shape)}")
    return len(shape) == 4


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`; raises ValueError otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown mask encoding mode {mode!r}; expected one of {MODES}")
    return mode


def integer_ids(label: torch.Tensor) -> torch.Tensor:
    """``label`` as int64, refusing non-integral values (a resized-with-interpolation label, say)."""
    if label.is_floating_point():
        if not torch.isfinite(label).all():
            raise ValueError("label map holds non-finite values; expected integer class ids")
        frac = label != torch.round(label)
        if frac.any():
            raise ValueError(f"label map holds non-integer value {float(label[frac][0])}; expected integer class ids")
    elif label.dtype == torch.bool or label.is_complex():
        raise ValueError(f"label map has dtype {label.dtype}; expected integer class ids")
    return label.long()
