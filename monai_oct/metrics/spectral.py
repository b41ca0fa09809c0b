"""Quality of multi-band (C-band) image sets: spectral KL per structure, diversity gap, nearest neighbours and
artery/vein separability.

Images are ``(N, C, H, W)`` reflectances in ``value_range`` (default [0, 1]); structure masks ``(N, H, W)`` (or
``(N, 1, H, W)``) hold the ids of :data:`monai_oct.phantoms.multiband.STRUCTURES` (0 background, 1 artery, 2 vein,
3 optic nerve head; any other id, e.g. 255, is not counted). For real images the masks come from annotation or
the phantom, for synthetic images from the phantom's masks or a structure segmenter.

- :func:`spectral_kl`: per structure and band, the histogram of the band's values inside the structure, pooled
  over the images of a set; the smoothed (additive, ``smoothing`` pseudo-counts per bin) histograms of the two
  sets are compared by the symmetric KL divergence ``(KL(P||Q) + KL(Q||P)) / 2`` (or ``KL(real || synthetic)``
  with ``direction="real_to_synthetic"``), in nats; a structure's value is the mean over bands.
- :func:`spectral_kl_floor`: the same divergence between two disjoint random parts of the real set at the sizes
  of the synthetic comparison (:func:`monai_oct.metrics.fid.matched_draws`, as the Fréchet floor), and the
  matched synthetic value: a histogram KL of a few images is mostly sampling noise, compare with the floor.
- :func:`ms_ssim_gap`: ``|MS-SSIM(synthetic) - MS-SSIM(validation)|`` of the mean pairwise MONAI MS-SSIM
  (:func:`monai_oct.metrics.diversity.diversity_report`, all C bands; MONAI averages over channels).
- :func:`av_separability`: a logistic regression (scikit-learn, a dependency already) on the per-pixel band values
  (their logarithm by default: absorbers add in log reflectance, so a linear boundary there is the physical one)
  of artery vs vein pixels, classes balanced by subsampling (chance = 0.5), accuracy on a held-out split.
- :func:`spectral_report`: all of them and the nearest-training-image distances of
  :func:`monai_oct.metrics.memorisation.memorisation_report`.
- :func:`structure_classifier` / :func:`classify_structures`: structure masks for images that have none (a
  synthetic set), by a per-pixel classifier fitted on real images and their masks; :func:`classifier_scores`: its
  per-structure recall and precision on held-out real images.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from monai_oct.core.labels import UNANNOTATED
from monai_oct.metrics.diversity import diversity_report
from monai_oct.metrics.fid import matched_draws
from monai_oct.metrics.memorisation import memorisation_report
from monai_oct.phantoms.multiband import STRUCTURES

__all__ = ["VESSEL_STRUCTURES", "CLASSIFIER_STRUCTURES", "structure_histograms", "spectral_kl", "spectral_kl_floor",
           "ms_ssim_gap", "av_separability", "spectral_report", "structure_classifier", "classify_structures",
           "classifier_scores"]

#: Structures scored by default: everything of :data:`STRUCTURES` but the background.
VESSEL_STRUCTURES = {k: v for k, v in STRUCTURES.items() if k != 0}
#: Classes of :func:`structure_classifier`: background, artery, vein, ONH and 255 (outside the FOV, crossings).
CLASSIFIER_STRUCTURES = (0, 1, 2, 3, UNANNOTATED)


def _as_arrays(images: Any, structures: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    m = np.asarray(structures.detach().cpu() if isinstance(structures, torch.Tensor) else structures)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if x.ndim != 4 or m.shape != (x.shape[0],) + x.shape[2:]:
        raise ValueError(f"images must be (N, C, H, W) and structures (N, H, W) of the same N, H, W; got images "
                         f"{tuple(x.shape)} and structures {tuple(np.shape(structures))}")
    return x, m


def structure_histograms(images: Any, structures: Any, ids: Sequence[int], bins: int = 32,
                         value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Counts ``(len(ids), C, bins)``: each band's values inside each structure, pooled over the set.

    Values outside ``value_range`` fall into the first or last bin.

    Raises:
        ValueError: for images that are not ``(N, C, H, W)`` or masks of another size.
    """
    x, m = _as_arrays(images, structures)
    lo, hi = float(value_range[0]), float(value_range[1])
    out = np.zeros((len(ids), x.shape[1], bins), dtype=np.float64)
    for i, sid in enumerate(ids):
        values = x.transpose(1, 0, 2, 3)[:, m == sid]  # (C, P)
        b = np.clip(((values - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        for c in range(x.shape[1]):
            out[i, c] = np.bincount(b[c], minlength=bins)
    return out


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.sum(p * np.log(p / q), axis=-1)


def spectral_kl(real: Any, real_structures: Any, synthetic: Any, synthetic_structures: Any,
                structures: Mapping[int, str] = VESSEL_STRUCTURES, bins: int = 32,
                value_range: tuple[float, float] = (0.0, 1.0), smoothing: float = 0.5,
                direction: str = "symmetric") -> dict[str, Any]:
    """Spectral KL divergence per structure between a real and a synthetic set (see the module docstring).

    Args:
        real, synthetic: ``(N, C, H, W)`` images of the same C.
        real_structures, synthetic_structures: ``(N, H, W)`` structure ids.
        structures: ``{id: name}`` scored.
        bins, value_range: the histograms.
        smoothing: pseudo-count added to every bin before normalising (no empty bin, no infinite KL).
        direction: ``"symmetric"`` or ``"real_to_synthetic"`` (``KL(real || synthetic)``).

    Returns:
        ``{"per_structure": {name: {"kl", "per_band", "pixels_real", "pixels_synthetic"} or None (absent from a
        set)}, "mean": mean over the structures present, "direction", "bins", "definition"}``.

    Raises:
        ValueError: for an unknown direction, different band counts or badly shaped inputs.
    """
    _check_direction(direction)
    if np.shape(real)[1] != np.shape(synthetic)[1]:
        raise ValueError(f"real and synthetic images have different band counts: {np.shape(real)[1]} and "
                         f"{np.shape(synthetic)[1]}")
    ids = list(structures)
    hr = structure_histograms(real, real_structures, ids, bins, value_range)
    hs = structure_histograms(synthetic, synthetic_structures, ids, bins, value_range)
    return _histogram_kl(hr, hs, structures, bins, smoothing, direction)


def _check_direction(direction: str) -> None:
    if direction not in ("symmetric", "real_to_synthetic"):
        raise ValueError(f"unknown direction {direction!r}; use 'symmetric' or 'real_to_synthetic'")


def _histogram_kl(hr: np.ndarray, hs: np.ndarray, structures: Mapping[int, str], bins: int, smoothing: float,
                  direction: str) -> dict[str, Any]:
    """:func:`spectral_kl` from the two sets' :func:`structure_histograms` (rows in the order of ``structures``)."""
    ids = list(structures)
    per, values = {}, []
    for i, sid in enumerate(ids):
        nr, ns = hr[i, 0].sum(), hs[i, 0].sum()
        if nr == 0 or ns == 0:
            per[structures[sid]] = None
            continue
        p = (hr[i] + smoothing) / (nr + smoothing * bins)
        q = (hs[i] + smoothing) / (ns + smoothing * bins)
        kl = 0.5 * (_kl(p, q) + _kl(q, p)) if direction == "symmetric" else _kl(p, q)
        per[structures[sid]] = {"kl": float(kl.mean()), "per_band": [float(v) for v in kl],
                                "pixels_real": int(nr), "pixels_synthetic": int(ns)}
        values.append(float(kl.mean()))
    how = "(KL(real||synthetic) + KL(synthetic||real)) / 2" if direction == "symmetric" else "KL(real||synthetic)"
    return {"per_structure": per, "mean": float(np.mean(values)) if values else None, "direction": direction,
            "bins": bins, "definition": f"Per structure and band, {how} in nats of the {bins}-bin histograms of the "
                                        f"band's values inside the structure (pooled over a set, {smoothing} "
                                        "pseudo-counts per bin); per structure the mean over bands."}


def spectral_kl_floor(real: Any, real_structures: Any, synthetic: Any | None = None, synthetic_structures: Any = None,
                      repeats: int = 3, seed: int = 0, structures: Mapping[int, str] = VESSEL_STRUCTURES,
                      bins: int = 32, value_range: tuple[float, float] = (0.0, 1.0), smoothing: float = 0.5,
                      direction: str = "symmetric") -> dict[str, Any]:
    """Real-vs-real spectral KL at matched sizes and, with a synthetic set, the matched synthetic value.

    ``k = min(#synthetic, #real // 2)`` real images are held out (``#real // 2`` without a synthetic set) and
    compared with the other real images (``floor``); ``k`` synthetic images are compared with the same other real
    images (``matched``); means over ``repeats`` random draws (:func:`monai_oct.metrics.fid.matched_draws`).

    Args:
        real, real_structures: the real set (at least 4 images).
        synthetic, synthetic_structures: optional synthetic set.
        repeats, seed: the random draws.
        structures, bins, value_range, smoothing, direction: as :func:`spectral_kl`. Each draw's reference part is
            histogrammed once for both comparisons.

    Returns:
        ``{"floor": {name: mean KL}, "matched": {name: mean KL} or None, "ratio": {name: matched / floor} or None,
        "matched_sizes", "repeats"}``.

    Raises:
        ValueError: with too few real images for two parts of at least 2.
    """
    x, m = _as_arrays(real, real_structures)
    if synthetic is not None:
        s, sm = _as_arrays(synthetic, synthetic_structures)
    k, draws = matched_draws(x.shape[0], s.shape[0] if synthetic is not None else x.shape[0] // 2,
                             None, repeats, seed)
    if not draws:
        raise ValueError(f"a spectral KL floor needs two parts of at least 2 real images; got {x.shape[0]} real "
                         f"images (k = {k})")
    _check_direction(direction)
    if synthetic is not None and s.shape[1] != x.shape[1]:
        raise ValueError(f"real and synthetic images have different band counts: {x.shape[1]} and {s.shape[1]}")

    def hist(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return structure_histograms(images, masks, list(structures), bins, value_range)

    def kls(hr: np.ndarray, hs: np.ndarray) -> dict[str, Any]:
        return _histogram_kl(hr, hs, structures, bins, smoothing, direction)["per_structure"]

    floor: dict[str, list[float]] = {}
    matched: dict[str, list[float]] = {}
    for i1, i2, i_s in draws:
        i1, i2 = i1.numpy(), i2.numpy()
        h1 = hist(x[i1], m[i1])  # the reference part, once for both comparisons
        for name, v in kls(h1, hist(x[i2], m[i2])).items():
            floor.setdefault(name, []).append(np.nan if v is None else v["kl"])
        if synthetic is not None:
            i_s = i_s.numpy()
            for name, v in kls(h1, hist(s[i_s], sm[i_s])).items():
                matched.setdefault(name, []).append(np.nan if v is None else v["kl"])
    fl = {n: float(np.nanmean(v)) if not np.all(np.isnan(v)) else None for n, v in floor.items()}
    out: dict[str, Any] = {"floor": fl, "matched": None, "ratio": None,
                           "matched_sizes": [int(x.shape[0] - k), int(k)], "repeats": len(draws)}
    if synthetic is not None:
        mt = {n: float(np.nanmean(v)) if not np.all(np.isnan(v)) else None for n, v in matched.items()}
        out["matched"] = mt
        out["ratio"] = {n: (mt[n] / fl[n] if mt[n] is not None and fl[n] else None) for n in mt}
    return out


def ms_ssim_gap(synthetic: torch.Tensor, validation: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0),
                max_pairs: int | None = 1000, seed: int = 0) -> dict[str, Any]:
    """``|MS-SSIM(synthetic) - MS-SSIM(validation)|`` of mean pairwise MONAI MS-SSIM over all C bands.

    Args:
        synthetic, validation: ``(N, C, H, W)`` images in ``value_range``, at least 2 each.
        value_range: mapped to [-1, 1] for :func:`monai_oct.metrics.diversity.diversity_report`.
        max_pairs, seed: the pairs drawn per set.

    Returns:
        ``{"gap", "synthetic", "validation", "settings"}`` (the two means and the shared MS-SSIM settings).

    Raises:
        ValueError: with fewer than 2 images in a set.
    """
    lo, hi = value_range
    sets = {"synthetic": torch.as_tensor(synthetic).float(), "validation": torch.as_tensor(validation).float()}
    for name, v in sets.items():
        if v.shape[0] < 2:
            raise ValueError(f"the MS-SSIM gap needs at least 2 {name} images, got {v.shape[0]}")
    rep = diversity_report({n: (v - lo) / (hi - lo) * 2 - 1 for n, v in sets.items()}, max_pairs=max_pairs, seed=seed)
    s, v = rep["ms_ssim"]["synthetic"]["mean"], rep["ms_ssim"]["validation"]["mean"]
    return {"gap": abs(s - v), "synthetic": s, "validation": v, "settings": rep["settings"]}


def av_separability(images: Any, structures: Any, artery: int = 1, vein: int = 2, test_fraction: float = 0.3,
                    max_pixels: int = 5000, log: bool = True, seed: int = 0) -> dict[str, Any]:
    """How well a linear classifier tells artery from vein pixels by their band values alone.

    Each class is subsampled to the same count (at most ``max_pixels``), so chance is 0.5; a stratified random
    ``test_fraction`` of the pixels is held out; the features are standardised and fitted by scikit-learn's
    ``LogisticRegression`` (why not our own: it is a dependency already, with a tested solver).

    Args:
        images, structures: ``(N, C, H, W)`` and ``(N, H, W)``.
        artery, vein: the two structure ids.
        test_fraction: held-out share of the pixels.
        max_pixels: pixels per class at most.
        log: fit on ``log(max(value, 1e-3))`` (absorbers add in log reflectance) instead of the values.
        seed: the subsampling and the split.

    Returns:
        ``{"accuracy" (held-out), "train_accuracy", "pixels_per_class", "test_pixels", "features"}``.

    Raises:
        ValueError: with fewer than 10 pixels of either class.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, m = _as_arrays(images, structures)
    feats = x.transpose(0, 2, 3, 1)  # (N, H, W, C)
    rng = np.random.default_rng(seed)
    a, v = feats[m == artery], feats[m == vein]
    n = min(len(a), len(v), int(max_pixels))
    if n < 10:
        raise ValueError(f"artery/vein separability needs at least 10 pixels of each class; got {len(a)} artery "
                         f"(id {artery}) and {len(v)} vein (id {vein}) pixels")
    xs = np.concatenate([a[rng.permutation(len(a))[:n]], v[rng.permutation(len(v))[:n]]])
    ys = np.repeat([0, 1], n)
    if log:
        xs = np.log(np.maximum(xs, 1e-3))
    x_tr, x_te, y_tr, y_te = train_test_split(xs, ys, test_size=test_fraction, random_state=seed, stratify=ys)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    return {"accuracy": float(clf.score(x_te, y_te)), "train_accuracy": float(clf.score(x_tr, y_tr)),
            "pixels_per_class": int(n), "test_pixels": int(len(y_te)), "features": "log band values" if log else
            "band values"}


def spectral_report(synthetic: Any, synthetic_structures: Any, train: Any, train_structures: Any,
                    validation: Any | None = None, repeats: int = 3,
                    seed: int = 0, **kl_args: Any) -> dict[str, Any]:
    """Every C-band quality number of a synthetic set against the real training (and validation) set.

    Args:
        synthetic, synthetic_structures: ``(N, C, H, W)`` images and ``(N, H, W)`` structure ids.
        train, train_structures: the real training set (at least 4 images, for the floor).
        validation: optional real validation images ``(M, C, H, W)`` for the MS-SSIM gap.
        repeats, seed: the floor's draws, the separability's split.
        kl_args: passed to :func:`spectral_kl` (``value_range`` also sets the range of the other metrics).

    Returns:
        ``{"spectral_kl": real (train) vs synthetic, "spectral_kl_floor": :func:`spectral_kl_floor`,
        "separability": {"real", "synthetic", "difference"} (accuracy points, real - synthetic; with fewer than 10
        synthetic pixels of artery or vein the synthetic entry is ``{"accuracy": None, "error"}`` and the
        difference None),
        "ms_ssim": :func:`ms_ssim_gap` vs the validation set (None without one), "memorisation":
        :func:`memorisation_report` in pixel space (RMS over all bands)}``.
    """
    s, sm = _as_arrays(synthetic, synthetic_structures)
    t, tm = _as_arrays(train, train_structures)
    sep_real = av_separability(t, tm, seed=seed)
    try:  # a poor synthetic set (or its structure segmenter) may hold no vessel of one kind: say so, score the rest
        sep_syn = av_separability(s, sm, seed=seed)
    except ValueError as e:
        sep_syn = {"accuracy": None, "error": str(e)}
    diff = None if sep_syn["accuracy"] is None else 100.0 * (sep_real["accuracy"] - sep_syn["accuracy"])
    out = {"spectral_kl": spectral_kl(t, tm, s, sm, **kl_args),
           "spectral_kl_floor": spectral_kl_floor(t, tm, s, sm, repeats=repeats, seed=seed, **kl_args),
           "separability": {"real": sep_real, "synthetic": sep_syn, "difference": diff},
           "ms_ssim": None}
    lo, hi = kl_args.get("value_range", (0.0, 1.0))
    if validation is not None:
        val = validation.detach().cpu() if isinstance(validation, torch.Tensor) else np.asarray(validation)
        out["ms_ssim"] = ms_ssim_gap(torch.as_tensor(s), torch.as_tensor(val), value_range=(lo, hi), seed=seed)
    # memorisation compares [-1, 1] images (RMS over all bands)
    out["memorisation"] = memorisation_report(torch.as_tensor((s - lo) / (hi - lo) * 2 - 1),
                                              torch.as_tensor((t - lo) / (hi - lo) * 2 - 1))
    return out


def _pixel_features(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``(N*H*W, 2C)``: log band values of each pixel and of its Gaussian neighbourhood (``sigma`` pixels)."""
    from scipy import ndimage

    logv = np.log(np.maximum(images, 1e-3))
    smooth = ndimage.gaussian_filter(logv, (0, 0, sigma, sigma))
    return np.concatenate([logv, smooth], 1).transpose(0, 2, 3, 1).reshape(-1, 2 * images.shape[1])


def structure_classifier(images: Any, structures: Any, per_class: int = 4000, seed: int = 0) -> Any:
    """A per-pixel structure classifier fitted on real images and their masks, to give synthetic images masks.

    Logistic regression (scikit-learn, standardised features: the log band values of the pixel and of its
    Gaussian-smoothed neighbourhood, sigma 1 pixel; classes :data:`CLASSIFIER_STRUCTURES`, at most ``per_class``
    pixels each, weighted inversely to their pixel counts, scikit-learn's ``class_weight="balanced"``; weak L2,
    ``C=10``). The weights matter: a few 64 px phantoms hold fewer artery pixels than ``per_class`` and, by
    subsampling alone, the fit traded the thin arteries for the background (held-out artery recall 0.008 from 4
    training phantoms, sigma 1.5, C=1; balanced: 0.66; balanced, C=10, sigma 1: 0.86, precision 0.72). Why not a segmentation network: the point is to label synthetic pixels by the real spectra
    alone, cheaply, with a boundary linear in log reflectance like the physics. Caveat: artery vs vein is then
    assigned by band values, so :func:`av_separability` of the classified pixels is an upper bound; the
    classifier's per-structure recall and precision on real validation images (:func:`classifier_scores`) say how
    far its labels can be trusted (the pixel accuracy cannot: the background and the outside dominate it).

    Args:
        images, structures: ``(N, C, H, W)`` reflectances and ``(N, H, W)`` structure ids.
        per_class: pixels per class at most.
        seed: the subsampling.

    Returns:
        a fitted scikit-learn pipeline for :func:`classify_structures`.

    Raises:
        ValueError: for images that are not ``(N, C, H, W)`` or masks of another size.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, m = _as_arrays(images, structures)
    feats, y = _pixel_features(x), m.reshape(-1)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in CLASSIFIER_STRUCTURES])
    return make_pipeline(StandardScaler(), LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced")
                         ).fit(feats[keep], y[keep])


def classify_structures(classifier: Any, images: Any) -> np.ndarray:
    """``(N, H, W)`` uint8 structure ids of ``(N, C, H, W)`` ``images`` by a :func:`structure_classifier`."""
    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    n, _, h, w = x.shape
    return classifier.predict(_pixel_features(x)).reshape(n, h, w).astype(np.uint8)


def classifier_scores(predicted: Any, truth: Any, structures: Mapping[int, str] = STRUCTURES) -> dict[str, Any]:
    """Per-structure recall and precision of predicted structure masks against true ones (e.g. a
    :func:`structure_classifier` on held-out real images).

    Args:
        predicted, truth: ``(N, H, W)`` structure ids of the same shape.
        structures: ``{id: name}`` scored (default :data:`STRUCTURES`: background, artery, vein, ONH).

    Returns:
        ``{"per_structure": {name: {"recall", "precision", "pixels"} (recall None where the truth has no such pixel,
        precision None where none is predicted)}, "accuracy": pixel accuracy over every pixel}``.

    Raises:
        ValueError: for masks of different shapes.
    """
    p, t = np.asarray(predicted), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"predicted and true structure masks differ in shape: {p.shape} and {t.shape}")
    per = {}
    for sid, name in structures.items():
        hit, n_true, n_pred = int(((p == sid) & (t == sid)).sum()), int((t == sid).sum()), int((p == sid).sum())
        per[name] = {"recall": hit / n_true if n_true else None, "precision": hit / n_pred if n_pred else None,
                     "pixels": n_true}
    return {"per_structure": per, "accuracy": float((p == t).mean())}
