"""Random layer sketches without any real label: thickness statistics and a sketch generator (Wu et al.).

A sketch-conditioned DDPM can synthesize as many images as there are sketches. This module draws
plausible sketches from a handful of numbers, :class:`LayerThicknessStats`:

- per-layer thickness (mean and std, as fractions of the image height), measured away from the fovea;
- the retina's position (top of the retina, tilt and curvature of Bruch's membrane);
- the foveal pit (how often a B-scan has one, its width, where it lies, how much of each layer is
  left at its centre, and its depth);
- fluid (how often, how many pockets, how wide).

The numbers are fitted from any labelled datalist (:meth:`LayerThicknessStats.fit`, or
``monai-oct sketch-stats DATALIST --out stats.json``), saved to / loaded from JSON, or taken from the
built-in defaults (:meth:`LayerThicknessStats.duke_defaults`, fitted on the 66 Duke DME training scans).
All positions are fractions of the image size, so a sketch of another size keeps the proportions of
the data the statistics came from (thicknesses scale with the height, the pit width with the width).

:func:`generate_sketch` draws the boundaries with the phantom's machinery
(:func:`~monai_oct.phantoms.oct.sample_boundaries`: smooth curves, a Gaussian foveal pit, boundaries
kept in order at least ``min_thickness`` rows apart, so they never cross), adds fluid pockets inside
the retina (:func:`~monai_oct.phantoms.oct.add_fluid_pockets`), and renders the sketch with
:class:`~monai_oct.transforms.sketch.LayerSketch` (by default without deformation or dropped lines),
the same renderer that sketches real labels for training. :class:`RandomSketchDataset` wraps it as a
torch dataset, deterministic per index.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from monai_oct.core.datalist import load_datalist
from monai_oct.core.geometry import label_boundaries, regions_from_boundaries
from monai_oct.core.io import read_json, read_label, write_json
from monai_oct.core.labels import DUKE_DME, LabelTable, get_label_table
from monai_oct.phantoms.oct import FOVEA_KEEP, LAYER_THICKNESS, add_fluid_pockets, sample_boundaries
from monai_oct.recipes.pipelines import bscan_transforms
from monai_oct.transforms.sketch import LayerSketch

__all__ = ["LayerThicknessStats", "generate_sketch", "RandomSketchDataset"]

_SQRT3 = float(np.sqrt(3.0))


def _uniform_range(mean: float, std: float, lo: float = -np.inf, hi: float = np.inf) -> tuple[float, float]:
    """A range whose uniform distribution has ``mean`` and ``std``, clipped to ``[lo, hi]``."""
    return float(np.clip(mean - _SQRT3 * std, lo, hi)), float(np.clip(mean + _SQRT3 * std, lo, hi))


@dataclass
class LayerThicknessStats:
    """Statistics of retinal layer geometry that random sketches are drawn from.

    All lengths are fractions of the image height (rows) or width (columns), as named.

    Args:
        table: label table name; its ``layer_order`` has ``len(thickness_mean) + 2`` classes
            (background above, L layers, background below).
        thickness_mean: ``(L,)`` mean layer thickness away from the fovea (fraction of H).
        thickness_std: ``(L,)`` its std across B-scans.
        scale_std: relative std of the whole retina's thickness across B-scans (shared by all layers).
        wobble: relative lateral variation of a layer's thickness within a B-scan.
        top_mean, top_std: row of the top of the retina away from the fovea (fraction of H).
        tilt: the retina's tilt is drawn in ``[-tilt, tilt]`` (fraction of H across the width).
        curvature: range of the curvature (coefficient of ``(x - 0.5) ** 2``, fraction of H).
        wave: amplitude of the top boundary's smooth waviness (fraction of H).
        fovea_probability: share of B-scans with a foveal pit.
        fovea_keep: ``(L,)`` share of each layer's thickness left at the pit centre.
        pit_width_mean, pit_width_std: the pit's Gaussian sigma (fraction of W).
        pit_centre: range of the pit centre (fraction of W).
        pit_depth: mean drop of the top boundary at the pit centre (fraction of H; measured, for reference).
        fluid_probability: share of B-scans with fluid.
        max_fluid_pockets: at most this many pockets in a B-scan with fluid.
        fluid_width: range of a pocket's half-width (fraction of W).
        fluid_span: indices of the two boundaries pocket centres lie between.
        fluid_classes: classes a pocket may replace.
        num_images: how many label maps the statistics were fitted on (0: built in).
        source: where they come from.

    Raises:
        ValueError: for inconsistent lengths or out-of-range values.
    """

    table: str = "duke_dme"
    thickness_mean: list[float] = field(default_factory=lambda: [float(v) for v in LAYER_THICKNESS])
    thickness_std: list[float] = field(default_factory=lambda: [float(v) * 0.15 for v in LAYER_THICKNESS])
    scale_std: float = 0.087
    wobble: float = 0.15
    top_mean: float = 0.33
    top_std: float = 0.029
    tilt: float = 0.06
    curvature: list[float] = field(default_factory=lambda: [0.0, 0.12])
    wave: float = 0.012
    fovea_probability: float = 0.8
    fovea_keep: list[float] = field(default_factory=lambda: [float(v) for v in FOVEA_KEEP])
    pit_width_mean: float = 0.07
    pit_width_std: float = 0.0115
    pit_centre: list[float] = field(default_factory=lambda: [0.35, 0.65])
    pit_depth: float = 0.13
    fluid_probability: float = 0.5
    max_fluid_pockets: int = 3
    fluid_width: list[float] = field(default_factory=lambda: [0.02, 0.07])
    fluid_span: list[int] = field(default_factory=lambda: [2, 5])
    fluid_classes: list[int] = field(default_factory=lambda: [2, 3, 4, 5])
    num_images: int = 0
    source: str = "phantom defaults"

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    @property
    def num_layers(self) -> int:
        """Number of layers L (boundaries: L + 1)."""
        return len(self.thickness_mean)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent or out-of-range field."""
        n = len(self.thickness_mean)
        for name in ("thickness_std", "fovea_keep"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"sketch stats: {name} has {len(getattr(self, name))} values, thickness_mean {n}")
        table = get_label_table(self.table)
        if len(table.layer_order) != n + 2:
            raise ValueError(f"sketch stats: {n} layers do not fit table {table.name!r} "
                             f"(layer_order has {len(table.layer_order)} classes, expected {n + 2})")
        if n < 1 or min(self.thickness_mean) <= 0 or min(self.thickness_std) < 0:
            raise ValueError(f"sketch stats: thicknesses must be positive, got {self.thickness_mean} / {self.thickness_std}")
        if sum(self.thickness_mean) >= 1:
            raise ValueError(f"sketch stats: the layers add up to {sum(self.thickness_mean):.3f} >= the image height")
        for name in ("fovea_probability", "fluid_probability", "top_mean"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"sketch stats: {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("curvature", "pit_centre", "fluid_width", "fluid_span"):
            v = getattr(self, name)
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"sketch stats: {name} must be a range [lo, hi], got {v}")
        if not 0 <= self.fluid_span[0] < self.fluid_span[1] <= n:
            raise ValueError(f"sketch stats: fluid_span {self.fluid_span} must index boundaries 0..{n}")
        bad = [c for c in self.fluid_classes if c not in table.classes]
        if bad:
            raise ValueError(f"sketch stats: fluid_classes {bad} are not in table {table.name!r}")
        if self.max_fluid_pockets < 1 or self.pit_width_mean <= 0:
            raise ValueError("sketch stats: max_fluid_pockets must be >= 1 and pit_width_mean > 0")

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sketch stats") -> "LayerThicknessStats":
        """Build from a dict; unknown keys raise (a typo would otherwise silently use a default).

        Raises:
            ValueError: naming ``where`` for unknown keys or invalid values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown} (known: {sorted(known)})")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write the statistics as JSON (atomically: temp file + rename) and return the path."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerThicknessStats":
        """Read statistics written by :meth:`save`.

        Raises:
            ValueError: naming the file when it is missing, not JSON (``DataError``, a ``ValueError``) or holds
                invalid statistics.
        """
        return cls.from_dict(read_json(path, "sketch statistics file"), where=str(path))

    @classmethod
    def duke_defaults(cls, band_height: int | None = None) -> "LayerThicknessStats":
        """Built-in statistics fitted on the 66 Duke DME training B-scans.

        Args:
            band_height: None/0: full 496-row frames; 224: the 224-row retina band the CPU recipes train on
                (the fractions do not depend on the size the band is resized to).

        Regenerate with ``monai-oct sketch-stats ../shared/data/duke_dme/datalist_train.json --out s.json``
        (``--band-height 224`` for the band).

        Raises:
            ValueError: for a band height without built-in statistics.
        """
        band = int(band_height or 0)
        if band in _DUKE_BANDS:
            k = _DUKE_BANDS.index(band)
            return cls(**_DUKE_COMMON, **{f: v[k] for f, v in _DUKE_GEOMETRY.items()})
        raise ValueError(f"no built-in sketch statistics for a {band_height}-row band (built in: full frame, 224); fit them "
                         f"with `monai-oct sketch-stats DATALIST --band-height {band_height} --out stats.json`")

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, labels: Sequence[Any], table: LabelTable | str = DUKE_DME, source: str = "") -> "LayerThicknessStats":
        """Fit the statistics on label maps.

        Per B-scan: the boundaries are located with
        :func:`~monai_oct.core.geometry.label_boundaries` (interpolated under fluid); a pit is a dip
        of the inner layers' total thickness (``layer_order[1:5]``, smoothed) below half its median;
        thicknesses, the top row and the within-scan wobble are taken in columns away from the pit;
        tilt and curvature from a quadratic fit of the lowest boundary; fluid from the connected
        components (of at least 20 pixels) of the pathological classes.

        Args:
            labels: label maps (``(H, W)`` arrays), or datalist items / paths to label files.
            table: label table of the ids.
            source: free text stored with the statistics (e.g. the datalist path).

        Returns:
            the fitted statistics (ranges that a small set cannot estimate keep their defaults).

        Raises:
            ValueError: for an empty list, a table without ``layer_order`` or bad label maps.
        """
        table = get_label_table(table)
        if len(labels) == 0:
            raise ValueError("sketch stats: no label maps to fit on")
        n_layers = len(table.layer_order) - 2
        inner = slice(0, min(4, n_layers))
        per = {k: [] for k in ("thick", "total", "wobble", "top", "tilt", "curv")}
        pits = {k: [] for k in ("keep", "width", "centre", "depth")}
        fluid_counts, fluid_widths = [], []
        path_ids = list(table.pathological)
        for item in labels:
            if isinstance(item, dict):
                item = item["label"]
            lab = read_label(item, table) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
            where = str(item) if isinstance(item, (str, os.PathLike)) else "label"
            if lab.ndim == 3 and lab.shape[0] == 1:
                lab = lab[0]
            bounds = label_boundaries(lab, table, where)
            h, w = lab.shape
            thick = np.diff(bounds, axis=0) / h  # L x W
            inner_t = ndimage.uniform_filter1d(thick[inner].sum(0), size=max(3, w // 20), mode="nearest")
            med = float(np.median(inner_t))
            periphery = np.ones(w, dtype=bool)
            if med > 0 and inner_t.min() < 0.5 * med:
                c = int(np.argmin(inner_t))
                half = inner_t < (inner_t[c] + med) / 2
                lo = c - int(np.argmin(half[c::-1])) if not half[c::-1].all() else 0
                hi = c + int(np.argmin(half[c:])) if not half[c:].all() else w
                sigma = max(hi - lo, 1) / 2.355
                periphery = np.abs(np.arange(w) - c) > 2.0 * sigma
                if periphery.sum() < w // 10:
                    periphery = np.ones(w, dtype=bool)
                ref = np.median(thick[:, periphery], axis=1)
                centre_t = thick[:, max(c - 2, 0): c + 3].mean(1)
                pits["keep"].append(np.where(ref > 0, centre_t / np.maximum(ref, 1e-9), 1.0))
                pits["width"].append(sigma / w)
                pits["centre"].append(c / max(w - 1, 1))
                pits["depth"].append(float(ref.sum() - centre_t.sum()))
            t_per = np.median(thick[:, periphery], axis=1)
            per["thick"].append(t_per)
            per["total"].append(t_per.sum())
            rel = thick[:, periphery] / np.maximum(t_per[:, None], 1e-9)
            per["wobble"].append(float(np.mean(np.std(rel, axis=1))))
            per["top"].append(float(np.median(bounds[0, periphery])) / h)
            xc = np.linspace(0.0, 1.0, w) - 0.5
            c2, c1, _ = np.polyfit(xc, bounds[-1] / h, 2)
            per["tilt"].append(abs(c1))
            per["curv"].append(c2)
            if path_ids:
                comp, _ = ndimage.label(np.isin(lab, path_ids))
                big = np.bincount(comp.ravel())[1:] >= 20  # per component (label i + 1)
                fluid_counts.append(int(big.sum()))
                fluid_widths += [(sl[1].stop - sl[1].start) / 2 / w
                                 for sl, keep in zip(ndimage.find_objects(comp), big) if keep]

        thick = np.array(per["thick"])
        total = np.array(per["total"])
        d: dict[str, Any] = dict(
            table=table.name,
            thickness_mean=[round(float(v), 5) for v in thick.mean(0)],
            thickness_std=[round(float(v), 5) for v in thick.std(0)],
            scale_std=round(float(total.std() / total.mean()), 5),
            wobble=round(float(np.median(per["wobble"])), 5),
            top_mean=round(float(np.mean(per["top"])), 5),
            top_std=round(float(np.std(per["top"])), 5),
            tilt=round(float(np.percentile(per["tilt"], 90)), 5),
            curvature=[round(float(v), 5) for v in np.percentile(per["curv"], [10, 90])],
            fovea_probability=round(len(pits["keep"]) / len(labels), 5),
            num_images=len(labels),
            source=source or f"fitted on {len(labels)} label maps",
        )
        if n_layers != len(FOVEA_KEEP):  # the default pit shape is Duke's 7 layers; elsewhere: no pit shape
            d["fovea_keep"] = [1.0] * n_layers
        if pits["keep"]:
            d["fovea_keep"] = [round(float(v), 5) for v in np.clip(np.mean(pits["keep"], 0), 0.0, 3.0)]
            d["pit_width_mean"] = round(float(np.mean(pits["width"])), 5)
            d["pit_width_std"] = round(float(np.std(pits["width"])), 5)
            d["pit_depth"] = round(float(np.mean(pits["depth"])), 5)
            if len(pits["centre"]) >= 3:
                d["pit_centre"] = [round(float(v), 5) for v in np.percentile(pits["centre"], [10, 90])]
        if fluid_counts:
            with_fluid = [c for c in fluid_counts if c > 0]
            d["fluid_probability"] = round(len(with_fluid) / len(fluid_counts), 5)
            if with_fluid:
                d["max_fluid_pockets"] = int(np.clip(np.percentile(with_fluid, 90), 1, 8))
            if len(fluid_widths) >= 3:
                d["fluid_width"] = [round(float(v), 5) for v in np.percentile(fluid_widths, [10, 90])]
        return cls.from_dict(d, where="fitted sketch stats")

    @classmethod
    def fit_datalist(cls, datalist: str | os.PathLike, root: str | os.PathLike | None = None, key: str | None = None,
                     table: LabelTable | str = DUKE_DME, max_items: int | None = None, band_height: int | None = None,
                     image_size: Sequence[int] | None = None) -> "LayerThicknessStats":
        """Fit on the label files of a datalist (see :meth:`fit`), optionally through the training geometry.

        A diffusion model trained on retina bands (``--band_height 224 --image_size "[64,128]"``) must be
        given random sketches of that geometry: pass the same ``band_height`` / ``image_size`` and every label
        goes through the training chain's label part first
        (:func:`~monai_oct.recipes.pipelines.bscan_transforms` with ``keys=["label"]``: the band located from the
        label, then a nearest resize), so the fractions describe the band the network sees.

        Args:
            datalist: Decathlon-style datalist with ``label`` entries.
            root: folder relative paths start from (default: the datalist's folder).
            key: list to read.
            table: label table of the ids.
            max_items: fit on the first N items only.
            band_height: rows of the retina band cropped around the layers (None/0: whole B-scans).
            image_size: ``[H, W]`` the labels are resized to after the crop (None: kept).

        Raises:
            monai_oct.core.io.DataError: for a bad datalist or label file; ValueError for items without ``"label"``.
        """
        items = load_datalist(datalist, root=root, key=key)
        missing = [i for i, it in enumerate(items) if "label" not in it]
        if missing:
            raise ValueError(f"{datalist}: items {missing[:5]} have no 'label'; sketch stats need labelled data")
        items = items[:max_items] if max_items else items
        labels: list[Any] = [it["label"] for it in items]
        source = f"{datalist} ({len(items)} label maps"
        if band_height or image_size is not None:
            chain = bscan_transforms(image_size=image_size, keys=["label"], band_height=band_height or None, table=table)
            labels = [chain({"label": p})["label"][0].numpy() for p in labels]
            source += f", {band_height}-row band" if band_height else ""
            source += f" at {list(image_size)}" if image_size is not None else ""
        return cls.fit(labels, table=table, source=source + ")")


#: Fitted on ../shared/data/duke_dme/datalist_train.json (66 B-scans), rounded; see duke_defaults(). The fields
#: below do not depend on the rows the fractions count (lateral, relative or per-scan); the geometry does.
#: ``wave`` is not fitted: like :meth:`LayerThicknessStats.fit`, both keep the class default.
_DUKE_COMMON: dict[str, Any] = {
    "table": "duke_dme",
    "wobble": 0.31033,
    "fovea_probability": 0.18182,
    "fovea_keep": [0.51762, 0.18582, 0.28742, 0.29857, 2.5632, 1.13173, 1.11362],
    "pit_width_mean": 0.04865,
    "pit_width_std": 0.02397,
    "pit_centre": [0.47003, 0.57399],
    "fluid_probability": 0.75758,
    "max_fluid_pockets": 8,
    "fluid_width": [0.00732, 0.05996],
    "fluid_span": [2, 5],
    "fluid_classes": [2, 3, 4, 5],
    "num_images": 66,
}

#: The fields that depend on the rows the fractions count: (full 496-row frames, the 224-row retina band of
#: ``monai-oct sketch-stats ... --band-height 224``), keyed by the band height (0: full frame).
_DUKE_GEOMETRY: dict[str, tuple[Any, Any]] = {
    "thickness_mean": ([0.0203, 0.03686, 0.01854, 0.01596, 0.0559, 0.01689, 0.01378],
                       [0.04495, 0.08161, 0.04106, 0.03534, 0.12378, 0.03734, 0.03037]),
    "thickness_std": ([0.00669, 0.00925, 0.00407, 0.00274, 0.01739, 0.00274, 0.00163],
                      [0.01482, 0.02049, 0.009, 0.00606, 0.03852, 0.00615, 0.00374]),
    "scale_std": (0.12295, 0.12291),
    "top_mean": (0.2754, 0.33364),
    "top_std": (0.06507, 0.05284),
    "tilt": (0.07829, 0.17336),
    "curvature": ([-0.4077, -0.06084], [-0.90277, -0.13472]),
    "pit_depth": (-0.03098, -0.0686),
    "source": ("built-in: Duke DME train (66 B-scans, 496 rows), monai-oct sketch-stats",
               "built-in: Duke DME train (66 B-scans), 224-row retina band, monai-oct sketch-stats --band-height 224"),
}
_DUKE_BANDS = (0, 224)


def generate_sketch(stats: LayerThicknessStats | None = None, size: Sequence[int] = (256, 256),
                    seed: int | Sequence[int] = 0, sketcher: LayerSketch | None = None,
                    min_thickness: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw a random, plausible layer sketch and its label map, without any real label.

    Args:
        stats: geometry statistics (default: :meth:`LayerThicknessStats.duke_defaults`).
        size: ``(H, W)``, at least 32 x 32.
        seed: seed of ``numpy.random.default_rng`` (an int or a sequence such as ``(seed, index)``);
            the same seed gives the same sketch.
        sketcher: the renderer (default: ``LayerSketch(table, deform=0, jitter=0, drop_prob=0)``, exact
            lines of random width and every fluid pocket drawn); pass the training transform's settings
            to make synthesis sketches look like the training ones. It is re-seeded from ``seed``.
        min_thickness: least thickness of every layer in rows, so boundaries never cross.

    Returns:
        ``(sketch, label)``: ``(H, W)`` float32 sketch in [-1, 1] (see :mod:`monai_oct.transforms.sketch`)
        and ``(H, W)`` uint8 label map implied by it (class ids of ``stats.table``).

    Raises:
        ValueError: for a size below 32 x 32 or a sketcher of another table.
    """
    stats = stats or LayerThicknessStats.duke_defaults()
    table = get_label_table(stats.table)
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"sketch size must be at least 32x32, got {h}x{w}")
    if sketcher is None:
        sketcher = LayerSketch(table, deform=0.0, jitter=0.0, drop_prob=0.0, fluid_prob=1.0)
    elif sketcher.table.name != table.name:
        raise ValueError(f"sketcher uses table {sketcher.table.name!r}, the statistics {table.name!r}")
    rng = np.random.default_rng(seed)
    mean, std = np.asarray(stats.thickness_mean), np.asarray(stats.thickness_std)
    # each layer: shared scale (drawn inside sample_boundaries) times its own residual variation
    resid = np.sqrt(np.clip((std / mean) ** 2 - stats.scale_std ** 2, 0.0, None))
    thickness = mean * np.clip(1.0 + resid * rng.normal(0.0, 1.0, len(mean)), 0.3, 3.0)
    pit_lo, pit_hi = _uniform_range(stats.pit_width_mean, stats.pit_width_std, lo=0.01)
    bounds = sample_boundaries(
        rng, (h, w), thickness=thickness, fovea_keep=stats.fovea_keep, fovea_probability=stats.fovea_probability,
        top=_uniform_range(stats.top_mean, stats.top_std, 0.0, 0.9), tilt=stats.tilt, curvature=tuple(stats.curvature),
        wave=stats.wave, pit_centre=tuple(stats.pit_centre), pit_width=(pit_lo, max(pit_hi, pit_lo)),
        scale=_uniform_range(1.0, stats.scale_std, 0.3, 3.0), wobble=stats.wobble, min_thickness=min_thickness,
        allow_rise=True)
    label = regions_from_boundaries(bounds, h)
    lut = np.asarray(table.layer_order, dtype=np.uint8)
    label = lut[label]
    fluid = rng.random() < stats.fluid_probability
    pathology = None
    if table.pathological:
        pathology = np.zeros((h, w), dtype=np.int64)
        if fluid:
            marked = add_fluid_pockets(rng, label.copy(), bounds, stats.max_fluid_pockets, span=tuple(stats.fluid_span),
                                       classes=stats.fluid_classes, fluid_class=table.pathological[0],
                                       width=tuple(stats.fluid_width))
            pathology[marked == table.pathological[0]] = table.pathological[0]
    sketcher.set_random_state(int(rng.integers(2**31 - 1)))
    sketcher.randomize()
    bounds, pathology = sketcher.deform_boundaries(bounds, pathology, (h, w))
    sketch, sketch_label = sketcher.render(bounds, pathology, (h, w))
    return sketch, sketch_label.astype(np.uint8)


class RandomSketchDataset(torch.utils.data.Dataset):
    """``num`` random sketches for synthesis, deterministic per index (item ``i`` uses seed ``(seed, i)``).

    Args:
        num: number of items.
        stats: geometry statistics (default: Duke DME built-in), or a path to a JSON written by
            :meth:`LayerThicknessStats.save`.
        size: ``(H, W)``.
        seed: base seed.
        sketcher: renderer passed to :func:`generate_sketch`.

    Items are dicts ``{"sketch": (1, H, W) float32 tensor in [-1, 1], "label": (1, H, W) int64 tensor}``.

    Raises:
        ValueError: for ``num`` < 1.
    """

    def __init__(self, num: int, stats: LayerThicknessStats | str | os.PathLike | None = None,
                 size: Sequence[int] = (256, 256), seed: int = 0, sketcher: LayerSketch | None = None) -> None:
        if int(num) < 1:
            raise ValueError(f"num must be >= 1, got {num}")
        if isinstance(stats, (str, os.PathLike)):
            stats = LayerThicknessStats.load(stats)
        self.num, self.stats, self.size, self.seed = int(num), stats or LayerThicknessStats.duke_defaults(), \
            tuple(int(s) for s in size), int(seed)
        self.sketcher = sketcher

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} sketches")
        index = index % self.num
        sketch, label = generate_sketch(self.stats, self.size, (self.seed, index), self.sketcher)
        return {"sketch": torch.from_numpy(sketch)[None], "label": torch.from_numpy(label.astype(np.int64))[None]}
