"""Retina-band crop: keep the rows around the retinal layers of a B-scan.

Most of a B-scan is vitreous above and choroid below; a fixed-height band around the retina lets a
small model spend its capacity on the layers. The band is located from the label map when one is
given (training and synthesis) and from the image alone otherwise (a test image must never be
cropped with help from its label).
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

from monai_oct.core.labels import DUKE_DME, UNANNOTATED

__all__ = ["locate_retina_rows", "RetinaBandCrop", "RetinaBandCropd"]


def locate_retina_rows(image=None, label=None, retina_ids: Sequence[int] = DUKE_DME.foreground) -> int:
    """Centre row of the retina in a channel-first B-scan.

    Args:
        image: ``(C, H, W)`` image; used when ``label`` is None: the centre of mass of the row-median
            intensity above its 75th percentile, saturated pixels ignored (the retina and RPE are the
            bright rows). On Duke DME train+val this lands 13 +- 13 rows (max 52) below the
            label-derived centre, so keep the band generous (224 of 496 rows).
        label: ``(1, H, W)`` label map; the centre is the middle of the rows holding ``retina_ids``.
        retina_ids: class ids that make up the retina.

    Returns:
        the centre row index.

    Raises:
        ValueError: when neither is given.
    """
    if label is not None:
        lab = convert_to_numpy(label)[0]
        inside = np.isin(lab, list(retina_ids)) & (lab != UNANNOTATED)
        rows = np.flatnonzero(inside.any(axis=1))
        if rows.size:
            return int((rows[0] + rows[-1]) // 2)
        return lab.shape[0] // 2
    if image is None:
        raise ValueError("locate_retina_rows needs an image or a label")
    img = convert_to_numpy(image, dtype=np.float64).mean(axis=0)
    img = np.where(img >= 0.98 * img.max(), img.min(), img)  # saturated export wedges are not retina
    profile = np.convolve(np.median(img, axis=1), np.ones(9) / 9, mode="same")
    weight = np.clip(profile - np.percentile(profile, 75), 0, None)
    if weight.sum() <= 0:
        return img.shape[0] // 2
    return int(round((weight * np.arange(len(profile))).sum() / weight.sum()))


class RetinaBandCrop(Transform):
    """Crop ``band_height`` rows centred on the retina (pads with the minimum when the image is shorter).

    Args:
        band_height: rows to keep.

    Returns (``__call__``): the cropped array, same type as the input.
    """

    def __init__(self, band_height: int = 224) -> None:
        if band_height < 1:
            raise ValueError(f"band_height must be >= 1, got {band_height}")
        self.band_height = int(band_height)

    def offset(self, height: int, centre: int) -> int:
        """First row of the band for an image of ``height`` rows centred on ``centre``."""
        if height <= self.band_height:
            return 0
        return int(np.clip(centre - self.band_height // 2, 0, height - self.band_height))

    def crop(self, img, top: int):
        """Crop (and pad if needed) rows ``top .. top + band_height`` of a ``(C, H, W)`` array."""
        out = img[:, top: top + self.band_height]
        short = self.band_height - out.shape[1]
        if short > 0:
            if isinstance(out, torch.Tensor):
                out = torch.nn.functional.pad(out, (0, 0, 0, short), value=float(out.min()) if out.numel() else 0.0)
            else:
                out = np.pad(out, ((0, 0), (0, short), (0, 0)), constant_values=out.min() if out.size else 0)
        return out

    def __call__(self, img, label=None):
        """Crop ``img`` around the retina found in ``label`` (if given) or in ``img``."""
        top = self.offset(img.shape[1], locate_retina_rows(img, label))
        return self.crop(img, top)


class RetinaBandCropd(MapTransform):
    """Dictionary twin of :class:`RetinaBandCrop`: one band, located once, applied to every key.

    Args:
        keys: keys to crop (image and label alike).
        band_height: rows to keep.
        label_key: key of the label map that locates the band; when missing from the data (or None)
            the band is located from ``image_key``.
        image_key: key of the image used when no label is available.
        offset_key: where the band's first row is stored (to place a band back into a full frame).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, band_height: int = 224, label_key: str | None = "label",
                 image_key: str = "image", offset_key: str = "band_offset", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cropper = RetinaBandCrop(band_height)
        self.label_key, self.image_key, self.offset_key = label_key, image_key, offset_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        label = d.get(self.label_key) if self.label_key else None
        ref = label if label is not None else d[self.image_key]
        centre = locate_retina_rows(None, label) if label is not None else locate_retina_rows(d[self.image_key])
        top = self.cropper.offset(ref.shape[1], centre)
        for key in self.key_iterator(d):
            d[key] = self.cropper.crop(d[key], top)
        d[self.offset_key] = top
        return d
