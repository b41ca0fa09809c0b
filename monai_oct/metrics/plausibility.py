"""Anatomical plausibility of label maps: do the classes of each column run in the anatomical order?

A B-scan column (A-scan) crosses the anatomy from top to bottom: vitreous, the retinal layers from NFL
to OS-RPE, choroid (Duke DME ids 0, 1, ..., 7, 8). A *valid* column

- visits the non-pathological classes in the table's ``layer_order`` (ids may be skipped, e.g. layers
  that vanish at the fovea, but never go back up: ``0 0 1 1 2 ...`` is valid, ``0 1 0 ...`` is not), and
- holds pathological classes (fluid, Duke id 9) only inside the retina: every fluid pixel lies below
  every pixel of the upper background (the ``background`` ids that come before the retinal layers in
  ``layer_order``: vitreous), above every pixel of the lower background (those after them: choroid),
  and the column holds at least one retinal-layer pixel. Fluid may touch the vitreous: the Duke graders
  label fluid directly under the ILM where it lifts a thin NFL (train ``Subject_04_05``, column 210),
  so "between the first and last retinal-layer pixel" would fail real annotations.

Unannotated pixels (255) are dropped from the column before the check; columns with no annotated pixel
are skipped (counted in ``columns_skipped``). Any id outside the table makes the column invalid.
The score of a map is the fraction of its checked columns that are valid.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy

from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable

__all__ = ["column_validity", "label_plausibility", "plausibility_report"]


def _as_2d(label: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = convert_to_numpy(label)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D label map (H, W) or (1, H, W), got shape {tuple(np.shape(label))}")
    return arr.astype(np.int64)


def column_validity(label: np.ndarray | torch.Tensor, table: LabelTable = DUKE_DME,
                    ignore_index: int = UNANNOTATED) -> np.ndarray:
    """Per-column validity of one label map (see the module docstring for the rule).

    Args:
        label: class ids, ``(H, W)`` or ``(1, H, W)``; rows run from the top (vitreous) down.
        table: the label table whose ``layer_order``, ``pathological`` and ``background`` define validity.
        ignore_index: id of unannotated pixels.

    Returns:
        float array ``(W,)``: 1.0 valid, 0.0 invalid, NaN for fully unannotated columns.

    Raises:
        ValueError: when the map is not 2D or the table has no ``layer_order``.
    """
    lab = _as_2d(label)
    if not table.layer_order:
        raise ValueError(f"label table {table.name!r} has no layer_order; plausibility needs one")
    h, w = lab.shape
    rank = np.full(max(table.num_classes, ignore_index + 1, int(lab.max()) + 1), -1, dtype=np.int64)
    for r, c in enumerate(table.layer_order):
        rank[c] = r
    path = np.zeros_like(rank, dtype=bool)
    path[list(table.pathological)] = True
    retina = np.zeros_like(rank, dtype=bool)
    retina[[c for c in table.layer_order if c not in table.background]] = True
    lab = np.where(lab < 0, rank.shape[0] - 1, lab)

    annotated = lab != ignore_index
    known = annotated & ((rank[lab] >= 0) | path[lab])
    unknown_cols = (annotated & ~known).any(0)

    # order of the layered (non-pathological) classes: rank never decreases going down the column
    layered = annotated & ~path[lab] & known
    r = np.where(layered, rank[lab], -1)
    running = np.maximum.accumulate(r, axis=0)  # highest rank seen so far (from the top)
    order_ok = ~(layered & (r < running)).any(0)

    # pathological pixels only between the upper background (vitreous) and the lower one (choroid)
    retina_ranks = [r for r, c in enumerate(table.layer_order) if c not in table.background]
    top_bg = np.zeros_like(retina)
    bottom_bg = np.zeros_like(retina)
    if retina_ranks:
        for r, c in enumerate(table.layer_order):
            if c in table.background:
                (top_bg if r < retina_ranks[0] else bottom_bg)[c] = True
    rows = np.arange(h)[:, None]
    is_top, is_bottom = annotated & top_bg[lab], annotated & bottom_bg[lab]
    last_top = np.where(is_top.any(0), h - 1 - np.argmax(is_top[::-1], 0), -1)
    first_bottom = np.where(is_bottom.any(0), np.argmax(is_bottom, 0), h)
    has_retina = (annotated & retina[lab]).any(0)
    is_path = annotated & path[lab]
    path_ok = ~(is_path & ((rows < last_top[None]) | (rows > first_bottom[None]) | ~has_retina[None])).any(0)

    valid = (order_ok & path_ok & ~unknown_cols).astype(np.float64)
    valid[~annotated.any(0)] = np.nan
    return valid


def label_plausibility(labels: Sequence[np.ndarray | torch.Tensor] | torch.Tensor, table: LabelTable = DUKE_DME,
                       ignore_index: int = UNANNOTATED) -> np.ndarray:
    """Fraction of valid columns of each label map.

    Args:
        labels: label maps ``(N, 1, H, W)`` / ``(N, H, W)`` or a sequence of ``(H, W)`` maps (sizes may differ).
        table: label table (see :func:`column_validity`).
        ignore_index: id of unannotated pixels.

    Returns:
        float array ``(N,)``; NaN for a map without any annotated column.
    """
    return _per_map(labels, table, ignore_index)[0]


def _per_map(labels, table: LabelTable, ignore_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: fraction of valid columns (NaN: none checked), valid column count, checked column count."""
    frac, valid, checked = [], [], []
    for lab in labels:
        v = column_validity(lab, table, ignore_index)
        ok = ~np.isnan(v)
        valid.append(float(v[ok].sum()))
        checked.append(int(ok.sum()))
        frac.append(valid[-1] / checked[-1] if checked[-1] else float("nan"))
    return np.asarray(frac, dtype=np.float64), np.asarray(valid), np.asarray(checked, dtype=np.int64)


def plausibility_report(labels: Sequence[np.ndarray | torch.Tensor] | torch.Tensor, table: LabelTable = DUKE_DME,
                        names: Sequence[str] | None = None, worst: int = 5,
                        ignore_index: int = UNANNOTATED) -> dict[str, Any]:
    """JSON-ready summary: column-weighted and per-map plausibility, worst maps.

    Returns:
        ``{"valid_column_fraction", "mean_per_map", "maps_fully_valid", "num_maps", "columns_checked",
        "columns_skipped", "worst": [{"index", "name", "valid_fraction"}], "definition"}``.
    """
    pm, valid, cols = _per_map(labels, table, ignore_index)
    valid_cols, checked = float(valid.sum()), int(cols.sum())
    skipped = sum(int(lab.shape[-1]) for lab in labels) - checked
    order = [int(i) for i in np.argsort(np.nan_to_num(pm, nan=2.0))[:worst]]
    return {
        "valid_column_fraction": valid_cols / checked if checked else None,
        "mean_per_map": float(np.nanmean(pm)) if (~np.isnan(pm)).any() else None,
        "maps_fully_valid": int((pm == 1.0).sum()),
        "num_maps": len(pm),
        "columns_checked": checked,
        "columns_skipped": skipped,
        "worst": [{"index": i, "name": None if names is None else str(names[i]),
                   "valid_fraction": None if np.isnan(pm[i]) else float(pm[i])} for i in order],
        "definition": ("A column is valid when its layered classes follow the table's layer_order top to bottom "
                       f"({'>'.join(map(str, table.layer_order))}, skips allowed, no reversal) and its pathological "
                       f"classes {list(table.pathological)} lie below all upper-background and above all lower-background pixels "
                       "of a column that holds retina; "
                       f"unannotated pixels ({ignore_index}) are dropped, fully unannotated columns skipped."),
    }
