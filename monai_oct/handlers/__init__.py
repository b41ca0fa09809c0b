"""Ignite handlers: checkpoints and training logs, EMA, sample grids, segmentation reports."""

from monai_oct.handlers.checkpoint import TrainingCheckpoint, TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.handlers.samples import SampleGrid
from monai_oct.handlers.segmentation import SegmentationReportHandler
