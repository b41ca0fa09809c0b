"""Ignite handlers: checkpoints and training logs, EMA, the non-finite loss guard, sample grids, segmentation reports."""

from monai_oct.handlers.checkpoint import AtomicSaver, TrainingCheckpoint, TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.handlers.guard import NonFiniteLossGuard
from monai_oct.handlers.samples import SampleGrid
from monai_oct.handlers.segmentation import SegmentationReportHandler
