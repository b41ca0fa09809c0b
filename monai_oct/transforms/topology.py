"""Topology-aware decoding of label maps: the most agreeing anatomically valid map, column by column.

RetiDiff's stage 2 samples a label map with a mask DDPM and turns it into class ids with Discrete Mask
Clustering (:mod:`monai_oct.transforms.dmc`): every pixel independently gets the class of its nearest
cluster centre. Nothing in that makes the map anatomically valid: a generated column may run NFL, INL, GCL-IPL
(a reversal), hold fluid in the vitreous, or a one-pixel fluid speck (measured: only 12.7 % of the columns of
the mask DDPM + DMC maps of the mini benchmark were valid). :class:`LayerOrderDecode` adds what DMC lacks, the
validity rule of :mod:`monai_oct.metrics.plausibility`, as a constraint:

1. **per column, a dynamic programme over rows** (a Viterbi path) whose state is the layer in
   ``table.layer_order``: the state never decreases going down the column (layers may be skipped, e.g. at the
   fovea), and the path maximises the summed score of the states' classes. Pathological classes (fluid) are no
   state: a row whose state is a retinal layer (not ``background``) takes the best fluid class instead where
   that fluid score beats the layer's, so fluid can only lie inside the retina (fluid seen in the vitreous is
   dropped, unless the vitreous between it and the retina is thinner than the fluid: then moving the top of the
   retina up agrees more with the scores, and the path does that). If that would leave a column's
   retina all fluid, its least fluid-like row keeps its layer (the rule needs one retinal pixel per column
   holding fluid).
2. **no specks**: 4-connected fluid components smaller than ``min_fluid`` pixels are given back to the layer
   the path put under them (``scipy.ndimage.label`` + a size count: MONAI's ``RemoveSmallObjects`` would
   need scikit-image, no dependency of this package, and sets the pixels to 0 instead of the layer below).

The input is either per-class scores ``(C, H, W)`` (a one-hot DDPM output in [-1, 1], logits, log
probabilities; logits and their log-softmax give the same map, as they differ by a per-pixel constant) or
class ids ``(1, H, W)`` (scores = their one-hot encoding, so the result is the valid map that changes the
fewest pixels; an already valid map without specks comes back unchanged). A scalar-encoded mask DDPM sample
is first turned into ids by DMC, then decoded here as ids. The DP is vectorised over columns (numpy over
rows x states), so a 224 x 512 map with 9 layers takes a few tens of milliseconds.

What the decoding changed is reported: ``LayerOrderDecode.last_report`` after each call (and
``LayerOrderDecoded`` writes it under ``<key>_decoding``): pixels and columns changed against the input ids
(scores: their plain argmax), and the fluid pixels of the input that are no fluid in the output (outside the
retina, or specks).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable, get_label_table

__all__ = ["layer_order_decode", "merge_decoding_reports", "LayerOrderDecode", "LayerOrderDecoded"]

_COUNTS = ("maps", "pixels", "pixels_changed", "columns", "columns_changed", "fluid_pixels_removed")


def _viterbi_columns(emit: np.ndarray) -> np.ndarray:
    """Best non-decreasing state path of every column.

    Args:
        emit: ``(H, K, W)`` score of state ``k`` at row ``r`` of column ``w``.

    Returns:
        int64 ``(H, W)`` states, non-decreasing down each column, maximising the summed score.
    """
    h, k, w = emit.shape
    ks = np.arange(k)[:, None]
    back = np.empty((h, k, w), dtype=np.int8 if k < 128 else np.int64)
    value = emit[0].copy()
    for r in range(1, h):
        best = np.maximum.accumulate(value, axis=0)              # best previous value over states j <= k
        back[r] = np.maximum.accumulate(np.where(value == best, ks, 0), axis=0)   # last j attaining it
        value = emit[r] + best
    state = np.empty((h, w), dtype=np.int64)
    cols = np.arange(w)
    state[-1] = np.argmax(value, axis=0)
    for r in range(h - 1, 0, -1):
        state[r - 1] = back[r, state[r], cols]
    return state


def layer_order_decode(scores: np.ndarray, table: LabelTable = DUKE_DME, min_fluid: int = 16) -> np.ndarray:
    """The valid label map that agrees most with per-class ``scores`` (see the module docstring).

    Args:
        scores: float ``(C, H, W)``, one score per class of ``table`` (higher = more likely).
        table: label table whose ``layer_order``, ``background`` and ``pathological`` define validity.
        min_fluid: fluid components with fewer pixels are given back to the layer under them (0/1: keep all).

    Returns:
        int64 ``(H, W)`` class ids; every column is valid by :func:`~monai_oct.metrics.plausibility.column_validity`.

    Raises:
        ValueError: for a table without ``layer_order`` or scores whose channels are not the table's classes.
    """
    if not table.layer_order:
        raise ValueError(f"label table {table.name!r} has no layer_order; layer-order decoding needs one")
    if scores.ndim != 3 or scores.shape[0] != table.num_classes:
        raise ValueError(f"scores must be (C={table.num_classes}, H, W) for table {table.name!r}, "
                         f"got shape {tuple(scores.shape)}")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.asarray(table.layer_order, dtype=np.int64)
    retinal = np.array([c not in table.background for c in order])
    emit = scores[order].transpose(1, 0, 2).copy()                     # (H, K, W)
    path = list(table.pathological)
    if path:
        fluid_score = scores[path].max(0)                              # (H, W)
        fluid_id = np.asarray(path, dtype=np.int64)[scores[path].argmax(0)]
        emit[:, retinal] = np.maximum(emit[:, retinal], fluid_score[:, None])
    state = _viterbi_columns(emit)
    layer = order[state]
    label = layer.copy()
    if not path:
        return label
    layer_score = np.take_along_axis(scores[order], state[None], 0)[0]
    in_retina = retinal[state]
    fluid = in_retina & (fluid_score > layer_score)
    # the rule wants a retinal-layer pixel in a column holding fluid: keep the least fluid-like row a layer
    all_fluid = in_retina.any(0) & ~(in_retina & ~fluid).any(0)
    if all_fluid.any():
        margin = np.where(fluid, layer_score - fluid_score, -np.inf)
        cols = np.nonzero(all_fluid)[0]
        fluid[margin[:, cols].argmax(0), cols] = False
    label[fluid] = fluid_id[fluid]
    if min_fluid > 1:
        for p in path:
            comp, n = ndimage.label(label == p)
            if n:
                small = np.bincount(comp.ravel(), minlength=n + 1) < int(min_fluid)
                small[0] = False
                speck = small[comp]
                label[speck] = layer[speck]
    return label


def merge_decoding_reports(*reports: Mapping[str, Any] | None) -> dict[str, Any]:
    """Sum decoding reports (of maps, batches or runs) and recompute their fractions.

    Args:
        reports: ``last_report`` dicts of :class:`LayerOrderDecode` (None entries are skipped).

    Returns:
        ``{"maps", "pixels", "pixels_changed", "columns", "columns_changed", "fluid_pixels_removed",
        "changed_fraction", "columns_changed_fraction"}``.
    """
    total = {k: 0 for k in _COUNTS}
    for rep in reports:
        for k in _COUNTS:
            total[k] += int((rep or {}).get(k, 0))
    total["changed_fraction"] = total["pixels_changed"] / total["pixels"] if total["pixels"] else 0.0
    total["columns_changed_fraction"] = total["columns_changed"] / total["columns"] if total["columns"] else 0.0
    return total


class LayerOrderDecode(Transform):
    """Decode scores or ids into the most agreeing anatomically valid label map (see the module docstring).

    Args:
        table: label table (or its name) whose ``layer_order``, ``background`` and ``pathological`` define validity.
        min_fluid: fluid components smaller than this many pixels are given back to the layer (0/1: keep all).

    Returns (``__call__``): int64 ids ``(1, H, W)`` or ``(B, 1, H, W)``, same container (tensor on the input's
    device, or ndarray) as the input. ``last_report`` then holds what changed, summed over the call's maps
    (:func:`merge_decoding_reports` keys).

    Raises:
        ValueError: for a shape other than ``(C, H, W)`` / ``(1, H, W)`` (optionally with a batch axis), or ids
            outside the table (``UNANNOTATED`` pixels are allowed: they carry no evidence and are filled, counted
            as changed).
    """

    def __init__(self, table: LabelTable | str = DUKE_DME, min_fluid: int = 16) -> None:
        self.table = get_label_table(table)
        if not self.table.layer_order:
            raise ValueError(f"label table {self.table.name!r} has no layer_order; layer-order decoding needs one")
        self.min_fluid = int(min_fluid)
        self.last_report: dict[str, Any] = merge_decoding_reports()

    def _scores_and_reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(C, H, W)`` scores and the ``(H, W)`` ids they are compared with, from one map's scores or ids."""
        c = self.table.num_classes
        if x.shape[0] == c and c > 1:
            return x.astype(np.float64), np.argmax(x, 0)
        ids = x[0].astype(np.int64)
        bad = np.setdiff1d(np.unique(ids), np.r_[np.arange(c), UNANNOTATED])
        if bad.size:
            raise ValueError(f"label ids {bad.tolist()} are outside the classes 0..{c - 1} of table {self.table.name!r}")
        onehot = (ids[None] == np.arange(c)[:, None, None]).astype(np.float64)
        return onehot, ids

    def __call__(self, x):
        """Decode ``x`` (see the class docstring); sets ``last_report``."""
        arr = convert_to_numpy(x)
        c = self.table.num_classes
        batched = arr.ndim == 4
        if arr.ndim not in (3, 4) or arr.shape[-3] not in (1, c):
            raise ValueError(f"expected scores (C={c}, H, W) or ids (1, H, W), optionally with a batch axis, "
                             f"got shape {tuple(arr.shape)}")
        maps, reports = [], []
        for one in (arr if batched else arr[None]):
            scores, ref = self._scores_and_reference(one)
            out = layer_order_decode(scores, self.table, self.min_fluid)
            changed = out != ref
            removed = int(sum(((ref == p) & (out != p)).sum() for p in self.table.pathological))
            reports.append({"maps": 1, "pixels": out.size, "pixels_changed": int(changed.sum()), "columns": out.shape[1],
                            "columns_changed": int(changed.any(0).sum()), "fluid_pixels_removed": removed})
            maps.append(out[None])
        self.last_report = merge_decoding_reports(*reports)
        out = np.stack(maps) if batched else maps[0]
        if isinstance(x, torch.Tensor):
            return convert_to_dst_type(out, x, dtype=torch.int64)[0]
        return out.astype(np.int64)


class LayerOrderDecoded(MapTransform):
    """Dictionary twin of :class:`LayerOrderDecode`: decodes ``keys`` in place and writes each report beside them.

    Args:
        keys: keys of the scores / ids to decode.
        table: label table (or its name).
        min_fluid: see :class:`LayerOrderDecode`.
        report_postfix: the report of ``key`` goes to ``d[f"{key}_{report_postfix}"]`` (None: not written).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: as :class:`LayerOrderDecode`.
    """

    def __init__(self, keys: KeysCollection, table: LabelTable | str = DUKE_DME, min_fluid: int = 16,
                 report_postfix: str | None = "decoding", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoder = LayerOrderDecode(table, min_fluid)
        self.report_postfix = report_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        """Decode every key; ``d[f"{key}_{report_postfix}"]`` = its ``last_report``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.decoder(d[key])
            if self.report_postfix:
                d[f"{key}_{self.report_postfix}"] = dict(self.decoder.last_report)
        return d
