"""Training a (mask-conditioned) diffusion UNet with MONAI's ``SupervisedTrainer`` machinery.

One iteration: draw noise and a random timestep per image, noise the image with the scheduler,
concatenate the encoded condition (``DiffusionInferer(mode="concat")``), predict, and regress the
target of the scheduler's ``prediction_type`` with MSE:

- ``"epsilon"``: the noise;
- ``"v_prediction"``: ``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` (``scheduler.get_velocity``, from the
  scheduler's cumulative alphas ``a_t``);
- ``"sample"``: the clean image;
- ``"flow"`` (rectified flow, on :class:`~monai_oct.schedulers.flow.FlowEulerScheduler`, MONAI's ``RFlowScheduler``):
  ``t`` from the scheduler's ``sample_timesteps`` (uniform or logit-normal, optionally shifted by image size),
  ``x_t = (1 - t/T) x0 + (t/T) noise`` (its ``add_noise``) and the velocity ``x0 - noise`` (MAISI's target; the
  sign that MONAI's Euler step ``x + (t - t_next)/T * v`` integrates towards the data).

Condition dropout (``p_uncond``) zeroes the whole condition of a random subset of the batch, so the
network also learns the unconditional score the sampler's classifier-free guidance needs; the zero
condition is the same "no mask" input stage 1 (pretraining on unannotated images) is trained with.

Class conditioning (a UNet built with ``num_class_embeds``, :class:`~monai_oct.core.classes.ClassTable`): each
batch carries the class ids under ``class_key`` and the network gets them as ``class_labels``. The last id,
``num_class_embeds - 1``, is the "no class" token: condition dropout replaces a sample's class by it with
probability ``p_uncond_class`` (default ``p_uncond``), drawn **independently** of the mask's dropout, so the
network learns all four combinations (class and mask, class only, mask only, neither) and a sampler may guide on
the class, on the mask, or on both. The trainer reads ``num_class_embeds`` off the network: a network without it
trains exactly as before and ignores any class ids in the batch.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Iterable, Mapping, Sequence

import torch
from ignite.engine import Engine
from monai.engines import IterationEvents, SupervisedTrainer
from monai.inferers import DiffusionInferer
from monai.networks.schedulers import Scheduler
from torch import nn
from torch.optim import Optimizer

from monai_oct.engines.amp import autocast_dtype
from monai_oct.engines.distributed import unwrap
from monai_oct.engines.guard import check_finite_loss
from monai_oct.networks.diffusion import check_image_size
from monai_oct.schedulers import PREDICTION_TYPES

__all__ = ["DiffusionTrainer", "diffusion_target", "draw_timesteps", "drop_classes", "null_class_id", "no_mask_condition"]


def null_class_id(network: nn.Module) -> int | None:
    """The "no class" id of a class-conditioned UNet (its last class embedding, ``num_class_embeds - 1``), or None
    for a network without class embeddings (also inside a DDP wrapper)."""
    n = getattr(unwrap(network), "num_class_embeds", None)
    return None if n is None else int(n) - 1


def no_mask_condition(batch: int, channels: int, size: Sequence[int], device: str | torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The "no mask" condition: ``(batch, channels, H, W)`` zeros, what the trainer feeds a network with condition
    channels when a batch has no condition (stage 1, pretraining on unannotated scans), and therefore what such a
    model must get at sampling (class-only synthesis, SDEdit with a stage-1 model): one definition for all three.

    Args:
        batch: B.
        channels: the network's condition channels.
        size: ``(H, W)``.
        device: where the tensor lives.
        dtype: its dtype.
    """
    h, w = (int(s) for s in size)
    return torch.zeros((int(batch), int(channels), h, w), device=device, dtype=dtype)


def drop_classes(classes: torch.Tensor, p: float, null_id: int) -> torch.Tensor:
    """Condition dropout of class ids: each becomes ``null_id`` with probability ``p`` (torch's global generator,
    seeded by the run's ``set_determinism``)."""
    if p <= 0:
        return classes
    drop = torch.rand(classes.shape[0], device=classes.device) < p
    return torch.where(drop, torch.full_like(classes, null_id), classes)


def draw_timesteps(scheduler: Scheduler, images: torch.Tensor) -> torch.Tensor:
    """One training timestep per image: the scheduler's ``sample_timesteps`` where it has one (rectified flow:
    uniform / logit-normal, shifted with its timestep transform), else uniform integers in ``[0, T)``."""
    sample = getattr(scheduler, "sample_timesteps", None)
    if sample is not None:
        return sample(images)
    return torch.randint(0, scheduler.num_train_timesteps, (images.shape[0],), device=images.device).long()


def diffusion_target(scheduler: Scheduler, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     prediction_type: str | None = None) -> torch.Tensor:
    """The regression target of a diffusion UNet for ``prediction_type`` (default: the scheduler's).

    Raises:
        ValueError: for an unknown prediction type.
    """
    pt = prediction_type or scheduler.prediction_type
    if pt == "epsilon":
        return noise
    if pt == "v_prediction":
        return scheduler.get_velocity(images, noise, timesteps)
    if pt == "sample":
        return images
    if pt == "flow":
        return images - noise
    raise ValueError(f"unknown prediction_type {pt!r}; expected one of {PREDICTION_TYPES}")


class DiffusionTrainer(SupervisedTrainer):
    """Ignite/MONAI trainer for a diffusion UNet with concat conditioning.

    Batches are dicts holding the image under ``image_key`` (``(B, C, H, W)`` in [-1, 1]) and, for a
    conditional network, the encoded condition under ``condition_key``. When the batch has no condition but
    ``condition_channels > 0`` an all-zero condition is used (RetiDiff stage 1).

    Args:
        device: where to train.
        max_epochs: epochs to run (a resumed run continues up to it).
        train_data_loader: yields the batches.
        network: the diffusion UNet (``in_channels = image + condition channels``).
        optimizer: its optimizer.
        scheduler: the MONAI noise scheduler defining the forward process (``diffusion_scheduler("ddpm", ...)``;
            for ``prediction_type="flow"`` ``diffusion_scheduler("euler", ..., prediction_type="flow")``).
        condition_channels: channels of the condition (0 = unconditional network).
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` or ``"flow"``; None: the scheduler's.
        p_uncond: probability of zeroing a sample's condition (classifier-free guidance training).
        p_uncond_class: probability of replacing a sample's class by the null class, drawn independently of the
            mask's dropout (None: ``p_uncond``); only for a network with ``num_class_embeds``.
        class_key: the class ids' key in a batch (``ClassTable.label_items`` writes ``"class_id"``).
        clip_grad_norm: clip the gradient norm to this value (None/0: no clipping).
        image_key: the image's key in a batch.
        condition_key: the condition's key in a batch.
        amp: the older mixed-precision switch, an alias: with ``amp_dtype`` None, True means float16 on CUDA
            (nothing on CPU); ``amp_kwargs={"dtype": ...}`` (through ``kwargs``, MONAI's) also sets the dtype.
        amp_dtype: ``torch.autocast`` dtype of the forward pass: ``"bfloat16"`` (CPU and CUDA; needs no loss
            scaling, so it runs without the ``GradScaler``), ``"float16"`` (CUDA only, with MONAI's ``GradScaler``)
            or None (float32); see :func:`monai_oct.engines.amp.autocast_dtype`.
        train_handlers: Ignite/MONAI handlers to attach.
        epoch_length: iterations per epoch (default: the loader's length).
        kwargs: passed to ``SupervisedTrainer`` (e.g. ``decollate``, ``optim_set_to_none``).

    Raises:
        ValueError: for a bad ``p_uncond`` / ``p_uncond_class``, prediction type or ``amp_dtype`` (float16 on a CPU device);
            FloatingPointError during training when the
            loss is NaN/inf (the message names the iteration and epoch); during training, for a class-conditioned
            network, a batch without ``class_key`` or with a class id outside ``0 .. num_class_embeds - 2``.
    """

    def __init__(self, device: str | torch.device, max_epochs: int, train_data_loader: Iterable, network: nn.Module,
                 optimizer: Optimizer, scheduler: Scheduler, condition_channels: int = 0,
                 prediction_type: str | None = None, p_uncond: float = 0.0, clip_grad_norm: float | None = 1.0,
                 image_key: str = "image", condition_key: str = "cond", amp: bool = False,
                 p_uncond_class: float | None = None, class_key: str = "class_id",
                 amp_dtype: str | torch.dtype | None = None, train_handlers: Sequence | None = None,
                 epoch_length: int | None = None, **kwargs: Any) -> None:
        if not 0.0 <= float(p_uncond) <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
        p_uncond_class = p_uncond if p_uncond_class is None else p_uncond_class
        if not 0.0 <= float(p_uncond_class) <= 1.0:
            raise ValueError(f"p_uncond_class must be in [0, 1], got {p_uncond_class}")
        pt = prediction_type or scheduler.prediction_type
        if pt != scheduler.prediction_type:  # the scheduler's own type is valid, so this also rejects unknown ones
            raise ValueError(f"prediction_type {pt!r} differs from the scheduler's {scheduler.prediction_type!r}; "
                             "sampling would decode the network's output wrongly")
        kwargs.setdefault("decollate", False)
        amp_kwargs = dict(kwargs.pop("amp_kwargs", None) or {})
        dtype = autocast_dtype(amp_dtype if amp_dtype is not None else amp_kwargs.get("dtype"), amp, device)
        if dtype is not None:
            amp_kwargs["dtype"] = dtype
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=nn.MSELoss(), inferer=DiffusionInferer(scheduler),
                         train_handlers=train_handlers, amp=dtype is not None, amp_kwargs=amp_kwargs,
                         epoch_length=epoch_length, **kwargs)
        self.amp_dtype = dtype
        if dtype != torch.float16:
            self.scaler = None  # MONAI builds a GradScaler whenever amp is on; only float16 needs one
        self.noise_scheduler = scheduler
        self.condition_channels = int(condition_channels)
        self.prediction_type = pt
        self.p_uncond = float(p_uncond)
        self.clip_grad_norm = float(clip_grad_norm) if clip_grad_norm else None
        self.image_key, self.condition_key = image_key, condition_key
        self.p_uncond_class, self.class_key = float(p_uncond_class), class_key
        self.null_class = null_class_id(network)
        self._size_checked = False

    def class_labels(self, batch: Mapping, device: torch.device) -> torch.Tensor | None:
        """The batch's class ids after condition dropout (``(B,)`` long), or None for a network without classes.

        Raises:
            ValueError: when the batch has no ``class_key`` or holds an id outside the network's classes.
        """
        if self.null_class is None:
            return None
        classes = batch.get(self.class_key) if isinstance(batch, Mapping) else None
        if classes is None:
            raise ValueError(f"the network is class-conditioned ({self.null_class} classes + the null class) but the "
                             f"batch has no {self.class_key!r}: give every item a class (a datalist 'class' field or "
                             "a rule of the class table, ClassTable.label_items)")
        classes = torch.as_tensor(classes).to(device).long().view(-1)
        bad = classes[(classes < 0) | (classes >= self.null_class)]
        if bad.numel():
            raise ValueError(f"class id(s) {sorted(set(bad.tolist()))} outside the network's {self.null_class} classes "
                             f"(num_class_embeds {self.null_class + 1}, the last one the null class)")
        return drop_classes(classes, self.p_uncond_class, self.null_class)

    def _condition(self, batch: Mapping, images: torch.Tensor) -> torch.Tensor | None:
        if self.condition_channels == 0:
            return None
        cond = batch.get(self.condition_key) if isinstance(batch, Mapping) else None
        if cond is None:
            return no_mask_condition(images.shape[0], self.condition_channels, images.shape[2:], images.device, images.dtype)
        cond = torch.as_tensor(cond).to(images.device, non_blocking=self.non_blocking).float()
        if cond.shape[1] != self.condition_channels or cond.shape[2:] != images.shape[2:]:
            raise ValueError(f"condition of shape {tuple(cond.shape)} does not fit images {tuple(images.shape)} with "
                             f"{self.condition_channels} condition channels")
        if self.p_uncond > 0:
            keep = (torch.rand(cond.shape[0], device=cond.device) >= self.p_uncond).to(cond.dtype)
            cond = cond * keep.view(-1, 1, 1, 1)
        return cond

    def _iteration(self, engine: Engine, batchdata: Mapping[str, Any]) -> dict:  # type: ignore[override]
        """One training step; returns ``{"image", "pred", "label" (target), "loss"}`` (MONAI's output keys)."""
        if batchdata is None:
            raise ValueError("must provide batch data for current iteration.")
        images = torch.as_tensor(batchdata[self.image_key]).to(engine.state.device, non_blocking=self.non_blocking).float()
        if not self._size_checked:
            check_image_size(unwrap(engine.network), images.shape)  # the UNet inside a DDP wrapper
            self._size_checked = True
        cond = self._condition(batchdata, images)
        classes = self.class_labels(batchdata, images.device)
        model = engine.network if classes is None else partial(engine.network, class_labels=classes)
        noise = torch.randn_like(images)
        timesteps = draw_timesteps(self.noise_scheduler, images)
        target = diffusion_target(self.noise_scheduler, images, noise, timesteps, self.prediction_type)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        mode = "concat" if cond is not None else "crossattn"  # "crossattn" with no condition = unconditional
        with torch.autocast(images.device.type, enabled=engine.amp, **engine.amp_kwargs):
            pred = engine.inferer(inputs=images, diffusion_model=model, noise=noise, timesteps=timesteps,
                                  condition=cond, mode=mode)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(pred.float(), target)
        check_finite_loss(loss, engine, "diffusion loss")
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = engine.scaler  # None unless float16 autocast (set in __init__)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler is not None:
            scaler.unscale_(engine.optimizer)
        if self.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.clip_grad_norm)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"image": images, "pred": pred.detach(), "label": target, "loss": loss.detach()}
