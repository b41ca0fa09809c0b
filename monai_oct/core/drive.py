"""DRIVE fundus photographs with RITE artery/vein labels: items, the field-of-view mask and the development split.

The layout (``../shared/data/drive_av``) is ``<root>/training/{images,av,fov}/NN_training.png``: an RGB photograph
(565 x 584, W x H), its artery/vein label map in :data:`~monai_oct.core.labels.FUNDUS_AV` ids (0 background,
1 artery, 2 vein, 3 crossing, 4 uncertain) and its field-of-view mask (0 outside, 255 inside). The 20 training
images are ids 21-40; the DRIVE test half is held out and not read here.

The development split is **by image** and fixed: :data:`DRIVE_VALIDATION_IDS` (the last five ids, 36-40) are the
``validation`` list, the other fifteen (21-35) the ``train`` list; no seed is involved, so every run and every
session scores on the same five images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_oct.core.datalist import check_dataset, write_datalists
from monai_oct.core.io import IMAGE_EXTENSIONS, DataError, check_same_size, read_image
from monai_oct.core.labels import FUNDUS_AV

__all__ = ["DRIVE_FOLDERS", "DRIVE_VALIDATION_IDS", "drive_items", "split_drive", "read_fov", "write_drive_datalist"]

#: Sub-folders of ``<root>/<half>`` holding the photographs, the A/V label maps and the field-of-view masks.
DRIVE_FOLDERS = {"image": "images", "label": "av", "fov": "fov"}

#: Image ids of the development split's validation list: the last five of the training half.
DRIVE_VALIDATION_IDS = (36, 37, 38, 39, 40)

_NAME = re.compile(r"^(\d+)_(training|test)$")


def _find(folder: Path, stem: str) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    raise DataError(f"{folder / (stem + '.png')}: file not found (no {stem}.* with an image extension in {folder})")


def drive_items(root: str | os.PathLike, half: str = "training") -> list[dict[str, Any]]:
    """The items of one DRIVE half, sorted by image id: ``{"image", "label", "fov", "id"}`` with absolute paths.

    Args:
        root: the ``drive_av`` folder (holding ``training/``), or the half's folder itself.
        half: ``"training"`` (the only half here; ``"test"`` is held out).

    Returns:
        one item per photograph in ``<root>/<half>/images`` named ``NN_<half>.<ext>``.

    Raises:
        DataError: naming the missing folder or file (a photograph without its label map or FOV mask).
    """
    root = Path(root)
    base = root / half if (root / half).is_dir() or not (root / DRIVE_FOLDERS["image"]).is_dir() else root
    for key, sub in DRIVE_FOLDERS.items():
        if not (base / sub).is_dir():
            raise DataError(f"{base / sub}: folder not found (a DRIVE half holds {', '.join(DRIVE_FOLDERS.values())})")
    items = []
    for p in sorted((base / DRIVE_FOLDERS["image"]).iterdir()):
        m = _NAME.match(p.stem)
        if not (p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and m):
            continue
        item: dict[str, Any] = {"image": str(p)}
        for key in ("label", "fov"):
            item[key] = str(_find(base / DRIVE_FOLDERS[key], p.stem))
        item["id"] = int(m.group(1))
        items.append(item)
    if not items:
        raise DataError(f"{base / DRIVE_FOLDERS['image']}: no photographs named NN_{half}.png")
    return sorted(items, key=lambda it: it["id"])


def split_drive(items: Sequence[dict[str, Any]], validation_ids: Sequence[int] = DRIVE_VALIDATION_IDS
                ) -> dict[str, list[dict[str, Any]]]:
    """Split DRIVE items by image into ``{"train": ..., "validation": ...}`` (default 15 / 5: ids 36-40 validate).

    Args:
        items: :func:`drive_items`.
        validation_ids: image ids of the validation list.

    Raises:
        DataError: when a validation id is not among the items.
    """
    ids = {int(it["id"]) for it in items}
    missing = sorted(set(int(i) for i in validation_ids) - ids)
    if missing:
        raise DataError(f"validation images {missing} are not in the DRIVE items (ids {sorted(ids)})")
    val = set(int(i) for i in validation_ids)
    return {"train": [it for it in items if it["id"] not in val], "validation": [it for it in items if it["id"] in val]}


def read_fov(path: str | os.PathLike) -> np.ndarray:
    """Read a field-of-view mask as an ``H x W`` bool array (True inside).

    Raises:
        DataError: naming the file when it is missing, unreadable, not single channel or holds values other
            than two levels (0 and 255, or 0 and 1).
    """
    arr = read_image(path)
    if arr.ndim != 2:
        raise DataError(f"{path}: a field-of-view mask must be single channel, got shape {arr.shape}")
    values = set(np.unique(arr).tolist())
    if not values <= {0, 255} and not values <= {0, 1}:
        raise DataError(f"{path}: a field-of-view mask holds 0 and 255 (or 0 and 1), got values {sorted(values)[:10]}")
    return arr > 0


def write_drive_datalist(root: str | os.PathLike, out: str | os.PathLike,
                         validation_ids: Sequence[int] = DRIVE_VALIDATION_IDS, check: bool = True) -> Path:
    """Write ``<out>/datalist.json``: the DRIVE training half as ``train`` / ``validation`` lists of
    ``{"image", "label", "fov", "id"}`` (paths relative to ``out``), split by :func:`split_drive`.

    Args:
        root: the ``drive_av`` folder.
        out: output folder (created).
        validation_ids: image ids of the validation list (default 36-40).
        check: read every file first: photographs, label ids in :data:`FUNDUS_AV`, FOV masks, equal sizes.

    Returns:
        the datalist path.

    Raises:
        DataError: naming the first bad file (missing, unreadable, unknown label ids, size mismatch); nothing
            is written then.
    """
    items = drive_items(root)
    lists = split_drive(items, validation_ids)
    if check:
        report = check_dataset(items, table=FUNDUS_AV)
        if not report.ok:
            raise DataError(report.errors[0])
        for it in items:
            check_same_size(it["image"], read_image(it["image"]).shape[:2], it["fov"], read_fov(it["fov"]).shape)
    out = Path(out)
    return write_datalists(out / "datalist.json", lists, root=out)
