"""Train from one datalist or a weighted mix of several (e.g. real + synthetic in a set ratio).

:func:`read_datalists` loads each datalist and tags its items with ``"source": k`` (the datalist's
position); the items are concatenated into one dataset. :class:`RatioSampler` then draws each epoch's
indices so that source k supplies ``round(num_samples * w_k)`` of them (largest-remainder rounding),
walking through each source in a fresh random order (repeating a source when its quota exceeds its
size). Items without a ``"source"`` field (e.g. a list MONAI Label passes in) all count as source 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from monai_oct.core.datalist import load_datalist
from monai_oct.core.io import DataError, read_json

__all__ = ["find_datalist", "read_datalists", "concat_sources", "RatioSampler", "quotas"]


def _candidates(path: Path, keys: str | Sequence[str] | None) -> str | None:
    """The first of ``keys`` that names a list in the JSON at ``path`` (None: load_datalist's default)."""
    if keys is None or isinstance(keys, str):
        return keys
    data = read_json(path, "datalist")
    if not isinstance(data, dict):
        return None
    lists = [k for k, v in data.items() if isinstance(v, list)]
    for k in keys:
        if k in lists:
            return k
    if len(lists) == 1:
        return lists[0]
    raise DataError(f"{path}: none of the lists {list(keys)} found (has {sorted(lists)}); choose one with a key override")


def find_datalist(dataset_dir: str | os.PathLike, split: str = "train") -> str:
    """``dataset_dir/datalist_<split>.json`` if present (the Duke layout), else ``dataset_dir/datalist.json``
    (the phantom / synthetic layout); when neither exists, the first (so the error names it). The path is
    absolute, so it does not depend on how a later step resolves relative paths."""
    d = Path(dataset_dir).absolute()
    for name in (f"datalist_{split}.json", "datalist.json"):
        if (d / name).is_file():
            return str(d / name)
    return str(d / f"datalist_{split}.json")


def read_datalists(datalist: str | os.PathLike | Sequence[str | os.PathLike], key: str | Sequence[str] | None = None,
                   dataset_dir: str | os.PathLike | None = None) -> list[list[dict[str, Any]]]:
    """Load one datalist or several, one list of items per datalist, each item tagged ``"source": k``.

    Args:
        datalist: a path or a list of paths; a relative path is looked up under ``dataset_dir`` first,
            then in the working directory.
        key: the list to read in each file: a name, a list of candidate names (the first present wins; a
            file holding a single list uses it), or None (``"train"`` or the only list).
        dataset_dir: folder relative datalist paths start from (default: the working directory).
            Item paths inside a datalist are relative to that datalist's folder.

    Returns:
        ``[[item, ...], ...]`` with absolute ``image``/``label`` paths.

    Raises:
        DataError: a missing/invalid datalist, naming the file.
    """
    paths = [datalist] if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    if not paths:
        raise DataError("no datalist given")
    out = []
    for k, p in enumerate(paths):
        p = Path(p)
        if not p.is_absolute() and dataset_dir is not None and (Path(dataset_dir) / p).is_file():
            p = Path(dataset_dir) / p  # else: relative to the working directory, as a shell user means it
        if not p.is_file():
            raise DataError(f"{p}: datalist not found")
        p = p.absolute()
        items = load_datalist(p, key=_candidates(p, key))
        out.append([{**it, "source": k} for it in items])
    return out


def concat_sources(sources: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate the per-source item lists of :func:`read_datalists` into one list."""
    return [it for src in sources for it in src]


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
