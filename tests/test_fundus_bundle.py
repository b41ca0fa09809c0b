"""bundles/fundus_av: each config parses, the fundus pieces on hand-made cases, the smoke chain on the phantom
(train_masks -> train_autoencoder -> train_images -> synthesize N=2 -> train_seg on the synthetic set -> evaluate_seg),
and bad input (a missing datalist, a label with id 7) stopping with an error that names it."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLE_ENV
from monai_oct.bundle import FUNDUS_STAGES, fundus_stage_configs, root_cause, run_bundle
from monai_oct.core.io import DataError, read_image, read_label, write_png
from monai_oct.metrics.fundus import vessel_connectivity
from monai_oct.phantoms.fundus import fundus_phantom, write_fundus_phantom_dataset
from monai_oct.recipes import fundus as fr
from monai_oct.transforms.vessels import ResolveUncertain, VesselTreeDecode, estimate_disc_centre

BUNDLE = "bundles/fundus_av"


def _run(stage: str, **overrides) -> str:
    try:
        res = run_bundle(BUNDLE, fundus_stage_configs(stage, "cpu_smoke"), in_process=False, env=BUNDLE_ENV, timeout=600,
                         device="cpu", **overrides)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"stage {stage} failed ({e.returncode}):\n{(e.stdout + e.stderr)[-4000:]}")
    return res.stdout + res.stderr


@pytest.mark.parametrize("stage", list(FUNDUS_STAGES))
def test_each_config_parses(stage):
    parser = ConfigParser()
    parser.read_config(fundus_stage_configs(stage, "cpu_smoke"))
    assert parser.get("bundle_root") == "$monai_oct.bundle.bundle_root('fundus_av')"
    assert parser.get_parsed_content("table").name == "fundus_av"
    if stage.endswith("_seg"):
        assert parser.get_parsed_content("num_classes") == 2 and parser.get("network_def#in_channels") == 3
    else:
        channels = 4 if stage == "train_masks" else 3  # the mask DDPM's "image" is the one-hot map
        assert parser.get_parsed_content("num_classes") == 4 and parser.get_parsed_content("image_channels") == channels


def _modules_used(value) -> set[str]:
    """The ``monai_oct`` modules a config value's ``$`` expressions reach into (``monai_oct.a.b.f(...)`` -> ``monai_oct.a.b``)."""
    import re

    if isinstance(value, dict):
        return set().union(*(_modules_used(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_modules_used(v) for v in value)) if value else set()
    if not isinstance(value, str) or not value.startswith("$") or value.startswith("$import"):
        return set()
    out = set()
    for dotted in re.findall(r"monai_oct(?:\.\w+)+", value):
        parts = dotted.split(".")
        mods = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        out.add(next(m for m in mods if _is_module(m)))
    return out


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a.b.c where a.b is a module, not a package
        return False


@pytest.mark.parametrize("stage", list(FUNDUS_STAGES))
def test_each_config_imports_what_it_uses(stage):
    """Bug: oct_layer_seg's evaluate.yaml sets ``imports`` (not ``+imports``), dropping train_seg.yaml's
    ``monai_oct.recipes.fundus``: evaluate_seg failed with "module 'monai_oct.recipes' has no attribute 'fundus'"
    (the tests' process had imported it, so parsing here passed; the bundle's own process had not)."""
    parser = ConfigParser()
    parser.read_config(fundus_stage_configs(stage, "cpu_smoke"))
    imported = {s.split()[-1] for s in parser.get("imports")}
    missing = _modules_used(parser.get()) - imported - {"monai_oct"}
    assert not missing, f"{stage}: used but not imported: {sorted(missing)}"


def test_resolve_uncertain_takes_the_nearest_vessel_class():
    lab = np.array([[1, 4, 4, 4, 2, 0], [0, 0, 0, 0, 0, 4]])
    out = ResolveUncertain()(lab)
    assert out.tolist() == [[1, 1, 1, 2, 2, 0], [0, 0, 0, 0, 0, 2]]
    assert ResolveUncertain()(np.array([[4, 0]])).tolist() == [[0, 0]]  # no known vessel: background


def test_vessel_tree_decode_removes_specks_and_av_contacts():
    lab = fundus_phantom(128, seed=1)["label"].astype(np.int64)
    scores = torch.nn.functional.one_hot(torch.as_tensor(lab), 4).permute(2, 0, 1).float() * 2 - 1
    scores[:, 5:8, 100:103] = torch.tensor([-1.0, 1, -1, -1])[:, None, None]  # an artery speck far from the disc
    scores[:, 120, 60] = torch.tensor([-1.0, 1, -1, -1])
    scores[:, 120, 61] = torch.tensor([-1.0, -1, 1, -1])  # an artery touching a vein
    dec = VesselTreeDecode()
    out = dec(scores)
    assert out.shape == (1, 128, 128) and out.dtype == torch.int64 and set(out.unique().tolist()) <= {0, 1, 2, 3}
    assert out[0, 5:8, 100:103].eq(0).all()
    assert dec.last_report["removed_pixels"] >= 9
    assert vessel_connectivity(out, disc_centre=dec.last_report["disc_centre"]) == 1.0
    centre = estimate_disc_centre(lab)
    true = fundus_phantom(128, seed=1)["disc_centre"]
    assert abs(centre[0] - true[0]) + abs(centre[1] - true[1]) < 15


def test_seg_tasks_map_crossing_to_artery(tmp_path):
    dl = write_fundus_phantom_dataset(tmp_path, num=1, size=128, seed=0)
    item = json.loads(dl.read_text())["train"][0]
    item = {k: str(tmp_path / v) for k, v in item.items()}
    truth = read_label(item["label"])
    av = fr.seg_transforms(None, "av", flip=0.0)(item)["label"][0].numpy()
    vessel = fr.seg_transforms(None, "vessel", flip=0.0)(item)["label"][0].numpy()
    inside = av != 255
    assert (av[inside & (truth == 3)] == 1).all() and (av[inside & (truth == 2)] == 2).all()
    assert set(np.unique(vessel[inside])) == {0, 1} and (vessel[inside] == (truth[inside] > 0)).all()
    assert fr.seg_num_classes("av") == 3 and fr.seg_num_classes("vessel") == 2


def _fixed_sampler(values=None, conds=None):
    """A DDIM-scheduled sampler that returns ``values`` (or zeros of the asked shape), recording the conditions."""
    from monai_oct.engines.sampler import DiffusionSampler
    from monai_oct.schedulers import diffusion_scheduler

    class Fixed(DiffusionSampler):
        def __call__(self, network, generators, shape, condition=None, device=None):
            if conds is not None:
                conds.append(condition.cpu().clone())
            out = torch.zeros(len(generators), *shape) if values is None else values[: len(generators)]
            return out.to(device)

    return Fixed(diffusion_scheduler("ddim", 20, "cosine", "v_prediction"), 2)


def test_synthesis_condition_is_no_class_outside_the_fov(tmp_path):
    """Bug: training encodes the label as 255 outside the FOV (0.0 in every one-hot channel), synthesis encoded the
    source's background there (+1 / -1): the image model was conditioned on what it never saw at the FOV's edge."""
    from monai_oct.engines.synthesis import SamplerEngine
    from monai_oct.engines.writer import PairWriter
    from monai_oct.recipes.sources import LabelBank

    labels = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    labels[:, :, 14:18] = 1
    conds: list = []
    engine = SamplerEngine(2, fr.FundusLabelSource(LabelBank(labels), fov_radius=0.4), torch.nn.Conv2d(1, 1, 1),
                           _fixed_sampler(conds=conds), [32, 32], 4, PairWriter(tmp_path, extra_dirs=["fov"], datalist_extras=["fov"]),
                           encoding="onehot", batch_size=2, progress=False, config={}, image_channels=3)
    engine.run_all()
    fov = fr.circular_fov([32, 32], 0.4)[0]
    cond = conds[0]
    assert cond.shape == (2, 4, 32, 32)
    assert cond[:, :, ~fov].eq(0.0).all()  # no class outside the FOV, as in training
    inside_background = fov.clone()
    inside_background[14:18] = False
    assert cond[:, 0, inside_background].eq(1.0).all() and cond[:, 1, fov & ~inside_background].eq(1.0).all()
    item = json.loads((tmp_path / "datalist.json").read_text())["training"][0]
    assert set(item) == {"image", "label", "fov"}
    label, image = read_label(tmp_path / item["label"]), read_image(tmp_path / item["image"])  # relative to the datalist
    assert label[~fov.numpy()].max() == 0 and image.shape == (32, 32, 3) and (image[~fov.numpy()] == 0).all()


def test_vessel_tree_decode_of_a_synthesis_ignores_what_lies_outside_the_fov():
    """Bug: the mask DDPM's samples are noise outside the FOV (it learnt no class there); the vessel-tree decoding
    counted that noise as vessels, put the optic disc in a corner and removed the real tree."""
    from monai_oct.recipes.sources import MaskSampler

    lab = torch.zeros(64, 64, dtype=torch.long)
    lab[30:34, 10:54] = 1  # an artery through the middle, its densest part at the disc (the middle)
    lab[20:44, 30:34] = 2
    lab[30:34, 30:34] = 3
    lab[:12, :12] = 2  # a dense "vessel" block in the corner, outside the FOV
    scores = torch.nn.functional.one_hot(lab, 4).permute(2, 0, 1)[None].float() * 2 - 1
    sampler = MaskSampler(torch.nn.Conv2d(4, 4, 1), _fixed_sampler(values=scores), [64, 64], 4, encoding="onehot",
                          decode="vessel_tree", table="fundus_av")
    source = fr.FundusLabelSource(sampler, fov_radius=0.45)
    out = source([0], [torch.Generator().manual_seed(0)], torch.device("cpu"))["label"][0, 0]
    assert out[30:34, 12:52].ne(0).all() and out[22:42, 30:34].ne(0).all()  # the tree is kept
    assert out[:12, :12].eq(0).all()
    disc = sampler.tree_reports["0"]["disc_centre"]
    assert abs(disc[0] - 32) < 8 and abs(disc[1] - 32) < 8


def test_synthesis_records_the_sampled_maps_connectivity_before_the_decoding(tmp_path):
    """The decoded maps are connected by construction, so a set of noise blobs scored 0.998 (drive_av mini): the
    vessel-tree decoding's reports (kept and removed pixels per pair) go to ``label_decoding.json`` (kept across a
    resume) and ``write_plausibility`` reports the sampled maps' own connectivity from them."""
    from monai_oct.engines.synthesis import SamplerEngine
    from monai_oct.engines.writer import PairWriter
    from monai_oct.recipes.sources import MaskSampler

    lab = torch.zeros(64, 64, dtype=torch.long)
    lab[30:34, 10:54] = 1  # a tree through the middle (176 px) ...
    lab[44:48, 20:28] = 2  # ... and a 32-px speck away from it
    scores = (torch.nn.functional.one_hot(lab, 4).permute(2, 0, 1)[None].float() * 2 - 1).repeat(2, 1, 1, 1)
    report = tmp_path / "synth" / "label_decoding.json"

    def sampler():
        return MaskSampler(torch.nn.Conv2d(4, 4, 1), _fixed_sampler(values=scores), [64, 64], 4, encoding="onehot",
                           decode="vessel_tree", table="fundus_av", report_path=report)

    first = sampler()
    fr.FundusLabelSource(first, fov_radius=0.49)([0], [torch.Generator().manual_seed(0)], torch.device("cpu"))
    rep = json.loads(report.read_text())
    assert rep["per_sample"]["0"]["kept_pixels"] == 176 and rep["per_sample"]["0"]["removed_pixels"] == 32
    again = sampler()  # a resumed synthesis keeps what the first run decoded
    assert again.tree_reports["0"]["kept_pixels"] == 176
    engine = SamplerEngine(2, fr.FundusLabelSource(again, fov_radius=0.49), torch.nn.Conv2d(1, 1, 1), _fixed_sampler(),
                           [64, 64], 4, PairWriter(tmp_path / "synth", extra_dirs=["fov"], datalist_extras=["fov"]),
                           encoding="onehot", batch_size=2, progress=False, config={}, image_channels=3)
    engine.run_all()
    plaus = fr.write_plausibility(tmp_path / "synth")
    assert plaus["min_connected_fraction"] == pytest.approx(1.0)  # the decoded maps: connected by construction
    dec = plaus["decoding"]
    assert dec["maps"] == 2 and dec["connected_fraction"] == pytest.approx(176 / 208) and dec["maps_connected"] == 0
    assert json.loads((tmp_path / "synth" / "manifest.json").read_text())["plausibility"]["decoding"] == dec


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The smoke chain on a 6-photograph 128x128 phantom, each stage's output folder."""
    root = tmp_path_factory.mktemp("fundus")
    write_fundus_phantom_dataset(root / "phantom", num=6, size=128, seed=0)
    d = {k: root / k for k in ("phantom", "masks", "ae", "images", "synthetic", "seg", "eval")}
    data = dict(dataset_dir=str(d["phantom"]))
    _run("train_masks", output_dir=str(d["masks"]), **data)
    _run("train_autoencoder", output_dir=str(d["ae"]), **data)
    latent = str(d["ae"] / "model.pt")
    _run("train_images", output_dir=str(d["images"]), latent_ckpt=latent, **data)
    _run("synthesize", output_dir=str(d["synthetic"]), latent_ckpt=latent, image_ckpt=str(d["images"] / "model.pt"),
         mask_ckpt=str(d["masks"] / "model.pt"), num_samples=2, **data)
    seg = dict(image_size=[128, 128], max_epochs=1, batch_size=2, task="av")
    _run("train_seg", output_dir=str(d["seg"]), datalist=str(d["synthetic"] / "datalist.json"),
         val_datalist=str(d["phantom"] / "datalist.json"), **seg)
    _run("evaluate_seg", output_dir=str(d["eval"]), ckpt=str(d["seg"] / "model.pt"),
         datalist=str(d["phantom"] / "datalist.json"), **seg)
    return d


def test_chain_writes_every_file_where_the_docs_say(chain):
    for stage in ("masks", "ae", "images"):
        assert (chain[stage] / "model.pt").is_file() and (chain[stage] / "last.pt").is_file()
    assert (chain["ae"] / "latent.json").is_file()
    out = chain["synthetic"]
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert len(items) == 2 and all(set(it) == {"image", "label", "fov"} for it in items)
    for it in items:
        image, label, fov = (read_image(out / it[k]) for k in ("image", "label", "fov"))
        assert image.shape == (128, 128, 3) and label.shape == fov.shape == (128, 128)
        assert set(np.unique(label)) <= {0, 1, 2, 3}  # decoded masks in 0-3
        assert set(np.unique(fov)) == {0, 255} and (image[fov == 0] == 0).all()  # black outside the FOV
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["plausibility"]["num_maps"] == 2
    assert manifest["plausibility"]["av_adjacent_pixels"] == 0  # the decoding leaves no artery-vein contact
    assert (out / "grid.png").is_file()
    assert (chain["seg"] / "model.pt").is_file() and (chain["seg"] / "model_final.pt").is_file()
    with open(chain["eval"] / "metrics.csv") as f:  # MONAI's MetricsSaver: one "name,value" row per metric
        rows = {r[0]: float(r[1]) for r in csv.reader(f) if len(r) > 1}
    assert {"val_vessel_dice", "val_vessel_auc", "val_av_accuracy"} <= set(rows)
    assert all(0.0 <= v <= 1.0 for v in rows.values() if v == v)


def test_missing_datalist_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "datalist.json"
    res = subprocess.run(__import__("monai_oct.bundle", fromlist=["bundle_command"]).bundle_command(
        BUNDLE, fundus_stage_configs("train_masks", "cpu_smoke"), datalist=str(missing), output_dir=str(tmp_path / "o"),
        device="cpu"), capture_output=True, text=True, env=__import__("monai_oct.bundle", fromlist=["bundle_env"]).bundle_env(BUNDLE_ENV),
        timeout=300)
    assert res.returncode != 0
    assert str(missing) in res.stderr.strip().splitlines()[-1]


def test_label_with_id_7_names_the_file(tmp_path):
    dl = write_fundus_phantom_dataset(tmp_path / "ph", num=2, size=128, seed=0)
    bad = tmp_path / "ph" / json.loads(dl.read_text())["train"][0]["label"]
    lab = read_label(bad)
    lab[60:64, 60:64] = 7
    write_png(bad, lab)
    with pytest.raises(RuntimeError) as err:  # MONAI's Compose wraps it (twice here); the root cause names the file
        fr.mask_transforms([128, 128])({"image": str(bad).replace("/av/", "/images/"), "label": str(bad),
                                         "fov": str(bad).replace("/av/", "/fov/")})
    cause = root_cause(err.value)
    assert isinstance(cause, DataError) and f"{bad}: label ids [7]" in str(cause)


def test_docs_commands_are_the_stages_the_tests_run():
    """bundles/fundus_av/docs/README.md's commands load, in order, the config files of
    ``fundus_stage_configs(stage)`` (what the chain above runs, plus its preset), one command per stage, and the
    overrides they pass are keys of that stage's config."""
    import re
    from pathlib import Path

    docs = Path(BUNDLE, "docs", "README.md").read_text()
    block = docs.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    dirs = dict(re.findall(r"\b([A-Z])=bundles/(\w+)/configs", block))
    commands = [line for line in block.splitlines() if line.startswith("python -m monai.bundle run")]
    assert len(commands) == len(FUNDUS_STAGES)
    for stage, line in zip(FUNDUS_STAGES, commands):
        listed = re.search(r'--config_file "\[(.*?)\]"', line).group(1).split(",")
        files = [(dirs[f.strip("'")[1]], f.strip("'").split("/", 1)[1]) for f in listed]
        assert tuple(files) == FUNDUS_STAGES[stage], line
        parser = ConfigParser()
        parser.read_config(fundus_stage_configs(stage))
        for name in re.findall(r"--(\w+)", line.split("]\"", 1)[1]):
            assert name in parser.get(), f"{stage}: the docs pass --{name}, which its config does not have"
