"""Scale presets (``bundles/*/configs/presets/*.yaml``): layered last they give each stage exactly the values the
demo and the benchmarks passed as Python dicts before the presets existed (the published numbers were made with
those), and a stage a preset does not cover is named in the error."""

from __future__ import annotations

import warnings

import pytest
from monai.bundle import ConfigParser

from monai_oct.bundle import bundle_dir
from monai_oct.recipes.presets import list_presets, load_preset, preset_file, preset_stages, stage_value

DDPM, SEG = bundle_dir("oct_ddpm"), bundle_dir("oct_layer_seg")

# ---- expectations, computed once from the code before the presets (commit ebff99e) and hard-coded here ------------
# monai_oct/demo.py DEMO_SETTINGS: each stage got `common` + max_epochs=epochs[stage]; synthesis got `common` +
# num_samples, sampler="ddim", num_inference_steps=steps, dmc_smooth=3.
_DEMO_COMMON = {
    "cpu_demo": {"image_size": [32, 64], "band_height": 160, "channels": [16, 32, 64], "num_res_blocks": 1,
                 "num_train_timesteps": 1000, "prediction_type": "v_prediction", "schedule": "cosine",
                 "learning_rate": 1e-3, "warmup_steps": 20, "ema_decay": 0.995, "batch_size": 8, "flip": 0.5,
                 "sample_interval": 0, "sample_steps": 20, "device": "cpu", "num_threads": 1},
    "cpu_tiny": {"image_size": [16, 32], "band_height": 48, "channels": [8, 16], "num_res_blocks": 1,
                 "num_train_timesteps": 50, "prediction_type": "v_prediction", "schedule": "cosine",
                 "learning_rate": 1e-3, "warmup_steps": 0, "ema_decay": 0.9, "batch_size": 4, "flip": 0.5,
                 "sample_interval": 0, "sample_steps": 2, "num_sample_images": 2, "device": "cpu", "num_threads": 1},
}
_DEMO_EPOCHS = {"cpu_demo": {"pretrain": 30, "train_masks": 80, "finetune": 50}, "cpu_tiny": {"pretrain": 1, "train_masks": 1, "finetune": 1}}
_DEMO_SYNTH = {"cpu_demo": {"num_samples": 16, "sampler": "ddim", "num_inference_steps": 50, "dmc_smooth": 3},
               "cpu_tiny": {"num_samples": 4, "sampler": "ddim", "num_inference_steps": 3, "dmc_smooth": 3}}
OLD_DEMO = {
    (p, stage): dict(_DEMO_COMMON[p], **({"max_epochs": _DEMO_EPOCHS[p][stage]} if stage in _DEMO_EPOCHS[p] else _DEMO_SYNTH[p]))
    for p in _DEMO_COMMON for stage in ("pretrain", "train_masks", "finetune", "synthesize")
}
# benchmarks/duke_retidiff.py SCALES["mini64"] and wu_sketch.py SCALES["mini"] (first mini scale): the overrides each step passed (`geo`, `synth`,
# `synth_geo`, `cfg["sketch"]`, seg_steps' `common`); keys a step did not pass are the config defaults it ran with.
_MINI = {"image_size": [64, 128], "band_height": 224, "channels": [32, 64, 64, 128], "num_res_blocks": 1,
         "num_train_timesteps": 1000, "prediction_type": "v_prediction", "schedule": "cosine"}
_MINI_TRAIN = dict(_MINI, learning_rate=1e-3, batch_size=8, warmup_steps=0, ema_decay=0.9999, sample_interval=10)
_MINI_SYNTH = dict(_MINI, output_size=[224, 512], batch_size=16, sampler="ddim", num_inference_steps=50, num_samples=200)
OLD_MINI = {
    "pretrain": dict(_MINI_TRAIN, max_epochs=20),
    "train_masks": dict(_MINI_TRAIN, max_epochs=50),
    "finetune": dict(_MINI_TRAIN, max_epochs=100),
    "synthesize": _MINI_SYNTH,
    "train_sketch": dict(_MINI_TRAIN, max_epochs=160, warmup_steps=100, ema_decay=0.999, sample_interval=32,
                         sketch_line_width=[1.0, 2.0]),
    "synthesize_sketch": dict(_MINI_SYNTH, sketch_line_width=[1.0, 2.0]),
}
# seg_steps: 1500 iterations * batch 8 / 264 samples per epoch -> max(1, round(45.45)) = 45 epochs
OLD_MINI_SEG = {"image_size": [64, 128], "band_height": 224, "batch_size": 8, "lr_schedule": "cosine", "warmup_steps": 50,
                "augment": 0.5, "train_band_from_label": False, "samples_per_epoch": 264, "max_epochs": 45}


def _resolved(files, keys, **overrides) -> dict:
    """The values ``keys`` take in the bundle config made of ``files`` (later ones win) and ``overrides``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
        parser.update(overrides)
        parser.parse()
        return {k: parser.get_parsed_content(k) for k in keys}


@pytest.mark.parametrize("preset, stage", sorted(OLD_DEMO))
def test_demo_presets_give_the_old_demo_overrides(preset, stage):
    cfg = DDPM / "configs"
    want = OLD_DEMO[(preset, stage)]
    assert _resolved([cfg / "common.yaml", cfg / f"{stage}.yaml", preset_file(DDPM, preset)], want, progress=False, seed=0) == want


@pytest.mark.parametrize("stage", sorted(OLD_MINI))
def test_cpu_mini_64x128_gives_the_first_mini_settings(stage):
    cfg = DDPM / "configs"
    want = OLD_MINI[stage]
    assert _resolved([cfg / "common.yaml", cfg / f"{stage}.yaml", preset_file(DDPM, "cpu_mini_64x128")], want) == want
    assert load_preset(DDPM, "cpu_mini_64x128", stage).items() >= want.items()
    assert preset_stages(DDPM, "cpu_mini_64x128")[stage].items() <= want.items()


#: what the mini scale changed for issue 13: labels at the written size, a one-hot stage 2 trained twice as long, N = 400
NEW_MINI = {"label_size": [224, 512], "mask_encoding": "onehot"}


@pytest.mark.parametrize("stage", sorted(OLD_MINI))
def test_cpu_mini_is_the_first_mini_scale_at_full_label_resolution(stage):
    cfg = DDPM / "configs"
    want = dict(OLD_MINI[stage], **NEW_MINI)
    if stage == "train_masks":
        want["max_epochs"] = 100
    if stage in ("synthesize", "synthesize_sketch"):
        want["num_samples"] = 400
    assert _resolved([cfg / "common.yaml", cfg / f"{stage}.yaml", preset_file(DDPM, "cpu_mini")], want) == want


@pytest.mark.parametrize(("preset", "size"), [("cpu_mini_64x128", [64, 128]), ("cpu_mini", [128, 256])])
def test_cpu_mini_segmentation_presets(preset, size):
    cfg = SEG / "configs"
    want = dict(OLD_MINI_SEG, image_size=size)  # the mini scale's segmenter sees the band at 128x256 (issue 13)
    assert _resolved([cfg / "train.yaml", preset_file(SEG, preset)], want) == want
    # layered before pseudo_label.yaml, the pseudo-labeller keeps its own whole-band default
    got = _resolved([cfg / "train.yaml", preset_file(SEG, preset), cfg / "pseudo_label.yaml"], ["band_height", "image_size"])
    assert got == {"band_height": 0, "image_size": size}


def test_every_preset_resolves_for_every_stage_it_covers():
    for bundle in (DDPM, SEG):
        names = list_presets(bundle)
        assert {"cpu_mini", "cpu_smoke", "paper"} <= set(names)
        for name in names:
            raw = ConfigParser.load_config_file(preset_file(bundle, name))
            stages = raw.get("preset", {}).get("stages") or {None: {}}
            for stage in stages:
                keys = [k for k in raw if k not in ("preset", "+imports")]
                files = [bundle / "configs" / ("common.yaml" if bundle == DDPM else "train.yaml"), preset_file(bundle, name)]
                got = _resolved(files, keys, **({"stage": stage} if stage else {}))
                assert {k: got[k] for k in load_preset(bundle, name, stage)} == load_preset(bundle, name, stage)


def test_presets_say_what_is_missing():
    with pytest.raises(FileNotFoundError, match=r"no preset 'huge'.*presets: \['cpu_demo', 'cpu_mini'"):
        preset_file(DDPM, "huge")
    with pytest.raises(KeyError, match=r"preset 'paper' has no settings for stage 'train_sketch' \(it covers \['finetune'"):
        load_preset(DDPM, "paper", "train_sketch")
    table = {"name": "x", "stages": {"synthesize": {"batch_size": 16}}}
    assert stage_value(table, "synthesize", "batch_size") == 16
    assert stage_value(table, "synthesize", "max_epochs") is None  # a key the stage does not use
    cfg = DDPM / "configs"
    with pytest.raises(Exception, match="stage_value"):  # a bundle stage the preset does not cover fails early
        _resolved([cfg / "common.yaml", cfg / "train_sketch.yaml", preset_file(DDPM, "paper")], ["max_epochs"])


def test_cpu_mini_latent_is_cpu_mini_in_the_latent_space_of_its_autoencoder():
    cfg = DDPM / "configs"
    keys = ["image_size", "channels", "learning_rate", "ema_decay", "max_epochs", "batch_size", "label_size"]
    ae = _resolved([cfg / "common.yaml", cfg / "train_autoencoder.yaml", preset_file(DDPM, "cpu_mini_latent")],
                   keys + ["ae_channels", "latent_channels"])
    assert ae == {"image_size": [224, 512], "channels": [32, 64, 64, 128], "learning_rate": 2.0e-4, "ema_decay": 0.999,
                  "max_epochs": 80, "batch_size": 8, "label_size": [224, 512], "ae_channels": [32, 64, 64], "latent_channels": 4}
    for stage in ("pretrain", "finetune", "synthesize"):
        mini = _resolved([cfg / "common.yaml", cfg / f"{stage}.yaml", preset_file(DDPM, "cpu_mini")], keys)
        latent = _resolved([cfg / "common.yaml", cfg / f"{stage}.yaml", preset_file(DDPM, "cpu_mini_latent")], keys)
        assert latent == dict(mini, image_size=[224, 512]), stage  # only the pixel size differs: the UNet sees 56x128 latents
