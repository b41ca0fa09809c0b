"""The transform chain of each RetiDiff training stage (the items come from :func:`monai_oct.recipes.items.resolve_items`).

All chains start from :func:`monai_oct.recipes.pipelines.bscan_transforms` (load, retina band, resize, images
to [-1, 1]) and end with dicts the :class:`~monai_oct.engines.diffusion.DiffusionTrainer` reads:

- stage 1, :func:`pretrain_transforms`: ``{"image"}`` only; a label, where an item has one, only places the
  band (the trainer then conditions on an all-zero mask);
- stage 2, :func:`mask_transforms`: ``{"image"}`` = the label map in the scalar encoding (one channel in
  [-1, 1], RetiDiff's) or the one-hot encoding (C channels), what the unconditional mask DDPM learns to generate;
- stage 3, :func:`finetune_transforms`: ``{"image", "cond", "label"}`` with ``cond`` the encoded label map
  after Dynamic Region Masking; with ``label_size`` the label is taken at that (finer) size and ``cond`` is its
  area-downsampled encoding (:func:`~monai_oct.transforms.encoding.encode_mask_resized`), the condition a
  synthesis from full-resolution label maps gives the same network;
- the sketch-conditioned image DDPM (Wu et al.), :func:`sketch_transforms`: ``{"image", "cond", "label"}`` with
  ``cond`` a 1-channel layer sketch drawn on the fly from the label (random line widths, deformation and dropped
  boundaries) and ``label`` the sketch-derived label map.

The deterministic part of each chain comes first (``CacheDataset`` caches it), the random flip and DRM last.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.transforms import CastToTyped, Compose, EnsureTyped, RandFlipd, Resized, SelectItemsd, Transform

from monai_oct.core.classes import CLASS_ID_KEY
from monai_oct.core.labels import LabelTable
from monai_oct.recipes.pipelines import bscan_transforms
from monai_oct.transforms.drm import RandDynamicRegionMaskd
from monai_oct.transforms.encoding import AreaMaskEncoded, MaskEncoded
from monai_oct.transforms.sketch import LayerSketchd

__all__ = ["pretrain_transforms", "mask_transforms", "finetune_transforms", "sketch_transforms"]


class _ImageWithOptionalLabel(Transform):
    """Load an item with the label-aware chain when it has a label, else the image-only chain; keep ``image`` (and
    the item's ``class_id`` when it has one, :mod:`monai_oct.core.classes`)."""

    def __init__(self, with_label: Compose, without_label: Compose) -> None:
        self.with_label, self.without_label = with_label, without_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = (self.with_label if data.get("label") else self.without_label)(dict(data))
        return {"image": d["image"], **({CLASS_ID_KEY: data[CLASS_ID_KEY]} if CLASS_ID_KEY in data else {})}


def pretrain_transforms(image_size: Sequence[int] | None, band_height: int | None = None, flip: float = 0.0,
                        table: LabelTable | str | None = "duke_dme", seed: int = 0) -> Compose:
    """Stage 1 chain: ``{"image"}`` in [-1, 1]; the band is placed from the label where an item has one.

    Args:
        image_size: ``[H, W]`` the network sees.
        band_height: retina band rows before resizing (None/0: whole B-scan).
        flip: probability of a left-right flip.
        table: label table for checking labels (only read to place the band).
        seed: seed of the random transforms.

    Returns:
        the ``Compose``.
    """
    kw = dict(image_size=image_size, band_height=band_height, flip=0.0, table=table)
    chain = Compose([
        _ImageWithOptionalLabel(bscan_transforms(keys=["image", "label"], **kw), bscan_transforms(keys=["image"], **kw)),
        RandFlipd(["image"], prob=flip, spatial_axis=1),
    ])
    chain.set_random_state(seed)
    return chain


def mask_transforms(image_size: Sequence[int] | None, num_classes: int = 10, band_height: int | None = None,
                    flip: float = 0.0, table: LabelTable | str | None = "duke_dme", seed: int = 0,
                    encoding: str = "scalar") -> Compose:
    """Stage 2 chain: ``{"image"}`` = the label map in the mask DDPM's encoding.

    ``"scalar"`` (RetiDiff's): one channel, class k -> ``2k/(C-1) - 1``, decoded by DMC; adjacent classes are
    adjacent levels, so a small error in the generated value is a wrong neighbouring layer. ``"onehot"``: C
    channels of ``±1``, decoded by argmax or :class:`~monai_oct.transforms.topology.LayerOrderDecode`.

    Args:
        image_size: ``[H, W]``.
        num_classes: C.
        band_height: retina band rows, placed from the label (None/0: whole B-scan).
        flip: probability of a left-right flip.
        table: label table the ids are checked against.
        seed: seed of the random transforms.
        encoding: ``"scalar"`` or ``"onehot"``.

    Raises:
        ValueError: for an unknown encoding.
    """
    chain = Compose([
        bscan_transforms(image_size=image_size, keys=["image", "label"], band_height=band_height, flip=0.0, table=table),
        MaskEncoded(["label"], num_classes=num_classes, mode=encoding, output_key="image"),
        SelectItemsd(["image"]),
        RandFlipd(["image"], prob=flip, spatial_axis=1),
    ])
    chain.set_random_state(seed)
    return chain


def finetune_transforms(image_size: Sequence[int] | None, num_classes: int = 10, encoding: str = "onehot",
                        band_height: int | None = None, flip: float = 0.0, drm_prob: float = 1.0, drm_p: float = 0.5,
                        pathological_ids: Sequence[int] = (9,), table: LabelTable | str | None = "duke_dme",
                        seed: int = 0, label_size: Sequence[int] | None = None) -> Compose:
    """Stage 3 chain: ``{"image", "cond", "label"}``, ``cond`` the encoded label after DRM.

    Without ``label_size`` image and label are resized to ``image_size`` (label by nearest neighbour) and the
    label is encoded there. With it, the band is cropped at full resolution, the label resized to ``label_size``
    (nearest-exact: the size a synthesis's label maps have), ``cond`` is that label's encoding area-averaged to
    ``image_size`` (boundaries between the network's pixels show as fractions, as in synthesis), the image is
    area-resized to ``image_size`` and ``label`` (what DRM reads to find the fluid) is the label nearest-exact
    resized to ``image_size``.

    Args:
        image_size: ``[H, W]``.
        num_classes: C.
        encoding: ``"onehot"`` or ``"scalar"`` (the condition the image UNet gets).
        band_height: retina band rows, placed from the label (None/0: whole B-scan).
        flip: probability of a left-right flip (image, label and condition together).
        drm_prob: probability of applying DRM to a sample (0: off).
        drm_p: probability that an element of DRM's field is zeroed.
        pathological_ids: classes DRM perturbs (Duke: fluid, 9).
        table: label table the ids are checked against.
        seed: seed of the random transforms.
        label_size: ``[h, w]`` the label map is taken at before it is encoded (None: ``image_size``, the
            encoding made at the network's size).

    Raises:
        ValueError: for a ``label_size`` without an ``image_size``.
    """
    chain = Compose([
        *_pairs_at_label_size(image_size, label_size, num_classes, encoding, band_height, table),
        SelectItemsd(["image", "label", "cond", CLASS_ID_KEY], allow_missing_keys=True),  # the chain makes the first three
        RandFlipd(["image", "label", "cond"], prob=flip, spatial_axis=1),
        RandDynamicRegionMaskd(["cond"], label_key="label", prob=drm_prob, p=drm_p, pathological_ids=pathological_ids,
                               num_classes=num_classes, mode=encoding),
    ])
    chain.set_random_state(seed)
    return chain


def _pairs_at_label_size(image_size: Sequence[int] | None, label_size: Sequence[int] | None, num_classes: int,
                         encoding: str, band_height: int | None, table: LabelTable | str | None) -> list:
    """The deterministic part of :func:`finetune_transforms`: ``{"image", "label", "cond"}`` at ``image_size``."""
    keys = ["image", "label"]
    if label_size is None:
        return [bscan_transforms(image_size=image_size, keys=keys, band_height=band_height, flip=0.0, table=table),
                MaskEncoded(["label"], num_classes=num_classes, mode=encoding, output_key="cond")]
    if image_size is None:
        raise ValueError(f"label_size {list(label_size)} needs an image_size to encode the label at; got image_size None")
    size = [int(s) for s in image_size]
    return [
        bscan_transforms(image_size=None, keys=keys, band_height=band_height, flip=0.0, table=table),  # full resolution
        Resized(["image"], spatial_size=size, mode="area"),
        Resized(["label"], spatial_size=[int(s) for s in label_size], mode="nearest-exact"),
        CastToTyped(["label"], dtype=torch.int64),
        AreaMaskEncoded(["label"], num_classes=num_classes, spatial_size=size, mode=encoding, output_key="cond"),
        Resized(["label"], spatial_size=size, mode="nearest-exact"),
        CastToTyped(["label"], dtype=torch.int64),
        EnsureTyped(keys + ["cond"], track_meta=False),
    ]


def sketch_transforms(image_size: Sequence[int] | None, band_height: int | None = None, flip: float = 0.0,
                      table: LabelTable | str | None = "duke_dme", seed: int = 0, **sketch_kwargs: Any) -> Compose:
    """Sketch-conditioned stage chain: ``{"image", "cond", "label"}``.

    The label goes through the same band crop and resize as the image (cached), is flipped with it, and is
    then sketched by :class:`~monai_oct.transforms.sketch.LayerSketchd` at the network's size, with new random
    line widths, deformation and dropped boundaries every time an item is read (the augmentation of Wu et
    al.). ``cond`` is the ``(1, H, W)`` sketch in [-1, 1]; ``label`` the sketch-derived label map (what a
    synthesis from that sketch is labelled with).

    Args:
        image_size: ``[H, W]`` the network sees (the sketch is drawn at this size: line widths are in its pixels).
        band_height: retina band rows, placed from the label (None/0: whole B-scan).
        flip: probability of a left-right flip.
        table: label table (its ``layer_order`` gives the boundaries drawn).
        seed: seed of the random transforms.
        sketch_kwargs: :class:`~monai_oct.transforms.sketch.LayerSketch` arguments (``line_width``, ``deform``,
            ``jitter``, ``drop_prob``, ``fluid_prob``, ``fluid_styles``, ...).

    Returns:
        the ``Compose``.
    """
    chain = Compose([
        bscan_transforms(image_size=image_size, keys=["image", "label"], band_height=band_height, flip=0.0, table=table),
        RandFlipd(["image", "label"], prob=flip, spatial_axis=1),
        LayerSketchd(["label"], sketch_key="cond", sketch_label_key="label", table=table or "duke_dme", **sketch_kwargs),
        SelectItemsd(["image", "cond", "label"]),
    ])
    chain.set_random_state(seed)
    return chain
