"""Training the latent-diffusion autoencoder (MONAI's ``AutoencoderKL``) with MONAI's ``SupervisedTrainer`` machinery.

One iteration, as in MONAI's generative tutorials: reconstruct the batch, minimise

    L1(recon, x) + kl_weight * KL(q(z|x) || N(0, 1)) [+ perceptual_weight * perceptual(recon, x)]
                 [+ adv_weight * adversarial(recon)]

and, with a discriminator (``adv_weight > 0``), take one ``PatchDiscriminator`` step on the least-squares
patch loss of real vs reconstructed crops (``monai.losses.PatchAdversarialLoss``). The KL is the closed form
``0.5 * sum(mu^2 + sigma^2 - log sigma^2 - 1)`` per image, averaged over the batch.

:func:`latent_scale_factor` gives the scale the diffusion stages multiply the latents by (1 / their std on a
few training batches), written beside the weights by :class:`~monai_oct.handlers.latent.LatentScale`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from ignite.engine import Engine
from monai.engines import IterationEvents, SupervisedTrainer
from monai.inferers import SimpleInferer
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.optim import Optimizer

from monai_oct.engines.distributed import unwrap
from monai_oct.engines.guard import check_finite_loss
from monai_oct.networks.autoencoder import compression
from monai_oct.networks.sizes import check_divisible

__all__ = ["AutoencoderTrainer", "kl_loss", "latent_scale_factor", "perceptual_loss", "patch_discriminator"]


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, sigma^2)`` from ``N(0, 1)``, summed per image, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


def perceptual_loss(weights: str | None, network_type: str = "resnet50") -> PerceptualLoss | None:
    """MONAI's ``PerceptualLoss`` on a local weights file, or None (``weights`` None: no perceptual term).

    MONAI's ``PerceptualLoss`` downloads its feature network by default; this toolkit works offline, so the
    loss is only built from a file (``pretrained_path``; ``network_type="resnet50"`` reads a torchvision
    ResNet-50 state dict and needs ``torchvision``).

    Raises:
        FileNotFoundError: when ``weights`` does not exist (names it).
    """
    if weights is None or str(weights).strip().lower() in ("", "none", "null"):
        return None
    if not Path(weights).is_file():
        raise FileNotFoundError(f"{weights}: perceptual-loss weights not found (--perceptual_weights: a local "
                                f"{network_type} state dict, or null for no perceptual term)")
    return PerceptualLoss(spatial_dims=2, network_type=network_type, pretrained=True, pretrained_path=str(weights))


def patch_discriminator(adv_weight: float, image_channels: int = 1, channels: int = 32,
                        num_layers_d: int = 3) -> PatchDiscriminator | None:
    """MONAI's ``PatchDiscriminator`` when ``adv_weight > 0``, else None (no adversarial term, nothing built)."""
    if not float(adv_weight) > 0:
        return None
    return PatchDiscriminator(spatial_dims=2, num_layers_d=int(num_layers_d), channels=int(channels),
                              in_channels=int(image_channels), out_channels=1)


@torch.no_grad()
def latent_scale_factor(autoencoder: AutoencoderKL, loader: Iterable, num_batches: int = 4,
                        device: str | torch.device = "cpu", image_key: str = "image") -> float:
    """1 / std of the latents (``encode_stage_2_inputs``) of the first ``num_batches`` batches of ``loader``.

    Raises:
        ValueError: when the loader yields no batch.
    """
    autoencoder.eval()
    zs = []
    for k, batch in enumerate(loader):
        if k >= int(num_batches):
            break
        x = torch.as_tensor(batch[image_key] if isinstance(batch, Mapping) else batch).to(device).float()
        zs.append(autoencoder.encode_stage_2_inputs(x).flatten())
    if not zs:
        raise ValueError("latent_scale_factor: the data loader yielded no batch")
    return float(1.0 / torch.cat(zs).std())


class AutoencoderTrainer(SupervisedTrainer):
    """Ignite/MONAI trainer of an ``AutoencoderKL`` (optionally with a ``PatchDiscriminator``).

    Args:
        device: where to train.
        max_epochs: epochs to run (a resumed run continues up to it).
        train_data_loader: yields ``{"image": (B, C, h, w)}`` crops in [-1, 1].
        network: the ``AutoencoderKL``.
        optimizer: its optimizer.
        kl_weight: weight of the KL term.
        perceptual: a perceptual loss (:func:`perceptual_loss`) or None.
        perceptual_weight: its weight.
        discriminator: a ``PatchDiscriminator`` (:func:`patch_discriminator`) or None (no adversarial term).
        d_optimizer: the discriminator's optimizer (needed with a discriminator).
        adv_weight: weight of the adversarial terms.
        clip_grad_norm: clip the autoencoder's gradient norm to this value (None/0: no clipping).
        image_key: the image's key in a batch.
        train_handlers: Ignite/MONAI handlers to attach.
        epoch_length: iterations per epoch (default: the loader's length).
        kwargs: passed to ``SupervisedTrainer``.

    Raises:
        ValueError: for a discriminator without its optimizer, or during training for crops whose sides do not
            divide by the compression f (names the size); FloatingPointError during training when a loss is
            NaN/inf (names the iteration and epoch).
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable, network: AutoencoderKL,
                 optimizer: Optimizer, kl_weight: float = 1e-6, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 0.0, discriminator: nn.Module | None = None,
                 d_optimizer: Optimizer | None = None, adv_weight: float = 0.0, clip_grad_norm: float | None = None,
                 image_key: str = "image", train_handlers: Sequence | None = None, epoch_length: int | None = None,
                 **kwargs: Any) -> None:
        if discriminator is not None and d_optimizer is None:
            raise ValueError("a discriminator needs its optimizer (d_optimizer)")
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=nn.L1Loss(), inferer=SimpleInferer(),
                         train_handlers=train_handlers, epoch_length=epoch_length, **kwargs)
        self.kl_weight, self.perceptual_weight, self.adv_weight = float(kl_weight), float(perceptual_weight), float(adv_weight)
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        self.discriminator = discriminator.to(device) if discriminator is not None else None
        self.d_optimizer = d_optimizer
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares") if discriminator is not None else None
        self.clip_grad_norm = float(clip_grad_norm) if clip_grad_norm else None
        self.image_key = image_key
        self._size_checked = False

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict:  # type: ignore[override]
        """One step; returns ``{"image", "pred" (reconstruction), "loss", "l1", "kl"[, "d_loss"]}``."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        images = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device, non_blocking=self.non_blocking).float()
        if not self._size_checked:  # the decoder returns H // f * f rows: a crop must divide by f
            f = compression(unwrap(engine.network).encoder.channels)
            check_divisible(images.shape, f, f"the autoencoder compresses by f={f}: --ae_crop_size and --image_size must divide by it")
            self._size_checked = True
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        recon, z_mu, z_sigma = engine.network(images)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        l1, kl = engine.loss_function(recon, images), kl_loss(z_mu, z_sigma)
        loss = l1 + self.kl_weight * kl
        if self.perceptual is not None and self.perceptual_weight:
            loss = loss + self.perceptual_weight * self.perceptual(recon, images)
        if self.discriminator is not None:
            fake = self.discriminator(recon.contiguous())[-1]
            loss = loss + self.adv_weight * self.adv_loss(fake, target_is_real=True, for_discriminator=False)
        check_finite_loss(loss, engine, "autoencoder loss")
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
        engine.optimizer.step()
        out = {"image": images, "pred": recon.detach(), "loss": loss.detach(), "l1": l1.detach(), "kl": kl.detach()}
        if self.discriminator is not None:
            out["d_loss"] = self._discriminator_step(engine, images, recon.detach())
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out

    def _discriminator_step(self, engine: Engine, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """One least-squares step of the patch discriminator; returns its loss."""
        self.d_optimizer.zero_grad(set_to_none=True)
        d_fake = self.adv_loss(self.discriminator(fake.contiguous())[-1], target_is_real=False, for_discriminator=True)
        d_real = self.adv_loss(self.discriminator(real.contiguous())[-1], target_is_real=True, for_discriminator=True)
        d_loss = self.adv_weight * 0.5 * (d_fake + d_real)
        check_finite_loss(d_loss, engine, "discriminator loss")
        d_loss.backward()
        self.d_optimizer.step()
        return d_loss.detach()
