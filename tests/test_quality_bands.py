"""`monai-oct evaluate` on RGB fundus photographs (issue 16) and C-band ``.npy`` images (issue 17): images read with
their channels, FD/KID per band triplet with floors, MS-SSIM and memorisation on all bands, spectral KL per structure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_oct.core.io import DataError, write_npy, write_png
from monai_oct.metrics import band_triplets, extract_features, frechet_summary, spectral_kl
from monai_oct.recipes.image_sets import load_image_set, read_set_image
from monai_oct.recipes.quality import evaluate_synthesis

#: report.json's top-level keys of a grey set, as before C-band images were read (no "bands", no "spectral").
GREY_KEYS = {"real", "synthetic", "reference", "image_size", "seed", "frechet", "diversity", "memorisation",
             "adherence", "adherence_note", "plausibility", "lpips", "lpips_note", "seconds", "report_path",
             "figure_path"}


def _rgb_net() -> torch.nn.Module:
    """A fixed random conv encoder on 3 channels (stands in for Inception on the band triplets)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2))


@pytest.fixture(scope="module")
def mb_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two 5-band 32 px multi-band phantom sets (real: 6, synthetic: 4, other seed) with structure masks."""
    from monai_oct.phantoms.multiband import write_multiband_dataset

    lam = [470, 530, 590, 650, 800]
    out = tmp_path_factory.mktemp("mb")
    real = write_multiband_dataset(out / "real", num=6, size=32, wavelengths=lam, seed=0)
    synth = write_multiband_dataset(out / "synth", num=4, size=32, wavelengths=lam, seed=1)
    return real, synth


def test_band_triplets_pad_the_last_one():
    assert band_triplets(1) == [(0, 0, 0)]
    assert band_triplets(3) == [(0, 1, 2)]
    assert band_triplets(5) == [(0, 1, 2), (3, 4, 4)]
    assert band_triplets(16)[-1] == (15, 15, 15) and len(band_triplets(16)) == 6
    with pytest.raises(ValueError):
        band_triplets(0)


def test_read_set_image_keeps_channels(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    write_png(tmp_path / "rgb.png", rgb)
    write_png(tmp_path / "grey_as_rgb.png", np.full((8, 10, 3), 102, np.uint8))
    write_npy(tmp_path / "b.npy", np.full((5, 8, 10), 0.25, np.float32))
    x = read_set_image(tmp_path / "rgb.png", channels=None)
    assert x.shape == (3, 8, 10) and x[0].max() == 1.0 and x[1].max() == -1.0 and x[2, 0, 0] == pytest.approx(-0.6)
    assert read_set_image(tmp_path / "rgb.png", channels=1).shape == (1, 8, 10)  # grey: averaged, as before
    assert read_set_image(tmp_path / "grey_as_rgb.png", channels=None).shape == (1, 8, 10)
    b = read_set_image(tmp_path / "b.npy", channels=None)
    assert b.shape == (5, 8, 10) and np.allclose(b, -0.5)
    assert np.allclose(read_set_image(tmp_path / "b.npy", channels=None, band_range=(0, 0.5)), 0.0)
    with pytest.raises(DataError, match="rgb.png: 3 channel.*expected 5"):
        read_set_image(tmp_path / "rgb.png", channels=5)
    with pytest.raises(DataError, match="b.npy.*outside the band range"):
        read_set_image(tmp_path / "b.npy", channels=None, band_range=(0.5, 1))
    (tmp_path / "x.raw").write_bytes(b"123")
    with pytest.raises(DataError, match=r"x.raw: unknown image extension '.raw'"):
        read_set_image(tmp_path / "x.raw", channels=None)
    items = [{"image": str(tmp_path / "b.npy")}, {"image": str(tmp_path / "rgb.png")}]
    with pytest.raises(DataError, match="rgb.png: 3 channel.*b.npy's 5"):
        load_image_set(items, channels=None)


def test_multiband_report_per_triplet_with_floors_and_spectral_kl(mb_dirs, tmp_path):
    real, synth = mb_dirs
    net = _rgb_net()
    rep = evaluate_synthesis(real, synth, tmp_path / "q", image_size=None, extractor=net, structure_key="structures",
                             max_pairs=20, kid_subsets=5, repeats=2)
    assert rep["bands"]["num_bands"] == 5 and rep["bands"]["triplets"] == [[0, 1, 2], [3, 4, 4]]
    fr = rep["frechet"]
    assert [t["bands"] for t in fr["per_triplet"]] == [[0, 1, 2], [3, 4, 4]]
    assert fr["fd"] == pytest.approx(np.mean([t["fd"] for t in fr["per_triplet"]]))
    assert fr["fd_floor"] == pytest.approx(np.mean([t["fd_floor"] for t in fr["per_triplet"]]))
    # each triplet is the grey path's frechet_summary on those three bands (one FD path)
    r = load_image_set(real, "training", None, channels=None, structure_key="structures")
    s = load_image_set(synth, "training", None, channels=None, structure_key="structures")
    from monai_oct.metrics.fid import ModuleExtractor

    ext = ModuleExtractor(net, in_channels=3)
    direct = frechet_summary(extract_features(ext, r.images[:, [3, 4, 4]]), extract_features(ext, s.images[:, [3, 4, 4]]),
                             repeats=2, kid_subsets=5, seed=0)
    assert fr["per_triplet"][1]["fd"] == pytest.approx(direct["fd"])
    assert fr["per_triplet"][1]["fd_floor"] == pytest.approx(direct["fd_floor"])
    assert fr["feature_dim"] == 16 and rep["memorisation"]["feature"] is not None
    # diversity and pixel memorisation on all 5 bands
    assert rep["diversity"]["ms_ssim"]["synthetic"]["pairs"] == 6
    assert len(rep["memorisation"]["pixel"]["per_image"]["distance"]) == 4
    sp = rep["spectral"]
    assert set(sp["kl"]["per_structure"]) == {"artery", "vein", "onh"}
    assert sp["kl"]["mean"] > 0 and set(sp["kl_floor"]["floor"]) == {"artery", "vein", "onh"}
    # the KL on [-1, 1] images equals the KL on the [0, 1] reflectances
    ref_kl = spectral_kl(r.images.numpy() / 2 + 0.5, r.structures, s.images.numpy() / 2 + 0.5, s.structures)
    assert sp["kl"]["mean"] == pytest.approx(ref_kl["mean"])
    assert sp["ms_ssim_gap"]["gap"] == pytest.approx(abs(sp["ms_ssim_gap"]["synthetic"] - sp["ms_ssim_gap"]["validation"]))
    saved = json.loads((tmp_path / "q" / "report.json").read_text())
    assert saved["frechet"]["per_triplet"][0]["bands"] == [0, 1, 2] and (tmp_path / "q" / "report.png").is_file()


def test_fundus_rgb_report_one_triplet(tmp_path):
    from monai_oct.phantoms.fundus import write_fundus_phantom_dataset

    from monai_oct.core.datalist import load_datalist

    dl = write_fundus_phantom_dataset(tmp_path / "f", num=8, size=48, seed=0)
    synth = load_datalist(dl, key="validation") + load_datalist(dl, key="train")[2:3]  # the last one copies train 2
    rep = evaluate_synthesis(dl, synth, tmp_path / "q", real_key="train", image_size=None,
                             extractor=_rgb_net(), table="fundus_av", max_pairs=10, kid_subsets=5)
    assert rep["bands"]["num_bands"] == 3 and rep["frechet"]["triplets"] == [[0, 1, 2]]
    assert rep["frechet"]["fd"] == rep["frechet"]["per_triplet"][0]["fd"]
    assert rep["spectral"]["kl"] is None and "structure" in rep["spectral"]["kl_note"]
    copy = rep["memorisation"]["pixel"]["closest"][0]
    assert copy["synthetic"] == 2 and copy["train"] == 2 and copy["distance"] == 0.0 and copy["flagged"]
    assert rep["memorisation"]["feature"]["closest"][0]["distance"] == pytest.approx(0.0, abs=1e-9)
    assert rep["plausibility"]["synthetic"] is None and "fundus_av" in rep["plausibility_note"]


def test_grey_report_keys_unchanged(phantom_dir, tmp_path):
    rep = evaluate_synthesis(phantom_dir / "datalist.json", phantom_dir / "datalist.json", tmp_path, synthetic_key="validation",
                             image_size=None, extractor="none", max_pairs=10)
    assert set(rep) == GREY_KEYS


def test_evaluate_cli_bands(mb_dirs, phantom_dir, tmp_path, capsys):
    from monai_oct.cli import main

    real, synth = mb_dirs
    ts = tmp_path / "rgb_net.pt"
    torch.jit.trace(_rgb_net(), torch.zeros(1, 3, 32, 32)).save(str(ts))
    rc = main(["evaluate", "--real", str(real), "--synthetic", str(synth), "--out", str(tmp_path / "cli"),
               "--image-size", "0", "0", "--extractor", str(ts), "--structure-key", "structures", "--max-pairs", "10"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "5 bands" in out and "bands [0, 1, 2]: FD" in out and "bands [3, 4, 4]: FD" in out and "floor FD" in out
    assert "mean over triplets: FD" in out and re.search(r"spectral KL vein: [\d.]+  floor [\d.]+ vs matched [\d.]+", out)
    # grey OCT synthetic against 5-band real: the band counts differ, named in the last line
    rc = main(["evaluate", "--real", str(real), "--synthetic", str(phantom_dir / "datalist.json"),
               "--out", str(tmp_path / "bad"), "--image-size", "32", "32", "--extractor", "none"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "synthetic images have 1 band(s) but the real ones 5" in err and ".png" in err
    assert not (tmp_path / "bad" / "report.json").exists()


def test_evaluate_bundle_band_overrides(mb_dirs, tmp_path):
    """evaluate.yaml passes channels, structure_key and band_range on (a too narrow band range names the file)."""
    real, synth = mb_dirs
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "bundles/oct_ddpm/configs/evaluate.yaml",
           "--real_datalist", str(real), "--synthetic_datalist", str(synth), "--real_key", "training",
           "--image_size", "native", "--extractor", "none", "--max_pairs", "10", "--structure_key", "structures"]
    env = {**__import__("os").environ, "PYTHONPATH": str(root)}
    res = subprocess.run(cmd + ["--output_dir", str(tmp_path / "ok")], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert rep["bands"]["num_bands"] == 5 and rep["spectral"]["kl"]["mean"] > 0 and rep["frechet"] is None
    res = subprocess.run(cmd + ["--output_dir", str(tmp_path / "bad"), "--band_range", "[0.0, 0.01]"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "outside the band range" in res.stderr.strip().splitlines()[-1]
    assert ".npy" in res.stderr.strip().splitlines()[-1]
