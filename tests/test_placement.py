"""The placement measurement (issue 18, ``monai_oct.recipes.placement``): edited label maps, their masks and datalists
written from a phantom dataset (seeded per map, atomically, absolute paths with the ``image`` a synthesis needs),
``inserted_fluid_dice`` on hand-made cases with known answers, the layer-order check, the ``place-pathology``
command, and the plan of ``benchmarks/pathology_placement.py --dry-run``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark
from monai_oct.cli import main as cli
from monai_oct.core.io import DataError, read_label
from monai_oct.metrics.plausibility import column_validity
from monai_oct.phantoms.oct import write_phantom_dataset
from monai_oct.recipes.placement import (
    fluid_dice_summary,
    inserted_fluid_dice,
    layer_order_validity,
    place_pathology,
    size_bin,
)

SIZE = (128, 256)
FLUID = {"num_pockets": 1, "height_range": (8, 12), "width_range": (20, 40)}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), num=4, size=SIZE, seed=3, val_fraction=0.0)


def _place(dl: Path, out: Path, **kw) -> list[dict]:
    kw = {"edit": "fluid", "band_height": 0, "size": SIZE, "seed": 0, **(FLUID if kw.get("edit", "fluid") == "fluid" else {}), **kw}
    path = place_pathology(dl, out, **kw)
    return json.loads(Path(path).read_text())["training"]


def test_fluid_placement_writes_edited_maps_masks_and_absolute_datalists(phantom, tmp_path):
    items = _place(phantom, tmp_path / "p")
    control = json.loads((tmp_path / "p" / "datalist_control.json").read_text())["training"]
    assert len(items) == len(control) == 4
    for it, ct in zip(items, control):
        for k in ("image", "label", "inserted", "before"):
            assert Path(it[k]).is_absolute() and Path(it[k]).is_file(), k
        assert it["image"] == ct["image"] and Path(ct["label"]).parent.name == "original"
        lab, ins, before, orig = (read_label(it["label"]), read_label(it["inserted"]), read_label(it["before"]),
                                  read_label(ct["label"]))
        assert lab.shape == SIZE and ins.any()
        assert np.array_equal(before, (orig == 9).astype(np.uint8))
        assert (lab[ins == 1] == 9).all()                       # the pocket is fluid ...
        assert np.array_equal(lab[ins == 0], orig[ins == 0])     # ... and nothing else changed
        assert np.all(column_validity(lab) == 1.0)
    assert not list((tmp_path / "p").rglob(".tmp.*"))           # nothing half-written left
    rec = json.loads((tmp_path / "p" / "placement.json").read_text())
    assert [r["inserted_pixels"] for r in rec["items"]] == [int(read_label(it["inserted"]).sum()) for it in items]


def test_placement_is_seeded_per_map(phantom, tmp_path):
    a, b = _place(phantom, tmp_path / "a"), _place(phantom, tmp_path / "b")
    c = _place(phantom, tmp_path / "c", seed=1)
    ins = [[read_label(it["inserted"]) for it in x] for x in (a, b, c)]
    assert all(np.array_equal(x, y) for x, y in zip(ins[0], ins[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(ins[0], ins[2]))
    # one map of the list is edited the same whether or not the others are: its stream is (seed, its index)
    last = _place(phantom, tmp_path / "d", num=2)
    assert [Path(it["label"]).name for it in last] == [Path(a[0]["label"]).name, Path(a[-1]["label"]).name]
    assert np.array_equal(read_label(last[-1]["inserted"]), ins[0][-1])


def test_drusen_placement_keeps_every_column_valid(phantom, tmp_path):
    items = _place(phantom, tmp_path / "d", edit="drusen", count=(2, 3))
    labs = [read_label(it["label"]) for it in items]
    before = [read_label(Path(it["label"]).parent.parent / "original" / Path(it["label"]).name) for it in items]
    assert all(read_label(it["inserted"]).any() for it in items)
    v = layer_order_validity(labs, before)
    assert v["mean"] == 1.0 and v["all_valid"] == 1.0 and v["invalid_columns"] == 0 and v["kept"] == 1.0


def test_layer_order_validity_counts_a_broken_column():
    lab = np.repeat(np.repeat(np.arange(9), 4)[:, None], 10, axis=1)   # 0..8 top to bottom, 36 x 10
    bad = lab.copy()
    bad[2, 3] = 8                                                      # choroid inside the vitreous of column 3
    v = layer_order_validity([lab, bad], [lab, lab])
    assert v["per_image"] == [1.0, 0.9] and v["invalid_columns"] == 1 and v["all_valid"] == 0.5
    assert v["kept"] == pytest.approx(19 / 20)


def test_placement_errors_name_the_input(phantom, tmp_path):
    with pytest.raises(ValueError, match="edit must be one of"):
        place_pathology(phantom, tmp_path / "x", edit="cysts")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"train": [{"image": str(tmp_path / "a.png"), "label": str(tmp_path / "missing.png")}]}))
    with pytest.raises(DataError, match="missing.png"):
        place_pathology(broken, tmp_path / "y", band_height=0, size=SIZE)
    assert not (tmp_path / "y" / "datalist.json").exists()


def test_inserted_fluid_dice_known_answers():
    pred = np.zeros((10, 10), np.uint8)
    ins = np.zeros((10, 10), np.uint8)
    before = np.zeros((10, 10), bool)
    ins[2:4, 0:5] = 1                                          # 10 inserted pixels
    assert np.isnan(inserted_fluid_dice(pred, np.zeros_like(ins), before))       # nothing to find
    assert inserted_fluid_dice(pred, ins, before) == 0.0                         # nothing found
    pred[2:4, 0:5] = 9
    assert inserted_fluid_dice(pred, ins, before) == 1.0
    pred[:] = 0
    pred[3, 0:5] = 9                                           # half of the pocket ...
    pred[8, 0:5] = 9                                           # ... and 5 false-positive pixels: 2*5 / (10 + 10)
    assert inserted_fluid_dice(pred, ins, before) == pytest.approx(0.5)
    assert inserted_fluid_dice(pred[None], ins, before) == pytest.approx(0.5)    # (1, H, W) too
    # fluid the map already had is ignored, predicted or not: found again it is no false positive
    before[8, :] = True
    assert inserted_fluid_dice(pred, ins, before) == pytest.approx(2 * 5 / (5 + 10))
    before[:] = False
    assert inserted_fluid_dice(pred, ins, before, ignore=before | (np.arange(10)[:, None] == 8)) == pytest.approx(2 / 3)
    # a pocket that overlapped old fluid is scored only on its new pixels
    before[2, 0:5] = True
    assert inserted_fluid_dice(pred, ins, before) == pytest.approx(2 * 5 / (10 + 5))
    other = pred.copy()
    other[3, 0:5] = 1                                          # a layer id, not fluid
    assert inserted_fluid_dice(other, ins, before) == 0.0
    with pytest.raises(ValueError, match="inserted mask of shape"):
        inserted_fluid_dice(pred, ins[:5], before)


def test_fluid_dice_summary_mean_found_and_bins():
    s = fluid_dice_summary([0.8, 0.0, float("nan"), 0.4], pixels=[100, 300, 0, 1000])
    assert s["num_images"] == 3 and s["mean"] == pytest.approx(0.4) and s["found"] == pytest.approx(2 / 3)
    assert s["bins"]["<250"] == {"num_images": 1, "mean": 0.8, "found": 1.0}
    assert s["bins"]["250-750"]["mean"] == 0.0 and s["bins"][">=750"]["mean"] == pytest.approx(0.4)
    assert [size_bin(p) for p in (249, 250, 749, 750)] == ["<250", "250-750", "250-750", ">=750"]


def test_place_pathology_command(phantom, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli(["place-pathology", str(phantom), "--out", str(out), "--band-height", "0", "--size", *map(str, SIZE),
                "--num", "2", "--count", "1", "1", "--height", "8", "12", "--width", "20", "30"]) == 0
    text = capsys.readouterr().out
    assert "placed fluid in 2 label maps" in text and str(out / "datalist.json") in text
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2
    assert cli(["place-pathology", str(tmp_path / "none.json"), "--out", str(tmp_path / "z")]) == 2
    assert "none.json" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("pathology_placement", "pathology_placement_benchmark")


def test_benchmark_dry_run_plans_edit_synthesize_teacher(bench, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "duke_dme").mkdir(parents=True)
    (data / "duke_dme" / "datalist_train.json").write_text('{"train": [{"image": "a.png", "label": "a_label.png"}]}')
    out = tmp_path / "out"
    args = ["--out", str(out), "--data", str(data), "--device", "cpu", "--num-samples", "8",
            "--image-ckpt", str(tmp_path / "stage3.pt"), "--teacher", str(tmp_path / "teacher.pt")]
    assert bench.main(args + ["--dry-run"]) == 0
    text = capsys.readouterr().out
    steps = {ln.split(":")[0].removeprefix("[run ] "): ln for ln in text.splitlines() if ln.startswith("[run ]")}
    assert set(steps) == {"place_fluid", "place_drusen", "synthesize_edited", "synthesize_control", "teacher_edited",
                          "teacher_control"}
    assert "--edit fluid" in steps["place_fluid"] and "--num 8" in steps["place_fluid"]
    assert "--size 224 512" in steps["place_fluid"] and "--count 1 1" in steps["place_fluid"]
    lab = re.search(r"--label_datalist (\S+)", steps["synthesize_edited"]).group(1)
    assert lab == str(out / "edit_fluid" / "datalist.json")
    assert re.search(r"--label_datalist (\S+)", steps["synthesize_control"]).group(1) == str(out / "edit_fluid" / "datalist_control.json")
    for name in ("edited", "control"):
        assert f"--image_ckpt {tmp_path / 'stage3.pt'}" in steps[f"synthesize_{name}"]
        assert "--num_samples 8" in steps[f"synthesize_{name}"] and "synthesize.yaml" in steps[f"synthesize_{name}"]
        assert "pseudo_label.yaml" in steps[f"teacher_{name}"]
        assert f"--dataset_dir {out / f'synth_{name}'}" in steps[f"teacher_{name}"]
        assert f"--ckpt {tmp_path / 'teacher.pt'}" in steps[f"teacher_{name}"]
    assert "would skip" in text and "stage3.pt" in text
    # a real run without the checkpoints says so and ends cleanly, writing nothing
    assert bench.main(args) == 0
    assert "skipped: not found" in capsys.readouterr().out and not (out / "edit_fluid").exists()
