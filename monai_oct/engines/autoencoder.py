"""Training the latent-diffusion autoencoder (MONAI's ``AutoencoderKL`` or ``VQVAE``) with MONAI's ``SupervisedTrainer``.

One iteration, as in MONAI's generative tutorials: reconstruct the batch, minimise

    L1(recon, x) + kl_weight * KL(q(z|x) || N(0, 1)) [+ perceptual_weight * perceptual(recon, x)]
                 [+ adv_weight * adversarial(recon)]

or, for a ``VQVAE``, ``L1(recon, x) + vq_loss [+ ...]`` with the loss the ``VQVAE`` returns (its commitment term
``commitment_cost * MSE(quantized, encoder output)``; MONAI's codebook learns by EMA updates in the training
forward, not by a gradient, so there is no separate codebook loss). With a ``PatchDiscriminator`` that is a VQ-GAN.
Each step's output carries ``l1`` and, for a VQ-VAE, ``vq`` and ``perplexity`` (the codebook usage of the batch,
MONAI's ``VectorQuantizer.perplexity``); the trainer averages them per epoch (:func:`epoch_metrics`) for
TensorBoard and the training log. ``kmeans_init`` re-initialises the codebook by k-means at the start of every epoch
(:func:`kmeans_codebook_init`).

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
from ignite.engine import Engine, Events
from ignite.metrics import Average
from monai.engines import IterationEvents, SupervisedTrainer
from monai.inferers import SimpleInferer
from monai.losses import PatchAdversarialLoss, PerceptualLoss
from monai.networks.nets import VQVAE, AutoencoderKL, PatchDiscriminator
from torch import nn
from torch.optim import Optimizer

from monai_oct.core.seeding import sample_seed
from monai_oct.engines.distributed import unwrap
from monai_oct.engines.guard import check_finite_loss
from monai_oct.networks.autoencoder import check_kind, compression
from monai_oct.networks.codebook import kmeans, set_codebook
from monai_oct.networks.sizes import check_divisible

__all__ = ["AutoencoderTrainer", "epoch_metrics", "kl_loss", "kmeans_codebook_init", "latent_scale_factor",
           "perceptual_loss", "patch_discriminator"]


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


def epoch_metrics(kind: str = "kl") -> dict[str, Average]:
    """Per-epoch means of an :class:`AutoencoderTrainer`'s outputs, which it attaches itself.

    ``recon_l1`` (the reconstruction error) for both kinds, and ``codebook_perplexity`` (mean of the batches'
    perplexities) and ``vq_loss`` for ``vq``. Ignite keeps them in ``engine.state.metrics``, which MONAI's
    ``TensorBoardStatsHandler`` writes as epoch scalars and :class:`~monai_oct.handlers.checkpoint.TrainingLog`
    into ``training_log.jsonl``.
    """
    out = {"recon_l1": Average(output_transform=lambda o: o["l1"])}
    if check_kind(kind) == "vq":
        out["codebook_perplexity"] = Average(output_transform=lambda o: o["perplexity"])
        out["vq_loss"] = Average(output_transform=lambda o: o["vq"])
    return out


def _images(batch: Any, device: str | torch.device, image_key: str) -> torch.Tensor:
    """The float image tensor of a batch (a dict's ``image_key``, or the batch itself) on ``device``."""
    return torch.as_tensor(batch[image_key] if isinstance(batch, Mapping) else batch).to(device).float()


@torch.no_grad()
def kmeans_codebook_init(vqvae: VQVAE, loader: Iterable, num_batches: int = 4, iterations: int = 10,
                         generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                         image_key: str = "image") -> torch.Tensor:
    """Set a ``VQVAE``'s codebook to the k-means centroids of its encoder outputs on a few batches.

    Every latent pixel of the first ``num_batches`` batches is one point (``embedding_dim`` values); their
    ``num_embeddings`` k-means centroids (:func:`~monai_oct.networks.codebook.kmeans`, k-means++ start, seeded by
    ``generator``) become the codebook, with the EMA buffers set to match
    (:func:`~monai_oct.networks.codebook.set_codebook`). Under DDP rank 0's centroids are broadcast, so every
    process keeps the same codebook.

    Args:
        vqvae: the network (or its DDP wrapper).
        loader: yields batches of images (dicts with ``image_key``).
        num_batches: batches encoded.
        iterations: Lloyd iterations.
        generator: the k-means++ stream (None: torch's global one).
        device: where the network is.
        image_key: the image's key in a batch.

    Returns:
        the new codebook ``(num_embeddings, embedding_dim)``.

    Raises:
        ValueError: when the loader yields no batch.
    """
    net = unwrap(vqvae)
    points = []
    for k, batch in enumerate(loader):
        if k >= int(num_batches):
            break
        z = net.encode(_images(batch, device, image_key))
        points.append(z.movedim(1, -1).reshape(-1, z.shape[1]))
    if not points:
        raise ValueError("kmeans_codebook_init: the data loader yielded no batch")
    centroids, counts = kmeans(torch.cat(points), net.num_embeddings, iterations, generator)
    counts = counts / len(points)  # per batch: the scale of the EMA's cluster sizes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(centroids, 0)
        torch.distributed.broadcast(counts, 0)
    set_codebook(net, centroids, counts)
    return centroids


@torch.no_grad()
def latent_scale_factor(autoencoder: AutoencoderKL | VQVAE, loader: Iterable, num_batches: int = 4,
                        device: str | torch.device = "cpu", image_key: str = "image") -> float:
    """1 / std of the latents (``encode_stage_2_inputs``; a VQ-VAE's quantized ones) of the first ``num_batches``
    batches of ``loader``.

    Raises:
        ValueError: when the loader yields no batch.
    """
    autoencoder.eval()
    zs = []
    for k, batch in enumerate(loader):
        if k >= int(num_batches):
            break
        x = _images(batch, device, image_key)
        zs.append(autoencoder.encode_stage_2_inputs(x).flatten())
    if not zs:
        raise ValueError("latent_scale_factor: the data loader yielded no batch")
    return float(1.0 / torch.cat(zs).std())


class AutoencoderTrainer(SupervisedTrainer):
    """Ignite/MONAI trainer of an ``AutoencoderKL`` or a ``VQVAE`` (optionally with a ``PatchDiscriminator``).

    Args:
        device: where to train.
        max_epochs: epochs to run (a resumed run continues up to it).
        train_data_loader: yields ``{"image": (B, C, h, w)}`` crops in [-1, 1].
        network: the ``AutoencoderKL`` or ``VQVAE`` (:func:`~monai_oct.networks.autoencoder.build_autoencoder`).
        optimizer: its optimizer.
        kl_weight: weight of the KL term (``AutoencoderKL`` only; a ``VQVAE`` adds the loss it returns).
        perceptual: a perceptual loss (:func:`perceptual_loss`) or None.
        perceptual_weight: its weight.
        discriminator: a ``PatchDiscriminator`` (:func:`patch_discriminator`) or None (no adversarial term).
        d_optimizer: the discriminator's optimizer (needed with a discriminator).
        adv_weight: weight of the adversarial terms.
        clip_grad_norm: clip the autoencoder's gradient norm to this value (None/0: no clipping).
        kmeans_init: ``VQVAE`` only: at the start of every epoch, set the codebook to the k-means centroids of the
            encoder outputs of ``kmeans_batches`` training batches (:func:`kmeans_codebook_init`; the study of
            issue 17 did so every epoch). Its k-means++ draws come from the stream of ``(seed, epoch)``.
        kmeans_batches: batches encoded for it.
        kmeans_iterations: its Lloyd iterations.
        seed: the seed of those streams.
        image_key: the image's key in a batch.
        train_handlers: Ignite/MONAI handlers to attach.
        epoch_length: iterations per epoch (default: the loader's length).
        kwargs: passed to ``SupervisedTrainer``.

    The epoch means of :func:`epoch_metrics` (``recon_l1``; ``codebook_perplexity``, ``vq_loss`` for a VQ-VAE) join
    ``additional_metrics`` (``recon_l1`` is the key metric when ``key_train_metric`` is None), so they are in
    ``state.metrics`` at every epoch end (for TensorBoard and :class:`~monai_oct.handlers.checkpoint.TrainingLog`).

    Raises:
        ValueError: for a discriminator without its optimizer, ``kmeans_init`` without a ``VQVAE``, or during
            training for crops whose sides do not
            divide by the compression f (names the size); FloatingPointError during training when a loss is
            NaN/inf (names the iteration and epoch).
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable, network: AutoencoderKL,
                 optimizer: Optimizer, kl_weight: float = 1e-6, perceptual: nn.Module | None = None,
                 perceptual_weight: float = 0.0, discriminator: nn.Module | None = None,
                 d_optimizer: Optimizer | None = None, adv_weight: float = 0.0, clip_grad_norm: float | None = None,
                 kmeans_init: bool = False, kmeans_batches: int = 4, kmeans_iterations: int = 10, seed: int = 0,
                 image_key: str = "image", train_handlers: Sequence | None = None, epoch_length: int | None = None,
                 **kwargs: Any) -> None:
        if discriminator is not None and d_optimizer is None:
            raise ValueError("a discriminator needs its optimizer (d_optimizer)")
        self.is_vq = isinstance(unwrap(network), VQVAE)
        if kmeans_init and not self.is_vq:
            raise ValueError(f"kmeans_init needs a VQ-VAE (--autoencoder_kind vq), got {type(unwrap(network)).__name__}")
        kwargs.setdefault("decollate", False)
        # MONAI registers additional_metrics only beside a key metric, and before the handlers (so they are
        # computed when a handler reads state.metrics at an epoch end): recon_l1 is the key metric when none is given
        metrics = epoch_metrics("vq" if self.is_vq else "kl")
        if kwargs.get("key_train_metric") is None:
            kwargs["key_train_metric"] = {"recon_l1": metrics.pop("recon_l1")}
        kwargs["additional_metrics"] = {**metrics, **(kwargs.get("additional_metrics") or {})}
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
        self.kmeans_batches, self.kmeans_iterations, self.seed = int(kmeans_batches), int(kmeans_iterations), int(seed)
        if kmeans_init:
            self.add_event_handler(Events.EPOCH_STARTED, self._kmeans_init)

    def _kmeans_init(self, engine: Engine) -> None:
        """Re-initialise the codebook from this epoch's stream (``(seed, epoch)``) and a few training batches."""
        gen = torch.Generator(device=engine.state.device).manual_seed(sample_seed(self.seed, engine.state.epoch))
        kmeans_codebook_init(engine.network, engine.data_loader, self.kmeans_batches, self.kmeans_iterations, gen,
                             engine.state.device, self.image_key)

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict:  # type: ignore[override]
        """One step; returns ``{"image", "pred" (reconstruction), "loss", "l1", "kl" | "vq" and "perplexity"[, "d_loss"]}``."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        images = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device, non_blocking=self.non_blocking).float()
        if not self._size_checked:  # the decoder returns H // f * f rows: a crop must divide by f
            f = compression(unwrap(engine.network).encoder.channels)
            check_divisible(images.shape, f, f"the autoencoder compresses by f={f}: --ae_crop_size and --image_size must divide by it")
            self._size_checked = True
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if self.is_vq:
            recon, vq = engine.network(images)
            extra = {"vq": vq.detach(), "perplexity": unwrap(engine.network).quantizer.perplexity.detach()}
            reg = vq
        else:
            recon, z_mu, z_sigma = engine.network(images)
            kl = kl_loss(z_mu, z_sigma)
            extra, reg = {"kl": kl.detach()}, self.kl_weight * kl
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        l1 = engine.loss_function(recon, images)
        loss = l1 + reg
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
        out = {"image": images, "pred": recon.detach(), "loss": loss.detach(), "l1": l1.detach(), **extra}
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
