"""One-hot stage 2: the mask DDPM trained on C-channel one-hot label maps (``--mask_encoding onehot``) and sampled
into valid label maps at a label size larger than its own (:class:`~monai_oct.recipes.sources.MaskSampler`)."""

from __future__ import annotations

import numpy as np
import torch

from conftest import run_stage as stage
from monai_oct.recipes.diffusion_pipelines import mask_transforms

TINY = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=20,
            learning_rate=1e-3, batch_size=4, device="cpu", progress=False, sample_steps=2, num_sample_images=2,
            sample_interval=0, num_threads=1)


def test_mask_transforms_encode_in_the_chosen_encoding(phantom_dir):
    from monai_oct.recipes.items import resolve_items

    item = resolve_items("datalist.json", ["train"], str(phantom_dir), require_label=True)[0]
    scalar = mask_transforms([16, 32], 10, 48, encoding="scalar")(item)["image"]
    onehot = mask_transforms([16, 32], 10, 48, encoding="onehot")(item)["image"]
    assert tuple(scalar.shape) == (1, 16, 32) and tuple(onehot.shape) == (10, 16, 32)
    # every pixel +1 in exactly one channel, -1 in the others, and the same class as the scalar level
    assert torch.all((onehot > 0).sum(0) == 1)
    levels = torch.linspace(-1, 1, 10)
    assert torch.equal(onehot.argmax(0), (scalar[0][None] - levels[:, None, None]).abs().argmin(0))


def test_train_masks_onehot_one_epoch(phantom_dir, tmp_path):
    out = tmp_path / "masks"
    stage("train_masks", dataset_dir=phantom_dir, output_dir=out, max_epochs=1, mask_encoding="onehot", **TINY)
    state = torch.load(out / "model.pt", weights_only=True)
    conv_in = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4][0]
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4][-1]
    assert conv_in.shape[1] == 10 and last.shape[0] == 10   # C channels in and out, no condition channels
    grid = sorted((out / "samples").glob("*.png"))
    assert grid and grid[-1].stat().st_size > 0
