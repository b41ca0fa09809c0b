"""OCT B-scan phantom: layered retina with a foveal pit, speckle and optional fluid, with its exact labels.

The phantom is the built-in data of the demo, the tests and the tutorials: it needs no download and
its labels are exact, in Duke DME's class ids (:data:`monai_oct.core.labels.DUKE_DME`): 0 vitreous,
1-7 the retinal layers from NFL to OS-RPE, 8 choroid, 9 fluid.

Each B-scan draws 8 smooth boundaries (random low-frequency curves on a curved, tilted retina, inner
layers thinning into a foveal pit), fills the regions with layer-specific reflectivity, adds optional
dark fluid pockets inside the inner/outer nuclear layers, and multiplies by speckle. The same seed
gives identical arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from monai_oct.core.datalist import write_datalists
from monai_oct.core.geometry import regions_from_boundaries
from monai_oct.core.io import write_png

__all__ = [
    "PhantomConfig",
    "generate_bscan",
    "generate_bscans",
    "write_phantom_dataset",
    "sample_boundaries",
    "add_fluid_pockets",
]

# Mean thickness of layers 1..7 (NFL .. OS-RPE) as a fraction of the image height, away from the fovea.
LAYER_THICKNESS = np.array([0.040, 0.070, 0.045, 0.035, 0.085, 0.018, 0.040])
# How much of each layer remains at the foveal centre (inner layers vanish, ONL thickens).
FOVEA_KEEP = np.array([0.05, 0.10, 0.15, 0.30, 1.45, 1.0, 1.0])
# Mean reflectivity per class 0..9.
_REFLECTIVITY = np.array([0.04, 0.80, 0.50, 0.22, 0.55, 0.14, 0.90, 0.97, 0.35, 0.02])


class PhantomConfig:
    """Parameters of the phantom.

    Args:
        fluid_probability: chance that a B-scan holds fluid pockets.
        max_fluid_pockets: at most this many pockets per B-scan with fluid.
        speckle: strength of multiplicative speckle (0 = none).
        fovea_probability: chance that the B-scan passes through the fovea (has a pit).
    """

    def __init__(self, fluid_probability: float = 0.5, max_fluid_pockets: int = 3, speckle: float = 0.35,
                 fovea_probability: float = 0.8) -> None:
        self.fluid_probability = fluid_probability
        self.max_fluid_pockets = max_fluid_pockets
        self.speckle = speckle
        self.fovea_probability = fovea_probability


def _smooth_curve(rng: np.random.Generator, x: np.ndarray, n_terms: int = 4, max_freq: float = 3.0) -> np.ndarray:
    """Sum of a few random low-frequency sines on ``x`` in [0, 1], roughly unit amplitude."""
    freqs = rng.uniform(0.3, max_freq, n_terms)
    phases = rng.uniform(0, 2 * np.pi, n_terms)
    amps = rng.normal(0, 1, n_terms) / np.sqrt(n_terms)
    return (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * x[None] + phases[:, None])).sum(0)


def sample_boundaries(rng: np.random.Generator, size: Sequence[int], thickness: Sequence[float] = LAYER_THICKNESS,
                      fovea_keep: Sequence[float] = FOVEA_KEEP, fovea_probability: float = 0.8,
                      top: tuple[float, float] = (0.28, 0.38), tilt: float = 0.06,
                      curvature: float | tuple[float, float] = 0.12,
                      wave: float = 0.012, pit_centre: tuple[float, float] = (0.35, 0.65),
                      pit_width: tuple[float, float] = (0.05, 0.09), scale: tuple[float, float] = (0.85, 1.15),
                      wobble: float = 0.15, min_thickness: float = 1.0, allow_rise: bool = False) -> np.ndarray:
    """Draw ``L + 1`` smooth, ordered layer boundaries of a retina with an optional foveal pit.

    The top boundary (ILM) is a curved, tilted, wavy line; each of the ``L`` layers has a mean thickness
    (a fraction of the height) times a global scale, with a smooth lateral wobble; at the pit the layers
    keep only ``fovea_keep`` of their thickness and the ILM drops by what they lost, so the outer
    boundaries stay smooth. Consecutive boundaries are at least ``min_thickness`` rows apart (also
    after clipping to ``[1, H - 2]``), so they never cross. The defaults are the phantom's.

    Args:
        rng: numpy random generator (the only source of randomness).
        size: ``(H, W)``.
        thickness: ``(L,)`` mean layer thickness as fractions of ``H``, top to bottom.
        fovea_keep: ``(L,)`` share of each layer's thickness left at the pit centre.
        fovea_probability: chance that the B-scan has a pit.
        top: range of the mean ILM row, as fractions of ``H``.
        tilt: ILM tilt drawn in ``[-tilt, tilt]`` (fraction of ``H`` across the width).
        curvature: ILM curvature (coefficient of ``(x - 0.5) ** 2``, fraction of ``H``) drawn in
            ``[0, curvature]``, or in ``[lo, hi]`` for a pair.
        wave: amplitude of the ILM's smooth waviness (fraction of ``H``).
        pit_centre: range of the pit centre (fraction of ``W``).
        pit_width: range of the pit's Gaussian sigma (fraction of ``W``).
        scale: range of a global thickness scale.
        wobble: relative lateral thickness variation of each layer.
        min_thickness: least distance between consecutive boundaries, in rows.
        allow_rise: let the ILM rise where the pit's layers end up thicker than around it (a swollen,
            oedematous fovea, ``fovea_keep`` summing above 1); False (the phantom) only lets it drop.

    Returns:
        ``(L + 1, W)`` float rows; region ``k`` of a column holds the rows ``r`` with
        ``floor(b[k - 1]) <= r < floor(b[k])`` (see :func:`regions_from_boundaries`).

    Raises:
        ValueError: when ``thickness`` and ``fovea_keep`` differ in length.
    """
    h, w = int(size[0]), int(size[1])
    thickness, fovea_keep = np.asarray(thickness, dtype=float), np.asarray(fovea_keep, dtype=float)
    if thickness.shape != fovea_keep.shape or thickness.ndim != 1:
        raise ValueError(f"thickness {thickness.shape} and fovea_keep {fovea_keep.shape} must be equal-length vectors")
    n = len(thickness)
    curv = (0.0, float(curvature)) if np.isscalar(curvature) else tuple(curvature)
    x = np.linspace(0.0, 1.0, w)
    # ILM: curved, tilted, wavy; the foveal pit is a Gaussian dip of the inner layers.
    top_row = h * (rng.uniform(*top) + rng.uniform(-tilt, tilt) * (x - 0.5)
                   + rng.uniform(*curv) * (x - 0.5) ** 2 + wave * _smooth_curve(rng, x))
    if rng.random() < fovea_probability:
        centre, width = rng.uniform(*pit_centre), rng.uniform(*pit_width)
        pit = np.exp(-0.5 * ((x - centre) / width) ** 2)
    else:
        pit = np.zeros_like(x)
    s = rng.uniform(*scale)
    thick = np.empty((n, w))
    flat = np.empty((n, w))
    for k in range(n):
        flat[k] = h * thickness[k] * s * (1.0 + wobble * _smooth_curve(rng, x))
        keep = 1.0 - (1.0 - fovea_keep[k]) * pit
        thick[k] = np.maximum(flat[k] * keep, min_thickness)
    bounds = np.empty((n + 1, w))
    # the pit lowers the ILM by what the layers lost, so the outer retina (RPE, Bruch) stays smooth
    lost = (flat - thick).sum(0)
    bounds[0] = top_row + (lost if allow_rise else np.clip(lost, 0, None))
    bounds[1:] = bounds[0] + np.cumsum(thick, axis=0)
    bounds = np.clip(bounds, 1, h - 2)
    # enforce a least thickness per layer after clipping so classes stay ordered and present
    for k in range(1, n + 1):
        bounds[k] = np.maximum(bounds[k], bounds[k - 1] + min_thickness)
    return bounds


def add_fluid_pockets(rng: np.random.Generator, label: np.ndarray, bounds: np.ndarray, max_pockets: int = 3,
                      span: tuple[int, int] = (2, 5), classes: Sequence[int] = (2, 3, 4, 5), fluid_class: int = 9,
                      centre: tuple[float, float] = (0.15, 0.85), height: tuple[float, float] = (0.3, 0.6),
                      width: tuple[float, float] = (0.02, 0.07)) -> np.ndarray:
    """Paint 1..``max_pockets`` elliptic fluid pockets into ``label`` (in place) and return it.

    Each pocket's centre column is drawn in ``centre`` (fraction of ``W``), its centre row between the
    boundaries ``bounds[span[0]]`` and ``bounds[span[1]]`` at that column; its half-height is a share
    (``height``) of that span and its half-width a fraction (``width``) of ``W``. Only pixels of
    ``classes`` become ``fluid_class``. The defaults are the phantom's (INL to the bottom of ONL).

    Args:
        rng: numpy random generator.
        label: ``(H, W)`` region map, modified in place.
        bounds: ``(K, W)`` boundary rows of ``label``.
        max_pockets: the number of pockets is drawn in ``1..max_pockets``.
        span: indices of the boundaries the pocket centres lie between.
        classes: classes a pocket may replace.
        fluid_class: the fluid class id.
        centre, height, width: ranges of the pocket geometry (see above).

    Returns:
        ``label``.
    """
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w]
    allowed = np.isin(label, np.asarray(classes))
    for _ in range(int(rng.integers(1, max_pockets + 1))):
        cx = rng.uniform(*centre) * w
        c = int(np.clip(round(cx), 0, w - 1))
        lo, hi = bounds[span[0], c], bounds[span[1], c]
        cy = rng.uniform(lo, hi)
        ry = rng.uniform(*height) * max(hi - lo, 2.0)
        rx = rng.uniform(*width) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        label[inside & allowed] = fluid_class
    return label


def generate_bscan(rng: np.random.Generator, size: Sequence[int] = (256, 256),
                   config: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Generate one phantom B-scan and its label map.

    Args:
        rng: numpy random generator (the only source of randomness).
        size: ``(H, W)``.
        config: phantom parameters.

    Returns:
        ``(image, label)``: uint8 ``H x W`` image and uint8 ``H x W`` label map with Duke DME ids.

    Raises:
        ValueError: for a size smaller than 32 x 32.
    """
    cfg = config or PhantomConfig()
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"phantom size must be at least 32x32, got {h}x{w}")
    x = np.linspace(0.0, 1.0, w)
    bounds = sample_boundaries(rng, (h, w), fovea_probability=cfg.fovea_probability)
    label = regions_from_boundaries(bounds, h)
    if rng.random() < cfg.fluid_probability:
        add_fluid_pockets(rng, label, bounds, cfg.max_fluid_pockets)

    # reflectivity: per-class mean, a little lateral variation, choroid decaying with depth
    img = _REFLECTIVITY[label] * (1.0 + 0.1 * _smooth_curve(rng, x))[None]
    depth = np.clip((np.arange(h)[:, None] - bounds[7][None]) / (0.25 * h), 0, None)
    img = np.where(label == 8, img * np.exp(-depth), img)
    # soften region edges by one row (scanner PSF), then speckle
    img = (img + np.roll(img, 1, axis=0) + np.roll(img, -1, axis=0)) / 3.0
    if cfg.speckle > 0:
        img = img * rng.gamma(1.0 / cfg.speckle, cfg.speckle, size=img.shape) + 0.03 * rng.random(img.shape)
    img = np.clip(img / 1.2, 0, 1) ** 0.8
    return (img * 255).astype(np.uint8), label


def generate_bscans(num: int, size: Sequence[int] = (256, 256), seed: int = 0,
                    config: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``num`` phantom B-scans as arrays ``(N, H, W)`` uint8 images and labels; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    pairs = [generate_bscan(rng, size, config) for _ in range(num)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def write_phantom_dataset(out_dir: str | os.PathLike, num: int = 32, size: Sequence[int] = (256, 256),
                          seed: int = 0, val_fraction: float = 0.25, config: PhantomConfig | None = None) -> Path:
    """Write a phantom dataset in the layout of the real data and return its datalist path.

    Layout: ``out_dir/images/phantom_XXXX.png``, ``out_dir/labels/phantom_XXXX.png`` and
    ``out_dir/datalist.json`` with ``"train"`` and ``"validation"`` lists (paths relative to ``out_dir``).

    Raises:
        ValueError: when ``num`` < 1.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(num):
        img, lab = generate_bscan(rng, size, config)
        ip, lp = out_dir / "images" / f"phantom_{i:04d}.png", out_dir / "labels" / f"phantom_{i:04d}.png"
        write_png(ip, img)
        write_png(lp, lab)
        items.append({"image": str(ip), "label": str(lp)})
    n_val = int(round(num * val_fraction)) if num > 1 else 0
    lists = {"train": items[: num - n_val]}
    if n_val:
        lists["validation"] = items[num - n_val:]
    return write_datalists(out_dir / "datalist.json", lists, root=out_dir)
