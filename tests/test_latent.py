"""Latent diffusion (issue 13): the autoencoder stage, latent image stages and latent synthesis, at tiny sizes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_oct.bundle import bundle_command, bundle_env, stage_configs
from monai_oct.core.io import DataError, read_image
from monai_oct.core.seeding import sample_generators
from monai_oct.engines.autoencoder import AutoencoderTrainer, patch_discriminator, perceptual_loss
from monai_oct.engines.latent import LatentDiffusionTrainer, LatentSampler, latent_sampler, pool_condition
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.autoencoder import autoencoder_kl, load_latent, write_latent_json
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.schedulers import diffusion_scheduler
from monai_oct.transforms.encoding import encode_mask, encode_mask_resized

from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE as BUNDLE, run_stage as stage

AE = dict(image_channels=1, channels=[8, 16, 16], latent_channels=4, num_res_blocks=1)   # f = 4
#: a latent UNet of 16x32 latents from 64x128 images
LATENT = dict(image_size=[64, 128], channels=[8, 16], num_res_blocks=1, num_train_timesteps=50, batch_size=4,
              device="cpu", progress=False, num_threads=1, sample_steps=2, num_sample_images=2, sample_interval=1)


def _saved_autoencoder(folder: Path, scale: float = 1.0, **config) -> Path:
    torch.manual_seed(0)
    cfg = dict(AE, **config)
    ckpt = folder / "model.pt"
    torch.save(autoencoder_kl(cfg["image_channels"], cfg["channels"], cfg["latent_channels"], cfg["num_res_blocks"]).state_dict(), ckpt)
    write_latent_json(ckpt, scale, cfg)
    return ckpt


def test_load_latent_round_trip_and_sizes(tmp_path):
    codec = load_latent(_saved_autoencoder(tmp_path, scale=0.5))
    assert codec.scale_factor == 0.5 and codec.compression == 4 and codec.latent_channels == 4
    assert not any(p.requires_grad for p in codec.parameters())
    z = codec.encode(torch.rand(2, 1, 64, 128) * 2 - 1)
    assert z.shape == (2, 4, 16, 32)
    x = codec.decode(z)
    assert x.shape == (2, 1, 64, 128) and x.abs().max() <= 1.0
    with pytest.raises(ValueError, match=r"image size \[62, 128\] does not divide by 4 .*f=4"):
        codec.encode(torch.zeros(1, 1, 62, 128))
    assert load_latent(None) is None and load_latent("null") is None


def test_wrong_latent_json_or_checkpoint_names_the_file(tmp_path):
    ckpt = _saved_autoencoder(tmp_path)
    meta = tmp_path / "latent.json"
    rec = json.loads(meta.read_text())
    # a latent.json describing other widths than model.pt holds
    meta.write_text(json.dumps(dict(rec, config=dict(rec["config"], channels=[8, 16, 32]))))
    with pytest.raises(DataError, match=r"model\.pt: does not fit the autoencoder .*latent\.json describes"):
        load_latent(ckpt)
    for bad, what in ((dict(rec, scale_factor=0.0), "scale_factor 0.0"), ({"scale_factor": 1.0}, "lacks"),
                      (dict(rec, compression=8), "disagree")):
        meta.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=what) as e:
            load_latent(ckpt)
        assert str(meta) in str(e.value)
    meta.unlink()
    with pytest.raises(FileNotFoundError, match="latent.json: not found"):
        load_latent(ckpt)
    with pytest.raises(ValueError, match="not finite and positive"):
        write_latent_json(ckpt, float("nan"), AE)


def test_pooled_condition_is_the_label_encoded_at_the_latent_size():
    """Area-pooling the pixel (or finer) one-hot condition gives encode_mask_resized at the latent size, so the
    latent UNet sees boundaries as fractions whichever size the condition was made at."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 10, (2, 1, 64, 128), generator=g)
    at_pixels = encode_mask_resized(label, 10, [32, 64])  # the image-size condition of a 32x64 image
    expect = encode_mask_resized(label, 10, [8, 16])
    assert torch.allclose(pool_condition(at_pixels, [8, 16]), expect, atol=1e-6)
    assert torch.allclose(pool_condition(encode_mask(label, 10), [8, 16]), expect, atol=1e-6)
    with pytest.raises(ValueError, match="smaller than the latent"):
        pool_condition(expect, [16, 32])


def test_latent_sampler_decodes_images_of_the_image_shape_per_sample(tmp_path):
    codec = load_latent(_saved_autoencoder(tmp_path))
    torch.manual_seed(0)
    unet = conditional_diffusion_unet(4, 10, channels=[8, 16], num_res_blocks=1).eval()
    inner = DiffusionSampler(diffusion_scheduler("ddim", 50), 2)
    assert latent_sampler(inner, None) is inner  # pixel diffusion: the sampler itself
    sampler = latent_sampler(inner, codec)
    assert isinstance(sampler, LatentSampler) and not inner.scheduler.clip_sample  # latents are not in [-1, 1]
    assert sampler.num_inference_steps == 2 and sampler.scheduler is inner.scheduler  # what a manifest records
    cond = encode_mask(torch.randint(0, 10, (3, 1, 64, 128)), 10)
    x = sampler(unet, sample_generators([1, 2, 3], "cpu"), (1, 64, 128), cond, "cpu")
    assert x.shape == (3, 1, 64, 128) and x.abs().max() <= 1.0
    one = sampler(unet, sample_generators([2], "cpu"), (1, 64, 128), cond[1:2], "cpu")
    assert torch.allclose(one, x[1:2], atol=1e-5)  # a sample does not depend on its batch
    with pytest.raises(ValueError, match=r"\[66, 128\] does not divide by 8"):
        sampler(unet, sample_generators([1], "cpu"), (1, 66, 128), None, "cpu")


def test_latent_trainer_learns_latents_and_pixel_mode_is_the_pixel_trainer(tmp_path):
    codec = load_latent(_saved_autoencoder(tmp_path))
    torch.manual_seed(0)
    unet = conditional_diffusion_unet(4, 10, channels=[8, 16], num_res_blocks=1)
    data = [{"image": torch.rand(2, 1, 64, 128) * 2 - 1, "cond": encode_mask(torch.randint(0, 10, (2, 1, 64, 128)), 10)}]
    tr = LatentDiffusionTrainer("cpu", 1, data, unet, torch.optim.Adam(unet.parameters()), diffusion_scheduler("ddpm", 50),
                                condition_channels=10, latent=codec)
    tr.run()
    assert tr.state.output["image"].shape == (2, 4, 16, 32) and torch.isfinite(tr.state.output["loss"])
    assert not any(p.requires_grad for p in codec.parameters())
    bad = [{"image": torch.zeros(2, 1, 60, 128)}]  # 15x32 latents: the UNet halves them once
    tr = LatentDiffusionTrainer("cpu", 1, bad, unet, torch.optim.Adam(unet.parameters()), diffusion_scheduler("ddpm", 50),
                                condition_channels=10, latent=codec)
    with pytest.raises(ValueError, match=r"image size \[60, 128\] does not divide by 8 .*f=4 and the latent UNet .*\[64, 128\]"):
        tr.run()


def test_latent_cache_draws_what_encode_draws_and_encodes_each_image_once(tmp_path):
    codec = load_latent(_saved_autoencoder(tmp_path))
    unet = conditional_diffusion_unet(4, 0, channels=[8, 16], num_res_blocks=1)
    images = torch.rand(3, 1, 64, 128) * 2 - 1

    def trainer(cache: int) -> LatentDiffusionTrainer:
        return LatentDiffusionTrainer("cpu", 1, [{"image": images}], unet, torch.optim.Adam(unet.parameters()),
                                      diffusion_scheduler("ddpm", 50), latent=codec, latent_cache=cache)

    plain, cached = trainer(0), trainer(8)
    for _ in range(2):  # first call: all misses; second: all hits, from the cache alone
        torch.manual_seed(1)
        want = plain._encode(images)
        torch.manual_seed(1)
        assert torch.allclose(cached._encode(images), want, atol=1e-5)
    assert (cached.cache_misses, cached.cache_hits) == (3, 3)
    torch.manual_seed(2)
    assert not torch.allclose(cached._encode(images), want)  # a fresh draw each time, not a frozen latent
    flipped = images.flip(-1)
    cached._encode(flipped[:1])  # another image (a flip): encoded, and the oldest entry beyond the bound goes
    assert cached.cache_misses == 4 and len(cached._moments) == 4
    small = trainer(2)
    torch.manual_seed(1)
    got = small._encode(images)  # a batch larger than the cache still gets its latents
    torch.manual_seed(1)
    assert torch.allclose(got, plain._encode(images), atol=1e-5) and len(small._moments) == 2
    with pytest.raises(ValueError, match="latent_cache must be >= 0"):
        trainer(-1)


def test_autoencoder_trainer_with_discriminator_and_no_download():
    torch.manual_seed(0)
    ae = autoencoder_kl(**AE)
    assert patch_discriminator(0.0) is None and perceptual_loss(None) is None
    with pytest.raises(FileNotFoundError, match="nowhere.pt: perceptual-loss weights not found"):
        perceptual_loss("nowhere.pt")
    disc = patch_discriminator(0.1, 1, channels=8, num_layers_d=2)
    before = [p.clone() for p in disc.parameters()]
    data = [{"image": torch.rand(2, 1, 32, 64) * 2 - 1}] * 2
    tr = AutoencoderTrainer("cpu", 1, data, ae, torch.optim.Adam(ae.parameters(), 1e-3), discriminator=disc,
                            d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3), adv_weight=0.1)
    tr.run()
    out = tr.state.output
    assert out["pred"].shape == (2, 1, 32, 64) and torch.isfinite(out["d_loss"]) and out["kl"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))  # the discriminator stepped
    with pytest.raises(ValueError, match="needs its optimizer"):
        AutoencoderTrainer("cpu", 1, data, ae, torch.optim.Adam(ae.parameters()), discriminator=disc)


@pytest.mark.slow
def test_latent_stages_through_the_bundle(phantom_dir, tmp_path):
    """train_autoencoder (1 epoch) -> model.pt + latent.json with a finite positive scale; a latent finetune
    (1 epoch, 16x32 latents of 64x128 bands); a latent synthesis writes N pairs at the output size."""
    runs = tmp_path / "runs"
    stage("train_autoencoder", dataset_dir=phantom_dir, output_dir=runs / "ae", max_epochs=1, ae_channels=AE["channels"],
          ae_crop_size=[32, 64], **{k: v for k, v in LATENT.items() if k not in ("channels", "num_res_blocks")})
    meta = json.loads((runs / "ae" / "latent.json").read_text())
    assert np.isfinite(meta["scale_factor"]) and meta["scale_factor"] > 0
    assert meta["compression"] == 4 and meta["latent_channels"] == 4 and meta["config"]["channels"] == AE["channels"]
    ae_state = torch.load(runs / "ae" / "model.pt", weights_only=True)
    assert "encoder.blocks.0.conv.weight" in ae_state
    latent = dict(LATENT, latent_ckpt=runs / "ae" / "model.pt")
    stage("finetune", dataset_dir=phantom_dir, output_dir=runs / "ft", max_epochs=1, pretrained_ckpt="null", **latent)
    ft = torch.load(runs / "ft" / "model.pt", weights_only=True)
    assert ft["conv_in.conv.weight"].shape[1] == 4 + 10 and ft["out.2.conv.weight"].shape[0] == 4  # latents + one-hot
    assert (runs / "ft" / "samples" / "epoch_0001.png").is_file()
    out = tmp_path / "synth"
    stage("synthesize", output_dir=out, dataset_dir=phantom_dir, label_datalist="datalist.json",
          image_ckpt=runs / "ft" / "model.pt", num_samples=3, sampler="ddim", num_inference_steps=2,
          output_size=[128, 256], **latent)
    images = sorted((out / "images").iterdir())
    assert len(images) == 3 and all(read_image(p).shape == (128, 256) for p in images)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["generation"]["checkpoint_sha256"]["latent"]


@pytest.mark.slow
def test_latent_ckpt_of_another_autoencoder_stops_with_the_file_named(phantom_dir, tmp_path):
    ckpt = _saved_autoencoder(tmp_path)
    meta = tmp_path / "latent.json"
    meta.write_text(json.dumps(dict(json.loads(meta.read_text()), scale_factor="big")))
    cmd = bundle_command(BUNDLE, stage_configs("pretrain"), dataset_dir=phantom_dir, output_dir=tmp_path / "pre",
                         max_epochs=1, latent_ckpt=ckpt, **LATENT)
    res = subprocess.run(cmd, env=bundle_env(BUNDLE_ENV), capture_output=True, text=True, timeout=180)
    lines = [l for l in (res.stdout + res.stderr).splitlines() if l.strip()]
    assert res.returncode != 0 and any(f"{meta}: scale_factor 'big'" in l for l in lines[-3:]), lines[-5:]


def test_check_properties_train_autoencoder(phantom_dir, tmp_path):
    """The autoencoder stage is a MONAI train workflow like the others (model-zoo properties), with no sample grid
    (a diffusion sampler) among its handlers and the latent scale after the checkpoint."""
    from monai.bundle import ConfigWorkflow

    from monai_oct.handlers.checkpoint import TrainingCheckpoint
    from monai_oct.handlers.latent import LatentScale
    from monai_oct.handlers.samples import SampleGrid

    w = ConfigWorkflow(config_file=[str(BUNDLE / "configs" / c) for c in stage_configs("train_autoencoder")],
                       workflow_type="train", logging_file=False, dataset_dir=str(phantom_dir), output_dir=str(tmp_path),
                       device="cpu", image_size=[32, 64], ae_crop_size=[16, 32], ae_channels=[8, 16, 16])
    w.initialize()
    assert w.check_properties() == []
    assert w.train_inferer is w.trainer.inferer
    handlers = w.parser.get_parsed_content("train#all_handlers")
    kinds = [type(h) for h in handlers]
    assert SampleGrid not in kinds and kinds.index(TrainingCheckpoint) < kinds.index(LatentScale)
    assert w.parser.get_parsed_content("discriminator") is None and w.parser.get_parsed_content("perceptual") is None


def test_autoencoder_crop_not_divisible_by_f_is_named():
    """A 30-row crop comes back 28 rows from an f=4 autoencoder; the trainer names the size and f instead of
    failing in the loss on mismatched shapes."""
    ae = autoencoder_kl(**AE)
    tr = AutoencoderTrainer("cpu", 1, [{"image": torch.zeros(2, 1, 30, 64)}], ae, torch.optim.Adam(ae.parameters()))
    with pytest.raises(ValueError, match=r"image size \[30, 64\] does not divide by 4 \(the autoencoder compresses by f=4: --ae_crop_size"):
        tr.run()
