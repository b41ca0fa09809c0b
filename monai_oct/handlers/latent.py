"""The end of stage ``train_autoencoder``: the latent scale factor, written as ``latent.json`` beside ``model.pt``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from ignite.engine import Engine, Events
from monai.networks.nets import VQVAE, AutoencoderKL

from monai_oct.engines.autoencoder import latent_scale_factor
from monai_oct.engines.distributed import is_main_process, unwrap
from monai_oct.networks.autoencoder import write_latent_json

__all__ = ["LatentScale"]

logger = logging.getLogger(__name__)


class LatentScale:
    """On ``COMPLETED``: 1 / std of the final autoencoder's latents on a few training batches -> ``latent.json``.

    Attach it after the :class:`~monai_oct.handlers.checkpoint.TrainingCheckpoint` (ignite runs ``COMPLETED``
    handlers in order), so ``latent.json`` is written after ``model.pt`` and describes it; a failed run writes
    neither. Rank 0 only.

    Args:
        autoencoder: the final weights' module (e.g. ``ema.ema_model``).
        data_loader: the training loader (its first ``num_batches`` batches are encoded).
        output_dir: the folder of ``model.pt``.
        config: the autoencoder's settings (:func:`~monai_oct.networks.autoencoder.write_latent_json`).
        num_batches: batches encoded.
        final_filename: the weights' file name.
    """

    def __init__(self, autoencoder: AutoencoderKL | VQVAE, data_loader: Iterable, output_dir: str | os.PathLike,
                 config: Mapping[str, Any], num_batches: int = 4, final_filename: str = "model.pt") -> None:
        self.autoencoder, self.data_loader = autoencoder, data_loader
        self.ckpt = Path(output_dir) / final_filename
        self.config, self.num_batches = dict(config), int(num_batches)
        self.scale_factor: float | None = None

    def attach(self, engine: Engine) -> None:
        """Write ``latent.json`` when ``engine`` completes."""
        engine.add_event_handler(Events.COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine`` (MONAI handler convention)."""
        self.attach(engine)

    def write(self, engine: Engine) -> Path | None:
        """Compute the scale factor and write ``latent.json``; returns its path (None on other ranks)."""
        if not is_main_process():
            return None
        net = unwrap(self.autoencoder)
        self.scale_factor = latent_scale_factor(net, self.data_loader, self.num_batches, engine.state.device)
        path = write_latent_json(self.ckpt, self.scale_factor, self.config)
        logger.info("latent scale factor %.4g written to %s", self.scale_factor, path)
        return path
