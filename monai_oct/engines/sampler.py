"""Sampling from a trained diffusion UNet: a low-overhead DDPM/DDIM loop seeded per sample.

:class:`DiffusionSampler` runs the reverse process of a MONAI ``DDPMScheduler`` or ``DDIMScheduler``
(their noise schedule, timesteps and update rule) for a batch of samples:

- **seeded per sample**: sample ``i`` draws its initial noise (and, for DDPM, its per-step noise) from
  its own ``torch.Generator`` seeded ``seed + i``, so it does not depend on the batch it shares or on
  the order of the batches: a restarted synthesis reproduces it bit for bit (on the same device).
- **DDPM with fewer steps than T** follows the respaced posterior (see ``_coefficients``); with all T
  steps, and for DDIM always, the update equals the scheduler's own ``step``.
- **low overhead**: the update coefficients of every step are computed once from the scheduler (Python
  floats); the loop writes into preallocated buffers (the network input with the condition already
  in place, the timestep tensor, x0/epsilon/noise) with in-place ops, so a step costs one UNet call plus
  a handful of element-wise kernels.
- **classifier-free guidance** (optional): ``guidance_scale = s`` runs the condition and the
  all-zero "unconditional" condition (what ``p_uncond`` dropout trains) in one doubled batch and uses
  ``uncond + s * (cond - uncond)``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, Scheduler
from torch import nn

__all__ = ["DiffusionSampler"]


class DiffusionSampler:
    """Reverse diffusion with a MONAI scheduler's rule, per-sample seeds and preallocated buffers.

    Args:
        scheduler: a ``DDPMScheduler`` (ancestral sampling) or ``DDIMScheduler`` (deterministic for
            ``eta = 0``); its ``prediction_type`` and noise schedule must match training.
        num_inference_steps: number of reverse steps (``scheduler.set_timesteps`` is called with it).
        guidance_scale: classifier-free guidance scale ``s``; None (or 1) = plain conditional sampling.
        eta: DDIM noise weight (0 = deterministic DDIM); ignored for DDPM.
        amp: run the UNet under ``torch.autocast`` (the update stays float32): on CUDA, and on CPU with
            ``amp_dtype=torch.bfloat16`` (CPU autocast has no float16).
        amp_dtype: the autocast dtype; None: torch's default for the device (float16 on CUDA).

    Raises:
        TypeError: for a scheduler other than DDPM/DDIM.
        ValueError: for a bad number of steps or a variance type that needs a learned variance.
    """

    def __init__(self, scheduler: Scheduler, num_inference_steps: int = 50, guidance_scale: float | None = None,
                 eta: float = 0.0, amp: bool = False, amp_dtype: torch.dtype | None = None) -> None:
        if not isinstance(scheduler, (DDPMScheduler, DDIMScheduler)):
            raise TypeError(f"scheduler must be a DDPMScheduler or DDIMScheduler, got {type(scheduler).__name__}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.scheduler = scheduler
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = None if guidance_scale is None or float(guidance_scale) == 1.0 else float(guidance_scale)
        self.eta, self.amp, self.amp_dtype = float(eta), bool(amp), amp_dtype
        self.is_ddim = isinstance(scheduler, DDIMScheduler)
        if not self.is_ddim and scheduler.variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"variance_type {scheduler.variance_type!r} needs a learned variance; use fixed_small or fixed_large")
        scheduler.set_timesteps(self.num_inference_steps)
        self.prediction_type = str(scheduler.prediction_type)
        self.clip = scheduler.clip_sample_values if scheduler.clip_sample else None
        ts = [int(t) for t in scheduler.timesteps]
        self.steps = [self._coefficients(t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)]

    def _coefficients(self, t: int, t_next: int) -> dict:
        """The scalars of one reverse step from timestep ``t`` to ``t_next`` (-1: to the clean image).

        DDIM: as MONAI's ``DDIMScheduler.step``. DDPM: the posterior ``q(x_next | x_t, x0)`` of the (respaced)
        chain, ``beta' = 1 - a_t / a_next``: with all T steps this is exactly ``DDPMScheduler.step``; with fewer,
        MONAI's step would still use ``alphas_cumprod[t - 1]`` (only right for the full chain), so the respaced
        posterior of Nichol & Dhariwal (2021) is used instead.
        """
        s = self.scheduler
        ac = s.alphas_cumprod
        a_t = float(ac[t])
        b_t = 1.0 - a_t
        c = {"t": t, "sa": math.sqrt(a_t), "sb": math.sqrt(b_t)}
        if self.is_ddim:
            prev = t - s.num_train_timesteps // s.num_inference_steps
            a_prev = float(ac[prev]) if prev >= 0 else float(s.final_alpha_cumprod)
            var = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev)
            std = self.eta * math.sqrt(var)
            c.update(x0=math.sqrt(a_prev), eps=math.sqrt(max(1.0 - a_prev - std**2, 0.0)), sigma=std)
        else:
            full = t_next == t - 1 or (t_next < 0 and t == 0)
            a_prev = float(ac[t_next]) if t_next >= 0 else 1.0
            beta = float(s.betas[t]) if full else 1.0 - a_t / a_prev
            alpha = float(s.alphas[t]) if full else a_t / a_prev
            var = (1.0 - a_prev) / b_t * beta
            var = max(var, 1e-20) if s.variance_type == "fixed_small" else beta
            c.update(x0=math.sqrt(a_prev) * beta / b_t, xt=math.sqrt(alpha) * (1.0 - a_prev) / b_t,
                     sigma=math.sqrt(var) if t_next >= 0 else 0.0)
        return c

    @torch.no_grad()
    def __call__(self, network: nn.Module, generators: Sequence[torch.Generator], shape: Sequence[int],
                 condition: torch.Tensor | None = None, device: str | torch.device | None = None) -> torch.Tensor:
        """Generate ``len(generators)`` samples.

        Args:
            network: the diffusion UNet, called as ``network(x, timesteps)`` with ``x`` the noisy image
                concatenated with the condition along the channels.
            generators: one per sample (:func:`sample_generators`), on ``device``.
            shape: ``(C, H, W)`` of one generated image.
            condition: ``(B, Cc, H, W)`` encoded condition, or None for an unconditional network.
            device: where to run (default: the network's device).

        Returns:
            float32 ``(B, C, H, W)`` samples (in [-1, 1] when the scheduler clips x0).

        Raises:
            ValueError: when the condition's batch or size does not match.
        """
        device = torch.device(device) if device is not None else next(network.parameters()).device
        b = len(generators)
        c_img, h, w = (int(s) for s in shape)
        if condition is not None and (condition.ndim != 4 or condition.shape[0] != b or tuple(condition.shape[2:]) != (h, w)):
            raise ValueError(f"condition of shape {tuple(condition.shape)} does not match {b} samples of size {(h, w)}")
        guided = self.guidance_scale is not None and condition is not None
        n = 2 * b if guided else b
        c_cond = 0 if condition is None else condition.shape[1]
        x = torch.empty((b, c_img, h, w), device=device)
        for i, g in enumerate(generators):
            torch.randn((c_img, h, w), generator=g, device=device, out=x[i])
        inp = torch.zeros((n, c_img + c_cond, h, w), device=device)
        if condition is not None:
            inp[n - b:, c_img:] = condition.to(device)  # guided: the first half keeps the all-zero condition
        tt = torch.empty((n,), dtype=torch.long, device=device)
        x0, eps, guide = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x) if guided else None
        noise = torch.empty_like(x)
        pt, clip = self.prediction_type, self.clip
        amp = self.amp and (device.type == "cuda" or self.amp_dtype == torch.bfloat16)
        for st in self.steps:
            inp[:b, :c_img] = x
            if guided:
                inp[b:, :c_img] = x
            tt.fill_(st["t"])
            if amp:
                with torch.autocast(device.type, dtype=self.amp_dtype):
                    out = network(inp, tt)
                out = out.float()
            else:
                out = network(inp, tt)
            if guided:
                torch.sub(out[b:], out[:b], out=guide)
                out = guide.mul_(self.guidance_scale).add_(out[:b])
            # x0 (and epsilon for DDIM) from the model output, as the scheduler's step computes them
            if pt == "epsilon":
                torch.mul(x, 1.0 / st["sa"], out=x0).add_(out, alpha=-st["sb"] / st["sa"])
                e = out
            elif pt == "v_prediction":
                torch.mul(x, st["sa"], out=x0).add_(out, alpha=-st["sb"])
                e = torch.mul(out, st["sa"], out=eps).add_(x, alpha=st["sb"]) if self.is_ddim else None
            else:  # sample
                x0.copy_(out)
                e = torch.mul(x0, -st["sa"] / st["sb"], out=eps).add_(x, alpha=1.0 / st["sb"]) if self.is_ddim else None
            if clip is not None:
                x0.clamp_(clip[0], clip[1])
            if self.is_ddim:
                torch.mul(x0, st["x0"], out=x).add_(e, alpha=st["eps"])
            else:
                x.mul_(st["xt"]).add_(x0, alpha=st["x0"])
            if st["sigma"] > 0:
                for i, g in enumerate(generators):
                    torch.randn((c_img, h, w), generator=g, device=device, out=noise[i])
                x.add_(noise, alpha=st["sigma"])
        return x
