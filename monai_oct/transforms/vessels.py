"""Artery/vein label maps of fundus photographs: the uncertain class resolved, and generated maps decoded to vessel trees.

- :class:`ResolveUncertain` (:class:`ResolveUncertaind`): the generative stages model four classes (background,
  artery, vein, crossing). An *uncertain* pixel (id 4 of :data:`~monai_oct.core.labels.FUNDUS_AV`: a vessel whose
  type the graders could not tell) is given the class of the **nearest artery, vein or crossing pixel** (Euclidean
  distance; a map without any becomes background there), so an uncertain stretch of a vessel stays vessel and keeps
  the tree connected instead of cutting it (mapping it to background would break the trees the mask model learns).
- :class:`VesselTreeDecode` (:class:`VesselTreeDecoded`): a sampled one-hot map (C channels in [-1, 1]) becomes
  class ids that form trees: the argmax, then every 8-connected vessel component that does not touch the optic disc
  is set to background (specks and fragments are not a vessel tree; the disc is where the vessels converge,
  :func:`estimate_disc_centre`, or a given centre), then every artery pixel 4-adjacent to a vein pixel becomes a
  crossing (an artery never touches a vein without one, as in the labels the model learnt). Its ``last_report``
  says how many pixels each step changed.

Written here because MONAI has no A/V-specific post-processing: MONAI's ``KeepLargestConnectedComponent`` keeps the
largest component(s) by size, not the ones that reach the disc, which is what makes a vessel map a tree.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_numpy
from scipy import ndimage

from monai_oct.core.geometry import connected_to, disc_mask, four_adjacent
from monai_oct.core.labels import FUNDUS_AV, UNANNOTATED, LabelTable, get_label_table

__all__ = ["ResolveUncertain", "ResolveUncertaind", "estimate_disc_centre", "VesselTreeDecode", "VesselTreeDecoded",
           "vessel_tree_total"]

#: the ids of :data:`~monai_oct.core.labels.FUNDUS_AV` the defaults below use (read from the table, not repeated)
ARTERY, VEIN, CROSSING = (FUNDUS_AV.group(g)[0] for g in ("artery", "vein", "crossing"))
UNCERTAIN = FUNDUS_AV.names.index("uncertain")


class ResolveUncertain(Transform):
    """Give each uncertain pixel the class of the nearest artery, vein or crossing pixel (see the module docstring).

    Args:
        uncertain: the id of the uncertain class (FUNDUS_AV: 4).
        known: the vessel ids an uncertain pixel may become (artery, vein, crossing).
        ignore_value: a value left as it is (outside the field of view, 255).

    ``__call__(label)``: ``(1, H, W)`` or ``(H, W)`` ids, numpy or torch; returns the same type and shape with no
    ``uncertain`` id left (background where the map has no ``known`` pixel at all).
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, uncertain: int = UNCERTAIN, known: Sequence[int] = (ARTERY, VEIN, CROSSING),
                 ignore_value: int = UNANNOTATED) -> None:
        self.uncertain, self.known, self.ignore_value = int(uncertain), [int(k) for k in known], int(ignore_value)

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:  # type: ignore[override]
        arr = convert_to_numpy(label).copy()
        lab = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr
        if lab.ndim != 2:
            raise ValueError(f"ResolveUncertain expects a (H, W) or (1, H, W) label map, got shape {tuple(arr.shape)}")
        todo = lab == self.uncertain
        if todo.any():
            source = np.isin(lab, self.known)
            if source.any():  # the index of the nearest known vessel pixel, for every pixel
                _, (rows, cols) = ndimage.distance_transform_edt(~source, return_indices=True)
                lab[todo] = lab[rows[todo], cols[todo]]
            else:
                lab[todo] = 0
        return convert_to_dst_type(arr, label, dtype=arr.dtype)[0]


class ResolveUncertaind(MapTransform):
    """Dictionary twin of :class:`ResolveUncertain`.

    Args:
        keys: the label maps.
        uncertain: the uncertain id.
        known: the ids it may become.
        allow_missing_keys: skip absent keys.
    """

    backend = ResolveUncertain.backend

    def __init__(self, keys: KeysCollection, uncertain: int = UNCERTAIN, known: Sequence[int] = (ARTERY, VEIN, CROSSING),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resolver = ResolveUncertain(uncertain, known)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resolver(d[key])
        return d


def estimate_disc_centre(label: np.ndarray, table: LabelTable = FUNDUS_AV, sigma: float = 0.06) -> tuple[float, float]:
    """The ``(row, col)`` where the vessels are densest: the optic disc, which every artery and vein leaves.

    Args:
        label: ``(H, W)`` ids.
        table: the label table (its ``vessel`` group).
        sigma: the Gaussian smoothing of the vessel mask, as a fraction of the shorter side (a disc diameter's scale).

    Returns:
        the centre; the middle of the map when it has no vessel.
    """
    lab = np.asarray(label)
    vessel = np.isin(lab, table.group("vessel")).astype(np.float64)
    if not vessel.any():
        return (lab.shape[0] - 1) / 2.0, (lab.shape[1] - 1) / 2.0
    density = ndimage.gaussian_filter(vessel, sigma=float(sigma) * min(lab.shape))
    r, c = np.unravel_index(int(np.argmax(density)), density.shape)
    return float(r), float(c)


class VesselTreeDecode(Transform):
    """Class scores of a sampled A/V map -> ids that form vessel trees (see the module docstring).

    Args:
        table: the label table (``vessel`` group, ``scored`` = artery and vein, ``crossing`` group).
        disc_radius: radius of the optic disc the trees must reach, as a fraction of the shorter side
            (the default of :func:`~monai_oct.metrics.fundus.vessel_connectivity`, 0.07).
        fov: ``(H, W)`` bool field of view: outside it the map is background.

    ``__call__(scores, disc_centre=None)``: ``(C, H, W)`` scores (one-hot in [-1, 1]) or ``(1, H, W)`` ids; returns
    ``(1, H, W)`` int64 ids (torch in, torch out). ``last_report`` holds ``{"disc_centre", "removed_pixels"
    (vessel pixels of components missing the disc, set to background), "kept_pixels" (vessel pixels kept),
    "crossing_pixels"}`` of the last call; ``kept / (kept + removed)`` is the sampled map's own connectivity.
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, table: LabelTable | str = FUNDUS_AV, disc_radius: float = 0.07,
                 fov: np.ndarray | None = None) -> None:
        self.table = get_label_table(table)
        self.disc_radius = float(disc_radius)
        self.fov = None if fov is None else np.asarray(fov, dtype=bool)
        self.artery, self.vein = (int(i) for i in self.table.scored)
        self.crossing = int(self.table.group("crossing")[0])
        self.last_report: dict[str, Any] = {}

    def __call__(self, scores: NdarrayOrTensor, disc_centre: Sequence[float] | None = None) -> NdarrayOrTensor:  # type: ignore[override]
        arr = convert_to_numpy(scores)
        if arr.ndim != 3:
            raise ValueError(f"VesselTreeDecode expects (C, H, W) scores or (1, H, W) ids, got shape {tuple(arr.shape)}")
        lab = arr.argmax(0) if arr.shape[0] > 1 else np.rint(arr[0]).astype(np.int64)
        if self.fov is not None:
            if self.fov.shape != lab.shape:
                raise ValueError(f"field of view {self.fov.shape} differs from the map's size {lab.shape}")
            lab[~self.fov] = 0
        centre = tuple(disc_centre) if disc_centre is not None else estimate_disc_centre(lab, self.table)
        vessel = np.isin(lab, self.table.group("vessel"))
        specks = vessel & ~connected_to(vessel, disc_mask(lab.shape, centre, self.disc_radius * min(lab.shape)))
        lab[specks] = 0
        touching = (lab == self.artery) & four_adjacent(lab == self.vein)
        lab[touching] = self.crossing
        self.last_report = {"disc_centre": [float(c) for c in centre], "removed_pixels": int(specks.sum()),
                            "kept_pixels": int((vessel & ~specks).sum()), "crossing_pixels": int(touching.sum())}
        return convert_to_dst_type(lab[None].astype(np.int64), scores, dtype=torch.int64 if isinstance(scores, torch.Tensor) else np.int64)[0]


def vessel_tree_total(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of :class:`VesselTreeDecode` reports: ``{"maps", "removed_pixels",
    "kept_pixels", "crossing_pixels", "connected_fraction"}``, the last ``kept / (kept + removed)`` over every map
    (the sampled maps' own connectivity to the disc, before the decoding removed the rest; None without vessels)."""
    reps = list(reports)
    total: dict[str, Any] = {"maps": len(reps)}
    for k in ("removed_pixels", "kept_pixels", "crossing_pixels"):
        total[k] = int(sum(int(r.get(k, 0)) for r in reps))
    pixels = total["removed_pixels"] + total["kept_pixels"]
    total["connected_fraction"] = total["kept_pixels"] / pixels if pixels else None
    return total


class VesselTreeDecoded(MapTransform):
    """Dictionary twin of :class:`VesselTreeDecode`: ``keys`` hold scores, replaced by ids.

    Args:
        keys: the sampled maps.
        table: the label table.
        disc_radius: the disc radius fraction.
        allow_missing_keys: skip absent keys.
    """

    backend = VesselTreeDecode.backend

    def __init__(self, keys: KeysCollection, table: LabelTable | str = FUNDUS_AV, disc_radius: float = 0.07,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoder = VesselTreeDecode(table, disc_radius)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.decoder(d[key])
        return d
