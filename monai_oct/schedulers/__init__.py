"""Noise schedulers with MONAI's interface (``set_timesteps(n)``, ``timesteps``, ``step(model_output, timestep,
sample, generator=...)``), whose noise can be drawn per sample (one ``torch.Generator`` each)."""

from monai_oct.schedulers.ddim import PerSampleDDIMScheduler
from monai_oct.schedulers.ddpm import RespacedDDPMScheduler
from monai_oct.schedulers.factory import (DIFFUSION_SAMPLERS, FLOW_SAMPLERS, FLOW_TIMESTEPS, PREDICTION_TYPES,
                                          SCHEDULERS, SCHEDULES, default_sampler, diffusion_scheduler)
from monai_oct.schedulers.flow import FLOW, FlowEulerScheduler, FlowHeunScheduler
from monai_oct.schedulers.noise import Generators, randn_per_sample

__all__ = ["DIFFUSION_SAMPLERS", "FLOW", "FLOW_SAMPLERS", "FLOW_TIMESTEPS", "PREDICTION_TYPES", "SCHEDULERS",
           "SCHEDULES", "FlowEulerScheduler", "FlowHeunScheduler", "Generators", "PerSampleDDIMScheduler",
           "RespacedDDPMScheduler", "default_sampler", "diffusion_scheduler", "randn_per_sample"]
