"""Ignite handler that turns an evaluation run into ``metrics.json``, ``metrics.md``, a per-image CSV and overlays."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy

from monai_oct.core.io import atomic_path, read_grey, write_png
from monai_oct.core.labels import DUKE_DME, LabelTable
from monai_oct.core.visualise import label_overlay
from monai_oct.engines.distributed import gather_interleaved, is_main_process
from monai_oct.metrics.segmentation import (
    LayerDiceMetric,
    PixelAccuracyMetric,
    segmentation_report,
    write_segmentation_report,
)

__all__ = ["SegmentationReportHandler"]


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

    In a multi-process run every rank scores its share; the rows and metric buffers are gathered and rank 0
    writes the files (overlays: of its own share).
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
            if len(self.rows) <= self.overlays and self.path_key in item and is_main_process():
                self._overlay(path, convert_to_numpy(label[0, 0]), convert_to_numpy(pred[0, 0]))

    def _overlay(self, path: str, label: np.ndarray, pred: np.ndarray) -> None:
        img = read_grey(path).astype(np.uint8)
        if img.shape != label.shape:
            return
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        panel = np.concatenate([np.repeat(img[..., None], 3, -1), sep, label_overlay(img, label), sep,
                                label_overlay(img, pred.astype(np.int64))], axis=1)
        write_png(self.output_dir / "overlays" / f"{Path(path).stem}.png", panel)

    def completed(self, engine=None) -> None:
        self.rows = gather_interleaved(self.rows)  # a multi-process run: every rank's images, in data order
        if not self.rows:
            raise ValueError("SegmentationReportHandler: the evaluator saw no images")
        self.report = segmentation_report(self.dice, self.pa, self.table, extra=self.extra)  # gathers across ranks too
        if not is_main_process():
            return
        write_segmentation_report(self.report, self.output_dir)
        path = self.output_dir / "per_image.csv"
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(self.rows[0]))
            w.writeheader()
            for r in self.rows:
                w.writerow({k: ("" if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()})
