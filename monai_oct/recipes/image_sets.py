"""Load a dataset to evaluate (real or synthetic) into tensors: datalists, image folders or item lists.

All images come out as float ``(N, 1, H, W)`` in [-1, 1] (grey; RGB files are averaged to grey), the
range of the diffusion models, and at one common size so that sets can be batched and compared
pixel by pixel. Label maps, when the items have them, come out as int64 ``(N, 1, H, W)`` resized with
nearest neighbour so their ids are kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_oct.core.io import DataError, check_same_size, read_grey, read_label
from monai_oct.core.labels import LabelTable
from monai_oct.recipes.items import resolve_items

__all__ = ["ImageSet", "load_image_set"]


@dataclass
class ImageSet:
    """Images (and optional label maps) of one dataset, ready for the quality metrics.

    Attributes:
        images: float ``(N, 1, H, W)`` in [-1, 1].
        labels: int64 ``(N, 1, H, W)`` or None when the items have no labels.
        paths: image path of each item (for the report).
        source: what was loaded (datalist path / folder), for the report.
        original_sizes: ``(H, W)`` of each file before resizing.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    paths: list[str] = field(default_factory=list)
    source: str = ""
    original_sizes: list[tuple[int, int]] = field(default_factory=list)

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
                        [self.original_sizes[i] for i in il] if self.original_sizes else [])


def _scale(arr: np.ndarray, where: str) -> np.ndarray:
    """An 8- or 16-bit grey image in [-1, 1]."""
    arr = arr.astype(np.float32)
    top = 65535.0 if arr.max() > 255 else 255.0
    if arr.min() < 0:
        raise DataError(f"{where}: negative intensities; expected 8- or 16-bit images")
    return arr / top * 2.0 - 1.0


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
                   table: LabelTable | None = None, seed: int = 0) -> ImageSet:
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

    Returns:
        the loaded set.

    Raises:
        DataError: unreadable files, sizes that differ when ``image_size`` is None (naming two files),
            some items with labels and some without, or bad label ids.
    """
    items = resolve_items(source, key, fields=["image", "label"])
    if limit is not None and 0 < limit < len(items):
        g = torch.Generator().manual_seed(int(seed))
        keep = sorted(torch.randperm(len(items), generator=g)[:limit].tolist())
        items = [items[i] for i in keep]
    has_lab = ["label" in it for it in items]
    use_labels = with_labels and any(has_lab)
    if use_labels and not all(has_lab):
        missing = items[has_lab.index(False)]["image"]
        raise DataError(f"{source}: some items have labels and some do not (e.g. {missing}); label all or none")
    size = _size(image_size)
    imgs, labs, sizes, first = [], [], [], None
    for it in items:
        arr = _scale(read_grey(it["image"]), it["image"])
        sizes.append(tuple(arr.shape))
        t = torch.from_numpy(arr)[None, None]
        lab = None
        if use_labels:
            la = read_label(it["label"], table)
            check_same_size(it["image"], arr.shape, it["label"], la.shape)
            lab = torch.from_numpy(la.astype(np.int64))[None, None]
        if size is not None and tuple(arr.shape) != size:
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
            if lab is not None:
                lab = F.interpolate(lab.float(), size=size, mode="nearest-exact").long()
        elif size is None:
            if first is None:
                first = (it["image"], tuple(arr.shape))
            elif tuple(arr.shape) != first[1]:
                raise DataError(f"{it['image']}: size {arr.shape} differs from {first[0]} size {first[1]}; "
                                "give image_size to resize all images to one size")
        imgs.append(t)
        if lab is not None:
            labs.append(lab)
    return ImageSet(torch.cat(imgs), torch.cat(labs) if labs else None, [it["image"] for it in items],
                    str(source) if isinstance(source, (str, os.PathLike)) else "<items>", sizes)
