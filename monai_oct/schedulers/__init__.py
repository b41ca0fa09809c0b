"""Noise schedulers with MONAI's interface (``set_timesteps(n)``, ``timesteps``, ``step(model_output, timestep,
sample, generator=...)``), whose noise can be drawn per sample (one ``torch.Generator`` each)."""

from monai_oct.schedulers.ddim import PerSampleDDIMScheduler
from monai_oct.schedulers.ddpm import RespacedDDPMScheduler
from monai_oct.schedulers.factory import PREDICTION_TYPES, SCHEDULERS, SCHEDULES, diffusion_scheduler
from monai_oct.schedulers.noise import Generators, randn_per_sample

__all__ = ["PREDICTION_TYPES", "SCHEDULERS", "SCHEDULES", "Generators", "PerSampleDDIMScheduler",
           "RespacedDDPMScheduler", "diffusion_scheduler", "randn_per_sample"]
