"""Datalists: load, write and validate datasets of B-scans and label maps (files are read by :mod:`monai_oct.core.io`).

Datalists are Decathlon style JSON, ``{"train": [{"image": "images/a.png", "label": "labels/a.png"}]}``,
with paths relative to a root (by default the folder holding the JSON). Every error names the file.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from monai_oct.core.io import IMAGE_EXTENSIONS, DataError, check_same_size, read_image, read_json, read_label, write_json
from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable

__all__ = [
    "PATH_KEYS",
    "load_datalist",
    "write_datalist",
    "write_datalists",
    "image_folder_datalist",
    "DatasetReport",
    "check_dataset",
]


#: Item fields that hold file paths: made absolute when a datalist is loaded, relative when it is written
#: (``fov``: the field-of-view mask of a fundus photograph; ``structures``: the structure mask of a multi-band image).
PATH_KEYS = ("image", "label", "fov", "structures")


def _rebase(item: dict[str, Any], change) -> dict[str, Any]:
    return {k: (change(v) if k in PATH_KEYS and isinstance(v, str) else v) for k, v in item.items()}


def load_datalist(
    path: str | os.PathLike, root: str | os.PathLike | None = None, key: str | None = None
) -> list[dict[str, Any]]:
    """Load a Decathlon-style datalist and make its paths absolute.

    Args:
        path: the JSON file.
        root: folder the relative paths start from; default: the JSON file's folder.
        key: which list to read (``"train"``, ``"validation"``, ...); default: ``"train"`` if present,
            else the only list in the file.

    Returns:
        list of dicts whose path fields (:data:`PATH_KEYS`: ``image``, ``label``, ``fov``) are absolute.

    Raises:
        DataError: missing/invalid JSON, unknown key or an empty list.
    """
    path = Path(path)
    data = read_json(path, "datalist")
    if isinstance(data, list):
        items = data
    elif isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if key is None:
            if "train" in lists:
                key = "train"
            elif len(lists) == 1:
                key = next(iter(lists))
            else:
                raise DataError(f"{path}: several lists {sorted(lists)}; say which with key=")
        if key not in lists:
            raise DataError(f"{path}: no list named {key!r} (found {sorted(lists)})")
        items = lists[key]
    else:
        raise DataError(f"{path}: expected a JSON object or list, got {type(data).__name__}")
    if not items:
        raise DataError(f"{path}: the datalist{'' if key is None else f' [{key}]'} is empty")
    base = Path(root) if root is not None else path.parent
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"image": item}
        if not isinstance(item, dict) or "image" not in item:
            raise DataError(f"{path}: item {i} has no 'image' entry: {item!r}")
        out.append(_rebase(item, lambda v: str(base / v)))
    return out


def write_datalist(
    path: str | os.PathLike, items: Sequence[dict[str, Any]], root: str | os.PathLike | None = None, key: str = "train"
) -> None:
    """Write ``items`` as a datalist with paths relative to ``root`` (default: the JSON's folder), atomically."""
    write_datalists(path, {key: items}, root=root)


def write_datalists(
    path: str | os.PathLike, lists: Mapping[str, Sequence[dict[str, Any]]], root: str | os.PathLike | None = None
) -> Path:
    """Write several named lists (``{"train": [...], "validation": [...]}``) as one datalist, atomically.

    Args:
        path: the JSON file.
        lists: list name -> items; the path fields (:data:`PATH_KEYS`) are written relative to ``root``.
        root: folder the written paths are relative to; default: the JSON file's folder.

    Returns:
        ``path``.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    return write_json(path, {key: [_rebase(item, lambda v: os.path.relpath(v, base)) for item in items]
                             for key, items in lists.items()})


def image_folder_datalist(folder: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[dict[str, str]]:
    """A datalist of every image file in ``folder`` (sorted, unlabelled): ``[{"image": path}, ...]``.

    Raises:
        DataError: when the folder is missing or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    exts = tuple(e.lower() for e in extensions)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(exts)})")
    return [{"image": str(p)} for p in files]


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: counts, sizes and one message per bad file."""

    num_items: int = 0
    num_labelled: int = 0
    sizes: Counter = field(default_factory=Counter)
    class_pixels: Counter = field(default_factory=Counter)
    class_images: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, table: LabelTable | None = None) -> str:
        """A human-readable multi-line summary."""
        lines = [f"items: {self.num_items} ({self.num_labelled} with labels)"]
        lines.append("sizes (HxW): " + ", ".join(f"{h}x{w} ({n})" for (h, w), n in sorted(self.sizes.items())))
        if self.class_pixels:
            total = sum(self.class_pixels.values())
            lines.append("class     name          pixels %   in images")
            for c in sorted(self.class_pixels):
                name = "unannotated" if c == UNANNOTATED else (table.classes.get(c, "?") if table else "")
                lines.append(f"{c:>5}     {name:<12} {100 * self.class_pixels[c] / total:8.3f}   {self.class_images[c]}")
        lines.append("OK" if self.ok else f"{len(self.errors)} problem(s):")
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


def check_dataset(
    items: Sequence[dict[str, Any]], table: LabelTable | None = DUKE_DME, num_classes: int | None = None
) -> DatasetReport:
    """Validate a dataset: every file exists and loads, image and label sizes match, label ids are known.

    RGB images pass: training and evaluation read them as grey (the mean of the channels, :func:`~monai_oct.core.io.to_grey`).

    Args:
        items: datalist items with absolute ``image`` (and optional ``label``) paths.
        table: label table the ids must belong to.
        num_classes: if given, overrides the table: ids must lie in ``0..num_classes-1`` (or be 255).

    Returns:
        a :class:`DatasetReport`; its ``errors`` name each bad file. It does not raise for bad files.

    Raises:
        DataError: when ``items`` is empty.
    """
    if not items:
        raise DataError("the datalist is empty")
    if num_classes is not None:
        table = LabelTable(name=f"{num_classes} classes", classes={i: str(i) for i in range(num_classes)})
    rep = DatasetReport(num_items=len(items))
    for item in items:
        try:
            img = read_image(item["image"])
        except DataError as e:
            rep.errors.append(str(e))
            img = None
        if img is not None:
            rep.sizes[img.shape[:2]] += 1
        if "label" not in item:
            continue
        rep.num_labelled += 1
        try:
            lab = read_label(item["label"], table)
        except DataError as e:
            rep.errors.append(str(e))
            continue
        try:
            if img is not None:
                check_same_size(item["image"], img.shape[:2], item["label"], lab.shape)
        except DataError as e:
            rep.errors.append(str(e))
            continue
        ids, counts = np.unique(lab, return_counts=True)
        for i, n in zip(ids.tolist(), counts.tolist()):
            rep.class_pixels[i] += n
            rep.class_images[i] += 1
    return rep
