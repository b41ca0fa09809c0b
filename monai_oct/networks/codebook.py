"""The codebook of MONAI's ``VQVAE``: a small seeded k-means and copying its centroids into the quantizer.

K-means codebook initialisation (the multi-band VQ-GAN study of issue 17, which did it at the start of every
epoch and found it sped convergence): encode a few batches, cluster the encoder outputs (one point per latent
pixel, ``embedding_dim`` values) into ``num_embeddings`` centroids and make those the codebook, so every code
starts where encoder outputs are instead of at MONAI's ``N(0, 1)`` initialisation (where most codes are never
the nearest to any output and stay unused).

:func:`kmeans` is written here in torch rather than taken from scikit-learn (an optional dependency of this
package, used by DMC's refinement) because the points are a device tensor and the centroids go back into one;
MONAI has no k-means. Where MONAI's quantizer keeps its codebook: ``vqvae.quantizer.quantizer`` is an
``EMAQuantizer`` whose ``embedding.weight`` (``(num_embeddings, embedding_dim)``, no gradient) is recomputed in
every training forward as ``ema_w / smoothed(ema_cluster_size)``; :func:`set_codebook` writes all three so the
next EMA update continues from the centroids instead of pulling the codebook back to its old averages.
"""

from __future__ import annotations

import torch
from monai.networks.nets import VQVAE

__all__ = ["kmeans", "set_codebook"]


def _nearest(points: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the nearest centroid of every point and the squared distance to it."""
    d = torch.cdist(points, centroids).pow(2)
    dist, idx = d.min(dim=1)
    return idx, dist


def kmeans(points: torch.Tensor, k: int, iterations: int = 10,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of ``points`` started by k-means++ (seeded by ``generator``).

    Args:
        points: ``(N, D)`` float points.
        k: number of centroids (>= 1). With fewer points than ``k`` the centroids are the points, repeated.
        iterations: Lloyd iterations after the k-means++ start (a few suffice for a codebook start).
        generator: the random stream of the k-means++ draws (on ``points``' device; None: torch's global one).

    Returns:
        ``(centroids (k, D), counts (k,))``: the centroids and how many points each one holds. A centroid
        that loses all its points keeps its last position (count 0).

    Raises:
        ValueError: for no points, ``points`` not 2-D, or ``k < 1``.
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"kmeans needs (N, D) points with N >= 1, got shape {list(points.shape)}")
    if int(k) < 1:
        raise ValueError(f"kmeans needs k >= 1 centroids, got {k}")
    k, x = int(k), points.detach().float()
    first = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
    centroids = x[first]
    dist = _nearest(x, centroids)[1]
    for _ in range(1, k):  # k-means++: each new centre drawn with probability proportional to D(x)^2
        total = dist.sum()
        if not total > 0:  # every point is already a centre: repeat random points
            nxt = torch.randint(x.shape[0], (1,), generator=generator, device=x.device)
        else:
            nxt = torch.multinomial(dist / total, 1, generator=generator)
        centroids = torch.cat([centroids, x[nxt]])
        dist = torch.minimum(dist, (x - x[nxt]).pow(2).sum(1))
    for _ in range(int(iterations)):
        idx = _nearest(x, centroids)[0]
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        filled = counts > 0
        centroids = torch.where(filled[:, None], sums / counts.clamp_min(1)[:, None], centroids)
    counts = torch.bincount(_nearest(x, centroids)[0], minlength=k).to(x.dtype)
    return centroids, counts


@torch.no_grad()
def set_codebook(vqvae: VQVAE, centroids: torch.Tensor, counts: torch.Tensor | None = None) -> None:
    """Make ``centroids`` the codebook of MONAI's ``VQVAE``, with its EMA statistics consistent with them.

    ``EMAQuantizer`` recomputes ``embedding.weight = ema_w / w`` with ``w = (n_k + eps) / (n + K eps) * n``
    (Laplace-smoothed ``ema_cluster_size`` n_k, ``n = sum n_k``) in every training forward. This sets
    ``ema_cluster_size = counts`` and ``ema_w = centroids * w``, so the codebook is exactly ``centroids`` and
    the next update is an EMA step away from them.

    Args:
        vqvae: the network (its ``quantizer.quantizer`` is MONAI's ``EMAQuantizer``).
        centroids: ``(num_embeddings, embedding_dim)``.
        counts: ``(num_embeddings,)`` points per centroid per batch (the scale of one forward's cluster sizes);
            None: all equal to 1.

    Raises:
        ValueError: when ``centroids`` does not have the codebook's shape.
    """
    q = vqvae.quantizer.quantizer
    shape = tuple(q.embedding.weight.shape)
    if tuple(centroids.shape) != shape:
        raise ValueError(f"centroids of shape {list(centroids.shape)} do not fit the codebook {list(shape)} "
                         f"(num_embeddings, embedding_dim)")
    c = centroids.to(q.embedding.weight)
    n_k = torch.ones(shape[0]) if counts is None else counts.detach().float()
    n_k = n_k.to(q.ema_cluster_size)
    n = n_k.sum()
    weights = (n_k + q.epsilon) / (n + q.num_embeddings * q.epsilon) * n
    q.ema_cluster_size.copy_(n_k)
    q.ema_w.copy_(c * weights[:, None])
    q.embedding.weight.copy_(c)

