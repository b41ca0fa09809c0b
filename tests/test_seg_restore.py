"""Mapping band / resized predictions back onto the B-scan, and writing label maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_oct.transforms.restore import RecordShaped, RestoreBScan, RestoreBScand
from monai_oct.transforms.save import SaveLabelMap, SaveLabelMapd


def test_restore_band_into_frame():
    pred = torch.tensor([[[3, 4], [5, 6]]])  # (1, 2, 2) band prediction
    out = RestoreBScan(band_height=4, fill_above=0, fill_below=8)(pred, (8, 4), band_offset=2)
    expected = torch.tensor([[0] * 4, [0] * 4, [3, 3, 4, 4], [3, 3, 4, 4], [5, 5, 6, 6], [5, 5, 6, 6], [8] * 4, [8] * 4])
    assert torch.equal(out[0], expected)


def test_restore_band_taller_than_image_and_whole_frame():
    pred = torch.arange(4).reshape(1, 4, 1)
    # image of 3 rows cropped into a 4-row band (padded at the bottom): the padding row is dropped
    out = RestoreBScan(band_height=4)(pred, torch.tensor([3, 2]), band_offset=torch.tensor(0))
    assert out[0].tolist() == [[0, 0], [1, 1], [2, 2]]
    whole = RestoreBScan()(torch.tensor([[[1, 2], [3, 4]]]), (4, 4))
    assert whole.shape == (1, 4, 4) and whole[0, 0].tolist() == [1, 1, 2, 2]
    assert isinstance(RestoreBScan()(np.zeros((1, 2, 2)), (3, 3)), np.ndarray)


def test_restore_probabilities_fill_one_hot():
    prob = torch.full((3, 2, 2), 1 / 3)
    out = RestoreBScan(band_height=2, fill_above=0, fill_below=2)(prob, (5, 2), band_offset=1)
    assert out.shape == (3, 5, 2)
    assert out[:, 0].argmax(0).tolist() == [0, 0] and out[:, 4].argmax(0).tolist() == [2, 2]
    assert torch.allclose(out.sum(0), torch.ones(5, 2))
    with pytest.raises(ValueError, match="fill class 8"):
        RestoreBScan(band_height=2, fill_below=8)(prob, (5, 2), band_offset=1)


def test_dictionary_twins():
    d = RecordShaped("image")({"image": torch.zeros(1, 7, 5)})
    assert d["original_shape"].tolist() == [7, 5]
    d["pred"] = torch.ones(1, 2, 5)
    d["band_offset"] = 3
    out = RestoreBScand("pred", band_height=2, fill_above=0, fill_below=8)(d)
    assert out["pred"][0, :, 0].tolist() == [0, 0, 0, 1, 1, 8, 8]
    with pytest.raises(KeyError, match="RecordShaped"):
        RestoreBScand("pred")({"pred": torch.zeros(1, 2, 2)})


def test_save_label_map(tmp_path):
    from PIL import Image
    import nibabel as nib

    lab = torch.tensor([[[0, 1, 2], [9, 8, 7]]])
    paths = SaveLabelMapd("pred", tmp_path, formats=["png", "nii.gz"])({"pred": lab, "image_path": "/a/scan_3.png"})["saved"]
    assert [p.split("/")[-1] for p in paths] == ["scan_3_seg.png", "scan_3_seg.nii.gz"]
    assert np.array_equal(np.array(Image.open(paths[0])), lab[0].numpy())
    assert np.array_equal(np.asarray(nib.load(paths[1]).dataobj), lab[0].numpy())
    with pytest.raises(ValueError, match="single-channel"):
        SaveLabelMap(tmp_path)(torch.zeros(2, 3, 3), "x.png")
    with pytest.raises(ValueError, match="unknown"):
        SaveLabelMap(tmp_path, formats=["jpg"])
