"""Write predicted label maps as PNG and/or NIfTI files, atomically, named after the input image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy

from monai_oct.core.io import atomic_path, write_png

__all__ = ["SaveLabelMap", "SaveLabelMapd"]

_FORMATS = ("png", "nii.gz", "nii")


class SaveLabelMap(Transform):
    """Save a ``(1, H, W)`` or ``(H, W)`` map of class ids as ``<output_dir>/<stem><postfix>.<fmt>``.

    PNG files hold the ids as 8-bit grey values (rows = image rows); NIfTI files hold an ``(H, W)``
    uint8 volume with an identity affine (B-scan pixel spacing is not known to the pipeline).

    Args:
        output_dir: folder to write into (created).
        formats: any of ``"png"``, ``"nii.gz"``, ``"nii"``.
        postfix: appended to the input file's stem (``"_seg"``).

    Returns (``__call__(label, name)``): the list of written paths.

    Raises:
        ValueError: unknown format, multi-channel input or ids outside 0..255.
    """

    def __init__(self, output_dir: str | os.PathLike, formats: Sequence[str] = ("png", "nii.gz"), postfix: str = "_seg") -> None:
        formats = [formats] if isinstance(formats, str) else list(formats)
        bad = [f for f in formats if f not in _FORMATS]
        if bad:
            raise ValueError(f"unknown label map formats {bad}; choose from {_FORMATS}")
        self.output_dir, self.formats, self.postfix = Path(output_dir), formats, postfix

    def __call__(self, label, name: str) -> list[str]:
        arr = convert_to_numpy(label)
        if arr.ndim == 3:
            if arr.shape[0] != 1:
                raise ValueError(f"{name}: expected a single-channel label map, got shape {arr.shape}")
            arr = arr[0]
        if arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2D label map, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{name}: label ids must lie in 0..255, got {arr.min()}..{arr.max()}")
        arr = arr.astype(np.uint8)
        stem = Path(str(name)).name
        for ext in (".nii.gz", ".png", ".nii", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        written = []
        for fmt in self.formats:
            path = self.output_dir / f"{stem}{self.postfix}.{fmt}"
            if fmt == "png":
                write_png(path, arr)
            else:
                import nibabel as nib

                with atomic_path(path) as tmp:  # the temporary name keeps .nii / .nii.gz for nibabel
                    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp))
            written.append(str(path))
        return written


class SaveLabelMapd(MapTransform):
    """Dictionary twin of :class:`SaveLabelMap`; the file name comes from ``name_key`` (the input image path).

    Args:
        keys: label maps to save.
        output_dir: folder to write into.
        name_key: key holding the input image's path (file stem of the output).
        formats: output formats.
        postfix: appended to the stem.
        output_key: where the written paths are stored in the data (None: not stored).

    Raises:
        KeyError: when ``name_key`` is missing.
    """

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, name_key: str = "image_path",
                 formats: Sequence[str] = ("png", "nii.gz"), postfix: str = "_seg", output_key: str | None = "saved",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.saver = SaveLabelMap(output_dir, formats, postfix)
        self.name_key, self.output_key = name_key, output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.name_key not in d:
            raise KeyError(f"SaveLabelMapd needs the image path under {self.name_key!r}; keys: {sorted(map(str, d))}")
        name = d[self.name_key]
        written = []
        for key in self.key_iterator(d):
            written += self.saver(d[key], str(name))
        if self.output_key:
            d[self.output_key] = written
        return d
