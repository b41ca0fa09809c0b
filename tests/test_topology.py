"""Layer-order decoding (:mod:`monai_oct.transforms.topology`): valid maps pass unchanged, reversals, fluid outside
the retina and specks are fixed and counted, any scores give a fully valid map, fast enough for 224x512."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from monai_oct.core.labels import DUKE_DME
from monai_oct.metrics.plausibility import column_validity
from monai_oct.transforms.topology import LayerOrderDecode, LayerOrderDecoded, merge_decoding_reports


def layered_map(h: int = 64, w: int = 96, fluid: bool = True, seed: int = 0) -> np.ndarray:
    """A valid Duke-like map (1, H, W): ids 0..8 top to bottom with wavy boundaries, a fluid pocket in the ONL."""
    rng = np.random.default_rng(seed)
    cols = np.arange(w)
    top = h * 0.2 + 3 * np.sin(cols / w * 2 * np.pi + rng.uniform(0, 6))
    thick = np.array([3, 5, 4, 3, 8, 2, 4])          # NFL .. OS-RPE rows
    bounds = top[None] + np.r_[0, np.cumsum(thick)][:, None] * (h / 64)   # 8 boundaries (8, W)
    rows = np.arange(h)[:, None]
    lab = (rows >= bounds[:, None, :]).sum(0).astype(np.int64)          # 0 above the first boundary .. 8 below the last
    if fluid:
        r0, c0 = bounds[4, w // 2] + 2 * h / 64, w // 2
        pocket = ((rows - r0) / (2 * h / 64)) ** 2 + ((cols[None] - c0) / (w / 10)) ** 2 <= 1
        lab[pocket & (lab == 5)] = 9
    return lab[None]


def valid_everywhere(lab) -> bool:
    return bool(np.all(column_validity(np.asarray(lab)) == 1.0))


def test_valid_map_passes_unchanged():
    lab = layered_map()
    assert valid_everywhere(lab) and (lab == 9).sum() >= 16
    dec = LayerOrderDecode(DUKE_DME, min_fluid=16)
    out = dec(lab)
    np.testing.assert_array_equal(out, lab)
    assert dec.last_report["pixels_changed"] == 0 and dec.last_report["columns_changed"] == 0
    # the same from one-hot scores in [-1, 1] (a perfect one-hot DDPM sample), as a tensor
    scores = torch.as_tensor((lab[0][None] == np.arange(10)[:, None, None]) * 2.0 - 1.0)
    out_t = dec(scores)
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.int64
    np.testing.assert_array_equal(out_t.numpy(), lab)


def test_swapped_layers_in_one_column_are_fixed_and_counted():
    lab = layered_map(fluid=False)
    col = 40
    inl, opl = np.nonzero(lab[0, :, col] == 3)[0], np.nonzero(lab[0, :, col] == 4)[0]
    bad = lab.copy()
    bad[0, inl, col], bad[0, opl, col] = 4, 3                 # OPL above INL in this column only
    assert column_validity(bad)[col] == 0.0
    dec = LayerOrderDecode()
    out = dec(bad)
    assert valid_everywhere(out)
    np.testing.assert_array_equal(np.delete(out, col, -1), np.delete(lab, col, -1))   # other columns untouched
    rep = dec.last_report
    assert rep["columns_changed"] == 1 and 0 < rep["pixels_changed"] <= min(len(inl), len(opl))
    assert rep["changed_fraction"] == pytest.approx(rep["pixels_changed"] / lab.size)


def test_fluid_in_the_vitreous_is_removed_and_specks_too():
    lab = layered_map()
    bad = lab.copy()
    # a 30-pixel fluid blob in the vitreous, well above the retina (keeping it would turn more vitreous into retina)
    bad[0, 2:5, 10:20] = 9
    assert (lab[0, :, 10:20] == 0).sum(0).min() >= 8
    r = int(np.nonzero(lab[0, :, 5] == 5)[0].mean())
    bad[0, r, 5] = 9                                          # a one-pixel speck inside the retina (ONL-ISM)
    dec = LayerOrderDecode(min_fluid=16)
    out = dec(bad)
    assert valid_everywhere(out)
    assert not (out[0, 2:5, 10:20] == 9).any() and out[0, r, 5] == 5
    np.testing.assert_array_equal(out, lab)                   # the pocket (>= 16 pixels) stays
    assert dec.last_report["fluid_pixels_removed"] == int((bad == 9).sum() - (lab == 9).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_noise_scores_always_decode_to_valid_columns(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(2, 10, 48, 40, generator=g)
    scores[:, 9] += 1.0                                       # plenty of fluid evidence everywhere, vitreous included
    dec = LayerOrderDecode(min_fluid=4)
    out = dec(scores)
    assert tuple(out.shape) == (2, 1, 48, 40)
    assert all(valid_everywhere(o) for o in out.numpy())
    assert (out == 9).any()                                   # fluid survives where it is allowed
    ids = torch.randint(0, 10, (1, 48, 40), generator=g)      # random ids too
    assert valid_everywhere(dec(ids))
    assert dec.last_report["columns_changed"] == 40


def test_dict_twin_writes_the_report_and_reports_merge():
    lab = layered_map(fluid=False)
    bad = lab.copy()
    bad[0, 0, :3] = 8
    d = LayerOrderDecoded(["label"])({"label": torch.as_tensor(bad)})
    assert valid_everywhere(d["label"].numpy()) and d["label_decoding"]["columns_changed"] == 3
    total = merge_decoding_reports(d["label_decoding"], d["label_decoding"], None)
    assert total["maps"] == 2 and total["columns_changed"] == 6 and total["columns"] == 2 * lab.shape[-1]


def test_bad_input_names_the_shape_and_ids():
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        LayerOrderDecode()(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match=r"\[12\]"):
        LayerOrderDecode()(np.full((1, 8, 8), 12))


def test_full_band_speed():
    scores = torch.randn(10, 224, 512, generator=torch.Generator().manual_seed(0))
    dec = LayerOrderDecode()
    dec(scores[:, :16, :16])
    t0 = time.perf_counter()
    out = dec(scores)
    took = time.perf_counter() - t0
    assert valid_everywhere(out)
    assert took < 1.0, f"224x512 decoding took {took:.2f} s"
