"""monai_oct: diffusion-model synthesis of annotated retinal OCT, as MONAI bundles."""

__version__ = "0.1.0"
