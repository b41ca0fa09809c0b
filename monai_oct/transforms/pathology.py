"""Pathology placed by hand on a label map: intraretinal fluid pockets and drusen under the RPE.

The mask-conditioned image model (RetiDiff stage 3) draws what its label map says, so a user who edits the map
decides where the pathology goes. These transforms make the edit anatomically sound, column by column, on a
Duke-style map (:data:`~monai_oct.core.labels.DUKE_DME`: 0 vitreous, 1-7 NFL .. OS-RPE, 8 choroid, 9 fluid):

- :class:`InsertFluid` paints elliptic (optionally jittered) fluid pockets (the table's first pathological id,
  9) into the inner/outer nuclear zone of the retina, where intraretinal fluid sits in DME. A pocket is clipped to
  that zone and never touches the vitreous or the choroid; with ``displace > 0`` it pushes the layers above it up
  (a swollen retina) instead of only overwriting them.
- :class:`InsertDrusen` raises the OS-RPE band into smooth domes (raised cosines) over a flat Bruch's membrane: the
  band is lifted by the asked height, the layers above are lifted less and compressed (the ILM moves by
  ``inner_lift`` times the height), and the space under the raised RPE is class 7 (see the class docstring).

Both work on the layer boundaries of :func:`~monai_oct.core.geometry.label_boundaries`, keep every column's layer
order (a valid map stays valid by :func:`monai_oct.metrics.plausibility.column_validity`), leave the columns they
do not edit bit for bit, and report the pixels they set (``last_inserted``; the dictionary twins write it under
``inserted_key`` for scoring, e.g. the Dice of a teacher segmenter on the inserted fluid). The random twins
(:class:`RandInsertFluidd`, :class:`RandInsertDrusend`) draw positions and sizes from their seeded ``R``.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type

from monai_oct.core.geometry import as_2d_label, boundaries_of, regions_from_boundaries
from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable, get_label_table

__all__ = ["InsertFluid", "InsertFluidd", "RandInsertFluidd", "InsertDrusen", "InsertDrusend", "RandInsertDrusend",
           "fluid_zone"]


def _layer_index(table: LabelTable, layer: str | int) -> int:
    """Position of a retinal layer (name or id) in ``table.layer_order``; ValueError naming it otherwise."""
    ids = {name: i for i, name in table.classes.items()}
    cid = ids.get(layer, layer) if isinstance(layer, str) else int(layer)
    retinal = [c for c in table.layer_order if c not in table.background]
    if cid not in retinal:
        names = [table.classes[c] for c in retinal]
        raise ValueError(f"layer {layer!r} is not a retinal layer of table {table.name!r}; expected one of {names}")
    return table.layer_order.index(cid)


def fluid_zone(bounds: np.ndarray, table: LabelTable = DUKE_DME,
               zone: tuple[str | int, str | int] = ("GCL-IPL", "ONL-ISM")) -> tuple[np.ndarray, np.ndarray]:
    """The rows where fluid may go in every column: from the top of layer ``zone[0]`` to the bottom of ``zone[1]``,
    at least one row below the ILM and one row above Bruch's membrane (so fluid never touches vitreous or choroid).

    Args:
        bounds: ``(K, W)`` boundaries of :func:`~monai_oct.core.geometry.label_boundaries`.
        table: the label table (layer names, ``layer_order``).
        zone: top and bottom layer (name or id) of the zone, inclusive.

    Returns:
        ``(top, bottom)`` int rows ``(W,)``: the zone of column ``c`` is ``top[c] <= r < bottom[c]`` (empty when
        ``bottom <= top``).

    Raises:
        ValueError: for a layer that is no retinal layer of the table, or a zone whose top lies below its bottom.
    """
    k0, k1 = _layer_index(table, zone[0]), _layer_index(table, zone[1])
    if k0 > k1:
        raise ValueError(f"fluid zone {tuple(zone)}: the top layer lies below the bottom layer")
    b = np.floor(bounds).astype(np.int64)
    top = np.maximum(b[k0 - 1], b[0] + 1)          # boundary k-1 is the first row of layer_order[k]
    bottom = np.minimum(b[k1], b[-1] - 1)
    return top, bottom


def _shift_up(arrays: Sequence[np.ndarray], col: int, top: int, bottom: int, shift: int) -> None:
    """In column ``col`` of every array (in place): the rows above ``top + shift`` move up by ``shift`` (the top
    ``shift`` rows drop out), so the rows ``top .. bottom - 1`` can be filled by the caller; rows from ``bottom``
    on stay."""
    if shift <= 0:
        return
    for a in arrays:
        a[: top, col] = a[shift: top + shift, col].copy()


class InsertFluid(Randomizable, Transform):
    """Insert intraretinal fluid pockets into a label map.

    Each pocket is an ellipse of ``size = (height, width)`` pixels centred at ``(row, col)``, its radius optionally
    modulated by a smooth random function of the angle (``jitter``, drawn from ``self.R``: seed it with
    ``set_random_state``). It is clipped to :func:`fluid_zone` (by default GCL-IPL to ONL-ISM, where DME's cysts
    sit) and to annotated pixels. With ``displace = 0`` the pocket overwrites the layers under it, which keeps the
    layer order of every column (fluid is no layer); with ``displace = f`` the part ``f`` of the pocket's height in
    each column pushes the column above it up (the retina swells, as it does in DME; at most as many rows as the
    vitreous holds there, so the ILM never leaves the image), and only the rest is overwritten.

    Args:
        centres: pocket centres ``(row, col)``; or None with ``columns``.
        columns: pocket centre columns, the row given by ``depth``.
        depth: where in the retina a ``columns`` pocket is centred: a fraction in [0, 1] of the way from the ILM (0)
            to Bruch's membrane (1, the bottom of the OS-RPE band), or a layer name / id (the middle of that layer
            in that column); one value for all pockets or one per column.
        size: ``(height, width)`` in pixels of every pocket, or one pair per pocket.
        jitter: relative amplitude of the shape jitter (0: exact ellipses; 0.3: clearly lumpy).
        displace: share in [0, 1] of each pocket column that displaces the layers above instead of overwriting.
        zone: top and bottom layer of the rows fluid may take (see :func:`fluid_zone`).
        table: the label table (or its name).

    Returns (``__call__``): the edited map, same shape, type and dtype as the input; ``last_inserted`` is then the
    ``(H, W)`` bool mask of the pocket pixels.

    Raises:
        ValueError: for label ids outside the table, a centre outside the image, a centre outside the fluid zone of
            its column (in the vitreous, the choroid or a layer outside ``zone``), a non-positive size, a depth
            outside [0, 1], or ``displace`` outside [0, 1].
    """

    def __init__(self, centres: Sequence[Sequence[float]] | None = None, columns: Sequence[float] | None = None,
                 depth: float | str | Sequence[float | str] = 0.5, size: Sequence[float] = (12, 24),
                 jitter: float = 0.0, displace: float = 0.0,
                 zone: tuple[str | int, str | int] = ("GCL-IPL", "ONL-ISM"), table: LabelTable | str = DUKE_DME) -> None:
        self.table = get_label_table(table)
        if not self.table.pathological:
            raise ValueError(f"label table {self.table.name!r} has no pathological class to insert")
        if (centres is None) == (columns is None):
            raise ValueError("give pocket centres (row, col) or columns (with depth), not both or neither")
        if not 0.0 <= float(displace) <= 1.0:
            raise ValueError(f"displace must be in [0, 1], got {displace}")
        if float(jitter) < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.centres = None if centres is None else [tuple(float(v) for v in c) for c in centres]
        self.columns = None if columns is None else [float(c) for c in columns]
        n = len(self.centres if self.centres is not None else self.columns)
        bad = [c for c in (self.centres or []) if len(c) != 2]
        if bad:
            raise ValueError(f"pocket centres must be (row, col) pairs, got {bad[0]}")
        self.depth = list(depth) if isinstance(depth, (list, tuple)) else [depth] * n
        sizes = np.asarray(size, dtype=float)
        self.sizes = [tuple(float(v) for v in s) for s in (np.broadcast_to(sizes, (n, 2)) if sizes.ndim == 1 else sizes)]
        if len(self.depth) != n or len(self.sizes) != n:
            raise ValueError(f"{n} pockets need {n} depths and sizes, got {len(self.depth)} and {len(self.sizes)}")
        for s in self.sizes:
            if min(s) <= 0:
                raise ValueError(f"pocket size (height, width) must be positive, got {s}")
        for d in self.depth:
            if not isinstance(d, str) and not 0.0 <= float(d) <= 1.0:
                raise ValueError(f"pocket depth must be a fraction in [0, 1] or a layer name, got {d}")
            if isinstance(d, str):
                _layer_index(self.table, d)
        self.jitter, self.displace, self.zone = float(jitter), float(displace), tuple(zone)
        fluid_zone(np.zeros((len(self.table.layer_order) - 1, 1)), self.table, self.zone)  # checks the zone's names
        self.last_inserted: np.ndarray | None = None

    def _centre_row(self, bounds: np.ndarray, col: int, depth: float | str) -> float:
        """The row of a ``columns`` pocket's centre at ``col``."""
        if isinstance(depth, str):
            k = _layer_index(self.table, depth)
            return 0.5 * (bounds[k - 1, col] + bounds[k, col])
        return bounds[0, col] + float(depth) * (bounds[-1, col] - bounds[0, col])

    def _radius_scale(self, angles: np.ndarray) -> np.ndarray:
        """``1 + jitter * (smooth random function of the angle)``, clipped to [0.5, 1.5]; 1 without jitter."""
        if self.jitter == 0:
            return np.ones_like(angles)
        k = np.arange(2, 5)[:, None, None]
        amp = self.R.normal(0.0, 1.0, (3, 1, 1)) / np.sqrt(3.0)
        phase = self.R.uniform(0.0, 2 * np.pi, (3, 1, 1))
        return np.clip(1.0 + self.jitter * (amp * np.cos(k * angles[None] + phase)).sum(0), 0.5, 1.5)

    def __call__(self, label, where: str = "label"):
        """Insert the pockets into ``label`` (``(H, W)`` or ``(1, H, W)``); ``where`` names it in errors."""
        lab = as_2d_label(label, self.table, where).copy()
        h, w = lab.shape
        fluid = self.table.pathological[0]
        inserted = np.zeros((h, w), dtype=bool)
        rows, cols = np.mgrid[0:h, 0:w]
        for i, (hs, ws) in enumerate(self.sizes):
            bounds = boundaries_of(lab, self.table)
            if self.centres is not None:
                cy, cx = self.centres[i]
            else:
                cx = self.columns[i]
                if not 0 <= cx < w:
                    raise ValueError(f"{where}: pocket column {cx} is outside the image (width {w})")
                cy = self._centre_row(bounds, int(cx), self.depth[i])
            if not (0 <= cy < h and 0 <= cx < w):
                raise ValueError(f"{where}: pocket centre (row {cy:g}, col {cx:g}) is outside the image ({h} x {w})")
            top, bottom = fluid_zone(bounds, self.table, self.zone)
            r, c = int(cy), int(cx)
            if not top[c] <= r < bottom[c] or lab[r, c] == UNANNOTATED:
                raise ValueError(f"{where}: pocket centre (row {cy:g}, col {cx:g}) is outside the retina's fluid zone "
                                 f"{self.zone[0]}..{self.zone[1]} (rows {top[c]}..{bottom[c] - 1} at column {c})")
            dy, dx = (rows - cy) / (hs / 2.0), (cols - cx) / (ws / 2.0)
            pocket = np.hypot(dy, dx) <= self._radius_scale(np.arctan2(dy, dx))
            pocket &= (rows >= top[None]) & (rows < bottom[None]) & (lab != UNANNOTATED)
            b0 = np.floor(bounds[0]).astype(np.int64)
            for col in np.nonzero(pocket.any(0))[0]:
                rr = np.nonzero(pocket[:, col])[0]
                t, u = int(rr.min()), int(rr.max()) + 1      # fill the column's run (the zone is one run per column)
                shift = min(int(round(self.displace * (u - t))), int(b0[col]))
                _shift_up((lab, inserted), col, t, u, shift)
                lab[t:u, col] = fluid
                inserted[t:u, col] = True
        self.last_inserted = inserted
        out = lab.reshape(np.shape(label))
        return convert_to_dst_type(out, label, dtype=getattr(label, "dtype", None))[0]


class InsertDrusen(Transform):
    """Raise the RPE into drusen: smooth domes of the OS-RPE band over a flat Bruch's membrane.

    Druse ``i`` is a raised cosine of ``heights[i]`` rows at its apex (column ``columns[i]``) and ``widths[i]``
    columns at its base; overlapping drusen merge (the higher dome wins in each column). In a column lifted by
    ``s`` rows, the top of the OS-RPE band (7) moves up by ``s``, the ILM by ``inner_lift * s``, and the boundaries
    between move by a share interpolated between the two, so the layers above the druse are compressed, not torn
    (each keeps at least one row where it had one); Bruch's membrane (the top of the choroid, 8) and everything
    below stay. Fluid and unannotated pixels inside the lifted column move with the rows around them.

    The space under the raised RPE takes class 7 (OS-RPE): Duke DME has no drusen class, and drusen are
    hyper-reflective material between the RPE and Bruch's membrane, which on OCT merges with the bright RPE band;
    7 is the class whose appearance the image model has learned for it. A drusen-aware table would name its own id.

    Args:
        columns: apex columns of the drusen.
        heights: apex heights in rows (one for all, or one per druse).
        widths: base widths in columns (one for all, or one per druse).
        inner_lift: share in [0, 1) of the lift that reaches the ILM.
        table: the label table (or its name); its ``layer_order`` ends with OS-RPE and the choroid.

    Returns (``__call__``): the edited map, same shape, type and dtype as the input; ``last_inserted`` is then the
    ``(H, W)`` bool mask of the pixels that became OS-RPE (the raised band and the material under it).

    Raises:
        ValueError: for label ids outside the table, an apex column outside the image, a non-positive height or
            width, a druse at least as tall as the retina above the RPE at its apex, or one that would push the
            ILM above row 0.
    """

    def __init__(self, columns: Sequence[float], heights: float | Sequence[float] = 6,
                 widths: float | Sequence[float] = 40, inner_lift: float = 0.3,
                 table: LabelTable | str = DUKE_DME) -> None:
        self.table = get_label_table(table)
        if len(self.table.layer_order) < 3:
            raise ValueError(f"label table {self.table.name!r} has no layered retina to raise drusen in")
        self.columns = [float(c) for c in columns]
        n = len(self.columns)
        self.heights = [float(v) for v in np.broadcast_to(np.asarray(heights, dtype=float), (n,))]
        self.widths = [float(v) for v in np.broadcast_to(np.asarray(widths, dtype=float), (n,))]
        bad = [v for v in self.heights + self.widths if v <= 0]
        if bad:
            raise ValueError(f"drusen heights and widths must be positive, got {bad[0]}")
        if not 0.0 <= float(inner_lift) < 1.0:
            raise ValueError(f"inner_lift must be in [0, 1), got {inner_lift}")
        self.inner_lift = float(inner_lift)
        self.last_inserted: np.ndarray | None = None

    def lift(self, width: int) -> np.ndarray:
        """``(W,)`` rows each column's RPE is raised by: the highest of the drusen's raised cosines there."""
        x = np.arange(width, dtype=float)
        out = np.zeros(width)
        for c0, hgt, wid in zip(self.columns, self.heights, self.widths):
            d = np.abs(x - c0) / (wid / 2.0)
            out = np.maximum(out, np.where(d < 1, hgt * 0.5 * (1 + np.cos(np.pi * d)), 0.0))
        return out

    def __call__(self, label, where: str = "label"):
        """Raise the drusen in ``label`` (``(H, W)`` or ``(1, H, W)``); ``where`` names it in errors."""
        lab = as_2d_label(label, self.table, where)
        h, w = lab.shape
        for c0 in self.columns:
            if not 0 <= c0 < w:
                raise ValueError(f"{where}: druse column {c0:g} is outside the image (width {w})")
        bounds = boundaries_of(lab, self.table)               # (K, W); K - 1: Bruch's, K - 2: top of OS-RPE
        ilm, rpe = bounds[0], bounds[-2]
        for c0, hgt in zip(self.columns, self.heights):
            c = int(c0)
            if hgt >= rpe[c] - ilm[c]:
                raise ValueError(f"{where}: druse of height {hgt:g} at column {c} is taller than the retina above "
                                 f"the RPE there ({rpe[c] - ilm[c]:g} rows)")
            if ilm[c] - self.inner_lift * hgt < 0:
                raise ValueError(f"{where}: druse of height {hgt:g} at column {c} would push the ILM above row 0")
        s = self.lift(w)
        # boundary k (ILM .. top of OS-RPE) moves up by s * (inner_lift + (1 - inner_lift) * its depth share)
        inner = bounds[:-1]
        share = (inner - ilm) / np.maximum(rpe - ilm, 1e-9)
        new = inner - s[None] * (self.inner_lift + (1.0 - self.inner_lift) * share)
        old_rows = np.floor(inner)
        for k in range(new.shape[0] - 2, -1, -1):             # keep a row for every layer that had one
            had = old_rows[k + 1] > old_rows[k]
            new[k] = np.where(had, np.minimum(new[k], np.floor(new[k + 1]) - 1), np.minimum(new[k], new[k + 1]))
        new = np.maximum(new, 0.0)
        new_bounds = np.concatenate([new, bounds[-1:]], axis=0)
        out = lab.copy()
        layered = regions_from_boundaries(new_bounds, h).astype(np.int64)
        order = np.asarray(self.table.layer_order)
        y = np.arange(h, dtype=float)
        for c in np.nonzero(s > 0)[0]:
            # new row -> old row, piecewise linear through the boundaries (vitreous shifted rigidly, below Bruch's fixed)
            xp = np.r_[0.0, new_bounds[:, c], float(h)]
            fp = np.r_[inner[0, c] - new[0, c], bounds[:, c], float(h)]
            src = np.clip(np.round(np.interp(y, xp, fp)), 0, h - 1).astype(np.int64)
            moved = lab[src, c]
            keep = ~np.isin(moved, order)                       # fluid / unannotated ride along
            out[:, c] = np.where(keep, moved, order[layered[:, c]])
        rpe_id = self.table.layer_order[-2]
        self.last_inserted = (out == rpe_id) & (lab != rpe_id)
        res = out.reshape(np.shape(label))
        return convert_to_dst_type(res, label, dtype=getattr(label, "dtype", None))[0]


def _where(d: Mapping[Hashable, Any], key: Hashable) -> str:
    """What errors name for ``d[key]``: its file (MetaTensor ``filename_or_obj``) or the key."""
    meta = getattr(d[key], "meta", None) or {}
    return str(meta.get("filename_or_obj") or key)


class _EditLabeld(MapTransform):
    """Apply a label edit (``self.edit``) to ``keys`` and write the union of the pixels it set under ``inserted_key``."""

    edit: InsertFluid | InsertDrusen | None = None

    def __init__(self, keys: KeysCollection, inserted_key: str | None = "inserted",
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.inserted_key = inserted_key

    def _apply(self, d: dict) -> dict:
        mask = None
        for key in self.key_iterator(d):
            d[key] = self.edit(d[key], where=_where(d, key))
            one = self.edit.last_inserted.reshape(np.shape(d[key]))
            mask = one if mask is None else mask | one
        if self.inserted_key and mask is not None:
            d[self.inserted_key] = mask.astype(np.uint8)
        return d

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        return self._apply(dict(data))


class InsertFluidd(_EditLabeld):
    """Dictionary twin of :class:`InsertFluid`; ``d[inserted_key]`` is the uint8 mask of the pocket pixels.

    Args:
        keys: label map keys (each gets the same pockets).
        inserted_key: key of the mask (same shape as the label; None: not written).
        allow_missing_keys: don't raise for missing keys.
        kwargs: :class:`InsertFluid`'s arguments.
    """

    def __init__(self, keys: KeysCollection, inserted_key: str | None = "inserted", allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, inserted_key, allow_missing_keys)
        self.edit = InsertFluid(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "InsertFluidd":
        """Seed the shape jitter."""
        self.edit.set_random_state(seed, state)
        return self


class InsertDrusend(_EditLabeld):
    """Dictionary twin of :class:`InsertDrusen`; ``d[inserted_key]`` is the uint8 mask of the raised OS-RPE pixels.

    Args:
        keys: label map keys (each gets the same drusen).
        inserted_key: key of the mask (same shape as the label; None: not written).
        allow_missing_keys: don't raise for missing keys.
        kwargs: :class:`InsertDrusen`'s arguments.
    """

    def __init__(self, keys: KeysCollection, inserted_key: str | None = "inserted", allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, inserted_key, allow_missing_keys)
        self.edit = InsertDrusen(**kwargs)


def _range(value: float | Sequence[float], what: str) -> tuple[float, float]:
    """``(lo, hi)`` of a number or a pair; ValueError naming ``what`` for an empty or non-positive range."""
    lo, hi = (float(value), float(value)) if np.isscalar(value) else (float(value[0]), float(value[1]))
    if not 0 < lo <= hi:
        raise ValueError(f"{what} must be a positive number or a (low, high) pair with low <= high, got {value}")
    return lo, hi


class _RandEditLabeld(RandomizableTransform, _EditLabeld):
    """Random twin base: ``randomize(label)`` builds ``self.edit`` for one map, applied with probability ``prob``."""

    def __init__(self, keys: KeysCollection, count: int | Sequence[int], prob: float, inserted_key: str | None,
                 allow_missing_keys: bool) -> None:
        _EditLabeld.__init__(self, keys, inserted_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        lo, hi = _range(count, "count")
        if lo != int(lo) or hi != int(hi):
            raise ValueError(f"count must be whole numbers, got {count}")
        self.count = (int(lo), int(hi))

    def _draw_count(self) -> int:
        return int(self.R.randint(self.count[0], self.count[1] + 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        RandomizableTransform.randomize(self, None)
        first = next(iter(self.key_iterator(d)), None)
        if not self._do_transform or first is None:
            if self.inserted_key and first is not None:
                d[self.inserted_key] = np.zeros(np.shape(d[first]), dtype=np.uint8)
            return d
        self.randomize_edit(as_2d_label(d[first], self.table, _where(d, first)))
        return self._apply(d)


class RandInsertFluidd(_RandEditLabeld):
    """Insert ``num_pockets`` fluid pockets at random places of the fluid zone, with random sizes (seeded).

    A pocket's centre column is drawn among the columns whose fluid zone (see :func:`fluid_zone`) is at least
    ``min_zone`` rows tall, its centre row uniformly inside that zone, its height and width in the ranges; it is then
    inserted as by :class:`InsertFluid` (clipped to the zone). The pockets of one call come from ``self.R``, so the
    same seed gives the same maps.

    Args:
        keys: label map keys (the first one decides the placement; all get the same pockets).
        num_pockets: number of pockets, or a ``(low, high)`` range (inclusive).
        height_range: pocket height in pixels, or a ``(low, high)`` range.
        width_range: pocket width in pixels, or a ``(low, high)`` range.
        jitter: shape jitter of :class:`InsertFluid`.
        displace: see :class:`InsertFluid`.
        zone: top and bottom layer of the fluid zone.
        min_zone: least zone height (rows) of a column a pocket may be centred in.
        prob: probability of inserting anything (else the maps pass unchanged, with an empty mask).
        table: the label table (or its name).
        inserted_key: key of the uint8 mask of the pocket pixels (None: not written).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for empty ranges, or a map without any column whose zone is ``min_zone`` rows tall.
    """

    def __init__(self, keys: KeysCollection, num_pockets: int | Sequence[int] = (1, 3),
                 height_range: float | Sequence[float] = (6, 16), width_range: float | Sequence[float] = (12, 40),
                 jitter: float = 0.2, displace: float = 0.0, zone: tuple[str | int, str | int] = ("GCL-IPL", "ONL-ISM"),
                 min_zone: int = 4, prob: float = 1.0, table: LabelTable | str = DUKE_DME,
                 inserted_key: str | None = "inserted", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, num_pockets, prob, inserted_key, allow_missing_keys)
        self.table = get_label_table(table)
        self.height_range, self.width_range = _range(height_range, "height_range"), _range(width_range, "width_range")
        self.jitter, self.displace, self.zone, self.min_zone = float(jitter), float(displace), tuple(zone), int(min_zone)

    def randomize_edit(self, lab: np.ndarray) -> None:
        """Draw the pockets for the ``(H, W)`` map ``lab`` and build the :class:`InsertFluid` that inserts them."""
        top, bottom = fluid_zone(boundaries_of(lab, self.table), self.table, self.zone)
        ok = np.nonzero(bottom - top >= self.min_zone)[0]
        if ok.size == 0:
            raise ValueError(f"no column of the label map has a fluid zone of {self.min_zone} rows to place a pocket in")
        centres, sizes = [], []
        for _ in range(self._draw_count()):
            c = int(self.R.choice(ok))
            centres.append((float(self.R.randint(top[c], bottom[c])), float(c)))
            sizes.append((self.R.uniform(*self.height_range), self.R.uniform(*self.width_range)))
        self.edit = InsertFluid(centres=centres, size=sizes, jitter=self.jitter, displace=self.displace,
                                zone=self.zone, table=self.table)
        self.edit.set_random_state(state=self.R)


class RandInsertDrusend(_RandEditLabeld):
    """Raise ``count`` drusen at random columns with random heights and widths (seeded).

    Apex columns are drawn so that the whole dome lies in the image; a drawn height is capped at half the retina's
    thickness above the RPE at the apex (and at what keeps the ILM in the image), so every draw is a valid edit.

    Args:
        keys: label map keys (the first one decides the placement; all get the same drusen).
        count: number of drusen, or a ``(low, high)`` range (inclusive).
        height_range: apex height in rows, or a ``(low, high)`` range.
        width_range: base width in columns, or a ``(low, high)`` range.
        inner_lift: see :class:`InsertDrusen`.
        prob: probability of raising anything (else the maps pass unchanged, with an empty mask).
        table: the label table (or its name).
        inserted_key: key of the uint8 mask of the raised OS-RPE pixels (None: not written).
        allow_missing_keys: don't raise for missing keys.

    Raises:
        ValueError: for empty ranges, or a map narrower than the widest druse drawn.
    """

    def __init__(self, keys: KeysCollection, count: int | Sequence[int] = (1, 4),
                 height_range: float | Sequence[float] = (4, 10), width_range: float | Sequence[float] = (30, 70),
                 inner_lift: float = 0.3, prob: float = 1.0, table: LabelTable | str = DUKE_DME,
                 inserted_key: str | None = "inserted", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, count, prob, inserted_key, allow_missing_keys)
        self.table = get_label_table(table)
        self.height_range, self.width_range = _range(height_range, "height_range"), _range(width_range, "width_range")
        self.inner_lift = float(inner_lift)

    def randomize_edit(self, lab: np.ndarray) -> None:
        """Draw the drusen for the ``(H, W)`` map ``lab`` and build the :class:`InsertDrusen` that raises them."""
        bounds = boundaries_of(lab, self.table)
        w = lab.shape[1]
        cols, heights, widths = [], [], []
        for _ in range(self._draw_count()):
            wid = self.R.uniform(*self.width_range)
            if wid >= w:
                raise ValueError(f"a druse {wid:.0f} columns wide does not fit a label map {w} columns wide")
            c = int(self.R.randint(int(np.ceil(wid / 2)), int(w - wid / 2)))
            room = min(0.5 * (bounds[-2, c] - bounds[0, c]),
                       bounds[0, c] / self.inner_lift if self.inner_lift > 0 else np.inf)
            cols.append(float(c))
            heights.append(float(max(min(self.R.uniform(*self.height_range), room), 1e-3)))
            widths.append(wid)
        self.edit = InsertDrusen(columns=cols, heights=heights, widths=widths, inner_lift=self.inner_lift,
                                 table=self.table)
