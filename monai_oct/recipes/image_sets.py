"""Load a dataset to evaluate (real or synthetic) into tensors: datalists, image folders or item lists.

All images come out as float ``(N, C, H, W)`` in [-1, 1], the range of the diffusion models, and at one
common size so that sets can be batched and compared pixel by pixel. ``channels=1`` (the default) reads every
file as grey (RGB averaged); ``channels=None`` keeps the files' own channels: a grey PNG (or an RGB one whose
three channels are equal, a B-scan saved as RGB) 1, a colour PNG 3 (fundus photographs), a ``.npy`` ``(C, H, W)``
C bands (multi-band images, values in ``band_range`` mapped to [-1, 1]). Label maps and structure masks, when the
items have them, come out as int64 ``(N, 1, H, W)`` resized with nearest neighbour so their ids are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_oct.core.io import DataError, check_same_size, read_channels, read_grey, read_label
from monai_oct.core.labels import LabelTable
from monai_oct.recipes.items import resolve_items

__all__ = ["ImageSet", "load_image_set", "read_set_image"]


@dataclass
class ImageSet:
    """Images (and optional label maps) of one dataset, ready for the quality metrics.

    Attributes:
        images: float ``(N, C, H, W)`` in [-1, 1].
        labels: int64 ``(N, 1, H, W)`` or None when the items have no labels.
        paths: image path of each item (for the report).
        source: what was loaded (datalist path / folder), for the report.
        original_sizes: ``(H, W)`` of each file before resizing.
        structures: int64 ``(N, 1, H, W)`` structure masks (e.g. the multi-band phantom's ``structures``) or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    paths: list[str] = field(default_factory=list)
    source: str = ""
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    structures: torch.Tensor | None = None

    @property
    def num_channels(self) -> int:
        """C of the images."""
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def names(self) -> list[str]:
        """File names (without folders) of the images."""
        return [Path(p).name for p in self.paths]

    def subset(self, index: Sequence[int] | torch.Tensor) -> "ImageSet":
        """The items at ``index`` (a new :class:`ImageSet`)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        il = idx.tolist()
        return ImageSet(self.images[idx], None if self.labels is None else self.labels[idx],
                        [self.paths[i] for i in il] if self.paths else [], self.source,
                        [self.original_sizes[i] for i in il] if self.original_sizes else [],
                        None if self.structures is None else self.structures[idx])


def _scale(arr: np.ndarray, where: str) -> np.ndarray:
    """An 8- or 16-bit grey image in [-1, 1]."""
    arr = arr.astype(np.float32)
    top = 65535.0 if arr.max() > 255 else 255.0
    if arr.min() < 0:
        raise DataError(f"{where}: negative intensities; expected 8- or 16-bit images")
    return arr / top * 2.0 - 1.0


def read_set_image(path: str | os.PathLike, channels: int | None = 1,
                   band_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """One image file as float32 ``(C, H, W)`` in [-1, 1].

    Args:
        path: a PNG/TIFF/... (8 or 16 bit) or a ``.npy`` ``(C, H, W)``.
        channels: 1: grey (RGB averaged, a 1-band ``.npy`` as it is); None: the file's own channels (an RGB file whose
            channels are all equal is grey); any other number: the file's own channels, which must be that many.
        band_range: the value range of ``.npy`` bands, mapped to [-1, 1].

    Raises:
        DataError: unreadable files, unknown extensions, ``.npy`` values outside ``band_range``, or a channel count
            other than ``channels`` (each naming the file).
    """
    path = str(path)
    if channels == 1 and not path.lower().endswith(".npy"):
        return _scale(read_grey(path), path)[None]
    arr = read_channels(path)
    if path.lower().endswith(".npy"):
        lo, hi = float(band_range[0]), float(band_range[1])
        if arr.min() < lo or arr.max() > hi:
            raise DataError(f"{path}: band values span [{arr.min():.4g}, {arr.max():.4g}], outside the band range "
                            f"[{lo:g}, {hi:g}]; give the bands' range (band_range / --band-range)")
        arr = (arr - lo) / (hi - lo) * 2.0 - 1.0
    else:
        if arr.shape[0] == 3 and (arr[0] == arr[1]).all() and (arr[0] == arr[2]).all():
            arr = arr[:1]
        arr = _scale(arr, path)
    if channels is not None and arr.shape[0] != channels:
        raise DataError(f"{path}: {arr.shape[0]} channel(s), expected {channels}")
    return arr.astype(np.float32, copy=False)


def _size(image_size: Any) -> tuple[int, int] | None:
    """``(H, W)``, or None for "keep the files' size" (None, 0, ``[0, 0]``, ``"none"``, ``"native"``)."""
    if image_size is None or (isinstance(image_size, str) and image_size.lower() in ("none", "null", "native", "")):
        return None
    if isinstance(image_size, (int, float)):
        return None if int(image_size) == 0 else (int(image_size), int(image_size))
    if all(int(v) == 0 for v in image_size):
        return None
    if len(image_size) != 2 or any(int(v) < 1 for v in image_size):
        raise ValueError(f"image_size must be (H, W) with positive sizes, or 0 / None for the files' size; got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def load_image_set(source: str | os.PathLike | Sequence[dict[str, Any]], key: str | Sequence[str] | None = None,
                   image_size: Sequence[int] | None = None, with_labels: bool = True, limit: int | None = None,
                   table: LabelTable | None = None, seed: int = 0, channels: int | None = 1,
                   structure_key: str | None = None, band_range: Sequence[float] = (0.0, 1.0)) -> ImageSet:
    """Read a dataset into an :class:`ImageSet`.

    Args:
        source: a datalist, a list of them, a dataset folder (``images/`` + ``labels/``), an image or a list of
            item dicts (see :func:`~monai_oct.recipes.items.resolve_items`).
        key: datalist list(s) to read.
        image_size: ``(H, W)`` every image (and label) is resized to (bilinear with antialiasing / nearest).
            None (or 0, ``"native"``) keeps the files' size, which must then be the same for all of them.
        with_labels: read the ``label`` entries (all items must have one, or none).
        limit: keep at most this many items (a seeded random choice, in datalist order).
        table: check label ids against this table.
        seed: seed of the ``limit`` choice.
        channels: see :func:`read_set_image` (1: grey; None: the files' own, which must agree across the set).
        structure_key: item entry holding a structure mask (e.g. ``"structures"``); items without one give a set
            without masks; None: no masks.
        band_range: value range of ``.npy`` bands.

    Returns:
        the loaded set.

    Raises:
        DataError: unreadable files, unknown extensions, sizes or channel counts that differ (naming two files;
            sizes only when ``image_size`` is None), some items with labels (or masks) and some without, or bad
            label ids.
    """
    items = resolve_items(source, key, fields=["image", "label"] + ([structure_key] if structure_key else []))
    if limit is not None and 0 < limit < len(items):
        g = torch.Generator().manual_seed(int(seed))
        keep = sorted(torch.randperm(len(items), generator=g)[:limit].tolist())
        items = [items[i] for i in keep]
    has_lab = ["label" in it for it in items]
    use_labels = with_labels and any(has_lab)
    if use_labels and not all(has_lab):
        missing = items[has_lab.index(False)]["image"]
        raise DataError(f"{source}: some items have labels and some do not (e.g. {missing}); label all or none")
    has_masks = [bool(structure_key) and structure_key in it for it in items]
    if any(has_masks) and not all(has_masks):
        missing = items[has_masks.index(False)]["image"]
        raise DataError(f"{source}: some items have a {structure_key!r} mask and some do not (e.g. {missing})")
    size = _size(image_size)
    imgs, labs, masks, sizes, first = [], [], [], [], None
    for it in items:
        arr = read_set_image(it["image"], channels, band_range)
        hw = tuple(arr.shape[-2:])
        sizes.append(hw)
        t = torch.from_numpy(arr)[None]
        maps = []
        for use, name in ((use_labels, "label"), (all(has_masks), structure_key)):
            if use:
                la = read_label(it[name], table if name == "label" else None)
                check_same_size(it["image"], hw, it[name], la.shape)
                maps.append(torch.from_numpy(la.astype(np.int64))[None, None])
            else:
                maps.append(None)
        if size is not None and hw != size:
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
            maps = [m if m is None else F.interpolate(m.float(), size=size, mode="nearest-exact").long() for m in maps]
        if first is None:
            first = (it["image"], arr.shape)
        elif arr.shape[0] != first[1][0]:
            raise DataError(f"{it['image']}: {arr.shape[0]} channel(s) differ from {first[0]}'s {first[1][0]}; "
                            "every image of a set needs the same channels")
        elif size is None and hw != tuple(first[1][-2:]):
            raise DataError(f"{it['image']}: size {hw} differs from {first[0]} size {tuple(first[1][-2:])}; "
                            "give image_size to resize all images to one size")
        imgs.append(t)
        for store, m in zip((labs, masks), maps):
            if m is not None:
                store.append(m)
    return ImageSet(torch.cat(imgs), torch.cat(labs) if labs else None, [it["image"] for it in items],
                    str(source) if isinstance(source, (str, os.PathLike)) else "<items>", sizes,
                    torch.cat(masks) if masks else None)
