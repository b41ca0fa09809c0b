"""Data layer: datalists, dataset checks, Duke .mat conversion, transform chains."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.io import savemat

from monai_oct.core.datalist import check_dataset, image_folder_datalist, load_datalist
from monai_oct.core.duke import boundaries_to_label, read_duke_mat
from monai_oct.core.io import DataError, write_png
from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable
from monai_oct.recipes.pipelines import bscan_transforms


def _write_pair(root, name, shape=(20, 30), label_value=3, label_shape=None):
    img = np.full(shape, 100, np.uint8)
    lab = np.full(label_shape or shape, label_value, np.uint8)
    write_png(root / "images" / name, img)
    write_png(root / "labels" / name, lab)
    return {"image": f"images/{name}", "label": f"labels/{name}"}


def test_label_table():
    assert DUKE_DME.num_classes == 10
    assert DUKE_DME.groups == {"NFL-IPL": (1, 2), "ONL-ISM": (5,), "IRF": (9,)}
    assert DUKE_DME.pathological == (9,)
    with pytest.raises(ValueError, match="0..C-1"):
        LabelTable("bad", {0: "a", 2: "b"})
    with pytest.raises(ValueError, match=r"\[12\]"):
        DUKE_DME.validate_ids(np.array([[0, 12]]), where="x.png")


def test_load_datalist_resolves_and_fails_loudly(tmp_path):
    items = [_write_pair(tmp_path, "a.png")]
    (tmp_path / "dl.json").write_text(json.dumps({"train": items, "validation": items}))
    out = load_datalist(tmp_path / "dl.json")
    assert out[0]["image"] == str(tmp_path / "images" / "a.png")
    assert load_datalist(tmp_path / "dl.json", key="validation")[0]["label"] == str(tmp_path / "labels" / "a.png")
    with pytest.raises(DataError, match="missing.json"):
        load_datalist(tmp_path / "missing.json")
    with pytest.raises(DataError, match="no list named 'test'"):
        load_datalist(tmp_path / "dl.json", key="test")
    (tmp_path / "empty.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="empty"):
        load_datalist(tmp_path / "empty.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="broken.json"):
        load_datalist(tmp_path / "broken.json")


def test_check_dataset_names_each_bad_file(tmp_path):
    items = [
        _write_pair(tmp_path, "good.png"),
        _write_pair(tmp_path, "mismatch.png", label_shape=(20, 31)),
        _write_pair(tmp_path, "badid.png", label_value=12),
        {"image": "images/nothere.png", "label": "labels/nothere.png"},
    ]
    (tmp_path / "images" / "corrupt.png").write_bytes(b"not a png")
    items.append({"image": "images/corrupt.png"})
    (tmp_path / "dl.json").write_text(json.dumps({"train": items}))
    rep = check_dataset(load_datalist(tmp_path / "dl.json"))
    assert not rep.ok
    text = "\n".join(rep.errors)
    assert "mismatch.png" in text and "differs" in text
    assert "badid.png" in text and "[12]" in text
    assert "nothere.png: file not found" in text
    assert "corrupt.png: cannot read image" in text
    assert "good.png" not in text
    assert rep.class_pixels[3] == 20 * 30
    with pytest.raises(DataError, match="empty"):
        check_dataset([])


def test_image_folder_datalist(tmp_path):
    write_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    assert [p["image"].split("/")[-1] for p in image_folder_datalist(tmp_path)] == ["a.png", "b.png"]
    with pytest.raises(DataError, match="no image files"):
        image_folder_datalist(tmp_path / "..", extensions=(".xyz",))
    with pytest.raises(DataError, match="not found"):
        image_folder_datalist(tmp_path / "nope")


def test_boundaries_to_label_nan_columns_unannotated():
    h = 12
    b = np.tile(np.arange(2, 10, dtype=float)[:, None], (1, 4))  # boundaries at (1-based) rows 2..9
    b[3, 2] = np.nan
    lab = boundaries_to_label(b, h)
    np.testing.assert_array_equal(lab[:, 0], [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8])
    assert (lab[:, 2] == UNANNOTATED).all()
    fluid = np.zeros((h, 4))
    fluid[4, 1] = 1
    fluid[0, 1] = 1  # fluid in the vitreous is not retina: ignored
    lab = boundaries_to_label(b, h, fluid)
    assert lab[4, 1] == 9 and lab[0, 1] == 0


def test_read_duke_mat_fixture(tmp_path):
    h, w, n = 16, 10, 3
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (h, w, n)).astype(np.uint8)
    layers = np.full((8, w, n), np.nan)
    layers[:, 2:9, 1] = np.arange(3, 11, dtype=float)[:, None]  # B-scan 1 annotated on columns 2..8
    layers[2, 5, 1] = np.nan  # one boundary missing in column 5
    fluid = np.zeros((h, w, n))
    fluid[6, 3, 1] = 1
    path = tmp_path / "Subject_01.mat"
    savemat(path, {"images": images, "manualLayers1": layers, "manualFluid1": fluid})
    scans = read_duke_mat(path)
    assert len(scans) == 1 and scans[0].index == 1
    s = scans[0]
    assert s.image.shape == (h, 7) and s.label.shape == (h, 7)
    np.testing.assert_array_equal(s.image, images[:, 2:9, 1])
    expected = np.array([0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8, 8])
    np.testing.assert_array_equal(s.label[:, 0], expected)
    assert (s.label[:, 3] == UNANNOTATED).all()  # column 5 of the volume -> 3 after the crop
    assert s.label[6, 1] == 9
    savemat(tmp_path / "bad.mat", {"images": images})
    with pytest.raises(DataError, match="bad.mat.*manualLayers1"):
        read_duke_mat(tmp_path / "bad.mat")


def test_bscan_transforms_shapes_and_range(phantom_dir, tmp_path):
    item = load_datalist(phantom_dir / "datalist.json")[0]
    out = bscan_transforms([32, 48], band_height=48)(item)
    assert tuple(out["image"].shape) == (1, 32, 48) and tuple(out["label"].shape) == (1, 32, 48)
    assert -1.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert set(out["label"].unique().tolist()) <= set(range(10))
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps it; the cause names the file
        bscan_transforms([32, 32])({"image": "nothere.png", "label": "nothere.png"})
    assert isinstance(err.value.__cause__, DataError) and "nothere.png: file not found" in str(err.value.__cause__)
    bad = dict(item, label=str(tmp_path / "bad12.png"))
    write_png(bad["label"], np.full((64, 64), 12, np.uint8))
    with pytest.raises(RuntimeError) as err:
        bscan_transforms([32, 32])(bad)
    assert "bad12.png: label ids [12]" in str(err.value.__cause__)


def test_duke_png_layout(duke_dir):
    for split, n in [("train", 66), ("val", 22)]:
        items = load_datalist(duke_dir / f"datalist_{split}.json")
        assert len(items) == n
    rep = check_dataset(load_datalist(duke_dir / "datalist_val.json"))
    assert rep.ok, rep.errors
    assert set(rep.class_pixels) <= set(range(10)) | {UNANNOTATED}
