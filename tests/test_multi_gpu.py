"""Multi-process (DDP) runs through torchrun on CPU (gloo, two processes, one thread each, tiny phantom data):
both bundles' ``multi_gpu_*.yaml`` overlays train on disjoint shares and write once (rank 0), their weights load
into plain networks, and a sharded synthesis gives the 1-process set byte for byte, also after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Sampler

from monai_oct.core.io import TEMP_PATTERN
from monai_oct.bundle import bundle_command, bundle_dir, bundle_env, stage_configs
from monai_oct.engines.distributed import ShardSampler, gather_interleaved, get_rank, init_distributed
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.networks.segmentation import segmentation_network
from monai_oct.recipes.mixing import RatioSampler

from conftest import BUNDLE_ENV

DDPM, SEG = bundle_dir("oct_ddpm"), bundle_dir("oct_layer_seg")
TINY = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=50,
            learning_rate=1e-3, batch_size=2, device="cpu", progress=False, sample_steps=2, num_sample_images=2,
            sample_interval=1, num_threads=1)
SEG_TINY = dict(image_size=[16, 32], band_height=48, channels=[8, 16], batch_size=2, device="cpu", progress=False)


def torchrun_command(bundle: Path, configs: list[str], nproc: int = 2, **overrides) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m monai.bundle run ...`` (a free port)."""
    cmd = bundle_command(bundle, configs, **overrides)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]


def torchrun(bundle: Path, configs: list[str], nproc: int = 2, timeout: float = 300, **overrides) -> str:
    """Run a bundle under torchrun; its output, or the test fails with the output's end."""
    res = subprocess.run(torchrun_command(bundle, configs, nproc, **overrides), env=bundle_env(BUNDLE_ENV),
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        pytest.fail(f"torchrun failed ({res.returncode}):\n{(res.stdout + res.stderr)[-5000:]}")
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def phantom6(tmp_path_factory) -> Path:
    """An 8-scan 64x64 phantom (train 6 / validation 2): an even number, so two ranks share it without padding."""
    from monai_oct.phantoms.oct import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom6")
    write_phantom_dataset(out, num=8, size=(64, 64), seed=0)
    return out


def seen_items(out: Path) -> dict[int, dict[int, list[int]]]:
    """``{epoch: {rank: indices}}`` from the ``SeenItemsLog`` files."""
    epochs: dict[int, dict[int, list[int]]] = {}
    for path in sorted((out / "ranks").glob("items_rank*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            epochs.setdefault(rec["epoch"], {})[rec["rank"]] = rec["indices"]
    return epochs


def check_disjoint_shares(out: Path, n: int, epochs: int) -> None:
    seen = seen_items(out)
    assert sorted(seen) == list(range(1, epochs + 1))
    for e, ranks in seen.items():
        assert sorted(ranks) == [0, 1], f"epoch {e}: logs of ranks {sorted(ranks)}"
        a, b = ranks[0], ranks[1]
        assert len(a) == len(b) == n // 2 and not set(a) & set(b), f"epoch {e}: rank 0 {a}, rank 1 {b}"
        assert sorted(a + b) == list(range(n))
    assert seen[1] != seen[2]  # the sampler's epoch was set: every epoch is shuffled anew


def tensorboard_writers(folder: Path) -> set[str]:
    """The pids that wrote TensorBoard event files (``events.out.tfevents.<time>.<host>.<pid>.<n>``)."""
    return {p.name.split(".")[-2] for p in folder.glob("events.out.tfevents.*")}


class _Seeded(Sampler):
    """A seeded sampler whose order depends on its epoch (as RatioSampler's)."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())


def test_shard_sampler_splits_an_epoch_and_follows_its_epoch():
    shards = [ShardSampler(_Seeded(7), num_replicas=2, rank=r) for r in (0, 1)]
    for s in shards:
        s.set_epoch(3)
    a, b = (list(s) for s in shards)
    assert len(a) == len(b) == len(shards[0]) == 4
    full = _Seeded(7)
    full.set_epoch(3)
    order = list(full)
    assert a == order[0::2] and b == order[1::2] + order[:1]  # padded with the epoch's first index, as DistributedSampler
    assert list(shards[0]) == a  # iterating again draws the same epoch
    shards[0].set_epoch(4)
    assert list(shards[0]) != a
    ratio = RatioSampler([3, 3], weights=[1, 1], num_samples=6, seed=0)
    s0, s1 = ShardSampler(ratio, 2, 0), ShardSampler(ratio, 2, 1)
    s0.set_epoch(2)
    s1.set_epoch(2)
    assert sorted(list(s0) + list(s1)) == sorted(ratio.indices(2).tolist())


def test_helpers_without_a_process_group():
    assert get_rank() == 0 and gather_interleaved([1, 2]) == [1, 2]
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK") if k in os.environ}
    try:
        with pytest.raises(RuntimeError, match="run under torchrun, but RANK, LOCAL_RANK, WORLD_SIZE"):
            init_distributed("cpu")
    finally:
        os.environ.update(env)


def test_init_keeps_the_error_hook_that_prints_the_cause(tmp_path):
    """torch's init_process_group wraps sys.excepthook, buffering stderr until the old hook returns; the bundles'
    hook exits the process, so a failed multi-process stage printed nothing (the synthesis test below shows it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("import sys; from monai_oct.bundle import install_error_handler; install_error_handler(force=True); "
            "from monai_oct.engines.distributed import init_distributed; init_distributed('cpu'); "
            "raise ValueError('/data/x.png: the cause')")
    env = bundle_env(dict(BUNDLE_ENV, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1] == "ValueError: /data/x.png: the cause"


@pytest.mark.slow
def test_diffusion_stage_on_two_processes(phantom6, tmp_path):
    out = tmp_path / "pre"
    torchrun(DDPM, stage_configs("pretrain") + ["multi_gpu_train.yaml"], dataset_dir=phantom6, output_dir=out,
             max_epochs=2, log_items="true", **TINY)
    check_disjoint_shares(out, n=6, epochs=2)
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [1, 2]  # rank 0 only: once per epoch
    assert [r["event"] for r in log].count("completed") == 1
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert len(tensorboard_writers(out / "tensorboard")) == 1
    # started again with more epochs: every rank resumes from rank 0's last.pt and trains on
    torchrun(DDPM, stage_configs("pretrain") + ["multi_gpu_train.yaml"], dataset_dir=phantom6, output_dir=out,
             max_epochs=3, log_items="true", **TINY)
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("resume") == 1 and [r["epoch"] for r in log if r["event"] == "epoch"] == [1, 2, 3]
    for r in (0, 1):  # each rank started at epoch 3, not at epoch 1 again
        epochs = [json.loads(line)["epoch"] for line in (out / "ranks" / f"items_rank{r}.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3]
    net = conditional_diffusion_unet(1, 10, channels=TINY["channels"], num_res_blocks=TINY["num_res_blocks"])
    for name in ("model.pt", "model_raw.pt"):
        net.load_state_dict(torch.load(out / name, weights_only=True))  # strict: no "module." prefix
    net.load_state_dict(torch.load(out / "last.pt", weights_only=True)["model"])
    with torch.no_grad():
        y = net(torch.randn(1, 11, 16, 32), timesteps=torch.tensor([3]))
    assert y.shape == (1, 1, 16, 32) and torch.isfinite(y).all()


@pytest.mark.slow
def test_segmentation_training_and_evaluation_on_two_processes(phantom6, tmp_path):
    out = tmp_path / "seg"
    torchrun(SEG, ["train.yaml", "multi_gpu_train.yaml"], dataset_dir=phantom6, output_dir=out, max_epochs=2,
             log_items="true", **SEG_TINY)
    check_disjoint_shares(out, n=6, epochs=2)
    assert len(tensorboard_writers(out / "tensorboard")) == 1
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("completed") == 1
    net = segmentation_network("unet", 1, 10, channels=SEG_TINY["channels"])
    for name in ("model.pt", "model_final.pt"):
        net.load_state_dict(torch.load(out / name, weights_only=True))  # strict: no "module." prefix
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 32)).shape == (1, 10, 16, 32)

    # evaluation sharded over two processes reports what one process reports, every image once
    args = dict(dataset_dir=phantom6, ckpt=out / "model_final.pt", overlays=0, **SEG_TINY)
    torchrun(SEG, ["train.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"], output_dir=tmp_path / "ev2", **args)
    res = subprocess.run(bundle_command(SEG, ["train.yaml", "evaluate.yaml"], output_dir=tmp_path / "ev1", **args),
                         env=bundle_env(BUNDLE_ENV), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    rows = [list(csv.DictReader(open(tmp_path / ev / "per_image.csv"))) for ev in ("ev1", "ev2")]
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    m1, m2 = (json.loads((tmp_path / ev / "metrics.json").read_text()) for ev in ("ev1", "ev2"))
    assert m1 == m2 and m1["num_images"] == 2


def _random_image_ckpt(path: Path) -> Path:
    """An untrained stage-3 image UNet of the TINY geometry (the weights are not the point)."""
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 10, channels=TINY["channels"], num_res_blocks=TINY["num_res_blocks"])
    torch.save(net.state_dict(), path)
    return path


def _pairs(folder: Path) -> dict[str, bytes]:
    return {f"{sub}/{p.name}": p.read_bytes() for sub in ("images", "labels") for p in sorted((folder / sub).glob("*.png"))}


@pytest.mark.slow
def test_sharded_synthesis_equals_one_process_and_resumes_after_a_kill(phantom6, tmp_path):
    n = 12
    args = dict(dataset_dir=phantom6, label_datalist="datalist.json", num_samples=n, sampler="ddpm", num_inference_steps=8,
                image_ckpt=_random_image_ckpt(tmp_path / "img.pt"), **TINY)
    configs = stage_configs("synthesize") + ["multi_gpu_train.yaml"]
    one = tmp_path / "one"
    res = subprocess.run(bundle_command(DDPM, stage_configs("synthesize"), output_dir=one, **args), env=bundle_env(BUNDLE_ENV),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    two = tmp_path / "two"
    torchrun(DDPM, configs, output_dir=two, **args)
    assert _pairs(two) == _pairs(one) and len(_pairs(one)) == 2 * n  # byte-identical pairs
    assert len({v for k, v in _pairs(two).items() if k.startswith("images/")}) == n  # n distinct images
    manifest = {k: v for k, v in json.loads((two / "manifest.json").read_text()).items() if k not in ("seconds", "runtime")}
    assert manifest == {k: v for k, v in json.loads((one / "manifest.json").read_text()).items() if k not in ("seconds", "runtime")}
    assert (two / "datalist.json").read_text().replace(str(two), "") == (one / "datalist.json").read_text().replace(str(one), "")
    # rank 0 checks the folder: another seed stops the run (the other rank does not wait for ever)
    res = subprocess.run(torchrun_command(DDPM, configs, output_dir=two, **dict(args, seed=1)), env=bundle_env(BUNDLE_ENV),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "was made with other settings (seed: 0 -> 1" in res.stdout + res.stderr

    # kill a 2-process synthesis once pairs appear, start it again: exactly the n pairs of the 1-process run
    killed = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_command(DDPM, configs, output_dir=killed, **args), env=bundle_env(BUNDLE_ENV),
                            stdout=open(tmp_path / "kill.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    while len(list((killed / "images").glob("*.png"))) < 3:
        assert proc.poll() is None, (tmp_path / "kill.log").read_text()[-3000:]
        assert time.time() - t0 < 240, "no pairs appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((killed / "images").glob("*.png")))
    assert 3 <= done < n and not (killed / "datalist.json").exists()
    assert json.loads((killed / "manifest.json").read_text())["status"] == "running"
    torchrun(DDPM, configs, output_dir=killed, **args)
    assert _pairs(killed) == _pairs(one)
    assert json.loads((killed / "manifest.json").read_text())["status"] == "complete"
    assert not (killed / ".lock").exists()
    assert not [p for p in killed.rglob(TEMP_PATTERN)]


def test_synthesis_shares_are_the_indices_of_each_rank(tmp_path):
    from test_diffusion_engines import _synthesis

    eng = _synthesis(tmp_path / "s", num_samples=7)
    assert eng.pending(rank=0, world_size=2) == [[0, 2], [4, 6]] and eng.skipped == 0
    assert eng.pending(rank=1, world_size=2) == [[1, 3], [5]]
    eng.run_all()  # one process: every index
    (tmp_path / "s" / "images" / "synth_00003.png").unlink()
    assert eng.pending(rank=1, world_size=2) == [[3]] and eng.skipped == 2
    assert eng.pending(rank=0, world_size=2) == [] and eng.skipped == 4


def test_trainer_checks_the_image_size_of_a_ddp_network(tmp_path):
    """Under DDP the trainer's size check reads the wrapped UNet (it used to find no levels on the wrapper and
    pass any size, so a bad --image_size failed deep inside the UNet)."""
    import torch.distributed as dist

    from monai_oct.engines.diffusion import DiffusionTrainer
    from monai_oct.engines.distributed import wrap_ddp
    from monai_oct.schedulers import diffusion_scheduler

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = wrap_ddp(conditional_diffusion_unet(1, 2, channels=(8, 16)), "cpu")
        batches = [{"image": torch.zeros(2, 1, 15, 16), "cond": torch.zeros(2, 2, 15, 16)}]
        tr = DiffusionTrainer("cpu", 1, batches, net, torch.optim.AdamW(net.parameters()), diffusion_scheduler("ddpm", 20), 2)
        with pytest.raises(ValueError, match=r"image size \[15, 16\] does not divide by 2"):
            tr.run()
    finally:
        dist.destroy_process_group()
