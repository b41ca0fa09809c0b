"""Duke DME (Chiu et al. 2015) readers: the original ``Subject_XX.mat`` files and the PNG layout.

The ``.mat`` files hold ``images`` (rows x cols x B-scans), ``manualLayers1``/``2`` (8 boundaries x cols x
B-scans, 1-based MATLAB row positions, NaN where not annotated) and ``manualFluid1``/``2`` (rows x cols x
B-scans, non-zero inside fluid). A boundary row starts the next region, so with 8 boundaries a column
is split into regions 0..8 (see :data:`monai_oct.core.labels.DUKE_DME`); fluid pixels become class 9.
Columns where any boundary is NaN are *unannotated*: their label is :data:`UNANNOTATED` (255) and
losses and metrics skip them; they are never silently made class 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monai_oct.core.datalist import load_datalist, write_datalist
from monai_oct.core.io import DataError, write_png
from monai_oct.core.labels import DUKE_DME, UNANNOTATED

__all__ = ["DukeBScan", "boundaries_to_label", "read_duke_mat", "load_duke_png_split", "convert_duke_mat"]


@dataclass
class DukeBScan:
    """One annotated B-scan: image (uint8, H x W), label (uint8 class ids, 255 = unannotated), index in the volume."""

    image: np.ndarray
    label: np.ndarray
    index: int


def boundaries_to_label(boundaries: np.ndarray, height: int, fluid: np.ndarray | None = None,
                        fluid_class: int = 9) -> np.ndarray:
    """Turn boundary rows into a class-id map.

    Args:
        boundaries: ``(K, W)`` 1-based row positions of K ordered boundaries (NaN = not annotated).
        height: number of rows H of the B-scan.
        fluid: optional ``(H, W)`` array, non-zero inside fluid.
        fluid_class: class id for fluid pixels.

    Returns:
        ``(H, W)`` uint8 map: row r of a column is in region ``#{k : r >= b_k - 1}``; fluid overrides
        layers; columns with any NaN boundary are :data:`UNANNOTATED`.

    Raises:
        ValueError: when ``boundaries`` is not 2D or ``fluid`` has the wrong shape.
    """
    b = np.asarray(boundaries, dtype=np.float64)
    if b.ndim != 2:
        raise ValueError(f"boundaries must be (K, W), got shape {b.shape}")
    k, w = b.shape
    nan_cols = np.isnan(b).any(axis=0)
    rows = np.arange(height, dtype=np.float64)[:, None, None]  # H x 1 x 1
    starts = np.where(np.isnan(b), np.inf, np.round(b) - 1.0)[None]  # 1 x K x W
    label = (rows >= starts).sum(axis=1).astype(np.uint8)  # H x W
    if fluid is not None:
        fluid = np.asarray(fluid)
        if fluid.shape != (height, w):
            raise ValueError(f"fluid mask shape {fluid.shape} does not match (H, W) = {(height, w)}")
        label[(fluid > 0) & (label > 0) & (label < k)] = fluid_class  # fluid only inside the retina
    label[:, nan_cols] = UNANNOTATED
    return label


def read_duke_mat(path: str | os.PathLike, grader: int = 1, crop_to_annotated: bool = True) -> list[DukeBScan]:
    """Read the annotated B-scans of one Duke DME ``Subject_XX.mat`` file.

    Args:
        path: the ``.mat`` file.
        grader: 1 or 2 (``manualLayers{grader}`` / ``manualFluid{grader}``).
        crop_to_annotated: crop columns to the range where any boundary is annotated (as the
            distributed PNGs are); unannotated columns inside that range stay 255.

    Returns:
        one :class:`DukeBScan` per B-scan that has at least one annotated column.

    Raises:
        DataError: missing file, missing keys or inconsistent shapes (naming the file).
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises several types for corrupt files
        raise DataError(f"{path}: cannot read .mat file ({e})") from e
    lk, fk = f"manualLayers{grader}", f"manualFluid{grader}"
    for key in ("images", lk):
        if key not in mat:
            raise DataError(f"{path}: missing key {key!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
    images = np.asarray(mat["images"])
    layers = np.asarray(mat[lk], dtype=np.float64)
    fluid = np.asarray(mat[fk]) if fk in mat else None
    if images.ndim == 2:
        images = images[..., None]
    if layers.ndim == 2:
        layers = layers[..., None]
    if fluid is not None and fluid.ndim == 2:
        fluid = fluid[..., None]
    h, w, n = images.shape
    if layers.shape[1:] != (w, n) or layers.shape[0] != len(DUKE_DME.layer_order) - 1:
        raise DataError(f"{path}: {lk} has shape {layers.shape}, expected (8, {w}, {n}) for images {images.shape}")
    if fluid is not None and fluid.shape != (h, w, n):
        raise DataError(f"{path}: {fk} has shape {fluid.shape}, expected {(h, w, n)}")
    out = []
    for i in range(n):
        b = layers[:, :, i]
        annotated = ~np.isnan(b).all(axis=0)
        if not annotated.any():
            continue
        f = None if fluid is None else np.nan_to_num(fluid[:, :, i])
        label = boundaries_to_label(b, h, f)
        img = images[:, :, i]
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        if crop_to_annotated:
            cols = np.flatnonzero(annotated)
            sl = slice(cols[0], cols[-1] + 1)
            img, label = img[:, sl], label[:, sl]
        out.append(DukeBScan(image=np.ascontiguousarray(img), label=np.ascontiguousarray(label), index=i))
    return out


def convert_duke_mat(mat_files: list[str | os.PathLike], out_dir: str | os.PathLike, key: str = "train",
                     grader: int = 1) -> Path:
    """Convert ``Subject_XX.mat`` files into the PNG + datalist layout; returns the datalist path."""
    out_dir = Path(out_dir)
    items = []
    for mf in mat_files:
        stem = Path(mf).stem
        for j, scan in enumerate(read_duke_mat(mf, grader=grader)):
            name = f"{stem}_{j:02d}.png"
            write_png(out_dir / key / "images" / name, scan.image)
            write_png(out_dir / key / "labels" / name, scan.label)
            items.append({"image": str(out_dir / key / "images" / name), "label": str(out_dir / key / "labels" / name)})
    dl = out_dir / f"datalist_{key}.json"
    write_datalist(dl, items, root=out_dir, key=key)
    return dl


def load_duke_png_split(data_dir: str | os.PathLike, split: str = "train") -> list[dict[str, str]]:
    """Items of ``duke_dme/datalist_{split}.json`` (the ``../shared/data`` PNG layout), absolute paths."""
    data_dir = Path(data_dir)
    return load_datalist(data_dir / f"datalist_{split}.json", root=data_dir, key=split)
