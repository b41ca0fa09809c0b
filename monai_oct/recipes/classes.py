"""Class-conditioned stages of the diffusion bundle: the training items with their classes, and the class of every
sample of a synthesis checked against the checkpoint (``train_classes.yaml``, ``synthesize_classes.yaml``)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from monai_oct.core.classes import CLASS_KEY, ClassTable, class_plan, get_class_table
from monai_oct.networks.checkpoint import model_info_path, read_model_info, trained_class_embeds
from monai_oct.recipes.items import resolve_items

__all__ = ["class_items", "synthesis_classes", "planned_samples"]


def class_items(table: ClassTable | str, source: Any = None, key: str | Sequence[str] | None = None,
                dataset_dir: str | os.PathLike | None = None, require_label: bool = False,
                fields: Sequence[str] = ("image", "label")) -> list[dict[str, Any]]:
    """The items of a training run (:func:`~monai_oct.recipes.items.resolve_items`) with their class id under
    ``"class_id"`` (:meth:`ClassTable.label_items`: the item's ``class`` field, else the table's file-name rules).

    Args:
        table: the class table.
        source, key, dataset_dir, require_label: as :func:`resolve_items`.
        fields: the item fields kept besides ``class`` (what the stage's transforms read).

    Returns:
        the items, each with ``"class_id"``.

    Raises:
        DataError: as :func:`resolve_items`, or naming the first item whose class is unknown or not found.
    """
    items = resolve_items(source, key, dataset_dir, require_label=require_label, fields=[*fields, CLASS_KEY])
    return get_class_table(table).label_items(items)


def planned_samples(class_samples: Mapping[str, int] | None, default: int = 1000) -> int:
    """The size of a synthesis of ``class_samples`` (``{class name: count}``): the counts' sum, else ``default``."""
    return sum(int(v) for v in dict(class_samples).values()) if class_samples else int(default)


def synthesis_classes(table: ClassTable | str, class_name: str | int | None, class_samples: Mapping[str, int] | None,
                      num_samples: int, image_ckpt: str | os.PathLike | None) -> list[int] | None:
    """The class id of every sample (:func:`~monai_oct.core.classes.class_plan`), checked against the weights.

    Args:
        table: the class table the image UNet was trained on.
        class_name: every sample of this class (wins over ``class_samples``).
        class_samples: ``{class name: count}``.
        num_samples: the set's size.
        image_ckpt: the image UNet's weights.

    Returns:
        one id per sample, or None when no class is requested (classes then come from the label datalist's items).

    Raises:
        ValueError: for an unknown class, counts that do not sum to ``num_samples``, weights trained without
            classes (names the checkpoint), with another number of classes than the table, or (their ``model.json``
            records ``classes``) with other class names.
    """
    table = get_class_table(table)
    plan = class_plan(table, class_name, class_samples, num_samples)
    trained = trained_class_embeds(image_ckpt)
    if plan is not None and trained is None:
        asked = f"--class_name {class_name}" if class_name is not None else f"class_samples {dict(class_samples or {})}"
        raise ValueError(f"{image_ckpt}: trained without classes (its weights have no class_embedding), so it cannot "
                         f"draw {asked}; train the image UNet with train_classes.yaml, or synthesize without classes "
                         "(synthesize.yaml)")
    if trained is not None and trained != table.num_class_embeds:
        raise ValueError(f"{image_ckpt}: trained with {trained} class embeddings, the class table {table.name!r} "
                         f"({table.names}) needs {table.num_class_embeds} (its classes + the null class)")
    names = read_model_info(image_ckpt).get("classes") if trained is not None else None
    if names is not None and list(names) != table.names:
        raise ValueError(f"{image_ckpt}: trained on the classes {list(names)} ({model_info_path(image_ckpt)}), the class "
                         f"table {table.name!r} has {table.names}: ids would mean other classes")
    return plan
