"""Dynamic Region Masking (RetiDiff stage 3): perturb the pathological part of an encoded condition.

During fine-tuning, the condition's pathological pixels (fluid) are multiplied by a random field
``alpha ~ U(0, 1)`` whose elements are set to zero with probability ``p``; the retinal classes are left
untouched and the two are recombined. The model so learns to treat the pathology mask as soft, partial
evidence rather than an exact outline.

The multiplication acts on the mask in its [0, 1] form ``m = (c + 1) / 2`` of an encoded value
``c`` in [-1, 1], and the result goes back to [-1, 1]: ``c' = (m * alpha) * 2 - 1 = (c + 1) * alpha - 1``.
So ``alpha = 0`` means "absent" (-1) and ``alpha = 1`` leaves the value as it was. Per encoding:

- ``"onehot"``: at each pathological pixel (label in ``pathological_ids``), the channels of the
  pathological classes are scaled; the other channels there (already -1) and every channel at every
  other pixel are returned bit for bit. A fluid pixel whose alpha is 0 becomes -1 in all channels: no
  class at all, "fluid absent, tissue unspecified".
- ``"scalar"``: at each pathological pixel the single channel is scaled. Fluid's level (id 9 of 10 -> +1)
  becomes ``2 * alpha - 1``; alpha = 0 gives -1, which in one channel coincides with the level of class 0
  (vitreous): a scalar condition cannot say "absent" any other way. This is RetiDiff's literal rule.

RetiDiff always multiplies: ``p = 0`` still scales the pathology by ``alpha ~ U(0, 1)`` (only the zeroing
is switched off). A condition without pathological pixels is returned unchanged for every ``p``. To
switch DRM off use ``prob = 0`` in :class:`RandDynamicRegionMaskd`.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils.type_conversion import convert_to_dst_type

from monai_oct.transforms.encoding import condition_channels, decode_mask
from monai_oct.transforms.utils import as_tensor, check_classes, check_mode, integer_ids, split_shape

__all__ = ["DynamicRegionMask", "RandDynamicRegionMaskd"]


class DynamicRegionMask(Randomizable, Transform):
    """Scale the pathological pixels of an encoded condition by a random, partly zeroed field.

    Args:
        pathological_ids: class ids whose pixels are perturbed (Duke DME: fluid, 9).
        p: probability that an element of the field ``alpha ~ U(0, 1)`` is set to 0.
        num_classes: C of the encoding.
        mode: ``"onehot"`` or ``"scalar"``: the encoding of ``cond`` (module docstring: how each is treated).

    Returns (``__call__``): the perturbed condition, same shape, dtype, device and type as ``cond``.

    Raises:
        ValueError: for ``p`` outside [0, 1], unknown ids or mode, or a condition/label shape mismatch.
    """

    def __init__(self, pathological_ids: Sequence[int] = (9,), p: float = 0.5, num_classes: int = 10,
                 mode: str = "onehot") -> None:
        self.num_classes = check_classes(num_classes)
        self.mode = check_mode(mode)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        ids = [int(i) for i in pathological_ids]
        bad = [i for i in ids if not 0 <= i < self.num_classes]
        if bad:
            raise ValueError(f"pathological_ids {bad} are outside the classes 0..{self.num_classes - 1}")
        self.pathological_ids, self.p = tuple(ids), float(p)
        self._alpha: np.ndarray | None = None

    def randomize(self, shape: Sequence[int]) -> None:
        """Draw the field ``alpha`` of ``shape`` (``(1, H, W)`` or ``(B, 1, H, W)``) from ``self.R``."""
        alpha = self.R.uniform(0.0, 1.0, size=tuple(shape))
        if self.p > 0:
            alpha[self.R.uniform(0.0, 1.0, size=tuple(shape)) < self.p] = 0.0
        self._alpha = alpha

    def region(self, cond: torch.Tensor, label=None) -> torch.Tensor:
        """Boolean ``(1, H, W)`` / ``(B, 1, H, W)`` mask of pathological pixels, from ``label`` or, when it is
        None, from the condition itself (argmax / nearest level)."""
        if label is None:
            ids = decode_mask(cond, self.num_classes, self.mode)
        else:
            lab = as_tensor(label)
            if tuple(lab.shape[-2:]) != tuple(cond.shape[-2:]) or lab.ndim != cond.ndim or lab.shape[-3] != 1 \
                    or (lab.ndim == 4 and lab.shape[0] != cond.shape[0]):
                raise ValueError(f"label of shape {tuple(lab.shape)} does not match condition of shape {tuple(cond.shape)}")
            ids = integer_ids(lab)
        ids = ids.to(cond.device)
        return torch.isin(ids, torch.tensor(self.pathological_ids, device=ids.device))

    def __call__(self, cond, label=None, randomize: bool = True):
        """Perturb ``cond``.

        Args:
            cond: encoded condition, ``(ch, H, W)`` or ``(B, ch, H, W)`` in [-1, 1] with
                ``ch = condition_channels(num_classes, mode)``.
            label: the integer label map it encodes, ``(1, H, W)`` / ``(B, 1, H, W)``; None reads the
                classes back from ``cond``.
            randomize: draw a new field (False reuses the last one, e.g. for a second key).
        """
        t = as_tensor(cond)
        split_shape(t.shape, condition_channels(self.num_classes, self.mode), f"{self.mode} condition")
        where = self.region(t, label)  # (.., 1, H, W)
        if randomize or self._alpha is None:
            self.randomize(where.shape)
        if tuple(self._alpha.shape) != tuple(where.shape):
            raise ValueError(f"the drawn field has shape {self._alpha.shape}, the condition needs {tuple(where.shape)}")
        alpha = torch.as_tensor(self._alpha, dtype=t.dtype if t.is_floating_point() else torch.float32, device=t.device)
        if self.mode == "onehot":
            channels = torch.zeros(self.num_classes, dtype=torch.bool, device=t.device)
            channels[list(self.pathological_ids)] = True
            shape = [1] * t.ndim
            shape[-3] = self.num_classes
            where = where & channels.view(shape)  # broadcast: pathological channels at pathological pixels
        out = torch.where(where, (t + 1.0) * alpha - 1.0, t)
        return convert_to_dst_type(out, cond)[0]


class RandDynamicRegionMaskd(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`DynamicRegionMask`, applied with probability ``prob``.

    One field is drawn per call and applied to every key.

    Args:
        keys: encoded condition keys to perturb.
        label_key: key of the integer label map that marks the pathological pixels; None (or a missing
            key) reads them back from the condition.
        prob: probability of applying DRM at all (0 switches it off).
        p: probability that an element of ``alpha`` is zeroed.
        pathological_ids: class ids to perturb.
        num_classes: C.
        mode: ``"onehot"`` or ``"scalar"``.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection = ("cond",), label_key: str | None = "label", prob: float = 1.0,
                 p: float = 0.5, pathological_ids: Sequence[int] = (9,), num_classes: int = 10, mode: str = "onehot",
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.drm = DynamicRegionMask(pathological_ids, p, num_classes, mode)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "RandDynamicRegionMaskd":
        """Seed this transform and its array transform."""
        super().set_random_state(seed, state)
        self.drm.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        label = d.get(self.label_key) if self.label_key is not None else None
        first = True
        for key in self.key_iterator(d):
            d[key] = self.drm(d[key], label, randomize=first)
            first = False
        return d
