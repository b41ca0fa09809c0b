"""Loading B-scans and label maps with errors that name the file.

MONAI's ``LoadImaged`` wraps a failure in "applying transform ..."; these loaders raise
:class:`monai_oct.core.io.DataError` with the path and the problem, read images as grey (RGB files are
averaged, as ``check-data`` accepts them), check label ids against a :class:`~monai_oct.core.labels.LabelTable`
and check that an image and its label have the same size, all at load time.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from monai_oct.core.io import DataError, check_same_size, read_bands, read_grey, read_image, read_label
from monai_oct.core.labels import LabelTable, get_label_table

__all__ = ["LoadBScan", "LoadBScand", "LoadBands", "LoadBandsd"]


class LoadBScan(Transform):
    """Load an image or label file into a channel-first float32 tensor ``(1, H, W)``.

    Images are grey B-scans by default: an RGB file is read as the mean of its channels
    (:func:`~monai_oct.core.io.read_grey`), so every OCT network sees one channel. ``channels=3`` reads colour
    pictures (fundus photographs) as ``(3, H, W)`` RGB; a grey file is then repeated into the three channels.

    Args:
        is_label: read as a single-channel label map and validate its ids against ``table``.
        table: label table (name or object) for the id check; None skips it.
        channels: image channels, 1 (grey) or 3 (RGB); labels always have one.

    Raises:
        DataError: missing/unreadable file, multi-channel label, or label ids outside the table.
        ValueError: for ``channels`` other than 1 or 3.
    """

    def __init__(self, is_label: bool = False, table: LabelTable | str | None = "duke_dme", channels: int = 1) -> None:
        if int(channels) not in (1, 3):
            raise ValueError(f"image channels must be 1 (grey) or 3 (RGB), got {channels}")
        self.is_label = is_label
        self.table = get_label_table(table) if table is not None else None
        self.channels = int(channels)

    def __call__(self, path: str) -> torch.Tensor:
        if self.is_label or self.channels == 1:
            arr = (read_label(path, self.table) if self.is_label else read_grey(path))[None]
        else:
            arr = read_image(path)
            arr = np.repeat(arr[None], 3, 0) if arr.ndim == 2 else arr[..., :3].transpose(2, 0, 1)
            if arr.shape[0] != 3:
                raise DataError(f"{path}: expected an RGB image, got {arr.shape[0]} channel(s)")
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class LoadBScand(MapTransform):
    """Dictionary twin of :class:`LoadBScan`, which also checks that the loaded images and labels have one size.

    A label map is the per-pixel annotation of its image; resizing the two separately would train on
    misplaced boundaries without any error, so a mismatch stops the load.

    Args:
        keys: keys holding file paths.
        label_keys: which of ``keys`` are label maps (checked against ``table``).
        table: label table for the id check (None skips it).
        channels: channels of the images (1 grey, 3 RGB; :class:`LoadBScan`).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        DataError: as :class:`LoadBScan`, or naming both files and sizes when an image and a label differ in size.
    """

    def __init__(self, keys: KeysCollection, label_keys: Sequence[str] = ("label",), table: LabelTable | str | None = "duke_dme",
                 channels: int = 1, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_loader = LoadBScan(False, channels=channels)
        self.label_loader = LoadBScan(True, table)
        self.label_keys = set(label_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = None  # every array is compared with the first one loaded, naming the image first
        for key in self.key_iterator(d):
            d[key] = (self.label_loader if key in self.label_keys else self.image_loader)(d[key])
            if first is None:
                first = key
                continue
            img, lab = (first, key) if key in self.label_keys else (key, first)
            check_same_size(data[img], d[img].shape, data[lab], d[lab].shape)
        return d


class LoadBands(Transform):
    """Load a multi-band image ``.npy`` file (``(C, H, W)``, e.g. of
    :func:`~monai_oct.phantoms.multiband.write_multiband_dataset`) into a float32 tensor ``(C, H, W)``.

    MONAI's ``LoadImage`` reads ``.npy`` too, but as ``(H, W, ...)``-ordered image data with its own reader
    choice and wraps a failure; here the array is channel first as written and a bad file is named.

    Args:
        num_bands: the band count every file must have (None: any).

    Raises:
        DataError: missing/unreadable file, an array that is not ``(C, H, W)``, non-finite values, or a band
            count other than ``num_bands`` (naming the file).
    """

    def __init__(self, num_bands: int | None = None) -> None:
        self.num_bands = None if num_bands is None else int(num_bands)

    def __call__(self, path: str) -> torch.Tensor:
        arr = read_bands(path)
        if self.num_bands is not None and arr.shape[0] != self.num_bands:
            raise DataError(f"{path}: {arr.shape[0]} band(s), expected {self.num_bands} (image_channels)")
        return torch.from_numpy(np.ascontiguousarray(arr))


class LoadBandsd(MapTransform):
    """Dictionary twin of :class:`LoadBands`; ``mask_keys`` (e.g. ``"structures"``) are single-channel id maps
    (PNG), loaded as ``(1, H, W)`` float32 and checked to have their image's size.

    Args:
        keys: keys holding ``.npy`` image paths.
        mask_keys: keys holding id-map paths (loaded when present in the item).
        num_bands: as :class:`LoadBands`.
        allow_missing_keys: don't raise for missing ``keys``.

    Raises:
        DataError: as :class:`LoadBands`, for an unreadable mask, or naming both files when sizes differ.
    """

    def __init__(self, keys: KeysCollection, mask_keys: Sequence[str] = ("structures",), num_bands: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadBands(num_bands)
        self.mask_keys = tuple(mask_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = None
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
            first = first or key
        for key in self.mask_keys:
            if key in d and isinstance(d[key], str):
                d[key] = torch.from_numpy(read_label(d[key]).astype(np.float32)[None])
                if first is not None:
                    check_same_size(data[first], d[first].shape, data[key], d[key].shape)
        return d
