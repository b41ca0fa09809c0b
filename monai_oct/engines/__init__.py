"""Engines: the Ignite diffusion trainer, the sampling loop and the synthesis engine with its pair writer."""

from monai_oct.engines.diffusion import DiffusionTrainer, diffusion_target
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.engines.synthesis import SamplerEngine
from monai_oct.engines.writer import PairWriter
