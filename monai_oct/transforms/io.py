"""Loading B-scans and label maps with errors that name the file.

MONAI's ``LoadImaged`` wraps a failure in "applying transform ..."; these loaders raise
:class:`monai_oct.core.io.DataError` with the path and the problem, and check label ids
against a :class:`~monai_oct.core.labels.LabelTable` at load time.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from monai_oct.core.io import read_image, read_label
from monai_oct.core.labels import LabelTable, get_label_table

__all__ = ["LoadBScan", "LoadBScand"]


class LoadBScan(Transform):
    """Load an image or label file into a channel-first float32 tensor ``(C, H, W)``.

    Args:
        is_label: read as a single-channel label map and validate its ids against ``table``.
        table: label table (name or object) for the id check; None skips it.

    Raises:
        DataError: missing/unreadable file, multi-channel label, or label ids outside the table.
    """

    def __init__(self, is_label: bool = False, table: LabelTable | str | None = "duke_dme") -> None:
        self.is_label = is_label
        self.table = get_label_table(table) if table is not None else None

    def __call__(self, path: str) -> torch.Tensor:
        arr = read_label(path, self.table) if self.is_label else read_image(path)
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        return torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))


class LoadBScand(MapTransform):
    """Dictionary twin of :class:`LoadBScan`.

    Args:
        keys: keys holding file paths.
        label_keys: which of ``keys`` are label maps (checked against ``table``).
        table: label table for the id check (None skips it).
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, label_keys: Sequence[str] = ("label",), table: LabelTable | str | None = "duke_dme",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_loader = LoadBScan(False)
        self.label_loader = LoadBScan(True, table)
        self.label_keys = set(label_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (self.label_loader if key in self.label_keys else self.image_loader)(d[key])
        return d
