"""``monai-oct demo --quick``: phantom data, the four oct_ddpm stages and a synthetic dataset, in seconds."""

from __future__ import annotations

import json

import numpy as np
import torch

from monai_oct.cli import main
from monai_oct.core.datalist import load_datalist
from monai_oct.core.io import read_image, read_label
from monai_oct.bundle import bundle_dir
from monai_oct.demo import DEMO_SETTINGS
from monai_oct.recipes.presets import load_preset


def test_demo_quick_writes_a_synthetic_dataset(tmp_path, capsys):
    n = torch.get_num_threads()
    try:
        assert main(["demo", "--out", str(tmp_path), "--quick"]) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    synth = tmp_path / "synthetic"
    assert f"grid of (label, image) pairs: {synth / 'grid.png'}" in out
    cfg = load_preset(bundle_dir("oct_ddpm"), DEMO_SETTINGS["quick"]["preset"])
    items = load_datalist(synth / "datalist.json", key="training")
    assert len(items) == cfg["num_samples"]
    for it in items:
        lab = read_label(it["label"])
        assert read_image(it["image"]).shape == lab.shape == tuple(cfg["image_size"])
        assert set(np.unique(lab).tolist()) <= set(range(10))
    for stage in ("pretrain", "train_masks", "finetune"):
        assert (tmp_path / "ddpm" / stage / "model.pt").is_file()
    # stage 1 trained on the unannotated folder (no datalist there), stage 3 started from it
    assert not list((tmp_path / "unlabelled" / "images").glob("*.json"))
    manifest = json.loads((synth / "manifest.json").read_text())
    assert manifest["checkpoints"]["image"].endswith("finetune/model.pt")
    assert read_image(synth / "grid.png").ndim == 2
