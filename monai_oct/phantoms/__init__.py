"""Built-in data generators with exact labels (no download): the OCT B-scan phantom, the fundus phantom and the
multi-band fundus phantom."""

from monai_oct.phantoms.fundus import fundus_geometry, fundus_phantom, write_fundus_phantom_dataset
from monai_oct.phantoms.multiband import multiband_phantom, structure_spectra

from monai_oct.phantoms.oct import (
    PhantomConfig,
    add_fluid_pockets,
    generate_bscan,
    generate_bscans,
    sample_boundaries,
    write_phantom_dataset,
)
