"""Wu et al.'s sketch stages of the oct_ddpm bundle (train_sketch, synthesize_sketch) through
``python -m monai.bundle run`` on the phantom and on Duke at a small size, the pieces they are built from,
and the table writer of ``benchmarks/wu_sketch.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_oct.core.datalist import load_datalist
from monai_oct.core.io import read_image, read_label
from monai_oct.core.seeding import sample_seed
from monai_oct.recipes.diffusion_pipelines import sketch_transforms
from monai_oct.recipes.sketches import LayerThicknessStats, RandomSketchDataset
from monai_oct.engines.writer import PairWriter
from monai_oct.recipes.sources import sketch_source
from monai_oct.networks.checkpoint import adapt_input_channels
from monai_oct.transforms.sketch import LayerSketch

from conftest import load_benchmark, run_stage as stage

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "oct_ddpm"
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
# sketches are drawn at the network's size, at least 32x32
TINY = dict(image_size=[32, 64], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=50,
            prediction_type="v_prediction", schedule="cosine", learning_rate=1e-3, batch_size=4, device="cpu",
            progress=False, sample_steps=2, num_sample_images=2, sample_interval=1, num_threads=1)


def check_sketch_synthetic(out: Path, n: int, size):
    """Exactly n (image, label, sketch) triples, datalist and manifest listing exactly them."""
    items = load_datalist(out / "datalist.json", key="training")
    names = [f"synth_{i:05d}.png" for i in range(n)]
    assert [Path(it["image"]).name for it in items] == names
    for sub in ("images", "labels", "sketches"):
        assert sorted(p.name for p in (out / sub).iterdir()) == names  # no temp files, nothing extra
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(f"{s}/{f}" for s in ("images", "labels", "sketches") for f in names)
    assert manifest["num_samples"] == n and manifest["generation"]["encoding"] == "sketch" and manifest["status"] == "complete"
    assert manifest["seeds"] == {f: sample_seed(manifest["seed"], i) for i, f in enumerate(names)}
    assert set(manifest["generation"]["config"]["labels"]) == {"sketch_stats", "sketch_line_width", "sketch_fluid_styles"}
    assert set(manifest["generation"]["checkpoint_sha256"]) == {"image"}
    for it in items:
        img, lab = read_image(it["image"]), read_label(it["label"])
        sk = read_image(out / "sketches" / Path(it["image"]).name)
        assert img.shape == lab.shape == sk.shape == tuple(size)
        assert set(np.unique(lab).tolist()) <= set(range(10)) and {0, 8} <= set(np.unique(lab).tolist())
        assert set(np.unique(sk).tolist()) <= {0, 128, 255} and 255 in sk  # background, fluid, lines
    assert read_image(out / "grid.png").ndim == 2
    return manifest


def test_sketch_transforms_and_stats_through_band(phantom_dir):
    item = {k: str(phantom_dir / v) for k, v in load_datalist(phantom_dir / "datalist.json", root=".")[0].items()}
    chain = sketch_transforms([32, 64], band_height=48, flip=0.0, seed=3, line_width=[1.0, 2.0], deform=0.0, jitter=0.0,
                              drop_prob=0.0)
    d = chain(dict(item))
    assert sorted(d) == ["cond", "image", "label"]
    assert d["cond"].shape == d["image"].shape == d["label"].shape == (1, 32, 64)
    assert set(torch.unique(d["cond"]).tolist()) <= {-1.0, 0.0, 1.0} and (d["cond"] == 1).any()
    # with no deformation or drops the sketch-derived label is the band label itself
    band = sketch_transforms([32, 64], band_height=48, seed=3, deform=0.0, jitter=0.0, drop_prob=0.0, fluid_prob=0.0)
    ref = band.transforms[0](dict(item))["label"]
    assert torch.equal(band(dict(item))["label"].long(), torch.as_tensor(ref).long())

    full = LayerThicknessStats.fit_datalist(phantom_dir / "datalist.json")
    banded = LayerThicknessStats.fit_datalist(phantom_dir / "datalist.json", band_height=48, image_size=[32, 64])
    # a 48-row band of 64-row scans: every layer is a larger share of the height
    assert np.all(np.asarray(banded.thickness_mean) > np.asarray(full.thickness_mean))
    assert "48-row band at [32, 64]" in banded.source
    assert LayerThicknessStats.duke_defaults(224).thickness_mean[0] > LayerThicknessStats.duke_defaults().thickness_mean[0]
    with pytest.raises(ValueError, match="sketch-stats"):
        LayerThicknessStats.duke_defaults(100)


def test_sketch_source_pair_writer_and_adapt(tmp_path):
    src = sketch_source(3, [32, 64], band_height=224, seed=5, line_width=[1.0, 2.0], deform=0.3)  # deform is switched off
    assert src.dataset.sketcher.deform == 0.0 and src.dataset.sketcher.drop_prob == 0.0
    out = src([2, 0], None, torch.device("cpu"))
    ref = RandomSketchDataset(3, LayerThicknessStats.duke_defaults(224), (32, 64), seed=5,
                              sketcher=LayerSketch(deform=0.0, jitter=0.0, drop_prob=0.0, line_width=[1.0, 2.0]))
    assert torch.equal(out["cond"][0], ref[2]["sketch"]) and torch.equal(out["label"][1], ref[0]["label"])
    writer = PairWriter(tmp_path, extra_dirs=["sketches"])
    with pytest.raises(ValueError, match="extra_dirs"):
        writer.write([0], torch.zeros(1, 1, 32, 64), out["label"][:1])
    writer.write([7], torch.zeros(1, 1, 32, 64), out["label"][:1], {"sketches": out["cond"][:1]})
    assert writer.done(7) and (tmp_path / "sketches" / "synth_00007.png").is_file()
    (tmp_path / "sketches" / "synth_00007.png").unlink()
    assert not writer.done(7)

    # stage 1 (image + 10 condition channels) into the sketch model (image + 1): the image channel kept, the sketch's zero
    state = {"w": torch.randn(4, 11, 3, 3)}
    net = torch.nn.Module()
    net.register_parameter("w", torch.nn.Parameter(torch.zeros(4, 2, 3, 3)))
    assert adapt_input_channels(state, net, keep=1) == ["w"]
    assert state["w"].shape == (4, 2, 3, 3) and not state["w"][:, 1].any() and state["w"][:, 0].abs().sum() > 0


@pytest.mark.slow
def test_sketch_stages_on_phantom(phantom_dir, tmp_path):
    runs = tmp_path / "runs"
    stage("pretrain", dataset_dir=phantom_dir, output_dir=runs / "pre", max_epochs=1, **dict(TINY, sample_interval=0))
    pre = torch.load(runs / "pre" / "model.pt", weights_only=True)
    # from stage 1 with a learning rate of 0: every weight is stage 1's, the sketch channel of the input conv zero
    log = stage("train_sketch", dataset_dir=phantom_dir, output_dir=runs / "sk0", max_epochs=1,
                pretrained_ckpt=runs / "pre" / "model.pt", **dict(TINY, learning_rate=0.0, sample_interval=0))
    assert "first 1 kept" in log
    sk0 = torch.load(runs / "sk0" / "model_raw.pt", weights_only=True)
    w = sk0["conv_in.conv.weight"]
    assert w.shape[1] == 2 and torch.equal(w[:, :1], pre["conv_in.conv.weight"][:, :1]) and not w[:, 1].any()
    assert all(torch.equal(sk0[k], v) for k, v in pre.items() if k != "conv_in.conv.weight")

    log = stage("train_sketch", dataset_dir=phantom_dir, output_dir=runs / "sk", max_epochs=2, **TINY)
    assert "Epoch[2] Complete" in log
    assert sorted(p.name for p in (runs / "sk" / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]

    stats = tmp_path / "stats.json"
    subprocess.run([sys.executable, "-m", "monai_oct", "sketch-stats", str(phantom_dir / "datalist.json"), "--out", str(stats),
                    "--band-height", "48", "--size", "32", "64"], check=True, capture_output=True, env={**ENV, "PYTHONPATH": str(ROOT)})
    out = tmp_path / "synth"
    args = dict(output_dir=out, image_ckpt=runs / "sk" / "model.pt", num_samples=5, sampler="ddim", num_inference_steps=3,
                sketch_stats=stats, **dict(TINY, batch_size=2))
    stage("synthesize_sketch", **args)
    manifest = check_sketch_synthetic(out, 5, (32, 64))
    assert manifest["sketch_stats"] == str(stats) and manifest["checkpoints"]["image"] == str(runs / "sk" / "model.pt")
    # the sketch written for sample i is random sketch (seed, i) rendered like training without the augmentation
    ref = RandomSketchDataset(5, LayerThicknessStats.load(stats), (32, 64), seed=0,
                              sketcher=LayerSketch(deform=0.0, jitter=0.0, drop_prob=0.0, line_width=[1.0, 2.0]))
    for i in (0, 4):
        expect = np.round((ref[i]["sketch"][0].numpy() + 1) * 127.5)
        assert np.array_equal(read_image(out / "sketches" / f"synth_{i:05d}.png"), expect)
        assert np.array_equal(read_label(out / "labels" / f"synth_{i:05d}.png"), ref[i]["label"][0].numpy())

    # resume: one sample's image and sketch gone -> exactly it is redone, bit for bit
    before = (out / "images" / "synth_00003.png").read_bytes()
    (out / "images" / "synth_00003.png").unlink()
    (out / "sketches" / "synth_00003.png").unlink()
    log = stage("synthesize_sketch", **args)
    assert "4 of 5 pairs already" in log
    assert (out / "images" / "synth_00003.png").read_bytes() == before
    check_sketch_synthetic(out, 5, (32, 64))


@pytest.mark.slow
def test_sketch_stages_on_duke(duke_dir, tmp_path):
    duke = dict(TINY, image_size=[32, 64], band_height=224, channels=[8, 16], batch_size=8, sample_interval=0)
    stage("train_sketch", dataset_dir=duke_dir, output_dir=tmp_path / "sk", max_epochs=1, **duke)
    out = tmp_path / "synth"
    stage("synthesize_sketch", output_dir=out, image_ckpt=tmp_path / "sk" / "model.pt", num_samples=3, sampler="ddim",
          num_inference_steps=2, output_size=[112, 256], **dict(duke, batch_size=3))  # built-in 224-band stats
    manifest = check_sketch_synthetic(out, 3, (112, 256))
    assert manifest["sketch_stats"].startswith("built-in")


def _wu_module():
    return load_benchmark("wu_sketch")


def test_wu_table_writer(tmp_path):
    wu = _wu_module()

    def fake(mean):
        return {"mean_dice": mean, "mean_pa": mean + 0.01,
                "groups": {g: {"dice": mean - 0.1 * k} for k, g in enumerate(("NFL-IPL", "ONL-ISM", "IRF"))},
                "classes": {str(c): {"dice": mean + c / 100} for c in range(10)}}

    res = {"unet": {"real": fake(0.8), "synth_sketch": fake(0.6), "synth_distilled": fake(0.7), "real_synth": fake(0.85),
                    "label_agreement": {"pixel_agreement": 0.9, "mean_dice": 0.75}}}
    wu.write_results(tmp_path, "tiny", wu.SCALES["tiny"], 8, 3, "cpu", "1,1", tmp_path / "val.json", res, 90.0,
                     {"train_sketch": 30.0, "synthesize_sketch": 60.0})
    md = (tmp_path / "results.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| ") and "0." in l]
    assert "| real | 66 real | - | 0.800 | 0.800 | 0.700 | 0.600 | 0.810 |" in rows
    assert "| synth_sketch | - | 8 (sketch labels) | 0.600 |" in md and "| synth_distilled | - | 8 (distilled labels) | 0.700 |" in md
    assert "| real_synth | 66 real | 8 (distilled labels) | 0.850 |" in md
    assert "| real_synth | 0.860 | 0.870 | 0.880 | 0.890 | 0.900 | 0.910 | 0.920 | 0.930 | 0.940 |" in md  # per class 1-9
    assert "pixel agreement 0.900" in md and "| synthesize_sketch | 1.0 |" in md
    meta = json.loads((tmp_path / "results.json").read_text())
    assert meta["meta"]["seed"] == 3 and meta["meta"]["scale"] == "tiny" and meta["meta"]["wall_time_min"] == 1.5
    assert {"torch", "monai", "monai_oct"} <= set(meta["meta"]["versions"])
    assert meta["segmentation"]["unet"]["synth_distilled"]["mean_dice"] == 0.7
