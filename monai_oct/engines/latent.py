"""Latent diffusion: the image stages trained and sampled in the latent space of a frozen autoencoder.

With ``--latent_ckpt`` (the ``model.pt`` of stage ``train_autoencoder``, :func:`~monai_oct.networks.autoencoder.load_latent`)
the diffusion UNet learns the autoencoder's scaled latents instead of pixels, at ``image_size // f``:

- :class:`LatentDiffusionTrainer` encodes each batch's images (``encode_stage_2_inputs(x) * scale_factor``, what
  MONAI's ``LatentDiffusionInferer`` does) and area-averages its condition to the latent size, then runs the
  pixel trainer's step unchanged. MONAI's ``LatentDiffusionInferer`` is not used for training because
  :class:`~monai_oct.engines.diffusion.DiffusionTrainer` draws the noise and the target (epsilon/v/x0) before
  calling its inferer, at the shape of what it is given; encoding first keeps one training step for both spaces.
  The frozen encoder costs more than the small latent UNet's training step at band sizes (a 224x512 batch of 8:
  ~1.5 s against ~1 s on one CPU core), so the trainer keeps each image's posterior ``(mu, sigma)`` in a bounded
  cache keyed by the image's bytes (``latent_cache`` entries; a flipped image is another entry) and draws a fresh
  latent from it every time, the same distribution ``encode`` samples; an image an augmentation changed is a miss
  and is encoded.
- :class:`LatentSampler` wraps a :class:`~monai_oct.engines.sampler.DiffusionSampler` (per-sample seeds, guidance,
  autocast): it samples latents and decodes them. ``LatentDiffusionInferer.sample`` draws one noise for the whole
  batch, which would break the project's per-sample streams (a pair must not depend on its batch).

The condition: area-averaging the one-hot encoding of a label map at pixel size (or at a finer ``label_size``)
to the latent size is :func:`~monai_oct.transforms.encoding.encode_mask_resized` at the latent size (area means
over integer factors compose), so a boundary shows as the fraction of each class in the latent pixel it crosses.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine

from monai_oct.engines.diffusion import DiffusionTrainer
from monai_oct.engines.distributed import unwrap
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.autoencoder import LatentCodec
from monai_oct.transforms.encoding import area_resize

__all__ = ["LatentDiffusionTrainer", "LatentSampler", "latent_sampler", "pool_condition"]


def pool_condition(condition: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area-average an encoded condition ``(B, ch, H, W)`` to ``size`` ``(h, w)`` (unchanged when it has that size).

    Raises:
        ValueError: when ``size`` is larger than the condition (a coarser condition adds no precision).
    """
    h, w = (int(s) for s in size)
    if condition.shape[-2] < h or condition.shape[-1] < w:
        raise ValueError(f"condition of size {list(condition.shape[-2:])} is smaller than the latent size {[h, w]}")
    return area_resize(condition, (h, w))


class LatentDiffusionTrainer(DiffusionTrainer):
    """:class:`~monai_oct.engines.diffusion.DiffusionTrainer` in the latent space of a frozen autoencoder.

    Args:
        latent: the frozen autoencoder (:func:`~monai_oct.networks.autoencoder.load_latent`); None: pixel
            diffusion, exactly :class:`DiffusionTrainer`.
        latent_cache: images whose posterior ``(mu, sigma)`` is kept (least recently used dropped; 0: encode every
            batch). Entries live on the CPU: ``2 * latent_channels * (H/f) * (W/f)`` floats each (229 KB for a
            224x512 band at f = 4).
        args, kwargs: :class:`DiffusionTrainer`'s (its network is the latent UNet: ``latent_channels`` in and
            out besides the condition).

    Raises:
        ValueError: during training, for an image size that does not divide by the autoencoder's ``f``
            (names the size), or as :class:`DiffusionTrainer`; at construction for a negative ``latent_cache``.
    """

    def __init__(self, *args: Any, latent: LatentCodec | None = None, latent_cache: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(latent_cache) < 0:
            raise ValueError(f"latent_cache must be >= 0 entries, got {latent_cache}")
        self.latent = latent.to(self.state.device) if latent is not None else None
        self.latent_cache = int(latent_cache)
        self._moments: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cache_hits = self.cache_misses = 0

    def _encode(self, images: torch.Tensor, raw: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents of ``images``: :meth:`LatentCodec.encode`, with the posteriors of images seen before
        taken from the cache (only the misses go through the encoder, as one batch). ``raw``: the same images as
        the loader gave them (hashed there, so a GPU batch is not copied back; default ``images``)."""
        raw = images if raw is None else raw
        assert self.latent is not None
        if not self.latent_cache:
            return self.latent.encode(images)
        keys = [hashlib.blake2b(img.detach().cpu().numpy().tobytes(), digest_size=16).digest() for img in raw]
        missing = [i for i, k in enumerate(keys) if k not in self._moments]
        if missing:
            mu, sigma = self.latent.encode_moments(images[missing])
            for j, i in enumerate(missing):
                self._moments[keys[i]] = (mu[j].cpu(), sigma[j].cpu())
                if len(self._moments) > self.latent_cache:
                    self._moments.popitem(last=False)
        self.cache_misses += len(missing)
        self.cache_hits += len(keys) - len(missing)
        got = [self._moments.get(k) for k in keys]
        if any(g is None for g in got):  # a batch larger than the cache pushed its own entries out
            return self.latent.encode(images)
        for k in keys:
            self._moments.move_to_end(k)
        mu = torch.stack([g[0] for g in got]).to(images.device)
        sigma = torch.stack([g[1] for g in got]).to(images.device)
        return self.latent.sample_latents(mu, sigma)

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict:  # type: ignore[override]
        """Encode the images and pool the condition (latent mode), then the pixel trainer's step."""
        if self.latent is None or batchdata is None:
            return super()._iteration(engine, batchdata)
        batch = dict(batchdata)
        raw = torch.as_tensor(batch[self.image_key])
        images = raw.to(engine.state.device, non_blocking=self.non_blocking).float()
        if not self._size_checked:  # named in image pixels, before the UNet's own check names the latent size
            self.latent.latent_size(images.shape, unwrap(engine.network))
        batch[self.image_key] = self._encode(images, raw)
        cond = batch.get(self.condition_key)
        if cond is not None:
            cond = torch.as_tensor(cond).to(engine.state.device).float()
            batch[self.condition_key] = pool_condition(cond, batch[self.image_key].shape[-2:])
        return super()._iteration(engine, batch)


class LatentSampler:
    """Sample latents with a :class:`DiffusionSampler` and decode them: a drop-in sampler of images.

    Called like :class:`DiffusionSampler` with the *image* shape ``(C, H, W)`` and a condition at the image's
    (or a finer) size; samples ``(latent_channels, H/f, W/f)`` latents conditioned on the condition area-averaged
    to that size and returns the decoded images. ``scheduler``, ``num_inference_steps`` and ``guidance_scale`` are
    the wrapped sampler's (what a synthesis manifest records).

    The wrapped scheduler's ``clip_sample`` is switched off: scaled latents have unit variance, not a [-1, 1]
    range, and clipping the predicted x0 would cut them off; the decoded image is clamped to [-1, 1] instead.

    Args:
        sampler: the latent sampler.
        latent: the frozen autoencoder.
    """

    def __init__(self, sampler: DiffusionSampler, latent: LatentCodec) -> None:
        self.sampler, self.latent = sampler, latent
        if getattr(sampler.scheduler, "clip_sample", False):
            sampler.scheduler.clip_sample = False

    def __getattr__(self, name: str) -> Any:
        if name in ("sampler", "latent"):  # not yet set (unpickling, copying)
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def __call__(self, network: torch.nn.Module, generators: Sequence[torch.Generator], shape: Sequence[int],
                 condition: torch.Tensor | None = None, device: str | torch.device | None = None,
                 class_labels: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
        """Generate ``len(generators)`` images of ``shape`` ``(C, H, W)`` (``class_labels``: as
        :meth:`DiffusionSampler.__call__`, for a class-conditioned latent UNet).

        Returns:
            float32 ``(B, C, H, W)`` in [-1, 1].

        Raises:
            ValueError: for ``H, W`` not divisible by ``f``, a latent size the UNet cannot take, a condition
                smaller than the latent, or a decoded band count other than ``C``.
        """
        c, h, w = (int(s) for s in shape)
        size = self.latent.latent_size((h, w), network)
        cond = pool_condition(condition, size) if condition is not None else None
        z = self.sampler(network, generators, (self.latent.latent_channels, *size), cond, device, class_labels)
        images = self.latent.decode(z.to(next(self.latent.parameters()).device)).float()
        if images.shape[1] != c:
            raise ValueError(f"the autoencoder decodes {images.shape[1]} band(s), the images to write have {c}")
        return images.to(z.device)


def latent_sampler(sampler: DiffusionSampler, latent: LatentCodec | None) -> DiffusionSampler | LatentSampler:
    """``sampler`` itself for pixel diffusion (``latent`` None), else the :class:`LatentSampler` around it."""
    return sampler if latent is None else LatentSampler(sampler, latent)
