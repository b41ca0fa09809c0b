"""``benchmarks/drive_av.py``: the plan (the steps of a dry run in order, with the overrides each passes), the
results (tables, targets, results.json, figure) from fake metrics, and the cpu_mini preset's sizes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import load_benchmark
from monai_oct.core.io import read_image, read_json, write_json
from monai_oct.phantoms.fundus import write_fundus_phantom_dataset


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("drive_av")


def _dry_run(bench, capsys, tmp_path, *args):
    """``[(step, {override: value}, config files)]`` of a dry run, in the order the plan started them."""
    assert bench.main(["--out", str(tmp_path), "--dry-run", "--jobs", "1", *args]) == 0
    steps = []
    for line in capsys.readouterr().out.splitlines():
        m = re.match(r"\[run \] (\S+): (.*)$", line)
        if m:
            cmd = m.group(2)
            files = re.search(r"--config_file (\[.*?\])", cmd)
            overrides = dict(re.findall(r"--(\w+) (\S+)", cmd.split("] ", 1)[-1] if files else cmd))
            steps.append((m.group(1), overrides, files.group(1) if files else ""))
    return steps


def test_dry_run_lists_the_steps_in_order_with_the_right_overrides(bench, capsys, tmp_path):
    steps = _dry_run(bench, capsys, tmp_path, "--scale", "smoke", "--seeds", "0,1", "--tasks", "vessel,av")
    names = [s[0] for s in steps]
    # data, 4 generative stages, the quality report, 2 tasks x 3 sets x 2 seeds x (train + evaluate), one adherence
    # check a task
    assert len(names) == 1 + 4 + 1 + 2 * 3 * 2 * 2 + 2 and len(set(names)) == len(names)
    assert names[0] == "data"
    pos = names.index
    assert pos("synthesize") < pos("quality")
    assert pos("train_autoencoder") < pos("train_images") < pos("synthesize") and pos("train_masks") < pos("synthesize")
    for task in ("vessel", "av"):
        for key in ("real", "synthetic", "mixed"):
            for seed in (0, 1):
                run = f"{task}_{key}_seed{seed}"
                assert pos(f"seg_{run}") < pos(f"eval_{run}")
                if key != "real":
                    assert pos("synthesize") < pos(f"seg_{run}")
        assert pos(f"eval_{task}_real_seed0") < pos(f"adherence_{task}") and pos("synthesize") < pos(f"adherence_{task}")
    by = {n: (o, f) for n, o, f in steps}
    out = str(tmp_path.resolve())
    for stage in ("train_masks", "train_autoencoder", "train_images", "synthesize"):
        o, files = by[stage]
        assert files.rstrip("]'").endswith("fundus_av/configs/presets/cpu_smoke.yaml"), files  # the preset last
        assert o["dataset_dir"] == f"{out}/data" and o["output_dir"].startswith(out) and o["seed"] == "0"
        assert o["meta_file"].endswith("fundus_av/configs/metadata.json")  # the fundus bundle's, not oct_ddpm's
    synth = by["synthesize"][0]
    assert synth["num_samples"] == "2" and synth["latent_ckpt"] == f"{out}/autoencoder/model.pt"
    assert synth["image_ckpt"] == f"{out}/images/model.pt" and synth["mask_ckpt"] == f"{out}/masks/model.pt"
    assert by["train_images"][0]["latent_ckpt"] == f"{out}/autoencoder/model.pt"
    real, syn = f"{out}/data/datalist.json", f"{out}/synth_N/datalist.json"
    mixed = by["seg_av_mixed_seed1"][0]
    assert mixed["datalist"] == f"['{real}','{syn}']" and mixed["mix_ratio"] == "[1.0,1.0]"
    assert mixed["task"] == "av" and mixed["seed"] == "1" and mixed["val_interval"] == "2"  # cpu_smoke: 1 epoch, no validation
    assert by["seg_vessel_synthetic_seed0"][0]["datalist"] == syn and by["seg_vessel_real_seed0"][0]["datalist"] == real
    ev = by["eval_av_real_seed0"][0]
    assert ev["ckpt"] == f"{out}/seg/av_real_seed0/model_final.pt" and ev["datalist"] == real  # the held-out list
    assert by["eval_av_real_seed0"][1].rstrip("]'").endswith("presets/cpu_smoke.yaml")
    adh = by["adherence_vessel"][0]  # the real-only segmenter on the synthetic set, its "training" list
    assert adh["datalist"] == syn and adh["datalist_key"] == "['training']" and adh["task"] == "vessel"
    assert adh["ckpt"] == f"{out}/seg/vessel_real_seed0/model_final.pt"


def test_test_datalist_is_what_every_evaluation_and_validation_reads(bench, capsys, tmp_path):
    other = tmp_path / "other.json"
    steps = _dry_run(bench, capsys, tmp_path / "o", "--scale", "smoke", "--test-datalist", str(other))
    evals = [o for n, o, _ in steps if n.startswith("eval_")]
    assert len(evals) == 3 and all(o["datalist"] == str(other.resolve()) for o in evals)
    assert all(o["val_datalist"] == str(other.resolve()) for n, o, _ in steps if n.startswith("seg_"))


def test_bad_seeds_and_tasks_are_named(bench, capsys, tmp_path):
    with pytest.raises(SystemExit):
        bench.main(["--scale", "smoke", "--out", str(tmp_path), "--dry-run", "--tasks", "vessel,layers"])
    assert "--tasks 'vessel,layers': unknown ['layers']" in capsys.readouterr().err.strip().splitlines()[-1]


def _fake(dice, sens=0.7, spec=0.98, auc=0.95, av=None):
    m = {"val_vessel_dice": dice, "val_vessel_sensitivity": sens, "val_vessel_specificity": spec, "val_vessel_auc": auc}
    return m if av is None else {**m, "val_av_accuracy": av}


def test_results_table_and_targets_from_fake_metrics(bench):
    results = {"av": {"real": {0: _fake(0.70, av=0.80), 1: _fake(0.72, av=0.84)},
                      "synthetic": {0: _fake(0.60, av=0.70), 1: _fake(0.62, av=0.70)},
                      "mixed": {0: _fake(0.74, av=0.81), 1: _fake(0.76, av=0.81)}},
               "vessel": {"real": {0: _fake(0.75)}}}
    lines = bench.results_table(results, n=40)
    assert lines[0].split("|")[4:9] == [" vessel Dice ", " sensitivity ", " specificity ", " AUC ", " A/V accuracy "]
    rows = {tuple(c.strip() for c in ln.split("|")[1:3]): [c.strip() for c in ln.split("|")[3:-1]] for ln in lines[2:]}
    assert rows[("av", "real 15")] == ["0,1", "0.710 ± 0.010", "0.700 ± 0.000", "0.980 ± 0.000", "0.950 ± 0.000", "0.820 ± 0.020"]
    assert rows[("av", "synthetic 40")][1] == "0.610 ± 0.010" and rows[("av", "real 15 + synthetic 40")][5] == "0.810 ± 0.000"
    assert rows[("vessel", "real 15")][5] == "n/a"  # the vessel task has no A/V accuracy
    goals = {t: (m, ok) for t, m, ok in bench.targets(results, {"num_maps": 2, "min_connected_fraction": 0.9,
                                                                  "maps_connected": 1, "av_adjacent_pixels": 0})}
    assert goals["av: real + synthetic beats real only in vessel Dice"] == ("0.750 vs 0.710", True)
    assert goals["av: real + synthetic beats real only in A/V accuracy"] == ("0.810 vs 0.820", False)
    assert goals["av: synthetic only within 0.05 vessel Dice of real only"] == ("0.610 vs 0.710", False)
    assert goals[">= 95 % of vessel pixels in components touching the disc (every generated map)"][1] is False
    assert goals["artery and vein never adjacent without a crossing"][1] is True


def test_write_results_writes_the_table_json_and_figure(bench, tmp_path):
    """results.md / results.json / figure.png from fake metrics, a phantom as the real set and another as the
    'synthetic' one (its datalist and manifest as the synthesis writes them)."""
    import argparse

    real = write_fundus_phantom_dataset(tmp_path / "real", num=3, size=128, seed=0)
    synth = tmp_path / "synth"
    items = read_json(write_fundus_phantom_dataset(synth, num=2, size=128, seed=5))["train"]
    write_json(synth / "datalist.json", {"training": items})
    write_json(synth / "manifest.json", {"status": "complete", "plausibility": {
        "num_maps": 2, "connected_fraction": 0.99, "min_connected_fraction": 0.98, "maps_connected": 2, "av_adjacent_pixels": 0}})
    a = argparse.Namespace(scale="smoke", seed=0, device="cpu", mix_ratio="1,1", jobs=1, threads=1)
    cfg = {"why": "a test", "preset": "cpu_smoke", "seeds": [0], "tasks": ["av"]}
    results = {"av": {"real": {0: _fake(0.7, av=0.8)}, "mixed": {0: _fake(0.8, av=0.9)}}}
    bench.write_results(tmp_path, a, cfg, 2, real, real, synth, results, 60.0, {"train_masks": 30.0},
                        {"av": _fake(0.6, av=0.7)})
    md = (tmp_path / "results.md").read_text()
    assert "| av | real 2 | 0 | 0.700 ± 0.000 |" in md and "| av | real 2 + synthetic 2 | 0 | 0.800 ± 0.000 |" in md  # 2 train
    assert "| av: real + synthetic beats real only in A/V accuracy | 0.900 vs 0.800 | yes |" in md
    assert "| synthetic (train_masks, vessel-tree decoding) | 2 | 0.990 (lowest 0.980) | 2 | 0 | n/a | n/a |" in md
    assert "| av | 0.600 | 0.700 | 0.980 | 0.950 | 0.700 |" in md  # adherence
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["segmentation"]["av"]["mixed"]["val_vessel_dice"] == pytest.approx(0.8)
    assert res["plausibility"]["real"]["num_maps"] == 2  # the real train list of the phantom (one is validation)
    assert res["plausibility"]["real"]["connected_fraction"] >= 0.95 and res["meta"]["step_minutes"] == {"train_masks": 0.5}
    fig = read_image(tmp_path / "figure.png")
    assert fig.shape == (2 * (128 + 4), 4 * 128 + 3 * 4, 3)  # two rows of (real, its map, synthetic, its map)
    assert np.all(fig[:128, 128:132] == 255) and fig[:128, 132:260].max() > 0


def test_read_metrics_reads_what_metrics_saver_writes(bench, tmp_path):
    """evaluate_seg's metrics.csv (MONAI's MetricsSaver: "name,value" rows, NaN where a metric had nothing to score).
    The smoke scale end to end (``drive_av.py --scale smoke``: 11 bundle processes, ~2 min of CPU) does not fit a
    test's 90 s; test_fundus_bundle.py's chain runs the same stages."""
    (tmp_path / "metrics.csv").write_text("val_vessel_dice,0.81\nval_av_accuracy,nan\n\n")
    got = bench.read_metrics(tmp_path / "metrics.csv")
    assert got["val_vessel_dice"] == pytest.approx(0.81) and set(got) == {"val_vessel_dice", "val_av_accuracy"}
    assert np.isnan(got["val_av_accuracy"])
    assert bench.seed_means({0: got, 1: {"val_vessel_dice": 0.79, "val_av_accuracy": 0.5}})["val_av_accuracy"] == 0.5


def _parsed(stage, preset, *keys):
    from monai.bundle import ConfigParser

    from monai_oct.bundle import fundus_stage_configs

    parser = ConfigParser()
    parser.read_config(fundus_stage_configs(stage, preset))
    return [parser.get_parsed_content(k) for k in keys]


def test_cpu_mini_sizes_every_stage_consistently():
    """cpu_mini: photographs at 512x512 (latent, f = 4), the mask DDPM at 256x256 whose samples synthesis enlarges
    to 512x512 (``--mask_size``) with the widths it was trained with, the segmenter at 512x512, the same UNet for
    training and evaluation."""
    masks = _parsed("train_masks", "cpu_mini", "image_size", "channels", "max_epochs", "batch_size")
    images = _parsed("train_images", "cpu_mini", "image_size", "channels", "max_epochs", "ema_decay")
    ae = _parsed("train_autoencoder", "cpu_mini", "image_size", "ae_channels", "batch_size", "learning_rate")
    synth = _parsed("synthesize", "cpu_mini", "image_size", "channels", "mask_channels", "label_source#image_size",
                    "label_source#label_size", "num_samples", "num_inference_steps", "label_config#mask_size")
    seg = _parsed("train_seg", "cpu_mini", "image_size", "channels", "max_epochs", "samples_per_epoch", "batch_size")
    ev = _parsed("evaluate_seg", "cpu_mini", "image_size", "channels")
    assert masks == [[256, 256], [16, 32, 64, 64], 20, 4]
    assert images == [[512, 512], [32, 64, 64, 128], 40, 0.99] and ae == [[512, 512], [32, 64, 64], 8, 5.0e-4]
    assert synth[0] == [512, 512] and synth[1] == images[1]  # the image UNet as trained
    assert synth[2] == masks[1] and synth[3] == masks[0] == synth[7]  # the mask UNet as trained, sampled at its size
    assert synth[4] == [512, 512] and synth[5:7] == [16, 20]  # maps enlarged to the images' size
    assert seg == [[512, 512], [8, 16, 32, 64], 5, 80, 4] and ev == seg[:2]


def test_mask_size_defaults_to_the_image_size():
    """Without a preset's --mask_size the mask DDPM samples at --image_size, as before (the smoke chain's case)."""
    assert _parsed("synthesize", "cpu_smoke", "label_source#image_size", "label_source#label_size") == [[128, 128]] * 2


def test_gpu_scale_sizes_every_stage_consistently(bench, capsys, tmp_path):
    """The gpu scale (written down, not run here): masks drawn at the images' 512x512 (no enlargement), the synthesis
    samples the mask and image UNets with the widths they were trained with, the same segmenter for training and
    evaluation, and the dry run passes the gpu preset to every generative stage."""
    masks = _parsed("train_masks", "gpu", "image_size", "channels")
    images = _parsed("train_images", "gpu", "image_size", "channels", "max_epochs")
    synth = _parsed("synthesize", "gpu", "image_size", "channels", "mask_channels", "label_source#image_size",
                    "label_source#label_size", "num_samples")
    seg = _parsed("train_seg", "gpu", "image_size", "channels")
    assert masks[0] == images[0] == synth[0] == synth[3] == synth[4] == [512, 512]
    assert synth[1] == images[1] and synth[2] == masks[1] and synth[5] == 200 and images[2] >= 1000
    assert _parsed("evaluate_seg", "gpu", "image_size", "channels") == seg
    steps = {n: f for n, _, f in _dry_run(bench, capsys, tmp_path, "--scale", "gpu", "--device", "cuda:0")}
    for stage in ("train_masks", "train_autoencoder", "train_images", "synthesize"):
        assert steps[stage].rstrip("]'").endswith("fundus_av/configs/presets/gpu.yaml"), steps[stage]


def test_connectivity_target_judges_the_sampled_maps_and_blobs_are_not_trees(bench):
    """The decoded maps are connected by construction (VesselTreeDecode removes what misses the disc): the mini
    run's noise blobs scored 0.998. Where the synthesis recorded its decoding, the target reads the sampled maps'
    connectivity; and maps far from the real maps' vessel fraction and width fail the shape check."""
    plaus = {"num_maps": 2, "min_connected_fraction": 0.998, "maps_connected": 2, "av_adjacent_pixels": 0,
             "vessel_fraction": 0.026, "vessel_width": 6.9,
             "decoding": {"maps": 2, "connected_fraction": 0.6, "min_connected_fraction": 0.4, "maps_connected": 0}}
    real = {"vessel_fraction": 0.082, "vessel_width": 4.4}
    goals = {t: (m, ok) for t, m, ok in bench.targets({}, plaus, real)}
    m, ok = goals[">= 95 % of vessel pixels in components touching the disc (every generated map)"]
    assert ok is False and m == "0/2 maps, lowest 0.400 (sampled, before the decoding)"
    shape = [v for t, v in goals.items() if t.startswith("trees, not blobs")]
    assert shape == [("fraction 0.32 x, width 1.57 x", False)]
    plaus.update(vessel_fraction=0.07, vessel_width=4.8, decoding=None)
    goals = {t: (m, ok) for t, m, ok in bench.targets({}, plaus, real)}
    assert goals[">= 95 % of vessel pixels in components touching the disc (every generated map)"] == (
        "2/2 maps, lowest 0.998 (decoded)", True)
    assert [ok for t, (_, ok) in goals.items() if t.startswith("trees, not blobs")] == [True]


def test_long_scale_trains_longer_on_real_maps(bench, capsys, tmp_path):
    """--scale long: no train_masks step, the synthesis reads the real train maps (--label_datalist, no mask
    checkpoint), the autoencoder and the image model get the scale's epochs, N = 30; --label-source masks restores
    the mask model."""
    steps = {n: o for n, o, _ in _dry_run(bench, capsys, tmp_path, "--scale", "long")}
    assert "train_masks" not in steps
    synth, out = steps["synthesize"], str(tmp_path.resolve())
    assert synth["label_datalist"] == f"{out}/data/datalist.json" and "mask_ckpt" not in synth and synth["num_samples"] == "30"
    assert steps["train_autoencoder"]["max_epochs"] == "300" and steps["train_images"]["max_epochs"] == "200"
    steps = {n: o for n, o, _ in _dry_run(bench, capsys, tmp_path, "--scale", "long", "--label-source", "masks")}
    assert "train_masks" in steps and steps["synthesize"]["mask_ckpt"] == f"{out}/masks/model.pt"


def test_quality_lines_read_the_evaluate_report(bench, tmp_path):
    assert bench.quality_lines(tmp_path / "report.json") == [f"Not run (no {tmp_path / 'report.json'})."]
    write_json(tmp_path / "report.json", {"frechet": {"fd": 85.6, "kid": 0.019, "fd_floor": 76.3, "fd_matched": 83.6,
                                                      "extractor": "tf_inception"},
                                          "diversity": {"ms_ssim": {"real": {"mean": 0.688}, "synthetic": {"mean": 0.9}}},
                                          "memorisation": {"pixel": {"fraction_flagged": 0.0}}})
    lines = bench.quality_lines(tmp_path / "report.json")
    assert lines[2] == "| 85.600 | 0.019 | 76.300 | 83.600 | 0.688 | 0.900 | 0.000 |" and "tf_inception" in lines[-1]


def test_autoencoder_check_reconstructs_the_held_out_photographs(bench, tmp_path):
    """Before any latent image model is judged: the autoencoder's reconstruction of the held-out photographs (L1
    inside the FOV, a real | reconstruction figure), written once and read back; None before the autoencoder exists."""
    import torch

    from monai_oct.networks.autoencoder import build_autoencoder, write_latent_json

    data = write_fundus_phantom_dataset(tmp_path / "data", num=3, size=64, seed=0)
    assert bench.autoencoder_check(tmp_path, data, [64, 64]) is None  # not trained yet
    cfg = {"kind": "kl", "image_channels": 3, "channels": [8, 8], "latent_channels": 4, "num_res_blocks": 1}
    torch.manual_seed(0)
    (tmp_path / "autoencoder").mkdir()
    torch.save(build_autoencoder(**cfg).state_dict(), tmp_path / "autoencoder" / "model.pt")
    write_latent_json(tmp_path / "autoencoder" / "model.pt", 1.0, cfg)
    rec = bench.autoencoder_check(tmp_path, data, [64, 64])
    validation = read_json(data)["validation"]
    assert len(rec["l1"]) == len(validation) >= 1 and rec["mean_l1"] == pytest.approx(np.mean(rec["l1"]))
    assert rec["mean_l1"] > 0.05  # untrained
    fig = read_image(tmp_path / "autoencoder" / "recon_check.png")
    assert fig.shape == (64 * len(validation), 128, 3)
    (tmp_path / "autoencoder" / "model.pt").unlink()
    assert bench.autoencoder_check(tmp_path, data, None) == rec  # read back, not recomputed
