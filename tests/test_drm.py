"""Dynamic Region Masking: only pathological pixels change, seeding, p = 0 / p = 1, both encodings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from monai_oct.phantoms.oct import PhantomConfig, generate_bscans
from monai_oct.transforms import DynamicRegionMask, MaskEncoded, RandDynamicRegionMaskd, decode_mask, encode_mask

C, FLUID = 10, 9


@pytest.fixture(scope="module")
def fluid_labels() -> torch.Tensor:
    """(3, 1, 64, 64) phantom label maps that all hold fluid."""
    _, lab = generate_bscans(3, (64, 64), seed=5, config=PhantomConfig(fluid_probability=1.0))
    lab = torch.as_tensor(lab, dtype=torch.int64)[:, None]
    assert all((lab[i] == FLUID).sum() > 10 for i in range(3))
    return lab


@pytest.fixture(scope="module")
def dry_label() -> torch.Tensor:
    """(1, 64, 64) phantom label map without fluid."""
    _, lab = generate_bscans(1, (64, 64), seed=5, config=PhantomConfig(fluid_probability=0.0))
    return torch.as_tensor(lab, dtype=torch.int64)


def _drm(p: float, mode: str, seed: int = 0) -> DynamicRegionMask:
    t = DynamicRegionMask(pathological_ids=(FLUID,), p=p, num_classes=C, mode=mode)
    t.set_random_state(seed)
    return t


@pytest.mark.parametrize("mode", ["onehot", "scalar"])
@pytest.mark.parametrize("batch", [False, True])
def test_only_pathological_pixels_change(fluid_labels, mode, batch):
    lab = fluid_labels if batch else fluid_labels[0]
    cond = encode_mask(lab, C, mode)
    out = _drm(0.5, mode)(cond, lab)
    assert out.shape == cond.shape and out.dtype == cond.dtype
    changed = out != cond  # (.., ch, H, W)
    fluid = (lab == FLUID).expand_as(cond)
    assert not changed[~fluid].any()  # everything else bit for bit the same
    if mode == "onehot":  # at fluid pixels only the fluid channel moves; the retinal channels stay -1
        ch = 1 if batch else 0
        others = torch.ones(C, dtype=torch.bool)
        others[FLUID] = False
        assert not changed.index_select(ch, torch.nonzero(others)[:, 0]).any()
        fluid_ch = out.select(ch, FLUID).unsqueeze(ch)
    else:
        fluid_ch = out
    vals = fluid_ch[lab == FLUID]
    assert vals.min() >= -1.0 and (vals < 1.0).all()  # every fluid value scaled by alpha < 1
    frac_zeroed = (vals == -1.0).float().mean()
    assert 0.35 < frac_zeroed < 0.65  # p = 0.5 of the elements are zeroed


@pytest.mark.parametrize("mode", ["onehot", "scalar"])
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_no_pathology_leaves_condition_unchanged(dry_label, mode, p):
    cond = encode_mask(dry_label, C, mode)
    assert torch.equal(_drm(p, mode)(cond, dry_label), cond)
    assert torch.equal(_drm(p, mode)(cond), cond)  # classes read back from the condition


@pytest.mark.parametrize("mode", ["onehot", "scalar"])
def test_p0_scales_but_never_zeroes(fluid_labels, mode):
    lab = fluid_labels[0]
    cond = encode_mask(lab, C, mode)
    out = _drm(0.0, mode)(cond, lab)
    vals = (out[FLUID] if mode == "onehot" else out[0])[lab[0] == FLUID]
    # RetiDiff multiplies always: alpha ~ U(0, 1), none set to zero -> values in (-1, 1)
    assert (vals > -1.0).all() and (vals < 1.0).all()
    assert 0.35 < ((vals + 1) / 2).mean() < 0.65  # mean of U(0, 1)


@pytest.mark.parametrize("mode", ["onehot", "scalar"])
def test_p1_removes_the_pathology(fluid_labels, mode):
    lab = fluid_labels
    cond = encode_mask(lab, C, mode)
    out = _drm(1.0, mode)(cond, lab)
    fluid = (lab == FLUID)
    if mode == "onehot":
        assert (out[:, FLUID] == -1.0).all()  # class absent everywhere
        assert (out.amax(dim=1, keepdim=True)[fluid] == -1.0).all()  # no class at former fluid pixels
        assert not (decode_mask(out, C, mode) == FLUID).any()
    else:
        assert (out[fluid] == -1.0).all()


def test_same_seed_same_result(fluid_labels):
    cond = encode_mask(fluid_labels, C, "onehot")
    a = _drm(0.5, "onehot", seed=7)(cond, fluid_labels)
    b = _drm(0.5, "onehot", seed=7)(cond, fluid_labels)
    c = _drm(0.5, "onehot", seed=8)(cond, fluid_labels)
    assert torch.equal(a, b) and not torch.equal(a, c)
    t = _drm(0.5, "onehot", seed=7)
    assert not torch.equal(t(cond, fluid_labels), t(cond, fluid_labels))  # a new field per call
    assert torch.equal(t(cond, fluid_labels, randomize=False), t(cond, fluid_labels, randomize=False))


def test_ndarray_and_errors(fluid_labels):
    lab = fluid_labels[0].numpy()
    cond = encode_mask(lab, C, "scalar").numpy()
    out = _drm(0.5, "scalar")(cond, lab)
    assert isinstance(out, np.ndarray) and out.shape == cond.shape
    with pytest.raises(ValueError, match="p must be"):
        DynamicRegionMask(p=1.5)
    with pytest.raises(ValueError, match="12"):
        DynamicRegionMask(pathological_ids=(12,))
    with pytest.raises(ValueError, match="does not match"):
        _drm(0.5, "scalar")(cond, lab[:, :32])
    with pytest.raises(ValueError, match=r"\(10, H, W\)"):
        _drm(0.5, "onehot")(cond, lab)


def test_dict_twin_in_a_seeded_pipeline(fluid_labels):
    data = {"label": fluid_labels[1]}
    pipe = Compose([MaskEncoded("label", C, "onehot", output_key="cond"),
                    RandDynamicRegionMaskd(keys="cond", label_key="label", prob=1.0, p=0.5)])
    pipe.set_random_state(seed=3)
    a = pipe(data)
    pipe.set_random_state(seed=3)
    b = pipe(data)
    assert torch.equal(a["cond"], b["cond"]) and torch.equal(a["label"], data["label"])
    clean = encode_mask(data["label"], C, "onehot")
    assert not torch.equal(a["cond"], clean)
    off = RandDynamicRegionMaskd(keys="cond", prob=0.0)
    assert torch.equal(off({"cond": clean, "label": data["label"]})["cond"], clean)
    # seeding the dict twin seeds its array transform: same field as the array transform with that seed
    twin = RandDynamicRegionMaskd(keys="cond", label_key=None, prob=1.0, p=0.5).set_random_state(11)
    arr = DynamicRegionMask(p=0.5)
    arr.set_random_state(11)
    assert torch.equal(twin({"cond": clean})["cond"], arr(clean, data["label"]))
