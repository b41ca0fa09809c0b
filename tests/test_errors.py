"""Bad input never spoils a model silently, and every error's last line names the file or value (issue 11).

Unit tests for the loaders, checks and messages, then the real entry points (``python -m monai.bundle run`` in a
subprocess) whose exit code and last line of stderr are what a user sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_oct.bundle import check_device, error_summary, root_cause, run_bundle
from monai_oct.core.datalist import check_dataset, load_datalist
from monai_oct.core.io import DataError
from monai_oct.networks.checkpoint import load_weights
from monai_oct.networks.segmentation import check_segmentation_size, segmentation_network
from monai_oct.phantoms.oct import write_phantom_dataset
from monai_oct.recipes.pipelines import bscan_transforms
from monai_oct.recipes.seg_pipelines import seg_eval_transforms, seg_train_transforms

from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE

SEG_BUNDLE = OCT_DDPM_BUNDLE.parent / "oct_layer_seg"
SEG_TINY = dict(image_size=[32, 32], band_height=0, channels=[4, 8], max_epochs=1, batch_size=2, progress=False,
                device="cpu")
DDPM_TINY = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=10,
                 batch_size=2, max_epochs=1, device="cpu", progress=False, sample_steps=2, num_sample_images=1,
                 num_threads=1)


@pytest.fixture()
def data(tmp_path) -> Path:
    """A fresh 4-scan 64x64 phantom dataset (train 3 / validation 1) that a test may spoil."""
    write_phantom_dataset(tmp_path / "data", num=4, size=(64, 64), seed=0)
    return tmp_path / "data"


def _items(d: Path, split: str = "train") -> list[dict]:
    return [{k: str(d / v) for k, v in it.items()} for it in json.loads((d / "datalist.json").read_text())[split]]


def _shrink_label(item: dict) -> None:
    """Make an item's label 8 columns narrower than its image (a size mismatch)."""
    lab = np.array(Image.open(item["label"]))
    Image.fromarray(lab[:, :-8]).save(item["label"])


def _data_error(fn, *args) -> DataError:
    """The DataError that ``fn(*args)`` raises, found behind MONAI's "applying transform" wrapper."""
    with pytest.raises(Exception) as e:
        fn(*args)
    err = root_cause(e.value)
    assert isinstance(err, DataError), repr(err)
    return err


def _run(bundle: Path, configs: list[str], timeout: float = 240, **overrides) -> tuple[int, str, str]:
    """Run a stage as ``python -m monai.bundle run``; ``(exit code, last non-empty stderr line, stderr)``."""
    try:
        res = run_bundle(bundle, configs, in_process=False, env=BUNDLE_ENV, timeout=timeout, **overrides)
        rc, err = res.returncode, res.stderr
    except subprocess.CalledProcessError as e:
        rc, err = e.returncode, e.stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return rc, (lines[-1] if lines else ""), err


def _seg(data: Path, tmp_path: Path, **overrides) -> tuple[int, str, str]:
    kw = dict(SEG_TINY, dataset_dir=data, output_dir=tmp_path / "run", **overrides)
    return _run(SEG_BUNDLE, ["train.yaml"], **kw)


# ---- bug 1: image/label size mismatch -------------------------------------------------------------------------

@pytest.mark.parametrize("chain", ["diffusion", "segmentation"])
def test_size_mismatch_is_a_data_error_naming_both_files(data, chain):
    item = _items(data)[1]
    _shrink_label(item)
    t = bscan_transforms([32, 32]) if chain == "diffusion" else seg_train_transforms([32, 32])
    msg = str(_data_error(t, item))
    assert item["image"] in msg and item["label"] in msg and "(64, 64)" in msg and "(64, 56)" in msg
    assert not check_dataset([item]).ok  # check-data and training agree


def test_seg_training_with_size_mismatch_exits_1_naming_both_files(data, tmp_path):
    item = _items(data)[2]
    _shrink_label(item)
    rc, last, err = _seg(data, tmp_path)
    assert rc == 1, err[-3000:]
    assert last.startswith("DataError: ") and item["image"] in last and item["label"] in last, err[-3000:]
    assert not (tmp_path / "run" / "model_final.pt").exists()


def test_diffusion_training_with_size_mismatch_exits_1_naming_both_files(data, tmp_path):
    item = _items(data)[0]
    _shrink_label(item)
    rc, last, err = _run(OCT_DDPM_BUNDLE, ["common.yaml", "pretrain.yaml"], dataset_dir=data,
                         output_dir=tmp_path / "run", **DDPM_TINY)
    assert rc == 1, err[-3000:]
    assert item["image"] in last and item["label"] in last and "(64, 56)" in last, err[-3000:]
    assert not (tmp_path / "run" / "model.pt").exists()


# ---- bug 5: RGB images ----------------------------------------------------------------------------------------

def _to_rgb(path: str, tint: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    grey = np.array(Image.open(path))
    rgb = np.clip(np.repeat(grey[..., None].astype(int), 3, -1) + np.array(tint), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def test_rgb_images_are_read_as_grey_by_training_and_evaluation(data):
    item = _items(data)[0]
    grey = bscan_transforms([32, 32])(dict(item))["image"]
    _to_rgb(item["image"])
    assert check_dataset([item]).ok
    for t in (bscan_transforms([32, 32]), seg_train_transforms([32, 32], flip=0.0)):
        out = t(dict(item))["image"]
        assert out.shape == (1, 32, 32) and torch.allclose(out, grey)
    for with_label in (True, False):  # evaluation (LoadBScand) and inference (MONAI's LoadImaged, grey reader)
        ev = seg_eval_transforms([32, 32], with_label=with_label)(dict(item))
        assert ev["image"].shape == (1, 32, 32) and torch.allclose(ev["image"], grey)


def test_rgb_image_averaged_to_grey(data):
    item = _items(data)[0]
    rgb = _to_rgb(item["image"], tint=(30, 0, -30))
    out = bscan_transforms(None, keys=["image"])({"image": item["image"]})["image"]
    expect = torch.from_numpy(rgb.astype(np.float32).mean(-1) / 255.0 * 2 - 1)
    assert torch.allclose(out[0], expect, atol=1e-5)
    inferred = seg_eval_transforms(None, with_label=False)({"image": item["image"]})["image"]
    assert torch.allclose(inferred, out, atol=1.01 / 255)  # inference rounds the mean to 8 bits


def test_seg_training_on_rgb_images_succeeds(data, tmp_path):
    for it in _items(data, "train") + _items(data, "validation"):
        _to_rgb(it["image"])
    rc, last, err = _seg(data, tmp_path)
    assert rc == 0, err[-3000:]
    assert (tmp_path / "run" / "model_final.pt").is_file()


# ---- weak messages --------------------------------------------------------------------------------------------

def test_eval_transforms_check_label_ids_naming_the_file(data):
    item = _items(data, "validation")[0]
    lab = np.array(Image.open(item["label"]))
    lab[0, 0] = 12
    Image.fromarray(lab).save(item["label"])
    msg = str(_data_error(seg_eval_transforms([32, 32]), dict(item)))
    assert msg.startswith(item["label"]) and "label ids [12]" in msg


@pytest.mark.parametrize("split", ["train", "validation"])
def test_seg_training_with_label_id_12_exits_1_naming_the_file(data, tmp_path, split):
    item = _items(data, split)[0]
    lab = np.array(Image.open(item["label"]))
    lab[5, 5] = 12
    Image.fromarray(lab).save(item["label"])
    rc, last, err = _seg(data, tmp_path)
    assert rc == 1, err[-3000:]
    assert last.startswith("DataError: ") and item["label"] in last and "[12]" in last, err[-3000:]
    assert not (tmp_path / "run" / "model_final.pt").exists()


def test_seg_training_with_zero_byte_png_exits_1_naming_the_file(data, tmp_path):
    item = _items(data)[1]
    Path(item["image"]).write_bytes(b"")
    rc, last, err = _seg(data, tmp_path)
    assert rc == 1, err[-3000:]
    assert last.startswith("DataError: ") and item["image"] in last and "empty file" in last, err[-3000:]
    assert "Failed to" in err  # the traceback is still printed above it


def test_unet_size_check_names_size_and_factor():
    net = segmentation_network("unet", channels=[4, 4, 4, 4, 4], out_channels=3)
    assert check_segmentation_size(net, [64, 128]) is None
    with pytest.raises(ValueError) as e:
        check_segmentation_size(net, [63, 128])
    assert "[63, 128]" in str(e.value) and "divide by 16" in str(e.value) and "--image_size" in str(e.value)
    with pytest.raises(ValueError, match=r"\[63, 128\]"):  # the network itself checks before its first layer
        net(torch.zeros(1, 1, 63, 128))


@pytest.mark.parametrize("name,channels", [("basicunet", [4] * 6), ("relaynet", [4])])
def test_networks_that_take_any_size_pass_the_check(name, channels):
    net = segmentation_network(name, channels=channels, out_channels=3)
    assert check_segmentation_size(net, [63, 130]) is None
    assert net(torch.zeros(1, 1, 63, 130)).shape == (1, 3, 63, 130)


def test_seg_training_with_odd_image_size_exits_1_naming_the_size(data, tmp_path):
    rc, last, err = _seg(data, tmp_path, image_size=[63, 128], channels=[4, 8, 8, 8, 8])
    assert rc == 1, err[-3000:]
    assert "[63, 128]" in last and "divide by 16" in last, err[-3000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_check_device_without_cuda():
    check_device("cpu")
    check_device(torch.device("cpu"))
    with pytest.raises(ValueError, match=r"cuda:0.*no CUDA device; use --device cpu$"):
        check_device("cuda:0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize("bundle", ["oct_ddpm", "oct_layer_seg"])
def test_device_cuda_without_gpu_says_use_cpu(data, tmp_path, bundle):
    if bundle == "oct_ddpm":
        rc, last, err = _run(OCT_DDPM_BUNDLE, ["common.yaml", "pretrain.yaml"], dataset_dir=data,
                             output_dir=tmp_path / "run", **dict(DDPM_TINY, device="cuda:0"))
    else:
        rc, last, err = _seg(data, tmp_path, device="cuda:0")
    assert rc == 1, err[-3000:]
    assert last.endswith("no CUDA device; use --device cpu"), err[-3000:]


def test_pickled_module_refusal_says_what_to_do(tmp_path):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "whole_model.pt"
    torch.save(net, path)
    with pytest.raises(DataError) as e:
        load_weights(torch.nn.Linear(2, 2), path)
    msg = str(e.value)
    assert str(path) in msg and "torch.nn.modules.linear.Linear" in msg and "state_dict()" in msg
    assert "weights_only" not in msg


def test_error_summary_is_the_root_cause_in_one_line():
    try:
        try:
            raise DataError("a.png: cannot read image\n(truncated)")
        except DataError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        assert isinstance(root_cause(outer), DataError)
        assert error_summary(outer) == "DataError: a.png: cannot read image (truncated)"
    assert error_summary(AssertionError("Torch not compiled with CUDA enabled")).endswith("use --device cpu")
    assert error_summary(KeyError("image")) == "KeyError: 'image'"


def test_root_cause_prefers_our_message_to_the_library_error_it_wraps(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    try:
        try:
            load_weights(torch.nn.Linear(2, 2), path)  # DataError raised from torch's size-mismatch RuntimeError
        except DataError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as outer:
        assert isinstance(outer.__cause__.__cause__, RuntimeError)  # torch's, innermost
        assert error_summary(outer).startswith(f"DataError: {path}: checkpoint does not fit Linear")


def test_check_data_and_training_agree_on_the_real_data(duke_dir, tmp_path):
    """A real pair with its label cut by one row is rejected by both, naming both files."""
    items = load_datalist(duke_dir / "datalist_train.json")[:1]
    item = {k: str(tmp_path / Path(v).name.replace(".png", f"_{k}.png")) for k, v in items[0].items()}
    shutil.copy(items[0]["image"], item["image"])
    Image.fromarray(np.array(Image.open(items[0]["label"]))[:-1]).save(item["label"])
    rep = check_dataset([item])
    assert not rep.ok and item["label"] in rep.errors[0]
    assert "differs from image" in str(_data_error(bscan_transforms([64, 128], band_height=224), item))
