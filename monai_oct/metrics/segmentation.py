"""Layer-segmentation metrics: per-class Dice and pixel accuracy with unannotated pixels ignored.

Definitions (per image, over its *annotated* pixels, i.e. label != ``ignore_index``):

- Dice of class c: ``2 |P_c & T_c| / (|P_c| + |T_c|)`` where P_c / T_c are the predicted / true pixels of c.
  When c is absent from both prediction and truth the value is **NaN** (undefined) and that image is
  skipped for c: it counts neither as 1 nor as 0. A class predicted where the truth has none scores 0.
- Pixel accuracy (PA) of class c: ``|P_c & T_c| / |T_c|``, the share of the class's true pixels that are
  labelled correctly (FCN's class accuracy); NaN when the image has no pixel of c.
  The overall PA (column ``"all"``) is correct / annotated pixels.
- A group (e.g. RetiDiff's NFL-IPL = {1, 2}) is scored as one class: the union of its classes.

Aggregation: each value is averaged over the images where it is defined (NaN-skipping mean); the
"mean" is the average of those per-class values over ``mean_classes`` (default: every class but 0,
i.e. 1-9 on Duke DME), again skipping classes that are undefined on every image.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.metrics import CumulativeIterationMetric

from monai_oct.core.io import write_json, write_text
from monai_oct.core.labels import UNANNOTATED, LabelTable

__all__ = ["LayerDiceMetric", "PixelAccuracyMetric", "segmentation_report", "report_markdown", "write_segmentation_report"]


def _as_ids(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, ...)`` ids from ids or ``(B, C, ...)`` scores/one-hot."""
    x = torch.as_tensor(x)
    if x.ndim < 3:
        raise ValueError(f"expected batch-first channel-first tensors (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] > 1:
        if x.shape[1] != num_classes:
            raise ValueError(f"prediction has {x.shape[1]} channels, expected 1 (ids) or {num_classes} (scores)")
        return x.argmax(dim=1, keepdim=True)
    return x.long() if not x.dtype.is_floating_point else x.round().long()


class _LayerMetric(CumulativeIterationMetric):
    """Shared machinery: per-image true-positive / predicted / true counts for classes and groups."""

    def __init__(self, num_classes: int = 10, ignore_index: int = UNANNOTATED,
                 groups: Mapping[str, Sequence[int]] | None = None, mean_classes: Sequence[int] | None = None,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.groups = {str(k): tuple(int(i) for i in v) for k, v in (groups or {}).items()}
        for g, ids in self.groups.items():
            if any(not 0 <= i < self.num_classes for i in ids):
                raise ValueError(f"group {g!r} names ids {ids} outside 0..{self.num_classes - 1}")
        self.mean_classes = tuple(range(1, self.num_classes)) if mean_classes is None else tuple(int(i) for i in mean_classes)
        if reduction not in ("mean", "mean_batch", "none"):
            raise ValueError(f"reduction must be 'mean', 'mean_batch' or 'none', got {reduction!r}")
        self.reduction = reduction

    @property
    def names(self) -> list[str]:
        """Column names of the values: class ids as strings, then group names."""
        return [str(c) for c in range(self.num_classes)] + list(self.groups)

    def _counts(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = _as_ids(y_pred, self.num_classes)
        true = torch.as_tensor(y).long()
        if true.shape[1] != 1:
            raise ValueError(f"the label must be a map of class ids (B, 1, H, W), got shape {tuple(true.shape)}")
        if pred.shape != true.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(true.shape)}")
        b = pred.shape[0]
        valid = (true != self.ignore_index).reshape(b, -1)
        pred, true = pred.reshape(b, -1), true.reshape(b, -1)
        bad = true[valid & ((true < 0) | (true >= self.num_classes))]
        if bad.numel():
            raise ValueError(f"label ids {sorted(set(bad.tolist()))[:10]} are outside 0..{self.num_classes - 1}")
        sets = [(c,) for c in range(self.num_classes)] + list(self.groups.values())
        tp, npred, ntrue = [], [], []
        for ids in sets:
            idt = torch.as_tensor(ids, device=pred.device)
            p = torch.isin(pred, idt) & valid
            t = torch.isin(true, idt) & valid
            tp.append((p & t).sum(1))
            npred.append(p.sum(1))
            ntrue.append(t.sum(1))
        correct = ((pred == true) & valid).sum(1)
        return (torch.stack(tp, 1).double(), torch.stack(npred, 1).double(), torch.stack(ntrue, 1).double(),
                torch.stack([correct.double(), valid.sum(1).double()], 1))

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        """Reduce the buffered per-image values.

        Args:
            reduction: ``"mean"`` (scalar: mean over ``mean_classes`` of the per-class means), ``"mean_batch"``
                (one value per column of :attr:`names`, NaN-skipping mean over images) or ``"none"``
                (the per-image matrix). Default: the constructor's.

        Raises:
            ValueError: when nothing was accumulated.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no data accumulated; call the metric on some images first")
        reduction = reduction or self.reduction
        if reduction == "none":
            return data
        per_col = torch.nanmean(data, dim=0)
        if reduction == "mean_batch":
            return per_col
        sel = per_col[list(self.mean_classes)]
        return torch.nanmean(sel) if (~torch.isnan(sel)).any() else torch.tensor(float("nan"), dtype=sel.dtype)

    def per_column(self) -> dict[str, float]:
        """``{name: NaN-skipping mean over images}`` for every class and group."""
        vals = self.aggregate("mean_batch").tolist()
        return dict(zip(self.names, vals))

    def images_defined(self) -> dict[str, int]:
        """``{name: number of images where the value is defined}``."""
        data = self.get_buffer()
        counts = (~torch.isnan(data)).sum(0).tolist()
        return dict(zip(self.names, (int(c) for c in counts)))


class LayerDiceMetric(_LayerMetric):
    """Per-class and per-group Dice of label maps, unannotated pixels ignored (see the module docstring).

    Args:
        num_classes: C; label ids are ``0..C-1`` or ``ignore_index``.
        ignore_index: label value of unannotated pixels.
        groups: named groups scored as the union of their classes (``DUKE_DME.groups``).
        mean_classes: classes averaged by ``aggregate("mean")`` (default ``1..C-1``).
        reduction: default reduction of :meth:`aggregate`.

    ``__call__(y_pred, y)``: ``y_pred`` ids ``(B, 1, H, W)`` or scores ``(B, C, H, W)``, ``y`` ids ``(B, 1, H, W)``;
    returns and buffers ``(B, C + G)`` Dice values (NaN where undefined).

    Raises:
        ValueError: for mismatched shapes or label ids outside the table.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("LayerDiceMetric needs the label y")
        tp, npred, ntrue, _ = self._counts(y_pred, y)
        den = npred + ntrue
        return torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.full_like(den, float("nan")))


class PixelAccuracyMetric(_LayerMetric):
    """Per-class pixel accuracy (recall of each class) and overall pixel accuracy, unannotated pixels ignored.

    MONAI has no pixel-accuracy metric; this one follows ``monai.metrics`` (a ``CumulativeIterationMetric``
    usable with ``monai.handlers.IgniteMetricHandler``). Columns: classes, groups, then ``"all"`` (overall).
    Arguments as :class:`LayerDiceMetric`.
    """

    @property
    def names(self) -> list[str]:
        return super().names + ["all"]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("PixelAccuracyMetric needs the label y")
        tp, _, ntrue, overall = self._counts(y_pred, y)
        nan = float("nan")
        pa = torch.where(ntrue > 0, tp / ntrue.clamp(min=1), torch.full_like(ntrue, nan))
        all_ = torch.where(overall[:, 1] > 0, overall[:, 0] / overall[:, 1].clamp(min=1), torch.full_like(overall[:, 0], nan))
        return torch.cat([pa, all_[:, None]], dim=1)


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def segmentation_report(dice: LayerDiceMetric, pa: PixelAccuracyMetric, table: LabelTable,
                        extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summarise accumulated metrics as a JSON-ready dict (NaN written as ``null``).

    Returns:
        ``{"num_images", "mean_classes", "mean_dice", "mean_pa", "pixel_accuracy", "classes": {id: {name,
        dice, pa, images_with_class}}, "groups": {name: {classes, dice, pa}}, "definitions", **extra}``.
    """
    d, p = dice.per_column(), pa.per_column()
    defined = pa.images_defined()
    classes = {str(c): {"name": table.classes.get(c, str(c)), "dice": _clean(d[str(c)]), "pa": _clean(p[str(c)]),
                        "images_with_class": defined[str(c)]} for c in range(dice.num_classes)}
    groups = {g: {"classes": list(ids), "dice": _clean(d[g]), "pa": _clean(p[g])} for g, ids in dice.groups.items()}
    out = {
        "num_images": int(dice.get_buffer().shape[0]),
        "mean_classes": list(dice.mean_classes),
        "mean_dice": _clean(float(dice.aggregate("mean"))),
        "mean_pa": _clean(float(pa.aggregate("mean"))),
        "pixel_accuracy": _clean(p["all"]),
        "classes": classes,
        "groups": groups,
        "definitions": ("Per image over annotated pixels (label 255 ignored): Dice = 2|P&T|/(|P|+|T|), NaN when the "
                        "class is absent from prediction and truth (image skipped for that class); PA = |P&T|/|T|, "
                        "NaN when absent from the truth; pixel_accuracy = correct/annotated pixels. Values are "
                        "averaged over the images where defined; mean_* average classes mean_classes. Groups are "
                        "scored as the union of their classes."),
    }
    if extra:
        out.update(dict(extra))
    return out


def report_markdown(report: Mapping[str, Any]) -> str:
    """A markdown table of a :func:`segmentation_report`: one row per class, the groups and the mean."""

    def f(x):
        return "n/a" if x is None else f"{x:.4f}"

    lines = ["| class | name | Dice | PA | images with class |", "|---:|---|---:|---:|---:|"]
    for cid, row in report["classes"].items():
        lines.append(f"| {cid} | {row['name']} | {f(row['dice'])} | {f(row['pa'])} | {row['images_with_class']} |")
    mc = report["mean_classes"]
    span = f"{mc[0]}-{mc[-1]}" if mc == list(range(mc[0], mc[-1] + 1)) else ",".join(map(str, mc))
    lines.append(f"| **mean {span}** | | **{f(report['mean_dice'])}** | **{f(report['mean_pa'])}** | |")
    for g, row in report["groups"].items():
        lines.append(f"| group | {g} ({'+'.join(map(str, row['classes']))}) | {f(row['dice'])} | {f(row['pa'])} | |")
    lines.append("")
    lines.append(f"Overall pixel accuracy: {f(report['pixel_accuracy'])} on {report['num_images']} images.")
    return "\n".join(lines) + "\n"


def write_segmentation_report(report: Mapping[str, Any], output_dir: str | os.PathLike, name: str = "metrics") -> Path:
    """Write ``<name>.json`` and ``<name>.md`` into ``output_dir`` atomically; returns the JSON path."""
    out = Path(output_dir)
    write_json(out / f"{name}.json", report)
    write_text(out / f"{name}.md", report_markdown(report))
    return out / f"{name}.json"
