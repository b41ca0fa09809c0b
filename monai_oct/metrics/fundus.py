"""Fundus artery/vein metrics, scored inside the field of view (FOV) only, and the plausibility of A/V label maps.

Segmentation (per image, over the pixels inside the FOV whose label is not ``ignore_index``; ids of
:data:`~monai_oct.core.labels.FUNDUS_AV`):

- **vessel** (:class:`VesselMetric`): truth = label in the table's ``vessel`` group (artery, vein, crossing,
  uncertain); prediction = vessel probability >= ``threshold``. Dice (MONAI's ``compute_dice``), sensitivity,
  specificity and accuracy (MONAI's ``get_confusion_matrix`` / ``compute_confusion_matrix_metric``) and the area
  under the ROC curve of the probability map (MONAI's ``compute_roc_auc``). The FOV pixels of one image are
  gathered into a ``(1, 2, N)`` one-hot pair first, so MONAI's metrics see nothing outside the FOV (setting
  outside pixels to background instead would count them as true negatives and inflate the specificity).
- **artery/vein accuracy** (:class:`ArteryVeinMetric`), the usual A/V metric: on the pixels whose truth is artery
  or vein (the table's ``scored`` ids; crossing and uncertain pixels are not scored, as their type is both or
  unknown), the share predicted as the right one of the two. From per-class scores ``(B, C, H, W)`` the decision
  is artery vs vein only (the higher of the two scores), so every scored pixel is decided; from an id map a
  scored pixel predicted as anything else (background, crossing, uncertain) counts as wrong and is reported as
  ``undecided``. Also the artery sensitivity (true arteries called artery) and the vein sensitivity.

Values are averaged over the images where they are defined (NaN-skipping mean, e.g. AUC of an image without a
vessel). Plausibility of a generated A/V map (:func:`vessel_connectivity`, :func:`av_adjacency`,
:func:`fundus_plausibility`): the fraction of vessel pixels in 8-connected vessel components that touch the optic
disc (trees, not specks; target >= 0.95), and the number of artery pixels 4-adjacent to a vein pixel, i.e. touching
it without a crossing pixel between (target 0).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_roc_auc
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric, get_confusion_matrix
from monai.utils import convert_to_numpy
from scipy import ndimage

from monai_oct.core.geometry import as_2d_label, connected_to, disc_mask, four_adjacent
from monai_oct.core.labels import FUNDUS_AV, UNANNOTATED, LabelTable

__all__ = [
    "vessel_probability",
    "VesselMetric",
    "ArteryVeinMetric",
    "vessel_connectivity",
    "av_adjacency",
    "vessel_shape",
    "fundus_plausibility",
]


def vessel_probability(scores: torch.Tensor, table: LabelTable = FUNDUS_AV) -> torch.Tensor:
    """``(B, 1, H, W)`` vessel probability from per-class logits ``(B, C, H, W)``: softmax summed over the vessel group.

    Raises:
        ValueError: when the channels are not the table's classes.
    """
    if scores.ndim < 3 or scores.shape[1] != table.num_classes:
        raise ValueError(f"expected (B, {table.num_classes}, ...) scores of the {table.name} table, got {tuple(scores.shape)}")
    return scores.float().softmax(1)[:, list(table.group("vessel"))].sum(1, keepdim=True)


def _inside(y: torch.Tensor, fov: torch.Tensor | None, ignore_index: int) -> torch.Tensor:
    """``(B, N)`` bool: the pixels that are scored (inside the FOV, label not ``ignore_index``)."""
    b = y.shape[0]
    valid = (y != ignore_index).reshape(b, -1)
    if fov is not None:
        fov = torch.as_tensor(fov, device=y.device)
        if fov.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"field-of-view mask size {tuple(fov.shape[-2:])} differs from the label's {tuple(y.shape[-2:])}")
        valid &= fov.reshape(b, -1).bool() if fov.numel() == valid.numel() else fov.bool().reshape(1, -1).expand(b, -1)
    return valid


def _check_label(y: torch.Tensor | None, table: LabelTable, ignore_index: int) -> torch.Tensor:
    if y is None:
        raise ValueError("the metric needs the label y")
    y = torch.as_tensor(y)
    if y.ndim < 3 or y.shape[1] != 1:
        raise ValueError(f"the label must be a map of class ids (B, 1, H, W), got shape {tuple(y.shape)}")
    y = y.long()
    bad = y[(y != ignore_index) & ((y < 0) | (y >= table.num_classes))]
    if bad.numel():
        raise ValueError(f"label ids {sorted(set(bad.tolist()))[:10]} are outside the {table.name} table "
                         f"(0..{table.num_classes - 1}, {ignore_index} = ignored)")
    return y


class _FundusMetric(CumulativeIterationMetric):
    """Shared: the table, ignore value, column names and a NaN-skipping mean over images; with ``key`` the
    aggregate is that one value (a float, what MONAI's ``IgniteMetricHandler`` and ``CheckpointSaver`` compare)."""

    names: tuple[str, ...] = ()

    def __init__(self, table: LabelTable = FUNDUS_AV, ignore_index: int = UNANNOTATED, key: str | None = None) -> None:
        super().__init__()
        self.table = table
        self.ignore_index = int(ignore_index)
        if key is not None and key not in self.names:
            raise ValueError(f"{type(self).__name__}: key {key!r} is not one of {list(self.names)}")
        self.key = key

    def aggregate(self) -> dict[str, float] | float:  # type: ignore[override]
        """``{name: mean over the images where the value is defined}`` (NaN when it is defined on none), or the
        value of ``key`` alone.

        Raises:
            ValueError: when nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no data accumulated; call the metric on some images first")
        out = {n: float(v) for n, v in zip(self.names, torch.nanmean(data.double(), dim=0).tolist())}
        return out if self.key is None else out[self.key]


class VesselMetric(_FundusMetric):
    """Vessel Dice, sensitivity, specificity, accuracy and ROC AUC inside the FOV (see the module docstring).

    Args:
        table: the label table (its ``vessel`` group is the truth).
        threshold: a pixel is predicted vessel when its probability is at least this.
        ignore_index: label value that is never scored (outside the FOV after ``MaskOutsideFOV``).
        key: one of :attr:`names`: ``aggregate`` returns that value alone (None: the dict of all).

    ``__call__(y_pred, y, fov=None)``: ``y_pred`` the ``(B, 1, H, W)`` vessel probability (or a 0/1 map; AUC is then
    that of the binary map), ``y`` ``(B, 1, H, W)`` ids, ``fov`` optional ``(B, 1, H, W)`` or ``(H, W)`` bool;
    returns and buffers ``(B, 5)`` rows in the order of :attr:`names`.

    Raises:
        ValueError: mismatched shapes, label ids outside the table, or a FOV of another size.
    """

    names = ("dice", "sensitivity", "specificity", "accuracy", "auc")

    def __init__(self, table: LabelTable = FUNDUS_AV, threshold: float = 0.5, ignore_index: int = UNANNOTATED,
                 key: str | None = None) -> None:
        super().__init__(table, ignore_index, key)
        self.threshold = float(threshold)
        self.vessel = torch.as_tensor(table.group("vessel"))

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None,  # type: ignore[override]
                        fov: torch.Tensor | None = None) -> torch.Tensor:
        y = _check_label(y, self.table, self.ignore_index)
        prob = torch.as_tensor(y_pred).float()
        if prob.shape != y.shape:
            raise ValueError(f"the vessel probability must be (B, 1, H, W) like the label {tuple(y.shape)}, got {tuple(prob.shape)}")
        b = y.shape[0]
        inside = _inside(y, fov, self.ignore_index)
        truth = torch.isin(y.reshape(b, -1), self.vessel.to(y.device))
        rows = []
        for i in range(b):
            t, p = truth[i][inside[i]], prob.reshape(b, -1)[i][inside[i]]
            hard = p >= self.threshold
            onehot = lambda v: torch.stack([~v, v]).float()[None]  # noqa: E731  (1, 2, N): background, vessel
            cm = get_confusion_matrix(onehot(hard), onehot(t), include_background=False)
            sens, spec, acc = (float(compute_confusion_matrix_metric(n, cm).squeeze()) for n in self.names[1:4])
            dice = float(compute_dice(onehot(hard), onehot(t), include_background=False, ignore_empty=True).squeeze())
            auc = compute_roc_auc(p, t.long()) if t.any() and not t.all() else float("nan")
            rows.append([dice, sens, spec, acc, float(auc)])
        return torch.tensor(rows, dtype=torch.float64)


class ArteryVeinMetric(_FundusMetric):
    """Artery/vein accuracy on the true artery and vein pixels inside the FOV (see the module docstring).

    Args:
        table: the label table; ``scored`` names the two classes told apart (artery, vein).
        ignore_index: label value that is never scored.
        key: one of :attr:`names`: ``aggregate`` returns that value alone (None: the dict of all).

    ``__call__(y_pred, y, fov=None)``: ``y_pred`` per-class scores ``(B, C, H, W)`` or ids ``(B, 1, H, W)``, ``y``
    ids ``(B, 1, H, W)``; returns and buffers ``(B, 4)`` rows in the order of :attr:`names` (NaN for an image with
    no scored pixel; the artery / vein sensitivities NaN for an image without that class).

    Raises:
        ValueError: when the table does not score two classes, or for mismatched shapes / unknown ids.
    """

    names = ("av_accuracy", "artery_sensitivity", "vein_sensitivity", "undecided")

    def __init__(self, table: LabelTable = FUNDUS_AV, ignore_index: int = UNANNOTATED, key: str | None = None) -> None:
        super().__init__(table, ignore_index, key)
        if len(table.scored) != 2:
            raise ValueError(f"label table {table.name!r} must score two classes for A/V accuracy, scores {table.scored}")
        self.artery, self.vein = (int(i) for i in table.scored)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None,  # type: ignore[override]
                        fov: torch.Tensor | None = None) -> torch.Tensor:
        y = _check_label(y, self.table, self.ignore_index)
        pred = torch.as_tensor(y_pred)
        if pred.shape[0] != y.shape[0] or pred.shape[2:] != y.shape[2:] or pred.shape[1] not in (1, self.table.num_classes):
            raise ValueError(f"prediction shape {tuple(pred.shape)} must be (B, 1 or {self.table.num_classes}, H, W) "
                             f"like the label {tuple(y.shape)}")
        if pred.shape[1] > 1:  # artery vs vein only: the higher of the two scores
            ids = torch.where(pred[:, self.artery] >= pred[:, self.vein], self.artery, self.vein)[:, None]
        else:
            ids = pred.round().long() if pred.dtype.is_floating_point else pred.long()
        b = y.shape[0]
        inside = _inside(y, fov, self.ignore_index)
        t, p = y.reshape(b, -1), ids.reshape(b, -1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)

        def share(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            return torch.where(den > 0, num.double() / den.clamp(min=1).double(), nan)

        art, vein = (t == self.artery) & inside, (t == self.vein) & inside
        scored = art | vein
        correct = (p == t) & scored
        undecided = scored & (p != self.artery) & (p != self.vein)
        return torch.stack([share(correct.sum(1), scored.sum(1)), share((correct & art).sum(1), art.sum(1)),
                            share((correct & vein).sum(1), vein.sum(1)), share(undecided.sum(1), scored.sum(1))], 1)


def _disc_mask(shape: tuple[int, int], disc: np.ndarray | torch.Tensor | None, centre: Sequence[float] | None,
               radius: float | None) -> np.ndarray:
    if disc is not None:
        mask = np.asarray(convert_to_numpy(disc)).squeeze() > 0
        if mask.shape != shape:
            raise ValueError(f"disc mask size {mask.shape} differs from the label's {shape}")
        return mask
    if centre is None:
        raise ValueError("give the optic disc as a mask (disc=) or a centre (disc_centre=, (row, col))")
    return disc_mask(shape, centre, radius if radius is not None else 0.07 * min(shape))


def vessel_connectivity(label: np.ndarray | torch.Tensor, disc: np.ndarray | torch.Tensor | None = None,
                        disc_centre: Sequence[float] | None = None, disc_radius: float | None = None,
                        table: LabelTable = FUNDUS_AV) -> float:
    """Fraction of vessel pixels in 8-connected vessel components that touch the optic disc.

    Args:
        label: ``(H, W)`` or ``(1, H, W)`` A/V ids.
        disc: ``(H, W)`` optic disc mask; or else
        disc_centre: its ``(row, col)`` centre, with
        disc_radius: its radius in pixels (default 7 % of the shorter side, about a disc radius of a fundus photo).
        table: the label table (its ``vessel`` group).

    Returns:
        a value in [0, 1]; NaN for a map without vessel pixels.

    Raises:
        ValueError: for a label that is not 2D, a disc of another size, or no disc given.
    """
    lab = as_2d_label(label, table)
    vessel = np.isin(lab, table.group("vessel"))
    if not vessel.any():
        return float("nan")
    return float(connected_to(vessel, _disc_mask(lab.shape, disc, disc_centre, disc_radius)).sum() / vessel.sum())


def av_adjacency(label: np.ndarray | torch.Tensor, table: LabelTable = FUNDUS_AV) -> int:
    """Number of artery pixels 4-adjacent to a vein pixel (touching without a crossing between; target 0).

    Raises:
        ValueError: for a label that is not 2D or a table that does not score two classes.
    """
    if len(table.scored) != 2:
        raise ValueError(f"label table {table.name!r} must score two classes (artery, vein), scores {table.scored}")
    lab = as_2d_label(label, table)
    return int(((lab == table.scored[0]) & four_adjacent(lab == table.scored[1])).sum())


def fundus_plausibility(labels: Sequence[np.ndarray | torch.Tensor], discs: Sequence[Any] | None = None,
                        disc_centres: Sequence[Sequence[float]] | None = None, table: LabelTable = FUNDUS_AV,
                        min_connected: float = 0.95) -> dict[str, Any]:
    """JSON-ready plausibility of a set of A/V label maps (generated or real).

    Args:
        labels: the maps.
        discs: one optic disc mask per map; or else
        disc_centres: one ``(row, col)`` centre per map.
        table: the label table.
        min_connected: the connectivity a map must reach to count as a tree (``maps_connected``).

    Returns:
        ``{"num_maps", "connected_fraction" (mean over maps), "min_connected_fraction", "maps_connected",
        "av_adjacent_pixels" (total), "maps_without_adjacency", "vessel_fraction", "vessel_width" (means over
        maps, :func:`vessel_shape`), "per_map": [{"connected_fraction", "av_adjacent_pixels", "vessel_fraction",
        "vessel_width"}], "definition"}``.
    """
    per_map = []
    for i, lab in enumerate(labels):
        conn = vessel_connectivity(lab, None if discs is None else discs[i],
                                   None if disc_centres is None else disc_centres[i], table=table)
        per_map.append({"connected_fraction": None if np.isnan(conn) else conn, "av_adjacent_pixels": av_adjacency(lab, table),
                        **vessel_shape(lab, table)})
    conns = [m["connected_fraction"] for m in per_map if m["connected_fraction"] is not None]

    def mean(key: str) -> float | None:
        vals = [m[key] for m in per_map if m[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "num_maps": len(per_map),
        "connected_fraction": float(np.mean(conns)) if conns else None,
        "min_connected_fraction": float(np.min(conns)) if conns else None,
        "maps_connected": sum(c >= min_connected for c in conns),
        "av_adjacent_pixels": sum(m["av_adjacent_pixels"] for m in per_map),
        "maps_without_adjacency": sum(m["av_adjacent_pixels"] == 0 for m in per_map),
        "vessel_fraction": mean("vessel_fraction"),
        "vessel_width": mean("vessel_width"),
        "per_map": per_map,
        "definition": ("connected_fraction: share of vessel pixels (ids "
                       f"{list(table.group('vessel'))}) in 8-connected vessel components touching the optic disc; "
                       f"maps_connected: maps with at least {min_connected}; av_adjacent_pixels: artery pixels "
                       "4-adjacent to a vein pixel (no crossing between), target 0; vessel_fraction: vessel pixels / "
                       "map pixels; vessel_width: 4 x mean distance of a vessel pixel to the background - 2 (about "
                       "the width in pixels of a vessel of constant width; a solid blob scores far more)."),
    }


def vessel_shape(label: np.ndarray | torch.Tensor, table: LabelTable = FUNDUS_AV) -> dict[str, float | None]:
    """How vessel-like a map's vessel pixels are, beside its connectivity (which a single blob at the disc meets):
    ``{"vessel_fraction", "vessel_width"}``.

    ``vessel_fraction`` is the share of the map's pixels in the table's ``vessel`` group; ``vessel_width`` is
    ``4 * mean(d) - 2`` with ``d`` the Euclidean distance of each vessel pixel to the nearest non-vessel pixel
    (scipy's ``distance_transform_edt``): for a straight vessel ``w`` pixels wide the distances run 1 .. w/2 from
    each edge, so this is close to ``w`` (1-px vessels give 2); a solid region gives far more. Both None for a
    map without vessels.
    """
    lab = as_2d_label(label, table)
    vessel = np.isin(lab, table.group("vessel"))
    if not vessel.any():
        return {"vessel_fraction": None, "vessel_width": None}
    d = ndimage.distance_transform_edt(vessel)
    return {"vessel_fraction": float(vessel.mean()), "vessel_width": float(4.0 * d[vessel].mean() - 2.0)}
