"""How multi-band (C-band) images enter the latent diffusion stages of ``bundles/retina_ldm``.

Items are ``{"image": <(C, H, W) .npy>, "structures": <ids .png>}`` (:func:`~monai_oct.phantoms.multiband.write_multiband_dataset`);
generation is unconditional (the hyperspectral study's images were unlabeled), so only the image is trained on,
as reflectances [0, 1] mapped to the diffusion range [-1, 1].
"""

from __future__ import annotations

from typing import Sequence

from monai.transforms import Compose, EnsureTyped, RandFlipd, Resized, ScaleIntensityRanged, SelectItemsd

from monai_oct.recipes.latent_pipelines import crop_transform
from monai_oct.transforms.io import LoadBandsd

__all__ = ["band_transforms"]


def band_transforms(image_size: Sequence[int] | None, crop_size: Sequence[int] | None = None, flip: float = 0.0,
                    num_bands: int | None = None, seed: int = 0) -> Compose:
    """Load a C-band image, resize it to ``image_size`` (area), map [0, 1] to [-1, 1], flip, crop.

    Args:
        image_size: ``[H, W]`` the images are generated at (None: as stored).
        crop_size: ``[h, w]`` of a random crop (MONAI's ``RandSpatialCropd``; the autoencoder trains on crops);
            None: the whole image.
        flip: probability of a left-right flip.
        num_bands: the band count every file must have (``image_channels``; None: any).
        seed: seed of the random transforms.

    Returns:
        the ``Compose``, ``{"image": (C, h, w)}`` float32 in [-1, 1] (other item keys dropped).

    Raises:
        ValueError: for a crop larger than ``image_size``.
    """
    steps = [SelectItemsd(["image"]), LoadBandsd(["image"], mask_keys=(), num_bands=num_bands)]
    if image_size is not None:
        steps.append(Resized(["image"], spatial_size=[int(s) for s in image_size], mode="area"))
    steps += [ScaleIntensityRanged(["image"], a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
              RandFlipd(["image"], prob=flip, spatial_axis=1), crop_transform(crop_size, image_size),
              EnsureTyped(["image"], track_meta=False)]
    chain = Compose([t for t in steps if t is not None])
    chain.set_random_state(seed)
    return chain
