"""Segmentation losses that skip unannotated pixels (label :data:`~monai_oct.core.labels.UNANNOTATED`).

MONAI 1.6's ``DiceCELoss`` has no ``ignore_index``; :class:`MaskedDiceCELoss` combines MONAI's
``DiceLoss(ignore_index=...)`` with ``torch.nn.functional.cross_entropy(ignore_index=...)`` so that the
network's output at an unannotated pixel has no influence on the loss or its gradient.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch.nn.modules.loss import _Loss

from monai_oct.core.labels import UNANNOTATED

__all__ = ["MaskedDiceCELoss"]


class MaskedDiceCELoss(_Loss):
    """``lambda_dice * soft Dice + lambda_ce * cross-entropy`` over annotated pixels only.

    Args:
        ignore_index: label value of unannotated pixels (255).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        include_background: include channel 0 in the Dice term.
        batch: Dice over the whole batch (True) or per image then averaged (False). Per-batch Dice
            is stabler for rare classes such as fluid, which many B-scans lack.
        class_weights: optional per-class weights of the cross-entropy term.
        smooth: the Dice term's smoothing constant (numerator and denominator).

    Returns (``forward``): a scalar loss for logits ``(B, C, H, W)`` and integer labels ``(B, 1, H, W)``
    or ``(B, H, W)``; 0 (with a gradient path) when no pixel is annotated.

    Raises:
        ValueError: when the label holds ids >= C other than ``ignore_index``.
    """

    def __init__(self, ignore_index: int = UNANNOTATED, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 include_background: bool = True, batch: bool = True, class_weights: Sequence[float] | None = None,
                 smooth: float = 1e-5) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=batch,
                             ignore_index=self.ignore_index, smooth_nr=smooth, smooth_dr=smooth)
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)
        target = target.long()
        valid = target != self.ignore_index
        n_classes = input.shape[1]
        bad = target[valid & ((target < 0) | (target >= n_classes))]
        if bad.numel():
            raise ValueError(f"label ids {sorted(set(bad.tolist()))[:10]} are outside 0..{n_classes - 1} "
                             f"(and are not the ignore value {self.ignore_index})")
        if not valid.any():
            return input.sum() * 0.0
        ce = F.cross_entropy(input.float(), target[:, 0], weight=self.class_weights, ignore_index=self.ignore_index)
        dice = self.dice(input.float(), target)
        return self.lambda_dice * dice + self.lambda_ce * ce
