"""Geometry of layered label maps: boundaries (one row per column) to regions and back.

A retinal label map is a stack of layers, so it is equivalent to ``K`` ordered boundary curves (the first
row of each lower region in every column). :func:`regions_from_boundaries` fills regions from curves (the
phantoms and the random sketches draw that way); :func:`label_boundaries` finds the curves of a label map
(sketches of real labels, thickness statistics, plausibility checks).
"""

from __future__ import annotations

import numpy as np
from monai.utils.type_conversion import convert_data_type

from monai_oct.core.labels import UNANNOTATED, LabelTable, get_label_table

__all__ = ["regions_from_boundaries", "label_boundaries", "as_2d_label", "boundaries_of", "four_adjacent", "disc_mask",
           "connected_to"]


def regions_from_boundaries(bounds: np.ndarray, height: int) -> np.ndarray:
    """Region map of ordered boundaries: row ``r`` of column ``c`` gets ``#{k : r >= floor(bounds[k, c])}``.

    Args:
        bounds: ``(K, W)`` ordered boundary rows (0-based, fractional).
        height: number of rows ``H``.

    Returns:
        ``(H, W)`` uint8 map with ids ``0..K`` (region 0 above the first boundary).
    """
    rows = np.arange(height)[:, None, None]
    starts = np.floor(bounds)[None]  # row r belongs to region #{k: r >= b_k}
    return (rows >= starts).sum(axis=1).astype(np.uint8)  # H x W


def as_2d_label(label, table: LabelTable, where: str = "label") -> np.ndarray:
    """``(H, W)`` int64 numpy view of a ``(H, W)`` / ``(1, H, W)`` label map, with its ids checked."""
    arr = convert_data_type(label, np.ndarray)[0]
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{where}: expected a 2D label map (H, W) or (1, H, W), got shape {tuple(arr.shape)}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{where}: label map of shape {tuple(arr.shape)} is too small (need at least 2x2)")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{where}: label map holds non-integer values; expected class ids")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{where}: label map of dtype {arr.dtype} is not integer class ids")
    arr = arr.astype(np.int64)
    table.validate_ids(arr, where=where)
    return arr


def label_boundaries(label: np.ndarray, table: LabelTable | str = "duke_dme", where: str = "label") -> np.ndarray:
    """Locate the ``K = len(layer_order) - 1`` layer boundaries of a label map in every column.

    Boundary ``k`` of a column is the first row of the regions below ``layer_order[k]``. Where it is
    visible (the last row of a class at or above it touches the first row of a class below it) that
    row is exact; where pathological or unannotated pixels hide it, it is interpolated from the
    columns where it is visible and clipped to the rows the column allows (below every pixel of an
    upper class, at or above every pixel of a lower class). The result never crosses.

    Args:
        label: ``(H, W)`` or ``(1, H, W)`` class-id map.
        table: the label table (its ``layer_order`` and ``pathological`` ids).
        where: what to name in error messages (e.g. the file path).

    Returns:
        ``(K, W)`` float64 rows in ``[0, H]`` (``H``: the boundary lies below the image).

    Raises:
        ValueError: for a wrong shape, non-integer values, ids outside the table, or a table
            without a ``layer_order``.
    """
    table = get_label_table(table)
    lab = as_2d_label(label, table, where)
    return boundaries_of(lab, table)


def boundaries_of(lab: np.ndarray, table: LabelTable) -> np.ndarray:
    """:func:`label_boundaries` of an ``(H, W)`` int64 map whose ids were already checked (see :func:`as_2d_label`)."""
    order = list(table.layer_order)
    if len(order) < 2:
        raise ValueError(f"label table {table.name!r} has no layer_order; cannot draw layer boundaries")
    h, w = lab.shape
    lut = np.full(max(table.num_classes, UNANNOTATED + 1), -1, dtype=np.int64)
    lut[order] = np.arange(len(order))
    rank = lut[lab]  # H x W; -1 = pathological / unannotated / not a layer
    rows = np.arange(h)[:, None]
    out = np.empty((len(order) - 1, w))
    cols = np.arange(w)
    for k in range(len(order) - 1):
        upper = (rank >= 0) & (rank <= k)
        lower = rank > k
        lo = np.where(upper.any(0), np.where(upper, rows, -1).max(0) + 1, 0)  # below every upper pixel
        hi = np.where(lower.any(0), np.where(lower, rows, h).min(0), h)  # at/above every lower pixel
        known = lo >= hi  # visible (lo == hi) or inconsistent (take the first lower row)
        if known.any():
            b = np.interp(cols, cols[known], hi[known].astype(float))
        else:
            b = (lo + hi) / 2.0
        out[k] = np.where(known, hi, np.clip(b, lo, hi))
    return np.maximum.accumulate(out, axis=0)


def four_adjacent(mask: np.ndarray) -> np.ndarray:
    """The pixels with a 4-neighbour (up, down, left, right) in the bool ``(H, W)`` ``mask`` (the mask not included
    unless its pixels have such a neighbour): where an artery touching ``mask`` = vein would meet it edge to edge."""
    mask = np.asarray(mask, dtype=bool)
    near = np.zeros_like(mask)
    near[1:] |= mask[:-1]
    near[:-1] |= mask[1:]
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    return near


def disc_mask(shape: tuple[int, int], centre: tuple[float, float] | list[float], radius: float) -> np.ndarray:
    """The bool ``(H, W)`` disc of ``radius`` pixels around ``centre`` = ``(row, col)`` (e.g. the optic disc)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (yy - float(centre[0])) ** 2 + (xx - float(centre[1])) ** 2 <= float(radius) ** 2


def connected_to(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The pixels of the bool ``(H, W)`` ``mask`` in its 8-connected components that meet ``seed`` (e.g. the vessel
    trees that touch the optic disc); the rest of ``mask`` are the specks."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    comp, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    hit = np.unique(comp[mask & np.asarray(seed, dtype=bool)])
    return np.isin(comp, hit[hit > 0])
