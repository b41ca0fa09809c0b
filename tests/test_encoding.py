"""Mask <-> condition encodings: shapes, ranges, round trips, unannotated pixels, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_oct.core.labels import UNANNOTATED
from monai_oct.phantoms.oct import generate_bscans
from monai_oct.transforms import (
    MaskDecode,
    MaskDecoded,
    MaskEncode,
    MaskEncoded,
    condition_channels,
    decode_mask,
    encode_mask,
    scalar_levels,
)

C = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """Four 64x64 phantom label maps (B, 1, H, W) uint8, every class present somewhere."""
    _, lab = generate_bscans(4, (64, 64), seed=3)
    assert set(np.unique(lab)) == set(range(C))
    return lab[:, None]


def test_condition_channels():
    assert condition_channels(C, "scalar") == 1
    assert condition_channels(C, "onehot") == C
    with pytest.raises(ValueError, match="rgb"):
        condition_channels(C, "rgb")
    with pytest.raises(ValueError, match="num_classes"):
        condition_channels(1, "onehot")


@pytest.mark.parametrize("mode", ["scalar", "onehot"])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("kind", ["tensor", "ndarray"])
def test_round_trip(labels, mode, batch, kind):
    lab = labels if batch else labels[0]
    x = torch.as_tensor(lab) if kind == "tensor" else lab
    enc = encode_mask(x, C, mode)
    ch = condition_channels(C, mode)
    assert isinstance(enc, torch.Tensor) and enc.dtype == torch.float32
    assert tuple(enc.shape) == ((lab.shape[0], ch) if batch else (ch,)) + lab.shape[-2:]
    assert enc.min() == -1.0 and enc.max() <= 1.0
    dec = decode_mask(enc, C, mode)
    assert dec.dtype == torch.int64 and tuple(dec.shape) == lab.shape
    assert torch.equal(dec, torch.as_tensor(lab, dtype=torch.int64))
    if mode == "scalar":  # dmc decodes an exact mask exactly too
        assert torch.equal(decode_mask(enc, C, mode, method="dmc"), dec)


def test_encoding_values():
    lab = torch.tensor([[[0, 3, 9]]])
    scalar = encode_mask(lab, C, "scalar")
    assert torch.allclose(scalar, torch.tensor([[[-1.0, 3 / 9 * 2 - 1, 1.0]]]))
    assert np.allclose(scalar_levels(C)[[0, 3, 9]], scalar[0, 0].numpy())
    onehot = encode_mask(lab, C, "onehot")
    assert onehot.shape == (C, 1, 3)
    assert onehot[3, 0, 1] == 1.0 and onehot[:, 0, 1].sum() == 1.0 - (C - 1)  # one +1, nine -1


def test_float_labels_and_metatensor():
    lab = MetaTensor(torch.tensor([[[0.0, 2.0], [9.0, 1.0]]]), meta={"filename_or_obj": "x.png"})
    enc = encode_mask(lab, C, "onehot")
    assert isinstance(enc, MetaTensor) and enc.meta["filename_or_obj"] == "x.png"
    assert torch.equal(decode_mask(enc, C).as_tensor(), lab.as_tensor().long())
    with pytest.raises(ValueError, match="non-integer value 0.5"):
        encode_mask(torch.tensor([[[0.5, 1.0]]]), C)


@pytest.mark.parametrize("mode", ["scalar", "onehot"])
def test_unknown_id_raises_naming_it(mode):
    lab = np.zeros((1, 4, 4), dtype=np.int64)
    lab[0, 1, 2] = 12
    with pytest.raises(ValueError, match=r"\b12\b"):
        encode_mask(lab, C, mode)
    lab[0, 1, 2] = -1
    with pytest.raises(ValueError, match="-1"):
        encode_mask(lab, C, mode)


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4), (1, 2, 4, 4)])
def test_bad_shape_raises(shape):
    with pytest.raises(ValueError, match=r"\(1, H, W\) or \(B, 1, H, W\)"):
        encode_mask(np.zeros(shape, dtype=np.int64), C)


def test_unannotated_onehot_is_neutral():
    lab = torch.tensor([[[1, UNANNOTATED, 8]]])
    enc = encode_mask(lab, C, "onehot")
    assert torch.equal(enc[:, 0, 1], torch.zeros(C))  # no evidence for any class
    assert enc[1, 0, 0] == 1.0 and enc[8, 0, 2] == 1.0
    filled = encode_mask(lab, C, "onehot", unannotated="nearest")
    assert filled[:, 0, 1].max() == 1.0  # now some class, the nearest one


def test_unannotated_scalar_takes_nearest_annotation():
    lab = torch.full((2, 1, 6, 8), 5)
    lab[0, 0, :, 0:3] = UNANNOTATED  # left columns unannotated next to class 5 ...
    lab[0, 0, 4:, 3:] = 8  # ... and 8 below
    lab[0, 0, 5, 0] = UNANNOTATED
    lab[1] = UNANNOTATED  # nothing annotated at all: neutral fallback
    enc = encode_mask(lab, C, "scalar")
    dec = decode_mask(enc, C, "scalar")
    assert (dec[0, 0, :4, :3] == 5).all() and (dec[0, 0, 4:, :3] == 8).all()
    assert torch.equal(enc[1], torch.zeros(1, 6, 8))
    neutral = encode_mask(lab, C, "scalar", unannotated="neutral")
    assert (neutral[0, 0, :, :3] == 0.0).all()
    with pytest.raises(ValueError, match="policy"):
        encode_mask(lab, C, "scalar", unannotated="zero")


def test_decode_errors():
    with pytest.raises(ValueError, match=r"\(10, H, W\)"):
        decode_mask(torch.zeros(3, 4, 4), C, "onehot")
    with pytest.raises(ValueError, match="argmax"):
        decode_mask(torch.zeros(C, 4, 4), C, "onehot", method="dmc")
    with pytest.raises(ValueError, match="nearest"):
        decode_mask(torch.zeros(1, 4, 4), C, "scalar", method="argmax")


def test_array_and_dict_transforms(labels):
    lab = torch.as_tensor(labels[0], dtype=torch.int64)
    for mode in ("scalar", "onehot"):
        enc = MaskEncode(C, mode)(lab)
        assert torch.equal(enc, encode_mask(lab, C, mode))
        assert torch.equal(MaskDecode(C, mode)(enc), lab)
    d = MaskEncoded("label", C, "onehot", output_key="cond")({"label": lab, "image": 1})
    assert set(d) == {"label", "cond", "image"} and d["label"] is lab and d["cond"].shape[0] == C
    d = MaskDecoded("cond", C, "onehot", output_key="decoded")(d)
    assert torch.equal(d["decoded"], lab)
    d = MaskEncoded(["label"], C, "scalar")({"label": lab})  # replaces the label
    assert d["label"].dtype == torch.float32
    d = MaskDecoded("label", C, "scalar", method="dmc", dmc_kwargs={"refine": True})(d)
    assert torch.equal(d["label"], lab)
    with pytest.raises(ValueError, match="one key per input key"):
        MaskEncoded(["a", "b"], C, output_key="cond")
