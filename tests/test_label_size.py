"""Labels finer than the image UNet (issue 13, "pairs"): the area-downsampled encoding, the stage-3 chain with
``label_size``, and a synthesis whose label maps keep their full resolution."""

from __future__ import annotations

import pytest
import torch

from monai_oct.transforms import AreaMaskEncode, AreaMaskEncoded, encode_mask, encode_mask_resized


def _layers(h: int = 16, w: int = 8) -> torch.Tensor:
    lab = torch.zeros(1, h, w, dtype=torch.int64)
    lab[:, 5:] = 3
    lab[:, 11:] = 8
    lab[0, 0, 0] = 255  # one unannotated pixel: neutral in onehot
    return lab


@pytest.mark.parametrize("mode", ["onehot", "scalar"])
@pytest.mark.parametrize("batch", [False, True])
def test_equal_size_is_encode_mask_exactly(mode, batch):
    lab = _layers()[None] if batch else _layers()
    out = encode_mask_resized(lab, 10, lab.shape[-2:], mode)
    assert torch.equal(out, encode_mask(lab, 10, mode))
    assert torch.equal(AreaMaskEncode(10, [16, 8], mode)(lab), out)


def test_sub_pixel_boundary_is_an_intermediate_value_in_its_row():
    lab = _layers()
    lab[0, 0, 0] = 0
    cond = encode_mask_resized(lab, 10, [4, 8])  # 4 label rows per condition row; boundaries at rows 5 and 11
    # row 1 covers label rows 4..7: one of vitreous (0), three of INL (3) -> 2 * 1/4 - 1 and 2 * 3/4 - 1
    assert torch.allclose(cond[0, 1], torch.full((8,), -0.5)) and torch.allclose(cond[3, 1], torch.full((8,), 0.5))
    # row 2 covers 8..11: three INL, one choroid (8)
    assert torch.allclose(cond[3, 2], torch.full((8,), 0.5)) and torch.allclose(cond[8, 2], torch.full((8,), -0.5))
    assert torch.equal(cond[:, 0], encode_mask(lab[:, :1], 10)[:, 0])  # rows without a boundary stay +-1
    inner = (cond > -1) & (cond < 1)
    assert inner.any(0).any(1).tolist() == [False, True, True, False]  # only the rows a boundary crosses
    # scalar: levels mix (0 and INL's level average to a level between): allowed
    s = encode_mask_resized(lab, 10, [4, 8], "scalar")
    assert torch.allclose(s[0, 1], torch.full((8,), (-1 + 3 * (3 / 9 * 2 - 1)) / 4))
    d = AreaMaskEncoded(["label"], 10, [4, 8], output_key="cond")({"label": lab})
    assert torch.equal(d["cond"], cond) and torch.equal(d["label"], lab)


@pytest.mark.parametrize("size", [[4], [4, 0], [4.5, 8], "48", None])
def test_bad_size_raises_naming_it(size):
    with pytest.raises(ValueError, match=r"spatial_size must be two positive integers \[H, W\], got"):
        encode_mask_resized(_layers(), 10, size)
    with pytest.raises(ValueError, match="spatial_size"):
        AreaMaskEncode(10, size)


def test_bad_label_shape_and_ids_raise():
    with pytest.raises(ValueError, match=r"label map must have shape \(1, H, W\) or \(B, 1, H, W\), got \(2, 16, 8\)"):
        encode_mask_resized(torch.zeros(2, 16, 8, dtype=torch.int64), 10, [4, 8])
    with pytest.raises(ValueError, match=r"label ids \[12\]"):
        encode_mask_resized(torch.full((1, 16, 8), 12), 10, [4, 8])
