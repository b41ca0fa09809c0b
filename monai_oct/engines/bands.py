"""Unconditional synthesis of multi-band (C-band) images: :class:`SamplerEngine` without label maps.

The hyperspectral study behind issue 17 generated unlabeled images (for self-supervised pre-training), so a
C-band set is images only: :class:`~monai_oct.engines.writer.BandWriter` writes each sample as ``images/<name>.npy`` (``(C, H, W)`` float32
reflectances in [0, 1], the format :func:`~monai_oct.phantoms.multiband.write_multiband_dataset` writes and
:class:`~monai_oct.transforms.io.LoadBandsd` reads), and :class:`BandSynthesis` is :class:`SamplerEngine` (its
folder lock, manifest, settings check on a rerun, resume, shards) with an iteration that samples without a
condition and a finish that lists images only.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from ignite.engine import Engine

from monai_oct.core.seeding import sample_generators, sample_seed
from monai_oct.engines.shards import set_files, write_set_index
from monai_oct.engines.synthesis import SamplerEngine
from monai_oct.engines.writer import BandWriter

__all__ = ["BandWriter", "BandSynthesis"]  # BandWriter lives in engines.writer; named here for older configs


class BandSynthesis(SamplerEngine):
    """Generate N unconditional C-band images and write each as soon as it exists.

    :class:`SamplerEngine` with no label source: sample ``i`` draws from ``sample_seed(seed, i)``, the folder is
    locked, ``manifest.json`` records every setting and is checked on a rerun, a killed run writes only what is
    missing; the finished set is ``datalist.json`` (``{"training": [{"image": ...}]}``), ``manifest.json`` and
    ``grid.png`` (the band mean of the first ``grid_size`` images).

    Args:
        num_samples: N.
        image_network: the latent (or pixel) UNet, unconditional.
        image_sampler: its sampler (:class:`~monai_oct.engines.latent.LatentSampler` for latents).
        image_size: ``[H, W]`` generated (pixels).
        image_channels: C, the band count.
        writer: the :class:`BandWriter`.
        kwargs: :class:`SamplerEngine`'s (``batch_size``, ``seed``, ``device``, ``progress``, ``manifest``,
            ``config``, ``runtime``, ``overwrite``, ``grid_size``, ``shard``).

    Raises:
        ValueError: as :class:`SamplerEngine`, or for ``image_channels`` < 1.
    """

    def __init__(self, num_samples: int, image_network: torch.nn.Module, image_sampler: Any, image_size: Sequence[int],
                 image_channels: int, writer: BandWriter, **kwargs: Any) -> None:
        if int(image_channels) < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}")
        # SamplerEngine records image_channels in the set's generation settings (compared on a rerun)
        super().__init__(num_samples, None, image_network, image_sampler, image_size, 0, writer, encoding="none",
                         image_channels=int(image_channels), **kwargs)

    def _iteration(self, engine: Engine, indices: Sequence[int]) -> dict:
        gens = sample_generators([sample_seed(self.seed, i) for i in indices], self.device)
        images = self.image_sampler(self.image_network, gens, (self.image_channels, *self.image_size), None, self.device)
        self.writer.write(indices, images)
        return {"indices": list(indices)}

    def finalize(self) -> None:
        """Write ``datalist.json``, the completed ``manifest.json`` and ``grid.png`` (band means).

        Raises:
            RuntimeError: when an image is missing (names it).
        """
        manifest = self._manifest(getattr(self, "_generation", None) or self.generation(), "complete",
                                  files=set_files(self.writer, self.num_samples),
                                  seconds=round(time.time() - getattr(self, "_t0", time.time()), 3))
        write_set_index(self.writer, self.num_samples, manifest, 0, self.grid_size)
