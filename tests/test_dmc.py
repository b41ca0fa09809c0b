"""Discrete Mask Clustering: recovers labels from noisy / biased scalar masks, with classes missing,
and beats nearest-level decoding when the mask as a whole is off its nominal levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_oct.core.io import read_label
from monai_oct.core.labels import DUKE_DME
from monai_oct.phantoms.oct import PhantomConfig, generate_bscans
from monai_oct.transforms import (
    DiscreteMaskClustering,
    DiscreteMaskClusteringd,
    decode_mask,
    encode_mask,
    nearest_level_decode,
    scalar_levels,
)

C = 10
SPACING = 2.0 / (C - 1)  # distance between two scalar levels


def _noisy(label: np.ndarray, sigma: float, shift: float = 0.0, contrast: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Scalar-encoded ``(1, H, W)`` label + Gaussian noise (sigma, shift in level spacings), contrast-scaled."""
    clean = encode_mask(label[None], C, "scalar")
    noise = torch.as_tensor(np.random.default_rng(seed).normal(0.0, sigma * SPACING, clean.shape), dtype=torch.float32)
    return clean * contrast + shift * SPACING + noise


def _acc(pred: torch.Tensor, label: np.ndarray) -> float:
    return float((pred[0].numpy() == label).mean())


@pytest.fixture(scope="module")
def phantom_labels() -> list[np.ndarray]:
    """Two 128x128 phantom label maps: one with fluid (all 10 classes), one without (9 classes)."""
    _, wet = generate_bscans(1, (128, 128), seed=2, config=PhantomConfig(fluid_probability=1.0))
    _, dry = generate_bscans(1, (128, 128), seed=2, config=PhantomConfig(fluid_probability=0.0))
    assert len(np.unique(wet[0])) == 10 and 9 not in dry[0]
    return [wet[0], dry[0]]


@pytest.fixture(scope="module")
def duke_labels(duke_dir) -> list[np.ndarray]:
    """Two real Duke DME label maps (496 x 536): Subject_01_05 with fluid, Subject_01_09 without."""
    wet = read_label(duke_dir / "train" / "labels" / "Subject_01_05.png", DUKE_DME)
    dry = read_label(duke_dir / "train" / "labels" / "Subject_01_09.png", DUKE_DME)
    assert (wet == 9).sum() > 1000 and 9 not in dry
    return [wet, dry]


def _three_classes(label: np.ndarray) -> np.ndarray:
    """The same anatomy with only vitreous (0), one retina class (4) and choroid (8)."""
    return np.select([label == 0, label == 8], [0, 8], 4).astype(np.uint8)


def _check_recovery(labels: list[np.ndarray]):
    dmc, smooth = DiscreteMaskClustering(C), DiscreteMaskClustering(C, smooth=3)
    for lab in [*labels, _three_classes(labels[0])]:
        # per-pixel decoding: sigma 0.15 spacings (sigma 0.3 caps ANY per-pixel rule at ~92 %)
        assert _acc(dmc(_noisy(lab, 0.15)), lab) >= 0.99
        # sigma 0.3 spacings: the 3x3 median prior brings DMC back above 99 %
        x = _noisy(lab, 0.3)
        assert _acc(smooth(x), lab) >= 0.99
        assert _acc(dmc(x), lab) < 0.95  # ... which per-pixel decoding cannot reach


def test_recovers_phantom_labels(phantom_labels):
    _check_recovery(phantom_labels)


def test_recovers_duke_labels(duke_labels):
    _check_recovery(duke_labels)


BIASES = [(0.4, 1.0), (-0.4, 1.0), (0.0, 0.9), (0.2, 1.08)]


def _check_biased(labels: list[np.ndarray], shift: float, contrast: float):
    dmc = DiscreteMaskClustering(C)
    for lab in [*labels, _three_classes(labels[0])]:  # incl. absent classes (no fluid; only 3 classes)
        x = _noisy(lab, 0.15, shift=shift, contrast=contrast, seed=1)
        ours, nearest = _acc(dmc(x), lab), _acc(nearest_level_decode(x, C), lab)
        assert ours >= 0.99, (shift, contrast, ours)
        assert nearest < 0.9, (shift, contrast, nearest)  # whole layers land on the wrong level


@pytest.mark.parametrize("shift, contrast", BIASES)
def test_beats_nearest_level_on_biased_phantom_masks(phantom_labels, shift, contrast):
    _check_biased(phantom_labels, shift, contrast)


@pytest.mark.parametrize("shift, contrast", BIASES)
def test_beats_nearest_level_on_biased_duke_masks(duke_labels, shift, contrast):
    _check_biased(duke_labels, shift, contrast)


def test_calibration_estimates_the_distortion(phantom_labels):
    # no fluid: the top level is empty; vitreous ends up 0.2 + 0.05 / SPACING = 0.43 spacings off
    x = _noisy(phantom_labels[1], 0.15, shift=0.2, contrast=0.95)
    a, b = DiscreteMaskClustering(C).calibrate(x.numpy())
    assert abs(a - 0.95) < 0.005 and abs(b - 0.2 * SPACING) < 0.02 * SPACING


def test_batch_is_clustered_per_sample(phantom_labels):
    wet, dry = phantom_labels
    x = torch.stack([_noisy(wet, 0.1, shift=0.4), _noisy(dry, 0.1, shift=-0.4)])
    out = DiscreteMaskClustering(C)(x)
    assert out.shape == (2, 1, 128, 128) and out.dtype == torch.int64
    assert _acc(out[0], wet) >= 0.99 and _acc(out[1], dry) >= 0.99
    assert torch.equal(out[1], DiscreteMaskClustering(C)(x[1].numpy()))  # ndarray in, same answer


def test_refine_and_determinism(phantom_labels):
    x = _noisy(phantom_labels[0], 0.15, shift=0.3, seed=4)
    free = DiscreteMaskClustering(C, refine=True, seed=0)
    a, b = free(x), free(x)
    assert torch.equal(a, b) and _acc(a, phantom_labels[0]) >= 0.99
    assert torch.equal(decode_mask(x, C, "scalar", method="dmc"), DiscreteMaskClustering(C)(x))


def test_nearest_level_decode_and_errors():
    x = torch.tensor([[[-1.0, -0.95, 0.0, 0.99, 3.0]]])
    assert nearest_level_decode(x, C).tolist() == [[[0, 0, 4, 9, 9]]]
    lv = scalar_levels(C)
    assert nearest_level_decode(torch.as_tensor(lv[None, None]), C).tolist() == [[list(range(C))]]
    assert torch.equal(DiscreteMaskClustering(C)(torch.full((1, 4, 4), 0.3)), torch.full((1, 4, 4), 6))
    d = DiscreteMaskClusteringd("pred", num_classes=C)({"pred": torch.as_tensor(lv[None, None])})
    assert d["pred"].tolist() == [[list(range(C))]]
    with pytest.raises(ValueError, match="non-finite"):
        DiscreteMaskClustering(C)(torch.tensor([[[0.0, float("nan")]]]))
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        DiscreteMaskClustering(C)(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="levels"):
        DiscreteMaskClustering(C, levels=[0.0, 1.0])
    with pytest.raises(ValueError, match="odd"):
        DiscreteMaskClustering(C, smooth=4)
