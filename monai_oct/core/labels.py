"""Label tables as data: class ids, names, colours, groupings and the roles classes play in a modality.

A :class:`LabelTable` is the single place where a dataset's class ids are described. Everything that
needs to know "how many classes", "which ids are fluid", "what does RetiDiff call NFL-IPL" or "which ids
are vessels" reads it from a table instead of hard-coding ids. Two tables are registered: the OCT layers of
Duke DME (:data:`DUKE_DME`) and the artery/vein classes of fundus photographs (:data:`FUNDUS_AV`, DRIVE with
RITE labels). The OCT-only fields (``pathological``, ``layer_order``) are empty for a table without layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["LabelTable", "DUKE_DME", "FUNDUS_AV", "RETIDIFF_GROUPS", "UNANNOTATED", "get_label_table"]

#: Value written into a label map for pixels without annotation (e.g. Duke columns whose boundaries
#: are NaN). Losses and metrics ignore it; it is never a class id.
UNANNOTATED = 255


@dataclass(frozen=True)
class LabelTable:
    """Class ids of one dataset with their names and groupings.

    Args:
        name: short name of the table (``"duke_dme"``).
        classes: ordered mapping ``id -> name``; ids must be ``0 .. C-1``.
        groups: named groups of class ids used for reporting (e.g. RetiDiff's NFL-IPL = {1, 2}).
        pathological: ids of pathological classes (fluid); these are the classes Dynamic Region
            Masking perturbs and that may appear anywhere inside the retina.
        background: ids of the non-retinal background classes (vitreous, choroid).
        layer_order: class ids of the layered anatomy from top to bottom; a valid column visits them
            in this order (pathological classes excepted). OCT only; empty for other modalities.
        scored: the classes a classification metric tells apart on the pixels whose truth is one of them
            (fundus: artery and vein for the A/V accuracy; crossing and uncertain pixels are not scored).
        colours: ``id -> (R, G, B)`` in 0..255 for pictures; empty: pictures use their default palette.

    Raises:
        ValueError: when ids are not ``0 .. C-1``, a group/role names an unknown id, or a colour is not
            three values in 0..255 of a known id.
    """

    name: str
    classes: Mapping[int, str]
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    pathological: tuple[int, ...] = ()
    background: tuple[int, ...] = ()
    layer_order: tuple[int, ...] = ()
    scored: tuple[int, ...] = ()
    colours: Mapping[int, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = sorted(self.classes)
        if ids != list(range(len(ids))):
            raise ValueError(f"label table {self.name!r}: class ids must be 0..C-1, got {ids}")
        for where, members in [("pathological", self.pathological), ("background", self.background),
                               ("layer_order", self.layer_order), ("scored", self.scored),
                               ("colours", tuple(self.colours)), *self.groups.items()]:
            bad = [i for i in members if i not in self.classes]
            if bad:
                raise ValueError(f"label table {self.name!r}: {where} names unknown class ids {bad}")
        bad_colours = {i: c for i, c in self.colours.items() if len(c) != 3 or not all(0 <= v <= 255 for v in c)}
        if bad_colours:
            raise ValueError(f"label table {self.name!r}: colours must be (R, G, B) in 0..255, got {bad_colours}")

    @property
    def num_classes(self) -> int:
        """Number of classes C (ids 0..C-1)."""
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [self.classes[i] for i in range(self.num_classes)]

    @property
    def foreground(self) -> tuple[int, ...]:
        """Ids that are not background (retinal layers and pathology)."""
        return tuple(i for i in range(self.num_classes) if i not in self.background)

    def group(self, name: str) -> tuple[int, ...]:
        """The class ids of group ``name`` (``FUNDUS_AV.group("vessel")`` is ``(1, 2, 3, 4)``).

        Raises:
            KeyError: for a group the table does not have, listing those it has.
        """
        try:
            return tuple(self.groups[name])
        except KeyError:
            raise KeyError(f"label table {self.name!r} has no group {name!r}; groups: {sorted(self.groups)}") from None

    @property
    def palette(self) -> np.ndarray:
        """``(C, 3)`` uint8 colours in id order (black for an id without a colour)."""
        out = np.zeros((self.num_classes, 3), dtype=np.uint8)
        for i, c in self.colours.items():
            out[i] = c
        return out

    def validate_ids(self, label: np.ndarray, where: str = "label", allow_unannotated: bool = True) -> None:
        """Raise if ``label`` holds ids outside the table.

        Args:
            label: integer label map.
            where: what to name in the error message (usually the file path).
            allow_unannotated: accept :data:`UNANNOTATED` as a marker of unannotated pixels.

        Raises:
            ValueError: naming ``where`` and the offending ids.
        """
        ids = np.unique(np.asarray(label))
        bad = [int(i) for i in ids if not (0 <= i < self.num_classes) and not (allow_unannotated and i == UNANNOTATED)]
        if bad:
            raise ValueError(
                f"{where}: label ids {bad} are outside the {self.name} table (valid: 0..{self.num_classes - 1}"
                + (f", {UNANNOTATED} = unannotated" if allow_unannotated else "") + ")"
            )


#: RetiDiff's reporting groups on Duke DME.
RETIDIFF_GROUPS: dict[str, tuple[int, ...]] = {"NFL-IPL": (1, 2), "ONL-ISM": (5,), "IRF": (9,)}

#: Duke DME (Chiu et al. 2015): 8 annotated boundaries give 9 regions, plus fluid.
DUKE_DME = LabelTable(
    name="duke_dme",
    classes={
        0: "vitreous",
        1: "NFL",
        2: "GCL-IPL",
        3: "INL",
        4: "OPL",
        5: "ONL-ISM",
        6: "ISE",
        7: "OS-RPE",
        8: "choroid",
        9: "fluid",
    },
    groups=RETIDIFF_GROUPS,
    pathological=(9,),
    background=(0, 8),
    layer_order=(0, 1, 2, 3, 4, 5, 6, 7, 8),
)

#: Fundus photographs with artery/vein labels (DRIVE images, RITE labels; Hu et al. 2013): 0 background, 1 artery,
#: 2 vein, 3 crossing (an artery and a vein overlap), 4 uncertain (a vessel whose type the graders could not tell).
#: Every id but 0 is vessel; the A/V accuracy scores artery vs vein on the pixels whose truth is 1 or 2 (``scored``).
#: Pixels outside the field of view are set to :data:`UNANNOTATED` by ``MaskOutsideFOV`` and never scored.
#: Colours as the RITE label pictures: artery red, vein blue, crossing green, uncertain white.
FUNDUS_AV = LabelTable(
    name="fundus_av",
    classes={0: "background", 1: "artery", 2: "vein", 3: "crossing", 4: "uncertain"},
    groups={"vessel": (1, 2, 3, 4), "artery": (1,), "vein": (2,), "crossing": (3,)},
    background=(0,),
    scored=(1, 2),
    colours={0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255), 3: (0, 255, 0), 4: (255, 255, 255)},
)

_TABLES = {"duke_dme": DUKE_DME, "fundus_av": FUNDUS_AV}


def get_label_table(name: str | LabelTable) -> LabelTable:
    """Return a registered table by name (``"duke_dme"``, ``"fundus_av"``), or the table itself.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    if isinstance(name, LabelTable):
        return name
    try:
        return _TABLES[name]
    except KeyError:
        raise KeyError(f"unknown label table {name!r}; known: {sorted(_TABLES)}") from None


