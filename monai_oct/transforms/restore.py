"""Map a prediction made on a resized (and possibly band-cropped) B-scan back onto the original frame.

A segmentation network sees the B-scan at ``image_size``, either whole or as a retina band of
``band_height`` rows (:class:`~monai_oct.transforms.band.RetinaBandCropd`, which stores the band's first
row). :class:`RestoreBScan` undoes both: it resizes the prediction to the band (or the whole frame) and
places the band at its rows; rows above the band get ``fill_above`` (vitreous) and rows below get
``fill_below`` (choroid). :class:`RecordShaped` stores the original size that restoration needs.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy, convert_to_tensor

from monai_oct.transforms.record import RecordShaped

__all__ = ["RecordShaped", "RestoreBScan", "RestoreBScand"]  # RecordShaped lives in transforms.record


def _as_shape(x) -> tuple[int, int]:
    """``(H, W)`` from a shape as collated by a DataLoader: a tensor, an array, or a list of 1-element tensors."""
    vals = [int(v) for v in convert_to_numpy(x, wrap_sequence=True).reshape(-1)]
    if len(vals) != 2:
        raise ValueError(f"expected an original shape (H, W), got {vals}")
    return vals[0], vals[1]


class RestoreBScan(Transform):
    """Resize a ``(C, h, w)`` prediction to the original B-scan frame ``(C, H, W)``.

    Args:
        band_height: rows of the band the prediction covers (None: it covers the whole frame).
        fill_above: class id for rows above the band.
        fill_below: class id for rows below the band.
        mode: interpolation; default ``"nearest"`` for one channel (a label map), ``"bilinear"`` for
            several (probabilities, which are filled with the one-hot vector of the fill class).

    Returns (``__call__``): a tensor ``(C, H, W)`` of the input's dtype.

    Raises:
        ValueError: for a non 3D input, or a multi-channel input with fewer channels than a fill id.
    """

    def __init__(self, band_height: int | None = None, fill_above: int = 0, fill_below: int = 8,
                 mode: str | None = None) -> None:
        self.band_height = None if band_height in (None, 0) else int(band_height)
        self.fill_above, self.fill_below = int(fill_above), int(fill_below)
        self.mode = mode

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[1:]) == tuple(size):
            return x
        multi = x.shape[0] > 1
        mode = self.mode or ("bilinear" if multi else "nearest")
        dtype = x.dtype
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        out = F.interpolate(x[None].float(), size=tuple(int(s) for s in size), mode=mode, **kw)[0]
        return out.round().to(dtype) if not dtype.is_floating_point else out.to(dtype)

    def _fill(self, c: int, rows: int, width: int, cls: int, like: torch.Tensor) -> torch.Tensor:
        if c == 1:
            return torch.full((1, rows, width), cls, dtype=like.dtype, device=like.device)
        if cls >= c:
            raise ValueError(f"fill class {cls} does not exist in a {c}-channel prediction")
        out = torch.zeros((c, rows, width), dtype=like.dtype, device=like.device)
        out[cls] = 1
        return out

    def __call__(self, pred, original_shape, band_offset=None):
        """Restore ``pred`` to ``original_shape`` (H, W); ``band_offset`` is the band's first row."""
        x = convert_to_tensor(pred, track_meta=False)
        if x.ndim != 3:
            raise ValueError(f"RestoreBScan expects a channel-first (C, h, w) prediction, got shape {tuple(x.shape)}")
        h, w = _as_shape(original_shape)
        if self.band_height is None or band_offset is None:
            out = self._resize(x, (h, w))
        else:
            top = int(convert_to_numpy(band_offset, wrap_sequence=True).reshape(-1)[0])
            band = self._resize(x, (self.band_height, w))
            keep = max(0, min(self.band_height, h - top))
            c = x.shape[0]
            parts = [self._fill(c, top, w, self.fill_above, band)] if top > 0 else []
            parts.append(band[:, :keep])
            if h - top - keep > 0:
                parts.append(self._fill(c, h - top - keep, w, self.fill_below, band))
            out = torch.cat(parts, dim=1)
        return convert_to_dst_type(out, pred)[0]


class RestoreBScand(MapTransform):
    """Dictionary twin of :class:`RestoreBScan`.

    Args:
        keys: predictions to restore.
        shape_key: key of the original ``(H, W)`` (see :class:`RecordShaped`).
        offset_key: key of the band's first row (written by ``RetinaBandCropd``); ignored when
            ``band_height`` is None or the key is absent.
        band_height: rows of the band (None: predictions cover whole B-scans).
        fill_above: class id above the band.
        fill_below: class id below the band.
        mode: interpolation (see :class:`RestoreBScan`).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        KeyError: when ``shape_key`` is missing.
    """

    def __init__(self, keys: KeysCollection, shape_key: str = "original_shape", offset_key: str = "band_offset",
                 band_height: int | None = None, fill_above: int = 0, fill_below: int = 8, mode: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.restore = RestoreBScan(band_height, fill_above, fill_below, mode)
        self.shape_key, self.offset_key = shape_key, offset_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.shape_key not in d:
            raise KeyError(f"RestoreBScand needs the original shape under {self.shape_key!r} (add RecordShaped to the "
                           f"preprocessing); keys present: {sorted(map(str, d))}")
        offset = d.get(self.offset_key)
        for key in self.key_iterator(d):
            d[key] = self.restore(d[key], d[self.shape_key], offset)
        return d
