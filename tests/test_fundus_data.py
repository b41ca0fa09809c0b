"""The fundus data layer: the A/V label table, DRIVE datalists and split, the FOV transform, the phantom, the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_oct.cli import main
from monai_oct.core.datalist import load_datalist
from monai_oct.core.drive import DRIVE_VALIDATION_IDS, drive_items, read_fov, split_drive, write_drive_datalist
from monai_oct.core.io import DataError, read_label
from monai_oct.core.labels import DUKE_DME, FUNDUS_AV, UNANNOTATED, LabelTable, get_label_table
from monai_oct.metrics.fundus import (
    ArteryVeinMetric,
    VesselMetric,
    av_adjacency,
    fundus_plausibility,
    vessel_connectivity,
    vessel_probability,
)
from monai_oct.phantoms.fundus import fundus_phantom, write_fundus_phantom_dataset
from monai_oct.transforms.fov import MaskOutsideFOV, MaskOutsideFOVd

REAL_DRIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "drive_av"
if not REAL_DRIVE.is_dir():
    REAL_DRIVE = Path("/work/shared/data/drive_av")


# ---------------------------------------------------------------- label table


def test_fundus_table_is_data():
    t = get_label_table("fundus_av")
    assert t is FUNDUS_AV
    assert t.names == ["background", "artery", "vein", "crossing", "uncertain"]
    assert t.group("vessel") == (1, 2, 3, 4) and t.scored == (1, 2) and t.foreground == (1, 2, 3, 4)
    assert t.palette.shape == (5, 3) and tuple(t.palette[1]) == (255, 0, 0) and tuple(t.palette[2]) == (0, 0, 255)
    assert t.layer_order == () and t.pathological == ()
    assert DUKE_DME.scored == () and DUKE_DME.palette.shape == (10, 3)  # the OCT table is unchanged by the new fields
    with pytest.raises(KeyError, match="no group 'artery_vein'.*groups: \\['artery', 'crossing', 'vein', 'vessel'\\]"):
        t.group("artery_vein")


@pytest.mark.parametrize("kwargs, match", [
    ({"scored": (1, 7)}, "scored names unknown class ids \\[7\\]"),
    ({"colours": {5: (0, 0, 0)}}, "colours names unknown class ids \\[5\\]"),
    ({"colours": {1: (0, 300, 0)}}, "colours must be \\(R, G, B\\) in 0..255"),
])
def test_table_rejects_bad_roles(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LabelTable(name="t", classes={0: "a", 1: "b"}, **kwargs)


def test_unknown_label_ids_name_the_file_and_ids(tmp_path):
    path = tmp_path / "av" / "bad.png"
    path.parent.mkdir()
    Image.fromarray(np.array([[0, 1, 2], [3, 4, 7], [9, 0, 0]], dtype=np.uint8)).save(path)
    with pytest.raises(DataError) as e:
        read_label(path, FUNDUS_AV)
    assert str(path) in str(e.value) and "[7, 9]" in str(e.value) and "fundus_av" in str(e.value)


# ---------------------------------------------------------------- DRIVE datalist


def _fake_drive(root: Path, ids=range(21, 41), size=(12, 10)) -> Path:
    rng = np.random.default_rng(0)
    for i in ids:
        for sub, arr in (("images", rng.integers(0, 255, (*size, 3), dtype=np.uint8)),
                         ("av", rng.integers(0, 5, size, dtype=np.uint8)),
                         ("fov", (rng.random(size) > 0.3).astype(np.uint8) * 255)):
            (root / "training" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / "training" / sub / f"{i}_training.png")
    return root


def test_drive_datalist_split_15_5_by_image(tmp_path):
    root = _fake_drive(tmp_path / "drive_av")
    dl = write_drive_datalist(root, tmp_path / "out")
    train = load_datalist(dl, key="train")
    val = load_datalist(dl, key="validation")
    assert [it["id"] for it in train] == list(range(21, 36)) and [it["id"] for it in val] == list(DRIVE_VALIDATION_IDS)
    for it in train + val:  # every path field is absolute after loading, also the fov
        assert {"image", "label", "fov"} <= set(it) and all(Path(it[k]).is_file() for k in ("image", "label", "fov"))
        assert Path(it["label"]).parent.name == "av" and Path(it["fov"]).parent.name == "fov"
    raw = json.loads(dl.read_text())
    assert not Path(raw["train"][0]["fov"]).is_absolute()  # written relative to the datalist's folder
    assert not {it["image"] for it in train} & {it["image"] for it in val}


def test_drive_cli_and_missing_files(tmp_path, capsys):
    root = _fake_drive(tmp_path / "drive_av")
    assert main(["drive-datalist", "--root", str(root), "--out", str(tmp_path / "dl")]) == 0
    assert "validation 5 images (ids 36, 37, 38, 39, 40)" in capsys.readouterr().out
    (root / "training" / "fov" / "30_training.png").unlink()
    assert main(["drive-datalist", "--root", str(root), "--out", str(tmp_path / "dl2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(root / "training" / "fov" / "30_training.png") in err and "not found" in err
    assert not (tmp_path / "dl2").exists()  # nothing written
    with pytest.raises(DataError, match="training/av: folder not found"):
        drive_items(_no_av(tmp_path))


def _no_av(tmp_path: Path) -> Path:
    root = _fake_drive(tmp_path / "partial", ids=[21])
    for p in (root / "training" / "av").iterdir():
        p.unlink()
    (root / "training" / "av").rmdir()
    return root


def test_drive_bad_label_ids_and_fov_are_named(tmp_path):
    root = _fake_drive(tmp_path / "drive_av")
    bad = root / "training" / "av" / "25_training.png"
    Image.fromarray(np.full((12, 10), 6, dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match=f"{bad}: label ids \\[6\\] are outside the fundus_av table"):
        write_drive_datalist(root, tmp_path / "out")
    fov = root / "training" / "fov" / "22_training.png"
    Image.fromarray(np.full((12, 10), 7, dtype=np.uint8)).save(fov)
    with pytest.raises(DataError, match=f"{fov}: a field-of-view mask holds 0 and 255"):
        read_fov(fov)
    with pytest.raises(DataError, match="validation images \\[41\\] are not in the DRIVE items"):
        split_drive(drive_items(root), validation_ids=(40, 41))


@pytest.mark.skipif(not REAL_DRIVE.is_dir(), reason=f"real DRIVE A/V data not found at {REAL_DRIVE}")
def test_real_drive_datalist(tmp_path):
    dl = write_drive_datalist(REAL_DRIVE, tmp_path, check=False)
    train, val = load_datalist(dl, key="train"), load_datalist(dl, key="validation")
    assert len(train) == 15 and len(val) == 5 and [it["id"] for it in val] == [36, 37, 38, 39, 40]
    lab = read_label(val[0]["label"], FUNDUS_AV)
    fov = read_fov(val[0]["fov"])
    assert lab.shape == fov.shape == (584, 565) and set(np.unique(lab)) <= {0, 1, 2, 3, 4}
    assert 0.6 < fov.mean() < 0.8


# ---------------------------------------------------------------- FOV transform


def test_mask_outside_fov_array_and_dict():
    label = torch.tensor([[[1, 2], [3, 0]]], dtype=torch.uint8)
    fov = np.array([[255, 0], [255, 255]], dtype=np.uint8)
    out = MaskOutsideFOV()(label, fov)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.tolist() == [[[1, UNANNOTATED], [3, 0]]] and label[0, 0, 1] == 2  # input untouched
    image = np.ones((3, 2, 2), dtype=np.float32)
    d = MaskOutsideFOVd("label", image_keys="image")({"label": label, "image": image, "fov": fov[None]})
    assert d["label"].tolist() == [[[1, UNANNOTATED], [3, 0]]]
    assert d["image"][:, 0, 1].tolist() == [0, 0, 0] and d["image"][:, 1, 1].tolist() == [1, 1, 1]
    assert d["fov"].dtype == torch.bool and d["fov"].shape == (1, 2, 2) and d["fov"].tolist() == [[[True, False], [True, True]]]
    with pytest.raises(ValueError, match="field-of-view mask size \\(3, 2\\) differs from the map's \\(2, 2\\)"):
        MaskOutsideFOV()(label, np.ones((3, 2)))
    with pytest.raises(KeyError, match="no field-of-view key 'fov'"):
        MaskOutsideFOVd("label")({"label": label})


# ---------------------------------------------------------------- phantom


@pytest.fixture(scope="module")
def phantom512():
    return fundus_phantom(512, seed=0)


@pytest.mark.parametrize("size", [128, (160, 144)])
def test_phantom_shapes_and_determinism(size):
    a, b, c = fundus_phantom(size, seed=3), fundus_phantom(size, seed=3), fundus_phantom(size, seed=4)
    h, w = (size, size) if isinstance(size, int) else size
    assert a["image"].shape == (3, h, w) and a["image"].dtype == np.float32
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert a["label"].shape == a["fov"].shape == a["disc"].shape == (h, w) and a["label"].dtype == np.uint8
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert not np.array_equal(a["label"], c["label"])
    assert set(np.unique(a["label"])) <= {0, 1, 2, 3} and {1, 2} <= set(np.unique(a["label"]))
    FUNDUS_AV.validate_ids(a["label"], where="phantom", allow_unannotated=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_anatomy(seed, phantom512):
    ph = phantom512 if seed == 0 else fundus_phantom(512, seed=seed)
    lab, fov = ph["label"], ph["fov"]
    assert vessel_connectivity(lab, disc=ph["disc"]) >= 0.95
    assert av_adjacency(lab) == 0
    assert (lab[~fov] == 0).all() and (ph["image"][:, ~fov] < 0.02).all()  # nothing outside the FOV
    # the FOV is a centred disc: its area and its extent agree with a circle
    rows, cols = np.nonzero(fov)
    r = (rows.max() - rows.min() + 1) / 2
    assert abs(fov.sum() / (np.pi * r * r) - 1) < 0.02 and abs((cols.max() - cols.min() + 1) / 2 - r) <= 1
    # vessels: widths reach ~8 px near the disc, arteries brighter red than veins in the image
    vessel = np.isin(lab, (1, 2, 3))
    assert 0.05 < vessel[fov].mean() < 0.2
    img = ph["image"]
    art, vein = lab == 1, lab == 2
    assert img[0][art].mean() > img[0][vein].mean() and img[1][art].mean() > img[1][vein].mean()
    # the optic disc is the brightest region; the macula darker than the background around it
    bg = (lab == 0) & fov
    assert img[:, ph["disc"] & (lab == 0)].mean() > img[:, bg].mean() + 0.1
    mr, mc = (int(round(v)) for v in ph["macula_centre"])
    dd = 2 * np.sqrt(ph["disc"].sum() / np.pi)  # disc diameter (px)
    yy, xx = np.mgrid[0:512, 0:512]
    ring = bg & (np.hypot(yy - mr, xx - mc) > 1.2 * dd) & (np.hypot(yy - mr, xx - mc) < 1.8 * dd)
    assert img[1, mr - 3:mr + 4, mc - 3:mc + 4].mean() < 0.85 * img[1][ring].mean()
    dr, dc = ph["disc_centre"]
    assert 2.0 < np.hypot(mr - dr, mc - dc) / dd < 3.0  # ~2.5 disc diameters temporal of the disc


def test_phantom_arteries_thinner_than_veins(phantom512):
    from scipy import ndimage

    lab = phantom512["label"]
    widths = {}
    for k in (1, 2):
        m = np.isin(lab, (k, 3))
        widths[k] = 2 * ndimage.distance_transform_edt(m).max()
    assert 6 <= widths[2] <= 12 and widths[1] < widths[2]


def test_phantom_dataset(tmp_path):
    dl = write_fundus_phantom_dataset(tmp_path, num=3, size=64, seed=0, val_fraction=0.34)
    train, val = load_datalist(dl, key="train"), load_datalist(dl, key="validation")
    assert len(train) == 2 and len(val) == 1
    lab = read_label(val[0]["label"], FUNDUS_AV)
    assert lab.shape == (64, 64) and read_fov(val[0]["fov"]).shape == (64, 64)
    assert not list(tmp_path.rglob(".tmp.*"))


# ---------------------------------------------------------------- metrics


def _case():
    """4 x 4 with a 2-pixel-wide FOV hole: known confusion counts inside the FOV."""
    y = torch.tensor([[1, 1, 2, 0],
                      [0, 0, 2, 0],
                      [3, 0, 0, 0],
                      [4, 0, 0, 1]])[None, None]
    fov = torch.ones_like(y, dtype=torch.bool)
    fov[..., 3, 3] = False  # the artery pixel at (3, 3) is outside: not scored
    fov[..., 0, 3] = False
    return y, fov


def test_vessel_metric_known_answer():
    y, fov = _case()
    prob = torch.zeros_like(y, dtype=torch.float32)
    prob[..., 0, 0] = prob[..., 0, 1] = 0.9  # TP 2
    prob[..., 1, 0] = 0.8  # FP 1
    prob[..., 2, 0] = 0.7  # TP (crossing counts as vessel)
    prob[..., 3, 3] = 1.0  # outside the FOV: ignored
    m = VesselMetric()
    m(prob, y, fov=fov)
    r = m.aggregate()
    # inside FOV: 14 pixels; vessel truth 6 (1,1,2,2,3,4); predicted 4: TP 3, FP 1, FN 3, TN 7
    assert r["sensitivity"] == pytest.approx(3 / 6) and r["specificity"] == pytest.approx(7 / 8)
    assert r["dice"] == pytest.approx(2 * 3 / (4 + 6)) and r["accuracy"] == pytest.approx(10 / 14)
    # AUC: positives scores {.9,.9,.7,0,0,0}, negatives {.8,0 x7}; P(pos > neg) + ties / 2
    pos, neg = [0.9, 0.9, 0.7, 0, 0, 0], [0.8] + [0.0] * 7
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert r["auc"] == pytest.approx(auc)


def test_vessel_metric_ignores_the_ignore_value_like_a_fov():
    y, fov = _case()
    masked = MaskOutsideFOV()(y[0], fov[0])[None]
    prob = torch.rand(y.shape, generator=torch.Generator().manual_seed(0))
    a, b = VesselMetric(), VesselMetric()
    a(prob, y, fov=fov)
    b(prob, masked)
    assert a.aggregate() == pytest.approx(b.aggregate())


def test_perfect_predictions_score_one(phantom512):
    lab = torch.as_tensor(phantom512["label"])[None, None].long()
    fov = torch.as_tensor(phantom512["fov"])[None, None]
    vm, am = VesselMetric(), ArteryVeinMetric()
    vm(torch.isin(lab, torch.tensor([1, 2, 3, 4])).float(), lab, fov=fov)
    am(torch.nn.functional.one_hot(lab[:, 0], 5).permute(0, 3, 1, 2).float(), lab, fov=fov)
    assert all(v == pytest.approx(1.0) for v in vm.aggregate().values())
    assert am.aggregate() == pytest.approx({"av_accuracy": 1.0, "artery_sensitivity": 1.0, "vein_sensitivity": 1.0,
                                            "undecided": 0.0})


def test_artery_vein_accuracy_known_answer():
    y, fov = _case()  # scored inside the FOV: arteries (0,0), (0,1); veins (0,2), (1,2); crossing/uncertain not
    ids = torch.tensor([[1, 2, 2, 1],
                        [0, 0, 0, 0],
                        [2, 0, 0, 0],
                        [1, 0, 0, 2]])[None, None]
    m = ArteryVeinMetric()
    m(ids, y, fov=fov)
    r = m.aggregate()
    # (0,0) right, (0,1) wrong, (0,2) right, (1,2) background = undecided, wrong; crossing (2,0) not scored
    assert r == pytest.approx({"av_accuracy": 2 / 4, "artery_sensitivity": 1 / 2, "vein_sensitivity": 1 / 2,
                               "undecided": 1 / 4})
    scores = torch.zeros(1, 5, 4, 4)
    scores[:, 0] = 10.0  # background wins the argmax everywhere, but A/V decides artery vs vein only
    scores[:, 2] = 1.0  # vein everywhere
    m2 = ArteryVeinMetric()
    m2(scores, y, fov=fov)
    assert m2.aggregate() == pytest.approx({"av_accuracy": 0.5, "artery_sensitivity": 0.0, "vein_sensitivity": 1.0,
                                            "undecided": 0.0})
    p = vessel_probability(scores)
    assert p.shape == (1, 1, 4, 4) and torch.all(p < 0.01)


def test_metric_errors():
    y, _ = _case()
    with pytest.raises(ValueError, match="label ids \\[7\\] are outside the fundus_av table"):
        VesselMetric()(torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 7))
    with pytest.raises(ValueError, match="field-of-view mask size \\(3, 3\\) differs"):
        ArteryVeinMetric()(y, y, fov=torch.ones(1, 1, 3, 3, dtype=torch.bool))


def test_connectivity_and_adjacency_known_answers():
    lab = np.zeros((8, 8), dtype=np.uint8)
    lab[4, 0:5] = 1  # an artery from the disc (left) ...
    lab[4, 5] = 3  # ... over a crossing ...
    lab[3:6, 6] = 2  # ... into a vein: adjacent only through the crossing
    lab[0, 7] = 2  # a speck away from the tree
    lab[7, 3] = 1  # another speck
    disc = np.zeros_like(lab, dtype=bool)
    disc[3:6, 0:2] = True
    assert vessel_connectivity(lab, disc=disc) == pytest.approx(9 / 11)
    assert vessel_connectivity(lab, disc_centre=(4, 0), disc_radius=1.0) == pytest.approx(9 / 11)
    assert av_adjacency(lab) == 0
    lab[4, 5] = 1  # without the crossing the artery touches the vein
    assert av_adjacency(lab) == 1
    lab[7, 4] = 2  # and the speck artery touches a vein speck
    assert av_adjacency(lab) == 2
    rep = fundus_plausibility([lab, np.zeros_like(lab)], discs=[disc, disc])
    assert rep["num_maps"] == 2 and rep["per_map"][1]["connected_fraction"] is None
    assert rep["av_adjacent_pixels"] == 2 and rep["maps_without_adjacency"] == 1 and rep["maps_connected"] == 0
    with pytest.raises(ValueError, match="give the optic disc"):
        vessel_connectivity(lab)


def test_vessel_shape_tells_vessels_from_blobs():
    """Connectivity alone passes a single blob at the disc; the width index does not: a straight vessel w px wide
    scores about w, a solid 24x24 block far more, and the vessel fraction is the share of vessel pixels."""
    from monai_oct.metrics.fundus import vessel_shape

    lab = np.zeros((64, 64), np.int64)
    lab[30:33, 4:60] = 1  # 3 px wide
    s = vessel_shape(lab)
    assert s["vessel_fraction"] == pytest.approx(3 * 56 / 64**2) and 2.5 < s["vessel_width"] < 3.6
    lab[30:31] = 0
    lab[31:33] = 0
    lab[31, 4:60] = 2  # 1 px wide
    assert vessel_shape(lab)["vessel_width"] == pytest.approx(2.0)
    blob = np.zeros((64, 64), np.int64)
    blob[20:44, 20:44] = 2
    assert vessel_shape(blob)["vessel_width"] > 12
    assert vessel_shape(np.zeros((8, 8), np.int64)) == {"vessel_fraction": None, "vessel_width": None}
    rep = fundus_plausibility([lab, blob], disc_centres=[(31, 4), (32, 32)])
    assert rep["vessel_width"] == pytest.approx((2.0 + vessel_shape(blob)["vessel_width"]) / 2)
