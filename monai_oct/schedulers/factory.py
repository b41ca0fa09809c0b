"""Noise schedulers by name, built from a bundle's settings (``kind``, ``num_train_timesteps``, ``schedule``,
``prediction_type``): one table, :data:`SCHEDULERS`, that a new sampler is added to. Diffusion samplers
(:data:`DIFFUSION_SAMPLERS`) take epsilon / v / x0 networks, flow samplers (:data:`FLOW_SAMPLERS`) rectified-flow ones."""

from __future__ import annotations

from typing import Any

from monai.networks.schedulers import Scheduler

from monai_oct.schedulers.ddim import PerSampleDDIMScheduler
from monai_oct.schedulers.ddpm import RespacedDDPMScheduler
from monai_oct.schedulers.dpm_solver import DPMSolverPP2MScheduler, DPMSolverPP3MScheduler
from monai_oct.schedulers.flow import FLOW, FlowEulerScheduler, FlowHeunScheduler

__all__ = ["DIFFUSION_SAMPLERS", "FLOW_SAMPLERS", "FLOW_TIMESTEPS", "PREDICTION_TYPES", "SCHEDULES", "SCHEDULERS",
           "default_sampler", "diffusion_scheduler"]

#: what the network predicts (MONAI's ``DDPMPredictionType`` values, and ``"flow"``: the rectified-flow velocity).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", FLOW)
#: training timestep distributions of rectified flow (``RFlowScheduler``'s ``sample_method``).
FLOW_TIMESTEPS = ("uniform", "logit-normal")
#: noise schedules accepted by :func:`diffusion_scheduler` (short names map to MONAI's).
SCHEDULES = {"linear": "linear_beta", "linear_beta": "linear_beta", "scaled_linear": "scaled_linear_beta",
             "scaled_linear_beta": "scaled_linear_beta", "sigmoid": "sigmoid_beta", "sigmoid_beta": "sigmoid_beta",
             "cosine": "cosine"}
#: sampler name -> scheduler class (MONAI's constructor: ``(num_train_timesteps, schedule, prediction_type=...,
#: clip_sample=..., **kwargs)``; ``step(model_output, timestep, sample, generator=...)`` with per-sample generators).
#: ``dpmpp2m`` / ``dpmpp3m`` are deterministic (DPM-Solver++ multistep of order 2 / 3, trailing timesteps);
#: ``euler`` / ``heun`` sample rectified flow (``prediction_type="flow"``; 1 / 2 network evaluations per step).
SCHEDULERS: dict[str, type[Scheduler]] = {"ddpm": RespacedDDPMScheduler, "ddim": PerSampleDDIMScheduler,
                                          "dpmpp2m": DPMSolverPP2MScheduler, "dpmpp3m": DPMSolverPP3MScheduler,
                                          "euler": FlowEulerScheduler, "heun": FlowHeunScheduler}
#: the samplers of rectified-flow networks (prediction type ``"flow"``): the table's flow scheduler classes.
FLOW_SAMPLERS = tuple(k for k, c in SCHEDULERS.items() if issubclass(c, FlowEulerScheduler))
#: the samplers of diffusion networks (epsilon, v_prediction, sample).
DIFFUSION_SAMPLERS = tuple(k for k in SCHEDULERS if k not in FLOW_SAMPLERS)


def default_sampler(prediction_type: str, diffusion_kind: str = "ddpm") -> str:
    """The sampler a stage uses for ``prediction_type`` unless told otherwise: ``"euler"`` for ``"flow"``, else
    ``diffusion_kind`` (the training scheduler and the training grids' sampler of the bundles)."""
    return "euler" if prediction_type == FLOW else diffusion_kind


def diffusion_scheduler(kind: str = "ddpm", num_train_timesteps: int = 1000, schedule: str = "linear_beta",
                        prediction_type: str = "epsilon", clip_sample: bool = True, flow_timesteps: str = "uniform",
                        flow_timestep_transform: bool = False, flow_base_numel: int = 64 * 64,
                        **kwargs: Any) -> Scheduler:
    """A noise scheduler of :data:`SCHEDULERS`: ``"ddpm"`` (training, ancestral sampling on any number of steps),
    ``"ddim"`` (MONAI's DDIM), ``"dpmpp2m"`` or ``"dpmpp3m"`` (DPM-Solver++ multistep of order 2 or 3, deterministic,
    trailing timesteps, :mod:`monai_oct.schedulers.dpm_solver`); for ``prediction_type="flow"`` ``"euler"`` (training,
    MONAI's ``RFlowScheduler`` Euler step) or ``"heun"`` (second order), :mod:`monai_oct.schedulers.flow`.

    Args:
        kind: a key of :data:`SCHEDULERS` (case-insensitive).
        num_train_timesteps: T of the forward process (training and sampling must agree).
        schedule: ``"linear"``/``"linear_beta"``, ``"scaled_linear_beta"``, ``"sigmoid_beta"`` or ``"cosine"``.
        prediction_type: ``"epsilon"``, ``"v_prediction"``, ``"sample"`` (diffusion samplers) or ``"flow"`` (flow
            samplers); must match training.
        clip_sample: clip the predicted x0 to [-1, 1] while sampling.
        flow_timesteps: flow samplers only: training timesteps ``"uniform"`` or ``"logit-normal"``.
        flow_timestep_transform: flow samplers only: MONAI's resolution-dependent shift of the timesteps (training
            and sampling; identity at ``H W = flow_base_numel``).
        flow_base_numel: flow samplers only: the ``H W`` of no shift.
        kwargs: passed to the scheduler (e.g. ``beta_start``, ``beta_end``, ``variance_type``; for the DPM-Solvers
            ``lower_order_final``).

    Returns:
        the scheduler (a MONAI ``DDPMScheduler`` / ``DDIMScheduler`` / ``Scheduler`` subclass).

    Raises:
        ValueError: for an unknown kind, schedule or prediction type, a flow sampler for a diffusion prediction type
            or a diffusion sampler for ``"flow"`` (naming both), or an unknown ``flow_timesteps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {sorted(set(SCHEDULES))}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}")
    kind = str(kind).lower()
    cls = SCHEDULERS.get(kind)
    if cls is None:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {sorted(SCHEDULERS)}")
    if (prediction_type == FLOW) != (kind in FLOW_SAMPLERS):
        fits = "|".join(FLOW_SAMPLERS if prediction_type == FLOW else DIFFUSION_SAMPLERS)
        raise ValueError(f"sampler {kind!r} is a {'flow' if kind in FLOW_SAMPLERS else 'diffusion'} sampler and cannot "
                         f"sample a network of prediction_type {prediction_type!r}: use --sampler {fits} (or the "
                         "--prediction_type the network was trained with)")
    if kind in FLOW_SAMPLERS:
        if flow_timesteps not in FLOW_TIMESTEPS:
            raise ValueError(f"unknown flow_timesteps {flow_timesteps!r}; choose one of {FLOW_TIMESTEPS}")
        kwargs.update(sample_method=flow_timesteps, use_timestep_transform=bool(flow_timestep_transform),
                      base_img_size_numel=int(flow_base_numel))
    return cls(num_train_timesteps, SCHEDULES[schedule], prediction_type=prediction_type, clip_sample=clip_sample,
               **kwargs)
