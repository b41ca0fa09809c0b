"""Layer Dice / pixel accuracy against hand-computed values, and the masked DiceCE loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from monai_oct.core.labels import DUKE_DME
from monai_oct.losses import MaskedDiceCELoss
from monai_oct.metrics.segmentation import (
    LayerDiceMetric,
    PixelAccuracyMetric,
    report_markdown,
    segmentation_report,
    write_segmentation_report,
)


def t(rows):
    return torch.tensor(rows)[None, None]  # (1, 1, H, W)


# truth / prediction, 255 = unannotated. Worked by hand below.
TRUE = t([[1, 1, 2, 255],
          [9, 9, 0, 0]])
PRED = t([[1, 2, 2, 5],
          [9, 0, 0, 0]])


def test_dice_hand_computed():
    m = LayerDiceMetric(num_classes=10, groups=DUKE_DME.groups)
    v = m(PRED, TRUE)[0]
    names = m.names
    got = dict(zip(names, v.tolist()))
    # class 0: pred {(1,1),(1,2),(1,3)} truth {(1,2),(1,3)} -> 2*2/(3+2)
    assert got["0"] == pytest.approx(0.8)
    # class 1: pred 1 px, truth 2 px, overlap 1 -> 2/3 ; class 2: pred 2, truth 1, overlap 1 -> 2/3
    assert got["1"] == pytest.approx(2 / 3) and got["2"] == pytest.approx(2 / 3)
    # class 9: pred 1, truth 2, overlap 1
    assert got["9"] == pytest.approx(2 / 3)
    # class 5 is only predicted on the unannotated pixel: absent from both -> NaN (not 0, not 1)
    assert math.isnan(got["5"]) and math.isnan(got["3"])
    # NFL-IPL = union of {1, 2}: pred {(0,0),(0,1),(0,2)} truth the same 3 pixels -> 1.0 although 1/2 are confused
    assert got["NFL-IPL"] == pytest.approx(1.0)
    assert math.isnan(got["ONL-ISM"]) and got["IRF"] == pytest.approx(2 / 3)
    # mean over classes 1-9, NaN classes skipped: (2/3 + 2/3 + 2/3) / 3
    assert float(m.aggregate()) == pytest.approx(2 / 3)


def test_pixel_accuracy_hand_computed():
    m = PixelAccuracyMetric(num_classes=10, groups=DUKE_DME.groups)
    got = dict(zip(m.names, m(PRED, TRUE)[0].tolist()))
    assert got["0"] == 1.0 and got["1"] == 0.5 and got["2"] == 1.0 and got["9"] == 0.5
    assert math.isnan(got["5"])  # no true pixel of 5 among annotated pixels
    assert got["all"] == pytest.approx(5 / 7)  # 7 annotated pixels, 5 right
    assert float(m.aggregate()) == pytest.approx((0.5 + 1.0 + 0.5) / 3)


def test_absent_class_skipped_across_images_and_false_positive_is_zero():
    m = LayerDiceMetric(num_classes=3, mean_classes=[1, 2])
    a_true, a_pred = t([[0, 1], [1, 1]]), t([[0, 1], [1, 1]])  # class 2 absent in both: NaN
    b_true, b_pred = t([[0, 2], [2, 2]]), t([[0, 2], [2, 1]])  # class 1 predicted, absent in truth: 0
    m(a_pred, a_true)
    m(b_pred, b_true)
    per = m.aggregate("mean_batch").tolist()
    assert per[1] == pytest.approx((1.0 + 0.0) / 2)
    assert per[2] == pytest.approx(2 * 2 / (2 + 3))  # only image b counts
    assert m.aggregate("none").shape == (2, 3)
    assert float(m.aggregate()) == pytest.approx((0.5 + 0.8) / 2)


def test_scores_and_list_input_and_errors():
    m = LayerDiceMetric(num_classes=3)
    scores = torch.nn.functional.one_hot(torch.tensor([[0, 1], [2, 2]]), 3).permute(2, 0, 1).float()
    # list of channel-first items of different sizes, as an evaluator passes them
    m([scores, torch.zeros(1, 3, 3)], [torch.tensor([[[0, 1], [2, 2]]]), torch.zeros(1, 3, 3, dtype=torch.long)])
    rows = m.aggregate("none")
    assert rows[0].tolist() == [1.0, 1.0, 1.0]
    assert rows[1, 0] == 1.0 and torch.isnan(rows[1, 1:]).all()
    with pytest.raises(ValueError, match="outside"):
        m(t([[0]]), t([[7]]))
    with pytest.raises(ValueError, match="shape"):
        m(t([[0, 0]]), t([[0]]))
    with pytest.raises(ValueError, match="no data"):
        LayerDiceMetric().aggregate()


def test_report_json_and_markdown(tmp_path):
    d, p = LayerDiceMetric(groups=DUKE_DME.groups), PixelAccuracyMetric(groups=DUKE_DME.groups)
    d(PRED, TRUE)
    p(PRED, TRUE)
    rep = segmentation_report(d, p, DUKE_DME, extra={"checkpoint": "x.pt"})
    path = write_segmentation_report(rep, tmp_path)
    back = json.loads(path.read_text())
    assert back["mean_dice"] == pytest.approx(2 / 3)
    assert back["classes"]["5"]["dice"] is None  # NaN written as null
    assert back["classes"]["1"]["name"] == "NFL" and back["checkpoint"] == "x.pt"
    assert set(back["groups"]) == {"NFL-IPL", "ONL-ISM", "IRF"}
    md = (tmp_path / "metrics.md").read_text()
    assert "| 9 | fluid | 0.6667 | 0.5000 | 1 |" in md and "**mean 1-9**" in md
    assert report_markdown(rep) == md


def test_masked_loss_ignores_unannotated_pixels():
    torch.manual_seed(0)
    loss = MaskedDiceCELoss()
    x = torch.randn(2, 10, 8, 8, requires_grad=True)
    y = torch.randint(0, 10, (2, 1, 8, 8))
    y[..., :3] = 255
    a = loss(x, y)
    x2 = x.detach().clone()
    x2[..., :3] = 100 * torch.randn(2, 10, 8, 3)
    assert loss(x2, y).item() == pytest.approx(a.item(), rel=1e-6)
    a.backward()
    assert x.grad[..., :3].abs().max() == 0 and x.grad[..., 3:].abs().max() > 0
    # perfect logits on the annotated part -> loss close to 0
    perfect = 50 * torch.nn.functional.one_hot(y.clamp(max=9)[:, 0], 10).permute(0, 3, 1, 2).float()
    assert loss(perfect, y).item() < 1e-3
    # nothing annotated: 0 with a gradient path
    z = loss(x, torch.full((2, 1, 8, 8), 255))
    assert z.item() == 0.0 and z.requires_grad
    with pytest.raises(ValueError, match="outside"):
        loss(x, torch.full((2, 1, 8, 8), 12))
