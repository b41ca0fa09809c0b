"""Train from one datalist or a weighted mix of several (e.g. real + synthetic in a set ratio).

:func:`~monai_oct.recipes.items.resolve_items` loads a list of datalists into one dataset and tags each item
with ``"source": k`` (its datalist's position). :class:`RatioSampler` then draws each epoch's
indices so that source k supplies ``round(num_samples * w_k)`` of them (largest-remainder rounding),
walking through each source in a fresh random order (repeating a source when its quota exceeds its
size). Items without a ``"source"`` field (e.g. a list MONAI Label passes in) all count as source 0.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["RatioSampler", "quotas"]


def quotas(num_samples: int, weights: Sequence[float]) -> list[int]:
    """Split ``num_samples`` by ``weights`` into integers (largest remainder; ties to the first source).

    Raises:
        ValueError: negative weights or all zero.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixing weights must be non-negative and not all zero, got {list(weights)}")
    exact = num_samples * w / w.sum()
    q = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - q), kind="stable")[: num_samples - q.sum()]:
        q[i] += 1
    return q.tolist()


class RatioSampler(Sampler[int]):
    """Sample indices of a concatenated dataset so each source supplies its share of every epoch.

    Args:
        data: the concatenated items (their ``"source"`` fields group them; missing = 0), or a list of
            source sizes (items of source k are the next ``sizes[k]`` indices).
        weights: relative share of each source (``[1, 1]`` = half and half); None: proportional to the
            source sizes (plain shuffling). Sources with weight 0 are never drawn.
        num_samples: indices per epoch (default: the total number of items).
        seed: base seed; epoch e uses ``seed + e`` so every epoch differs but runs repeat exactly.

    Raises:
        ValueError: when ``weights`` does not have one entry per source, or a weighted source is empty.
    """

    def __init__(self, data: Sequence[Any], weights: Sequence[float] | None = None, num_samples: int | None = None,
                 seed: int = 0) -> None:
        if len(data) and all(isinstance(x, (int, np.integer)) for x in data):
            sizes = [int(x) for x in data]
            self.groups = []
            start = 0
            for s in sizes:
                self.groups.append(np.arange(start, start + s))
                start += s
        else:
            src = np.asarray([int(it.get("source", 0)) if isinstance(it, dict) else 0 for it in data])
            n_src = int(src.max()) + 1 if src.size else 0
            self.groups = [np.flatnonzero(src == k) for k in range(n_src)]
        sizes = [len(g) for g in self.groups]
        if weights is None:
            weights = sizes
        weights = [float(w) for w in weights]
        if len(weights) != len(self.groups):
            raise ValueError(f"{len(weights)} mixing weights {weights} for {len(self.groups)} sources of sizes {sizes}")
        for k, (w, s) in enumerate(zip(weights, sizes)):
            if w > 0 and s == 0:
                raise ValueError(f"source {k} has weight {w} but no items")
        self.weights = weights
        self.num_samples = int(num_samples) if num_samples else int(sum(sizes))
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch (as ``DistributedSampler``); otherwise each ``iter()`` advances it by one."""
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        """The indices of ``epoch`` (deterministic in ``seed`` and ``epoch``)."""
        rng = np.random.default_rng(self.seed + epoch)
        out = []
        for group, q in zip(self.groups, quotas(self.num_samples, self.weights)):
            if q == 0:
                continue
            reps = -(-q // len(group))
            order = np.concatenate([rng.permutation(group) for _ in range(reps)])[:q]
            out.append(order)
        idx = np.concatenate(out)
        return idx[rng.permutation(len(idx))]

    def __iter__(self) -> Iterator[int]:
        idx = self.indices(self.epoch)
        self.epoch += 1
        return iter(idx.tolist())
