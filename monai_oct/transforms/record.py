"""Dictionary bookkeeping transforms: record something about one key's value under another key, before it changes.

They have no array form (they exist only to carry a fact through a dictionary chain).
"""

from __future__ import annotations

import os
from typing import Any, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["RecordKeyd", "KeepPathd", "RecordShaped"]


class RecordKeyd(MapTransform):
    """Store ``self.record(value)`` of the first of ``keys`` present under ``out_key`` (nothing when it returns None).

    Args:
        keys: the key(s) looked at; only the first present is used.
        out_key: where the record goes.
        allow_missing_keys: do not raise when no key is present.
    """

    def __init__(self, keys: KeysCollection, out_key: str, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.out_key = out_key

    def record(self, value: Any) -> Any:
        """What to store for ``value`` (None: store nothing)."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = self.record(d[key])
            if value is not None:
                d[self.out_key] = value
            break
        return d


class KeepPathd(RecordKeyd):
    """Copy the file path under ``keys[0]`` to ``path_key`` before loading (for output names and overlays).

    When the value is not a path (already an array, as MONAI Label may pass), an existing ``path_key``
    is left alone.

    Args:
        keys: the image key (first key used).
        path_key: where the path goes.
    """

    def __init__(self, keys: KeysCollection, path_key: str = "image_path", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, path_key, allow_missing_keys)

    def record(self, value: Any) -> str | None:
        """The path as a string, or None for an array."""
        return str(value) if isinstance(value, (str, os.PathLike)) else None


class RecordShaped(RecordKeyd):
    """Store the spatial shape ``(H, W)`` of ``keys[0]`` as an int64 tensor under ``shape_key``.

    It records bookkeeping for :class:`~monai_oct.transforms.restore.RestoreBScand`.

    Args:
        keys: the key whose (channel-first) shape to record; only the first is used.
        shape_key: where to store it.
    """

    def __init__(self, keys: KeysCollection, shape_key: str = "original_shape", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, shape_key, allow_missing_keys)

    def record(self, value: Any) -> torch.Tensor:
        """``value``'s spatial shape (all but the channel axis)."""
        return torch.as_tensor(tuple(value.shape[1:]), dtype=torch.int64)
