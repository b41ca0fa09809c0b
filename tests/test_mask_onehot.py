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


def test_train_masks_onehot_one_epoch_then_synthesize_with_topology(phantom_dir, tmp_path):
    out = tmp_path / "masks"
    stage("train_masks", dataset_dir=phantom_dir, output_dir=out, max_epochs=1, mask_encoding="onehot", **TINY)
    state = torch.load(out / "model.pt", weights_only=True)
    conv_in = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4][0]
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 4][-1]
    assert conv_in.shape[1] == 10 and last.shape[0] == 10   # C channels in and out, no condition channels
    grid = sorted((out / "samples").glob("*.png"))
    assert grid and grid[-1].stat().st_size > 0

    # synthesis from it: mask_encoding onehot, the default decoding (topology) -> valid maps, counted and recorded
    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_json, read_label
    from monai_oct.metrics.plausibility import column_validity

    torch.manual_seed(0)
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    torch.save(conditional_diffusion_unet(1, 10, channels=TINY["channels"], num_res_blocks=1).state_dict(), tmp_path / "img.pt")
    synth = tmp_path / "synth"
    stage("synthesize", output_dir=synth, mask_ckpt=out / "model.pt", image_ckpt=tmp_path / "img.pt", num_samples=3,
          sampler="ddim", num_inference_steps=2, mask_encoding="onehot", **TINY)
    labels = [read_label(it["label"]) for it in load_datalist(synth / "datalist.json", key="training")]
    assert len(labels) == 3 and all(np.all(column_validity(lab) == 1.0) for lab in labels)
    report = read_json(synth / "label_decoding.json")
    assert report["total"]["maps"] == 3 and 0.0 <= report["total"]["changed_fraction"] <= 1.0
    recorded = read_json(synth / "manifest.json")["generation"]["config"]["labels"]
    assert recorded["mask_encoding"] == "onehot" and recorded["mask_decode"] == "topology" and recorded["mask_min_fluid"] == 16


def _tiny_sampler(channels: int):
    from monai_oct.engines.sampler import DiffusionSampler
    from monai_oct.networks.diffusion import conditional_diffusion_unet
    from monai_oct.schedulers import diffusion_scheduler

    torch.manual_seed(0)
    net = conditional_diffusion_unet(channels, 0, channels=[8, 16], num_res_blocks=1)
    return net, DiffusionSampler(diffusion_scheduler("ddim", num_train_timesteps=20), num_inference_steps=2)


def _gens(n, seed=0):
    from monai_oct.core.seeding import sample_generators, sample_seeds

    return sample_generators(sample_seeds(seed, range(n)), torch.device("cpu"))


def test_mask_sampler_onehot_gives_valid_maps_at_label_size(tmp_path):
    from monai_oct.core.io import read_json
    from monai_oct.metrics.plausibility import column_validity
    from monai_oct.recipes.sources import MaskSampler

    net, sampler = _tiny_sampler(10)
    report = tmp_path / "label_decoding.json"
    src = MaskSampler(net, sampler, [16, 32], 10, encoding="onehot", label_size=[56, 128], report_path=report)
    assert src.decode == "topology"
    out = src([0, 1], _gens(2), torch.device("cpu"))["label"]
    assert out.dtype == torch.int64 and tuple(out.shape) == (2, 1, 56, 128)
    assert all(np.all(column_validity(o) == 1.0) for o in out.numpy())
    # an untrained network's channels are noise: the decoding changed many columns, and says so
    saved = read_json(report)
    assert saved["total"]["maps"] == 2 and saved["total"]["columns_changed"] > 0
    assert set(saved["per_sample"]) == {"0", "1"}
    # a resumed run adds its samples to the file; the same indices are replaced, not counted twice
    again = MaskSampler(net, sampler, [16, 32], 10, encoding="onehot", label_size=[56, 128], report_path=report)
    again([1, 2], _gens(3)[1:], torch.device("cpu"))
    assert read_json(report)["total"]["maps"] == 3
    # the same samples with plain argmax: the same size, and (noise) anatomically invalid columns
    plain = MaskSampler(net, sampler, [16, 32], 10, encoding="onehot", label_size=[56, 128], decode="argmax")
    raw = plain([0, 1], _gens(2), torch.device("cpu"))["label"]
    assert tuple(raw.shape) == (2, 1, 56, 128) and np.mean([column_validity(o).mean() for o in raw.numpy()]) < 1.0


def test_mask_sampler_scalar_dmc_then_topology():
    from monai_oct.metrics.plausibility import column_validity
    from monai_oct.recipes.sources import MaskSampler

    net, sampler = _tiny_sampler(1)
    dmc = MaskSampler(net, sampler, [16, 32], 10)                      # today's default: DMC at the image size
    assert dmc.decode == "dmc" and tuple(dmc([0], _gens(1), torch.device("cpu"))["label"].shape) == (1, 1, 16, 32)
    topo = MaskSampler(net, sampler, [16, 32], 10, label_size=[32, 64], decode="topology")
    out = topo([0], _gens(1), torch.device("cpu"))["label"]
    assert tuple(out.shape) == (1, 1, 32, 64) and np.all(column_validity(out[0]) == 1.0)


def test_mask_sampler_rejects_what_does_not_fit():
    import pytest

    from monai_oct.recipes.sources import MaskSampler

    net, sampler = _tiny_sampler(1)
    with pytest.raises(ValueError, match="argmax"):
        MaskSampler(net, sampler, [16, 32], 10, decode="argmax")
    with pytest.raises(ValueError, match=r"label_size \[8, 32\]"):
        MaskSampler(net, sampler, [16, 32], 10, label_size=[8, 32])
    with pytest.raises(ValueError):
        MaskSampler(net, sampler, [16, 32], 10, encoding="onehot")     # a 1-channel network for 10 channels
