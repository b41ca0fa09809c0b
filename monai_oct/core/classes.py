"""Image-level class tables as data: which pathology (or scanner, or any per-scan category) a B-scan shows.

A :class:`ClassTable` names the classes a class-conditioned diffusion UNet is trained on (``num_class_embeds =
len(table) + 1``: the extra, last id is the "no class" token of condition dropout and classifier-free guidance,
:attr:`ClassTable.null_id`) and says how a datalist item gets its class:

1. the item's ``class`` field when present (a name of the table, or its id);
2. else the first of the table's ``rules`` whose file-name pattern (``fnmatch``, case-sensitive, on the base name
   of the item's ``image``) matches: e.g. Duke DME's ``Subject_*`` -> DME, HCMS's ``hc01_*`` -> healthy and
   ``ms01_*`` -> MS;
3. else an error naming the item's file and the known classes.

A new dataset is a new rule or a ``class`` field in its datalist, not a code path.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from monai_oct.core.io import DataError

__all__ = ["ClassTable", "OCT_PATHOLOGY", "get_class_table", "class_plan", "CLASS_KEY", "CLASS_ID_KEY"]

#: The datalist field that names an item's class (a name of the table or its id).
CLASS_KEY = "class"
#: The item key :meth:`ClassTable.label_items` writes the class id under (what the trainer reads).
CLASS_ID_KEY = "class_id"


@dataclass(frozen=True)
class ClassTable:
    """Image-level classes with names and the file-name rules that give a datalist item its class.

    Args:
        name: short name of the table (``"oct_pathology"``).
        classes: ordered mapping ``id -> name``; ids must be ``0 .. K-1``, names unique.
        rules: ``(file-name pattern, class name)`` pairs tried in order on the base name of an item's ``image``
            when the item has no ``class`` field.

    Raises:
        ValueError: when ids are not ``0 .. K-1``, names repeat, or a rule names an unknown class.
    """

    name: str
    classes: Mapping[int, str]
    rules: Sequence[tuple[str, str]] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ids = sorted(self.classes)
        if ids != list(range(len(ids))) or not ids:
            raise ValueError(f"class table {self.name!r}: class ids must be 0..K-1 (K >= 1), got {ids}")
        names = [self.classes[i] for i in ids]
        if len(set(names)) != len(names):
            raise ValueError(f"class table {self.name!r}: class names must be unique, got {names}")
        bad = [r for r in self.rules if r[1] not in names]
        if bad:
            raise ValueError(f"class table {self.name!r}: rules {bad} name classes outside {names}")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [self.classes[i] for i in range(len(self))]

    @property
    def null_id(self) -> int:
        """The "no class" id (``len(table)``): condition dropout's token, the unconditional half of guidance."""
        return len(self)

    @property
    def num_class_embeds(self) -> int:
        """``len(table) + 1``: the class embeddings of a UNet trained on this table (the null id included)."""
        return len(self) + 1

    def _known(self) -> str:
        return ", ".join(f"{i} {n}" for i, n in self.classes.items())

    def id_of(self, value: str | int, where: str = "class") -> int:
        """The id of a class given by name or id (``"DME"``, ``1`` or ``"1"``).

        Raises:
            ValueError: naming ``where``, the value and the known classes.
        """
        if isinstance(value, str) and value in self.names:
            return self.names.index(value)
        try:
            i = int(value)
        except (TypeError, ValueError):
            i = None
        if i is None or isinstance(value, bool) or not 0 <= i < len(self) or (isinstance(value, float) and value != i):
            raise ValueError(f"{where}: unknown class {value!r} of table {self.name!r}; known: {self._known()}")
        return i

    def class_of(self, item: Mapping[str, Any]) -> int:
        """The class id of a datalist item: its ``class`` field, else the first matching file-name rule.

        Raises:
            DataError: naming the item's file when its ``class`` is unknown or no rule matches (lists the
                known classes and the rules).
        """
        where = str(item.get("image", item))
        if item.get(CLASS_KEY) is not None:
            try:
                return self.id_of(item[CLASS_KEY], where)
            except ValueError as e:
                raise DataError(str(e)) from None
        base = os.path.basename(where)
        for pattern, name in self.rules:
            if fnmatch.fnmatchcase(base, pattern):
                return self.names.index(name)
        rules = ", ".join(f"{p} -> {n}" for p, n in self.rules) or "none"
        raise DataError(f"{where}: no class for this item: it has no {CLASS_KEY!r} field and its file name matches no "
                        f"rule of table {self.name!r} (rules: {rules}); add \"{CLASS_KEY}\": one of {self.names} "
                        "to its datalist entry")

    def label_items(self, items: Sequence[Mapping[str, Any]], key: str = CLASS_ID_KEY) -> list[dict[str, Any]]:
        """Copies of ``items`` with their class id under ``key`` (every item is looked up before any is returned).

        Raises:
            DataError: as :meth:`class_of`, for the first item without a class.
        """
        return [{**it, key: self.class_of(it)} for it in items]


#: Pathology of a retinal OCT B-scan: Duke DME's scans (``Subject_NN_*``) show diabetic macular edema; the HCMS
#: Spectralis set holds a healthy control (``hc01_*``) and a multiple-sclerosis patient (``ms01_*``).
OCT_PATHOLOGY = ClassTable(
    "oct_pathology", {0: "healthy", 1: "DME", 2: "MS"},
    rules=(("Subject_*", "DME"), ("hc01_*", "healthy"), ("ms01_*", "MS")),
)

_TABLES = {"oct_pathology": OCT_PATHOLOGY}


def get_class_table(name: str | ClassTable) -> ClassTable:
    """A registered class table by name (``"oct_pathology"``), or the table itself.

    Raises:
        KeyError: for an unknown name, listing the known ones.
    """
    if isinstance(name, ClassTable):
        return name
    try:
        return _TABLES[name]
    except KeyError:
        raise KeyError(f"unknown class table {name!r}; known: {sorted(_TABLES)}") from None


def class_plan(table: ClassTable | str, class_name: str | int | None = None,
               class_samples: Mapping[str, int] | None = None, num_samples: int | None = None) -> list[int] | None:
    """The class id of every sample of a synthesis: one requested class, or a count per class.

    Args:
        table: the class table.
        class_name: every sample of this class (needs ``num_samples``); when given, ``class_samples`` is not used
            (so a config's default counts give way to a ``--class_name`` on the command line).
        class_samples: ``{class name: count}``: the first ``count`` samples of the first class, then the next
            class's, in the mapping's order (``num_samples`` is their sum).
        num_samples: the set's size with ``class_name``; with ``class_samples`` it must be None or the sum.

    Returns:
        one id per sample, or None when neither is given (the classes then come from the label source, or
        the null class).

    Raises:
        ValueError: for an unknown class (names it and the known ones), a negative count, or a ``num_samples``
            that differs from the counts' sum.
    """
    table = get_class_table(table)
    if class_name is not None:
        if num_samples is None:
            raise ValueError("class_name needs num_samples")
        return [table.id_of(class_name, "class_name")] * int(num_samples)
    if not class_samples:
        return None
    plan: list[int] = []
    for name, count in dict(class_samples).items():
        if int(count) < 0:
            raise ValueError(f"class_samples: count {count} of class {name!r} is negative")
        plan += [table.id_of(name, "class_samples")] * int(count)
    if num_samples is not None and int(num_samples) != len(plan):
        raise ValueError(f"class_samples {dict(class_samples)} sum to {len(plan)} samples, num_samples is {num_samples}")
    return plan
