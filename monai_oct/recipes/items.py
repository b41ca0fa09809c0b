"""Where the items of a run come from: one resolver for every bundle stage, the command line and the benchmarks.

:func:`resolve_items` turns what a user names into absolute datalist items (``{"image", "label"?, ...}``):

- a datalist JSON (Decathlon style; paths inside it start at its folder);
- a dataset folder: its ``datalist_<split>.json`` (the Duke layout) or ``datalist.json`` (the phantom / synthetic
  layout), else the images of its ``images/`` subfolder (labels from a ``labels/`` twin with the same file
  names, where present), else the images in the folder itself (unlabelled);
- a single image file (one unlabelled item);
- a list of any of these (e.g. Duke's train datalist plus ``hcms_unlabeled/`` for stage 1, or a real and a
  synthetic datalist to mix), each item tagged ``"source": k`` with its entry's position, which
  :class:`~monai_oct.recipes.mixing.RatioSampler` groups by;
- a list of item dicts (e.g. what MONAI Label passes in), taken as given.

A relative path is looked up under ``dataset_dir`` first, then in the working directory (as a shell user means
it). Every error is a :class:`~monai_oct.core.io.DataError` that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from monai_oct.core.datalist import image_folder_datalist, load_datalist
from monai_oct.core.io import IMAGE_EXTENSIONS, DataError, read_json

__all__ = ["resolve_items", "find_datalist"]

_Source = str | os.PathLike


def find_datalist(dataset_dir: _Source, split: str = "train") -> str:
    """``dataset_dir/datalist_<split>.json`` if present (the Duke layout), else ``dataset_dir/datalist.json``
    (the phantom / synthetic layout); when neither exists, the first (so that an error names it).

    Args:
        dataset_dir: the dataset folder.
        split: which split's datalist to prefer (``"train"``, ``"val"``, ``"test"``).

    Returns:
        an absolute path, so that it does not depend on how a later step resolves relative paths.
    """
    d = Path(dataset_dir).absolute()
    for name in (f"datalist_{split}.json", "datalist.json"):
        if (d / name).is_file():
            return str(d / name)
    return str(d / f"datalist_{split}.json")


def _list_key(path: Path, key: str | Sequence[str] | None) -> str | None:
    """The list of the datalist at ``path`` to read: ``key`` itself, the first of several candidate names that the
    file has, the file's only list, or None (:func:`~monai_oct.core.datalist.load_datalist`'s default)."""
    if key is None or isinstance(key, str):
        return key
    data = read_json(path, "datalist")
    if not isinstance(data, dict):
        return None
    lists = [k for k, v in data.items() if isinstance(v, list)]
    for k in key:
        if k in lists:
            return k
    if len(lists) == 1:
        return lists[0]
    raise DataError(f"{path}: none of the lists {list(key)} found (has {sorted(lists)}); choose one with a key override")


def _locate(entry: _Source, dataset_dir: _Source | None) -> Path:
    """``entry`` as an absolute path: under ``dataset_dir`` when it is relative and exists there, else from the
    working directory."""
    p = Path(entry)
    if not p.is_absolute() and dataset_dir is not None and (Path(dataset_dir) / p).exists():
        p = Path(dataset_dir) / p
    if not p.exists():
        where = f" (nor under {Path(dataset_dir).absolute()})" if dataset_dir is not None and not Path(entry).is_absolute() else ""
        raise DataError(f"{p.absolute()}: not found{where}; expected a datalist JSON, a dataset folder or an image file")
    return p.absolute()


def _folder_items(folder: Path, key: str | Sequence[str] | None, split: str) -> tuple[list[dict[str, Any]], Path]:
    """The items of a dataset folder and the file or folder they came from."""
    dl = Path(find_datalist(folder, split))
    if dl.is_file():
        return load_datalist(dl, key=_list_key(dl, key)), dl
    images = folder / "images"
    if not images.is_dir():
        return image_folder_datalist(folder, IMAGE_EXTENSIONS), folder
    items = image_folder_datalist(images, IMAGE_EXTENSIONS)
    labels = folder / "labels"
    if labels.is_dir():
        for it in items:
            lab = labels / Path(it["image"]).name
            if lab.is_file():
                it["label"] = str(lab)
    return items, images


def _entry_items(entry: _Source, key: str | Sequence[str] | None, dataset_dir: _Source | None,
                 split: str) -> tuple[list[dict[str, Any]], Path]:
    p = _locate(entry, dataset_dir)
    if p.is_dir():
        return _folder_items(p, key, split)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return [{"image": str(p)}], p
    return load_datalist(p, key=_list_key(p, key)), p


def resolve_items(source: _Source | Sequence[_Source] | Sequence[dict[str, Any]] | None = None,
                  key: str | Sequence[str] | None = None, dataset_dir: _Source | None = None,
                  require_label: bool = False, split: str = "train",
                  fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The items of a run, from a datalist, a list of datalists, a dataset folder or a single image.

    Args:
        source: a datalist JSON, a dataset folder, an image file, a list of these (each item is tagged
            ``"source": k``, k its entry's position), or a list of item dicts (returned as given, checked).
            None: the dataset folder ``dataset_dir``.
        key: the list to read in each datalist: a name, candidate names (the first present wins; a file with a
            single list uses it), or None (``"train"`` or the only list).
        dataset_dir: folder relative entries start from (then the working directory); the dataset folder when
            ``source`` is None.
        require_label: every item must have a ``label`` (training on label maps).
        split: which ``datalist_<split>.json`` a dataset folder is read from (before its ``datalist.json``).
        fields: keep only these keys of each item (None: all).

    Returns:
        items with absolute ``image`` (and ``label``) paths, in the order of the sources.

    Raises:
        DataError: a missing source, a datalist that is empty, invalid or lacks ``key``, a folder without images,
            items without ``image``, or, with ``require_label``, an item without ``label``; each names the file.
    """
    if source is None or (isinstance(source, str) and not source.strip()):
        if dataset_dir is None:
            raise DataError("no items: give a datalist, a dataset folder or an image (--datalist / --dataset_dir)")
        source = dataset_dir
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    entries = list(source)
    if not entries:
        raise DataError("no items: the list of datalists / items is empty")
    items: list[dict[str, Any]] = []
    if all(isinstance(e, dict) for e in entries):
        for i, it in enumerate(entries):
            if "image" not in it:
                raise DataError(f"item {i} has no 'image' entry: {it!r}")
        items, wheres = [dict(it) for it in entries], ["<items>"] * len(entries)
    else:
        wheres = []
        for k, entry in enumerate(entries):
            if isinstance(entry, dict):
                raise DataError(f"entry {k} of {entries!r}: mix of paths and item dicts; give one kind")
            found, where = _entry_items(entry, key, dataset_dir, split)
            items += [{**it, "source": k} for it in found]
            wheres += [str(where)] * len(found)
    if require_label:
        missing = [(w, it["image"]) for w, it in zip(wheres, items) if not it.get("label")]
        if missing:
            raise DataError(f"{missing[0][0]}: {len(missing)} item(s) have no 'label' (label maps are needed here), "
                            f"e.g. {missing[0][1]}")
    if fields is not None:
        items = [{k: v for k, v in it.items() if k in fields} for it in items]
    return items
