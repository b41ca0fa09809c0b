"""Ignite handlers of segmentation evaluators: the report of an evaluation run (``metrics.json``, ``metrics.md``, a
per-image CSV, overlay PNGs) and overlays of a few validation images in TensorBoard at each validation."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy

from monai_oct.core.io import atomic_path, read_grey, write_png
from monai_oct.core.labels import DUKE_DME, LabelTable
from monai_oct.core.visualise import overlay_panel
from monai_oct.engines.distributed import gather_interleaved, is_main_process
from monai_oct.metrics.segmentation import (
    LayerDiceMetric,
    PixelAccuracyMetric,
    segmentation_report,
    write_segmentation_report,
)

__all__ = ["SegmentationReportHandler", "SegmentationOverlays"]

logger = logging.getLogger(__name__)


def _decollated_items(engine) -> Iterator[dict[str, Any]]:
    """The items of the current iteration of a decollating evaluator: each output merged over its batch item."""
    out, batch = engine.state.output, engine.state.batch
    if isinstance(out, dict):  # not decollated
        raise ValueError("segmentation handlers need a decollating evaluator (decollate=True)")
    batch = batch if isinstance(batch, list) else [{}] * len(out)
    for o, b in zip(out, batch):
        merged = dict(b)
        merged.update(o)
        yield merged


def _overlay_panel(path: str, label: Any, pred: Any, table: LabelTable) -> np.ndarray | None:
    """image | truth | prediction with the legend, the image read from ``path``; None (with a warning naming the file)
    when the sizes differ."""
    img = read_grey(path).astype(np.uint8)
    maps = [np.squeeze(convert_to_numpy(m)).astype(np.int64) for m in (label, pred)]  # (1, H, W) or (H, W) -> (H, W)
    if any(m.shape != img.shape for m in maps):
        logger.warning("no overlay of %s: image %s, label %s, prediction %s differ in size", path, img.shape,
                       maps[0].shape, maps[1].shape)
        return None
    return overlay_panel(img, maps, table)


class SegmentationReportHandler:
    """Accumulate Dice / pixel accuracy over an evaluator run and write the report when it completes.

    Writes into ``output_dir``: ``metrics.json`` and ``metrics.md`` (see
    :func:`monai_oct.metrics.segmentation.segmentation_report`), ``per_image.csv`` (Dice per class and
    overall PA per image) and, when ``overlays`` > 0, up to that many PNGs ``overlays/<stem>.png`` showing
    image | truth | prediction over it, with the legend of the table's class names below.

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

    def iteration_completed(self, engine) -> None:
        for item in _decollated_items(engine):
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
                panel = _overlay_panel(path, label[0, 0], pred[0, 0], self.table)
                if panel is not None:
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


class SegmentationOverlays:
    """Draw the first ``num_images`` images of each evaluator run, with truth and prediction over them, into TensorBoard.

    Each image is one TensorBoard image ``<tag>/<k>`` (image | truth | prediction and the class legend, as the
    evaluation report's overlay PNGs) at step ``engine.state.epoch``, which for a validation evaluator run by
    MONAI's ``ValidationHandler`` is the trainer's epoch, so successive validations line up on the slider.
    MONAI's ``TensorBoardImageHandler`` draws raw tensors of one batch (the network-sized image, not the
    original B-scan the prediction was mapped back onto) and no colours, hence this handler.

    Args:
        log_dir: TensorBoard folder (a ``SummaryWriter`` is made there on first use).
        num_images: images per run (0: none).
        table: label table (class names of the legend).
        tag: TensorBoard tag prefix.
        pred_key / label_key / path_key: keys of the prediction, the label and the image path (the image is
            read from the file, as it is at full size, like the label and the restored prediction).
        summary_writer: a writer to use instead of ``log_dir``.
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, num_images: int = 4, table: LabelTable = DUKE_DME,
                 tag: str = "val_overlays", pred_key: str = "pred", label_key: str = "label", path_key: str = "image_path",
                 summary_writer: Any = None) -> None:
        if log_dir is None and summary_writer is None:
            raise ValueError("SegmentationOverlays needs a log_dir or a summary_writer")
        self.log_dir, self.writer = log_dir, summary_writer
        self.num_images, self.table, self.tag = int(num_images or 0), table, tag
        self.pred_key, self.label_key, self.path_key = pred_key, label_key, path_key
        self.panels: list[np.ndarray] = []

    def attach(self, engine) -> None:
        """Collect at ``ITERATION_COMPLETED``, write at ``COMPLETED`` (every run of ``engine``)."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        self.panels = []

    def iteration_completed(self, engine) -> None:
        for item in _decollated_items(engine):
            if len(self.panels) >= self.num_images:
                return
            if self.path_key in item and self.label_key in item:
                panel = _overlay_panel(str(item[self.path_key]), item[self.label_key], item[self.pred_key], self.table)
                if panel is not None:
                    self.panels.append(panel)

    def completed(self, engine) -> None:
        if not self.panels:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        for k, panel in enumerate(self.panels):
            self.writer.add_image(f"{self.tag}/{k}", panel, global_step=engine.state.epoch, dataformats="HWC")
        self.writer.flush()
