"""Recipes: how the building blocks fit together for a task (transform chains, items, sources, quality reports).

Bundles, the command line and the benchmarks call these; the building blocks below never import them.
"""

from monai_oct.recipes.diffusion_pipelines import (
    finetune_transforms,
    mask_transforms,
    pretrain_transforms,
    sketch_transforms,
)
from monai_oct.recipes.image_sets import ImageSet, load_image_set
from monai_oct.recipes.items import find_datalist, resolve_items
from monai_oct.recipes.mixing import RatioSampler, quotas
from monai_oct.recipes.pipelines import bscan_transforms, png_reader
from monai_oct.recipes.pseudo_label import PseudoLabeller
from monai_oct.recipes.quality import evaluate_synthesis, quality_figure, write_report
from monai_oct.recipes.seg_pipelines import seg_augment, seg_eval_transforms, seg_post_transforms, seg_train_transforms
from monai_oct.recipes.sketches import LayerThicknessStats, RandomSketchDataset, generate_sketch
from monai_oct.recipes.sources import LabelBank, MaskSampler, SketchSource, build_label_source, sketch_source
