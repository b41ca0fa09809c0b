"""DDPM ancestral sampling on a respaced chain: MONAI's ``DDPMScheduler`` with a ``step`` that is right for any
number of inference steps.

MONAI's ``DDPMScheduler.step`` computes the posterior ``q(x_{t-1} | x_t, x0)`` from ``alphas_cumprod[t - 1]`` and
``betas[t]``: right for the full chain of ``T`` steps, wrong when ``set_timesteps(n)`` with ``n < T`` makes the
chain jump from ``t`` to an earlier timestep ``s < t - 1``. :class:`RespacedDDPMScheduler` uses the posterior of the
respaced chain (Nichol & Dhariwal 2021, "Improved DDPM", section 4), ``beta'_t = 1 - a_t / a_s`` with ``a`` the
cumulative alphas; with all ``T`` steps ``s = t - 1`` and the step is MONAI's.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from monai.networks.schedulers import DDPMScheduler

from monai_oct.schedulers.noise import Generators, randn_per_sample

__all__ = ["RespacedDDPMScheduler"]


class _Step(NamedTuple):
    """The scalars of one reverse step ``t -> t_next`` (``t_next = -1``: to the clean image)."""

    t_next: int
    sqrt_a: float  # sqrt(a_t)
    sqrt_b: float  # sqrt(1 - a_t)
    x0: float  # posterior mean coefficient of x0
    xt: float  # posterior mean coefficient of x_t
    sigma: float  # posterior standard deviation (0 on the last step)


class RespacedDDPMScheduler(DDPMScheduler):
    """``DDPMScheduler`` whose ``step`` follows the respaced posterior and draws noise per sample.

    Training (``add_noise``, ``get_velocity``) and the timesteps of ``set_timesteps`` are MONAI's. ``step`` goes from
    ``timestep`` to the next timestep of ``timesteps`` (the full chain ``t - 1`` before ``set_timesteps``):

    - ``a_t, a_s`` the cumulative alphas of ``t`` and of the next timestep ``s`` (``a_s = 1`` after the last);
    - ``beta' = 1 - a_t / a_s``; posterior mean ``sqrt(a_s) beta' / (1 - a_t) x0 + sqrt(1 - beta') (1 - a_s) / (1 - a_t) x_t``;
    - variance ``(1 - a_s) / (1 - a_t) beta'`` (``fixed_small``) or ``beta'`` (``fixed_large``), no noise on the last step.

    The step's scalars are Python floats computed once per timestep by ``set_timesteps``, so a step costs a handful
    of element-wise kernels.

    Args:
        num_train_timesteps: T of the forward process.
        schedule: a MONAI noise schedule name (``linear_beta``, ``cosine``, ...).
        variance_type: ``fixed_small`` or ``fixed_large``.
        kwargs: passed to ``DDPMScheduler`` (``clip_sample``, ``prediction_type``, ``beta_start``, ...).

    Raises:
        ValueError: for a learned variance type (the networks here predict no variance) or what MONAI rejects.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta",
                 variance_type: str = "fixed_small", **kwargs) -> None:
        super().__init__(num_train_timesteps, schedule, variance_type=variance_type, **kwargs)
        if self.variance_type not in ("fixed_small", "fixed_large"):
            raise ValueError(f"variance_type {variance_type!r} needs a learned variance; use fixed_small or fixed_large")
        self._steps: dict[int, _Step] = {}

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """MONAI's timesteps (``linspace(T - 1, 0, n)`` rounded), and the coefficients of each step between them.

        Raises:
            ValueError: for fewer than 1 or more than T steps, or steps that repeat a timestep.
        """
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        super().set_timesteps(int(num_inference_steps), device)
        ts = [int(t) for t in self.timesteps]
        if len(set(ts)) != len(ts):
            raise ValueError(f"num_inference_steps {num_inference_steps} repeats timesteps of T={self.num_train_timesteps}")
        self._steps = {t: self._coefficients(t, ts[i + 1] if i + 1 < len(ts) else -1) for i, t in enumerate(ts)}

    def next_timestep(self, timestep: int) -> int:
        """The timestep the chain goes to from ``timestep`` (-1: the clean image)."""
        t = int(timestep)
        return self._steps[t].t_next if t in self._steps else t - 1

    def _coefficients(self, t: int, t_next: int) -> _Step:
        a_t = float(self.alphas_cumprod[t])
        full = t_next == t - 1
        a_s = float(self.alphas_cumprod[t_next]) if t_next >= 0 else 1.0
        beta = float(self.betas[t]) if full else 1.0 - a_t / a_s
        alpha = float(self.alphas[t]) if full else a_t / a_s
        var = (1.0 - a_s) / (1.0 - a_t) * beta
        var = max(var, 1e-20) if self.variance_type == "fixed_small" else beta
        return _Step(t_next, math.sqrt(a_t), math.sqrt(1.0 - a_t), math.sqrt(a_s) * beta / (1.0 - a_t),
                     math.sqrt(alpha) * (1.0 - a_s) / (1.0 - a_t), math.sqrt(var) if t_next >= 0 else 0.0)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from ``timestep`` to the next timestep of the chain.

        Args:
            model_output: the network's output (epsilon, v or x0, as ``prediction_type``), shaped like ``sample``.
            timestep: the current timestep (one of ``timesteps``).
            sample: ``x_t``, ``(B, C, ...)``.
            generator: one ``torch.Generator`` per sample (sample ``i``'s noise from ``generator[i]``), or one for
                the batch (MONAI's convention), or None.

        Returns:
            ``(x_next, predicted x0)``.

        Raises:
            ValueError: when the output's channels differ from the sample's or the generators from the batch.
        """
        if model_output.shape != sample.shape:
            raise ValueError(f"model output of shape {tuple(model_output.shape)} does not match the sample "
                             f"{tuple(sample.shape)} (a learned variance is not supported)")
        t = int(timestep)
        c = self._steps.get(t) or self._coefficients(t, t - 1)
        if self.prediction_type == "epsilon":
            x0 = (sample - c.sqrt_b * model_output) / c.sqrt_a
        elif self.prediction_type == "v_prediction":
            x0 = c.sqrt_a * sample - c.sqrt_b * model_output
        else:  # sample
            x0 = model_output
        if self.clip_sample:
            x0 = x0.clamp(self.clip_sample_values[0], self.clip_sample_values[1])
        prev = torch.add(sample * c.xt, x0, alpha=c.x0)
        if c.sigma > 0:
            prev.add_(randn_per_sample(sample.shape, generator, sample.device, sample.dtype), alpha=c.sigma)
        return prev, x0
