"""Array transforms with their dictionary twins (MONAI style)."""

from monai_oct.transforms.band import RetinaBandCrop, RetinaBandCropd, locate_retina_rows
from monai_oct.transforms.restore import RecordShaped, RestoreBScan, RestoreBScand
from monai_oct.transforms.save import SaveLabelMap, SaveLabelMapd
