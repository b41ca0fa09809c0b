
from monai_oct.handlers.segmentation import SegmentationReportHandler, label_overlay
