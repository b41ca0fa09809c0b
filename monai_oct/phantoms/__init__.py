"""Built-in data generators with exact labels (no download): the OCT B-scan phantom and the fundus phantom."""

from monai_oct.phantoms.fundus import fundus_phantom, write_fundus_phantom_dataset

from monai_oct.phantoms.oct import (
    PhantomConfig,
    add_fluid_pockets,
    generate_bscan,
    generate_bscans,
    sample_boundaries,
    write_phantom_dataset,
)
