"""DDIM with noise per sample: MONAI's ``DDIMScheduler``, whose ``step`` also takes one generator per sample."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler

from monai_oct.schedulers.noise import Generators

__all__ = ["PerSampleDDIMScheduler"]


class PerSampleDDIMScheduler(DDIMScheduler):
    """MONAI's ``DDIMScheduler`` (its timesteps and update rule, unchanged) with per-sample noise for ``eta > 0``.

    MONAI's ``step`` draws the ``eta`` noise of the whole batch from one generator, so a sample would depend on
    its batch mates; given a list of generators, this ``step`` runs MONAI's on each sample with its own generator.
    For ``eta = 0`` (deterministic DDIM) or one generator it is MONAI's ``step`` itself.
    """

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             generator: Generators = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step (MONAI's), noise for ``eta > 0`` drawn per sample when ``generator`` is a list.

        Args:
            model_output: the network's output (epsilon, v or x0, as ``prediction_type``).
            timestep: the current timestep.
            sample: ``x_t``, ``(B, C, ...)``.
            eta: the noise weight (0: deterministic).
            generator: one ``torch.Generator`` per sample, or one for the batch, or None.

        Returns:
            ``(x_prev, predicted x0)``.

        Raises:
            ValueError: when the number of generators differs from the batch size.
        """
        if float(eta) == 0.0 or generator is None or isinstance(generator, torch.Generator):
            return super().step(model_output, timestep, sample, eta, None if float(eta) == 0.0 else generator)
        gens = list(generator)
        if len(gens) != sample.shape[0]:
            raise ValueError(f"{len(gens)} generators for a batch of {sample.shape[0]} samples; give one per sample")
        parts = [super(PerSampleDDIMScheduler, self).step(model_output[i:i + 1], timestep, sample[i:i + 1], eta, g)
                 for i, g in enumerate(gens)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
