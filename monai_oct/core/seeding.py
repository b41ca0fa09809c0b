"""Per-sample random streams: the same ``(seed, index)`` always gives the same stream, different seeds never share one.

A synthetic set of ``N`` samples made with ``seed`` draws sample ``i`` from a stream derived from the pair
``(seed, i)`` by :class:`numpy.random.SeedSequence` (a hash of the whole entropy tuple), not from
``seed + i``: with ``seed + i`` the runs with seeds 0 and 1 would share all but one of their samples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["sample_seed", "sample_seeds", "sample_generators"]


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``seed``, derived from ``(seed, index)``.

    Args:
        seed: the run's seed (>= 0).
        index: the sample's index (>= 0).

    Returns:
        an int in ``[0, 2**63)``; equal pairs give equal seeds, different pairs different streams.

    Raises:
        ValueError: for a negative seed or index.
    """
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def sample_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    """:func:`sample_seed` of every index."""
    return [sample_seed(seed, i) for i in indices]


def sample_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per sample, seeded with ``seeds[i]``, on ``device``."""
    return [torch.Generator(device=torch.device(device)).manual_seed(int(s)) for s in seeds]
