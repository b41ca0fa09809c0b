"""Core: label tables, file I/O (one atomic write), datalists, Duke DME and DRIVE readers, geometry, seeding, pictures.

The lowest layer: it imports nothing else of the package. See ``tests/test_layers.py`` for the order.
"""

from monai_oct.core.datalist import (
    PATH_KEYS,
    DatasetReport,
    check_dataset,
    image_folder_datalist,
    load_datalist,
    write_datalist,
    write_datalists,
)
from monai_oct.core.drive import DRIVE_VALIDATION_IDS, drive_items, read_fov, split_drive, write_drive_datalist
from monai_oct.core.duke import boundaries_to_label, convert_duke_mat, load_duke_png_split, read_duke_mat
from monai_oct.core.geometry import four_adjacent, label_boundaries, regions_from_boundaries
from monai_oct.core.io import (
    IMAGE_EXTENSIONS,
    DataError,
    atomic_path,
    read_image,
    read_json,
    read_label,
    remove_temporaries,
    write_json,
    write_png,
    write_text,
)
from monai_oct.core.labels import DUKE_DME, FUNDUS_AV, RETIDIFF_GROUPS, UNANNOTATED, LabelTable, get_label_table
from monai_oct.core.records import differences, plain
from monai_oct.core.seeding import sample_generators, sample_seed, sample_seeds
from monai_oct.core.visualise import (
    PALETTE,
    image_to_uint8,
    label_legend,
    label_overlay,
    label_to_uint8,
    overlay_panel,
    pair_grid,
)
