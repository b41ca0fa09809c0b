"""Model-zoo conformance of both bundles (issue 12, deliverable 3).

What MONAI's own bundle tools and the model-zoo's checks ask of a bundle: ``metadata.json`` with the model-zoo
schema's fields and a correct ``network_data_format``, numeric ``eval_metrics`` (here: taken from
``benchmarks/results/``), ``large_files.yml``, ``python -m monai.bundle verify_net_in_out`` and ``ckpt_export`` from
the command line, ``ConfigWorkflow(...).check_properties()`` for the train and inference configs, and configs that
run from inside the bundle folder as well as from the project root.

``verify_metadata`` downloads its JSON schema from GitHub and needs ``jsonschema``; neither is available offline,
so :data:`SCHEMA_FIELDS` lists the fields of the model-zoo's published schemas (``meta_schema_20220324.json``,
``meta_schema_generator_20240725.json``) with their JSON types, and the test checks them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import monai
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from monai_oct.core.labels import DUKE_DME

ROOT = Path(__file__).resolve().parents[1]
SEG = ROOT / "bundles" / "oct_layer_seg"
DDPM = ROOT / "bundles" / "oct_ddpm"
BENCH = ROOT / "benchmarks" / "results" / "duke_retidiff_mini.json"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))

#: the model-zoo metadata fields (schema 20220324 and its generator variant) and their JSON types.
SCHEMA_FIELDS = {
    "schema": str, "version": str, "changelog": dict, "monai_version": str, "pytorch_version": str,
    "numpy_version": str, "optional_packages_version": dict, "required_packages_version": dict, "name": str,
    "task": str, "description": str, "authors": str, "copyright": str, "data_source": str, "data_type": str,
    "intended_use": str, "references": list, "network_data_format": dict, "eval_metrics": dict,
}
#: the fields of each input / output of ``network_data_format``.
IO_FIELDS = {"type": str, "format": str, "num_channels": int, "spatial_shape": list, "dtype": str, "value_range": list,
             "is_patch_data": bool, "channel_def": dict}


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _bench() -> dict:
    return json.loads(BENCH.read_text())


def _cli(*args: str, cwd: Path = ROOT, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in ``cwd``; fails the test with the output's end when it fails."""
    res = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        pytest.fail(f"monai.bundle {args[0]} failed ({res.returncode}) in {cwd}:\n{(res.stdout + res.stderr)[-3000:]}")
    return res


def _seg_ckpt(path: Path) -> Path:
    """A state dict of the inference config's default network (random weights), as training writes model.pt."""
    from monai_oct.networks.segmentation import segmentation_network

    torch.manual_seed(0)
    net = segmentation_network("unet", in_channels=1, out_channels=DUKE_DME.num_classes, channels=None, dropout=0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


# ---- 1. metadata.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bundle", [SEG, DDPM], ids=lambda b: b.name)
def test_metadata_has_model_zoo_fields(bundle):
    meta = _meta(bundle)
    for key, kind in SCHEMA_FIELDS.items():
        assert isinstance(meta.get(key), kind), f"{bundle.name}: {key} = {meta.get(key)!r}, expected {kind.__name__}"
    assert meta["name"] == bundle.name
    assert meta["version"] in meta["changelog"]
    assert meta["monai_version"] == monai.__version__.split("+")[0]
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    assert meta["numpy_version"].split(".")[0] == np.__version__.split(".")[0]
    # MONAI 1.6 reads optional_packages_version as the old name of required_packages_version and replaces the
    # latter with it when it parses the metadata (ckpt_export, ConfigWorkflow): both must list every package.
    assert meta["optional_packages_version"] == meta["required_packages_version"]
    assert {"monai_oct", "pytorch-ignite", "fire"} <= set(meta["required_packages_version"])
    for group in ("inputs", "outputs"):
        for io_name, io in meta["network_data_format"][group].items():
            if io_name == "timesteps":  # the diffusion UNet's second argument: a vector, not an image
                continue
            for key, kind in IO_FIELDS.items():
                assert isinstance(io.get(key), kind), f"{bundle.name} {group}/{io_name}: {key} = {io.get(key)!r}"
            assert len(io["channel_def"]) == io["num_channels"], f"{bundle.name} {group}/{io_name}: channel_def"
    for k, v in meta["eval_metrics"].items():
        assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{bundle.name}: eval_metrics {k} = {v!r}"


def test_seg_output_declared_as_logits_of_the_class_table():
    """The network's output is 10-channel logits (argmax in postprocessing), not a [0, 1] segmentation."""
    pred = _meta(SEG)["network_data_format"]["outputs"]["pred"]
    assert pred["format"] == "logits" and pred["value_range"] == []
    assert pred["num_channels"] == DUKE_DME.num_classes
    assert [pred["channel_def"][str(i)] for i in range(DUKE_DME.num_classes)] == [DUKE_DME.classes[i] for i in range(DUKE_DME.num_classes)]


def test_eval_metrics_are_the_benchmark_numbers():
    bench = _bench()
    real, mixed = bench["segmentation"]["unet"]["R66_S0"], bench["segmentation"]["unet"]["R66_SN"]
    seg = _meta(SEG)["eval_metrics"]
    assert seg["mean_dice"] == round(real["mean_dice"], 3)
    assert seg["mean_pixel_accuracy"] == round(real["mean_pa"], 3)
    assert seg["pixel_accuracy"] == round(real["pixel_accuracy"], 3)
    assert seg["dice_irf"] == round(real["groups"]["IRF"]["dice"], 3)
    assert seg["mean_dice_with_synthetic"] == round(mixed["mean_dice"], 3)
    ddpm = _meta(DDPM)["eval_metrics"]
    assert ddpm["seg_mean_dice_real_only"] == round(real["mean_dice"], 3)
    assert ddpm["seg_mean_dice_real_plus_synthetic"] == round(mixed["mean_dice"], 3)
    assert ddpm["seg_dice_irf_real_plus_synthetic"] == round(mixed["groups"]["IRF"]["dice"], 3)
    q = bench["quality"][bench["meta"]["label_sources"][0]]  # the main synthetic set's report
    assert ddpm["fd_matched"] == round(q["frechet"]["fd_matched"], 1)
    assert ddpm["fd_floor"] == round(q["frechet"]["fd_floor"], 1)
    assert ddpm["kid_matched"] == round(q["frechet"]["kid_matched"], 3)
    assert ddpm["ms_ssim_synthetic"] == round(q["diversity"]["ms_ssim"]["synthetic"]["mean"], 2)


# ---- 2. large_files.yml -----------------------------------------------------------------------------


@pytest.mark.parametrize(("bundle", "files"), [(SEG, ["models/model.pt"]),
                                               (DDPM, ["models/pretrain/model.pt", "models/train_masks/model.pt",
                                                       "models/finetune/model.pt"])], ids=["oct_layer_seg", "oct_ddpm"])
def test_large_files_list_the_weights_the_configs_load(bundle, files, tmp_path):
    """Every default checkpoint path of the configs is listed; MONAI's ``download_large_files`` reads the file (and,
    the weights being in place, downloads nothing)."""
    from monai.bundle import download_large_files

    entries = ConfigParser.load_config_file(bundle / "large_files.yml")["large_files"]
    assert [e["path"] for e in entries] == files
    for e in entries:
        assert set(e) == {"path", "url", "hash_val", "hash_type"} and e["url"].startswith("https://")
    copy = tmp_path / bundle.name
    (copy / "configs").mkdir(parents=True)
    (copy / "large_files.yml").write_text((bundle / "large_files.yml").read_text())
    for f in files:
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        (copy / f).write_bytes(b"weights")
    download_large_files(bundle_path=str(copy))
    assert all((copy / f).read_bytes() == b"weights" for f in files)


# ---- 3. verify_net_in_out ---------------------------------------------------------------------------


def test_verify_net_in_out_cli_seg():
    out = _cli("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/inference.yaml", "--device", "cpu", cwd=SEG)
    assert "data shape of network is verified with no error" in out.stdout + out.stderr


def test_verify_net_in_out_cli_ddpm():
    """The diffusion UNet needs ``timesteps``: given as ``--extra_forward_args`` (a literal from the command line).
    Run at a small width and size (the paper's 480x480 UNet takes minutes on this CPU)."""
    out = _cli("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/common.yaml", "--device", "cpu", "--extra_forward_args", "{'timesteps': 0}",
               "--channels", "[8,16,16,32]", "--_meta_#network_data_format#inputs#image#spatial_shape", "[32,64]", cwd=DDPM)
    assert "data shape of network is verified with no error" in out.stdout + out.stderr


def test_diffusion_unet_takes_number_list_or_tensor_timesteps():
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 2, channels=(8, 16)).eval()
    for p in net.parameters():  # MONAI zero-initialises the output convolution: an untrained UNet returns zeros
        torch.nn.init.normal_(p, std=0.2)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x, torch.tensor([5, 5]))
        assert torch.equal(net(x, 5), ref) and torch.equal(net(x, [5, 5]), ref)
        assert not torch.equal(net(x, 900), ref)


# ---- 4. check_properties ----------------------------------------------------------------------------


def _workflow(files: list[Path], workflow_type: str, **override) -> ConfigWorkflow:
    w = ConfigWorkflow(config_file=[str(f) for f in files], workflow_type=workflow_type, logging_file=False, **override)
    w.initialize()
    return w


def test_check_properties_seg_train(phantom_dir, tmp_path):
    w = _workflow([SEG / "configs" / "train.yaml"], "train", dataset_dir=str(phantom_dir), output_dir=str(tmp_path),
                  device="cpu", progress=False)
    assert w.check_properties() == []


def test_check_properties_seg_inference(phantom_dir, tmp_path):
    """``evaluator#val_handlers`` is ``@handlers`` (an inline list crashed MONAI's optional-property check)."""
    w = _workflow([SEG / "configs" / "inference.yaml"], "infer", dataset_dir=str(phantom_dir),
                  output_dir=str(tmp_path / "pred"), ckpt=str(_seg_ckpt(tmp_path / "model.pt")), device="cpu")
    assert w.check_properties() == []
    assert w.parser["evaluator"]["val_handlers"] == "@handlers"


@pytest.mark.parametrize("stage", ["pretrain", "train_masks", "finetune", "train_sketch"])
def test_check_properties_ddpm_train(stage, phantom_dir, tmp_path):
    from monai_oct.bundle import stage_configs

    w = _workflow([DDPM / "configs" / c for c in stage_configs(stage)], "train", dataset_dir=str(phantom_dir),
                  output_dir=str(tmp_path), device="cpu", image_size=[32, 32], channels=[8, 16], pretrained_ckpt=None)
    assert w.check_properties() == []
    assert w.train_inferer is w.trainer.inferer  # the property is the inferer the trainer runs, not a stand-in


def test_check_properties_ddpm_synthesis_meta(tmp_path):
    """Synthesis is no supervised evaluator (MONAI's infer properties: dataset, evaluator, inferer), so it is
    checked for MONAI's metadata properties and the common ones it does have."""
    files = [DDPM / "configs" / c for c in ("common.yaml", "synthesize.yaml")]
    w = ConfigWorkflow(config_file=[str(f) for f in files], workflow_type=None, logging_file=False,
                       meta_file=str(DDPM / "configs" / "metadata.json"), output_dir=str(tmp_path))
    w.initialize()
    assert w.check_properties() == []
    for key in ("bundle_root", "device", "dataset_dir", "network_def"):
        assert key in w.parser


# ---- 5. paths relative to the bundle, ckpt_export -----------------------------------------------------


def test_bundle_root_is_the_folder_above_the_configs(monkeypatch, tmp_path):
    for cwd, expected in ((ROOT, "bundles/oct_layer_seg"), (SEG, "."), (SEG / "configs", str(SEG))):
        monkeypatch.chdir(cwd)
        config = "configs/inference.yaml" if cwd == SEG else str(SEG / "configs" / "inference.yaml")
        w = ConfigWorkflow(config_file=config, workflow_type=None, logging_file=False)
        assert w.parser.get_parsed_content("bundle_root") == expected, cwd
    monkeypatch.chdir(ROOT)  # a config file of another bundle first: its own folder, not this working directory's
    w = ConfigWorkflow(config_file=[str(DDPM / "configs" / "common.yaml")], workflow_type=None, logging_file=False)
    assert w.parser.get_parsed_content("bundle_root") == "bundles/oct_ddpm"
    monkeypatch.chdir(tmp_path)  # a ConfigParser without a workflow, elsewhere: this checkout's bundle
    p = ConfigParser()
    p.read_config(str(DDPM / "configs" / "common.yaml"))
    assert Path(p.get_parsed_content("bundle_root")) == DDPM


def test_dataset_dir_default_is_relative_to_the_bundle(monkeypatch):
    """The Duke default is ``../shared/data/duke_dme`` of the project, from the project root and from the bundle."""
    for bundle, config in ((SEG, "train.yaml"), (DDPM, "common.yaml")):
        for cwd in (ROOT, bundle):
            monkeypatch.chdir(cwd)
            w = ConfigWorkflow(config_file=str(bundle / "configs" / config), workflow_type=None, logging_file=False)
            got = Path(w.parser.get_parsed_content("dataset_dir")).resolve()
            assert got == (ROOT.parent / "shared" / "data" / "duke_dme").resolve(), (bundle.name, cwd)


def test_missing_dataset_dir_names_the_folder(tmp_path):
    """A bundle copied out of the project has no ../shared data: the run stops naming the datalist it looked for."""
    import shutil

    copy = tmp_path / "oct_layer_seg"
    shutil.copytree(SEG / "configs", copy / "configs")
    res = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/train.yaml",
                          "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--max_epochs", "1"],
                         cwd=copy, env=ENV, capture_output=True, text=True, timeout=240)
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "shared/data/duke_dme/datalist_train.json: not found" in last, last


def test_inference_runs_from_inside_the_bundle_and_from_the_root(phantom_dir, tmp_path):
    """As a model-zoo user runs a downloaded bundle: weights at ``models/model.pt``, no ``--ckpt`` / ``--output_dir``;
    the predictions land in the bundle's ``predictions/`` whether run from inside it or from the folder above."""
    import shutil

    from PIL import Image

    bundle = tmp_path / "project" / "bundles" / "oct_layer_seg"
    shutil.copytree(SEG / "configs", bundle / "configs")
    _seg_ckpt(bundle / "models" / "model.pt")
    image = sorted((phantom_dir / "images").glob("*.png"))[0]
    preds = {}
    for name, cwd, config in (("inside", bundle, "configs/inference.yaml"),
                              ("root", tmp_path / "project", "bundles/oct_layer_seg/configs/inference.yaml")):
        _cli("run", "--config_file", config, "--image", str(image), "--device", "cpu", "--formats", "['png']", cwd=cwd)
        written = sorted((bundle / "predictions").rglob("*.png"))
        assert len(written) == 1, (name, written)
        preds[name] = np.asarray(Image.open(written[0]))
        shutil.rmtree(bundle / "predictions")
    assert preds["inside"].shape == np.asarray(Image.open(image)).shape[:2]
    assert np.array_equal(preds["inside"], preds["root"])


def test_ckpt_export_seg_torchscript(tmp_path):
    """``ckpt_export`` writes a TorchScript of the segmentation network whose output equals the eager network's."""
    from monai_oct.networks.segmentation import segmentation_network

    ckpt = _seg_ckpt(tmp_path / "model.pt")
    ts = tmp_path / "model.ts"
    _cli("ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(ckpt), "--meta_file",
         "configs/metadata.json", "--config_file", "configs/inference.yaml", cwd=SEG)
    scripted = torch.jit.load(str(ts))
    net = segmentation_network("unet", in_channels=1, out_channels=DUKE_DME.num_classes, channels=None, dropout=0.0)
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    x = torch.rand(1, 1, 64, 128)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net.eval()(x), atol=1e-5)
