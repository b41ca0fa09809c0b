"""The pieces of ``benchmarks/duke_retidiff.py`` that decide what runs and what is reported: the step plan
(dependencies, steps at once, failures), per-subject Dice and the seed means of results.json."""

import threading
import time

import numpy as np
import pytest

from conftest import load_benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("duke_retidiff")

def test_plan_respects_dependencies_and_the_number_of_jobs(bench):
    plan, order, lock = bench.Plan(jobs=2), [], threading.Lock()
    running, peak = [0], [0]

    def step(name):
        def run():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.05)
            with lock:
                running[0] -= 1
                order.append(name)
        return run

    plan.add("a", step("a"))
    plan.add("b", step("b"), after=["a"])
    plan.add("c", step("c"))
    plan.add("d", step("d"))
    plan.add("e", step("e"), after=["b", "d"])
    plan.run()
    assert sorted(order) == list("abcde")
    assert order.index("a") < order.index("b") < order.index("e") and order.index("d") < order.index("e")
    assert peak[0] == 2  # never more than jobs at once, and it did run two at once

def test_plan_stops_starting_steps_after_a_failure_and_raises_it(bench):
    plan, ran = bench.Plan(jobs=1), []

    def fail():
        raise RuntimeError("step a failed")

    plan.add("a", fail)
    plan.add("b", lambda: ran.append("b"))
    with pytest.raises(RuntimeError, match="step a failed"):
        plan.run()
    assert ran == []

def test_plan_rejects_unknown_dependencies_and_repeated_names(bench):
    plan = bench.Plan(jobs=1)
    plan.add("a", lambda: None)
    with pytest.raises(ValueError, match="waits on unknown steps \\['z'\\]"):
        plan.add("b", lambda: None, after=["z"])
    with pytest.raises(ValueError, match="added twice"):
        plan.add("a", lambda: None)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        bench.Plan(jobs=0)

def test_per_subject_dice_and_seed_means(bench, tmp_path):
    csv = tmp_path / "per_image.csv"
    head = "image," + ",".join(f"dice_{c}" for c in range(10)) + ",pa_all\n"
    rows = ["a/Subject_07_00.png," + ",".join(["1.0"] * 9 + ["0.5"]) + ",0.9",
            "a/Subject_07_01.png," + ",".join(["0.5"] * 9 + [""]) + ",0.9",  # no fluid: NaN, skipped for class 9
            "a/Subject_08_00.png," + ",".join(["0.8"] * 10) + ",0.9"]
    csv.write_text(head + "\n".join(rows) + "\n")
    got = bench.per_subject_dice(csv)
    # Subject 07: classes 1-8 average 0.75 over the two images, fluid 0.5 from the one image that has it
    assert got["Subject_07"] == pytest.approx((8 * 0.75 + 0.5) / 9, abs=1e-4)
    assert got["Subject_08"] == pytest.approx(0.8)
    runs = {0: {"mean_dice": 0.7, "mean_pa": 0.8, "pixel_accuracy": 0.9, "groups": {"IRF": {"dice": 0.2}},
                "classes": {"9": {"dice": 0.2}}, "per_subject": {"Subject_07": 0.6}},
            1: {"mean_dice": 0.8, "mean_pa": 0.9, "pixel_accuracy": 0.95, "groups": {"IRF": {"dice": 0.4}},
                "classes": {"9": {"dice": 0.4}}, "per_subject": {"Subject_07": 0.8}}}
    m = bench.seed_mean(runs)
    assert m["seeds"] == [0, 1] and m["mean_dice"] == pytest.approx(0.75) and m["groups"]["IRF"]["dice"] == pytest.approx(0.3)
    assert m["per_subject"]["Subject_07"] == pytest.approx(0.7) and np.isfinite(m["pixel_accuracy"])
    table = bench.seed_table({"R66_S0": runs}, ["R66_S0", "R66_SN"])
    assert len(table) == 3 and "0.750 ± 0.050" in table[2]

def test_latent_scale_trains_the_autoencoder_first_and_gives_it_to_every_image_stage(bench, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "duke_dme").mkdir(parents=True)
    (data / "duke_dme" / "datalist_train.json").write_text('{"train": [{"image": "a.png", "label": "a_label.png"}]}')
    out = tmp_path / "out"
    assert bench.main(["--scale", "mini_latent", "--out", str(out), "--data", str(data), "--dry-run"]) == 0
    lines = {ln.split(":")[0].removeprefix("[run ] "): ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[run ]")}
    ae = str(out / "stage0_autoencoder" / "model.pt")
    assert list(lines).index("stage0_autoencoder") < list(lines).index("stage1_pretrain")
    assert "train_autoencoder.yaml" in lines["stage0_autoencoder"] and "cpu_mini_latent.yaml" in lines["stage0_autoencoder"]
    for step in ("stage1_pretrain", "stage3_finetune", "synthesize_N_boundaries", "synthesize_66"):
        assert f"--latent_ckpt {ae}" in lines[step], step
    seg = lines["seg_unet_R66_S0_seed0"]
    assert "oct_layer_seg/configs/presets/cpu_mini.yaml" in seg and "--latent_ckpt" not in seg  # the mini segmenter, unchanged
    assert "stage2_masks" not in lines  # the latent scale's label maps come from the boundary model only


def test_networks_option_overrides_the_scale_and_rejects_unknown_names(bench, tmp_path, capsys):
    assert bench.parse_networks("UNet, ynet,relaynet,gdnet,ynet") == ["unet", "ynet", "relaynet", "gdnet"]
    with pytest.raises(ValueError, match="unknown vnet; choose from unet, basicunet, relaynet, ynet, gdnet"):
        bench.parse_networks("unet,vnet")
    data = tmp_path / "data"
    (data / "duke_dme").mkdir(parents=True)
    (data / "duke_dme" / "datalist_train.json").write_text('{"train": [{"image": "a.png", "label": "a_label.png"}]}')
    out = tmp_path / "out"
    assert bench.main(["--scale", "tiny", "--out", str(out), "--data", str(data), "--dry-run", "--networks", "ynet,gdnet"]) == 0
    steps = [ln.split(":")[0].removeprefix("[run ] ") for ln in capsys.readouterr().out.splitlines() if ln.startswith("[run ]")]
    segs = {s.split("_")[1] for s in steps if s.startswith("seg_")}
    assert segs == {"ynet", "gdnet"}, steps
    with pytest.raises(SystemExit):
        bench.main(["--scale", "tiny", "--out", str(out), "--data", str(data), "--dry-run", "--networks", "vnet"])
    assert "unknown vnet" in capsys.readouterr().err
    # --seg-epochs: every segmentation run trains that many epochs, the evaluations take no such override
    assert bench.main(["--scale", "tiny", "--out", str(out), "--data", str(data), "--dry-run", "--seg-epochs", "3"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[run ]")]
    assert all("--max_epochs 3 " in ln for ln in lines if ln.startswith("[run ] seg_")) and any(ln.startswith("[run ] seg_") for ln in lines)
    assert not any("--max_epochs" in ln for ln in lines if ln.startswith("[run ] eval_"))
    with pytest.raises(SystemExit):
        bench.main(["--scale", "tiny", "--out", str(out), "--data", str(data), "--dry-run", "--seg-epochs", "0"])
    assert "--seg-epochs must be >= 1, got 0" in capsys.readouterr().err


def test_rows_option_trains_only_the_rows_named(bench, tmp_path, capsys):
    assert bench.parse_rows(None) == set(bench.ROWS)
    assert bench.parse_rows("R66_S0, R66_SN") == {"R66_S0", "R66_SN"}
    with pytest.raises(ValueError, match="unknown R1_S1; choose from R66_S0, R66_SN"):
        bench.parse_rows("R66_S0,R1_S1")
    with pytest.raises(ValueError, match="unknown \\(none given\\)"):
        bench.parse_rows(" , ")
    data = tmp_path / "data"
    (data / "duke_dme").mkdir(parents=True)
    (data / "duke_dme" / "datalist_train.json").write_text('{"train": [{"image": "a.png", "label": "a_label.png"}]}')
    out = tmp_path / "out"
    args = ["--scale", "mini", "--out", str(out), "--data", str(data), "--dry-run", "--networks", "unet,ynet"]
    assert bench.main(args + ["--rows", "R66_S0,R66_SN", "--seeds", "0,1"]) == 0
    segs = sorted(ln.split(":")[0].removeprefix("[run ] seg_") for ln in capsys.readouterr().out.splitlines()
                  if ln.startswith("[run ] seg_"))
    # the other label source (dmc) keeps its R66_SN row, first seed only
    assert segs == sorted([f"{n}_{r}_seed{s}" for n in ("unet", "ynet") for r in ("R66_S0", "R66_SN") for s in (0, 1)]
                          + ["unet_R66_SN_dmc_seed0", "ynet_R66_SN_dmc_seed0"])
    # without the 66/0 row the pseudo-label row and the quality report wait on no step (an earlier run's teacher serves)
    assert bench.main(args + ["--rows", "R66_SN_pseudo,R0_SN"]) == 0
    segs = {ln.split(":")[0].removeprefix("[run ] seg_") for ln in capsys.readouterr().out.splitlines() if ln.startswith("[run ] seg_")}
    assert segs == {f"{n}_{r}_seed0" for n in ("unet", "ynet") for r in ("R66_SN_pseudo", "R0_SN", "R0_SN_dmc")}
    with pytest.raises(SystemExit):
        bench.main(args + ["--rows", "R2"])
    assert "--rows 'R2': unknown R2" in capsys.readouterr().err


def _metrics(dice: dict[str, float], pa: dict[str, float]) -> dict:
    return {"mean_dice": 0.5, "mean_pa": 0.9, "groups": {g: {"dice": dice[g], "pa": pa[g]} for g in dice}}


def test_table2_rows_are_settings_by_model_with_dice_and_pixel_accuracy(bench):
    """RetiDiff's Table 2 layout from a small hand-made results dict: seed means of group Dice and PA, mean of the groups."""
    g = ("NFL-IPL", "ONL-ISM", "IRF")
    unet = {"R66_S0": {0: _metrics(dict(zip(g, (0.9, 0.8, 0.2))), dict(zip(g, (0.95, 0.9, 0.5)))),
                       1: _metrics(dict(zip(g, (0.8, 0.8, 0.4))), dict(zip(g, (0.85, 0.9, 0.7))))},
            "R66_SN": {0: _metrics(dict(zip(g, (0.9, 0.9, 0.45))), dict(zip(g, (0.9, 0.9, 0.9))))}}
    ynet = {"R66_S0": {0: _metrics(dict(zip(g, (0.7, 0.7, 0.1))), dict(zip(g, (0.8, 0.8, 0.3))))}}
    means = {net: {k: bench.seed_mean(runs) for k, runs in res.items()} for net, res in {"unet": unet, "ynet": ynet}.items()}
    assert means["unet"]["R66_S0"]["groups"]["IRF"] == pytest.approx({"dice": 0.3, "pa": 0.6})
    rows = [("R66_S0", "66", "0"), ("R0_SN", "0", "400"), ("R66_SN", "66", "400")]
    t = bench.table2(means, rows)
    assert t[0].startswith("| R/S | model | Dice NFL-IPL | Dice ONL-ISM | Dice IRF | Dice mean | PA NFL-IPL |")
    body = [ln for ln in t[2:] if ln.startswith("| 66/") or ln.startswith("| 0/")]
    assert [ln.split(" | ")[:2] for ln in body] == [["| 66/0", "unet"], ["| 66/0", "ynet"], ["| 66/400", "unet"]]
    # unet 66/0: Dice 0.85, 0.8, 0.3 (mean 0.65); PA 0.9, 0.9, 0.6 (mean 0.8)
    assert body[0].endswith("| 0.850 | 0.800 | 0.300 | 0.650 | 0.900 | 0.900 | 0.600 | 0.800 |")
    gain = [ln for ln in t if ln.startswith("| unet |")]
    assert gain == ["| unet | 0.650 | 0.750 | +0.100 | 0.300 | 0.450 | +0.150 | +50.0 % |"]
    assert not [ln for ln in t if ln.startswith("| ynet |")]  # no 66/N row: no gain
