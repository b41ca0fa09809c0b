"""Ignite handlers: checkpoints and training logs, EMA, the non-finite loss guard, sample grids, segmentation reports and
overlays, and the pieces of what the console shows (progress decision, log interval, loss and learning rate)."""

from monai_oct.handlers.checkpoint import AtomicSaver, TrainingCheckpoint, TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.handlers.guard import NonFiniteLossGuard
from monai_oct.handlers.samples import SampleGrid
from monai_oct.handlers.segmentation import SegmentationOverlays, SegmentationReportHandler
from monai_oct.handlers.stats import every_n_iterations, loss_and_lr, show_progress
