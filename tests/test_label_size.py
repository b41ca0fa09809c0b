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


def _near_class_change(label: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` bool: pixels whose 3x3 neighbourhood holds more than one class."""
    lab = label.float()[None]
    hi = torch.nn.functional.max_pool2d(lab, 3, 1, 1)
    lo = -torch.nn.functional.max_pool2d(-lab, 3, 1, 1)
    return (hi != lo)[0, 0]


def _check_pair(d: dict, image_size, num_classes: int = 10) -> None:
    cond, label, image = d["cond"], d["label"], d["image"]
    assert cond.shape == (num_classes, *image_size) and label.shape == image.shape == (1, *image_size)
    assert label.dtype == torch.int64 and image.min() >= -1 and image.max() <= 1
    inner = ((cond > -1 + 1e-6) & (cond < 1 - 1e-6)).any(0)  # a mix of classes: a boundary inside the pixel
    assert inner.any(0).float().mean() > 0.9  # (almost) every column has a boundary at a sub-pixel position
    assert not (inner & ~_near_class_change(label)).any()  # only next to a class change of the nearest-resized label


def test_finetune_chain_with_label_size_on_phantom(phantom_dir):
    from monai_oct.recipes.diffusion_pipelines import finetune_transforms
    from monai_oct.recipes.items import resolve_items

    item = resolve_items(phantom_dir, require_label=True)[0]
    before = finetune_transforms([16, 32], 10, "onehot", band_height=48, drm_prob=0.0)(item)
    assert set(torch.unique(before["cond"]).tolist()) == {-1.0, 1.0}  # today's chain: encoded at 16x32, no fractions
    d = finetune_transforms([16, 32], 10, "onehot", band_height=48, drm_prob=0.0, label_size=[48, 64])(item)
    _check_pair(d, (16, 32))
    assert torch.allclose(d["image"], before["image"], atol=1e-6)  # the same area resize of the same band (scaled after)
    with pytest.raises(ValueError, match="label_size \\[48, 64\\] needs an image_size"):
        finetune_transforms(None, 10, band_height=48, label_size=[48, 64])


def test_finetune_chain_with_label_size_on_duke(duke_dir):
    from monai_oct.core.datalist import load_datalist
    from monai_oct.recipes.diffusion_pipelines import finetune_transforms

    item = load_datalist(duke_dir / "datalist_train.json")[0]
    d = finetune_transforms([64, 128], 10, "onehot", band_height=224, drm_prob=0.0, label_size=[224, 512])(item)
    _check_pair(d, (64, 128))
    assert len(torch.unique(d["label"])) >= 8


@pytest.mark.slow
def test_finetune_bundle_with_label_size(phantom_dir, tmp_path):
    from conftest import run_stage
    from test_oct_ddpm_bundle import TINY

    out = tmp_path / "ft"
    log = run_stage("finetune", dataset_dir=phantom_dir, output_dir=out, max_epochs=1, pretrained_ckpt="null",
                    label_size=[48, 64], **dict(TINY, sample_interval=1))
    assert "Epoch[1] Complete" in log and (out / "model.pt").is_file() and (out / "samples" / "epoch_0001.png").is_file()


def test_finetune_config_passes_label_size(phantom_dir):
    """``--label_size`` reaches the stage-3 chain (the bundle's ``preprocessing``): fractions in the condition."""
    from monai.bundle import ConfigParser

    from conftest import OCT_DDPM_BUNDLE
    from monai_oct.bundle import stage_configs
    from monai_oct.recipes.items import resolve_items

    item = resolve_items(phantom_dir, require_label=True)[0]
    conds = []
    for label_size in (None, [48, 64]):
        p = ConfigParser()
        p.read_config([str(OCT_DDPM_BUNDLE / "configs" / c) for c in stage_configs("finetune")])
        p.update({"image_size": [16, 32], "band_height": 48, "label_size": label_size, "drm_prob": 0.0})
        conds.append(p.get_parsed_content("preprocessing")(item)["cond"])
    assert set(torch.unique(conds[0]).tolist()) == {-1.0, 1.0}
    assert ((conds[1] > -1) & (conds[1] < 1)).any() and conds[1].shape == (10, 16, 32)


def test_writer_keeps_a_finer_label_and_enlarges_the_image_to_it(tmp_path):
    """Bug: with ``output_size`` null the writer wrote the image at the generated size and the label at the
    source's (finer) label size: a pair whose files differ in size. Now both have the label's size, the label
    untouched; a label that already has ``output_size`` is written untouched too."""
    from monai_oct.core.io import read_image, read_label
    from monai_oct.engines.writer import PairWriter

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2, 1, 48, 64), generator=g)
    images = torch.rand(2, 1, 16, 32, generator=g) * 2 - 1
    for output_size in (None, [48, 64]):
        w = PairWriter(tmp_path / str(output_size), output_size=output_size)
        w.write([0, 1], images, labels)
        for i in (0, 1):
            img, lab = read_image(w.paths(i)[0]), read_label(w.paths(i)[1])
            assert img.shape == lab.shape == (48, 64)
            assert torch.equal(torch.as_tensor(lab.astype("int64")), labels[i, 0])


def _band_label(path, band_height: int, size) -> torch.Tensor:
    """A datalist label cropped to its retina band and resized once (nearest-exact) to ``size``: ``(H, W)``."""
    from monai_oct.core.io import read_label
    from monai_oct.transforms.band import RetinaBandCrop

    lab = torch.as_tensor(read_label(path).astype("int64"))[None]
    band = RetinaBandCrop(band_height)(lab.float(), lab)
    return torch.nn.functional.interpolate(band[None].float(), size=list(size), mode="nearest-exact")[0, 0].long()


@pytest.mark.slow
def test_synthesis_with_label_size_writes_full_resolution_labels(duke_dir, tmp_path):
    """R/S 0/N at ``label_size = output_size = [224, 512]`` with a 32x64 image UNet: the written labels are the
    datalist's, band-cropped and resized once (no trip through 32x64: more distinct boundary rows than a 32-row
    map could have), the images at 224x512, label_size recorded, and a rerun with another label_size refused."""
    import json
    import subprocess

    from monai_oct.bundle import bundle_command, bundle_env, stage_configs
    from monai_oct.core.io import read_image, read_label
    from monai_oct.recipes.items import resolve_items

    from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE, run_stage
    from test_oct_ddpm_bundle import TINY, _random_image_ckpt

    small = dict(TINY, image_size=[32, 64], band_height=224)
    out = tmp_path / "synth"
    args = dict(output_dir=out, dataset_dir=duke_dir, label_datalist="datalist_train.json", num_samples=2, sampler="ddim",
                num_inference_steps=2, image_ckpt=_random_image_ckpt(tmp_path / "img.pt", **small),
                label_size=[224, 512], output_size=[224, 512], **small)
    run_stage("synthesize", **args)
    items = resolve_items(duke_dir / "datalist_train.json", require_label=True)
    for i in range(2):
        name = f"synth_{i:05d}.png"
        lab = torch.as_tensor(read_label(out / "labels" / name).astype("int64"))
        assert torch.equal(lab, _band_label(items[i]["label"], 224, [224, 512]))
        boundary_rows = (lab[1:] != lab[:-1]).any(1).sum()
        assert boundary_rows > 32, boundary_rows  # a 32-row map enlarged has at most 31 rows with a class change
        assert read_image(out / "images" / name).shape == (224, 512)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"]["config"]["labels"]["label_size"] == [224, 512]
    res = subprocess.run(bundle_command(OCT_DDPM_BUNDLE, stage_configs("synthesize"), **dict(args, label_size=[112, 256])),
                         env=bundle_env(BUNDLE_ENV), capture_output=True, text=True, timeout=180)
    msg = [l for l in (res.stdout + res.stderr).splitlines() if "was made with other settings" in l]
    assert res.returncode != 0 and msg and "label_size" in msg[-1], (res.stdout + res.stderr)[-2000:]
