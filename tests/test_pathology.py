"""Pathology placement (:mod:`monai_oct.transforms.pathology`): fluid pockets where asked and of the asked size, only
inside the retina, drusen that raise the RPE by the asked height over a flat Bruch's membrane, valid layer order in
every column after every edit, seeded random twins, the ``inserted`` mask, and errors that name the bad value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_oct.core.geometry import label_boundaries
from monai_oct.metrics.plausibility import column_validity
from monai_oct.phantoms.oct import PhantomConfig, generate_bscan
from monai_oct.transforms import (
    InsertDrusen,
    InsertDrusend,
    InsertFluid,
    InsertFluidd,
    RandInsertDrusend,
    RandInsertFluidd,
)


def phantom_label(seed: int = 1) -> np.ndarray:
    """A fluid-free phantom label map (128, 256) with Duke ids."""
    return generate_bscan(np.random.default_rng(seed), (128, 256), PhantomConfig(fluid_probability=0))[1]


def hand_map(h: int = 96, w: int = 128) -> np.ndarray:
    """A flat layered map (1, H, W): ILM at row 20, layers 1..7 of 4, 6, 8, 5, 12, 3, 5 rows, choroid from row 63."""
    bounds = 20 + np.r_[0, np.cumsum([4, 6, 8, 5, 12, 3, 5])]
    rows = np.arange(h)[:, None]
    return (rows >= bounds[None, :]).sum(1)[:, None].repeat(w, 1)[None].astype(np.int64)


def all_valid(lab) -> bool:
    return bool(np.all(column_validity(np.asarray(lab)) == 1.0))


@pytest.mark.parametrize("make", [phantom_label, hand_map])
def test_fluid_pocket_where_asked_of_the_asked_size(make):
    lab = make()
    assert all_valid(lab) and not (lab == 9).any()
    bounds = label_boundaries(lab)
    col = 90
    row = 0.5 * (bounds[2, col] + bounds[3, col])      # the middle of the INL
    ins = InsertFluid(centres=[(row, col)], size=(8, 24))
    out = ins(lab)
    assert out.shape == lab.shape and out.dtype == lab.dtype
    assert out.reshape(-1, lab.shape[-1])[int(row), col] == 9
    rr, cc = np.nonzero(ins.last_inserted)
    assert abs((rr.max() - rr.min() + 1) - 8) <= 2 and abs((cc.max() - cc.min() + 1) - 24) <= 2
    assert np.array_equal(ins.last_inserted, np.asarray(out).reshape(ins.last_inserted.shape) == 9)
    assert all_valid(out)
    # the layered pixels outside the pocket are untouched (overwrite mode)
    assert np.array_equal(np.asarray(out).reshape(-1)[~ins.last_inserted.reshape(-1)],
                          np.asarray(lab).reshape(-1)[~ins.last_inserted.reshape(-1)])


def test_fluid_never_leaves_the_retina_even_for_a_pocket_bigger_than_it():
    lab = phantom_label()
    ins = InsertFluid(columns=[60, 200], depth="OPL", size=(80, 50), jitter=0.3).set_random_state(0)
    out = ins(lab)
    bounds = label_boundaries(lab)
    rows = np.arange(lab.shape[0])[:, None]
    fluid = out == 9
    assert fluid.sum() > 200
    assert not (fluid & ((rows < bounds[1][None]) | (rows >= bounds[5][None]))).any()   # only GCL-IPL .. ONL-ISM
    # a row of tissue is kept between the fluid and the vitreous / choroid
    assert not (fluid[1:] & (lab[:-1] == 0)).any() and not (fluid[:-1] & (lab[1:] == 8)).any()
    assert all_valid(out)


def test_displacing_pocket_lifts_the_retina_keeps_order_and_bruch():
    lab = hand_map()
    out = InsertFluid(columns=[64], depth="INL", size=(10, 30), displace=1.0)(lab)
    before, after = label_boundaries(lab), label_boundaries(out)
    assert before[0, 64] - after[0, 64] == pytest.approx(10, abs=1)      # ILM raised by the pocket's height
    assert np.array_equal(before[7], after[7]) and np.array_equal(before[:, 10], after[:, 10])
    assert all_valid(out) and (out == 9).sum() > 150


def test_existing_fluid_is_kept_and_the_zone_follows_it():
    lab = phantom_label()
    first = InsertFluid(columns=[100], depth="INL", size=(10, 30))(lab)
    second = InsertFluid(columns=[104], depth="INL", size=(10, 30))(first)   # centred on the first pocket
    assert ((first == 9) <= (second == 9)).all() and all_valid(second)


@pytest.mark.parametrize("make", [phantom_label, hand_map])
def test_drusen_raise_the_rpe_by_their_height_over_a_flat_bruch(make):
    lab = make()
    ins = InsertDrusen(columns=[40, 100], heights=[4, 7], widths=[30, 40])
    out = ins(lab)
    before, after = label_boundaries(lab), label_boundaries(out)
    assert before[6, 40] - after[6, 40] == pytest.approx(4, abs=1)     # top of OS-RPE at the apex
    assert before[6, 100] - after[6, 100] == pytest.approx(7, abs=1)
    assert np.array_equal(before[7], after[7])                           # Bruch's membrane unchanged
    assert (before[0] - after[0]).max() < 7 and after[0].min() >= 0     # ILM lifted less, still in the image
    assert all_valid(out)
    # columns away from the drusen are untouched, every layer is still present over the drusen (compressed, not torn)
    flat = np.asarray(lab).reshape(-1, lab.shape[-1])
    edited = np.asarray(out).reshape(flat.shape)
    assert np.array_equal(flat[:, 150:], edited[:, 150:])
    for c in (40, 100):
        assert set(np.unique(edited[:, c])) == set(np.unique(flat[:, c]))
    assert ins.last_inserted.sum() > 0 and (edited[ins.last_inserted] == 7).all()


def test_drusen_move_fluid_with_the_rows_and_accept_tensors():
    lab = torch.as_tensor(InsertFluid(columns=[100], depth="ONL-ISM", size=(6, 20))(phantom_label()))[None]
    out = InsertDrusen(columns=[100], heights=6, widths=60)(lab)
    assert isinstance(out, torch.Tensor) and out.shape == lab.shape and out.dtype == lab.dtype
    assert abs(int((out == 9).sum()) - int((lab == 9).sum())) <= 0.35 * int((lab == 9).sum())
    assert all_valid(out)


def test_dict_twins_carry_the_inserted_mask():
    d = {"label": hand_map(), "image": np.zeros((1, 96, 128))}
    out = InsertFluidd(["label"], columns=[64], depth=0.3, size=(6, 16))(d)
    assert out["inserted"].shape == (1, 96, 128) and out["inserted"].dtype == np.uint8
    assert np.array_equal(out["inserted"] == 1, out["label"] == 9) and out["inserted"].sum() > 40
    dr = InsertDrusend(["label"], inserted_key="drusen", columns=[64], heights=5, widths=30)(d)
    assert dr["drusen"].sum() > 0 and (dr["label"][dr["drusen"] == 1] == 7).all() and "inserted" not in dr


@pytest.mark.parametrize("cls", [RandInsertFluidd, RandInsertDrusend])
def test_random_twins_are_deterministic_by_seed_and_valid(cls):
    lab = phantom_label()
    runs = [cls(["label"]).set_random_state(s)({"label": lab[None]}) for s in (5, 5, 6)]
    assert np.array_equal(runs[0]["label"], runs[1]["label"]) and np.array_equal(runs[0]["inserted"], runs[1]["inserted"])
    assert not np.array_equal(runs[0]["label"], runs[2]["label"])
    for r in runs:
        assert r["inserted"].sum() > 0 and all_valid(r["label"])
    many = cls(["label"]).set_random_state(0)
    for _ in range(4):
        assert all_valid(many({"label": lab[None]})["label"])


def test_random_twin_with_prob_zero_leaves_the_map_and_writes_an_empty_mask():
    lab = phantom_label()[None]
    out = RandInsertFluidd(["label"], prob=0.0)({"label": lab})
    assert np.array_equal(out["label"], lab) and out["inserted"].sum() == 0


@pytest.mark.parametrize("make, match", [
    (lambda: InsertFluid(centres=[(30, 300)])(phantom_label()), r"centre \(row 30, col 300\) is outside the image"),
    (lambda: InsertFluid(centres=[(5, 60)])(phantom_label()), r"centre \(row 5, col 60\) is outside the retina"),
    (lambda: InsertFluid(centres=[(110, 60)])(phantom_label()), r"centre \(row 110, col 60\) is outside the retina"),
    (lambda: InsertFluid(columns=[60], depth="NFL")(phantom_label()), r"outside the retina's fluid zone"),
    (lambda: InsertFluid(columns=[60], depth="choroid"), r"layer 'choroid' is not a retinal layer"),
    (lambda: InsertFluid(columns=[60], depth=1.5), r"depth .* got 1.5"),
    (lambda: InsertFluid(columns=[60], size=(0, 10)), r"size .* got \(0.0, 10.0\)"),
    (lambda: InsertFluid(columns=[60])(np.where(phantom_label() == 3, 12, phantom_label())),
     r"label: label ids \[12\] are outside the duke_dme table"),
    (lambda: InsertDrusen(columns=[60], heights=40)(hand_map()), r"druse of height 40 at column 60 is taller than the retina"),
    (lambda: InsertDrusen(columns=[130])(hand_map()), r"druse column 130 is outside the image"),
    (lambda: InsertDrusen(columns=[60], heights=20, inner_lift=0.9)(hand_map()[:, 15:]), r"push the ILM above row 0"),
    (lambda: InsertDrusend(["label"], columns=[60])({"label": np.full((1, 8, 8), 10)}), r"label: label ids \[10\]"),
])
def test_errors_name_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()
