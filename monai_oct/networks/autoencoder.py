"""The latent-diffusion autoencoder: MONAI's ``AutoencoderKL`` or ``VQVAE`` built from a bundle's settings, and its frozen use.

Stage ``train_autoencoder`` of ``bundles/oct_ddpm`` trains an :func:`autoencoder_kl` on random crops of retina
bands and writes its weights as ``model.pt`` (a state dict) with ``latent.json`` beside it::

    {"kind": "kl", "scale_factor": 1.07, "latent_channels": 4, "compression": 4,
     "config": {"kind": "kl", "image_channels": 1, "channels": [32, 64, 64], "latent_channels": 4,
                "num_res_blocks": 1, ...}}

Two kinds (:func:`build_autoencoder`): ``kl``, MONAI's ``AutoencoderKL`` (:func:`autoencoder_kl`), and ``vq``,
MONAI's ``VQVAE`` (:func:`autoencoder_vq`; with a ``PatchDiscriminator`` in training, a VQ-GAN), whose record
adds ``num_embeddings``, ``commitment_cost`` and ``codebook_decay`` to ``config``. A record without ``kind``
(written before there were two) is a ``kl`` one.

``scale_factor`` is 1 / std of the latents of a few training batches (MONAI's generative tutorials), so the
scaled latents a latent diffusion UNet learns have unit variance. :func:`load_latent` rebuilds the autoencoder
from ``config``, loads ``model.pt`` into it, freezes it and returns a :class:`LatentCodec`: ``encode`` (image in
[-1, 1] -> scaled latent) and ``decode`` (scaled latent -> image), what MONAI's ``LatentDiffusionInferer`` does
around its diffusion model (``encode_stage_2_inputs(x) * scale_factor``, ``decode_stage_2_outputs(z / scale_factor)``).

For a ``vq`` autoencoder the latent is the quantized one (the nearest codebook vectors, continuous values:
``VQVAE.encode_stage_2_inputs``) and decoding snaps a latent to its nearest codes first
(``decode_stage_2_outputs``), so latent diffusion trains and samples the same way on either kind.

The autoencoder is fully convolutional: trained on crops, it encodes whole bands. The compression ``f`` is
``2 ** (len(channels) - 1)`` for both kinds: ``channels`` [32, 64, 64] turns a 224x512 band into a 4x56x128
latent. The band count (``image_channels``, any) and ``latent_channels`` are settings, for multi-band images
(issue 17).
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from monai.networks.nets import VQVAE, AutoencoderKL
from torch import nn

from monai_oct.core.io import DataError, read_json, write_json
from monai_oct.networks.checkpoint import load_weights
from monai_oct.networks.diffusion import _groups
from monai_oct.networks.sizes import check_divisible

__all__ = ["autoencoder_kl", "autoencoder_vq", "build_autoencoder", "check_kind", "compression", "compression_widths", "LatentCodec",
           "latent_json_path", "write_latent_json", "load_latent", "KINDS", "LATENT_FILE"]

#: the file written beside the autoencoder's ``model.pt``.
LATENT_FILE = "latent.json"
_NONE = ("", "none", "null")
#: the autoencoder kinds: MONAI's ``AutoencoderKL`` and ``VQVAE``.
KINDS = ("kl", "vq")
#: the settings :func:`build_autoencoder` takes from a record's ``config`` (the rest is only recorded).
_VQ_KEYS = ("num_embeddings", "commitment_cost", "codebook_decay")
_BUILD_KEYS = ("image_channels", "channels", "latent_channels", "num_res_blocks") + _VQ_KEYS


def compression(channels: Sequence[int]) -> int:
    """The down-sampling factor ``f = 2 ** (len(channels) - 1)`` of an autoencoder with widths ``channels``."""
    return 2 ** (len(tuple(channels)) - 1)


def compression_widths(compression: int, base: int = 32, top: int | None = None) -> list[int]:
    """Autoencoder widths for a down-sampling factor: ``[base, 2 base, 2 base, ...]`` (``top``: the widths after
    the first, default ``2 * base``), ``log2(compression) + 1`` levels, so that ``compression(widths) == compression``.

    Raises:
        ValueError: when ``compression`` is not a power of two >= 1.
    """
    f = int(compression)
    if f < 1 or f & (f - 1):
        raise ValueError(f"compression must be a power of two (1, 2, 4, 8, 16, ...), got {compression}")
    wide = int(top) if top is not None else 2 * int(base)
    return [int(base)] + [wide] * (f.bit_length() - 1)


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


def autoencoder_vq(image_channels: int = 1, channels: Sequence[int] = (32, 64, 64), latent_channels: int = 4,
                   num_res_blocks: int = 1, num_embeddings: int = 256, commitment_cost: float = 0.25,
                   codebook_decay: float = 0.99) -> VQVAE:
    """A 2D ``VQVAE`` with the compression of :func:`autoencoder_kl` of the same ``channels``.

    MONAI's ``VQVAE`` down-samples at every level; here the first level is a stride-1 3x3 convolution (and the
    decoder's last one its stride-1 transpose), the others MONAI's stride-2 4x4 ones, so ``f = 2 ** (len(channels)
    - 1)`` as for the KL autoencoder and ``--ae_channels`` means the same for both kinds.

    Args:
        image_channels: bands of the image (any count).
        channels: widths per level (also the widths of the residual units).
        latent_channels: ``embedding_dim``, the channels of the (quantized) latent.
        num_res_blocks: residual units per level (``num_res_layers``).
        num_embeddings: codebook size.
        commitment_cost: weight of the commitment loss ``VQVAE`` returns.
        codebook_decay: EMA decay of the codebook updates (MONAI's ``decay``; its default 0.5 forgets fast).

    Returns:
        the untrained network.

    Raises:
        ValueError: for fewer than one channel, level or code.
    """
    channels = tuple(int(c) for c in channels)
    if int(image_channels) < 1 or int(latent_channels) < 1 or not channels or int(num_embeddings) < 1:
        raise ValueError(f"image_channels, latent_channels and num_embeddings must be >= 1 and channels non-empty, got "
                         f"{image_channels}, {latent_channels}, {num_embeddings}, {list(channels)}")
    n = len(channels)
    down = ((1, 3, 1, 1),) + ((2, 4, 1, 1),) * (n - 1)
    up = ((2, 4, 1, 1, 0),) * (n - 1) + ((1, 3, 1, 1, 0),)  # the decoder runs the levels in reverse
    return VQVAE(spatial_dims=2, in_channels=int(image_channels), out_channels=int(image_channels), channels=channels,
                 num_res_layers=int(num_res_blocks), num_res_channels=channels, downsample_parameters=down,
                 upsample_parameters=up, num_embeddings=int(num_embeddings), embedding_dim=int(latent_channels),
                 commitment_cost=float(commitment_cost), decay=float(codebook_decay))


def check_kind(kind: str | None) -> str:
    """``kind`` lower-cased (None: ``kl``); raises ValueError naming the value for anything but ``kl`` / ``vq``."""
    k = "kl" if kind is None else str(kind).strip().lower()
    if k not in KINDS:
        raise ValueError(f"autoencoder kind {kind!r} is not one of {list(KINDS)} (--autoencoder_kind)")
    return k


def build_autoencoder(kind: str = "kl", image_channels: int = 1, channels: Sequence[int] = (32, 64, 64),
                      latent_channels: int = 4, num_res_blocks: int = 1, num_embeddings: int = 256,
                      commitment_cost: float = 0.25, codebook_decay: float = 0.99) -> nn.Module:
    """The autoencoder of ``kind``: :func:`autoencoder_kl` (``kl``) or :func:`autoencoder_vq` (``vq``).

    Args:
        kind: ``kl`` or ``vq``.
        image_channels, channels, latent_channels, num_res_blocks: both kinds' settings.
        num_embeddings, commitment_cost, codebook_decay: ``vq`` only (ignored for ``kl``).

    Returns:
        the untrained network.

    Raises:
        ValueError: for another kind, or the builders' errors.
    """
    if check_kind(kind) == "vq":
        return autoencoder_vq(image_channels, channels, latent_channels, num_res_blocks, num_embeddings,
                              commitment_cost, codebook_decay)
    return autoencoder_kl(image_channels, channels, latent_channels, num_res_blocks)


class LatentCodec(nn.Module):
    """A frozen autoencoder and its latent scale: images in [-1, 1] <-> scaled latents.

    A ``VQVAE``'s latent is deterministic (the quantized encoder output): :meth:`encode_moments` returns it with
    ``sigma`` 0 and :meth:`sample_latents` returns it scaled, so the latent trainer's cache works for both kinds.

    Args:
        autoencoder: the trained ``AutoencoderKL`` or ``VQVAE``.
        scale_factor: multiplies the latents (1 / their std on training data).
        compression: the autoencoder's down-sampling factor ``f``.
    """

    def __init__(self, autoencoder: AutoencoderKL | VQVAE, scale_factor: float, compression: int) -> None:
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor, self.compression = float(scale_factor), int(compression)
        self.kind = "vq" if isinstance(autoencoder, VQVAE) else "kl"
        self.latent_channels = int(autoencoder.embedding_dim if self.kind == "vq" else autoencoder.latent_channels)

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
        as ``LatentDiffusionInferer`` draws; the quantized latent of a VQ-VAE); raises ValueError for sides not
        divisible by ``f``."""
        self.latent_size(images.shape)
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior ``(mu, sigma)`` of ``(B, C, H, W)`` images, unscaled; :meth:`sample_latents` draws from it
        what :meth:`encode` draws (a VQ-VAE: its quantized latent and zeros; raises ValueError for sides not
        divisible by ``f``)."""
        self.latent_size(images.shape)
        if self.kind == "vq":
            z = self.autoencoder.encode_stage_2_inputs(images)
            return z, torch.zeros_like(z)
        return self.autoencoder.encode(images)

    def sample_latents(self, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Scaled latents drawn from the posterior ``(mu, sigma)`` of :meth:`encode_moments` (``AutoencoderKL.sampling``;
        a VQ-VAE's ``mu`` scaled)."""
        if self.kind == "vq":
            return mu * self.scale_factor
        return self.autoencoder.sampling(mu, sigma) * self.scale_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` of scaled latents, clamped to [-1, 1] (a VQ-VAE quantizes the latents first)."""
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor).clamp(-1.0, 1.0)


def latent_json_path(ckpt: str | os.PathLike) -> Path:
    """``latent.json`` beside an autoencoder checkpoint."""
    return Path(ckpt).with_name(LATENT_FILE)


def write_latent_json(ckpt: str | os.PathLike, scale_factor: float, config: Mapping[str, Any]) -> Path:
    """Write ``latent.json`` beside ``ckpt`` (atomically); returns its path.

    Args:
        ckpt: the autoencoder's ``model.pt``.
        scale_factor: the latent scale (finite, > 0).
        config: :func:`build_autoencoder`'s arguments (``kind``, default ``kl``; ``image_channels``, ``channels``,
            ``latent_channels``, ``num_res_blocks``; for ``vq`` ``num_embeddings``, ``commitment_cost``,
            ``codebook_decay``) plus anything worth recording (crop size, losses, ...).

    Raises:
        ValueError: for a scale factor that is not finite and positive (a collapsed latent), or an unknown kind.
    """
    if not (math.isfinite(float(scale_factor)) and float(scale_factor) > 0):
        raise ValueError(f"{ckpt}: latent scale factor {scale_factor} is not finite and positive (latents collapsed?)")
    config = dict(config, kind=check_kind(config.get("kind")))
    if config["kind"] == "kl":  # the codebook settings of a bundle's shared config mean nothing here
        config = {k: v for k, v in config.items() if k not in _VQ_KEYS}
    else:  # every codebook setting, defaults included, so the record says what was built
        defaults = inspect.signature(autoencoder_vq).parameters
        config = {**{k: defaults[k].default for k in _VQ_KEYS}, **config}
    channels = list(config["channels"])
    return write_json(latent_json_path(ckpt), {"kind": config["kind"], "scale_factor": float(scale_factor),
                                               "latent_channels": int(config["latent_channels"]),
                                               "compression": compression(channels), "config": config})


def _read_record(path: Path) -> dict:
    """The checked content of ``latent.json``; raises DataError naming the file and what is wrong."""
    rec = read_json(path, "latent description")
    if not isinstance(rec, dict):
        raise DataError(f"{path}: expected a JSON object with scale_factor, latent_channels, compression and config")
    missing = [k for k in ("scale_factor", "latent_channels", "compression", "config") if k not in rec]
    cfg = rec.get("config")
    kind = rec.get("kind", cfg.get("kind", "kl") if isinstance(cfg, dict) else "kl")  # before kinds: kl
    if kind not in KINDS or (isinstance(cfg, dict) and cfg.get("kind", kind) != kind):
        raise DataError(f"{path}: autoencoder kind {kind!r} (config: {cfg.get('kind') if isinstance(cfg, dict) else None!r}) "
                        f"is not one of {list(KINDS)} or disagrees with its config")
    if not missing and isinstance(cfg, dict):
        need = ("image_channels", "channels", "latent_channels", "num_res_blocks") + (("num_embeddings",) if kind == "vq" else ())
        missing = [f"config.{k}" for k in need if k not in cfg]
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
    return dict(rec, kind=kind)


def load_latent(ckpt: str | os.PathLike | None, device: str | torch.device = "cpu") -> LatentCodec | None:
    """The frozen autoencoder of ``ckpt`` (its ``model.pt``) with the scale of the ``latent.json`` beside it.

    Args:
        ckpt: the autoencoder's state dict; None, ``""``, ``"none"`` or ``"null"``: no latent space (pixel diffusion).
        device: where the autoencoder goes.

    Returns:
        a :class:`LatentCodec` (eval mode, no gradients), or None.

    Raises:
        FileNotFoundError: when ``ckpt`` or its ``latent.json`` is missing (names the file).
        DataError: when ``latent.json`` is malformed (an unknown ``kind``; one without ``kind`` is ``kl``), or
            ``ckpt`` does not fit the autoencoder it describes (names both files).
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
    net = build_autoencoder(rec["kind"], **{k: cfg[k] for k in _BUILD_KEYS if k in cfg})
    try:
        load_weights(net, ckpt)
    except DataError as e:
        raise DataError(f"{ckpt}: does not fit the autoencoder {meta} describes (kind {rec['kind']}, channels {cfg['channels']}, "
                        f"latent_channels {cfg['latent_channels']}): {str(e).splitlines()[0][:300]}") from None
    return LatentCodec(net, rec["scale_factor"], rec["compression"]).to(device)
