"""OCT phantom: determinism, anatomy order, dataset layout."""

from __future__ import annotations

import numpy as np
import pytest

from monai_oct.core.datalist import check_dataset, load_datalist
from monai_oct.phantoms.oct import generate_bscans, write_phantom_dataset
from monai_oct.phantoms.oct import PhantomConfig


def test_same_seed_same_arrays():
    a = generate_bscans(4, (64, 96), seed=3)
    b = generate_bscans(4, (64, 96), seed=3)
    c = generate_bscans(4, (64, 96), seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_classes_run_in_order_in_columns_without_fluid():
    images, labels = generate_bscans(20, (128, 128), seed=1, config=PhantomConfig(fluid_probability=0.7))
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    fluid_seen = False
    for lab in labels:
        has_fluid = (lab == 9).any(axis=0)
        fluid_seen |= bool(has_fluid.any())
        cols = lab[:, ~has_fluid].astype(int)
        assert (np.diff(cols, axis=0) >= 0).all()  # 0, 1, ..., 8 top to bottom
        assert (cols[0] == 0).all() and (cols[-1] == 8).all()
        for c in range(9):  # every layer present in every column
            assert (cols == c).any(axis=0).all()
        # fluid lies inside the retina only
        rows, colsf = np.nonzero(lab == 9)
        assert all(0 < lab[r - 1, c] or lab[r - 1, c] == 9 for r, c in zip(rows, colsf))
    assert fluid_seen


def test_reflectivity_differs_by_layer():
    images, labels = generate_bscans(8, (128, 128), seed=2)
    mean = {c: images[labels == c].mean() for c in (0, 5, 7)}
    assert mean[7] > mean[5] > mean[0]  # RPE bright, ONL dark, vitreous darkest


def test_write_dataset_layout(tmp_path):
    dl = write_phantom_dataset(tmp_path, num=5, size=(48, 64), seed=0, val_fraction=0.4)
    train, val = load_datalist(dl), load_datalist(dl, key="validation")
    assert len(train) == 3 and len(val) == 2
    assert (tmp_path / "images" / "phantom_0000.png").is_file() and (tmp_path / "labels" / "phantom_0004.png").is_file()
    rep = check_dataset(train + val)
    assert rep.ok and rep.sizes == {(48, 64): 5}
    with pytest.raises(ValueError):
        write_phantom_dataset(tmp_path / "x", num=0)
