"""Array transforms with their dictionary twins (MONAI style): OCT bands, mask encodings and decodings, the fundus field of view."""

from monai_oct.transforms.band import RetinaBandCrop, RetinaBandCropd, locate_retina_rows
from monai_oct.transforms.dmc import DiscreteMaskClustering, DiscreteMaskClusteringd, nearest_level_decode
from monai_oct.transforms.drm import DynamicRegionMask, RandDynamicRegionMaskd
from monai_oct.transforms.fov import MaskOutsideFOV, MaskOutsideFOVd, fov_mask
from monai_oct.transforms.vessels import (ResolveUncertain, ResolveUncertaind, VesselTreeDecode, VesselTreeDecoded,
                                         estimate_disc_centre)
from monai_oct.transforms.encoding import (
    MODES,
    AreaMaskEncode,
    AreaMaskEncoded,
    MaskDecode,
    MaskDecoded,
    MaskEncode,
    MaskEncoded,
    condition_channels,
    decode_mask,
    encode_mask,
    encode_mask_resized,
    scalar_levels,
)
from monai_oct.transforms.io import LoadBands, LoadBandsd, LoadBScan, LoadBScand
from monai_oct.transforms.record import KeepPathd, RecordKeyd, RecordShaped
from monai_oct.transforms.restore import RestoreBScan, RestoreBScand
from monai_oct.transforms.save import SaveLabelMap, SaveLabelMapd
from monai_oct.transforms.topology import LayerOrderDecode, LayerOrderDecoded, layer_order_decode, merge_decoding_reports

# layer sketches (Wu et al.)
from monai_oct.transforms.sketch import FLUID_STYLES, LayerSketch, LayerSketchd

# pathology placed by hand on label maps (issue 18)
from monai_oct.transforms.pathology import (
    InsertDrusen,
    InsertDrusend,
    InsertFluid,
    InsertFluidd,
    RandInsertDrusend,
    RandInsertFluidd,
    fluid_zone,
)
