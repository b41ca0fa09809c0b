"""The transform chain of stage ``train_autoencoder``: random crops of the bands stage 1 trains on.

The autoencoder is fully convolutional, so it trains on crops (cheaper per iteration, more varied batches) and
encodes whole bands afterwards. The items are stage 1's (unannotated and annotated B-scans; a label, where an
item has one, only places the band).
"""

from __future__ import annotations

from typing import Sequence

from monai.transforms import Compose, RandSpatialCropd

from monai_oct.core.labels import LabelTable
from monai_oct.recipes.diffusion_pipelines import pretrain_transforms

__all__ = ["autoencoder_transforms", "crop_transform"]


def crop_transform(crop_size: Sequence[int] | None, image_size: Sequence[int] | None) -> RandSpatialCropd | None:
    """The autoencoder's random ``crop_size`` crop of the image (MONAI's ``RandSpatialCropd``, fixed size), or
    None without a ``crop_size``.

    Raises:
        ValueError: for a crop larger than ``image_size``.
    """
    if crop_size is None:
        return None
    crop = [int(s) for s in crop_size]
    if image_size is not None and any(c > s for c, s in zip(crop, image_size)):
        raise ValueError(f"ae_crop_size {crop} is larger than image_size {list(image_size)}")
    return RandSpatialCropd(["image"], roi_size=crop, random_size=False)


def autoencoder_transforms(image_size: Sequence[int] | None, crop_size: Sequence[int] | None = None,
                           band_height: int | None = None, flip: float = 0.0,
                           table: LabelTable | str | None = "duke_dme", seed: int = 0) -> Compose:
    """Stage 1's chain (:func:`~monai_oct.recipes.diffusion_pipelines.pretrain_transforms`), then a random crop.

    Args:
        image_size: ``[H, W]`` the band is resized to (the size images are generated at).
        crop_size: ``[h, w]`` of the random crop (MONAI's ``RandSpatialCropd``, fixed size); None: the whole band.
        band_height: retina band rows before resizing (None/0: whole B-scan).
        flip: probability of a left-right flip.
        table: label table for checking labels (only read to place the band).
        seed: seed of the random transforms.

    Returns:
        the ``Compose``, ``{"image": (1, h, w)}`` in [-1, 1].

    Raises:
        ValueError: for a crop larger than ``image_size``.
    """
    steps = [pretrain_transforms(image_size, band_height, flip, table=table, seed=seed),
             crop_transform(crop_size, image_size)]
    chain = Compose([t for t in steps if t is not None])
    chain.set_random_state(seed)
    return chain
