"""The pieces of ``benchmarks/samplers.py`` that decide what runs and what is reported: the plan its ``--dry-run``
prints (each cell's sampler and steps, the model it samples, which cells are segmented), heun's NFE -> K rule and
the results writer (on fabricated metrics: what is tested is the table and JSON, not the numbers)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import load_benchmark

@pytest.fixture(scope="module")
def bench():
    return load_benchmark("samplers", "samplers_benchmark")

def _data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "duke_dme").mkdir(parents=True, exist_ok=True)
    (data / "duke_dme" / "datalist_train.json").write_text('{"train": [{"image": "a.png", "label": "a_label.png"}]}')
    return data

def _dry_run(bench, tmp_path, capsys, *args) -> tuple[dict[str, str], str]:
    out = tmp_path / "out"
    assert bench.main(["--scale", "mini", "--out", str(out), "--data", str(_data(tmp_path)), "--device", "cpu", "--dry-run", *args]) == 0
    text = capsys.readouterr().out
    steps = {ln.split(":")[0].removeprefix("[run ] "): ln for ln in text.splitlines() if ln.startswith("[run ]")}
    return steps, text

def _arg(line: str, key: str) -> str:
    m = re.search(rf"--{key} (\S+)", line)
    return m.group(1) if m else ""

def test_heun_takes_the_largest_k_whose_2k_minus_1_evaluations_fit_the_nfe(bench):
    for nfe, k in [(1000, 500), (100, 50), (50, 25), (20, 10), (10, 5), (5, 3), (1, 1)]:
        assert bench.steps_for_nfe("heun", nfe) == k
        assert bench.nfe_of("heun", k) <= nfe < bench.nfe_of("heun", k + 1)
    assert [bench.steps_for_nfe(s, 20) for s in ("ddpm", "ddim", "dpmpp2m", "dpmpp3m", "euler")] == [20] * 5
    with pytest.raises(ValueError, match="NFE must be >= 1"):
        bench.steps_for_nfe("heun", 0)

def test_mini_dry_run_plans_every_cell_on_its_model_and_segments_only_the_dice_cells(bench, tmp_path, capsys):
    steps, text = _dry_run(bench, tmp_path, capsys)
    out = tmp_path / "out"
    synth = {k.removeprefix("synth_"): v for k, v in steps.items() if k.startswith("synth_")}
    samplers, nfes = ("ddpm", "ddim", "dpmpp2m", "dpmpp3m", "euler", "heun"), (1000, 100, 50, 20, 10, 5)
    assert set(synth) == {f"{s}_{n}" for s in samplers for n in nfes} | {"dpmpp2m_20_bf16"}
    v_model, flow_model = str(out / "stage3_finetune" / "model.pt"), str(out / "stage3_finetune_flow" / "model.pt")
    labels = set()
    for name, line in synth.items():
        sampler, nfe = name.split("_")[0], int(name.split("_")[1])
        assert _arg(line, "sampler") == sampler, name
        assert int(_arg(line, "num_inference_steps")) == ((nfe + 1) // 2 if sampler == "heun" else nfe), name
        flow = sampler in ("euler", "heun")
        assert _arg(line, "image_ckpt") == (flow_model if flow else v_model), name
        assert (_arg(line, "prediction_type") == "flow") == flow, name
        assert _arg(line, "num_samples") == "64" and _arg(line, "seed") == "0", name  # the same N >= 64 maps everywhere
        assert _arg(line, "amp_dtype") == ("bfloat16" if name.endswith("_bf16") else ""), name
        labels.add(_arg(line, "boundary_model"))
    assert labels == {str(out / "boundary_model.json")}
    assert "fit-boundaries" in steps["fit_boundaries"]
    # the models: v = stage 1 -> stage 3; flow = its own flow stage 1 -> flow stage 3
    assert "--prediction_type" not in steps["stage1_pretrain"] + steps["stage3_finetune"]
    assert _arg(steps["stage1_pretrain_flow"], "prediction_type") == "flow"
    assert _arg(steps["stage3_finetune_flow"], "pretrained_ckpt") == str(out / "stage1_pretrain_flow" / "model.pt")
    # segmentation: the teacher (66/0) and, over seeds 0-2, the reference DDPM-1000, every sampler at NFE 20 and 10, bf16
    segmented = {re.sub(r"^seg_unet_R66_S64_(.*)_seed\d$", r"\1", k) for k in steps if k.startswith("seg_unet_R66_S64_")}
    assert segmented == {"ddpm_1000", "dpmpp2m_20_bf16"} | {f"{s}_{n}" for s in samplers for n in (20, 10)}
    for cell in segmented:
        assert {f"seg_unet_R66_S64_{cell}_seed{s}" for s in range(3)} <= set(steps)
        assert str(out / "cells" / cell / "datalist.json") in steps[f"seg_unet_R66_S64_{cell}_seed0"]
    assert "seg_unet_R66_S0_seed0" in steps and "seg_unet_R66_S64_ddim_50_seed0" not in steps
    assert "37 cells, 14 with Dice" in text and "'stages': 80.0" in text  # 2 x (stage 1 + stage 3) of 20 min

def test_given_checkpoints_and_teacher_train_nothing_and_dice_cells_are_checked(bench, tmp_path, capsys):
    v, flow, teacher = tmp_path / "v.pt", tmp_path / "flow.pt", tmp_path / "teacher.pt"
    with pytest.raises(SystemExit):
        _dry_run(bench, tmp_path, capsys, "--flow-ckpt", str(flow))
    assert f"no such checkpoint: --flow-ckpt {flow}" in capsys.readouterr().err.splitlines()[-1]
    for f in (v, flow, teacher):
        f.write_bytes(b"weights")
    steps, _ = _dry_run(bench, tmp_path, capsys, "--v-ckpt", str(v), "--flow-ckpt", str(flow), "--teacher", str(teacher),
                        "--samplers", "ddim,heun", "--nfe", "20,5", "--dice-cells", "heun:5", "--bf16-sampler", "none")
    assert not [k for k in steps if k.startswith("stage")] and "seg_unet_R66_S0_seed0" not in steps
    assert _arg(steps["synth_ddim_20"], "image_ckpt") == str(v) and _arg(steps["synth_heun_5"], "image_ckpt") == str(flow)
    assert {k for k in steps if k.startswith("seg_")} == {f"seg_unet_R66_S64_heun_5_seed{s}" for s in range(3)}
    # only what a cell samples is trained: no flow model without a flow sampler
    steps, _ = _dry_run(bench, tmp_path, capsys, "--samplers", "ddim", "--nfe", "5", "--bf16-sampler", "none")
    assert {k for k in steps if k.startswith("stage")} == {"stage1_pretrain", "stage3_finetune"}
    with pytest.raises(SystemExit):
        _dry_run(bench, tmp_path, capsys, "--samplers", "ddim", "--nfe", "5", "--dice-cells", "ddim:20")
    assert "--dice-cells: ddim:20 not in the grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _dry_run(bench, tmp_path, capsys, "--samplers", "ddim", "--nfe", "2000")
    assert "--nfe values in [1, 1000]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _dry_run(bench, tmp_path, capsys, "--nfe", "20,ten")
    assert "--nfe takes comma-separated integers, got '20,ten'" in capsys.readouterr().err

def test_results_writer_tables_every_cell_beside_the_reference(bench, tmp_path):
    def metrics(d):
        return {"mean_dice": d, "mean_pa": 0.9, "groups": {"IRF": {"dice": 0.3}}, "classes": {"9": {"dice": 0.3}}}

    def quality(fd):
        return {"frechet": {"fd_matched": fd, "fd_floor": 100.0, "kid_matched": 0.05, "kid_floor": 0.02},
                "adherence": {"mean_dice": 0.7}}

    C = bench.Cell
    rows = [bench.cell_row(C("ddpm", 1000), 640.0, 660.0, 64, quality(150.0), {0: metrics(0.80), 1: metrics(0.82), 2: metrics(0.81)}),
            bench.cell_row(C("ddpm", 20), 12.8, 30.0, 64, quality(300.0), None),
            bench.cell_row(C("heun", 20), 12.8, 30.0, 64, quality(180.0), {0: metrics(0.79), 1: metrics(0.80), 2: metrics(0.78)}),
            bench.cell_row(C("dpmpp2m", 20, "bfloat16"), 6.4, None, 64, None, {0: metrics(0.81)})]
    assert rows[2]["steps"] == 10 and rows[2]["nfe"] == 19 and rows[0]["s_per_pair"] == pytest.approx(10.0)
    assert rows[0]["step_s_per_pair"] == pytest.approx(660.0 / 64) and np.isnan(rows[3]["step_s_per_pair"])
    assert rows[0]["dice_mean"] == pytest.approx(0.81) and rows[0]["dice_spread"] == pytest.approx(0.01)
    assert rows[1]["fd_over_floor"] == pytest.approx(3.0) and np.isnan(rows[1]["dice_mean"]) and np.isnan(rows[3]["fd"])
    meta = {"scale": "mini", "why": "test", "num_samples": 64, "seed": 0, "seeds": [0, 1, 2], "reference": "ddpm_1000",
            "bf16": "dpmpp2m_20_bf16", "dice_cells": ["ddpm_1000", "heun_20", "dpmpp2m_20_bf16"], "labels_identical": True, "models": {"v": "v.pt", "flow": "f.pt"}, "flow_init": "flow",
            "device": "cpu", "jobs": 1, "threads": 1, "wall_time_min": 1.0, "versions": {}, "test_datalist": "val.json",
            "teacher_metrics": metrics(0.79), "step_minutes": {"synth_ddpm_1000": 10.7}}
    bench.write_results(tmp_path, meta, rows)
    md = (tmp_path / "results.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "|---" not in ln]
    assert table[0].startswith("| sampler | K | NFE | s/pair | FD | FD/floor | KID | adherence | Dice mean ± spread")
    assert table[1] == ("| ddpm (reference) | 1000 | 1000 | 10.000 | 150.0 | 1.50 | 0.0500 | 0.700 | 0.810 ± 0.010 | "
                        "0.800, 0.820, 0.810 | - |")
    assert table[2].startswith("| ddpm | 20 | 20 | 0.200 | 300.0 | 3.00 |") and table[2].endswith("| - | - | - |")
    assert table[3].startswith("| heun | 10 | 19 |") and table[3].endswith("| 0.790 ± 0.010 | 0.790, 0.800, 0.780 | -0.020 |")
    assert table[4].startswith("| dpmpp2m (bfloat16) | 20 | 20 | 0.100 | - | - | - |")
    assert table[4].endswith("| 0.810 (1 seed) | 0.810 | +0.000 |")  # no spread from one seed
    assert "only the Dice cells are segmented (ddpm_1000, heun_20, dpmpp2m_20_bf16;" in md
    assert "label maps identical across cells: True" in md and "66/0 (the teacher, seed 0): mean Dice 1-9 0.790" in md
    assert "lowest FD at NFE 20: heun" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [c["cell"] for c in saved["cells"]] == ["ddpm_1000", "ddpm_20", "heun_20", "dpmpp2m_20_bf16"]
    assert saved["cells"][2]["dice_seeds"] == {"0": 0.79, "1": 0.8, "2": 0.78} and saved["meta"]["reference"] == "ddpm_1000"
    assert saved["cells"][1]["dice_mean"] is None and "NaN" not in (tmp_path / "results.json").read_text()
    from PIL import Image

    with Image.open(tmp_path / "nfe.png") as im:
        assert im.size[0] == 840 and im.size[1] > 300
        px = np.asarray(im.convert("RGB"))
    assert (px != 255).any(axis=-1).mean() > 0.01  # axes, lines, labels drawn
    assert not list(tmp_path.glob(".tmp*")) and not list(tmp_path.glob("*.tmp"))

def test_cells_list_replaces_the_grid_and_mini_cpu_plans_its_own_cells(bench, tmp_path, capsys):
    assert bench.parse_cells("DDPM:1000, heun:10,ddpm:1000,") == [("ddpm", 1000), ("heun", 10)]
    with pytest.raises(ValueError, match="expected SAMPLER:NFE"):
        bench.parse_cells("ddpm:many")
    steps, _ = _dry_run(bench, tmp_path, capsys, "--cells", "ddpm:1000,dpmpp2m:20,heun:10", "--bf16-sampler", "none")
    assert {k.removeprefix("synth_") for k in steps if k.startswith("synth_")} == {"ddpm_1000", "dpmpp2m_20", "heun_10"}
    seg = {re.sub(r"^seg_unet_R66_S64_(.*)_seed\d$", r"\1", k) for k in steps if k.startswith("seg_unet_R66_S64_")}
    assert seg == {"ddpm_1000", "dpmpp2m_20", "heun_10"}  # default Dice cells: the reference + NFE 20 and 10
    # mini_cpu: its own cells and Dice cells, the DDPM-1000 reference, no NFE-100/50 cells of the fast samplers
    out = tmp_path / "cpu"
    assert bench.main(["--scale", "mini_cpu", "--out", str(out), "--data", str(_data(tmp_path)), "--device", "cpu", "--dry-run"]) == 0
    text = capsys.readouterr().out
    synth = {ln.split(":")[0].removeprefix("[run ] synth_") for ln in text.splitlines() if ln.startswith("[run ] synth_")}
    assert "ddpm_1000" in synth and "dpmpp2m_20_bf16" in synth and "ddim_100" not in synth and "heun_20" in synth
    seg = {re.sub(r"^\[run \] seg_unet_R66_S64_(.*)_seed\d:.*$", r"\1", ln) for ln in text.splitlines() if ln.startswith("[run ] seg_unet_R66_S64_")}
    assert seg == {"ddpm_1000", "dpmpp2m_20", "dpmpp2m_10", "dpmpp2m_20_bf16"}
    with pytest.raises(SystemExit):
        _dry_run(bench, tmp_path, capsys, "--cells", "ddpm:1000,plms:20")
    assert "['plms']" in capsys.readouterr().err

def test_bf16_cell_is_compared_with_its_float32_twin_on_shared_seeds_and_bf16_seeds_limit_its_runs(bench, tmp_path, capsys):
    def metrics(d):
        return {"mean_dice": d, "mean_pa": 0.9, "groups": {}, "classes": {}}

    q = {"frechet": {"fd_matched": 200.0, "fd_floor": 100.0}, "adherence": {"mean_dice": 0.7}}
    C = bench.Cell
    rows = [bench.cell_row(C("dpmpp2m", 20), 10.0, None, 64, q, {0: metrics(0.80), 1: metrics(0.84), 2: metrics(0.82)}),
            bench.cell_row(C("dpmpp2m", 20, "bfloat16"), 6.0, None, 64, q, {0: metrics(0.79)})]
    paired = bench.bf16_paired(rows)
    assert paired["twin"] == "dpmpp2m_20" and paired["seeds"] == [0]  # seed 0 only: the bf16 cell's one seed
    assert paired["bf16"] == pytest.approx(0.79) and paired["float32"] == pytest.approx(0.80) and paired["delta"] == pytest.approx(-0.01)
    assert bench.bf16_paired(rows[:1]) is None
    steps, _ = _dry_run(bench, tmp_path, capsys, "--cells", "ddpm:1000,dpmpp2m:20", "--bf16-seeds", "0")
    bf16 = {k for k in steps if k.startswith("seg_unet_R66_S64_dpmpp2m_20_bf16_")}
    assert bf16 == {"seg_unet_R66_S64_dpmpp2m_20_bf16_seed0"}
    assert {f"seg_unet_R66_S64_dpmpp2m_20_seed{s}" for s in range(3)} <= set(steps)
