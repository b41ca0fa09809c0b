"""Data layer: label tables, datalists, Duke DME readers, the OCT phantom and B-scan transform chains."""

from monai_oct.data.datalist import (
    DataError,
    DatasetReport,
    check_dataset,
    image_folder_datalist,
    load_datalist,
    read_image,
    read_label,
    write_datalist,
    write_png,
)
from monai_oct.data.duke import boundaries_to_label, convert_duke_mat, load_duke_png_split, read_duke_mat
from monai_oct.data.labels import DUKE_DME, RETIDIFF_GROUPS, UNANNOTATED, LabelTable, get_label_table
from monai_oct.data.phantom import PhantomConfig, generate_bscan, generate_bscans, write_phantom_dataset

# random layer sketches (Wu et al.)
from monai_oct.data.phantom import add_fluid_pockets, regions_from_boundaries, sample_boundaries
from monai_oct.data.sketches import LayerThicknessStats, RandomSketchDataset, generate_sketch
