"""Learning-rate schedules and the segmentation training augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from monai_oct.recipes.seg_pipelines import seg_augment, seg_train_transforms
from monai_oct.optim import make_lr_scheduler, scale_base_lr


def _lrs(schedule, total=100, warmup=10, lr=2.0, steps=None):
    """The learning rate of each iteration 0..steps-1 (the schedule stepped after each)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_lr_scheduler(opt, total_steps=total, warmup_steps=warmup, schedule=schedule)
    out = []
    for _ in range(total + 1 if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay(schedule):
    f = [lr / 2.0 for lr in _lrs(schedule)]
    assert f[0] == pytest.approx(1 / 11)                         # the first iteration already learns
    assert all(a < b for a, b in zip(f[:10], f[1:11]))          # warm-up rises ...
    assert f[10] == pytest.approx(1.0)                           # ... to the base rate
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:]))   # then never rises again
    assert f[55] == pytest.approx({"cosine": 0.5, "linear": 0.5, "constant": 1.0}[schedule])  # half-way down
    assert f[100] == pytest.approx({"cosine": 0.0, "linear": 0.0, "constant": 1.0}[schedule], abs=1e-12)


def test_no_warmup_starts_at_base_rate():
    cos = _lrs("cosine", total=20, warmup=0, steps=20)
    assert cos[0] == pytest.approx(2.0) and cos[10] == pytest.approx(1.0)
    assert cos[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert _lrs("linear", total=20, warmup=0, steps=20)[5] == pytest.approx(2.0 * 15 / 20)
    assert set(_lrs("constant", total=20, warmup=0, steps=20)) == {2.0}


@pytest.mark.parametrize("at", [5, 50])  # in the warm-up, and after SequentialLR switched to the decay
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_scale_base_lr_keeps_the_schedule(schedule, at):
    """A resumed run with another base rate continues the same curve at the new height (what resume uses)."""
    ref = _lrs(schedule, lr=4.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_lr_scheduler(opt, total_steps=100, warmup_steps=10, schedule=schedule)
    got = []
    for step in range(101):
        if step == at:
            scale_base_lr(opt, sched, 2.0)
        got.append(opt.param_groups[0]["lr"] * (2.0 if step < at else 1.0))
        opt.step()
        sched.step()
    assert got == pytest.approx(ref, abs=1e-12)


def test_bad_schedule_names_it():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="'cosinus'"):
        make_lr_scheduler(opt, 10, schedule="cosinus")
    with pytest.raises(ValueError, match="total_steps"):
        make_lr_scheduler(opt, 0)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_lr_scheduler(opt, 10, -1)


def test_augment_changes_image_not_label(phantom_dir):
    from monai_oct.core.datalist import load_datalist

    item = load_datalist(phantom_dir / "datalist.json")[0]
    plain = seg_train_transforms([32, 32], band_height=None, flip=0.0, augment=0.0)(dict(item))
    aug = seg_train_transforms([32, 32], band_height=None, flip=0.0, augment=2.0)
    aug.set_random_state(0)
    out = aug(dict(item))
    assert torch.equal(out["label"], plain["label"])
    assert not torch.allclose(out["image"], plain["image"])
    assert len(seg_augment(0).transforms) == 0
