"""Diversity of an image set: mean pairwise MS-SSIM (MONAI ``MultiScaleSSIMMetric``).

A lower mean MS-SSIM between distinct images of a set means a more varied set; compare the synthetic
set's value with the real set's (a synthetic set far above the real one has collapsed modes).

MONAI's MS-SSIM needs images larger than ``(kernel_size - 1) * (len(weights) - 1) ** 2`` pixels per
side (176 for the standard 5 scales and 11-pixel kernel). :func:`ms_ssim_settings` picks the most scales
(up to 5, the standard weights truncated and renormalised) and then the largest odd kernel (up to 11)
that fit the image size, and the report records the choice: values computed with different settings
are not comparable.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.metrics import MultiScaleSSIMMetric

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim_settings", "pairwise_ms_ssim", "diversity_report"]

#: Wang et al. 2003 scale weights (MONAI's default).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(image_size: Sequence[int], max_scales: int = 5, max_kernel: int = 11) -> dict[str, Any]:
    """Number of scales, weights and kernel size of an MS-SSIM that MONAI accepts for ``image_size``.

    Returns:
        ``{"scales", "weights", "kernel_size", "reduced": bool}``.

    Raises:
        ValueError: when even one scale with a 3-pixel kernel does not fit.
    """
    side = min(int(s) for s in image_size)
    for min_kernel in (min(7, max_kernel), 3):  # rather fewer scales than a kernel much narrower than its sigma
        for n in range(max_scales, 0, -1):
            div = max(max(1, n - 1) ** 2, 2 ** (n - 1))  # MONAI's size check and the real downsampling
            for k in range(max_kernel, min_kernel - 1, -2):
                if side // div > k - 1:
                    w = MS_SSIM_WEIGHTS[:n]
                    tot = sum(w)
                    return {"scales": n, "weights": [x / tot for x in w], "kernel_size": k,
                            "reduced": (n, k) != (5, 11)}
    raise ValueError(f"images of size {tuple(image_size)} are too small for MS-SSIM")


def _pairs(n: int, max_pairs: int | None, seed: int) -> torch.Tensor:
    i, j = torch.triu_indices(n, n, offset=1)
    pairs = torch.stack([i, j], 1)
    if max_pairs is not None and pairs.shape[0] > max_pairs:
        g = torch.Generator().manual_seed(int(seed))
        pairs = pairs[torch.randperm(pairs.shape[0], generator=g)[:max_pairs]]
    return pairs


@torch.no_grad()
def pairwise_ms_ssim(images: torch.Tensor, max_pairs: int | None = 1000, batch_size: int = 32, seed: int = 0,
                     settings: dict[str, Any] | None = None) -> torch.Tensor:
    """MS-SSIM of distinct pairs of a set (all pairs, or ``max_pairs`` random ones).

    Args:
        images: ``(N, C, H, W)`` in [-1, 1] (grey, RGB or C bands: MONAI averages the MS-SSIM over channels).
        max_pairs: cap on the number of pairs (None: all ``N (N - 1) / 2``).
        batch_size: pairs per MS-SSIM call.
        seed: seed of the pair draw.
        settings: from :func:`ms_ssim_settings` (default: chosen for the image size).

    Returns:
        ``(P,)`` MS-SSIM values.

    Raises:
        ValueError: with fewer than 2 images.
    """
    n = images.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images, got {n}")
    st = settings or ms_ssim_settings(images.shape[-2:])
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=st["kernel_size"], weights=st["weights"],
                                  reduction="none")
    x = ((images.float() + 1) / 2).clamp(0, 1)
    pairs = _pairs(n, max_pairs, seed)
    out = []
    for s in range(0, pairs.shape[0], batch_size):
        p = pairs[s:s + batch_size]
        out.append(metric(x[p[:, 0]], x[p[:, 1]]).reshape(-1))
    return torch.cat(out)


def diversity_report(sets: dict[str, torch.Tensor], max_pairs: int | None = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean pairwise MS-SSIM of each named set, with one MS-SSIM setting shared by all (fit to the smallest).

    Returns:
        ``{"ms_ssim": {name: {"mean", "std", "pairs"}}, "settings": {...}, "definition"}``.
    """
    sizes = [tuple(v.shape[-2:]) for v in sets.values()]
    st = ms_ssim_settings((min(s[0] for s in sizes), min(s[1] for s in sizes)))
    res = {}
    for name, imgs in sets.items():
        if imgs.shape[0] < 2:
            res[name] = None
            continue
        v = pairwise_ms_ssim(imgs, max_pairs=max_pairs, seed=seed, settings=st)
        res[name] = {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "pairs": int(v.numel())}
    note = "" if not st["reduced"] else (f" Images too small for 5 scales with an 11-pixel kernel: {st['scales']} scales, "
                                          f"kernel {st['kernel_size']} (not comparable with standard MS-SSIM).")
    return {"ms_ssim": res, "settings": st,
            "definition": "Mean MS-SSIM (MONAI MultiScaleSSIMMetric, data range [0, 1]) over distinct pairs of images "
                          f"of a set (at most {max_pairs} random pairs); lower = more diverse." + note}
