"""Transform chains of the layer-segmentation bundle: evaluation/inference preprocessing and postprocessing.

Training uses :func:`monai_oct.recipes.pipelines.bscan_transforms` (band located from the label). For
evaluation and inference the image is located *without* its label: either the whole B-scan is
resized to ``image_size``, or a band of ``band_height`` rows is found from the image alone
(``RetinaBandCropd`` with no label key); the label, when present, stays at its original size, and the
prediction is mapped back onto the original frame (:class:`~monai_oct.transforms.restore.RestoreBScand`)
so metrics are computed against the untouched annotation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    CastToTyped,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    RandAdjustContrastd,
    RandGaussianNoised,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    SelectItemsd,
    SqueezeDimd,
    Transposed,
)

from monai_oct.core.labels import LabelTable
from monai_oct.recipes.pipelines import bscan_transforms, png_reader
from monai_oct.transforms.band import RetinaBandCropd
from monai_oct.transforms.io import LoadBScand
from monai_oct.transforms.record import KeepPathd, RecordShaped
from monai_oct.transforms.restore import RestoreBScand

__all__ = ["seg_train_transforms", "seg_augment", "seg_eval_transforms", "seg_post_transforms"]


def seg_augment(level: float = 1.0, image_key: str = "image") -> Compose:
    """Light intensity augmentation for training images in [-1, 1] (labels untouched).

    Random gamma (contrast), intensity scaling and Gaussian noise, each with probability ``0.5 * level``;
    speckle statistics and scanner gain differ between devices and between real and synthetic scans.
    No geometric warps: they would have to invent labels at the borders.

    Args:
        level: strength and probability multiplier; 0 disables the chain (an empty ``Compose``).
        image_key: the image's key.

    Returns:
        a ``Compose`` of MONAI random intensity transforms.
    """
    level = float(level)
    if level <= 0:
        return Compose([])
    p = min(1.0, 0.5 * level)
    return Compose([
        RandAdjustContrastd([image_key], prob=p, gamma=(1.0 - 0.3 * level, 1.0 + 0.5 * level)),
        RandScaleIntensityd([image_key], prob=p, factors=0.15 * level),
        RandGaussianNoised([image_key], prob=p, std=0.05 * level),
    ])


def seg_train_transforms(image_size: Sequence[int] | None, band_height: int | None = None, flip: float = 0.5,
                         augment: float = 0.0, table: str | None = "duke_dme", band_from_label: bool = True) -> Compose:
    """Training preprocessing: load, retina band, resize, scale, flip, then augment.

    Args:
        image_size: ``[H, W]`` the network sees.
        band_height: rows of the retina band (None or 0: whole B-scans resized).
        flip: probability of a left-right flip.
        augment: strength of :func:`seg_augment` (0: none).
        table: label table the label ids are checked against at load time.
        band_from_label: locate the band from the label (exact) or, False, from the image alone as at test
            time, so the network learns the same framing (and its errors) that it will meet.

    Returns:
        a ``Compose``; its deterministic head is what a ``CacheDataset`` caches.
    """
    chain = bscan_transforms(image_size=image_size, keys=["image", "label"], band_height=band_height,
                             band_from_label=band_from_label, flip=flip, table=table)
    # only image, label and the mixing source travel on: items of mixed sources may carry different extra fields
    # (a pseudo-labelled set names each item's `condition`), and the batch collation needs the same keys everywhere
    keep = SelectItemsd(["image", "label", "source"], allow_missing_keys=True)
    return Compose(list(chain.transforms) + [keep] + list(seg_augment(augment).transforms))


def seg_eval_transforms(image_size: Sequence[int] | None, band_height: int | None = None, with_label: bool = True,
                        image_key: str = "image", label_key: str = "label", path_key: str = "image_path",
                        band_from_label: bool = False, table: LabelTable | str | None = "duke_dme") -> Compose:
    """Preprocessing for evaluation and inference (the label never locates or resizes anything).

    RGB images are read as grey, as in training. With a label, both files are read as in training
    (:class:`~monai_oct.transforms.io.LoadBScand`: label ids checked against ``table``, image and label sizes
    compared, each failure a ``DataError`` naming the file); without one (inference) the image is read by MONAI's
    ``LoadImaged`` in MONAI's axis order (``W x H``, as its metadata's ``spatial_shape`` says; MONAI Label swaps the
    loader for its own and restores the prediction to that shape) and transposed to rows first for the band crop and
    the network.

    Args:
        image_size: ``[H, W]`` the network sees (None: keep the size).
        band_height: rows of the retina band found from the image alone (None: whole B-scan).
        with_label: also load ``label_key`` (kept at full size, int64).
        image_key: the image's key (a file path on input).
        label_key: the label's key.
        path_key: where the image's path is kept (for output names and overlays).
        band_from_label: locate the band from the label. Only for synthetic data whose label is the
            generating condition (pseudo-labelling); never for evaluation.
        table: label table the label ids are checked against at load time (None: no check).

    Returns:
        a ``Compose``: ``image`` float ``(1, h, w)`` in [-1, 1], ``label`` int64 ``(1, H, W)``,
        ``original_shape`` ``(H, W)``, ``band_offset`` (with a band) and ``image_path``.
    """
    keys = [image_key] + ([label_key] if with_label else [])
    t = [
        KeepPathd([image_key], path_key=path_key),
        *([LoadBScand(keys, label_keys=[label_key], table=table)] if with_label else
          [LoadImaged(keys, reader=png_reader(grey=True), image_only=True), EnsureChannelFirstd(keys),
           Transposed(keys, indices=(0, 2, 1))]),
        RecordShaped([image_key]),
    ]
    if band_height:
        t.append(RetinaBandCropd([image_key], band_height=int(band_height),
                                 label_key=label_key if (band_from_label and with_label) else None, image_key=image_key))
    if image_size is not None:
        t.append(Resized([image_key], spatial_size=[int(s) for s in image_size], mode="area"))
    t.append(ScaleIntensityRanged([image_key], a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True))
    if with_label:
        t.append(CastToTyped([label_key], dtype=torch.int64))
    t.append(EnsureTyped(keys, track_meta=False))
    return Compose(t)


def seg_post_transforms(band_height: int | None = None, fill_above: int = 0, fill_below: int = 8,
                        pred_key: str = "pred", label_file: bool = False) -> Compose:
    """Postprocessing: softmax, back onto the original frame (bilinear on probabilities), argmax.

    Args:
        band_height: the band height used in preprocessing (None: whole B-scans).
        fill_above: class id given to rows above the band (vitreous).
        fill_below: class id given to rows below the band (choroid).
        pred_key: the prediction's key.
        label_file: end as MONAI writers (and MONAI Label's ``Restored`` and writer) expect a label: uint8, no
            channel axis, in MONAI's axis order ``(W, H)`` that the inference reader reads the image in.

    Returns:
        a ``Compose`` turning logits ``(C, h, w)`` into a label map ``(1, H, W)`` of the original size
        (``label_file``: uint8 ``(W, H)``).
    """
    t = [
        Activationsd([pred_key], softmax=True),
        RestoreBScand([pred_key], band_height=band_height, fill_above=fill_above, fill_below=fill_below),
        AsDiscreted([pred_key], argmax=True),
    ]
    if label_file:
        t += [Transposed([pred_key], indices=(0, 2, 1)), SqueezeDimd([pred_key], dim=0),
              CastToTyped([pred_key], dtype=torch.uint8)]
    return Compose(t)
