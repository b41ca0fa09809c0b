"""The latent-diffusion autoencoder: MONAI's ``AutoencoderKL`` built from a bundle's settings, and its frozen use.

Stage ``train_autoencoder`` of ``bundles/oct_ddpm`` trains an :func:`autoencoder_kl` on random crops of retina
bands and writes its weights as ``model.pt`` (a state dict) with ``latent.json`` beside it::

    {"scale_factor": 1.07, "latent_channels": 4, "compression": 4,
     "config": {"image_channels": 1, "channels": [32, 64, 64], "latent_channels": 4, "num_res_blocks": 1, ...}}

``scale_factor`` is 1 / std of the latents of a few training batches (MONAI's generative tutorials), so the
scaled latents a latent diffusion UNet learns have unit variance. :func:`load_latent` rebuilds the autoencoder
from ``config``, loads ``model.pt`` into it, freezes it and returns a :class:`LatentCodec`: ``encode`` (image in
[-1, 1] -> scaled latent) and ``decode`` (scaled latent -> image), what MONAI's ``LatentDiffusionInferer`` does
around its diffusion model (``encode_stage_2_inputs(x) * scale_factor``, ``decode_stage_2_outputs(z / scale_factor)``).

The autoencoder is fully convolutional: trained on crops, it encodes whole bands. The compression ``f`` is
``2 ** (len(channels) - 1)``: ``channels`` [32, 64, 64] turns a 224x512 band into a 4x56x128 latent. The band
count (``image_channels``) and ``latent_channels`` are settings, for multi-band images (issue 17).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from monai_oct.core.io import DataError, read_json, write_json
from monai_oct.networks.checkpoint import load_weights
from monai_oct.networks.diffusion import _groups
from monai_oct.networks.sizes import check_divisible

__all__ = ["autoencoder_kl", "compression", "LatentCodec", "latent_json_path", "write_latent_json", "load_latent",
           "LATENT_FILE"]

#: the file written beside the autoencoder's ``model.pt``.
LATENT_FILE = "latent.json"
_NONE = ("", "none", "null")


def compression(channels: Sequence[int]) -> int:
    """The down-sampling factor ``f = 2 ** (len(channels) - 1)`` of an autoencoder with widths ``channels``."""
    return 2 ** (len(tuple(channels)) - 1)


def autoencoder_kl(image_channels: int = 1, channels: Sequence[int] = (32, 64, 64), latent_channels: int = 4,
                   num_res_blocks: int = 1, norm_num_groups: int | None = None) -> AutoencoderKL:
    """A 2D ``AutoencoderKL`` without attention (cheap at band sizes, and fully convolutional for crops).

    Args:
        image_channels: bands of the image (1 for a grey B-scan).
        channels: widths per level; ``len(channels) - 1`` down-samplings (:func:`compression`).
        latent_channels: channels of the latent.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; None: the largest power of two <= 32 dividing every width.

    Returns:
        the untrained network.

    Raises:
        ValueError: for fewer than one channel or level.
    """
    channels = tuple(int(c) for c in channels)
    if int(image_channels) < 1 or int(latent_channels) < 1 or not channels:
        raise ValueError(f"image_channels and latent_channels must be >= 1 and channels non-empty, got "
                         f"{image_channels}, {latent_channels}, {list(channels)}")
    return AutoencoderKL(spatial_dims=2, in_channels=int(image_channels), out_channels=int(image_channels),
                         channels=channels, latent_channels=int(latent_channels), num_res_blocks=int(num_res_blocks),
                         attention_levels=(False,) * len(channels), norm_num_groups=norm_num_groups or _groups(channels),
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)


class LatentCodec(nn.Module):
    """A frozen autoencoder and its latent scale: images in [-1, 1] <-> scaled latents.

    Args:
        autoencoder: the trained ``AutoencoderKL``.
        scale_factor: multiplies the latents (1 / their std on training data).
        compression: the autoencoder's down-sampling factor ``f``.
    """

    def __init__(self, autoencoder: AutoencoderKL, scale_factor: float, compression: int) -> None:
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor, self.compression = float(scale_factor), int(compression)
        self.latent_channels = int(autoencoder.latent_channels)

    def train(self, mode: bool = True) -> "LatentCodec":
        """Stay in eval mode: the autoencoder is frozen (a trainer's ``network.train()`` never reaches it)."""
        return super().train(False)

    def latent_size(self, size: Sequence[int], network: nn.Module | None = None) -> tuple[int, int]:
        """``(H // f, W // f)`` of an image of ``size`` ``(..., H, W)``.

        Args:
            size: the image size.
            network: the latent diffusion UNet (a MONAI ``DiffusionModelUNet``), whose down-samplings the latent
                must also divide by; None: only ``f`` is checked.

        Raises:
            ValueError: when a side does not divide by ``f`` (times the UNet's down-sampling), naming the size,
                the factor and image sizes that work.
        """
        factor, why = self.compression, f"the autoencoder compresses by f={self.compression}"
        if network is not None:
            levels = len(getattr(network, "block_out_channels", ())) or 1
            factor *= 2 ** (levels - 1)
            why += f" and the latent UNet down-samples {levels - 1} times"
        check_divisible(size, factor, why)
        h, w = (int(s) for s in tuple(size)[-2:])
        return h // self.compression, w // self.compression

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, latent_channels, H/f, W/f)`` of ``(B, C, H, W)`` images (a sample of the posterior,
        as ``LatentDiffusionInferer`` draws); raises ValueError for sides not divisible by ``f``."""
        self.latent_size(images.shape)
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior ``(mu, sigma)`` of ``(B, C, H, W)`` images, unscaled; :meth:`sample_latents` draws from it
        what :meth:`encode` draws (raises ValueError for sides not divisible by ``f``)."""
        self.latent_size(images.shape)
        return self.autoencoder.encode(images)

    def sample_latents(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Scaled latents drawn from the posterior ``(mu, sigma)`` of :meth:`encode_moments` (``AutoencoderKL.sampling``)."""
        return self.autoencoder.sampling(mu, sigma) * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` of scaled latents, clamped to [-1, 1]."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor).clamp(-1.0, 1.0)


def latent_json_path(ckpt: str | os.PathLike) -> Path:
    """``latent.json`` beside an autoencoder checkpoint."""
    return Path(ckpt).with_name(LATENT_FILE)


def write_latent_json(ckpt: str | os.PathLike, scale_factor: float, config: Mapping[str, Any]) -> Path:
    """Write ``latent.json`` beside ``ckpt`` (atomically); returns its path.

    Args:
        ckpt: the autoencoder's ``model.pt``.
        scale_factor: the latent scale (finite, > 0).
        config: :func:`autoencoder_kl`'s arguments (``image_channels``, ``channels``, ``latent_channels``,
            ``num_res_blocks``) plus anything worth recording (crop size, losses, ...).

    Raises:
        ValueError: for a scale factor that is not finite and positive (a collapsed latent).
    """
    if not (math.isfinite(float(scale_factor)) and float(scale_factor) > 0):
        raise ValueError(f"{ckpt}: latent scale factor {scale_factor} is not finite and positive (latents collapsed?)")
    channels = list(config["channels"])
    return write_json(latent_json_path(ckpt), {"scale_factor": float(scale_factor),
                                               "latent_channels": int(config["latent_channels"]),
                                               "compression": compression(channels), "config": dict(config)})


def _read_record(path: Path) -> dict:
    """The checked content of ``latent.json``; raises DataError naming the file and what is wrong."""
    rec = read_json(path, "latent description")
    if not isinstance(rec, dict):
        raise DataError(f"{path}: expected a JSON object with scale_factor, latent_channels, compression and config")
    missing = [k for k in ("scale_factor", "latent_channels", "compression", "config") if k not in rec]
    cfg = rec.get("config")
    if not missing and isinstance(cfg, dict):
        missing = [f"config.{k}" for k in ("image_channels", "channels", "latent_channels", "num_res_blocks") if k not in cfg]
    if missing or not isinstance(cfg, dict):
        raise DataError(f"{path}: lacks {missing or ['config (an object)']}; is it the latent.json train_autoencoder wrote?")
    try:
        scale = float(rec["scale_factor"])
    except (TypeError, ValueError):
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise DataError(f"{path}: scale_factor {rec['scale_factor']!r} is not a finite positive number")
    if int(rec["latent_channels"]) != int(cfg["latent_channels"]) or int(rec["compression"]) != compression(cfg["channels"]):
        raise DataError(f"{path}: latent_channels {rec['latent_channels']} / compression {rec['compression']} disagree with "
                        f"its config (latent_channels {cfg['latent_channels']}, channels {cfg['channels']})")
    return rec


def load_latent(ckpt: str | os.PathLike | None, device: str | torch.device = "cpu") -> LatentCodec | None:
    """The frozen autoencoder of ``ckpt`` (its ``model.pt``) with the scale of the ``latent.json`` beside it.

    Args:
        ckpt: the autoencoder's state dict; None, ``""``, ``"none"`` or ``"null"``: no latent space (pixel diffusion).
        device: where the autoencoder goes.

    Returns:
        a :class:`LatentCodec` (eval mode, no gradients), or None.

    Raises:
        FileNotFoundError: when ``ckpt`` or its ``latent.json`` is missing (names the file).
        DataError: when ``latent.json`` is malformed, or ``ckpt`` does not fit the autoencoder it describes
            (names both files).
    """
    if ckpt is None or str(ckpt).strip().lower() in _NONE:
        return None
    ckpt = Path(ckpt)
    meta = latent_json_path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: autoencoder checkpoint not found (--latent_ckpt: the model.pt of train_autoencoder)")
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found; --latent_ckpt {ckpt} needs the latent.json train_autoencoder writes beside it")
    rec = _read_record(meta)
    cfg = rec["config"]
    net = autoencoder_kl(cfg["image_channels"], cfg["channels"], cfg["latent_channels"], cfg["num_res_blocks"])
    try:
        load_weights(net, ckpt)
    except DataError as e:
        raise DataError(f"{ckpt}: does not fit the autoencoder {meta} describes (channels {cfg['channels']}, latent_channels "
                        f"{cfg['latent_channels']}): {str(e).splitlines()[0][:300]}") from None
    return LatentCodec(net, rec["scale_factor"], rec["compression"]).to(device)
