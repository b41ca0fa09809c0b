"""Label tables as data: class ids, names, groupings and which classes are pathological.

A :class:`LabelTable` is the single place where a dataset's class ids are described. Everything that
needs to know "how many classes", "which ids are fluid" or "what does RetiDiff call NFL-IPL" reads it
from a table instead of hard-coding ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["LabelTable", "DUKE_DME", "RETIDIFF_GROUPS", "UNANNOTATED", "get_label_table"]

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
            in this order (pathological classes excepted).

    Raises:
        ValueError: when ids are not ``0 .. C-1`` or a group/pathology names an unknown id.
    """

    name: str
    classes: Mapping[int, str]
    groups: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    pathological: tuple[int, ...] = ()
    background: tuple[int, ...] = ()
    layer_order: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        ids = sorted(self.classes)
        if ids != list(range(len(ids))):
            raise ValueError(f"label table {self.name!r}: class ids must be 0..C-1, got {ids}")
        for where, members in [("pathological", self.pathological), ("background", self.background),
                               ("layer_order", self.layer_order), *self.groups.items()]:
            bad = [i for i in members if i not in self.classes]
            if bad:
                raise ValueError(f"label table {self.name!r}: {where} names unknown class ids {bad}")

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

_TABLES = {"duke_dme": DUKE_DME}


def get_label_table(name: str | LabelTable) -> LabelTable:
    """Return a registered table by name (``"duke_dme"``), or the table itself.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    if isinstance(name, LabelTable):
        return name
    try:
        return _TABLES[name]
    except KeyError:
        raise KeyError(f"unknown label table {name!r}; known: {sorted(_TABLES)}") from None


