"""``monai_oct.recipes.items.resolve_items``: every kind of source a user can name, and every error naming its file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from monai_oct.core.io import DataError, write_png
from monai_oct.recipes.items import find_datalist, resolve_items


def _pngs(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        write_png(folder / n, np.zeros((4, 6), np.uint8))
    return [folder / n for n in names]


def _datalist(path: Path, lists: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(lists))
    return path


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Duke layout: images/, labels/, datalist_train.json (3 labelled), datalist_val.json (1)."""
    d = tmp_path / "duke"
    _pngs(d / "images", ["a.png", "b.png", "c.png", "v.png"])
    _pngs(d / "labels", ["a.png", "b.png", "c.png", "v.png"])
    _datalist(d / "datalist_train.json", {"train": [{"image": f"images/{n}.png", "label": f"labels/{n}.png"} for n in "abc"]})
    _datalist(d / "datalist_val.json", {"val": [{"image": "images/v.png", "label": "labels/v.png"}]})
    return d


def test_a_datalist_gives_absolute_items_tagged_source_0(dataset):
    items = resolve_items(dataset / "datalist_train.json")
    assert [Path(it["image"]).name for it in items] == ["a.png", "b.png", "c.png"]
    assert all(Path(it["image"]).is_absolute() and Path(it["label"]).is_file() and it["source"] == 0 for it in items)


def test_candidate_keys_pick_the_first_list_present(dataset):
    assert len(resolve_items(dataset / "datalist_val.json", key=["test", "validation", "val"])) == 1
    _datalist(dataset / "two.json", {"a": [{"image": "images/a.png"}], "b": [{"image": "images/b.png"}]})
    with pytest.raises(DataError, match=r"two\.json: none of the lists \['x', 'y'\]"):
        resolve_items(dataset / "two.json", key=["x", "y"])
    assert resolve_items(dataset / "two.json", key="b")[0]["image"] == str(dataset / "images" / "b.png")


def test_a_list_of_datalists_tags_each_source(dataset, tmp_path):
    synth = _datalist(tmp_path / "synth" / "datalist.json", {"training": [{"image": "x.png", "label": "y.png"}] * 2})
    items = resolve_items([str(dataset / "datalist_train.json"), synth], key=["train", "training"])
    assert [it["source"] for it in items] == [0, 0, 0, 1, 1]
    assert items[-1]["image"] == str(tmp_path / "synth" / "x.png")


def test_relative_entries_start_at_dataset_dir_then_the_working_directory(dataset, tmp_path, monkeypatch):
    assert len(resolve_items("datalist_train.json", dataset_dir=dataset)) == 3
    monkeypatch.chdir(tmp_path)
    assert len(resolve_items("duke/datalist_val.json", key="val", dataset_dir=dataset)) == 1  # not under dataset_dir


def test_a_dataset_folder_reads_its_split_datalist(dataset):
    assert len(resolve_items(dataset)) == 3
    assert len(resolve_items(None, key="val", dataset_dir=dataset, split="val")) == 1
    assert find_datalist(dataset, "val") == str(dataset / "datalist_val.json")
    assert find_datalist(dataset, "test") == str(dataset / "datalist_test.json")  # missing: the name an error gives


def test_a_folder_with_datalist_json(phantom_dir):
    items = resolve_items(phantom_dir, split="val", key=["validation", "val"])
    assert len(items) == 3 and all("label" in it for it in items)
    assert len(resolve_items(phantom_dir, require_label=True)) == 9


def test_a_folder_without_datalist_uses_images_and_their_labels_twin(tmp_path):
    d = tmp_path / "set"
    _pngs(d / "images", ["a.png", "b.png"])
    _pngs(d / "labels", ["a.png"])
    items = resolve_items(d)
    assert items[0]["label"] == str(d / "labels" / "a.png") and "label" not in items[1]
    with pytest.raises(DataError, match=r"set/images: 1 item\(s\) have no 'label'.*b\.png"):
        resolve_items(d, require_label=True)


def test_a_plain_image_folder_and_a_single_image(tmp_path):
    files = _pngs(tmp_path / "imgs", ["b.png", "a.png"])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert [it for it in resolve_items(tmp_path / "imgs", fields=["image"])] == [
        {"image": str(tmp_path / "imgs" / "a.png")}, {"image": str(tmp_path / "imgs" / "b.png")}]
    assert resolve_items(files[0]) == [{"image": str(files[0]), "source": 0}]
    mixed = resolve_items([files[0], tmp_path / "imgs"])  # e.g. a datalist plus hcms_unlabeled/
    assert [it["source"] for it in mixed] == [0, 1, 1]


def test_a_list_of_items_is_taken_as_given():
    items = [{"image": "/x/a.png", "label": "/x/la.png"}]
    assert resolve_items(items) == items
    with pytest.raises(DataError, match="item 0 has no 'image'"):
        resolve_items([{"label": "/x/la.png"}])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: not found \(nor under .*\); expected a datalist JSON"):
        resolve_items("nope.json", dataset_dir=tmp_path)
    with pytest.raises(DataError, match=r"empty\.json: the datalist \[train\] is empty"):
        resolve_items(_datalist(tmp_path / "empty.json", {"train": []}))
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match=r"bare: no image files"):
        resolve_items(tmp_path / "bare")
    unlabelled = _datalist(tmp_path / "u.json", {"train": [{"image": "a.png"}]})
    with pytest.raises(DataError, match=r"u\.json: 1 item\(s\) have no 'label'"):
        resolve_items(unlabelled, require_label=True)
    with pytest.raises(DataError, match="give a datalist, a dataset folder or an image"):
        resolve_items(None)
    with pytest.raises(DataError, match="list of datalists / items is empty"):
        resolve_items([])
