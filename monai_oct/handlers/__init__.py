
from monai_oct.handlers.segmentation import SegmentationReportHandler, label_overlay

from monai_oct.handlers.checkpoint import TrainingCheckpoint, TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.handlers.samples import SampleGrid, pair_grid
