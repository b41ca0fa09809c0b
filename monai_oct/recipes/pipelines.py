"""MONAI transform chains for 2D B-scans: load, channel-first, optional retina band, resize, scale.

Images end in [-1, 1] (the diffusion convention), labels as integer class ids resized by nearest
neighbour. The same chain serves training, synthesis and evaluation; only its options differ.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.data import PILReader
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    RandFlipd,
    Resized,
    ScaleIntensityRanged,
)

from monai_oct.core.io import pil_array, to_grey
from monai_oct.core.labels import LabelTable
from monai_oct.transforms.band import RetinaBandCropd
from monai_oct.transforms.io import LoadBScand

__all__ = ["bscan_transforms", "png_reader"]


def _grey_image(im: Any) -> Any:
    """``PILReader`` converter: a colour image becomes its channel mean, as :class:`~monai_oct.transforms.io.LoadBScan`
    reads it, rounded to 8 bits (PIL mode ``L``; a float ``F`` image would reach torch as a read-only array);
    grey images pass unchanged."""
    from PIL import Image

    if len(im.getbands()) == 1:  # L, P, I, I;16, F: already one channel, no copy
        return im
    return Image.fromarray(np.round(to_grey(pil_array(im))).astype(np.uint8))


def png_reader(grey: bool = False) -> PILReader:
    """MONAI's reader for PNG B-scans, in MONAI's axis order: the first array axis is the image's x (``W x H``).

    This is what ``LoadImage`` with its default PIL reader gives, so the array and the ``spatial_shape`` that MONAI
    records in the metadata agree, and so do MONAI Label's ``Restored`` and its writers (which transpose back to rows
    when they write a file). Rows-first chains transpose after loading (see
    :func:`~monai_oct.recipes.seg_pipelines.seg_eval_transforms`).

    Args:
        grey: read colour files as the mean of their channels (one channel, as training reads them).

    Returns:
        a ``PILReader``.
    """
    return PILReader(converter=_grey_image if grey else None)


def bscan_transforms(
    image_size: Sequence[int] | None = None,
    keys: Sequence[str] = ("image", "label"),
    band_height: int | None = None,
    band_from_label: bool = True,
    flip: float = 0.0,
    image_key: str = "image",
    label_key: str = "label",
    table: LabelTable | str | None = "duke_dme",
) -> Compose:
    """A transform chain for B-scans and (optionally) label maps.

    Args:
        image_size: ``[H, W]`` to resize to (``None`` keeps the size).
        keys: keys to load; those other than ``image_key`` are label maps (``["label"]`` alone: a label-only
            chain, the band located from the label).
        band_height: crop this many rows around the retina before resizing (``None``: whole B-scan).
        band_from_label: locate the band from the label when present; False forces the image alone
            (use it for test images).
        flip: probability of a random left-right flip (augmentation).
        image_key: the image's key.
        label_key: the label's key.
        table: label table the label ids are checked against at load time (None: no check).

    Raises (when applied):
        DataError: naming the file that is missing, unreadable or holds unknown label ids.

    Returns:
        a MONAI ``Compose``; images come out as float ``(1, H, W)`` in [-1, 1], labels as int64 ``(1, H, W)``.
    """
    keys = list(keys)
    labels = [k for k in keys if k != image_key]
    t = [LoadBScand(keys, label_keys=labels, table=table)]
    if band_height:
        t.append(RetinaBandCropd(keys, band_height=band_height, label_key=label_key if band_from_label and label_key in keys else None,
                                 image_key=image_key))
    if image_size is not None:
        size = [int(s) for s in image_size]
        if image_key in keys:
            t.append(Resized([image_key], spatial_size=size, mode="area"))
        if labels:
            t.append(Resized(labels, spatial_size=size, mode="nearest"))
    if image_key in keys:  # keys=["label"]: a label-only chain (band from the label), e.g. for sketch statistics
        t.append(ScaleIntensityRanged([image_key], a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True))
    if flip > 0:
        t.append(RandFlipd(keys, prob=flip, spatial_axis=1))
    if labels:
        t.append(CastToTyped(labels, dtype=torch.int64))
    t.append(EnsureTyped(keys, track_meta=False))
    return Compose(t)
