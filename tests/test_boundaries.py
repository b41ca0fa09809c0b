"""The boundary-curve label generator (recipes/boundaries.py): valid maps at any size, seeds, fit, fluid, files,
the label-source contract, the CLI and the synthesis bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_oct.cli import main
from monai_oct.core.geometry import label_boundaries
from monai_oct.core.io import DataError, TEMP_PATTERN, read_label
from monai_oct.core.labels import DUKE_DME
from monai_oct.core.seeding import sample_generators, sample_seed
from monai_oct.metrics.plausibility import column_validity
from monai_oct.phantoms.oct import PhantomConfig, generate_bscans
from monai_oct.recipes.boundaries import BoundaryModel, BoundarySource
from monai_oct.recipes.sources import build_label_source

FLUID = DUKE_DME.pathological[0]


@pytest.fixture(scope="module")
def phantom_maps() -> list[np.ndarray]:
    """16 phantom label maps 96x192, about half with fluid."""
    return list(generate_bscans(16, size=(96, 192), seed=3, config=PhantomConfig(fluid_probability=0.5))[1])


@pytest.fixture(scope="module")
def model(phantom_maps) -> BoundaryModel:
    return BoundaryModel.fit(phantom_maps, num_control=16)


def _thickness(maps) -> np.ndarray:
    """Mean thickness of each retinal layer (fraction of the height) over maps, boundaries interpolated under fluid."""
    return np.mean([np.diff(label_boundaries(m), axis=0).mean(1) / m.shape[0] for m in maps], axis=0)


@pytest.mark.parametrize("size", [(224, 512), (96, 192), (40, 64)])
def test_every_sampled_map_is_valid_in_every_column(model, size):
    maps = [model.sample((7, i), size) for i in range(25)]
    for i, m in enumerate(maps):
        assert m.shape == size and m.dtype == np.int64
        assert column_validity(m).min() == 1.0, f"sample {i} at {size}"
    assert any((m == FLUID).any() for m in maps)  # the test sees fluid, not only plain layers


def test_same_seed_same_map_other_seeds_other_maps(model):
    a, b = model.sample((0, 5), (96, 192)), model.sample((0, 5), (96, 192))
    assert np.array_equal(a, b)
    others = [model.sample((s, 5), (96, 192)) for s in (1, 2)] + [model.sample((0, 6), (96, 192))]
    assert all(not np.array_equal(a, o) for o in others)


def test_two_sizes_of_one_sample_agree_within_a_pixel(model):
    for seed in range(6):
        d = model.draw((11, seed))
        d["fluid_map"] = -1  # no fluid: every boundary is visible, so label_boundaries reads the raster exactly
        fine, coarse = model.rasterise(d, (224, 512)), model.rasterise(d, (112, 256))
        bf, bc = label_boundaries(fine), label_boundaries(coarse)
        fine_at_coarse = (bf[:, 0::2] + bf[:, 1::2]) / 2 / 2  # 2x2 pixels of the fine map -> one coarse pixel
        assert np.abs(fine_at_coarse - bc).max() <= 1.0, seed
        true = model.boundaries(d["coefficients"], (112, 256))
        true = np.clip(true[:, ::-1] if d["mirror"] else true, 0, 112)
        assert np.abs(bc - true).max() <= 0.5 + 1e-9  # a pixel belongs to the layer holding its centre
        down = F.interpolate(torch.from_numpy(fine)[None, None].float(), size=(112, 256), mode="nearest-exact")[0, 0]
        assert (down.long().numpy() == coarse).mean() > 0.97


def test_fitted_thickness_is_close_to_the_training_maps(phantom_maps, model):
    real = _thickness(phantom_maps)
    fake = _thickness([model.sample((1, i), (96, 192)) for i in range(60)])
    np.testing.assert_allclose(fake, real, rtol=0.1, atol=0.002)
    assert model.sample((1, 0), (96, 192), spread=0.0).shape == (96, 192)  # the mean shape rasterises


def test_fluid_stays_inside_the_retina_and_follows_the_training_share(phantom_maps, model):
    maps = [model.sample((2, i), (96, 192)) for i in range(80)]
    retina = [c for c in DUKE_DME.layer_order if c not in DUKE_DME.background]
    for m in maps:
        rows = np.arange(m.shape[0])[:, None]
        top = np.where((m == 0).any(0), np.where(m == 0, rows, -1).max(0), -1)  # last vitreous row per column
        bottom = np.where((m == 8).any(0), np.where(m == 8, rows, m.shape[0]).min(0), m.shape[0])
        fy, fx = np.nonzero(m == FLUID)
        assert (fy > top[fx]).all() and (fy < bottom[fx]).all()
        assert np.isin(m[:, np.unique(fx)], retina).any(0).all()  # a retinal layer in every fluid column
    real_share = np.mean([(m == FLUID).any() for m in phantom_maps])
    assert abs(np.mean([(m == FLUID).any() for m in maps]) - real_share) < 0.2


def test_mirroring_and_spread(model):
    d = model.draw((3, 0))
    flipped = model.rasterise(dict(d, mirror=not d["mirror"]), (96, 192))
    assert np.array_equal(flipped[:, ::-1], model.rasterise(d, (96, 192)))
    never = [model.draw((3, i), mirror=False)["mirror"] for i in range(20)]
    assert not any(never) and any(model.draw((3, i))["mirror"] for i in range(20))
    assert np.array_equal(model.draw((3, 0), spread=0.0)["coefficients"], np.zeros(model.stddev.size))


@pytest.mark.parametrize("name", ["bounds.npz", "bounds.json"])
def test_save_load_round_trip(model, tmp_path, name):
    path = model.save(tmp_path / name)
    assert not list(tmp_path.glob(TEMP_PATTERN))
    if name.endswith(".json"):
        assert json.loads(path.read_text())["format"] == "monai_oct.BoundaryModel"
    again = BoundaryModel.load(path, table="duke_dme")
    assert again.num_control == model.num_control and again.source == model.source
    for i in range(5):
        assert np.array_equal(again.sample((4, i), (64, 128)), model.sample((4, i), (64, 128)))


def test_bad_files_name_the_file(model, tmp_path):
    with pytest.raises(DataError, match="bounds.npz: boundary model not found"):
        BoundaryModel.load(tmp_path / "bounds.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not a model")
    with pytest.raises(DataError, match=r"notes.npz: not a boundary model file"):
        BoundaryModel.load(text)
    for text, what in (("{", "not valid JSON"), ('{"format": "monai_oct.BoundaryModel"}', "not a boundary model file")):
        (tmp_path / "b.json").write_text(text)
        with pytest.raises(DataError, match=f"b.json: {what}"):
            BoundaryModel.load(tmp_path / "b.json")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(DataError, match=r"other.npz: not a boundary model file"):
        BoundaryModel.load(other)
    path = model.save(tmp_path / "m.npz")
    with pytest.raises(DataError, match=r"m.npz: boundary model fitted for label table 'duke_dme', not 'x'"):
        from monai_oct.core.labels import LabelTable

        BoundaryModel.load(path, table=LabelTable("x", {0: "a", 1: "b", 2: "c"}, layer_order=(0, 1, 2)))
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays.pop("meta")))
    old = tmp_path / "old.npz"
    np.savez(old, meta=np.asarray(json.dumps(dict(meta, version=0))), **arrays)
    with pytest.raises(DataError, match=r"old.npz: boundary model format version 0"):
        BoundaryModel.load(old)
    with pytest.raises(ValueError, match="too few"):
        BoundaryModel.fit([np.zeros((8, 20), dtype=np.int64)], num_control=16)


def test_source_contract_and_build_label_source(model, tmp_path):
    seeds = [sample_seed(0, i) for i in (3, 4, 5)]
    src = BoundarySource(model, [72, 160])
    out = src([3, 4, 5], sample_generators(seeds), torch.device("cpu"))["label"]
    assert out.shape == (3, 1, 72, 160) and out.dtype == torch.int64
    gens = sample_generators(seeds[1:])
    alone = src([4, 5], gens, torch.device("cpu"))["label"]
    assert torch.equal(alone, out[1:])  # map i depends on (seed, i) only, not on its batch
    fresh = sample_generators(seeds[1:])
    assert [torch.rand(1, generator=g) for g in gens] == [torch.rand(1, generator=g) for g in fresh]  # not advanced
    assert not torch.equal(out[0], out[1])
    built = build_label_source([18, 40], 10, boundary_model=model.save(tmp_path / "m.npz"), label_size=[72, 160])
    assert torch.equal(built([3, 4, 5], sample_generators(seeds), torch.device("cpu"))["label"], out)
    plain = build_label_source([18, 40], 10, boundary_model=tmp_path / "m.npz")([3], sample_generators(seeds[:1]), "cpu")
    assert plain["label"].shape == (1, 1, 18, 40)  # no label_size: the image size
    with pytest.raises(ValueError, match="not both"):
        build_label_source([72, 160], 10, boundary_model=tmp_path / "m.npz", label_datalist="x.json")


def test_cli_fit_boundaries(phantom_dir, tmp_path, capsys):
    out = tmp_path / "b.npz"
    assert main(["fit-boundaries", str(phantom_dir / "datalist.json"), "--band-height", "0", "--num-control", "8",
                 "--out", str(out)]) == 0
    assert "9 label maps" in capsys.readouterr().out
    m = BoundaryModel.load(out)
    assert m.num_maps == 9 and column_validity(m.sample(0, (64, 64))).min() == 1.0
    assert main(["fit-boundaries", str(tmp_path / "missing.json"), "--out", str(tmp_path / "c.npz")]) == 2
    assert "missing.json" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "c.npz").exists()


def test_duke_train_fit(duke_dir):
    """On Duke DME train (224-row bands at full resolution): valid maps at 224x512, per-layer thickness within 15 % of
    the real bands', fluid in about the real share of maps."""
    from monai.transforms import Compose

    from monai_oct.recipes.items import resolve_items
    from monai_oct.transforms.band import RetinaBandCropd
    from monai_oct.transforms.io import LoadBScand

    model = BoundaryModel.fit_datalist(duke_dir / "datalist_train.json", band_height=224)
    assert model.num_maps == 66
    chain = Compose([LoadBScand(["label"], label_keys=["label"]), RetinaBandCropd(["label"], band_height=224)])
    real = [np.asarray(chain({"label": it["label"]})["label"])[0].astype(np.int64)
            for it in resolve_items(duke_dir / "datalist_train.json", require_label=True)]
    maps = [model.sample((0, i), (224, 512)) for i in range(60)]
    assert all(column_validity(m).min() == 1.0 for m in maps)
    np.testing.assert_allclose(_thickness(maps), _thickness(real), rtol=0.15)
    share = np.mean([(m == FLUID).any() for m in maps])
    assert abs(share - np.mean([(m == FLUID).any() for m in real])) < 0.15


@pytest.mark.slow
def test_synthesize_bundle_with_a_boundary_model(phantom_dir, tmp_path):
    """synthesize.yaml --boundary_model FILE: the maps come from the model (at --label_size, finer than the image), the manifest
    hashes the file instead of the unused mask checkpoint; a wrong file stops the run naming it as the last line."""
    import subprocess

    from monai_oct.bundle import bundle_command, bundle_env, stage_configs
    from monai_oct.core.datalist import load_datalist
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE, run_stage

    tiny = dict(image_size=[16, 32], channels=[8, 16], num_res_blocks=1, num_train_timesteps=50, device="cpu",
                progress=False, num_threads=1, sampler="ddim", num_inference_steps=2, num_samples=3)
    torch.manual_seed(0)
    torch.save(conditional_diffusion_unet(1, 10, channels=tiny["channels"], num_res_blocks=1).state_dict(), tmp_path / "img.pt")
    bounds = BoundaryModel.fit_datalist(phantom_dir / "datalist.json", band_height=0, num_control=8).save(tmp_path / "b.npz")
    out = tmp_path / "synth"
    run_stage("synthesize", output_dir=out, image_ckpt=tmp_path / "img.pt", boundary_model=bounds, label_size=[32, 64], **tiny)
    items = load_datalist(out / "datalist.json", key="training")
    expected = BoundarySource(BoundaryModel.load(bounds), [32, 64])(list(range(3)), sample_generators(
        [sample_seed(0, i) for i in range(3)]), torch.device("cpu"))["label"][:, 0].numpy()
    assert [read_label(it["label"]).tolist() for it in items] == [e.tolist() for e in expected]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["generation"]["checkpoint_sha256"]) == {"image", "boundaries"}
    labels = manifest["generation"]["config"]["labels"]  # stage-2 settings play no part in these maps
    assert labels["label_size"] == [32, 64] and labels["mask_decode"] is None and labels["mask_encoding"] is None
    bad = tmp_path / "bad.npz"
    bad.write_text("x")
    res = subprocess.run(bundle_command(OCT_DDPM_BUNDLE, stage_configs("synthesize"), output_dir=tmp_path / "s2",
                                        image_ckpt=tmp_path / "img.pt", boundary_model=bad, **tiny),
                         env=bundle_env(BUNDLE_ENV), capture_output=True, text=True, timeout=180)
    assert res.returncode != 0 and "bad.npz: not a boundary model file" in res.stderr.strip().splitlines()[-1], res.stderr[-2000:]
