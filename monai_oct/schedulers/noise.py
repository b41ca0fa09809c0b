"""Noise drawn per sample: each sample of a batch from its own ``torch.Generator``.

A sample then depends only on its own seed, never on the batch it shares or on the order of the batches: a
restarted synthesis reproduces it bit for bit (on the same device). MONAI's schedulers take one generator for
the whole batch, so the schedulers of this package accept a list of generators wherever they draw noise.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

__all__ = ["Generators", "randn_per_sample"]

#: what a ``step`` accepts as ``generator``: None (torch's global RNG), one generator for the whole batch (MONAI's
#: convention) or one generator per sample.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn_per_sample(shape: Sequence[int], generator: Generators = None, device: str | torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` ``(B, ...)``, sample ``i`` drawn from ``generator[i]``.

    Args:
        shape: the batch shape, batch first.
        generator: one generator per sample; or one generator (or None) for the whole tensor, as ``torch.randn``.
        device: where the noise lives (a generator must be on the same device type).
        dtype: the noise's dtype.

    Returns:
        the noise; with a list of generators, ``out[i]`` equals ``torch.randn(shape[1:], generator=generator[i])``.

    Raises:
        ValueError: when the number of generators differs from the batch size.
    """
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]} samples; give one generator per sample")
    out = torch.empty(shape, device=device, dtype=dtype)
    for i, g in enumerate(gens):
        torch.randn(shape[1:], generator=g, device=device, dtype=dtype, out=out[i])
    return out
