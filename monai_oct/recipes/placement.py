"""Pathology placement as a measurement (issue 18): edit label maps, then score what a teacher finds.

:func:`place_pathology` reads the label maps of a datalist (cropped to the synthesis band and resized as a synthesis
from ``--label_datalist`` reads them, :meth:`~monai_oct.recipes.sources.LabelBank.from_datalist`), applies
:class:`~monai_oct.transforms.pathology.RandInsertFluidd` or :class:`~monai_oct.transforms.pathology.RandInsertDrusend`
to item ``i`` seeded with :func:`~monai_oct.core.seeding.sample_seed` ``(seed, i)``, and writes atomically
(:mod:`monai_oct.core.io`)

- ``labels/<name>.png``: the edited maps (class ids), what the mask-conditioned model is asked to draw;
- ``inserted/<name>.png``: the pixels the edit set (0/1);
- ``before/<name>.png``: the pre-edit map's fluid (0/1), ignored when scoring inserted fluid;
- ``original/<name>.png``: the unedited maps at the same size (the control set's conditions);
- ``datalist.json`` and ``datalist_control.json`` (``{"training": [...]}``, absolute paths; every item has the
  ``image`` entry a synthesis datalist needs, the source item's image) and ``placement.json`` (settings, seeds and
  what each edit inserted).

:func:`inserted_fluid_dice` scores a teacher's prediction on the synthetic image against the inserted mask, and
:func:`layer_order_validity` checks that edited maps keep every column's layer order
(:func:`~monai_oct.metrics.plausibility.column_validity`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_oct.core.io import DataError, write_json, write_png
from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable, get_label_table
from monai_oct.core.seeding import sample_seed
from monai_oct.metrics.plausibility import column_validity
from monai_oct.recipes.items import resolve_items
from monai_oct.recipes.sources import LabelBank
from monai_oct.transforms.pathology import RandInsertDrusend, RandInsertFluidd

__all__ = ["EDITS", "place_pathology", "inserted_fluid_dice", "fluid_dice_summary", "layer_order_validity",
           "size_bin"]

#: The edits :func:`place_pathology` knows: name -> the random dictionary transform that makes it.
EDITS = {"fluid": RandInsertFluidd, "drusen": RandInsertDrusend}


def _pick(n_items: int, num: int | None) -> list[int]:
    """``num`` item indices spread evenly over ``n_items`` (all of them for None or ``num >= n_items``)."""
    if num is None or num >= n_items:
        return list(range(n_items))
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    return sorted({int(round(x)) for x in np.linspace(0, n_items - 1, num)})


def _data_error(exc: BaseException) -> BaseException:
    """The first :class:`DataError` ``exc`` was raised from (it names the file), else ``exc``."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, DataError):
        cause = cause.__cause__
    return cause or exc


def place_pathology(datalist: str | os.PathLike, out: str | os.PathLike, edit: str = "fluid", num: int | None = None,
                    seed: int = 0, band_height: int | None = 224, size: Sequence[int] = (224, 512),
                    dataset_dir: str | None = None, key: str | Sequence[str] | None = ("train", "training"),
                    table: LabelTable | str = DUKE_DME, **edit_args: Any) -> Path:
    """Edit the label maps of ``datalist`` and write them, their masks and the datalists (see the module docstring).

    Args:
        datalist: a labelled datalist (its ``label`` entries; relative datalist paths start at ``dataset_dir``).
        out: output folder.
        edit: ``"fluid"`` (:class:`RandInsertFluidd`) or ``"drusen"`` (:class:`RandInsertDrusend`).
        num: edit only this many items, spread evenly over the list (None: all).
        seed: item ``i`` (its position in the list) is edited with the stream ``sample_seed(seed, i)``.
        band_height: retina band rows cropped around the layers (located from the label) before resizing, as
            the synthesis' ``--band_height`` (None/0: the whole map).
        size: ``(H, W)`` the maps are resized to (nearest-exact), the synthesis' ``--label_size``.
        dataset_dir: folder a relative ``datalist`` path starts from.
        key: list name(s) of the datalist.
        table: label table of the maps.
        edit_args: arguments of the edit's transform (e.g. ``num_pockets``, ``height_range``, ``width_range``).

    Returns:
        the path of ``datalist.json``.

    Raises:
        ValueError: for an unknown ``edit`` or bad edit arguments.
        DataError: for an unreadable datalist or label file, duplicate file names, or a map the edit cannot be
            placed in (naming the label file).
    """
    if edit not in EDITS:
        raise ValueError(f"edit must be one of {sorted(EDITS)}, got {edit!r}")
    table = get_label_table(table)
    transform = EDITS[edit](keys="label", table=table, **edit_args)
    items_all = resolve_items(datalist, key, dataset_dir, require_label=True)
    chosen = _pick(len(items_all), num)
    sources = [items_all[i] for i in chosen]
    # the maps as a synthesis from --label_datalist reads them: band crop from the label, one nearest-exact resize
    try:
        bank = LabelBank.from_datalist(sources, image_size=list(size), band_height=band_height, table=table,
                                       label_size=list(size))
    except RuntimeError as e:  # MONAI's Compose wraps a reader's DataError ("applying transform ..."): say its message
        cause = _data_error(e)
        if cause is e:
            raise
        raise DataError(str(cause)) from e
    names = [Path(it["label"]).stem + ".png" for it in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{datalist}: several label files share the names {dup[:5]}; outputs would collide")
    out = Path(out).resolve()
    fluid = table.pathological[0] if table.pathological else None
    items, control, records = [], [], []
    for j, (i, name) in enumerate(zip(chosen, names)):
        before = bank.labels[j, 0].numpy().astype(np.uint8)
        transform.set_random_state(seed=sample_seed(seed, i) % 2**32)
        try:
            d = transform({"label": before.copy()})
        except ValueError as e:
            raise DataError(f"{sources[j]['label']}: cannot place {edit}: {e}") from e
        paths = {sub: out / sub / name for sub in ("labels", "inserted", "before", "original")}
        write_png(paths["original"], before)
        write_png(paths["before"], (before == fluid).astype(np.uint8) if fluid is not None else np.zeros_like(before))
        write_png(paths["inserted"], np.asarray(d["inserted"]).reshape(before.shape).astype(np.uint8))
        write_png(paths["labels"], np.asarray(d["label"]).reshape(before.shape).astype(np.uint8))
        src = {"image": str(Path(sources[j]["image"]).resolve()), "source_label": str(sources[j]["label"])}
        items.append({**src, "label": str(paths["labels"]), "inserted": str(paths["inserted"]),
                      "before": str(paths["before"])})
        control.append({**src, "label": str(paths["original"])})
        records.append({"name": name, "index": i, "seed": sample_seed(seed, i) % 2**32,
                        "inserted_pixels": int(np.asarray(d["inserted"]).sum())})
    write_json(out / "datalist_control.json", {"training": control})
    write_json(out / "placement.json", {"datalist": str(datalist), "edit": edit, "seed": seed, "band_height": band_height,
                                        "size": list(size), "edit_args": edit_args, "table": table.name, "items": records})
    return write_json(out / "datalist.json", {"training": items})


def inserted_fluid_dice(pred_label: np.ndarray, inserted: np.ndarray, before: np.ndarray | None = None,
                        fluid: int = 9, ignore: np.ndarray | None = None) -> float:
    """Dice between the predicted fluid and the inserted fluid, on the pixels that were not fluid before the edit.

    ``2 |P & I| / (|P| + |I|)`` with ``P`` the pixels predicted as ``fluid`` and ``I`` the inserted mask, both
    without the pixels of ``before`` (fluid the map already had: the teacher finding it says nothing about the
    placement) and of ``ignore`` (e.g. unannotated pixels of the edited map).

    Args:
        pred_label: the teacher's class-id map ``(H, W)`` (or ``(1, H, W)``).
        inserted: the inserted mask, same size (nonzero = inserted).
        before: the pre-edit fluid mask, same size (None: none).
        fluid: the fluid class id.
        ignore: further pixels left out, same size (None: none).

    Returns:
        the Dice in [0, 1]; NaN when nothing was inserted outside ``before`` (nothing to find).

    Raises:
        ValueError: when the masks' sizes differ from the prediction's.
    """
    pred = np.asarray(pred_label)
    pred = pred.reshape(pred.shape[-2:]) if pred.ndim == 3 and pred.shape[0] == 1 else pred
    masks = {"inserted": inserted, "before": before, "ignore": ignore}
    arrs = {}
    for k, m in masks.items():
        if m is None:
            arrs[k] = np.zeros(pred.shape, dtype=bool)
            continue
        m = np.asarray(m)
        if m.size != pred.size:
            raise ValueError(f"inserted_fluid_dice: {k} mask of shape {m.shape} does not match the prediction {pred.shape}")
        arrs[k] = m.reshape(pred.shape) != 0
    keep = ~(arrs["before"] | arrs["ignore"])
    p, i = (pred == fluid) & keep, arrs["inserted"] & keep
    if not i.any():
        return float("nan")
    return float(2.0 * (p & i).sum() / (p.sum() + i.sum()))


def size_bin(pixels: int, edges: Sequence[int] = (250, 750)) -> str:
    """The name of the size bin of an inserted region of ``pixels``: ``"<250"``, ``"250-750"``, ``">=750"``
    (for the default ``edges``)."""
    edges = list(edges)
    for k, e in enumerate(edges):
        if pixels < e:
            return f"<{e}" if k == 0 else f"{edges[k - 1]}-{e}"
    return f">={edges[-1]}"


def fluid_dice_summary(dice: Sequence[float], pixels: Sequence[int] | None = None,
                       edges: Sequence[int] = (250, 750)) -> dict[str, Any]:
    """Per-image Dice of :func:`inserted_fluid_dice` summarised: ``mean`` (over images with something inserted),
    ``found`` (fraction of those with Dice > 0), ``num_images``, and per size bin of ``pixels`` (inserted pixels per
    image, :func:`size_bin`) the same three."""
    d = np.asarray(dice, dtype=float)
    ok = ~np.isnan(d)

    def stats(sel: np.ndarray) -> dict[str, Any]:
        v = d[sel & ok]
        return {"num_images": int(v.size), "mean": float(v.mean()) if v.size else float("nan"),
                "found": float((v > 0).mean()) if v.size else float("nan")}

    out = {**stats(np.ones_like(ok)), "per_image": [float(x) for x in d]}
    if pixels is not None:
        bins = [size_bin(int(p), edges) for p in pixels]
        names = [size_bin(e - 1, edges) for e in edges] + [size_bin(edges[-1], edges)]
        out["bins"] = {b: stats(np.array([x == b for x in bins])) for b in names}
    return out


def layer_order_validity(labels: Sequence[np.ndarray], before: Sequence[np.ndarray] | None = None,
                         table: LabelTable = DUKE_DME) -> dict[str, Any]:
    """Layer order of (edited) label maps by :func:`~monai_oct.metrics.plausibility.column_validity`.

    Args:
        labels: ``(H, W)`` class-id maps.
        before: the same maps before the edit (optional): then also the share of the columns valid before that
            stay valid (what an edit must keep: 1.0).
        table: the label table.

    Returns:
        ``{"per_image": valid column fraction of each map, "mean", "all_valid": share of maps whose every checked
        column is valid, "invalid_columns": their total}``, and with ``before`` ``"before_mean"`` and ``"kept"``.
    """
    res: dict[str, Any] = {"per_image": [], "invalid_columns": 0}
    kept, valid_before, frac_before = 0, 0, []
    for k, lab in enumerate(labels):
        v = column_validity(lab, table, UNANNOTATED)
        ok = ~np.isnan(v)
        res["per_image"].append(float(v[ok].mean()) if ok.any() else float("nan"))
        res["invalid_columns"] += int((v[ok] == 0).sum())
        if before is not None:
            b = column_validity(before[k], table, UNANNOTATED)
            was = b == 1.0
            valid_before += int(was.sum())
            kept += int((was & (v == 1.0)).sum())
            frac_before.append(float(np.nanmean(b)))
    per = np.asarray(res["per_image"], dtype=float)
    res["mean"] = float(np.nanmean(per)) if per.size else float("nan")
    res["all_valid"] = float(np.mean(per == 1.0)) if per.size else float("nan")
    if before is not None:
        res["before_mean"] = float(np.mean(frac_before)) if frac_before else float("nan")
        res["kept"] = kept / valid_before if valid_before else float("nan")
    return res
