"""The field of view (FOV) of a fundus photograph: outside it nothing is predicted and nothing is scored.

A fundus camera images a disc; the corners of the frame are black. :class:`MaskOutsideFOV` sets a label map's
pixels outside the FOV to an ignore value (:data:`~monai_oct.core.labels.UNANNOTATED`, 255, which the losses and
metrics of this package skip) and can blank the image there; :class:`MaskOutsideFOVd` does it on a dictionary and
keeps the FOV as a boolean ``(1, H, W)`` key, so the fundus metrics (``monai_oct.metrics.fundus``) can take it.
MONAI's ``MaskIntensity`` blanks an image by a mask too, but it neither writes an ignore value into a label map
nor checks that the mask matches the map, and a mismatched FOV would silently shift what is scored.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy

from monai_oct.core.labels import UNANNOTATED

__all__ = ["fov_mask", "MaskOutsideFOV", "MaskOutsideFOVd"]


def _name(x: Any) -> str:
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return f"{name}: " if name else ""


def fov_mask(fov: NdarrayOrTensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """An ``(H, W)`` bool FOV (True inside: the value is above 0) from ``(H, W)``, ``(1, H, W)`` or ``(C, H, W)``.

    Args:
        fov: the mask, 0 outside (0/255 or 0/1 or bool); several channels must agree (any channel counts).
        shape: the spatial ``(H, W)`` it must have (of the map it is applied to), or None.

    Returns:
        the bool mask.

    Raises:
        ValueError: when it is not 2D/3D or its size differs from ``shape`` (naming its file when known).
    """
    arr = convert_to_numpy(fov)
    if arr.ndim == 3:
        arr = arr.any(axis=0) if arr.dtype == bool else (arr > 0).any(axis=0)
    elif arr.ndim != 2:
        raise ValueError(f"{_name(fov)}a field-of-view mask must be (H, W) or (C, H, W), got shape {arr.shape}")
    mask = arr > 0
    if shape is not None and tuple(mask.shape) != tuple(int(s) for s in shape):
        raise ValueError(f"{_name(fov)}field-of-view mask size {tuple(mask.shape)} differs from the map's {tuple(shape)}")
    return mask


class MaskOutsideFOV(Transform):
    """Set a label map's pixels outside the field of view to ``ignore_value`` (or an image's to ``fill``).

    Args:
        ignore_value: the value written outside the FOV (default :data:`UNANNOTATED`, 255, skipped by the metrics
            and losses; for an image pass e.g. 0).

    ``__call__(img, fov)``:

    Args:
        img: ``(C, H, W)`` or ``(H, W)`` map (label ids or image intensities), numpy or torch.
        fov: the FOV mask, ``(H, W)`` or ``(1, H, W)``, inside > 0.

    Returns:
        ``img``'s type, shape and dtype with every channel set to ``ignore_value`` outside the FOV.

    Raises:
        ValueError: when the FOV's size differs from the map's (naming the files when known).
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, ignore_value: float = UNANNOTATED) -> None:
        self.ignore_value = ignore_value

    def __call__(self, img: NdarrayOrTensor, fov: NdarrayOrTensor) -> NdarrayOrTensor:  # type: ignore[override]
        shape = tuple(img.shape[-2:])
        try:
            inside = fov_mask(fov, shape)
        except ValueError as e:
            raise ValueError(f"{_name(img)}{e}") from None
        out = convert_to_numpy(img).copy()
        out[..., ~inside] = self.ignore_value
        return convert_to_dst_type(out, img, dtype=out.dtype)[0]


class MaskOutsideFOVd(MapTransform):
    """Dictionary twin of :class:`MaskOutsideFOV`: mask ``keys`` by the FOV under ``fov_key``, keep the FOV as bool.

    Args:
        keys: the maps to mask (usually ``"label"``).
        fov_key: key of the FOV mask.
        ignore_value: value written outside the FOV in ``keys`` (default 255, :data:`UNANNOTATED`).
        image_keys: maps blanked to ``image_fill`` outside the FOV (e.g. ``"image"``; default none).
        image_fill: the value of ``image_keys`` outside the FOV.
        as_bool: replace ``d[fov_key]`` by its ``(1, H, W)`` bool tensor (what the fundus metrics take).
        allow_missing_keys: skip absent keys (a FOV is always needed).

    Returns (``__call__(data)``): a copy of ``data`` with the masked maps.

    Raises:
        KeyError: when ``fov_key`` is missing.
        ValueError: when the FOV's size differs from a map's.
    """

    backend = MaskOutsideFOV.backend

    def __init__(self, keys: KeysCollection, fov_key: str = "fov", ignore_value: float = UNANNOTATED,
                 image_keys: KeysCollection | None = None, image_fill: float = 0.0, as_bool: bool = True,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fov_key = fov_key
        self.image_keys = [] if image_keys is None else ([image_keys] if isinstance(image_keys, str) else list(image_keys))
        self.label_masker = MaskOutsideFOV(ignore_value)
        self.image_masker = MaskOutsideFOV(image_fill)
        self.as_bool = as_bool

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.fov_key not in d:
            raise KeyError(f"MaskOutsideFOVd: no field-of-view key {self.fov_key!r} (keys: {sorted(map(str, d))})")
        fov = d[self.fov_key]
        for key in self.key_iterator(d):
            d[key] = self.label_masker(d[key], fov)
        for key in self.image_keys:
            if key in d or not self.allow_missing_keys:
                d[key] = self.image_masker(d[key], fov)
        if self.as_bool:
            d[self.fov_key] = torch.as_tensor(fov_mask(fov))[None]
        return d
