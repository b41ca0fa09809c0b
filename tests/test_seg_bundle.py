"""The oct_layer_seg bundle end to end through ``python -m monai.bundle run`` (tiny sizes, CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_oct.core.datalist import load_datalist, write_datalist
from monai_oct.core.io import read_image, read_label
from monai_oct.phantoms.oct import write_phantom_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "oct_layer_seg" / "configs"
TINY = ["--image_size", "[64,64]", "--band_height", "0", "--channels", "[8,16,32]", "--progress", "False"]


def bundle_run(configs, *args, timeout=300):
    """Run ``python -m monai.bundle run`` on the seg configs; returns ``(return code, stdout + stderr)``."""
    files = [str(CONFIGS / c) for c in configs]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files), *map(str, args)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


def run_bundle(configs, *args, timeout=300):
    rc, out = bundle_run(configs, *args, timeout=timeout)
    if rc != 0:
        hint = "\n(`python -m monai.bundle` needs the `fire` package)" if "No module named 'fire'" in out else ""
        pytest.fail(f"bundle run failed ({rc}): {configs} {args}\n{out[-4000:]}{hint}")
    return out


def _check_report(path: Path, num_images: int):
    rep = json.loads(path.read_text())
    assert rep["num_images"] == num_images
    assert rep["mean_classes"] == list(range(1, 10))
    for c in range(1, 10):
        row = rep["classes"][str(c)]
        assert set(row) >= {"name", "dice", "pa"}
        if row["images_with_class"]:
            assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["pa"] <= 1.0
    assert 0.0 <= rep["mean_dice"] <= 1.0 and 0.0 <= rep["mean_pa"] <= 1.0
    assert set(rep["groups"]) == {"NFL-IPL", "ONL-ISM", "IRF"}
    assert rep["groups"]["NFL-IPL"]["classes"] == [1, 2]
    md = (path.parent / "metrics.md").read_text()
    assert "mean 1-9" in md and "NFL-IPL" in md
    return rep


@pytest.mark.slow
def test_train_evaluate_infer_pseudo_label_on_phantom(phantom_dir, tmp_path):
    run = tmp_path / "run"
    log = run_bundle(["train.yaml"], "--dataset_dir", phantom_dir, "--output_dir", run, "--max_epochs", 2,
                     "--batch_size", 4, "--seed", 3, "--network", "relaynet", *TINY)
    assert (run / "model.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "val_mean_dice" in log

    # a dataset the project has never seen, in another layout ({"test": [...]} in its own file)
    other = tmp_path / "other"
    dl = write_phantom_dataset(other, num=4, size=(64, 80), seed=11, val_fraction=0)
    items = load_datalist(dl)
    write_datalist(other / "datalist_test.json", items, key="test")
    ev = tmp_path / "eval"
    run_bundle(["train.yaml", "evaluate.yaml"], "--datalist", other / "datalist_test.json", "--ckpt", run / "model.pt",
               "--output_dir", ev, "--network", "relaynet", "--overlays", 2, *TINY)
    rep = _check_report(ev / "metrics.json", num_images=4)
    assert rep["checkpoint"] == str(run / "model.pt")
    assert len(list((ev / "overlays").glob("*.png"))) == 2
    assert len((ev / "per_image.csv").read_text().strip().splitlines()) == 5

    # inference: one PNG in, a label map of its size out (PNG and NIfTI)
    pred_dir = tmp_path / "pred"
    image = Path(items[0]["image"])
    run_bundle(["inference.yaml"], "--image", image, "--ckpt", run / "model.pt", "--output_dir", pred_dir,
               "--network", "relaynet", "--device", "cpu", *TINY[:-2])
    seg = read_label(pred_dir / f"{image.stem}_seg.png")
    assert seg.shape == read_image(image).shape == (64, 80)
    assert seg.max() <= 9
    import nibabel as nib

    assert np.array_equal(np.asarray(nib.load(pred_dir / f"{image.stem}_seg.nii.gz").dataobj), seg)

    # pseudo-labels with the condition kept wherever the teacher is below 100% sure: labels = conditions
    pl = tmp_path / "pseudo"
    run_bundle(["train.yaml", "pseudo_label.yaml"], "--dataset_dir", other, "--datalist", dl, "--ckpt", run / "model.pt",
               "--output_dir", pl, "--network", "relaynet", "--keep_condition_below", 1.0, *TINY)
    new = load_datalist(pl / "datalist.json")
    assert len(new) == 4
    for old, it in zip(items, new):
        assert np.array_equal(read_label(it["label"]), read_label(old["label"]))
        assert np.array_equal(read_image(it["image"]), read_image(old["image"]))
    stats = json.loads((pl / "pseudo_label_stats.json").read_text())
    assert stats["num_images"] == 4 and stats["kept_condition"] > 0.99


@pytest.mark.slow
def test_duke_train_and_evaluate(duke_dir, tmp_path):
    run = tmp_path / "run"
    run_bundle(["train.yaml"], "--dataset_dir", duke_dir, "--output_dir", run, "--max_epochs", 1, "--batch_size", 8,
               "--samples_per_epoch", 16, "--image_size", "[32,64]", "--band_height", 224, "--channels", "[8,16,32]",
               "--progress", "False")
    ev = tmp_path / "eval"
    run_bundle(["train.yaml", "evaluate.yaml"], "--dataset_dir", duke_dir, "--ckpt", run / "model.pt", "--output_dir", ev,
               "--image_size", "[32,64]", "--band_height", 224, "--channels", "[8,16,32]", "--overlays", 0)
    rep = _check_report(ev / "metrics.json", num_images=22)
    assert rep["classes"]["9"]["images_with_class"] > 0  # Duke val has fluid
    assert rep["groups"]["IRF"]["dice"] is not None


def test_mixed_training_config_draws_both_sources_in_ratio(phantom_dir, tmp_path):
    """train.yaml with two datalists and --mix_ratio [1,3]: the sampler the trainer uses keeps 1:3."""
    synth = tmp_path / "synth"
    write_phantom_dataset(synth, num=20, size=(64, 64), seed=5, val_fraction=0)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"dataset_dir": str(phantom_dir), "datalist": [str(phantom_dir / "datalist.json"), str(synth / "datalist.json")],
                   "mix_ratio": [1, 3], "samples_per_epoch": 24, "image_size": [64, 64], "band_height": 0})
    parser.parse()
    data = parser.get_parsed_content("train#dataset#data")
    assert len(data) == 9 + 20
    sampler = parser.get_parsed_content("train#sampler")
    loader = parser.get_parsed_content("train#dataloader")
    assert loader.sampler is sampler
    counts = np.bincount([data[i]["source"] for i in sampler], minlength=2)
    assert counts.tolist() == [6, 18]
    batch = next(iter(loader))
    assert batch["image"].shape[1:] == (1, 64, 64) and set(batch["source"].tolist()) <= {0, 1}
    # a plain list of items (what MONAI Label writes into train#dataset#data) trains as one source
    parser.update({"train#dataset#data": [{"image": d["image"], "label": d["label"]} for d in data[:5]], "mix_ratio": None,
                   "samples_per_epoch": None})
    parser.parse()
    assert sorted(parser.get_parsed_content("train#sampler")) == list(range(5))


def test_pseudo_labeller_uses_teacher_and_resumes(phantom_dir, tmp_path):
    from monai_oct.recipes.pseudo_label import PseudoLabeller
    from monai_oct.networks.segmentation import segmentation_network

    torch.manual_seed(0)
    teacher = segmentation_network("unet", channels=(4, 8))
    items = load_datalist(phantom_dir / "datalist.json")[:3]
    pl = PseudoLabeller(teacher, tmp_path / "pl", image_size=(64, 64))
    dl = pl(items)
    new = load_datalist(dl)
    pred, conf = pl.predict(items[0])
    assert np.array_equal(read_label(new[0]["label"]), pred)
    assert pred.shape == (64, 64) and conf.min() >= 0 and conf.max() <= 1
    assert new[0]["condition"] == items[0]["label"]
    # a re-run skips what exists; overwrite recomputes
    stamp = os.path.getmtime(new[0]["label"])
    pl(items)
    assert os.path.getmtime(new[0]["label"]) == stamp
    with pytest.raises(ValueError, match="keep_condition_below"):
        PseudoLabeller(teacher, tmp_path, (64, 64), keep_condition_below=2)


class Killed(Exception):
    """What the tests' kill handler raises: the run ends there, as a crash would."""


def _seg_trainer(phantom_dir, out, kill_at=None, **overrides):
    """train.yaml parsed in-process at tiny size (3 iterations per epoch, warm-up + cosine LR); ``kill_at``: crash then."""
    from ignite.engine import Events

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"dataset_dir": str(phantom_dir), "output_dir": str(out), "image_size": [64, 64], "band_height": 0,
                   "channels": [8, 16, 32], "progress": False, "device": "$torch.device('cpu')", "amp": False,
                   "max_epochs": 2, "batch_size": 4, "lr_schedule": "cosine", "warmup_steps": 1, "checkpoint_iterations": 1,
                   **overrides})
    parser.parse()
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    if kill_at:
        def kill(engine):
            raise Killed(engine.state.iteration)

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), kill)
    return trainer


def test_failed_training_writes_no_final_model_and_resumes_mid_epoch(phantom_dir, tmp_path):
    """Bug 4: a failed run left model_final.pt under its final name (MONAI's CheckpointSaver saves on exception);
    bug 3 for this bundle: a resume from a mid-epoch last.pt runs exactly the iterations left and completes its LR schedule."""
    ref = _seg_trainer(phantom_dir, tmp_path / "ref")
    ref.run()
    assert ref.state.iteration == 6 and (tmp_path / "ref" / "model_final.pt").is_file()

    out = tmp_path / "run"
    with pytest.raises(Killed):
        _seg_trainer(phantom_dir, out, kill_at=5).run()  # crashes in iteration 5, before saving it
    assert not (out / "model_final.pt").exists()
    assert torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"] == 4  # the 1st of epoch 2
    resumed = _seg_trainer(phantom_dir, out)
    resumed.run()
    assert resumed.state.iteration == ref.state.iteration and resumed.state.epoch == 2
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(ref.optimizer.param_groups[0]["lr"], abs=1e-15)
    assert (out / "model_final.pt").is_file()


def test_changed_batch_size_on_resume_stops_naming_it(phantom_dir, tmp_path):
    """Bug 6: a hyper-parameter that cannot change on resume stops the run with old -> new instead of being ignored."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        _seg_trainer(phantom_dir, out, kill_at=2).run()
    with pytest.raises(ValueError, match="batch_size 4 -> 3"):
        _seg_trainer(phantom_dir, out, batch_size=3).run()
    fresh = _seg_trainer(phantom_dir, out, batch_size=3, resume="false")  # as it comes from the command line
    fresh.run()
    assert fresh.state.iteration == 6 and torch.load(out / "last.pt", weights_only=True)["hyperparameters"]["batch_size"] == 3


def test_nan_loss_stops_with_a_message_and_no_model(phantom_dir, tmp_path):
    """Bug 2: --learning_rate 1e6 exited 0 with all-non-finite model.pt / model_final.pt."""
    run = tmp_path / "run"
    rc, out = bundle_run(["train.yaml"], "--dataset_dir", phantom_dir, "--output_dir", run, "--max_epochs", 3,
                         "--batch_size", 2, "--learning_rate", 1e6, "--device", "cpu", *TINY)
    assert rc != 0, out[-2000:]
    # the guard's message (the last line is MONAI's ConfigExpression wrapper until the run lines report errors)
    assert "FloatingPointError: segmentation loss is nan at iteration 3, epoch 1" in out, out[-2000:]
    assert not (run / "model_final.pt").exists() and not (run / "model.pt").exists()  # stopped before any validation


def test_train_and_evaluate_with_ynet(phantom_dir, tmp_path):
    """--network ynet through train.yaml and evaluate.yaml: the trained weights load into the factory's YNet."""
    from monai_oct.networks.segmentation import load_weights, segmentation_network
    from monai_oct.networks.ynet import YNet

    run = tmp_path / "run"
    run_bundle(["train.yaml"], "--dataset_dir", phantom_dir, "--output_dir", run, "--max_epochs", 1,
               "--batch_size", 4, "--network", "ynet", *TINY)
    net = load_weights(segmentation_network("ynet", channels=[8]), run / "model_final.pt")
    assert type(net) is YNet
    ev = tmp_path / "eval"
    run_bundle(["train.yaml", "evaluate.yaml"], "--dataset_dir", phantom_dir, "--ckpt", run / "model_final.pt",
               "--output_dir", ev, "--network", "ynet", "--overlays", 0, *TINY)
    rep = _check_report(ev / "metrics.json", num_images=3)
    assert rep["network"] == "YNet"
