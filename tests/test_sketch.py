"""Layer sketches (Wu et al.): LayerSketch(d), thickness statistics, random sketches, the phantom refactor."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_oct.core.io import TEMP_PATTERN
from monai_oct.cli import main
from monai_oct.core.labels import DUKE_DME
from monai_oct.recipes.sketches import LayerThicknessStats, RandomSketchDataset, generate_sketch
from monai_oct.phantoms.oct import (
    FOVEA_KEEP,
    _REFLECTIVITY,
    LAYER_THICKNESS,
    PhantomConfig,
    _smooth_curve,
    generate_bscan,
    generate_bscans,
    sample_boundaries,
)
from monai_oct.core.geometry import label_boundaries
from monai_oct.transforms import LayerSketch, LayerSketchd

RANK = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, -1])  # Duke layer_order rank per class id; fluid -1


def _rows_in_order(label: np.ndarray) -> bool:
    """True when, in every column, the layer classes (fluid skipped) never go back up the layer order."""
    r = RANK[label.astype(int)]
    for c in range(label.shape[1]):
        col = r[:, c]
        col = col[col >= 0]
        if (np.diff(col) < 0).any():
            return False
    return True


def _line_runs(column: np.ndarray, value: float = 1.0) -> int:
    on = np.concatenate([[False], column == value, [False]])
    return int((np.diff(on.astype(int)) == 1).sum())


# --------------------------------------------------------------------------- phantom refactor
def test_phantom_refactor_is_bit_identical():
    configs = [None, PhantomConfig(fluid_probability=1.0, max_fluid_pockets=5), PhantomConfig(fovea_probability=0.1, speckle=0)]
    for i, (size, cfg) in enumerate(zip([(64, 64), (96, 128), (40, 200)], configs)):
        r1, r2 = np.random.default_rng(i), np.random.default_rng(i)
        for _ in range(4):
            a, b = generate_bscan(r1, size, cfg), _legacy_generate_bscan(r2, size, cfg)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


# --------------------------------------------------------------------------- random sketches
def test_same_seed_same_sketch_and_dataset_is_deterministic():
    a, la = generate_sketch(size=(64, 96), seed=5)
    b, lb = generate_sketch(size=(64, 96), seed=5)
    c, _ = generate_sketch(size=(64, 96), seed=6)
    assert a.shape == (64, 96) and a.dtype == np.float32 and la.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {-1.0, 0.0, 1.0} and (a == 1.0).any()

    ds = RandomSketchDataset(5, size=(48, 64), seed=3)
    first = [ds[i] for i in range(5)]
    again = RandomSketchDataset(5, size=(48, 64), seed=3)[2]
    assert len(ds) == 5 and set(first[0]) == {"sketch", "label"}
    assert first[2]["sketch"].shape == (1, 48, 64) and first[2]["sketch"].dtype == torch.float32
    assert first[2]["label"].dtype == torch.int64
    assert torch.equal(first[2]["sketch"], again["sketch"]) and torch.equal(first[2]["label"], again["label"])
    assert not torch.equal(first[1]["sketch"], first[2]["sketch"])
    assert not torch.equal(RandomSketchDataset(5, size=(48, 64), seed=4)[2]["sketch"], first[2]["sketch"])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="num"):
        RandomSketchDataset(0)


@pytest.mark.parametrize("stats_name", ["duke", "phantom", "wild", "high", "low"])
def test_random_sketch_boundaries_never_cross(stats_name):
    stats = {"duke": LayerThicknessStats.duke_defaults(), "phantom": LayerThicknessStats(),
             # thin, very wobbly layers with a deep pit: the hardest case for ordering
             "wild": LayerThicknessStats(thickness_mean=[0.01] * 7, thickness_std=[0.01] * 7, wobble=1.5,
                                         fovea_probability=1.0, fovea_keep=[0.0] * 4 + [3.0] * 3, tilt=0.3),
             # retina pushed against the top / bottom of the frame: clipping must keep every layer
             "high": LayerThicknessStats(top_mean=0.0, top_std=0.0, tilt=0.2, curvature=[-0.2, 0.0]),
             "low": LayerThicknessStats(top_mean=0.85, top_std=0.05, tilt=0.2)}[stats_name]
    fluid_seen = 0
    for seed in range(40):
        sketch, label = generate_sketch(stats, (64, 80), seed=seed)
        assert _rows_in_order(label), f"seed {seed}: classes out of order"
        DUKE_DME.validate_ids(label, allow_unannotated=False)
        has_fluid = (label == 9).any(axis=0)
        fluid_seen += int(has_fluid.any())
        cols = ~has_fluid & (label[-1] == 8)  # columns whose retina lies fully inside the frame
        # every layer present (min thickness 1 row) and each of the 8 boundaries drawn as a line
        assert all((label[:, cols] == c).any(axis=0).all() for c in range(9))
        assert (sketch[:, cols] == 1.0).any(axis=0).all()
    if stats_name == "duke":
        assert fluid_seen > 10  # DME: fluid in most B-scans


def test_sample_boundaries_keeps_min_thickness():
    rng = np.random.default_rng(0)
    for _ in range(30):
        b = sample_boundaries(rng, (64, 64), thickness=[0.005] * 7, fovea_keep=[0.0] * 7, wobble=2.0,
                              min_thickness=2.0, allow_rise=True)
        assert b.shape == (8, 64) and (np.diff(b, axis=0) >= 2.0 - 1e-9).all()
    with pytest.raises(ValueError, match="equal-length"):
        sample_boundaries(rng, (64, 64), thickness=[0.1] * 3, fovea_keep=[1.0] * 2)


# --------------------------------------------------------------------------- LayerSketch on real-like labels
@pytest.fixture(scope="module")
def phantom_labels():
    return generate_bscans(12, (96, 128), seed=11, config=PhantomConfig(fluid_probability=0.6))[1]


def test_undeformed_sketch_reproduces_label_and_lines_sit_on_boundaries(phantom_labels):
    t = LayerSketch(deform=0.0, jitter=0.0, drop_prob=0.0, fluid_styles=("filled",), line_width=(1.0, 1.0))
    t.set_random_state(0)
    for lab in phantom_labels:
        sketch, sl = t.sketch_and_label(lab)
        np.testing.assert_array_equal(sl, lab)  # exact, also under fluid
        bounds = label_boundaries(lab)
        fluid = lab == 9
        on = (sketch == 1.0) & ~fluid
        rows, cols = np.nonzero(on)
        dist = np.abs(rows[None] - bounds[:, cols]).min(axis=0)
        assert dist.max() <= 1.0  # every line pixel is on (or next to, where a line steps) a true boundary
        assert (sketch[fluid] == 0.0).all() and (sketch[~fluid] != 0.0).all()


def test_deformed_lines_lie_near_true_boundaries(phantom_labels):
    t = LayerSketch(deform=0.02, jitter=0.005, drop_prob=0.0, line_width=(1.0, 3.0), fluid_prob=0.0)
    t.set_random_state(1)
    h = phantom_labels.shape[1]
    moved = []
    for lab in phantom_labels:
        sketch, sl = t.sketch_and_label(lab)
        rows, cols = np.nonzero(sketch == 1.0)
        bounds = label_boundaries(lab)
        dist = np.abs(rows[None] - bounds[:, cols]).min(axis=0)
        # displacement <= deform * H (+ a horizontal shift on sloped boundaries) + jitter * H + half a line
        assert np.percentile(dist, 99) <= 0.02 * h * 2.5 + 0.005 * h + 2.0
        moved.append(float((sl != np.where(lab == 9, sl, lab)).mean()))
        assert _rows_in_order(sl) and not (sl == 9).any()  # fluid not drawn -> not in the sketch label
        for c in range(0, lab.shape[1], 7):  # no drop: all 8 boundaries per column (lines may touch)
            assert 1 <= _line_runs(sketch[:, c]) <= 8
    assert np.mean(moved) > 0.01  # the deformation really moves the regions


def test_dropping_merges_layers_into_the_upper_one(phantom_labels):
    t = LayerSketch(deform=0.0, jitter=0.0, drop_prob=1.0, fluid_prob=0.0, line_width=(1.0, 1.0))
    t.set_random_state(0)
    lab = phantom_labels[0]
    sketch, sl = t.sketch_and_label(lab)
    assert set(np.unique(sl)) == {0, 1, 8}  # inner boundaries dropped: the retina is one region
    np.testing.assert_array_equal(sl == 0, lab == 0)  # ILM and Bruch's membrane are always drawn
    np.testing.assert_array_equal(sl == 8, lab == 8)
    assert all(_line_runs(sketch[:, c]) == 2 for c in range(lab.shape[1]))
    # a single droppable boundary: only the INL/OPL line (index 3) is missing
    t1 = LayerSketch(deform=0.0, jitter=0.0, drop_prob=1.0, droppable=[3], fluid_prob=0.0)
    sl1 = t1.sketch_and_label(phantom_labels[1])[1]
    lab1 = phantom_labels[1]
    ok = lab1 != 9
    assert set(np.unique(sl1)) <= set(range(9)) - {4}
    np.testing.assert_array_equal(sl1[ok], np.where(lab1 == 4, 3, lab1)[ok])
    # random drops over many calls: some but not all boundaries dropped
    t2 = LayerSketch(drop_prob=0.3)
    t2.set_random_state(2)
    drops = []
    for _ in range(30):
        t2.randomize()
        drops.append(t2._params["drop"])
    drops = np.array(drops)
    assert 0.15 < drops[:, 1:7].mean() < 0.45 and not drops[:, [0, 7]].any()


def test_fluid_styles_and_sketch_label_ids(phantom_labels):
    lab = next(l for l in phantom_labels if (l == 9).sum() > 30)
    filled = LayerSketch(deform=0.0, jitter=0.0, fluid_styles=("filled",))
    outline = LayerSketch(deform=0.0, jitter=0.0, fluid_styles=("outline",))
    none = LayerSketch(deform=0.0, jitter=0.0, fluid_prob=0.0)
    sf, lf = filled.sketch_and_label(lab)
    so, lo = outline.sketch_and_label(lab)
    sn, ln = none.sketch_and_label(lab)
    assert (sf == 0.0).sum() == (lab == 9).sum()
    assert 0 < (so == 0.0).sum() < (lab == 9).sum() and ((so == 0.0) <= (lab == 9)).all()
    assert not (sn == 0.0).any() and not (ln == 9).any()
    assert (lf == 9).sum() == (lab == 9).sum() and (lo == 9).sum() == (lab == 9).sum()
    for sl in (lf, lo, ln):
        DUKE_DME.validate_ids(sl, allow_unannotated=False)


def test_dict_twin_seeding_types_and_shapes(phantom_labels):
    lab = phantom_labels[2]
    data = {"image": np.zeros((1, *lab.shape), np.float32), "label": MetaTensor(torch.as_tensor(lab[None]).float())}
    a = LayerSketchd(keys="label").set_random_state(7)(data)
    b = LayerSketchd(keys="label").set_random_state(7)(data)
    c = LayerSketchd(keys="label").set_random_state(8)(data)
    assert isinstance(a["sketch"], MetaTensor) and a["sketch"].shape == (1, *lab.shape) and a["sketch"].dtype == torch.float32
    assert a["sketch_label"].shape == (1, *lab.shape) and a["sketch_label"].dtype == torch.float32  # like the input
    assert torch.equal(a["sketch"], b["sketch"]) and torch.equal(a["sketch_label"], b["sketch_label"])
    assert not torch.equal(a["sketch"], c["sketch"])
    assert float(a["sketch"].min()) == -1.0 and float(a["sketch"].max()) == 1.0
    assert "image" in a and a["label"] is data["label"]
    s = LayerSketch()(lab)  # array transform: numpy in, numpy out
    assert isinstance(s, np.ndarray) and s.shape == lab.shape and s.dtype == np.float32


def test_layer_sketch_on_duke(duke_dir):
    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_label

    items = load_datalist(duke_dir / "datalist_train.json")
    t = LayerSketch(deform=0.0, jitter=0.0, drop_prob=0.0, fluid_styles=("filled",))
    for it in items[::20]:
        lab = read_label(it["label"], DUKE_DME)
        sketch, sl = t.sketch_and_label(lab)
        ok = lab != 255
        np.testing.assert_array_equal(sl[ok], lab[ok])


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    t = LayerSketch()
    lab = np.zeros((32, 32), np.uint8)
    lab[16:] = 8
    with pytest.raises(ValueError, match=r"label ids \[12\] are outside the duke_dme table"):
        t(np.where(lab == 8, 12, lab))
    with pytest.raises(ValueError, match="expected a 2D label map"):
        t(lab[None, None])
    with pytest.raises(ValueError, match="expected a 2D label map"):
        t(np.stack([lab, lab]))
    with pytest.raises(ValueError, match="non-integer"):
        t(lab.astype(np.float32) + 0.5)
    with pytest.raises(ValueError, match="one label key"):
        LayerSketchd(keys=["label", "other"])
    with pytest.raises(ValueError, match="line_width"):
        LayerSketch(line_width=(3, 1))
    with pytest.raises(ValueError, match="fluid_styles"):
        LayerSketch(fluid_styles=("dotted",))
    with pytest.raises(ValueError, match="distinct"):
        LayerSketch(fluid_value=1.0)
    with pytest.raises(ValueError, match="droppable"):
        LayerSketch(droppable=[8])
    with pytest.raises(ValueError, match="at least 32x32"):
        generate_sketch(size=(16, 64))


# --------------------------------------------------------------------------- statistics
def test_stats_fit_on_phantom_recovers_its_geometry(phantom_dir, tmp_path):
    _, labels = generate_bscans(30, (128, 128), seed=0)
    s = LayerThicknessStats.fit(list(labels))
    np.testing.assert_allclose(s.thickness_mean, LAYER_THICKNESS, rtol=0.25, atol=0.002)
    assert abs(s.top_mean - 0.33) < 0.03 and 0.01 < s.top_std < 0.06
    assert 0.5 < s.fovea_probability <= 1.0 and 0.05 < s.pit_width_mean < 0.09
    np.testing.assert_allclose(s.fovea_keep[1:], FOVEA_KEEP[1:], atol=0.15)  # NFL keeps its 1-row minimum
    assert 0.05 < s.pit_depth < 0.2 and 0.2 < s.fluid_probability < 0.8
    assert s.num_images == 30
    # from a datalist; save / load round trip
    d = LayerThicknessStats.fit_datalist(phantom_dir / "datalist.json")
    assert d.num_images == 9 and all(0.005 < t < 0.15 for t in d.thickness_mean)
    path = d.save(tmp_path / "s" / "stats.json")
    back = LayerThicknessStats.load(path)
    assert back == d and not list((tmp_path / "s").glob(TEMP_PATTERN))
    np.testing.assert_array_equal(generate_sketch(back, (48, 48), 1)[0], generate_sketch(d, (48, 48), 1)[0])
    assert torch.equal(RandomSketchDataset(2, path, (40, 40))[1]["label"], RandomSketchDataset(2, d, (40, 40))[1]["label"])


def test_stats_fit_on_duke_matches_builtin_defaults(duke_dir):
    d = LayerThicknessStats.fit_datalist(duke_dir / "datalist_train.json")
    ref = LayerThicknessStats.duke_defaults()
    assert d.num_images == 66 and ref.num_images == 66
    np.testing.assert_allclose(d.thickness_mean, ref.thickness_mean, atol=1e-4)
    assert all(0.005 < t < 0.08 for t in d.thickness_mean) and 0.1 < sum(d.thickness_mean) < 0.35
    assert 0.15 < d.top_mean < 0.45 and d.fluid_probability > 0.5  # DME: fluid in most scans
    v = LayerThicknessStats.fit_datalist(duke_dir / "datalist_val.json")  # other patients, similar layers
    np.testing.assert_allclose(v.thickness_mean, d.thickness_mean, rtol=0.35)


def test_stats_load_and_validate_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        LayerThicknessStats.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        LayerThicknessStats.load(bad)
    bad.write_text(json.dumps({"thickness_mean": [0.1] * 7, "thikness_std": [0.0] * 7}))
    with pytest.raises(ValueError, match=r"bad.json: unknown fields \['thikness_std'\]"):
        LayerThicknessStats.load(bad)
    with pytest.raises(ValueError, match="thickness_std has 3 values"):
        LayerThicknessStats(thickness_std=[0.01] * 3)
    with pytest.raises(ValueError, match="do not fit table"):
        LayerThicknessStats(thickness_mean=[0.1] * 3, thickness_std=[0.01] * 3, fovea_keep=[1.0] * 3)
    with pytest.raises(ValueError, match="add up to"):
        LayerThicknessStats(thickness_mean=[0.2] * 7)
    with pytest.raises(ValueError, match="no label maps"):
        LayerThicknessStats.fit([])


def test_cli_sketch_stats(phantom_dir, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert main(["sketch-stats", str(phantom_dir / "datalist.json"), "--out", str(out)]) == 0
    assert "layer thickness" in capsys.readouterr().out
    assert LayerThicknessStats.load(out).num_images == 9
    assert main(["sketch-stats", str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "nope.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- frozen pre-refactor phantom
def _legacy_generate_bscan(rng: np.random.Generator, size: Sequence[int] = (256, 256),
                   config: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """generate_bscan as it was before the refactor into sample_boundaries / add_fluid_pockets (frozen copy)."""
    cfg = config or PhantomConfig()
    h, w = int(size[0]), int(size[1])
    if h < 32 or w < 32:
        raise ValueError(f"phantom size must be at least 32x32, got {h}x{w}")
    x = np.linspace(0.0, 1.0, w)

    # ILM: curved, tilted, wavy; the foveal pit is a Gaussian dip of the inner layers.
    top = h * (rng.uniform(0.28, 0.38) + rng.uniform(-0.06, 0.06) * (x - 0.5)
               + rng.uniform(0.0, 0.12) * (x - 0.5) ** 2 + 0.012 * _smooth_curve(rng, x))
    if rng.random() < cfg.fovea_probability:
        centre, width = rng.uniform(0.35, 0.65), rng.uniform(0.05, 0.09)
        pit = np.exp(-0.5 * ((x - centre) / width) ** 2)
    else:
        pit = np.zeros_like(x)
    scale = rng.uniform(0.85, 1.15)
    thick = np.empty((7, w))
    flat = np.empty((7, w))
    for k in range(7):
        flat[k] = h * LAYER_THICKNESS[k] * scale * (1.0 + 0.15 * _smooth_curve(rng, x))
        keep = 1.0 - (1.0 - FOVEA_KEEP[k]) * pit
        thick[k] = np.maximum(flat[k] * keep, 1.0)
    bounds = np.empty((8, w))
    # the pit lowers the ILM by what the layers lost, so the outer retina (RPE, Bruch) stays smooth
    bounds[0] = top + np.clip((flat - thick).sum(0), 0, None)
    bounds[1:] = bounds[0] + np.cumsum(thick, axis=0)
    bounds = np.clip(bounds, 1, h - 2)
    # enforce at least one row per layer after clipping so classes stay ordered and present
    for k in range(1, 8):
        bounds[k] = np.maximum(bounds[k], bounds[k - 1] + 1)

    rows = np.arange(h)[:, None, None]
    starts = np.floor(bounds)[None]  # row r belongs to region #{k: r >= b_k}
    label = (rows >= starts).sum(axis=1).astype(np.uint8)  # H x W

    if rng.random() < cfg.fluid_probability:
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(1, cfg.max_fluid_pockets + 1))):
            cx = rng.uniform(0.15, 0.85) * w
            c = int(np.clip(round(cx), 0, w - 1))
            lo, hi = bounds[2, c], bounds[5, c]  # from INL to the bottom of ONL
            cy = rng.uniform(lo, hi)
            ry = rng.uniform(0.3, 0.6) * max(hi - lo, 2.0)
            rx = rng.uniform(0.02, 0.07) * w
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            label[inside & (label >= 2) & (label <= 5)] = 9

    # reflectivity: per-class mean, a little lateral variation, choroid decaying with depth
    img = _REFLECTIVITY[label] * (1.0 + 0.1 * _smooth_curve(rng, x))[None]
    depth = np.clip((rows[:, :, 0] - bounds[7][None]) / (0.25 * h), 0, None)
    img = np.where(label == 8, img * np.exp(-depth), img)
    # soften region edges by one row (scanner PSF), then speckle
    img = (img + np.roll(img, 1, axis=0) + np.roll(img, -1, axis=0)) / 3.0
    if cfg.speckle > 0:
        img = img * rng.gamma(1.0 / cfg.speckle, cfg.speckle, size=img.shape) + 0.03 * rng.random(img.shape)
    img = np.clip(img / 1.2, 0, 1) ** 0.8
    return (img * 255).astype(np.uint8), label


