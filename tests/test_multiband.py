"""Multi-band fundus phantom (physical spectra for any wavelengths) and the C-band metrics of issue 17."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_oct.core.labels import UNANNOTATED
from monai_oct.metrics.spectral import av_separability, ms_ssim_gap, spectral_kl, spectral_kl_floor, spectral_report
from monai_oct.phantoms.fundus import fundus_phantom
from monai_oct.phantoms.multiband import (
    DEFAULT_WAVELENGTHS,
    ISOSBESTIC_NM,
    RGB_WAVELENGTHS,
    haemoglobin_extinction,
    multiband_phantom,
    structure_spectra,
)

FINE = np.arange(465.0, 901.0, 5.0)


@pytest.fixture(scope="module")
def phantoms():
    ph = [multiband_phantom(64, seed=i) for i in range(8)]
    return np.stack([p["image"] for p in ph]), np.stack([p["structures"] for p in ph])


def test_artery_vein_difference_is_largest_in_540_600_nm():
    s = structure_spectra(FINE)
    diff = np.abs(s["artery"] - s["vein"])
    od = np.abs(np.log(s["artery"] / s["vein"]))  # the vessels' optical density difference, what oximetry reads
    assert 540 <= FINE[np.argmax(diff)] <= 600
    assert 540 <= FINE[np.argmax(od)] <= 600
    assert np.all(s["vein"][(FINE >= 590) & (FINE <= 700)] < s["artery"][(FINE >= 590) & (FINE <= 700)])


@pytest.mark.parametrize("nm", [570.4, 797.1])
def test_artery_equals_vein_at_an_isosbestic_point(nm):
    assert nm in ISOSBESTIC_NM
    eo, ed = haemoglobin_extinction([nm])
    assert abs(eo[0] - ed[0]) / ed[0] < 0.01
    s = structure_spectra([nm, 600.0])
    at_iso = abs(s["artery"][0] - s["vein"][0])
    assert at_iso < 0.05 * abs(s["artery"][1] - s["vein"][1])
    assert at_iso < 2e-3


def test_spectra_are_physical():
    s = structure_spectra(FINE)
    bg = s["background"]
    assert bg[FINE == 465][0] < bg[FINE == 560][0] < bg[FINE == 700][0]  # melanin and blood absorb the short bands
    assert np.all(s["vein"] < bg) and np.all(s["artery"] < bg)  # blood only absorbs
    assert np.all(s["onh"] > bg)  # no pigment: brighter
    assert np.all((bg > 0) & (s["onh"] <= 1))


@pytest.mark.parametrize("wavelengths",
                         [DEFAULT_WAVELENGTHS, RGB_WAVELENGTHS, (520.0,), tuple(np.linspace(480, 880, 7))])
def test_any_wavelength_list(wavelengths):
    ph = multiband_phantom(64, wavelengths=wavelengths, seed=1)
    assert ph["image"].shape == (len(wavelengths), 64, 64) and ph["image"].dtype == np.float32
    assert 0.0 <= ph["image"].min() and ph["image"].max() <= 1.0
    np.testing.assert_array_equal(ph["wavelengths"], wavelengths)
    st = ph["structures"]
    assert set(np.unique(st)) <= {0, 1, 2, 3, UNANNOTATED} and {0, 1, 2, 3} <= set(np.unique(st))
    assert np.all(st[~ph["fov"]] == UNANNOTATED) and np.all(ph["image"][:, ~ph["fov"]] == 0)


def test_rgb_case_is_a_red_fundus_with_the_rgb_phantoms_anatomy():
    ph = multiband_phantom(64, wavelengths=RGB_WAVELENGTHS, seed=2)
    bg = ph["image"][:, ph["structures"] == 0].mean(1)
    assert bg[0] > bg[1] > bg[2]  # red > green > blue
    onh = ph["image"][:, ph["structures"] == 3].mean(1)
    assert np.all(onh > bg)
    np.testing.assert_array_equal(ph["label"], fundus_phantom(64, seed=2, min_width=0.5)["label"])


def test_bad_wavelength_and_size_are_named():
    with pytest.raises(ValueError, match=r"450-920 nm.*\[1000\.0\]"):
        multiband_phantom(64, wavelengths=[1000.0])
    with pytest.raises(ValueError, match="at least 32x32"):
        multiband_phantom(16)


def test_determinism_by_seed():
    a, b, c = multiband_phantom(64, seed=5), multiband_phantom(64, seed=5), multiband_phantom(64, seed=6)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["structures"], b["structures"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["parameters"]["melanin_mua_500"] != c["parameters"]["melanin_mua_500"]  # per-image pigment


def test_spectral_kl_is_zero_for_identical_sets_and_grows_with_a_shift(phantoms):
    x, m = phantoms
    same = spectral_kl(x, m, x, m)
    assert same["mean"] == 0.0 and set(same["per_structure"]) == {"artery", "vein", "onh"}
    kls = [spectral_kl(x, m, np.clip(x + d, 0, 1), m)["mean"] for d in (0.02, 0.05, 0.1)]
    assert 0 < kls[0] < kls[1] < kls[2]
    one_way = spectral_kl(x, m, np.clip(x + 0.05, 0, 1), m, direction="real_to_synthetic")
    assert one_way["direction"] == "real_to_synthetic" and one_way["mean"] > 0
    assert len(same["per_structure"]["vein"]["per_band"]) == x.shape[1]


def test_spectral_kl_floor_and_matched_ratio(phantoms):
    x, m = phantoms
    real = spectral_kl_floor(x, m, x[:2], m[:2], repeats=2)  # real images as the "synthetic" set
    shifted = spectral_kl_floor(x, m, np.clip(x[:2] + 0.1, 0, 1), m[:2], repeats=2)
    assert real["matched_sizes"] == [6, 2] and all(v > 0 for v in real["floor"].values())
    assert shifted["floor"] == real["floor"]  # same draws
    assert all(shifted["ratio"][n] > 2 * real["ratio"][n] for n in ("artery", "vein"))
    with pytest.raises(ValueError, match="3 real images"):
        spectral_kl_floor(x[:3], m[:3])


def test_separability_near_one_on_the_phantom_and_chance_with_shuffled_labels():
    # 128 px: at 64 px most vessels are sub-pixel and blurred into the background (measured 0.91 over 8 images)
    ph = multiband_phantom(128, seed=0)
    x, m = ph["image"][None], ph["structures"][None]
    assert av_separability(x, m)["accuracy"] >= 0.97
    shuffled = m.copy()
    vessel = np.isin(shuffled, (1, 2))
    shuffled[vessel] = np.random.default_rng(0).permutation(shuffled[vessel])
    assert 0.4 <= av_separability(x, shuffled)["accuracy"] <= 0.6
    with pytest.raises(ValueError, match="0 vein"):
        av_separability(x, np.where(m == 2, 0, m))


def test_ms_ssim_gap_and_report(phantoms):
    x, m = phantoms
    t = torch.as_tensor(x)
    assert ms_ssim_gap(t[:4], t[:4])["gap"] == 0.0
    noisy = ms_ssim_gap((t[:4] + 0.2 * torch.rand_like(t[:4])).clamp(0, 1), t[4:])
    assert noisy["gap"] > ms_ssim_gap(t[:4], t[4:])["gap"]
    rep = spectral_report(x[:2], m[:2], x[2:], m[2:], validation=x[6:], repeats=1)
    assert rep["memorisation"]["pixel"]["nn_distance_min"] > 0 and rep["ms_ssim"]["gap"] >= 0
    copy = spectral_report(x[2:4], m[2:4], x[2:], m[2:], repeats=1)  # copies of training images
    assert copy["memorisation"]["pixel"]["nn_distance_mean"] == 0.0
    assert copy["memorisation"]["pixel"]["fraction_flagged"] == 1.0 and copy["ms_ssim"] is None
    assert set(rep) == {"spectral_kl", "spectral_kl_floor", "separability", "ms_ssim", "memorisation"}
