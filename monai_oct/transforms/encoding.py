"""Mask <-> condition encodings: how a label map enters a diffusion network and how it leaves it.

Two encodings, both in the diffusion range [-1, 1]:

- ``"scalar"``: one channel, class ``k`` of ``C`` becomes the level ``k / (C - 1) * 2 - 1`` (RetiDiff's
  mask DDPM generates such a map; :mod:`monai_oct.transforms.dmc` turns its continuous output back into
  ids).
- ``"onehot"``: ``C`` channels, ``one_hot * 2 - 1`` (+1 in the pixel's class channel, -1 elsewhere).

Unannotated pixels (:data:`~monai_oct.core.labels.UNANNOTATED`, 255) are no class, so neither
encoding may pretend to know them. The default (``unannotated=None``) is, per mode:

- onehot -> ``"neutral"``: 0.0 in every channel, exactly half-way between "present" (+1) and
  "absent" (-1) for every class, i.e. no evidence either way. A network conditioned on it sees "unknown",
  not vitreous.
- scalar -> ``"nearest"``: the id of the nearest annotated pixel (Euclidean, per sample). A single
  channel has no "unknown" value: every value is some class level (0.0 is the level half-way up the
  table, e.g. between INL and OPL for Duke), so a neutral value would paint a stripe of a wrong middle
  class. Retinal layers are continuous across A-scans, so the neighbouring annotation is the best
  guess. A sample without any annotated pixel falls back to 0.0.

Either can be chosen explicitly (``"neutral"`` / ``"nearest"``). Decoding never produces 255.

A label map may be finer than the network (labels at the written size, e.g. a 224x512 band, the image UNet at
64x128): :func:`encode_mask_resized` (:class:`AreaMaskEncode`, :class:`AreaMaskEncoded`) encodes the map at its
own resolution and area-averages the encoding down to the network's size, so a boundary between two of the
network's pixels shows as an intermediate value in the pixel it crosses (never a coarse map, whose boundaries are
quantised to the coarse rows, see DESIGN "Label precision beats image resolution").
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy.ndimage import distance_transform_edt

from monai_oct.core.labels import UNANNOTATED
from monai_oct.transforms.dmc import DiscreteMaskClustering, nearest_level_decode
from monai_oct.transforms.utils import (
    MODES,
    as_tensor,
    check_classes,
    check_mode,
    integer_ids,
    scalar_levels,
    split_shape,
)

__all__ = [
    "MODES",
    "condition_channels",
    "scalar_levels",
    "encode_mask",
    "area_resize",
    "decode_mask",
    "encode_mask_resized",
    "MaskEncode",
    "MaskEncoded",
    "AreaMaskEncode",
    "AreaMaskEncoded",
    "MaskDecode",
    "MaskDecoded",
]

_UNANNOTATED_POLICIES = ("neutral", "nearest")


def condition_channels(num_classes: int, mode: str) -> int:
    """Number of channels a label map occupies once encoded.

    Args:
        num_classes: C, class ids ``0 .. C-1``.
        mode: ``"scalar"`` or ``"onehot"``.

    Returns:
        1 for ``"scalar"``, C for ``"onehot"``.

    Raises:
        ValueError: for an unknown mode or ``num_classes < 2``.
    """
    return 1 if check_mode(mode) == "scalar" else check_classes(num_classes)


def _restore_meta(out: torch.Tensor, like) -> torch.Tensor:
    """Give ``out`` the metadata of ``like`` when that is a MetaTensor."""
    if isinstance(like, MetaTensor):
        return MetaTensor(out, meta=like.meta, applied_operations=like.applied_operations)
    return out


def _check_ids(lab: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mask of unannotated pixels; raises for any id that is neither a class nor UNANNOTATED."""
    ids = torch.unique(lab)
    bad = [int(i) for i in ids if not (0 <= i < num_classes) and i != UNANNOTATED]
    if bad:
        raise ValueError(
            f"label ids {bad} are outside the classes 0..{num_classes - 1} ({UNANNOTATED} = unannotated is allowed)"
        )
    if num_classes > UNANNOTATED:  # 255 is then a real class id
        return torch.zeros_like(lab, dtype=torch.bool)
    return lab == UNANNOTATED


def _fill_nearest(lab: torch.Tensor, unannotated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace unannotated pixels by the id of the nearest annotated pixel of the same 2D sample.

    Returns the filled ids (batch ``(N, H, W)``) and a mask of samples that had no annotation at all.
    """
    lab_np, un_np = lab.cpu().numpy().copy(), unannotated.cpu().numpy()
    empty = np.zeros(lab_np.shape[0], dtype=bool)
    for i in range(lab_np.shape[0]):
        if not un_np[i].any():
            continue
        if un_np[i].all():
            empty[i] = True
            lab_np[i] = 0
            continue
        _, (rr, cc) = distance_transform_edt(un_np[i], return_indices=True)
        lab_np[i] = lab_np[i][rr, cc]
    return torch.as_tensor(lab_np, device=lab.device), torch.as_tensor(empty, device=lab.device)


def encode_mask(label, num_classes: int, mode: str = "onehot", unannotated: str | None = None) -> torch.Tensor:
    """Encode an integer label map as a condition in [-1, 1].

    Args:
        label: class ids, shape ``(1, H, W)`` or ``(B, 1, H, W)``; tensor, MetaTensor or ndarray; float
            dtypes are accepted when every value is integral.
        num_classes: C, valid ids ``0 .. C-1`` (plus 255 = unannotated).
        mode: ``"scalar"`` (1 channel, ``id / (C-1) * 2 - 1``) or ``"onehot"`` (C channels, ``one_hot * 2 - 1``).
        unannotated: what 255 pixels become: ``"neutral"`` (0.0 in every channel) or ``"nearest"`` (the id
            of the nearest annotated pixel); None picks ``"neutral"`` for onehot and ``"nearest"`` for
            scalar (see the module docstring for why).

    Returns:
        float32 tensor ``(ch, H, W)`` or ``(B, ch, H, W)`` with ``ch = condition_channels(C, mode)``, on the
        label's device (metadata kept for a MetaTensor).

    Raises:
        ValueError: for a bad shape, mode or policy, non-integer values, or ids outside ``0..C-1`` other
            than 255 (the message lists the offending ids).
    """
    check_mode(mode)
    num_classes = check_classes(num_classes)
    policy = unannotated or ("neutral" if mode == "onehot" else "nearest")
    if policy not in _UNANNOTATED_POLICIES:
        raise ValueError(f"unknown unannotated policy {unannotated!r}; expected one of {_UNANNOTATED_POLICIES}")
    src = label
    lab = as_tensor(label)
    batch = split_shape(lab.shape, 1, "label map")
    lab = integer_ids(lab)
    lab = lab[:, 0] if batch else lab  # (N, H, W); N = B or 1
    un = _check_ids(lab, num_classes)
    neutral = un
    if un.any() and policy == "nearest":
        lab, empty = _fill_nearest(lab, un)
        neutral = un & empty[:, None, None]
    safe = torch.where(neutral, torch.zeros_like(lab), lab)  # placeholder id; overwritten below where neutral
    if mode == "scalar":
        out = (safe.float() / (num_classes - 1) * 2.0 - 1.0)[:, None]  # (N, 1, H, W)
    else:
        out = torch.nn.functional.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * 2.0 - 1.0
    if neutral.any():
        out = torch.where(neutral[:, None], torch.zeros((), dtype=out.dtype, device=out.device), out)
    out = out if batch else out[0]
    return _restore_meta(out, src)


def _check_size(spatial_size) -> tuple[int, int]:
    """``spatial_size`` as ``(H, W)`` of positive ints; raises ValueError naming the value otherwise."""
    try:
        size = tuple(int(s) for s in spatial_size)
        ok = len(size) == 2 and all(s > 0 and s == v for s, v in zip(size, spatial_size))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"spatial_size must be two positive integers [H, W], got {spatial_size!r}")
    return size


def encode_mask_resized(label, num_classes: int, spatial_size: Sequence[int], mode: str = "onehot",
                        unannotated: str | None = None) -> torch.Tensor:
    """Encode a label map at its own resolution, then area-resize the encoding to ``spatial_size``.

    The condition of a network smaller than the label map: each output pixel is the mean of the encoded label
    pixels it covers (``torch.nn.functional.interpolate(mode="area")``), so a one-hot boundary that falls inside
    an output pixel gives that pixel the fraction of each class (strictly between -1 and 1) instead of moving
    the boundary to a pixel edge. Unannotated pixels enter the mean as their encoding (0.0 for onehot/neutral).
    With the scalar encoding the mean of two class levels is the level of some third class (between NFL and
    INL lies GCL-IPL's level): allowed, as the network sees it, but only onehot keeps "a mix of classes a and
    b" apart from "class c". A ``spatial_size`` larger than the label repeats pixels (area = nearest when
    enlarging): a label coarser than the network adds no precision.

    Args:
        label: class ids ``(1, h, w)`` or ``(B, 1, h, w)`` (as :func:`encode_mask`).
        num_classes: C.
        spatial_size: ``[H, W]`` of the condition.
        mode: ``"scalar"`` or ``"onehot"``.
        unannotated: ``"neutral"``, ``"nearest"`` or None (per-mode default, see :func:`encode_mask`).

    Returns:
        float32 ``(ch, H, W)`` or ``(B, ch, H, W)`` in [-1, 1]; exactly :func:`encode_mask` (metadata included)
        when ``(h, w) == (H, W)``, else a plain tensor (the label's spatial metadata no longer applies).

    Raises:
        ValueError: for a ``spatial_size`` that is not two positive integers, or as :func:`encode_mask`.
    """
    size = _check_size(spatial_size)
    enc = encode_mask(label, num_classes, mode, unannotated)
    return enc if tuple(enc.shape[-2:]) == size else area_resize(as_tensor(enc), size)


def area_resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average an encoded condition ``(ch, H, W)`` or ``(B, ch, H, W)`` to ``size`` (unchanged when it has
    that size): the one resize of a condition to a coarser network, pixel (:func:`encode_mask_resized`) or latent
    (:func:`monai_oct.engines.latent.pool_condition`)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    out = torch.nn.functional.interpolate(x if x.ndim == 4 else x[None], size=size, mode="area")
    return out if x.ndim == 4 else out[0]


def decode_mask(x, num_classes: int, mode: str = "onehot", method: str | None = None,
                dmc_kwargs: Mapping | None = None) -> torch.Tensor:
    """Turn a (generated) condition back into integer class ids.

    Args:
        x: onehot: ``(C, H, W)`` or ``(B, C, H, W)``; scalar: ``(1, H, W)`` or ``(B, 1, H, W)``; tensor or ndarray.
        num_classes: C.
        mode: the encoding ``x`` is in.
        method: onehot: ``"argmax"`` (default, the only one); scalar: ``"nearest"`` (default, nearest nominal
            level) or ``"dmc"`` (:class:`~monai_oct.transforms.dmc.DiscreteMaskClustering`, K-means on the
            sample's values, robust to a shifted or contrast-changed output).
        dmc_kwargs: extra arguments of ``DiscreteMaskClustering`` for ``method="dmc"``.

    Returns:
        int64 tensor ``(1, H, W)`` or ``(B, 1, H, W)`` with ids in ``0..C-1`` (never 255), on ``x``'s device.
        An all-neutral (0.0) onehot pixel decodes to class 0 (argmax of a tie).

    Raises:
        ValueError: for a bad shape, mode or method.
    """
    check_mode(mode)
    num_classes = check_classes(num_classes)
    src = x
    t = as_tensor(x)
    if mode == "onehot":
        method = method or "argmax"
        if method != "argmax":
            raise ValueError(f"onehot masks decode with method 'argmax', got {method!r}")
        batch = split_shape(t.shape, num_classes, "onehot condition")
        out = torch.argmax(t, dim=1 if batch else 0, keepdim=True).long()
        return _restore_meta(out, src)
    method = method or "nearest"
    if method == "nearest":
        return nearest_level_decode(x, num_classes)
    if method == "dmc":
        return DiscreteMaskClustering(num_classes, **dict(dmc_kwargs or {}))(x)
    raise ValueError(f"scalar masks decode with method 'nearest' or 'dmc', got {method!r}")


def _output_keys(keys: Sequence[Hashable], output_key) -> list:
    if output_key is None:
        return list(keys)
    out = [output_key] if isinstance(output_key, (str, bytes)) or not isinstance(output_key, Sequence) else list(output_key)
    if len(out) != len(keys):
        raise ValueError(f"output_key must name one key per input key: keys {list(keys)}, output_key {out}")
    return out


class MaskEncode(Transform):
    """Encode a label map as a condition in [-1, 1] (see :func:`encode_mask`).

    Args:
        num_classes: C.
        mode: ``"scalar"`` or ``"onehot"``.
        unannotated: ``"neutral"``, ``"nearest"`` or None (per-mode default).

    Returns (``__call__``): the float32 condition tensor.

    Raises:
        ValueError: as :func:`encode_mask`.
    """

    def __init__(self, num_classes: int, mode: str = "onehot", unannotated: str | None = None) -> None:
        self.num_classes = check_classes(num_classes)
        self.mode = check_mode(mode)
        self.unannotated = unannotated

    def __call__(self, label) -> torch.Tensor:
        """Encode ``label`` (``(1, H, W)`` or ``(B, 1, H, W)``)."""
        return encode_mask(label, self.num_classes, self.mode, self.unannotated)


class MaskEncoded(MapTransform):
    """Dictionary twin of :class:`MaskEncode`.

    Args:
        keys: label keys to encode.
        num_classes: C.
        mode: ``"scalar"`` or ``"onehot"``.
        output_key: write the encoding under this key (one per input key) and keep the label, e.g.
            ``"label" -> "cond"``; None replaces the label.
        unannotated: ``"neutral"``, ``"nearest"`` or None (per-mode default).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: when ``output_key`` does not name one key per input key, or as :func:`encode_mask`.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, mode: str = "onehot", output_key=None,
                 unannotated: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encoder = MaskEncode(num_classes, mode, unannotated)
        self.output_keys = _output_keys(self.keys, output_key)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.encoder(d[key])
        return d


class MaskDecode(Transform):
    """Decode a condition back to integer class ids (see :func:`decode_mask`).

    Args:
        num_classes: C.
        mode: the encoding of the input.
        method: ``"argmax"`` (onehot), ``"nearest"`` or ``"dmc"`` (scalar); None picks the first.
        dmc_kwargs: extra arguments of ``DiscreteMaskClustering``.

    Returns (``__call__``): int64 ids ``(1, H, W)`` or ``(B, 1, H, W)``.

    Raises:
        ValueError: as :func:`decode_mask`.
    """

    def __init__(self, num_classes: int, mode: str = "onehot", method: str | None = None,
                 dmc_kwargs: Mapping | None = None) -> None:
        self.num_classes = check_classes(num_classes)
        self.mode = check_mode(mode)
        allowed = ("argmax",) if mode == "onehot" else ("nearest", "dmc")
        if method is not None and method not in allowed:
            raise ValueError(f"{mode} masks decode with method {allowed}, got {method!r}")
        self.method = method
        self.dmc = None
        if mode == "scalar" and method == "dmc":  # built once: keeps the seed and the settings
            self.dmc = DiscreteMaskClustering(self.num_classes, **dict(dmc_kwargs or {}))

    def __call__(self, x) -> torch.Tensor:
        """Decode ``x``."""
        if self.dmc is not None:
            return self.dmc(x)
        return decode_mask(x, self.num_classes, self.mode, self.method)


class MaskDecoded(MapTransform):
    """Dictionary twin of :class:`MaskDecode`.

    Args:
        keys: condition keys to decode.
        num_classes: C.
        mode: the encoding of the inputs.
        method: ``"argmax"``, ``"nearest"`` or ``"dmc"``; None picks the mode's default.
        output_key: write the ids under this key (one per input key) and keep the condition; None replaces it.
        dmc_kwargs: extra arguments of ``DiscreteMaskClustering``.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, mode: str = "onehot", method: str | None = None,
                 output_key=None, dmc_kwargs: Mapping | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoder = MaskDecode(num_classes, mode, method, dmc_kwargs)
        self.output_keys = _output_keys(self.keys, output_key)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.decoder(d[key])
        return d


class AreaMaskEncode(MaskEncode):
    """Encode a label map at its own resolution and area-resize the encoding (see :func:`encode_mask_resized`).

    Args:
        num_classes: C.
        spatial_size: ``[H, W]`` of the condition (the network's size).
        mode: ``"scalar"`` or ``"onehot"``.
        unannotated: ``"neutral"``, ``"nearest"`` or None (per-mode default).

    Returns (``__call__``): the float32 condition ``(ch, H, W)`` / ``(B, ch, H, W)``.

    Raises:
        ValueError: as :func:`encode_mask_resized`.
    """

    def __init__(self, num_classes: int, spatial_size: Sequence[int], mode: str = "onehot",
                 unannotated: str | None = None) -> None:
        super().__init__(num_classes, mode, unannotated)
        self.spatial_size = _check_size(spatial_size)

    def __call__(self, label) -> torch.Tensor:
        """Encode ``label`` (``(1, h, w)`` or ``(B, 1, h, w)``) at ``spatial_size``."""
        return encode_mask_resized(label, self.num_classes, self.spatial_size, self.mode, self.unannotated)


class AreaMaskEncoded(MaskEncoded):
    """Dictionary twin of :class:`AreaMaskEncode`.

    Args:
        keys: label keys to encode.
        num_classes: C.
        spatial_size: ``[H, W]`` of the condition.
        mode: ``"scalar"`` or ``"onehot"``.
        output_key: write the encoding under this key (one per input key) and keep the label; None replaces it.
        unannotated: ``"neutral"``, ``"nearest"`` or None (per-mode default).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: as :class:`MaskEncoded` and :func:`encode_mask_resized`.
    """

    def __init__(self, keys: KeysCollection, num_classes: int, spatial_size: Sequence[int], mode: str = "onehot",
                 output_key=None, unannotated: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, num_classes, mode, output_key, unannotated, allow_missing_keys)
        self.encoder = AreaMaskEncode(num_classes, spatial_size, mode, unannotated)
