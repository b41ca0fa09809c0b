"""Learning-rate schedules and the segmentation training augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from monai_oct.recipes.seg_pipelines import seg_augment, seg_train_transforms
from monai_oct.optim import lr_factor, make_lr_scheduler


def test_warmup_then_cosine_reaches_min():
    f = [lr_factor(s, 100, 10, "cosine", min_factor=0.1) for s in range(101)]
    assert f[0] == pytest.approx(1 / 11) and f[9] == pytest.approx(10 / 11)
    assert all(a < b for a, b in zip(f[:10], f[1:11]))          # warm-up rises
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))          # then decays monotonically
    assert f[100] == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)  # half-way down the cosine
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0


def test_scheduler_steps_per_iteration():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = make_lr_scheduler(opt, total_steps=20, warmup_steps=0, schedule="cosine")
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))


def test_bad_schedule_names_it():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="'cosinus'"):
        make_lr_scheduler(opt, 10, schedule="cosinus")
    with pytest.raises(ValueError, match="total_steps"):
        make_lr_scheduler(opt, 0)


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
