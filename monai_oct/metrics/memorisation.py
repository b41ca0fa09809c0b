"""Memorisation: is a synthetic image (nearly) a copy of a training image?

For each synthetic image the nearest real training image is found in pixel space (root-mean-square
difference of the [-1, 1] images at the common evaluation size) and, when features are given, in feature
space (Euclidean distance). The reference scale is the *closest real-real pair*: the smallest distance
between two distinct training images. A synthetic image strictly closer to a training image than that
pair is *flagged*: no two real scans are that alike, so it is likely copied. An exact copy has distance 0
and is always flagged unless the training set itself holds duplicates (then the threshold is 0 and the
report says so).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

__all__ = ["pairwise_distances", "nearest_neighbours", "memorisation_report"]


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, kind: str = "rms") -> torch.Tensor:
    """Distances ``(N, M)`` between the rows of ``a`` and ``b`` (flattened).

    Args:
        a, b: ``(N, ...)`` and ``(M, ...)`` of equal trailing size.
        kind: ``"rms"`` (root-mean-square difference, for pixels) or ``"l2"`` (Euclidean, for features).

    Raises:
        ValueError: for different item sizes or an unknown kind.
    """
    x, y = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cannot compare items of sizes {tuple(a.shape[1:])} and {tuple(b.shape[1:])}; "
                         "load both sets at one image_size")
    # no matrix-product shortcut: exact differences, so an exact copy gets exactly 0
    d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    if kind == "rms":
        return d / x.shape[1] ** 0.5
    if kind == "l2":
        return d
    raise ValueError(f"unknown distance {kind!r}; use 'rms' or 'l2'")


def nearest_neighbours(query: torch.Tensor, train: torch.Tensor, kind: str = "rms", batch_size: int = 64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest training item of each query: ``(distances (N,), indices (N,))``."""
    dist, idx = [], []
    for s in range(0, query.shape[0], batch_size):
        d = pairwise_distances(query[s:s + batch_size], train, kind)
        v, i = d.min(1)
        dist.append(v)
        idx.append(i)
    return torch.cat(dist), torch.cat(idx)


def _real_real_min(train: torch.Tensor, kind: str) -> tuple[float, list[int]]:
    d = pairwise_distances(train, train, kind)
    d.fill_diagonal_(float("inf"))
    v = float(d.min())
    i, j = divmod(int(d.argmin()), d.shape[1])
    return v, [i, j]


def _space(synth: torch.Tensor, train: torch.Tensor, kind: str, top_k: int,
           synth_names: Sequence[str] | None, train_names: Sequence[str] | None) -> dict[str, Any]:
    dist, idx = nearest_neighbours(synth, train, kind)
    thr, pair = _real_real_min(train, kind)
    flagged = dist < thr
    order = torch.argsort(dist)[:top_k].tolist()

    def nm(names, i):
        return None if names is None else str(names[i])

    return {
        "distance": kind,
        "real_real_min": thr,
        "real_real_min_pair": [nm(train_names, pair[0]) or pair[0], nm(train_names, pair[1]) or pair[1]],
        "fraction_flagged": float(flagged.double().mean()),
        "num_flagged": int(flagged.sum()),
        "nn_distance_mean": float(dist.mean()),
        "nn_distance_min": float(dist.min()),
        "closest": [{"synthetic": i, "synthetic_name": nm(synth_names, i), "train": int(idx[i]),
                     "train_name": nm(train_names, int(idx[i])), "distance": float(dist[i]), "flagged": bool(flagged[i])}
                    for i in order],
        "per_image": {"distance": dist.tolist(), "train_index": idx.tolist()},
        "note": "training set holds duplicate images: nothing can be flagged" if thr == 0 else None,
    }


def memorisation_report(synthetic: torch.Tensor, train: torch.Tensor, synthetic_features: torch.Tensor | None = None,
                        train_features: torch.Tensor | None = None, top_k: int = 5,
                        synthetic_names: Sequence[str] | None = None, train_names: Sequence[str] | None = None
                        ) -> dict[str, Any]:
    """Nearest-training-image check in pixel space and, with features, in feature space.

    Args:
        synthetic: synthetic images ``(N, C, H, W)`` (RMS over all C channels).
        train: real training images ``(M, C, H, W)`` (``M >= 2``) at the same size and channels.
        synthetic_features, train_features: optional features ``(N, D)``, ``(M, D)``.
        top_k: closest pairs listed (and drawn in the figure).
        synthetic_names, train_names: names for the report.

    Returns:
        ``{"pixel": {...}, "feature": {...} or None, "definition"}``; each space holds ``real_real_min``,
        ``fraction_flagged``, ``num_flagged``, ``closest`` (top-k pairs) and ``per_image`` distances.

    Raises:
        ValueError: with fewer than 2 training images or mismatched sizes.
    """
    if train.shape[0] < 2:
        raise ValueError(f"memorisation needs at least 2 training images (for the real-real scale), got {train.shape[0]}")
    out = {"pixel": _space(synthetic, train, "rms", top_k, synthetic_names, train_names), "feature": None}
    if synthetic_features is not None and train_features is not None:
        out["feature"] = _space(synthetic_features, train_features, "l2", top_k, synthetic_names, train_names)
    out["definition"] = ("For each synthetic image: its nearest real training image, in pixel space (RMS difference of "
                         "[-1, 1] images) and feature space (Euclidean). Flagged when strictly closer than the closest "
                         "pair of distinct training images (real_real_min).")
    return out
