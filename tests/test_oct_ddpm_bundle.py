"""The oct_ddpm bundle through ``python -m monai.bundle run`` (subprocesses, tiny sizes, CPU): every stage,
synthesis outputs, and crash safety (``kill -9`` during training and during synthesis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_oct.core.io import TEMP_PATTERN
from monai_oct.bundle import bundle_command, bundle_env, stage_configs
from monai_oct.core.datalist import load_datalist
from monai_oct.core.io import read_image, read_label
from monai_oct.core.seeding import sample_seed
from monai_oct.transforms.band import RetinaBandCrop, RetinaBandCropd

from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE as BUNDLE, run_stage as stage

TINY = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=50,
            prediction_type="v_prediction", schedule="cosine", learning_rate=1e-3, batch_size=4, device="cpu",
            progress=False, sample_steps=2, num_sample_images=2, sample_interval=1, num_threads=1)


def popen(name, log, **overrides):
    return subprocess.Popen(bundle_command(BUNDLE, stage_configs(name), **overrides), env=bundle_env(BUNDLE_ENV),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(cond, proc, timeout=120.0):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before the condition was met")
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting")
        time.sleep(0.05)


def check_synthetic(out: Path, n: int, size, num_classes=10):
    items = load_datalist(out / "datalist.json", key="training")
    assert len(items) == n
    images = sorted(p.name for p in (out / "images").iterdir())
    labels = sorted(p.name for p in (out / "labels").iterdir())
    assert images == labels == sorted(Path(it["image"]).name for it in items)  # exactly the files written, no temp files
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted([f"images/{f}" for f in images] + [f"labels/{f}" for f in labels])
    assert manifest["num_samples"] == n and len(manifest["seeds"]) == n and manifest["status"] == "complete"
    assert {"checkpoints", "generation", "seed", "runtime"} <= set(manifest)
    assert {"sampler", "num_inference_steps", "checkpoint_sha256", "config"} <= set(manifest["generation"])
    for it in items:
        img, lab = read_image(it["image"]), read_label(it["label"])
        assert img.shape == lab.shape == tuple(size)
        assert set(np.unique(lab).tolist()) <= set(range(num_classes))
    assert read_image(out / "grid.png").ndim == 2
    return manifest


@pytest.mark.slow
def test_all_stages_on_phantom(phantom_dir, tmp_path):
    runs = tmp_path / "runs"
    log = stage("pretrain", dataset_dir=phantom_dir, output_dir=runs / "pre", max_epochs=2, seed=1, **TINY)
    assert (runs / "pre" / "model.pt").is_file() and (runs / "pre" / "model_raw.pt").is_file()
    assert sorted(p.name for p in (runs / "pre" / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert list((runs / "pre" / "tensorboard").glob("events.out.tfevents.*"))
    assert "Epoch[2] Complete" in log
    epochs = [json.loads(l) for l in (runs / "pre" / "training_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs if e["event"] == "epoch"] == [1, 2]
    pre = torch.load(runs / "pre" / "model.pt", weights_only=True)
    assert pre["conv_in.conv.weight"].shape[1] == 11  # image + 10 one-hot condition channels

    stage("train_masks", dataset_dir=phantom_dir, output_dir=runs / "masks", max_epochs=1, **TINY)
    masks = torch.load(runs / "masks" / "model.pt", weights_only=True)
    assert masks["conv_in.conv.weight"].shape[1] == 1  # unconditional, scalar-encoded label maps

    # fine-tuning starts from stage 1: with a learning rate of 0 its raw weights stay stage 1's EMA weights
    stage("finetune", dataset_dir=phantom_dir, output_dir=runs / "ft0", max_epochs=1, pretrained_ckpt=runs / "pre" / "model.pt",
          **dict(TINY, learning_rate=0.0))
    ft0 = torch.load(runs / "ft0" / "model_raw.pt", weights_only=True)
    assert all(torch.equal(ft0[k], v) for k, v in pre.items())
    stage("finetune", dataset_dir=phantom_dir, output_dir=runs / "ft", max_epochs=1, pretrained_ckpt=runs / "pre" / "model.pt",
          drm_p=0.3, **TINY)

    out = tmp_path / "synth"
    args = dict(output_dir=out, mask_ckpt=runs / "masks" / "model.pt", image_ckpt=runs / "ft" / "model.pt", num_samples=5,
                sampler="ddim", num_inference_steps=3, output_size=[48, 40], **dict(TINY, batch_size=2))
    stage("synthesize", **args)
    manifest = check_synthetic(out, 5, (48, 40))
    assert manifest["checkpoints"]["mask"] == str(runs / "masks" / "model.pt")
    import hashlib

    gen = manifest["generation"]
    assert gen["checkpoint_sha256"]["image"] == hashlib.sha256((runs / "ft" / "model.pt").read_bytes()).hexdigest()
    assert gen["sampler"] == "PerSampleDDIMScheduler" and gen["num_inference_steps"] == 3 and gen["output_size"] == [48, 40]
    assert gen["config"]["schedule"] == "cosine" and gen["config"]["labels"]["label_datalist"] is None
    assert manifest["seeds"]["synth_00004.png"] == sample_seed(0, 4)

    # run again: nothing to do; remove one pair's image: exactly it is redone, bit for bit
    before = (out / "images" / "synth_00003.png").read_bytes()
    (out / "images" / "synth_00003.png").unlink()
    log = stage("synthesize", **args)
    assert "4 of 5 pairs already" in log
    assert (out / "images" / "synth_00003.png").read_bytes() == before
    check_synthetic(out, 5, (48, 40))

    # label maps from a datalist (R/S 0/N), with their mirror images
    lab_out = tmp_path / "from_labels"
    n_train = len(load_datalist(phantom_dir / "datalist.json"))
    stage("synthesize", output_dir=lab_out, dataset_dir=phantom_dir, label_datalist="datalist.json", label_flip="true",
          image_ckpt=runs / "ft" / "model.pt", num_samples=2 * n_train, sampler="ddpm", num_inference_steps=2, **TINY)
    check_synthetic(lab_out, 2 * n_train, (16, 32))
    first = read_label(lab_out / "labels" / "synth_00000.png")
    mirror = read_label(lab_out / "labels" / f"synth_{n_train:05d}.png")
    assert np.array_equal(mirror, first[:, ::-1])


def freeze_mid_epoch(proc, last):
    """Stop ``proc`` (SIGSTOP) at a moment when ``last`` (last.pt, written every iteration) is inside an epoch."""
    while True:
        wait_for(last.is_file, proc)
        os.killpg(proc.pid, signal.SIGSTOP)
        trainer = torch.load(last, weights_only=True)["trainer"]
        if trainer["iteration"] % trainer["epoch_length"]:
            return trainer
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.01)


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_to_the_same_iteration_and_lr(phantom_dir, tmp_path):
    """Bug 3: a resume from a mid-epoch last.pt (--checkpoint_iterations) lost the rest of that epoch's iterations."""
    args = dict(TINY, sample_interval=0, batch_size=2, max_epochs=3, lr_schedule="cosine", warmup_steps=2,
                checkpoint_iterations=1, dataset_dir=phantom_dir)
    stage("pretrain", output_dir=tmp_path / "ref", **args)
    ref = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    length = ref["trainer"]["epoch_length"]
    assert ref["trainer"]["iteration"] == 3 * length

    out = tmp_path / "pre"
    proc = popen("pretrain", tmp_path / "log1.txt", output_dir=out, **args)
    saved = freeze_mid_epoch(proc, out / "last.pt")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.pt").exists()
    log = stage("pretrain", output_dir=out, **args)
    epoch, done = divmod(saved["iteration"], length)
    assert f"resumed from {out / 'last.pt'} at epoch {epoch} + {done} of {length} iterations" in log
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["trainer"]["iteration"] == ref["trainer"]["iteration"]
    assert final["ema"]["num_updates"] == ref["ema"]["num_updates"]
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(ref["optimizer"]["param_groups"][0]["lr"], abs=1e-15)
    assert (out / "model.pt").is_file() and not list(out.glob(TEMP_PATTERN))
    events = [json.loads(l)["event"] for l in (out / "training_log.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and events[-1] == "completed"


@pytest.mark.slow
def test_resume_with_another_learning_rate_applies_it(phantom_dir, tmp_path):
    """Bug 6: --learning_rate on resume was silently replaced by the checkpoint's; now applied and logged, while a
    changed --ema_decay stops the run naming it."""
    out = tmp_path / "pre"
    args = dict(TINY, sample_interval=0, dataset_dir=phantom_dir, output_dir=out)
    stage("pretrain", max_epochs=1, **args)
    args["learning_rate"] = 5e-4
    log = stage("pretrain", max_epochs=2, **args)
    assert "learning_rate changed on resume: 0.001 -> 0.0005 (applied)" in log
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert last["hyperparameters"]["learning_rate"] == 5e-4 and last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"]
    res = subprocess.run(bundle_command(BUNDLE, ["common.yaml", "pretrain.yaml"], max_epochs=3, ema_decay=0.5, **args),
                         env=bundle_env(BUNDLE_ENV), capture_output=True, text=True, timeout=180)
    assert res.returncode != 0 and "changed since this checkpoint was written: ema_decay 0.9999 -> 0.5" in res.stdout + res.stderr


@pytest.mark.slow
def test_kill_during_synthesis_then_exactly_n(phantom_dir, tmp_path):
    runs = tmp_path / "runs"
    stage("finetune", dataset_dir=phantom_dir, output_dir=runs / "ft", max_epochs=1, pretrained_ckpt="null",
          **dict(TINY, sample_interval=0))
    stage("train_masks", dataset_dir=phantom_dir, output_dir=runs / "masks", max_epochs=1, **dict(TINY, sample_interval=0))
    out = tmp_path / "synth"
    n = 40
    args = dict(output_dir=out, mask_ckpt=runs / "masks" / "model.pt", image_ckpt=runs / "ft" / "model.pt", num_samples=n,
                sampler="ddpm", num_inference_steps=10, **dict(TINY, batch_size=2))
    proc = popen("synthesize", tmp_path / "log.txt", **args)
    wait_for(lambda: (out / "images").is_dir() and len(list((out / "images").glob("*.png"))) >= 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "images").glob("*.png")))
    assert 3 <= done < n and not (out / "datalist.json").exists()
    log = stage("synthesize", **args)
    assert f"{done} of {n} pairs already" in log  # the label is written first: an image means a complete pair
    check_synthetic(out, n, (16, 32))


def _random_image_ckpt(path: Path, **tiny) -> Path:
    """An untrained stage-3 image UNet of the TINY geometry saved as a checkpoint (weights are not the point)."""
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 10, channels=tiny["channels"], num_res_blocks=tiny["num_res_blocks"])
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_synthesize_rerun_with_other_seed_stops_unless_overwrite(phantom_dir, tmp_path):
    """Bug 7 through the bundle: a rerun with another --seed into a finished folder stops with a message naming the
    folder and the key (before: exit 0, old pairs under a manifest claiming the new seed); --overwrite true
    replaces the set with exactly the new seed's pairs."""
    out = tmp_path / "synth"
    args = dict(output_dir=out, dataset_dir=phantom_dir, label_datalist="datalist.json", num_samples=2, sampler="ddim",
                num_inference_steps=2, image_ckpt=_random_image_ckpt(tmp_path / "img.pt", **TINY), **TINY)
    stage("synthesize", **args)
    first = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    res = subprocess.run(bundle_command(BUNDLE, stage_configs("synthesize"), **dict(args, seed=1)), env=bundle_env(BUNDLE_ENV),
                         capture_output=True, text=True, timeout=180)
    # the error line (MONAI may print its "Failed to evaluate ConfigExpression" wrapper after it)
    msg = [l for l in (res.stdout + res.stderr).splitlines() if "was made with other settings" in l]
    assert res.returncode != 0 and msg, (res.stdout + res.stderr)[-2000:]
    assert str(out) in msg[-1] and "seed: 0 -> 1" in msg[-1] and "--overwrite true" in msg[-1], msg[-1]
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == first
    assert json.loads((out / "manifest.json").read_text())["seed"] == 0 and not (out / ".lock").exists()
    stage("synthesize", **dict(args, seed=1, overwrite="true"))
    manifest = check_synthetic(out, 2, (16, 32))
    assert manifest["seed"] == 1 and manifest["seeds"]["synth_00001.png"] == sample_seed(1, 1)
    assert not set(first.values()) & {p.read_bytes() for p in (out / "images").iterdir()}  # seeds 0 and 1 share no image


@pytest.mark.slow
def test_synthesize_in_two_shards_then_merge(phantom_dir, tmp_path):
    """The real synthesize.yaml with --shard 0/2 and --shard 1/2 at the same time into one folder, then
    ``monai-oct merge-synthesis``: the complete set with both shards' provenance. Each shard's last log line
    names the merge command; --shard 3/2 stops with the value as the error line."""
    from monai_oct.cli import main

    out = tmp_path / "synth"
    args = dict(output_dir=out, dataset_dir=phantom_dir, label_datalist="datalist.json", num_samples=3, sampler="ddim",
                num_inference_steps=2, image_ckpt=_random_image_ckpt(tmp_path / "img.pt", **TINY), **TINY)
    logs = [tmp_path / f"log{k}.txt" for k in range(3)]
    procs = [popen("synthesize", logs[k], **dict(args, shard=v)) for k, v in enumerate(["0/2", "1/2", "3/2"])]
    for p in procs:
        p.wait(timeout=180)
    text = [log.read_text() for log in logs]
    for k in (0, 1):
        assert procs[k].returncode == 0, text[k][-3000:]
        last = [line for line in text[k].splitlines() if line.strip()][-1]
        assert f"shard {k}/2 complete" in last and f"monai-oct merge-synthesis {out}" in last, last
    last = [line for line in text[2].splitlines() if line.strip()][-1]
    assert procs[2].returncode != 0 and "ValueError: --shard '3/2': the shard index i must be in 0..1" in last, text[2][-2000:]
    assert not (out / "datalist.json").exists() and not (out / "manifest.json").exists()
    assert main(["merge-synthesis", str(out)]) == 0
    manifest = check_synthetic(out, 3, (16, 32))
    assert [(s["shard"], s["num_pairs"]) for s in manifest["shards"]] == [("0/2", 2), ("1/2", 1)]
    assert manifest["seeds"]["synth_00001.png"] == sample_seed(0, 1)


def test_band_crop_takes_an_image_of_band_height_whole():
    img = torch.arange(224 * 8, dtype=torch.float32).reshape(1, 224, 8)
    assert torch.equal(RetinaBandCrop(224)(img), img)
    lab = torch.zeros(1, 224, 8)
    lab[0, 100:150] = 3
    d = RetinaBandCropd(["image", "label"], band_height=224)({"image": img, "label": lab})
    assert torch.equal(d["image"], img) and torch.equal(d["label"], lab) and d["band_offset"] == 0


@pytest.mark.slow
def test_stages_on_duke(duke_dir, tmp_path):
    small = dict(TINY, image_size=[32, 64], band_height=224, channels=[8, 16, 16], batch_size=8, sample_interval=0)
    runs = tmp_path / "runs"
    stage("pretrain", datalist=["datalist_val.json"], dataset_dir=duke_dir, output_dir=runs / "pre", max_epochs=1, **small)
    stage("train_masks", dataset_dir=duke_dir, output_dir=runs / "masks", max_epochs=1, **small)
    stage("finetune", dataset_dir=duke_dir, output_dir=runs / "ft", max_epochs=1, pretrained_ckpt=runs / "pre" / "model.pt", **small)
    out = tmp_path / "synth"
    stage("synthesize", output_dir=out, mask_ckpt=runs / "masks" / "model.pt", image_ckpt=runs / "ft" / "model.pt",
          num_samples=3, sampler="ddim", num_inference_steps=2, output_size=[224, 512], **small)
    check_synthetic(out, 3, (224, 512))
    # R/S 0/66: the real training label maps condition the images
    lab_out = tmp_path / "rs066"
    stage("synthesize", output_dir=lab_out, dataset_dir=duke_dir, label_datalist="datalist_train.json",
          image_ckpt=runs / "ft" / "model.pt", num_samples=2, sampler="ddim", num_inference_steps=2, **small)
    check_synthetic(lab_out, 2, (32, 64))


def test_stage_items_and_chains(phantom_dir, tmp_path):
    from monai_oct.core.io import DataError
    from monai_oct.recipes.diffusion_pipelines import finetune_transforms, mask_transforms, pretrain_transforms
    from monai_oct.recipes.items import resolve_items
    from monai_oct.phantoms.oct import write_phantom_dataset

    labelled = resolve_items(phantom_dir, require_label=True)
    assert len(labelled) == 9 and all("label" in it for it in labelled)
    write_phantom_dataset(tmp_path / "u", num=4, size=(64, 64), seed=5)
    (tmp_path / "u" / "datalist.json").unlink()
    folder = resolve_items(tmp_path / "u", fields=["image"])  # no datalist: every image of images/
    assert len(folder) == 4 and all(set(it) == {"image"} for it in folder)
    mixed = resolve_items([str(phantom_dir / "datalist.json"), "u/images"], dataset_dir=tmp_path)
    assert len(mixed) == 13
    with pytest.raises(DataError, match="have no 'label'"):
        resolve_items([str(phantom_dir / "datalist.json"), "u/images"], dataset_dir=tmp_path, require_label=True)
    pre = pretrain_transforms([16, 32], band_height=48)
    a, b = pre(labelled[0]), pre(folder[0])
    assert set(a) == set(b) == {"image"} and a["image"].shape == b["image"].shape == (1, 16, 32)
    m = mask_transforms([16, 32], 10, band_height=48)(labelled[0])["image"]
    levels = torch.linspace(-1, 1, 10)
    assert torch.isclose(m.reshape(-1, 1), levels.reshape(1, -1), atol=1e-6).any(1).all()  # scalar levels only
    d = finetune_transforms([16, 32], 10, "onehot", band_height=48, drm_prob=0.0)(labelled[0])
    assert d["cond"].shape == (10, 16, 32) and torch.equal(d["cond"].argmax(0, keepdim=True), d["label"])
