"""inference.yaml read the way MONAI Label's BundleInferTask reads it, without monailabel (the real one, with its
``Restored`` and writer, runs in ``tests/test_monailabel.py``).

The emulation follows monailabel/tasks/infer/bundle.py + basic_infer.py: ConfigParser reads
configs/inference.yaml, ``bundle_root`` is set to the bundle folder, ``network_def`` is instantiated and
loaded from models/model.pt (``checkpoint.get("model", checkpoint)``), ``device`` is replaced through the
reference resolver, ``preprocessing`` / ``postprocessing`` are Compose objects whose transforms run in
order on ``{"image": path, "image_path": path}``, the ``inferer`` is called on the batched image, writers
(SaveImaged) are filtered out, and the first input / output keys of metadata.json name the data keys.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigItem, ConfigParser
from monai.transforms import Compose, LoadImaged, SaveImaged

from monai_oct.core.io import read_image, write_png
from monai_oct.core.labels import DUKE_DME

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "oct_layer_seg"


@pytest.fixture()
def bundle_dir(tmp_path):
    """A copy of the bundle with a (randomly initialised) models/model.pt, as MONAI Label finds it."""
    root = tmp_path / "oct_layer_seg"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    parser.config.update({"bundle_root": str(root), "channels": [4, 8, 16]})
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def", instantiate=True)
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _monailabel_infer(bundle: Path, image: Path, device: str = "cpu", band_height=None):
    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.yaml"))
    config.config.update({"bundle_root": str(bundle), "channels": [4, 8, 16]})
    if band_height is not None:
        config.config.update({"band_height": band_height})
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    key_image, image_fmt = next(iter(meta["network_data_format"]["inputs"].items()))
    key_pred, pred_fmt = next(iter(meta["network_data_format"]["outputs"].items()))
    labels = {v.lower(): int(k) for k, v in pred_fmt["channel_def"].items()}
    assert len(image_fmt["spatial_shape"]) == 2  # MONAI Label derives dimension 2 from it

    network = config.get_parsed_content("network_def", instantiate=True)
    ckpt = torch.load(bundle / "models" / "model.pt", map_location=device, weights_only=True)
    network.load_state_dict(ckpt.get("model", ckpt), strict=True)
    network.eval()

    # _update_device
    config.config.update({"device": device})
    if config.ref_resolver.items.get("device"):
        config.ref_resolver.items["device"] = ConfigItem(config=device, id="device")

    pre = config.get_parsed_content("preprocessing", instantiate=True)
    pre = list(pre.transforms) if isinstance(pre, Compose) else pre
    assert any(isinstance(t, LoadImaged) for t in pre)  # MONAI Label swaps it for LoadImageTensord
    for t in pre:
        if isinstance(t, LoadImaged):
            t._loader.image_only = False  # as BundleInferTask does: the metadata goes to image_meta_dict
    data = {key_image: str(image), "image_path": str(image), "device": device}
    for t in pre:
        data = t(data)
    inferer = config.get_parsed_content("inferer", instantiate=True)
    with torch.no_grad():
        out = inferer(torch.as_tensor(data[key_image])[None].to(device), network)
    data[key_pred] = out[0]
    post = config.get_parsed_content("postprocessing", instantiate=True)
    post = [t for t in (list(post.transforms) if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
    for t in post:
        data = t(data)
    return data[key_pred], labels, data.get(f"{key_image}_meta_dict", {})


@pytest.mark.parametrize("band_height", [224, 0])
def test_monailabel_style_inference_on_one_png(bundle_dir, tmp_path, band_height):
    rng = np.random.default_rng(0)
    img = (rng.random((300, 211)) * 255).astype(np.uint8)  # odd size, shorter than a Duke scan
    write_png(tmp_path / "scan.png", img)
    pred, labels, meta = _monailabel_infer(bundle_dir, tmp_path / "scan.png", band_height=band_height)
    pred = np.asarray(pred)
    # MONAI's axis order (W, H), uint8, no channel: the spatial_shape MONAI Label's Restored resizes to, so it has
    # nothing left to do, and its writer transposes back to a 300-row PNG
    assert pred.shape == (211, 300) and pred.dtype == np.uint8
    assert tuple(int(v) for v in meta["spatial_shape"]) == pred.shape
    assert set(np.unique(pred)) <= set(range(10))
    assert labels == {n.lower(): i for i, n in DUKE_DME.classes.items()}
    if band_height:
        assert (pred[:, 0] == 0).all() or (pred[:, -1] == 8).all()  # rows outside the band are filled


def test_inference_config_keys_resolve(bundle_dir):
    config = ConfigParser()
    config.read_config(str(bundle_dir / "configs" / "inference.yaml"))
    config.config.update({"bundle_root": str(bundle_dir)})
    for key in ("network_def", "preprocessing", "postprocessing", "inferer", "device"):
        assert config.get_parsed_content(key) is not None, key
    assert config.get_parsed_content("ckpt") == str(bundle_dir / "models" / "model.pt")
    assert config.get_parsed_content("writer").saver.formats == ["png", "nii.gz"]


def test_inference_png_real_size(duke_dir, bundle_dir, tmp_path):
    """A real Duke B-scan (496 rows) keeps its size through band crop, resize and restoration."""
    image = duke_dir / "val" / "images" / "Subject_07_00.png"
    pred, _, _ = _monailabel_infer(bundle_dir, image)
    assert tuple(pred.shape[::-1]) == read_image(image).shape  # MONAI's (W, H)
