"""benchmarks/speed.py at --quick settings: every row and column, finite overheads, failures reported not raised;
and the bf16 autocast path it times in DiffusionSampler / DiffusionTrainer on CPU."""

import json
import math

import pytest
import torch

from monai_oct.core.seeding import sample_generators
from monai_oct.engines import DiffusionSampler, DiffusionTrainer
from monai_oct.networks import conditional_diffusion_unet
from monai_oct.schedulers import diffusion_scheduler

from conftest import load_benchmark

@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed", "speed_benchmark")

@pytest.fixture(scope="module")
def quick_result(speed, tmp_path_factory):
    out = tmp_path_factory.mktemp("speed") / "speed.json"
    threads = torch.get_num_threads()
    # compile with a backend that does not exist: the "unavailable option" path, without minutes of compiling
    res = speed.main(["--quick", "--threads", "1", "--out", str(out), "--compile_backend", "no_such_backend",
                      "--variants", "baseline,no_flash,channels_last,bf16,compile"])
    assert torch.get_num_threads() == threads  # --threads is restored for the rest of the suite
    return res, out

def test_quick_table_has_every_row_and_finite_overhead(speed, quick_result):
    res, out = quick_result
    rows = {r["variant"]: r for r in res["rows"]}
    assert list(rows) == ["baseline", "no_flash", "channels_last", "bf16", "compile"]
    cols = ["DDPM-1000", "DDIM-25", "DDIM-50", "DDIM-100"]
    for name in ("baseline", "no_flash", "channels_last", "bf16"):
        r = rows[name]
        assert r["train_s_per_it"] > 0 and r["unet_forward_s"] > 0, r
        for c in cols:
            assert r[c] > 0, (name, c, r[c])
            ovh = r[f"{c} overhead"]
            assert math.isfinite(ovh) and 0.1 < ovh < 20, (name, c, ovh)  # ~1; loose: the CPU is shared
        # DDPM-1000 is 1000 x the per-step time: 1000 / 3 timed steps of a DDIM-like cost, far above DDIM-25
        assert r["DDPM-1000"] > 5 * r["DDIM-25"]
        assert isinstance(r["peak_mem_train_mib"], float) and r["peak_mem_train_mib"] >= 0
    assert rows["baseline"]["options"] == {"name": "baseline", "flash": True, "channels_last": False, "bf16": False,
                                          "compile": False}
    assert rows["no_flash"]["options"]["flash"] is False and rows["bf16"]["options"]["bf16"] is True
    table = res["table"]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert len(lines) == 1 + 5  # header + one line per variant
    for c in cols:
        assert c in lines[0]
    assert "DDPM-1000 extrapolated: 1000 x the per-step time" in table
    # written: JSON + the same table as markdown
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["rows"]] == list(rows)
    assert out.with_suffix(".md").read_text() == table

def test_every_sampler_of_the_table_has_its_column_and_overhead(speed):
    """--samplers times DPM-Solver++ and the flow samplers too; overhead is per network evaluation (heun: 2K - 1)."""
    res = speed.main(["--quick", "--threads", "1", "--variants", "baseline", "--samplers", "ddim", "dpmpp2m", "heun",
                      "--ddim_steps", "3"])
    row = res["rows"][0]
    for c in ("DDPM-1000", "DDIM-3", "DPMPP2M-3", "HEUN-3"):
        assert row[c] > 0 and 0.1 < row[f"{c} overhead"] < 20, (c, row.get(c), row.get(f"{c} overhead"))
        assert c in res["table"]
    # heun's 3 steps are counted as 5 network evaluations, DDIM's as 3: time / overhead = evaluations x bare forward / batch
    # (an identity of how the columns are made, so no timing noise enters; a wall-time ratio failed under load)
    evaluations = {c: row[c] / row[f"{c} overhead"] for c in ("HEUN-3", "DDIM-3")}
    assert evaluations["HEUN-3"] / evaluations["DDIM-3"] == pytest.approx(5 / 3)

def test_unavailable_option_is_reported_not_raised(quick_result):
    res, _ = quick_result
    comp = next(r for r in res["rows"] if r["variant"] == "compile")
    for k in ("train_s_per_it", "unet_forward_s", "DDIM-50", "peak_mem_sample_mib"):
        assert isinstance(comp[k], str) and comp[k].startswith("failed: ") and "no_such_backend" in comp[k], comp[k]
    line = next(ln for ln in res["table"].splitlines() if ln.startswith("| compile |"))
    assert "failed: InvalidBackend" in line

def test_bad_arguments_fail_clearly(speed):
    with pytest.raises(SystemExit):
        speed.parse_args(["--variants", "baseline,turbo"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--size", "60", "128"])  # not a multiple of 8 for 4 levels
    assert speed.parse_args(["--quick", "--batch", "3"]).batch == 3  # explicit options beat --quick's defaults

def test_bf16_autocast_on_cpu_sampler_and_trainer():
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 2, channels=(8, 16), num_res_blocks=1).eval()
    with torch.no_grad():  # MONAI zero-initialises the output convs: an untrained UNet would predict exact zeros
        for prm in net.parameters():
            if not prm.any():
                prm.normal_(0, 0.1)
    cond = torch.rand(2, 2, 8, 8) * 2 - 1
    sched = diffusion_scheduler("ddim", 100, "cosine", "v_prediction")
    seen = []
    hook = net.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    fp32 = DiffusionSampler(sched, 3)(net, sample_generators(range(2)), (1, 8, 8), cond)
    assert seen and set(seen) == {torch.float32}
    seen.clear()
    bf16 = DiffusionSampler(sched, 3, amp_dtype="bfloat16")(net, sample_generators(range(2)), (1, 8, 8), cond)
    assert set(seen) == {torch.bfloat16}  # autocast ran the UNet in bf16 on CPU
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert 0 < (bf16 - fp32).abs().max() < 0.5  # same samples up to bf16 rounding
    seen.clear()
    DiffusionSampler(sched, 2, amp=True)(net, sample_generators(range(2)), (1, 8, 8), cond)
    assert set(seen) == {torch.float32}  # the amp alias means float16, which is CUDA-only: unchanged on CPU
    hook.remove()

    batch = {"image": torch.rand(2, 1, 8, 8) * 2 - 1, "cond": cond}
    dtypes = []
    net.conv_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = [p.detach().clone() for p in net.parameters()]
    tr = DiffusionTrainer("cpu", 1, [batch], net, torch.optim.AdamW(net.parameters(), 1e-3),
                          diffusion_scheduler("ddpm", 100, "cosine", "v_prediction"), 2, amp_dtype="bfloat16")
    tr.run()
    assert dtypes == [torch.bfloat16] and math.isfinite(tr.state.output["loss"].item())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # it stepped (no GradScaler skip)

def test_compile_timeout_reports_a_slow_compile(speed):
    # the compile row runs in a child process; 1 s is less than the child needs to import torch, so it is killed
    res = speed.main(["--quick", "--threads", "1", "--variants", "compile", "--compile_timeout", "1"])
    (row,) = res["rows"]
    assert row["variant"] == "compile"
    assert row["DDIM-50"].startswith("failed: not finished within --compile_timeout 1 s")
    assert "| compile | failed: not finished" in res["table"]

def test_child_command_line_round_trips(speed):
    args = speed.parse_args(["--quick", "--channels", "8", "16", "--size", "8", "16", "--compile_mode", "default"])
    again = speed.parse_args(speed._argv(args, variants=["bf16"]))
    assert {**vars(again), "variants": None} == {**vars(args), "quick": False, "variants": None}
    assert again.variants == ["bf16"]
