"""Fundus photograph phantom: artery and vein trees grown from the optic disc, with their exact A/V label.

The built-in data of the fundus tests and demo (no download), in :data:`~monai_oct.core.labels.FUNDUS_AV` ids:
0 background, 1 artery, 2 vein, 3 crossing (where an artery and a vein overlap). It never writes 4 (uncertain):
the phantom knows every vessel's type.

Geometry (in units of a 512 x 512 picture whose field of view has a radius of 240 px, scaled to any size):

- a circular field of view (FOV) around the centre, black outside;
- the optic disc (diameter DD ~ 0.14 of the FOV diameter) on the nasal side, a bright yellowish ellipse with a
  paler cup; the macula 2.5 DD temporal of it and a little lower, a darker round region; a left or right eye;
- from the disc centre, an artery and a vein into each quadrant: the temporal pair arches around the macula (the
  vessels steer along an outward spiral around it), the nasal pair runs out radially. Each vessel walks in short
  steps with a random turn, tapers slowly and branches recursively: a child leaves at 30-70 degrees with a share
  of the width and the parent keeps Murray's law (``w^3 = w_1^3 + w_2^3``). Vessels start ~8 px (veins) and ~6.5 px
  (arteries) wide and stop at ``min_width`` px (default 1), at the FOV edge, or at the foveal avascular zone.
  Every vessel is a continuous path from the disc, so its pixels are connected to the disc.
- where an artery and a vein overlap the label is 3; an artery pixel left 4-adjacent to a vein pixel by the
  rasterisation is made a crossing too, so artery and vein never touch without a crossing between them.

Appearance: an orange-red background whose hue, brightness, vignetting (darker towards the FOV edge) and
illumination gradient vary by seed, a low-frequency choroidal texture, vessels darker than the background
(veins darker and more purple, arteries thinner and redder; the contrast fades for thin vessels) with a smooth
cross profile, a mild blur and noise. The same seed gives identical arrays.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from monai_oct.core.datalist import write_datalists
from monai_oct.core.geometry import four_adjacent
from monai_oct.core.io import write_png
from monai_oct.core.labels import FUNDUS_AV
from monai_oct.core.seeding import sample_seed

__all__ = ["fundus_phantom", "fundus_geometry", "write_fundus_phantom_dataset", "REFERENCE_RADIUS"]

#: FOV radius (px) of the 512 x 512 reference picture all phantom lengths are given in.
REFERENCE_RADIUS = 240.0
#: the label ids the phantom draws, those of :data:`~monai_oct.core.labels.FUNDUS_AV`
ARTERY, VEIN, CROSSING = (FUNDUS_AV.group(g)[0] for g in ("artery", "vein", "crossing"))


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 32 or w < 32:
        raise ValueError(f"fundus phantom size must be at least 32x32, got {h}x{w}")
    return h, w


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _grow_trees(rng: np.random.Generator, disc: np.ndarray, macula: np.ndarray, dd: float, temporal: float,
                scale: float, min_width: float, max_points: int = 60000) -> list[tuple[int, np.ndarray]]:
    """Grow the artery and vein trees in reference units (origin at the FOV centre, x right, y down).

    Returns:
        ``[(kind, points)]``: one ``(N, 3)`` array ``(x, y, width)`` per vessel, ``kind`` 1 artery or 2 vein.
    """
    step, faz = 2.5, 0.25 * dd
    trunks = []
    for kind, wmain in ((VEIN, 8.0), (ARTERY, 6.5)):
        for vertical in (-1.0, 1.0):
            off = rng.normal(0.0, 0.08) + (0.22 if kind == ARTERY else -0.1) * vertical
            arc = dd * (1.6 if kind == ARTERY else 2.15) * rng.uniform(0.9, 1.1)
            trunks.append((kind, ("arcade", arc), math.atan2(vertical, 0.3 * temporal) + off,
                           wmain * rng.uniform(0.92, 1.08)))
            nasal = math.atan2(0.7 * vertical, -temporal) + rng.normal(0.0, 0.15) + (0.25 if kind == ARTERY else -0.1)
            trunks.append((kind, ("radial", 0.0), nasal, 0.75 * wmain * rng.uniform(0.9, 1.1)))
    start = disc + rng.normal(0.0, 0.05 * dd, (len(trunks), 2))
    stack = [(kind, mode, start[i], theta, width, 0) for i, (kind, mode, theta, width) in enumerate(trunks)]
    vessels: list[tuple[int, np.ndarray]] = []
    total = 0
    while stack and total < max_points:
        kind, mode, p, theta, width, depth = stack.pop()
        pts = [(p[0], p[1], width)]
        to_branch = rng.uniform(0.3, 1.0) * (30.0 + 8.0 * width)
        for _ in range(1500):
            if mode[0] == "arcade":
                m = p - macula
                d = np.linalg.norm(m) + 1e-9
                tan = np.array([-m[1], m[0]]) / d
                if tan @ np.array([math.cos(theta), math.sin(theta)]) < 0:
                    tan = -tan
                # along a circle of radius mode[1] around the macula until past it, then fanning out temporally
                past = (p[0] - macula[0]) * temporal > 0.2 * dd
                target = tan + (0.35 if past else 2.0 * (mode[1] - d) / mode[1]) * m / d
                gain = 0.08
            else:
                target = p - disc
                gain = 0.03 if np.linalg.norm(target) > 0.6 * dd else 0.0
            if gain:
                theta += gain * _wrap(math.atan2(target[1], target[0]) - theta)
            theta += rng.normal(0.0, 0.05 + 0.12 / width)
            p = p + step * np.array([math.cos(theta), math.sin(theta)])
            width *= math.exp(-step / 700.0)
            if (width * scale < min_width or np.linalg.norm(p) > 0.97 * REFERENCE_RADIUS
                    or np.linalg.norm(p - macula) < faz):
                break
            pts.append((p[0], p[1], width))
            to_branch -= step
            if to_branch <= 0:
                child = width * rng.uniform(0.35, 0.75)
                width = (width ** 3 - child ** 3) ** (1.0 / 3.0)
                angle = theta + rng.choice([-1.0, 1.0]) * rng.uniform(0.55, 1.2)
                stack.append((kind, ("radial", 0.0), p.copy(), angle, child, depth + 1))
                to_branch = rng.uniform(0.6, 1.4) * (30.0 + 8.0 * width)
        total += len(pts)
        if len(pts) > 1:
            vessels.append((kind, np.asarray(pts)))
    return vessels


def _rasterise(vessels: list[tuple[int, np.ndarray]], kind: int, to_px, shape: tuple[int, int], scale: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """The binary mask and a soft ``[0, 1]`` opacity (smooth cross profile, thin vessels fainter) of one kind.

    Centre lines are sampled every 0.4 px and binned by radius (quarter pixels); each bin's mask is the pixels
    within its radius of its centre pixels (one Euclidean distance transform per bin), so a thin branch never cuts
    a notch into the thick vessel it leaves.
    """
    h, w = shape
    rows, cols, radii = [], [], []
    for k, pts in vessels:
        if k != kind:
            continue
        xy = to_px(pts[:, :2])
        seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        n = np.maximum(np.ceil(seg / 0.4).astype(int), 1)
        t = np.concatenate([np.arange(m) / m + i for i, m in enumerate(n)] + [np.array([len(n)], dtype=float)])
        idx = np.arange(len(xy))
        rows.append(np.interp(t, idx, xy[:, 1]))
        cols.append(np.interp(t, idx, xy[:, 0]))
        radii.append(np.interp(t, idx, pts[:, 2]) * scale / 2.0)
    mask = np.zeros(shape, dtype=bool)
    opacity = np.zeros(shape, dtype=np.float64)
    if not rows:
        return mask, opacity
    r = np.clip(np.rint(np.concatenate(rows)).astype(int), 0, h - 1)
    c = np.clip(np.rint(np.concatenate(cols)).astype(int), 0, w - 1)
    rad = np.maximum(np.round(np.concatenate(radii) * 4) / 4, 0.5)
    for value in np.unique(rad):
        centre = np.zeros(shape, dtype=bool)
        sel = rad == value
        centre[r[sel], c[sel]] = True
        dist = ndimage.distance_transform_edt(~centre)
        mask |= dist <= value
        contrast = min(1.0, 0.35 + 0.65 * value / 3.0)
        opacity = np.maximum(opacity, contrast * np.clip(1.0 - (dist / (value + 0.6)) ** 2, 0.0, 1.0))
    return mask, opacity


def fundus_geometry(size: int | Sequence[int], rng: np.random.Generator, min_width: float = 1.0) -> dict[str, Any]:
    """The anatomy of one phantom fundus, before any colour: FOV, disc, macula and the rasterised vessel trees.

    Shared by :func:`fundus_phantom` (RGB) and :func:`monai_oct.phantoms.multiband.multiband_phantom` (any list of
    wavelengths), which give the same anatomy for the same seed. It draws from ``rng`` first, so a caller that
    goes on drawing its appearance from the same generator stays deterministic.

    Args:
        size: ``H`` (square) or ``(H, W)``; at least 32.
        rng: the generator every random choice is drawn from.
        min_width: vessels stop where they would be thinner than this many pixels (at the output size).

    Returns:
        ``{"label": (H, W) uint8 FUNDUS_AV ids 0-3 (0 outside the FOV), "fov": (H, W) bool, "artery", "vein":
        (H, W) bool masks of each tree (overlapping at crossings), "artery_opacity", "vein_opacity": (H, W) soft
        ``[0, 1]`` cross profiles, "disc_ellipse": (H, W) normalised elliptic radius of the optic disc (<= 1 inside),
        "rho": (H, W) distance from the FOV centre over the FOV radius, "xx", "yy": pixel coordinates,
        "centre": (x, y), "radius", "scale" (px per reference unit), "disc_px", "macula_px": (x, y),
        "disc_diameter_px", "temporal": -1 or 1 (the macula's side), "eye": "left" | "right"}``.

    Raises:
        ValueError: for a size below 32 x 32.
    """
    h, w = _size(size)
    radius = 0.47 * min(h, w) * rng.uniform(0.97, 1.0)
    centre = np.array([w / 2.0, h / 2.0])
    scale = radius / REFERENCE_RADIUS

    def to_px(xy: np.ndarray) -> np.ndarray:
        return centre + np.asarray(xy) * scale

    eye = "right" if rng.random() < 0.5 else "left"
    temporal = -1.0 if eye == "right" else 1.0  # the macula's side, as seen in the picture
    dd = 0.277 * REFERENCE_RADIUS * rng.uniform(0.9, 1.1)
    disc = np.array([-temporal * 0.36 * REFERENCE_RADIUS + rng.normal(0, 6), rng.normal(-8, 6)])
    macula = disc + np.array([temporal * 2.5 * dd, 0.3 * dd + rng.normal(0, 5)])

    vessels = _grow_trees(rng, disc, macula, dd, temporal, scale, min_width)
    artery, op_a = _rasterise(vessels, ARTERY, to_px, (h, w), scale)
    vein, op_v = _rasterise(vessels, VEIN, to_px, (h, w), scale)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rho = np.hypot(xx - centre[0], yy - centre[1]) / radius
    fov = rho <= 1.0
    label = np.zeros((h, w), dtype=np.uint8)
    label[artery] = ARTERY
    label[vein] = VEIN
    label[artery & vein] = CROSSING
    # an artery pixel 4-adjacent to a vein pixel (a corner of a rasterised overlap) becomes a crossing
    label[(label == ARTERY) & four_adjacent(label == VEIN)] = CROSSING
    label[~fov] = 0
    dpx, ddx = to_px(disc), dd * scale
    ell = np.hypot((xx - dpx[0]) / (0.5 * ddx), (yy - dpx[1]) / (0.54 * ddx))
    return {"label": label, "fov": fov, "artery": artery, "vein": vein, "artery_opacity": op_a, "vein_opacity": op_v,
            "disc_ellipse": ell, "rho": rho, "xx": xx, "yy": yy, "centre": centre, "radius": radius, "scale": scale,
            "disc_px": dpx, "macula_px": to_px(macula), "disc_diameter_px": ddx, "temporal": temporal, "eye": eye}


def fundus_phantom(size: int | Sequence[int] = 512, seed: int = 0, min_width: float = 1.0,
                   noise: float = 0.012) -> dict[str, Any]:
    """One phantom fundus photograph with its exact artery/vein label (see the module docstring).

    Args:
        size: ``H`` (square) or ``(H, W)``; at least 32.
        seed: the only source of randomness; the same seed gives identical arrays.
        min_width: vessels stop where they would be thinner than this many pixels (at the output size).
        noise: standard deviation of the additive Gaussian pixel noise.

    Returns:
        ``{"image": (3, H, W) float32 RGB in [0, 1], "label": (H, W) uint8 ids 0-3 (0 outside the FOV),
        "fov": (H, W) bool, "disc": (H, W) bool optic disc, "disc_centre": (row, col), "macula_centre": (row, col),
        "eye": "left" | "right"}``.

    Raises:
        ValueError: for a size below 32 x 32.
    """
    rng = np.random.default_rng(seed)
    g = fundus_geometry(size, rng, min_width)
    h, w = g["label"].shape
    label, fov, rho, xx, yy = g["label"], g["fov"], g["rho"], g["xx"], g["yy"]
    centre, radius, scale, temporal = g["centre"], g["radius"], g["scale"], g["temporal"]
    op_a, op_v, eye = g["artery_opacity"], g["vein_opacity"], g["eye"]

    # appearance
    dpx, mpx, ddx = g["disc_px"], g["macula_px"], g["disc_diameter_px"]
    base = np.array([0.76, 0.40, 0.24]) * rng.uniform([0.92, 0.75, 0.7], [1.08, 1.25, 1.2]) * rng.uniform(0.75, 1.05)
    texture = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6 * scale)
    texture = texture / (texture.std() + 1e-9)
    fine = ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.5 * scale)
    fine = fine / (fine.std() + 1e-9)
    gradient = rng.normal(0, 0.08, 2)
    illum = ((1.0 - rng.uniform(0.3, 0.5) * rho ** rng.uniform(2.0, 3.0))
             * (1.0 + gradient[0] * (xx - centre[0]) / radius + gradient[1] * (yy - centre[1]) / radius))
    img = base[:, None, None] * (illum * (1.0 + 0.03 * texture + 0.02 * fine))[None]
    mac = np.exp(-0.5 * ((xx - mpx[0]) ** 2 + (yy - mpx[1]) ** 2) / (0.6 * ddx) ** 2)
    img *= 1.0 - rng.uniform(0.3, 0.45) * np.array([0.8, 1.0, 1.0])[:, None, None] * mac[None]
    ell = g["disc_ellipse"]
    disc_mask = ell <= 1.0
    disc_soft = 1.0 / (1.0 + np.exp(-(1.0 - ell) / 0.07))
    cup_x = dpx[0] + temporal * 0.1 * ddx
    cup = np.exp(-0.5 * (((xx - cup_x) ** 2 + (yy - dpx[1]) ** 2) / (0.2 * ddx) ** 2))
    halo = np.exp(-0.5 * ((ell - 1.0) / 0.35) ** 2) * (ell > 1.0)
    disc_col = np.array([0.98, 0.80, 0.52]) * rng.uniform(0.9, 1.05)
    img = img * (1.0 + 0.25 * halo)[None] * (1.0 - disc_soft)[None] + disc_col[:, None, None] * disc_soft[None]
    img = img + (np.array([0.05, 0.12, 0.15])[:, None, None] * cup[None])
    img *= 1.0 - op_a[None] * np.array([0.15, 0.42, 0.38])[:, None, None]
    img *= 1.0 - op_v[None] * np.array([0.35, 0.62, 0.55])[:, None, None]
    img = ndimage.gaussian_filter(img, (0, 0.5 * max(scale, 0.5), 0.5 * max(scale, 0.5)))
    img = img + rng.normal(0.0, noise, img.shape)
    img *= np.clip((1.0 - rho) * radius / 1.5, 0.0, 1.0)[None]
    image = np.clip(img, 0.0, 1.0).astype(np.float32)
    return {"image": image, "label": label, "fov": fov, "disc": disc_mask & fov,
            "disc_centre": (float(dpx[1]), float(dpx[0])), "macula_centre": (float(mpx[1]), float(mpx[0])), "eye": eye}


def write_fundus_phantom_dataset(out_dir: str | os.PathLike, num: int = 20, size: int | Sequence[int] = 512,
                                 seed: int = 0, val_fraction: float = 0.25) -> Path:
    """Write phantoms in the DRIVE layout (``images/``, ``av/``, ``fov/`` PNGs, ``phantom_XXXX.png``) and a datalist.

    Phantom ``i`` is drawn with the per-sample seed ``sample_seed(seed, i)`` (:mod:`monai_oct.core.seeding`).
    ``out_dir/datalist.json`` holds ``train`` and ``validation`` lists (the last ``val_fraction`` of the phantoms)
    of ``{"image", "label", "fov"}``, paths relative to ``out_dir``.

    Returns:
        the datalist path.

    Raises:
        ValueError: when ``num`` < 1 or the size is below 32.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    out_dir = Path(out_dir)
    items = []
    for i in range(num):
        ph = fundus_phantom(size, seed=sample_seed(seed, i))
        name = f"phantom_{i:04d}.png"
        item = {"image": str(out_dir / "images" / name), "label": str(out_dir / "av" / name),
                "fov": str(out_dir / "fov" / name)}
        write_png(item["image"], np.rint(ph["image"].transpose(1, 2, 0) * 255).astype(np.uint8))
        write_png(item["label"], ph["label"])
        write_png(item["fov"], ph["fov"].astype(np.uint8) * 255)
        items.append(item)
    n_val = int(round(num * val_fraction)) if num > 1 else 0
    lists = {"train": items[: num - n_val]}
    if n_val:
        lists["validation"] = items[num - n_val:]
    return write_datalists(out_dir / "datalist.json", lists, root=out_dir)
