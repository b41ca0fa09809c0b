"""Ignite handler that turns an evaluation run into ``metrics.json``, ``metrics.md``, a per-image CSV and overlays."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from monai_oct.data.labels import DUKE_DME, UNANNOTATED, LabelTable
from monai_oct.metrics.segmentation import LayerDiceMetric, PixelAccuracyMetric, segmentation_report, write_segmentation_report

__all__ = ["SegmentationReportHandler", "label_overlay", "PALETTE"]

#: RGB colour per class id 0..9 (vitreous dark, layers distinct, choroid brown, fluid cyan).
PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [245, 130, 48], [255, 225, 25], [60, 180, 75],
    [0, 130, 200], [145, 30, 180], [240, 50, 230], [128, 80, 40], [70, 240, 240],
], dtype=np.uint8)


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.45, background: Sequence[int] = (0,)) -> np.ndarray:
    """Blend a coloured label map over a grey B-scan.

    Args:
        image: ``(H, W)`` uint8 grey image (or RGB, converted by the mean).
        label: ``(H, W)`` class ids; ``background`` ids and :data:`UNANNOTATED` stay uncoloured.
        alpha: opacity of the colours.
        background: ids left uncoloured.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: when the sizes differ.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(-1)
    lab = np.asarray(label)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
    rgb = np.repeat(img.astype(np.float32)[..., None], 3, axis=-1)
    colour = PALETTE[np.clip(lab, 0, len(PALETTE) - 1).astype(int)].astype(np.float32)
    on = ~np.isin(lab, list(background) + [UNANNOTATED]) & (lab < len(PALETTE))
    rgb[on] = (1 - alpha) * rgb[on] + alpha * colour[on]
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _np2d(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a[0] if a.ndim == 3 else a


class SegmentationReportHandler:
    """Accumulate Dice / pixel accuracy over an evaluator run and write the report when it completes.

    Writes into ``output_dir``: ``metrics.json`` and ``metrics.md`` (see
    :func:`monai_oct.metrics.segmentation.segmentation_report`), ``per_image.csv`` (Dice per class and
    overall PA per image) and, when ``overlays`` > 0, up to that many PNGs ``overlays/<stem>.png`` showing
    image | truth | prediction.

    Args:
        output_dir: where to write.
        table: label table (class names, groups, number of classes).
        overlays: number of overlay PNGs to write (0 = none).
        mean_classes: classes averaged into the mean (default: all but 0).
        pred_key / label_key / path_key: keys of the prediction, the label and the image path.
        extra: extra entries for ``metrics.json`` (e.g. checkpoint path, image size, network).

    Predictions and labels must be ``(1, H, W)`` id maps of equal size (after postprocessing).
    """

    def __init__(self, output_dir: str | os.PathLike, table: LabelTable = DUKE_DME, overlays: int = 0,
                 mean_classes: Sequence[int] | None = None, pred_key: str = "pred", label_key: str = "label",
                 path_key: str = "image_path", extra: dict[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.table = table
        self.overlays = int(overlays or 0)
        kw = dict(num_classes=table.num_classes, groups=table.groups, mean_classes=mean_classes)
        self.dice, self.pa = LayerDiceMetric(**kw), PixelAccuracyMetric(**kw)
        self.pred_key, self.label_key, self.path_key = pred_key, label_key, path_key
        self.extra = dict(extra or {})
        self.rows: list[dict[str, Any]] = []
        self.report: dict[str, Any] | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        self.dice.reset()
        self.pa.reset()
        self.rows = []

    def _items(self, engine):
        out, batch = engine.state.output, engine.state.batch
        if isinstance(out, dict):  # not decollated
            raise ValueError("SegmentationReportHandler needs a decollating evaluator (decollate=True)")
        batch = batch if isinstance(batch, list) else [{}] * len(out)
        for o, b in zip(out, batch):
            merged = dict(b)
            merged.update(o)
            yield merged

    def iteration_completed(self, engine) -> None:
        for item in self._items(engine):
            pred = torch.as_tensor(item[self.pred_key])[None]
            label = torch.as_tensor(item[self.label_key])[None]
            d = self.dice(pred, label)[0].tolist()
            p = self.pa(pred, label)[0].tolist()
            path = str(item.get(self.path_key, f"image_{len(self.rows):04d}"))
            row = {"image": path}
            row.update({f"dice_{n}": v for n, v in zip(self.dice.names, d)})
            row["pa_all"] = p[-1]
            self.rows.append(row)
            if len(self.rows) <= self.overlays and self.path_key in item:
                self._overlay(path, _np2d(item[self.label_key]), _np2d(item[self.pred_key]))

    def _overlay(self, path: str, label: np.ndarray, pred: np.ndarray) -> None:
        from monai_oct.data.datalist import read_image, write_png

        img = read_image(path)
        if img.ndim == 3:
            img = img.mean(-1).astype(np.uint8)
        if img.shape != label.shape:
            return
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        panel = np.concatenate([np.repeat(img[..., None], 3, -1), sep, label_overlay(img, label), sep,
                                label_overlay(img, pred.astype(np.int64))], axis=1)
        write_png(self.output_dir / "overlays" / f"{Path(path).stem}.png", panel)

    def completed(self, engine=None) -> None:
        if not self.rows:
            raise ValueError("SegmentationReportHandler: the evaluator saw no images")
        self.report = segmentation_report(self.dice, self.pa, self.table, extra=self.extra)
        write_segmentation_report(self.report, self.output_dir)
        path = self.output_dir / "per_image.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()})
        os.replace(tmp, path)
