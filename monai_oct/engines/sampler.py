"""Sampling from a trained diffusion UNet: a thin loop over a scheduler's ``step``, seeded per sample.

:class:`DiffusionSampler` runs the reverse process of a scheduler of :mod:`monai_oct.schedulers` (MONAI's
interface: ``set_timesteps``, ``timesteps``, ``step``) for a batch of samples. The update rule is the
scheduler's; the loop only

- draws each sample's initial noise from its own ``torch.Generator`` and hands the list of generators to
  ``step``, which draws each sample's per-step noise from it too: a sample does not depend on the batch it
  shares or on the order of the batches, so a restarted synthesis reproduces it bit for bit (on the same device);
- calls the network once per entry of the scheduler's ``timesteps`` (a two-stage solver lists each timestep it
  evaluates at, :class:`~monai_oct.schedulers.flow.FlowHeunScheduler`) on a preallocated input (the condition
  already in place), under ``torch.autocast`` when ``amp_dtype`` asks for it (the update stays float32);
- for a scheduler with rectified flow's ``use_timestep_transform``, sets its timesteps for the ``H x W`` sampled;
- applies classifier-free guidance (optional): ``guidance_scale = s`` runs the condition and the all-zero
  "unconditional" condition (what ``p_uncond`` dropout trains) in one doubled batch and uses
  ``uncond + s * (cond - uncond)``;
- for a class-conditioned UNet (``num_class_embeds``), passes each sample's class as ``class_labels`` (the null
  class, ``num_class_embeds - 1``, for a sample without one); under guidance the unconditional half gets the null
  class and, with ``guidance_on="all"`` (default), the zero mask too: ``eps_null + s * (eps_cond - eps_null)`` with
  null = (null class, zero mask); ``guidance_on="class"`` keeps the mask in both halves and guides the class only
  (the trainer drops class and mask independently, so both nulls are trained);
- SDEdit (optional, ``source`` + ``strength``): instead of pure noise the chain starts from the source images noised
  (the scheduler's ``add_noise``, the same per-sample noise) to the first of its timesteps below ``strength x T``
  and runs only the remaining steps: ``strength`` 0 returns the source, 1 is plain sampling (pure noise; the source
  is not used), what lies between keeps the source's coarse structure and redraws its detail (Meng et al., SDEdit,
  ICLR 2022). DDPM and DDIM chains only (a multistep or two-stage solver's state starts at its first step).
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from torch import nn

from monai_oct.engines.amp import autocast_dtype
from monai_oct.engines.diffusion import null_class_id
from monai_oct.networks.checkpoint import model_info_path, read_model_info
from monai_oct.schedulers import (DIFFUSION_SAMPLERS, FLOW, FLOW_SAMPLERS, SCHEDULERS, PerSampleDDIMScheduler,
                                  RespacedDDPMScheduler, randn_per_sample)

__all__ = ["DiffusionSampler", "check_trained_with", "GUIDANCE_ON"]

#: What the unconditional half of classifier-free guidance drops: everything, or the class only.
GUIDANCE_ON = ("all", "class")


def check_trained_with(scheduler: Scheduler, checkpoint: str | None) -> None:
    """Stop when ``checkpoint``'s ``model.json`` records a ``prediction_type`` that ``scheduler`` cannot sample.

    Args:
        scheduler: the sampler's scheduler.
        checkpoint: the weights to be sampled; None, or weights without ``model.json`` (from elsewhere, or from an
            older run): nothing is checked.

    Raises:
        ValueError: naming the checkpoint, its prediction type, the sampler and the sampler's prediction type.
    """
    trained = read_model_info(checkpoint).get("prediction_type") if checkpoint else None
    ours = str(scheduler.prediction_type)
    if trained is None or str(trained) == ours:
        return
    name = next((k for k, c in SCHEDULERS.items() if type(scheduler) is c), type(scheduler).__name__)
    fits = "|".join(FLOW_SAMPLERS if trained == FLOW else DIFFUSION_SAMPLERS)
    raise ValueError(f"{checkpoint}: trained with prediction_type {trained!r} ({model_info_path(checkpoint)}), but the "
                     f"sampler {name!r} ({type(scheduler).__name__}) is set up for prediction_type {ours!r}: sample it "
                     f"with --prediction_type {trained} --sampler {fits}")


class DiffusionSampler:
    """Reverse diffusion with a scheduler's ``step``, per-sample seeds and optional guidance and autocast.

    Args:
        scheduler: a scheduler of :mod:`monai_oct.schedulers` (``diffusion_scheduler("ddpm" | "ddim", ...)``) or any
            MONAI-style scheduler whose ``step(model_output, timestep, sample, generator=...)`` accepts one generator
            per sample; its ``prediction_type`` and noise schedule must match training.
        num_inference_steps: number of reverse steps (``scheduler.set_timesteps`` is called with it).
        guidance_scale: classifier-free guidance scale ``s``; None (or 1) = plain conditional sampling.
        guidance_on: what the unconditional half of guidance drops: ``"all"`` (the null class and the zero mask)
            or ``"class"`` (the null class only; the mask stays).
        eta: DDIM noise weight (0 = deterministic DDIM); only for a scheduler whose ``step`` takes ``eta``.
        amp_dtype: autocast dtype of the network call: ``"bfloat16"`` (CPU and CUDA), ``"float16"`` (CUDA only) or
            None (float32); see :func:`monai_oct.engines.amp.autocast_dtype`.
        amp: the older switch, an alias: with ``amp_dtype`` None, True means float16 on CUDA (nothing on CPU).
        checkpoint: the weights this sampler will sample (optional): when the ``model.json`` their stage wrote beside
            them records a ``prediction_type`` other than the scheduler's, construction stops naming both.

    Raises:
        TypeError: for MONAI's own ``DDPMScheduler`` / ``DDIMScheduler`` (whose ``step`` takes one generator for the
            batch, and for DDPM is wrong on a respaced chain): use :func:`monai_oct.schedulers.diffusion_scheduler`.
        ValueError: for a bad number of steps, an unknown ``amp_dtype`` or ``eta`` for a scheduler without it, or a
            ``checkpoint`` trained for another prediction type (e.g. a flow model and a diffusion sampler), or an
            unknown ``guidance_on``.
    """

    def __init__(self, scheduler: Scheduler, num_inference_steps: int = 50, guidance_scale: float | None = None,
                 eta: float = 0.0, amp_dtype: str | torch.dtype | None = None, amp: bool = False,
                 checkpoint: str | None = None, guidance_on: str = "all") -> None:
        if isinstance(scheduler, (DDPMScheduler, DDIMScheduler)) and not isinstance(
                scheduler, (RespacedDDPMScheduler, PerSampleDDIMScheduler)):
            raise TypeError(f"MONAI's {type(scheduler).__name__} draws one noise for the whole batch (and its DDPM step "
                            "is wrong on a respaced chain); use monai_oct.schedulers.diffusion_scheduler('ddpm' | 'ddim')")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_trained_with(scheduler, checkpoint)
        if guidance_on not in GUIDANCE_ON:
            raise ValueError(f"guidance_on must be one of {GUIDANCE_ON}, got {guidance_on!r}")
        self.guidance_on = guidance_on
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = None if guidance_scale is None or float(guidance_scale) == 1.0 else float(guidance_scale)
        self.step_kwargs: dict = {}
        if "eta" in inspect.signature(scheduler.step).parameters:
            self.step_kwargs["eta"] = float(eta)
        elif float(eta) != 0.0:
            raise ValueError(f"eta={eta} is a DDIM setting; {type(scheduler).__name__}.step takes no eta")
        self.amp_dtype, self.amp = amp_dtype, bool(amp)
        autocast_dtype(amp_dtype)  # an unknown name fails here, the device is checked at the call
        scheduler.set_timesteps(self.num_inference_steps)
        self.timesteps = [int(t) for t in scheduler.timesteps]
        self._dtypes: dict[str, torch.dtype | None] = {}

    def _autocast(self, device: torch.device) -> torch.dtype | None:
        if device.type not in self._dtypes:  # resolved (and a CPU warning logged) once per device type
            self._dtypes[device.type] = autocast_dtype(self.amp_dtype, self.amp, device)
        return self._dtypes[device.type]

    @torch.no_grad()
    def __call__(self, network: nn.Module, generators: Sequence[torch.Generator], shape: Sequence[int],
                 condition: torch.Tensor | None = None, device: str | torch.device | None = None,
                 class_labels: torch.Tensor | Sequence[int] | None = None, source: torch.Tensor | None = None,
                 strength: float = 1.0) -> torch.Tensor:
        """Generate ``len(generators)`` samples.

        Args:
            network: the diffusion UNet, called as ``network(x, timesteps)`` with ``x`` the noisy image
                concatenated with the condition along the channels.
            generators: one per sample (:func:`monai_oct.core.seeding.sample_generators`), on ``device``.
            shape: ``(C, H, W)`` of one generated image.
            condition: ``(B, Cc, H, W)`` encoded condition, or None for an unconditional network.
            device: where to run (default: the network's device).
            class_labels: ``(B,)`` class ids for a class-conditioned network (None: the null class for all).
            source: ``(B, C, H, W)`` images to edit (SDEdit), in the network's range; None: sample from noise.
            strength: with ``source``, the fraction of the schedule noised and denoised again, in [0, 1].

        Returns:
            float32 ``(B, C, H, W)`` samples (in [-1, 1] when the scheduler clips x0).

        Raises:
            ValueError: when the condition's batch or size does not match, for float16 autocast on a CPU, or for
                class labels given to a network without class embeddings, of the wrong count or out of range,
                or a ``source`` of the wrong shape, a ``strength`` outside [0, 1] or a sampler other than DDPM/DDIM.
        """
        device = torch.device(device) if device is not None else next(network.parameters()).device
        dtype = self._autocast(device)
        b = len(generators)
        c_img, h, w = (int(s) for s in shape)
        if condition is not None and (condition.ndim != 4 or condition.shape[0] != b or tuple(condition.shape[2:]) != (h, w)):
            raise ValueError(f"condition of shape {tuple(condition.shape)} does not match {b} samples of size {(h, w)}")
        if getattr(self.scheduler, "use_timestep_transform", False):  # rectified flow's shift depends on H x W
            self.scheduler.set_timesteps(self.num_inference_steps, input_img_size_numel=h * w)
            self.timesteps = [int(t) for t in self.scheduler.timesteps]
        classes, null = self._classes(network, class_labels, b, device)
        guided = self.guidance_scale is not None and (condition is not None or classes is not None)
        n = 2 * b if guided else b
        x = randn_per_sample((b, c_img, h, w), generators, device)
        timesteps = self.timesteps
        if source is not None:
            timesteps, x = self._sdedit_start(source, strength, x, (b, c_img, h, w), device)
            if not timesteps:
                return x
        inp = torch.zeros((n, c_img + (0 if condition is None else condition.shape[1]), h, w), device=device)
        if condition is not None:
            inp[n - b:, c_img:] = condition.to(device)  # guided: the first half keeps the all-zero condition
            if guided and self.guidance_on == "class":
                inp[:b, c_img:] = inp[b:, c_img:]
        kw = {}
        if classes is not None:  # guided: the first half gets the null class
            kw["class_labels"] = torch.cat([torch.full_like(classes, null), classes]) if guided else classes
        tt = torch.empty((n,), dtype=torch.long, device=device)
        for t in timesteps:
            inp[:b, :c_img] = x
            if guided:
                inp[b:, :c_img] = x
            tt.fill_(t)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out = network(inp, tt, **kw)
            out = out.float()
            if guided:
                out = torch.lerp(out[:b], out[b:], self.guidance_scale)  # uncond + s * (cond - uncond)
            x = self.scheduler.step(out, t, x, generator=generators, **self.step_kwargs)[0]
        return x

    def _sdedit_start(self, source: torch.Tensor, strength: float, noise: torch.Tensor, shape: tuple[int, ...],
                      device: torch.device) -> tuple[list[int], torch.Tensor]:
        """The timesteps left below ``strength x T`` and the chain's start: the source noised to the first of them
        (pure ``noise`` when all are left, the source itself when none is).

        Raises:
            ValueError: for a source of another shape, a strength outside [0, 1], or a scheduler other than the
                per-sample DDPM / DDIM.
        """
        if not isinstance(self.scheduler, (RespacedDDPMScheduler, PerSampleDDIMScheduler)):
            raise ValueError(f"SDEdit (source images) needs a DDPM or DDIM sampler, got {type(self.scheduler).__name__}")
        if tuple(source.shape) != tuple(shape):
            raise ValueError(f"source of shape {tuple(source.shape)} does not match {shape[0]} samples of {tuple(shape[1:])}")
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (a fraction of the schedule), got {strength}")
        limit = float(strength) * int(self.scheduler.num_train_timesteps)
        kept = [t for t in self.timesteps if t < limit]
        if len(kept) == len(self.timesteps):
            return kept, noise
        src = source.float().to(device)
        if not kept:
            return kept, src.clone()
        return kept, self.scheduler.add_noise(src, noise, torch.full((shape[0],), kept[0], dtype=torch.long, device=device))

    @staticmethod
    def _classes(network: nn.Module, class_labels: torch.Tensor | Sequence[int] | None, b: int,
                 device: torch.device) -> tuple[torch.Tensor | None, int | None]:
        """``(classes, null)``: ``(B,)`` long class ids for a class-conditioned network (the null class where none
        is given) and its null class id; ``(None, None)`` for a network without class embeddings.

        Raises:
            ValueError: for class labels given to a network without class embeddings, of another count than B,
                or outside ``0 .. null``.
        """
        null = null_class_id(network)
        if null is None:
            if class_labels is not None:
                raise ValueError("class labels given, but the network has no class embeddings (num_class_embeds "
                                 "None): it was trained without classes")
            return None, None
        if class_labels is None:
            return torch.full((b,), null, dtype=torch.long, device=device), null
        classes = torch.as_tensor(class_labels, dtype=torch.long).to(device).view(-1)
        if classes.shape[0] != b or bool(((classes < 0) | (classes > null)).any()):
            raise ValueError(f"class labels {classes.tolist()} must be {b} ids in 0..{null} ({null} the null class)")
        return classes, null
