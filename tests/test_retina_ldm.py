"""Multi-band latent diffusion (issue 17): the C-band data path, the retina_ldm bundle chain at the smallest size and
the Pareto benchmark's table and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from monai_oct.metrics.spectral import spectral_report
from monai_oct.phantoms.multiband import multiband_phantom


def test_spectral_report_survives_a_synthetic_set_without_arteries():
    # a poor synthetic set whose structure classifier finds no artery pixel must still get its KL and MS-SSIM numbers
    ph = [multiband_phantom(64, seed=i) for i in range(6)]
    x, m = np.stack([p["image"] for p in ph]), np.stack([p["structures"] for p in ph])
    no_artery = np.where(m[:2] == 1, 0, m[:2]).astype(np.uint8)
    rep = spectral_report(x[:2], no_artery, x[2:], m[2:], validation=x[4:], repeats=1)
    assert rep["separability"]["synthetic"]["accuracy"] is None
    assert "10 pixels" in rep["separability"]["synthetic"]["error"]
    assert rep["separability"]["difference"] is None and rep["separability"]["real"]["accuracy"] > 0.5
    assert rep["spectral_kl"]["per_structure"]["artery"] is None and rep["spectral_kl"]["mean"] is not None
