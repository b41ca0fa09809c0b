"""Label maps drawn as boundary curves: a statistical shape model of the layers, valid by construction at any size.

:class:`BoundaryModel` is fitted on real label maps (retina bands cropped at full resolution with
:class:`~monai_oct.transforms.band.RetinaBandCropd`). What it models:

- **Layer shape.** Per map, the ``L + 1`` boundaries between consecutive classes of the table's ``layer_order``
  (Duke DME: 8 boundaries, vitreous/NFL to OS-RPE/choroid) are located in every column with
  :func:`~monai_oct.core.geometry.label_boundaries` (where fluid hides a boundary it is interpolated from the
  columns around it, i.e. fluid counts as the layers it sits in), as fractions of the band height, and
  averaged into ``num_control`` control columns spread over the width. A map is described, at the control
  columns, by the row of its lowest boundary (OS-RPE/choroid, smooth in real scans), the log of the retina's
  total thickness and each layer's log share of it (centred log-ratios, turned back into shares by a softmax),
  so order and positivity hold for any coefficients and the top boundary is as smooth as the total thickness
  (independent log thicknesses summed into spikes where fluid made single layers' thickness jump). A PCA over the training maps (numpy SVD) keeps the components that explain
  ``variance`` of the total; a new map draws its coefficients from the fitted Gaussian (standard deviations
  scaled by ``spread``), optionally mirrored left-right.
- **Any resolution.** The features are interpolated from the control columns to the column centres of any
  width with a monotone cubic (PCHIP), then turned into thicknesses and summed into sub-pixel boundary rows at
  any height; a pixel belongs to the layer whose interval holds its centre. Sizes share one continuous map, so a
  sample rasterised at 224x512 and at 112x256 agrees to within a pixel.
- **Fluid.** The fluid components (at least ``min_fluid_pixels``) of each training map are stored as runs per
  column in retina-normalised depth (0 at the top boundary, 1 at the OS-RPE/choroid boundary). A new map takes
  the fluid of one random training map (so the share of maps with fluid follows the training set) and maps its
  runs into the new retina column by column. Fluid replaces only retinal layers above the lowest one (OS-RPE is
  kept, so every column keeps retina under its fluid): it lies inside the retina by construction.

What it does not model: new fluid shapes (pockets are the training set's, moved and stretched with the retina,
never drawn anew), hyper-reflective foci or other pathology, detail finer than the control-column spacing
(``1 / num_control`` of the width), or the correlation between a map's shape and its fluid. Thickness
statistics are those of the band the model was fitted on (its height fixes the fractions).

:class:`BoundarySource` is a label source (contract in :mod:`monai_oct.recipes.sources`): sample ``i`` is drawn
from a numpy stream derived from sample ``i``'s ``torch.Generator`` seed, at the source's ``label_size``.
Fit with ``monai-oct fit-boundaries DATALIST --band-height 224 --out boundaries.npz``; use with the synthesis
bundle's ``--boundary_model boundaries.npz``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.interpolate import PchipInterpolator

from monai_oct.core.geometry import as_2d_label, boundaries_of, regions_from_boundaries
from monai_oct.core.io import DataError, atomic_path, read_json, write_json
from monai_oct.core.labels import LabelTable, get_label_table
from monai_oct.recipes.items import resolve_items
from monai_oct.recipes.pipelines import bscan_transforms

__all__ = ["BoundaryModel", "BoundarySource", "boundary_source"]

#: bumped when the saved arrays change meaning; :meth:`BoundaryModel.load` refuses other versions.
FORMAT_VERSION = 1
_ARRAYS = ("mean", "components", "stddev", "fluid_runs", "fluid_widths")


class BoundaryModel:
    """Statistical shape model of layer boundaries plus the training set's fluid pockets (see the module docstring).

    Args:
        table: label table name (its ``layer_order`` has ``L + 2`` classes).
        mean: ``(F,)`` mean feature vector, ``F = (L + 2) * num_control``, curves over the control columns: the
            lowest boundary's row, the log total thickness, then each layer's log thickness minus it (all lengths
            fractions of the band height).
        components: ``(M, F)`` orthonormal principal directions.
        stddev: ``(M,)`` standard deviation of the training maps along each.
        fluid_runs: ``(R, 4)`` fluid runs ``(map index, column fraction of the run's centre, u0, u1)``, ``u`` the
            retina-normalised depth of the run's first and past-last row.
        fluid_widths: ``(N,)`` width in columns of each training map (fluid runs are looked up in that map's columns).
        num_control: control columns K.
        source: free text (what the model was fitted on).

    Raises:
        ValueError: for arrays of inconsistent shapes or a table without ``layer_order``.
    """

    def __init__(self, table: str, mean: np.ndarray, components: np.ndarray, stddev: np.ndarray,
                 fluid_runs: np.ndarray, fluid_widths: np.ndarray, num_control: int, source: str = "") -> None:
        self.table = get_label_table(table)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64).reshape(-1, self.mean.size)
        self.stddev = np.asarray(stddev, dtype=np.float64).ravel()
        self.fluid_runs = np.asarray(fluid_runs, dtype=np.float64).reshape(-1, 4)
        self.fluid_widths = np.asarray(fluid_widths, dtype=np.int64).ravel()
        self.num_control, self.source = int(num_control), str(source)
        n_layers = len(self.table.layer_order) - 2
        if n_layers < 1:
            raise ValueError(f"boundary model: label table {self.table.name!r} has no layer_order of at least 3 classes")
        if self.mean.size != (n_layers + 2) * self.num_control:
            raise ValueError(f"boundary model: {self.mean.size} features do not fit {n_layers + 2} curves x "
                             f"{self.num_control} control columns of table {self.table.name!r}")
        if self.components.shape[0] != self.stddev.size:
            raise ValueError(f"boundary model: {self.components.shape[0]} components but {self.stddev.size} deviations")
        if self.fluid_widths.size == 0:
            raise ValueError("boundary model: fitted on no maps")
        if len(self.fluid_runs) and not (0 <= self.fluid_runs[:, 0].min() and self.fluid_runs[:, 0].max() < self.fluid_widths.size):
            raise ValueError("boundary model: fluid runs name maps the model was not fitted on")

    # ------------------------------------------------------------------ fitting
    @property
    def num_layers(self) -> int:
        """Number of retinal layers L (boundaries: L + 1)."""
        return len(self.table.layer_order) - 2

    @property
    def num_maps(self) -> int:
        """Number of label maps the model was fitted on."""
        return int(self.fluid_widths.size)

    @classmethod
    def fit(cls, labels: Sequence[Any], table: LabelTable | str = "duke_dme", num_control: int = 32,
            variance: float = 0.99, min_thickness: float = 0.01, min_fluid_pixels: int = 20,
            source: str = "", names: Sequence[str] | None = None) -> "BoundaryModel":
        """Fit the shape model and collect the fluid runs of ``labels``.

        Args:
            labels: ``(H, W)`` or ``(1, H, W)`` class-id maps (one geometry, e.g. 224-row bands; widths may differ).
            table: their label table.
            num_control: control columns K across the width.
            variance: keep the fewest principal components that explain this share of the variance.
            min_thickness: thinner layers (fraction of the height, e.g. at the foveal pit or squeezed by fluid)
                count as this thick, so their log stays finite (0.01: 2.2 rows of a 224-row band; on Duke train
                0.001 made the sampled GCL-IPL and INL 6 % and 13 % thinner than the real ones).
            min_fluid_pixels: smaller fluid components are specks and are not carried.
            source: free text stored with the model.
            names: what to name each map in errors (default ``label i``).

        Returns:
            the fitted model.

        Raises:
            ValueError: for no maps, fewer than 2 columns per control column, ids outside the table (naming the map).
        """
        table = get_label_table(table)
        if len(labels) == 0:
            raise ValueError("boundary model: no label maps to fit on")
        if not 0.0 < variance <= 1.0 or num_control < 2:
            raise ValueError(f"boundary model: need 0 < variance <= 1 and num_control >= 2, got {variance}, {num_control}")
        feats, runs, widths = [], [], []
        path_ids = list(table.pathological)
        for i, lab in enumerate(labels):
            where = names[i] if names is not None else f"label {i}"
            lab = as_2d_label(lab, table, where)
            bounds = boundaries_of(lab, table)  # (L + 1, W) rows, never crossing, interpolated under fluid
            h, w = lab.shape
            if w < 2 * num_control:
                raise ValueError(f"{where}: {w} columns are too few for {num_control} control columns")
            feats.append(_features(bounds / h, num_control, min_thickness))
            widths.append(w)
            if path_ids:
                runs += [(i, *r) for r in _fluid_runs(np.isin(lab, path_ids), bounds, min_fluid_pixels)]
        x = np.stack(feats)
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        var = s ** 2 / max(len(x) - 1, 1)
        keep = int(np.searchsorted(np.cumsum(var) / max(var.sum(), 1e-300), variance - 1e-12) + 1) if var.sum() > 0 else 0
        keep = min(keep, len(var))
        return cls(table.name, mean, vt[:keep], np.sqrt(var[:keep]), np.asarray(runs, dtype=np.float64).reshape(-1, 4),
                   np.asarray(widths), num_control, source or f"fitted on {len(x)} label maps")

    @classmethod
    def fit_datalist(cls, datalist: str | os.PathLike | Sequence[str], band_height: int | None = 224,
                     dataset_dir: str | None = None, key: str | Sequence[str] | None = ("train", "training"),
                     table: LabelTable | str = "duke_dme", max_items: int | None = None, **fit_kwargs: Any) -> "BoundaryModel":
        """Fit on the labels of datalist(s), each cropped to the retina band (located from the label) at full resolution.

        Args:
            datalist: datalist path(s) (:func:`~monai_oct.recipes.items.resolve_items`).
            band_height: rows of the band (None/0: whole B-scans).
            dataset_dir: folder relative paths start from.
            key: list name(s) to read.
            table: label table of the ids.
            max_items: fit on the first N items only.
            fit_kwargs: :meth:`fit` arguments (``num_control``, ``variance``, ...).

        Raises:
            DataError: a missing datalist or label file, or an item without ``label``.
        """
        items = resolve_items(datalist, key, dataset_dir, require_label=True)[:max_items or None]
        chain = bscan_transforms(keys=["label"], band_height=int(band_height) if band_height else None, table=table)
        names = [it["label"] for it in items]
        maps = [np.asarray(chain({"label": n})["label"])[0] for n in names]
        where = f"{datalist} ({len(maps)} label maps" + (f", {band_height}-row band)" if band_height else ")")
        return cls.fit(maps, table=table, source=where, names=names, **fit_kwargs)

    # ------------------------------------------------------------------ sampling
    def draw(self, seed: int | Sequence[int], spread: float = 1.0, mirror: bool = True) -> dict[str, Any]:
        """The random choices of one map: PCA coefficients, the mirror flip and the training map whose fluid it takes.

        Args:
            seed: seed of ``numpy.random.default_rng`` (an int or a sequence such as ``(seed, index)``).
            spread: scale of the coefficients' standard deviations (0: the mean shape).
            mirror: flip half of the maps left-right.

        Returns:
            ``{"coefficients": (M,), "mirror": bool, "fluid_map": int}`` (a map without fluid runs, or -1, gives no
            fluid; every pathological id of the training maps is carried as the table's first pathological id).
        """
        rng = np.random.default_rng(seed)
        z = rng.standard_normal(self.stddev.size) * self.stddev * float(spread)
        flip = bool(rng.random() < 0.5) and bool(mirror)
        return {"coefficients": z, "mirror": flip, "fluid_map": int(rng.integers(self.num_maps))}

    def boundaries(self, coefficients: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """``(L + 1, W)`` sub-pixel boundary rows of a shape at ``size = (H, W)``, at the column centres."""
        h, w = int(size[0]), int(size[1])
        f = (self.mean + np.asarray(coefficients) @ self.components).reshape(self.num_layers + 2, self.num_control)
        xc = (np.arange(self.num_control) + 0.5) / self.num_control
        x = np.clip((np.arange(w) + 0.5) / w, xc[0], xc[-1])  # constant beyond the outer control columns
        f = PchipInterpolator(xc, f, axis=1)(x)
        shares = np.exp(f[2:] - f[2:].max(0))  # softmax: positive shares of the retina's thickness, summing to 1
        thick = np.exp(f[1]) * shares / shares.sum(0)
        above = np.cumsum(thick[::-1], axis=0)[::-1]  # thickness between each boundary and the last one
        return h * np.concatenate([f[:1] - above, f[:1]])

    def rasterise(self, draw: dict[str, Any], size: Sequence[int]) -> np.ndarray:
        """The ``(H, W)`` int64 label map of :meth:`draw`'s choices at ``size``.

        Raises:
            ValueError: for a size below 2 x 2.
        """
        h, w = int(size[0]), int(size[1])
        if h < 2 or w < 2:
            raise ValueError(f"boundary model: label size must be at least 2x2, got {list(size)}")
        bounds = self.boundaries(draw["coefficients"], (h, w))
        region = regions_from_boundaries(np.ceil(bounds - 0.5), h)  # row r is below b when its centre r + 0.5 is
        order = np.asarray(self.table.layer_order)
        label = order[region].astype(np.int64)
        runs = self.fluid_runs[self.fluid_runs[:, 0] == draw["fluid_map"]]
        if len(runs) and self.table.pathological:
            fluid = _paint_runs(runs[:, 1:], int(self.fluid_widths[draw["fluid_map"]]), bounds[0], bounds[-1], h, w)
            label[fluid & np.isin(label, order[1:-2])] = self.table.pathological[0]
        return np.ascontiguousarray(label[:, ::-1]) if draw["mirror"] else label

    def sample(self, seed: int | Sequence[int], size: Sequence[int], spread: float = 1.0, mirror: bool = True) -> np.ndarray:
        """One ``(H, W)`` int64 label map: :meth:`rasterise` of :meth:`draw` ``(seed)``; the same seed, the same map."""
        return self.rasterise(self.draw(seed, spread, mirror), size)

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> Path:
        """Write the model atomically (temp file + rename) and return the path.

        A ``.json`` path gets one JSON object (the header's fields and the arrays as lists: readable, ~1 MB for
        Duke); any other name an ``.npz`` (the arrays and the header as JSON text; a third of the size).
        """
        meta = {"format": "monai_oct.BoundaryModel", "version": FORMAT_VERSION, "table": self.table.name,
                "num_control": self.num_control, "source": self.source}
        arrays = {k: getattr(self, k) for k in _ARRAYS}
        if Path(path).suffix.lower() == ".json":
            return write_json(path, {**meta, **{k: v.tolist() for k, v in arrays.items()}}, indent=None)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, table: LabelTable | str | None = None) -> "BoundaryModel":
        """Read a model written by :meth:`save` (``.json``: JSON, otherwise ``.npz``).

        Args:
            path: the file.
            table: when given, the model must have been fitted for this label table.

        Raises:
            DataError: naming the file when it is missing, not a boundary model, of another format version, holds
                inconsistent arrays or was fitted for another label table.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: boundary model not found (fit one with `monai-oct fit-boundaries DATALIST --out FILE`)")
        try:
            if path.suffix.lower() == ".json":
                meta = read_json(path, "boundary model")
                arrays = {k: np.asarray(meta[k], dtype=np.float64) for k in _ARRAYS}
            else:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z["meta"]))
                    arrays = {k: z[k] for k in _ARRAYS}
        except DataError:
            raise
        except Exception as e:  # zip, npy, JSON, type and key errors all mean "not a model file"
            raise DataError(f"{path}: not a boundary model file ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != "monai_oct.BoundaryModel":
            raise DataError(f"{path}: not a boundary model file (no monai_oct.BoundaryModel header)")
        if meta.get("version") != FORMAT_VERSION:
            raise DataError(f"{path}: boundary model format version {meta.get('version')}, this monai_oct reads "
                            f"{FORMAT_VERSION}; fit it again with `monai-oct fit-boundaries`")
        if table is not None and get_label_table(table).name != meta.get("table"):
            raise DataError(f"{path}: boundary model fitted for label table {meta.get('table')!r}, "
                            f"not {get_label_table(table).name!r}")
        try:
            return cls(meta["table"], num_control=meta["num_control"], source=meta.get("source", ""), **arrays)
        except (KeyError, ValueError) as e:
            raise DataError(f"{path}: {e}") from None


def _features(bounds: np.ndarray, num_control: int, min_thickness: float) -> np.ndarray:
    """``((L + 2) * K,)`` features of ``(L + 1, W)`` boundary fractions: the last boundary's row, the log total
    thickness and the layers' log shares of it, each averaged over the K equal column bins."""
    log_thick = np.log(np.maximum(np.diff(bounds, axis=0), min_thickness))
    log_total = np.log(np.exp(log_thick).sum(0, keepdims=True))
    f = np.concatenate([bounds[-1:], log_total, log_thick - log_total])
    edges = np.linspace(0, f.shape[1], num_control + 1).round().astype(int)
    return np.stack([f[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:])], axis=1).ravel()


def _fluid_runs(fluid: np.ndarray, bounds: np.ndarray, min_pixels: int) -> list[tuple[float, float, float]]:
    """Runs ``(column index, u0, u1)`` of the fluid components of at least ``min_pixels``, ``u`` in retina-normalised
    depth (0: boundary 0, 1: the last boundary) of their column."""
    comp, n = ndimage.label(fluid)
    if n == 0:
        return []
    sizes = np.bincount(comp.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    mask = keep[comp]
    top, bottom = bounds[0], bounds[-1]
    edge = np.diff(np.pad(mask, ((1, 1), (0, 0))).astype(np.int8), axis=0)  # +1 at a run's first row, -1 past its last
    out = []
    for c in np.flatnonzero(mask.any(0)):
        starts, ends = np.flatnonzero(edge[:, c] == 1), np.flatnonzero(edge[:, c] == -1)
        span = max(bottom[c] - top[c], 1.0)
        out += [(float(c), float(np.clip((a - top[c]) / span, 0, 1)), float(np.clip((b - top[c]) / span, 0, 1)))
                for a, b in zip(starts, ends)]
    return out


def _paint_runs(runs: np.ndarray, src_width: int, top: np.ndarray, bottom: np.ndarray, h: int, w: int) -> np.ndarray:
    """``(H, W)`` mask of fluid runs ``(source column, u0, u1)`` of a ``src_width``-column map, each new column taking
    the runs of the source column under its centre, depths mapped between its ``top`` and ``bottom`` rows."""
    src = np.minimum(((np.arange(w) + 0.5) / w * src_width).astype(np.int64), src_width - 1)
    order = np.argsort(runs[:, 0], kind="stable")
    cols, u0, u1 = runs[order, 0].astype(np.int64), runs[order, 1], runs[order, 2]
    lo, hi = np.searchsorted(cols, src, "left"), np.searchsorted(cols, src, "right")
    counts = hi - lo
    tgt = np.repeat(np.arange(w), counts)  # one entry per (new column, run)
    idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if counts.sum() else np.zeros(0, np.int64)
    span = bottom[tgt] - top[tgt]
    first = np.clip(np.ceil(top[tgt] + u0[idx] * span - 0.5), 0, h).astype(np.int64)  # first row whose centre is inside
    last = np.clip(np.ceil(top[tgt] + u1[idx] * span - 0.5), 0, h).astype(np.int64)
    diff = np.zeros((h + 1, w), dtype=np.int64)
    np.add.at(diff, (first, tgt), 1)
    np.add.at(diff, (last, tgt), -1)
    return np.cumsum(diff, axis=0)[:h] > 0


class BoundarySource:
    """Label source of :class:`BoundaryModel` maps at ``label_size`` (contract: :mod:`monai_oct.recipes.sources`).

    Sample ``i``'s map is drawn from ``numpy.random.default_rng((generator.initial_seed(), 0xB0))``: the engine
    seeds sample ``i``'s generator with ``sample_seed(seed, i)``, so the map depends only on ``(seed, i)``, not on the
    batch, and the generator itself is not advanced (the image noise drawn from it after the label is unchanged).

    Args:
        model: the fitted model.
        label_size: ``[H, W]`` of the maps.
        spread: scale of the shape coefficients' standard deviations (:meth:`BoundaryModel.draw`).
        mirror: flip half of the maps left-right.
    """

    def __init__(self, model: BoundaryModel, label_size: Sequence[int], spread: float = 1.0, mirror: bool = True) -> None:
        self.model, self.label_size = model, [int(s) for s in label_size]
        self.spread, self.mirror = float(spread), bool(mirror)

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"label": (B, 1, H, W) int64 ids}`` of ``indices``, one map per generator."""
        maps = [self.model.sample((g.initial_seed(), 0xB0), self.label_size, self.spread, self.mirror) for g in generators]
        return {"label": torch.from_numpy(np.stack(maps)[:, None]).to(device)}


def boundary_source(path: str | os.PathLike, label_size: Sequence[int], table: LabelTable | str | None = "duke_dme",
                    **kwargs: Any) -> BoundarySource:
    """:class:`BoundarySource` of the model saved at ``path`` (checked against ``table``); ``kwargs``: its settings.

    Raises:
        DataError: naming the file (see :meth:`BoundaryModel.load`).
    """
    return BoundarySource(BoundaryModel.load(path, table), label_size, **kwargs)
