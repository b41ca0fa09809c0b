"""Layer sketches (Wu et al., ISBI 2024): turn a label map into the rough drawing a sketch-conditioned DDPM reads.

A sketch is a 1-channel float image in [-1, 1] with three levels:

- ``background_value`` (-1): everything that is not drawn;
- ``line_value`` (+1): the layer boundaries, one line per boundary of the table's ``layer_order``
  (Duke DME: 8 lines, ILM ... Bruch's membrane), each of a random width;
- ``fluid_value`` (0): pathological regions (Duke DME: fluid, id 9), drawn as a filled blob or as its
  outline; drawn over the lines, so a filled blob hides the boundaries it covers.

:class:`LayerSketch` makes a *rough* sketch from a real label map, the way a person would draw one:

1. each boundary ``k`` (between ``layer_order[k]`` and ``layer_order[k + 1]``) is located in every column
   as the first row of the lower region; where fluid or unannotated pixels hide it, it is interpolated
   from the neighbouring columns and kept inside the rows the label allows, so that with no
   deformation the sketch's regions reproduce the label exactly;
2. a smooth random deformation moves all boundaries and the fluid together (a low-frequency
   displacement field: vertical ``dy(x, y)`` up to ``deform * H``, horizontal ``dx(x)`` up to
   ``deform * W``), and each boundary gets its own small smooth wobble (``jitter * H``); the boundaries
   are then re-ordered so they never cross (a layer may shrink to zero rows, as at the fovea);
3. each boundary is dropped (not drawn) with probability ``drop_prob`` (by default only the inner
   ones: the ILM and Bruch's membrane, which delimit the retina, are always drawn);
4. with probability ``fluid_prob`` the (deformed) fluid is drawn, as a filled blob or an outline.

The *sketch-derived label* (``sketch_label`` of :class:`LayerSketchd`) is the region map the sketch
implies: each region between consecutive drawn lines takes the class just below its upper line
(a dropped boundary merges the two layers into the upper one; above the first drawn line is
``layer_order[0]``); drawn fluid keeps its class id, undrawn fluid is not in the sketch-derived label.
These are the labels Wu et al. train on before knowledge adaptation replaces them by a teacher's
distilled pseudo-labels.

The random-sketch generator without any real label is :func:`monai_oct.recipes.sketches.generate_sketch`;
it renders with :meth:`LayerSketch.render`, so training and synthesis sketches look alike.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils.type_conversion import convert_to_dst_type
from scipy import ndimage

from monai_oct.core.geometry import as_2d_label, boundaries_of, regions_from_boundaries
from monai_oct.core.labels import LabelTable, get_label_table

__all__ = ["LayerSketch", "LayerSketchd", "FLUID_STYLES"]

#: How pathological regions are drawn.
FLUID_STYLES = ("filled", "outline")


def _smooth_field(params: np.ndarray, x: np.ndarray, y: np.ndarray | float = 0.0) -> np.ndarray:
    """Sum of sines ``sum_j a_j sin(2 pi (fx_j x + fy_j y) + phi_j)``; ``params`` rows ``(a, fx, fy, phi)``."""
    out = np.zeros(np.broadcast(x, y).shape)
    for a, fx, fy, ph in params:
        out = out + a * np.sin(2 * np.pi * (fx * x + fy * y) + ph)
    return out


class LayerSketch(Randomizable, Transform):
    """Turn a label map into a rough layer sketch (module docstring: levels and steps).

    Args:
        table: label table (name or :class:`~monai_oct.core.labels.LabelTable`): ``layer_order`` gives the
            boundaries, ``pathological`` the fluid classes.
        line_width: range of the line width in pixels, drawn per boundary.
        deform: amplitude of the smooth displacement field, as a fraction of ``H`` (vertical) and
            ``W`` (horizontal); 0 switches it off.
        jitter: amplitude of each boundary's own smooth wobble, as a fraction of ``H``.
        max_frequency: highest frequency of the deformation, in cycles across the image (at most 3,
            so the horizontal displacement cannot fold columns over).
        drop_prob: probability that a single boundary is left out of the drawing (each independently).
        droppable: indices of the boundaries that may be dropped; None: all but the first and the last
            (the ILM and Bruch's membrane, which delimit the retina, are always drawn).
        fluid_prob: probability that the pathological regions are drawn at all.
        fluid_styles: styles to draw fluid in, one picked at random per call (``"filled"``, ``"outline"``).
        background_value, line_value, fluid_value: the three sketch levels, distinct, in [-1, 1].

    Raises:
        ValueError: for out-of-range parameters or an unknown fluid style.
    """

    def __init__(self, table: LabelTable | str = "duke_dme", line_width: Sequence[float] = (1.0, 3.0),
                 deform: float = 0.02, jitter: float = 0.005, max_frequency: float = 2.0, drop_prob: float = 0.1,
                 droppable: Sequence[int] | None = None,
                 fluid_prob: float = 1.0, fluid_styles: Sequence[str] = FLUID_STYLES, background_value: float = -1.0,
                 line_value: float = 1.0, fluid_value: float = 0.0) -> None:
        self.table = get_label_table(table)
        if len(self.table.layer_order) < 2:
            raise ValueError(f"label table {self.table.name!r} has no layer_order; cannot draw layer boundaries")
        lw = tuple(float(v) for v in line_width)
        if len(lw) != 2 or not 0.5 <= lw[0] <= lw[1]:
            raise ValueError(f"line_width must be a range (lo, hi) with 0.5 <= lo <= hi, got {line_width}")
        for name, v in [("deform", deform), ("jitter", jitter)]:
            if not 0.0 <= v <= 0.25:
                raise ValueError(f"{name} must be in [0, 0.25] (a fraction of the image size), got {v}")
        if not 0.0 < max_frequency <= 3.0:
            raise ValueError(f"max_frequency must be in (0, 3], got {max_frequency}")
        for name, v in [("drop_prob", drop_prob), ("fluid_prob", fluid_prob)]:
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        k = len(self.table.layer_order) - 1
        self.droppable = tuple(range(1, k - 1)) if droppable is None else tuple(int(i) for i in droppable)
        bad = [i for i in self.droppable if not 0 <= i < k]
        if bad:
            raise ValueError(f"droppable boundary indices {bad} are outside 0..{k - 1}")
        styles = tuple(fluid_styles)
        if not styles or any(s not in FLUID_STYLES for s in styles):
            raise ValueError(f"fluid_styles must be a non-empty subset of {FLUID_STYLES}, got {fluid_styles}")
        levels = (float(background_value), float(line_value), float(fluid_value))
        if len(set(levels)) != 3 or any(not -1.0 <= v <= 1.0 for v in levels):
            raise ValueError(f"background/line/fluid values must be distinct and in [-1, 1], got {levels}")
        self.line_width, self.deform, self.jitter = lw, float(deform), float(jitter)
        self.max_frequency, self.drop_prob, self.fluid_prob = float(max_frequency), float(drop_prob), float(fluid_prob)
        self.fluid_styles = styles
        self.background_value, self.line_value, self.fluid_value = levels
        self.num_boundaries = len(self.table.layer_order) - 1
        self._params: dict | None = None

    # ------------------------------------------------------------------ randomness
    def _sines(self, n: int, amplitude: float, fy: bool) -> np.ndarray:
        a = self.R.normal(0.0, 1.0, n) * amplitude / np.sqrt(n)
        fx = self.R.uniform(0.25, self.max_frequency, n) * self.R.choice([-1.0, 1.0], n)
        fyy = self.R.uniform(0.25, self.max_frequency, n) if fy else np.zeros(n)
        ph = self.R.uniform(0.0, 2 * np.pi, n)
        return np.stack([a, fx, fyy, ph], axis=1)

    def randomize(self, data=None) -> None:
        """Draw the deformation, line widths, dropped boundaries and fluid drawing from ``self.R``.

        The same number of draws is made whatever the options, so a seed fixes the whole sketch.
        """
        k = self.num_boundaries
        dy = self._sines(3, self.deform, fy=True)
        dx = self._sines(3, self.deform, fy=False)
        jit = np.stack([self._sines(2, self.jitter, fy=False) for _ in range(k)])
        widths = self.R.uniform(self.line_width[0], self.line_width[1], k)
        drop = (self.R.random_sample(k) < self.drop_prob) & np.isin(np.arange(k), self.droppable)
        fluid = self.R.random_sample() < self.fluid_prob
        style = self.fluid_styles[int(self.R.randint(len(self.fluid_styles)))]
        self._params = {"dy": dy, "dx": dx, "jitter": jit, "widths": widths, "drop": drop, "fluid": fluid,
                        "style": style}

    # ------------------------------------------------------------------ geometry
    def deform_boundaries(self, bounds: np.ndarray, pathology: np.ndarray | None, shape: Sequence[int]
                          ) -> tuple[np.ndarray, np.ndarray | None]:
        """Move boundaries and pathology together by the drawn displacement field and per-boundary wobble.

        Args:
            bounds: ``(K, W)`` ordered boundary rows.
            pathology: ``(H, W)`` map of pathological class ids (0 elsewhere), or None.
            shape: ``(H, W)``.

        Returns:
            The deformed boundaries, re-ordered so they never cross and clipped to ``[0, H]``, and the
            warped pathology map (None when ``pathology`` is None).
        """
        if self._params is None:
            self.randomize()
        p = self._params
        h, w = int(shape[0]), int(shape[1])
        if self.deform == 0.0 and self.jitter == 0.0:
            return bounds.copy(), None if pathology is None else pathology.copy()
        xs = np.arange(w, dtype=float)
        xn = xs / max(w - 1, 1)
        shift_x = _smooth_field(p["dx"], xn) * w  # new x of column x0: x0 + shift_x(x0)
        new_x = xs + shift_x
        order = np.argsort(new_x, kind="stable")
        out = np.empty_like(bounds, dtype=float)
        for k in range(bounds.shape[0]):
            y0 = bounds[k]
            y1 = y0 + _smooth_field(p["dy"], xn, y0 / h) * h + _smooth_field(p["jitter"][k], xn) * h
            out[k] = np.interp(xs, new_x[order], y1[order])
        out = np.clip(np.maximum.accumulate(out, axis=0), 0.0, h)
        warped = None
        if pathology is not None:
            yy, xx = np.mgrid[0:h, 0:w].astype(float)
            src_x = xx - _smooth_field(p["dx"], xx / max(w - 1, 1)) * w
            src_y = yy - _smooth_field(p["dy"], src_x / max(w - 1, 1), yy / h) * h
            warped = ndimage.map_coordinates(pathology, [src_y, src_x], order=0, mode="nearest")
        return out, warped

    def render(self, bounds: np.ndarray, pathology: np.ndarray | None, shape: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
        """Draw a sketch from boundaries and pathology with the drawn widths, drops and fluid style.

        No deformation is applied here (:meth:`deform_boundaries` does that); :func:`generate_sketch`
        calls this directly on exact boundaries.

        Args:
            bounds: ``(K, W)`` ordered boundary rows, ``K = len(layer_order) - 1``.
            pathology: ``(H, W)`` map of pathological class ids (0 elsewhere), or None.
            shape: ``(H, W)``.

        Returns:
            ``(sketch, sketch_label)``: ``(H, W)`` float32 sketch and ``(H, W)`` int64 sketch-derived label.

        Raises:
            ValueError: when ``bounds`` has the wrong number of boundaries or width.
        """
        if self._params is None:
            self.randomize()
        p = self._params
        h, w = int(shape[0]), int(shape[1])
        if bounds.shape != (self.num_boundaries, w):
            raise ValueError(f"bounds of shape {bounds.shape} do not match ({self.num_boundaries}, {w})")
        sketch = np.full((h, w), self.background_value, dtype=np.float32)
        rows = np.arange(h, dtype=float)[:, None]
        kept = [k for k in range(self.num_boundaries) if not p["drop"][k]]
        for k in kept:
            b = bounds[k]
            left, right = np.concatenate([b[:1], b[:-1]]), np.concatenate([b[1:], b[-1:]])
            lo = np.minimum(b, np.minimum((b + left) / 2, (b + right) / 2)) - p["widths"][k] / 2
            hi = np.maximum(b, np.maximum((b + left) / 2, (b + right) / 2)) + p["widths"][k] / 2
            sketch[(rows >= np.floor(lo + 0.5)) & (rows < np.floor(hi + 0.5))] = self.line_value
        order = np.asarray(self.table.layer_order)
        lut = np.array([order[0]] + [order[k + 1] for k in kept], dtype=np.int64)
        sketch_label = lut[regions_from_boundaries(bounds[kept], h)] if kept else np.full((h, w), order[0], np.int64)
        if pathology is not None and p["fluid"] and (pathology > 0).any():
            mask = pathology > 0
            if p["style"] == "outline":
                width = max(1, int(round(float(np.mean(p["widths"])) / 2)))
                draw = mask & ~ndimage.binary_erosion(mask, iterations=width)
            else:
                draw = mask
            sketch[draw] = self.fluid_value
            sketch_label[mask] = pathology[mask]
        return sketch, sketch_label

    # ------------------------------------------------------------------ call
    def sketch_and_label(self, label, randomize: bool = True):
        """Sketch a label map and return ``(sketch, sketch_label)``.

        Args:
            label: ``(H, W)`` or ``(1, H, W)`` class-id map (numpy or torch, ids of the table,
                :data:`~monai_oct.core.labels.UNANNOTATED` allowed).
            randomize: draw new random parameters (False reuses the last ones).

        Returns:
            ``sketch`` float32 and ``sketch_label`` (the input's dtype), both shaped and typed like ``label``.

        Raises:
            ValueError: for a wrong shape, non-integer values or ids outside the table.
        """
        lab = as_2d_label(label, self.table)
        if randomize or self._params is None:
            self.randomize()
        bounds = boundaries_of(lab, self.table)
        path_ids = np.asarray(self.table.pathological, dtype=np.int64)
        pathology = np.where(np.isin(lab, path_ids), lab, 0) if len(path_ids) else None
        bounds, pathology = self.deform_boundaries(bounds, pathology, lab.shape)
        sketch, sketch_label = self.render(bounds, pathology, lab.shape)
        if len(label.shape) == 3:
            sketch, sketch_label = sketch[None], sketch_label[None]
        sketch = convert_to_dst_type(sketch, label, dtype=np.float32)[0]
        sketch_label = convert_to_dst_type(sketch_label, label)[0]
        return sketch, sketch_label

    def __call__(self, label, randomize: bool = True):
        """Sketch of ``label`` (float32, shaped and typed like it); see :meth:`sketch_and_label`."""
        return self.sketch_and_label(label, randomize)[0]


class LayerSketchd(Randomizable, MapTransform):
    """Dictionary twin of :class:`LayerSketch`: adds ``sketch_key`` and ``sketch_label_key`` to the data.

    Args:
        keys: the label key (exactly one).
        sketch_key: where to write the sketch.
        sketch_label_key: where to write the sketch-derived label (None: don't).
        allow_missing_keys: don't raise when the label key is missing.
        kwargs: :class:`LayerSketch` arguments.

    Raises:
        ValueError: for more than one key.
    """

    def __init__(self, keys: KeysCollection = "label", sketch_key: str = "sketch",
                 sketch_label_key: str | None = "sketch_label", allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LayerSketchd sketches one label key, got {self.keys}")
        self.sketch_key, self.sketch_label_key = sketch_key, sketch_label_key
        self.sketcher = LayerSketch(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "LayerSketchd":
        """Seed this transform and its array transform."""
        super().set_random_state(seed, state)
        self.sketcher.set_random_state(seed, state)
        return self

    def randomize(self, data=None) -> None:
        """Draw new sketch parameters."""
        self.sketcher.randomize(data)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            sketch, sketch_label = self.sketcher.sketch_and_label(d[key], randomize=True)
            d[self.sketch_key] = sketch
            if self.sketch_label_key is not None:
                d[self.sketch_label_key] = sketch_label
        return d
