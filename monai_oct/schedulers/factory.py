"""Noise schedulers by name, built from a bundle's settings (``kind``, ``num_train_timesteps``, ``schedule``,
``prediction_type``): one table, :data:`SCHEDULERS`, that a new sampler is added to."""

from __future__ import annotations

from typing import Any

from monai.networks.schedulers import Scheduler

from monai_oct.schedulers.ddim import PerSampleDDIMScheduler
from monai_oct.schedulers.ddpm import RespacedDDPMScheduler
from monai_oct.schedulers.dpm_solver import DPMSolverPP2MScheduler, DPMSolverPP3MScheduler

__all__ = ["PREDICTION_TYPES", "SCHEDULES", "SCHEDULERS", "diffusion_scheduler"]

#: what the network predicts (MONAI's ``DDPMPredictionType`` values).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: noise schedules accepted by :func:`diffusion_scheduler` (short names map to MONAI's).
SCHEDULES = {"linear": "linear_beta", "linear_beta": "linear_beta", "scaled_linear": "scaled_linear_beta",
             "scaled_linear_beta": "scaled_linear_beta", "sigmoid": "sigmoid_beta", "sigmoid_beta": "sigmoid_beta",
             "cosine": "cosine"}
#: sampler name -> scheduler class (MONAI's constructor: ``(num_train_timesteps, schedule, prediction_type=...,
#: clip_sample=..., **kwargs)``; ``step(model_output, timestep, sample, generator=...)`` with per-sample generators).
#: ``dpmpp2m`` / ``dpmpp3m`` are deterministic (DPM-Solver++ multistep of order 2 / 3, trailing timesteps).
SCHEDULERS: dict[str, type[Scheduler]] = {"ddpm": RespacedDDPMScheduler, "ddim": PerSampleDDIMScheduler,
                                          "dpmpp2m": DPMSolverPP2MScheduler, "dpmpp3m": DPMSolverPP3MScheduler}


def diffusion_scheduler(kind: str = "ddpm", num_train_timesteps: int = 1000, schedule: str = "linear_beta",
                        prediction_type: str = "epsilon", clip_sample: bool = True, **kwargs: Any) -> Scheduler:
    """A noise scheduler of :data:`SCHEDULERS`: ``"ddpm"`` (training, ancestral sampling on any number of steps),
    ``"ddim"`` (MONAI's DDIM), ``"dpmpp2m"`` or ``"dpmpp3m"`` (DPM-Solver++ multistep of order 2 or 3, deterministic,
    trailing timesteps, :mod:`monai_oct.schedulers.dpm_solver`).

    Args:
        kind: a key of :data:`SCHEDULERS` (case-insensitive).
        num_train_timesteps: T of the forward process (training and sampling must agree).
        schedule: ``"linear"``/``"linear_beta"``, ``"scaled_linear_beta"``, ``"sigmoid_beta"`` or ``"cosine"``.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (must match training).
        clip_sample: clip the predicted x0 to [-1, 1] while sampling.
        kwargs: passed to the scheduler (e.g. ``beta_start``, ``beta_end``, ``variance_type``; for the DPM-Solvers
            ``lower_order_final``).

    Returns:
        the scheduler (a MONAI ``DDPMScheduler`` / ``DDIMScheduler`` / ``Scheduler`` subclass).

    Raises:
        ValueError: for an unknown kind, schedule or prediction type.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {sorted(set(SCHEDULES))}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    cls = SCHEDULERS.get(str(kind).lower())
    if cls is None:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {sorted(SCHEDULERS)}")
    return cls(num_train_timesteps, SCHEDULES[schedule], prediction_type=prediction_type, clip_sample=clip_sample,
               **kwargs)
