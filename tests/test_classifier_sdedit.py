"""The B-scan classifier, its per-class scores, and SDEdit translation (issue 18, deliverables 3 and 5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_oct.cli import main as cli
from monai_oct.core.classes import OCT_PATHOLOGY
from monai_oct.core.datalist import write_datalist
from monai_oct.core.seeding import sample_generators, sample_seeds
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.metrics.classification import confusion_markdown, confusion_report
from monai_oct.networks.classifier import load_classifier
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.recipes.classifier import evaluate_classifier, real_class_split, train_classifier
from monai_oct.recipes.sdedit import sdedit_sweep, sdedit_translate
from monai_oct.schedulers import diffusion_scheduler

from conftest import SHARED_DATA as DATA_ROOT

NAMES = OCT_PATHOLOGY.names  # healthy, DME, MS


def _fake_scan(cls: int, rng: np.random.Generator, h: int = 32, w: int = 64) -> np.ndarray:
    """Separable fake classes: a bright band at the top (healthy), in the middle (DME) or at the bottom (MS)."""
    img = rng.normal(60, 15, (h, w))
    r0 = [2, 12, 22][cls] + int(rng.integers(-1, 2))
    img[r0:r0 + 8] += 140
    return np.clip(img, 0, 255).astype(np.uint8)


def _fake_set(folder: Path, per_class: int, seed: int, classes=(0, 1, 2)) -> list[dict]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for c in classes:
        for i in range(per_class):
            path = folder / f"scan_{c}_{i:02d}.png"
            Image.fromarray(_fake_scan(c, rng)).save(path)
            items.append({"image": str(path), "class": NAMES[c]})
    return items


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    train, held = _fake_set(root / "train", 10, 0), _fake_set(root / "held", 4, 1)
    rec = train_classifier(train, held, root / "model", image_size=(32, 64), max_epochs=10, batch_size=8, lr=1e-2,
                           seed=0, network={"init_features": 8, "growth_rate": 4, "block_config": [1, 2]})
    return root, rec, held


def test_classifier_trains_and_beats_chance_on_separable_classes(trained):
    root, rec, held = trained
    assert (root / "model" / "classifier.pt").is_file() and (root / "model" / "classifier_heldout.md").is_file()
    saved = json.loads((root / "model" / "classifier.json").read_text())
    assert saved["classes"] == NAMES and saved["image_size"] == [32, 64] and saved["num_heldout"] == 12
    assert rec["heldout"]["accuracy"] >= 0.75  # chance is 1/3
    assert sum(map(sum, rec["heldout"]["confusion"])) == 12
    net, record = load_classifier(root / "model" / "classifier.pt")
    assert record["network"]["block_config"] == [1, 2] and not net.training
    # the evaluation of a set that names its classes gives the training run's held-out numbers again
    rep = evaluate_classifier(root / "model" / "classifier.pt", held, root / "eval")
    assert rep["confusion"] == rec["heldout"]["confusion"]
    assert (root / "eval" / "classification.json").is_file() and "| MS |" in (root / "eval" / "classification.md").read_text()
    only = evaluate_classifier(root / "model" / "classifier.pt", held, classes=["MS"])
    assert list(only["per_class"]) == ["MS"] and only["num_images"] == 4


def test_per_class_scores_on_a_known_confusion():
    # requested (true) class per image vs the classifier's call
    true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
    rep = confusion_report(pred, true, NAMES)
    assert rep["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert rep["accuracy"] == pytest.approx(0.7)
    assert rep["per_class"]["healthy"]["accuracy"] == pytest.approx(0.75)
    assert rep["per_class"]["DME"]["accuracy"] == pytest.approx(0.5)
    assert rep["per_class"]["MS"]["predicted"] == {"healthy": 1, "MS": 3}
    scores = torch.nn.functional.one_hot(torch.tensor(pred), 3).float()  # scores give the same counts
    assert confusion_report(scores, true, NAMES)["confusion"] == rep["confusion"]
    assert confusion_report(pred, true, NAMES, requested=[2])["per_class"].keys() == {"MS"}
    assert "| DME | 2 | 0.500 |" in confusion_markdown(rep)
    with pytest.raises(ValueError, match="target class id 3 outside 0..2"):
        confusion_report([0], [3], NAMES)


def test_classifier_errors_name_the_value(trained, tmp_path, capsys):
    root, _, held = trained
    missing = tmp_path / "nowhere" / "classifier.pt"
    with pytest.raises(FileNotFoundError, match=f"{missing}: classifier checkpoint not found"):
        evaluate_classifier(missing, held)
    with pytest.raises(ValueError, match="requested class: unknown class 'AMD'.*0 healthy, 1 DME, 2 MS"):
        evaluate_classifier(root / "model" / "classifier.pt", held, classes=["AMD"])
    dl = tmp_path / "synthetic.json"
    write_datalist(dl, [{"image": held[0]["image"], "class": "drusen"}])
    assert cli(["classify", str(dl), "--ckpt", str(root / "model" / "classifier.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "scan_0_00.png: unknown class 'drusen'" in capsys.readouterr().err.strip().splitlines()[-1]
    assert cli(["classify", str(dl), "--ckpt", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err.strip().splitlines()[-1]
    one = _fake_set(tmp_path / "one", 3, 0, classes=(1,))
    with pytest.raises(ValueError, match=r"hold 1 class\(es\) \[1\]"):
        train_classifier(one, None, tmp_path / "m", image_size=(32, 64), max_epochs=1)
    assert not (tmp_path / "m" / "classifier.pt").exists()


def test_train_classifier_command(tmp_path, capsys):
    train = _fake_set(tmp_path / "train", 4, 0)
    dl = tmp_path / "train.json"
    write_datalist(dl, train)
    code = cli(["train-classifier", "--train", str(dl), "--heldout", str(dl), "--out", str(tmp_path / "m"),
                "--image-size", "32", "64", "--epochs", "1", "--batch-size", "6"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and (tmp_path / "m" / "classifier.json").is_file()
    assert json.loads((tmp_path / "m" / "classifier.json").read_text())["split"].startswith(f"train {[str(dl)]}")


@pytest.mark.skipif(not (DATA_ROOT / "hcms_unlabeled").is_dir(), reason="real data (../shared/data) absent")
def test_real_split_by_bscan_index():
    split = real_class_split(DATA_ROOT)
    held = [Path(it["image"]).name for it in split["heldout"] if it["class"] != "DME"]
    assert len(held) == 20 and all(int(n[-7:-4]) >= 40 for n in held)  # frames 40-49 of hc01 and ms01
    assert sum(it["class"] == "DME" for it in split["train"]) == 66 and len(split["train"]) == 66 + 78
    assert not {it["image"] for it in split["train"]} & {it["image"] for it in split["heldout"]}


# ---- SDEdit -----------------------------------------------------------------------------------------------------

def _unet(condition_channels: int = 0):
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, condition_channels, channels=(8, 16), num_res_blocks=1,
                                     num_class_embeds=OCT_PATHOLOGY.num_class_embeds)
    with torch.no_grad():  # MONAI zero-initialises output convolutions: make the output depend on the input
        for p in net.parameters():
            if p.abs().max() < 1e-2:
                p.normal_(0, 0.1)
    return net.eval()


def _sampler(sampler: str = "ddpm"):
    return DiffusionSampler(diffusion_scheduler(sampler, num_train_timesteps=20), num_inference_steps=10)


def test_sdedit_t0_returns_the_source_and_t1_ignores_it():
    net, sampler = _unet(), _sampler()
    src = torch.rand(3, 1, 32, 32) * 2 - 1
    other = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.equal(sdedit_translate(net, sampler, src, 2, 0.0, seed=5), src)
    full = sdedit_translate(net, sampler, src, 2, 1.0, seed=5)
    assert torch.equal(full, sdedit_translate(net, sampler, other, 2, 1.0, seed=5))  # the source is not used
    plain = sampler(net, sample_generators(sample_seeds(5, range(3))), (1, 32, 32), class_labels=[2, 2, 2])
    assert torch.equal(full, plain)  # t = 1 is plain sampling with the same seeds
    half = sdedit_translate(net, sampler, src, 2, 0.5, seed=5)
    assert not torch.allclose(half, sdedit_translate(net, sampler, other, 2, 0.5, seed=5))  # the source matters
    assert torch.equal(half, sdedit_translate(net, sampler, src, 2, 0.5, seed=5))  # seeded
    assert not torch.allclose(half, sdedit_translate(net, sampler, src, 2, 0.5, seed=6))
    # DDIM too; a mask-conditioned UNet gets the source's label maps as its condition
    ddim = _sampler("ddim")
    assert torch.equal(sdedit_translate(net, ddim, src, 0, 0.0), src)
    labels = torch.randint(0, 10, (3, 1, 32, 32))
    cnet = _unet(condition_channels=10)
    a = sdedit_translate(cnet, sampler, src, 1, 0.5, labels=labels)
    assert not torch.allclose(a, sdedit_translate(cnet, sampler, src, 1, 0.5, labels=(labels + 1) % 10))
    zero = sdedit_translate(cnet, sampler, src, 1, 0.5, mask_condition=False)  # stage 1: the all-zero condition
    assert torch.equal(zero, sdedit_translate(cnet, sampler, src, 1, 0.5, labels=labels, mask_condition=False))


def test_sdedit_sweep_scores_each_t(trained):
    root = trained[0]
    net, sampler = _unet(), _sampler()
    clf, record = load_classifier(root / "model" / "classifier.pt")
    src = torch.rand(4, 1, 32, 64) * 2 - 1
    labels = torch.randint(0, 10, (4, 1, 32, 64))
    teacher = lambda x: torch.nn.functional.one_hot(labels[: x.shape[0]].clamp(0, 9)[:, 0], 10).permute(0, 3, 1, 2).float()  # noqa: E731
    rep = sdedit_sweep(net, sampler, src, labels, "MS", [0.0, 0.5, 1.0], teacher=teacher, classifier=clf,
                       classifier_size=record["image_size"])
    assert rep["target"] == "MS" and [r["t"] for r in rep["per_t"]] == [0.0, 0.5, 1.0]
    assert rep["per_t"][0]["mean_abs_change"] == 0.0 and rep["per_t"][2]["mean_abs_change"] > 0
    assert all(r["dice"] == pytest.approx(1.0) for r in rep["per_t"])  # the fake teacher returns the labels
    assert all(0.0 <= r["target_accuracy"] <= 1.0 for r in rep["per_t"])
    assert rep["per_t"][0]["target_accuracy"] == rep["source"]["target_accuracy"]  # t = 0: the source's calls


def test_sdedit_errors_name_the_value():
    net, sampler = _unet(), _sampler()
    src = torch.zeros(1, 1, 32, 32)
    with pytest.raises(ValueError, match="SDEdit target: unknown class 'AMD'"):
        sdedit_sweep(net, sampler, src, None, "AMD", [0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\], got \[1.5\]"):
        sdedit_sweep(net, sampler, src, None, "DME", [0.2, 1.5])
    with pytest.raises(ValueError, match="strength must be in"):
        sdedit_translate(net, sampler, src, 1, -0.1)
    with pytest.raises(ValueError, match=r"class labels \[7\] must be 1 ids"):
        sdedit_translate(net, sampler, src, 7, 0.5)
    with pytest.raises(ValueError, match="needs the source scans' label maps"):
        sdedit_translate(_unet(condition_channels=10), sampler, src, 1, 0.5)
    with pytest.raises(ValueError, match="needs a DDPM or DDIM sampler"):
        sdedit_translate(net, DiffusionSampler(diffusion_scheduler("dpmpp2m", num_train_timesteps=20), 5), src, 1, 0.5)
