"""Metrics: segmentation Dice / pixel accuracy, fundus vessel and artery/vein metrics inside the field of view, the
quality of a synthetic set (distances, diversity, memorisation, mask adherence, anatomical plausibility) and of a
multi-band set (spectral KL per structure, MS-SSIM gap, artery/vein separability)."""

from monai_oct.metrics.adherence import SegmentationTeacher, adherence_report, load_teacher
from monai_oct.metrics.diversity import diversity_report, ms_ssim_settings, pairwise_ms_ssim
from monai_oct.metrics.fid import (
    ExtractorUnavailable,
    ModuleExtractor,
    TFInceptionExtractor,
    band_triplets,
    extract_features,
    extract_triplet_features,
    find_tf_inception_weights,
    frechet_distance,
    frechet_summary,
    get_extractor,
    kernel_distance,
    matched_draws,
    segmentation_encoder_extractor,
    triplet_frechet_summary,
)
from monai_oct.metrics.fundus import (
    ArteryVeinMetric,
    VesselMetric,
    av_adjacency,
    fundus_plausibility,
    vessel_connectivity,
    vessel_probability,
)
from monai_oct.metrics.memorisation import memorisation_report, nearest_neighbours, pairwise_distances
from monai_oct.metrics.plausibility import column_validity, label_plausibility, plausibility_report
from monai_oct.metrics.spectral import (
    av_separability,
    ms_ssim_gap,
    spectral_kl,
    spectral_kl_floor,
    spectral_report,
    structure_histograms,
)
from monai_oct.metrics.segmentation import (
    LayerDiceMetric,
    PixelAccuracyMetric,
    segmentation_report,
    write_segmentation_report,
)
