"""The VQ-GAN autoencoder option (issue 17): MONAI's VQVAE for any band count, its latent codec, trainer, k-means
codebook initialisation and record, at tiny sizes (32x32, 3 and 16 bands)."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events

from monai_oct.core.io import DataError
from monai_oct.engines.autoencoder import AutoencoderTrainer, epoch_metrics, kmeans_codebook_init, patch_discriminator
from monai_oct.handlers.checkpoint import TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.networks.autoencoder import (autoencoder_kl, autoencoder_vq, build_autoencoder, compression, load_latent,
                                            write_latent_json)
from monai_oct.networks.codebook import kmeans, set_codebook

from conftest import run_stage as stage

VQ = dict(kind="vq", image_channels=3, channels=[8, 16, 16], latent_channels=4, num_res_blocks=1, num_embeddings=16)


def _images(c: int, n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


def _clusters(n: int = 300, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around 3 well separated centres (spread 0.1, centres ~10 apart) and the centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[10.0] * dim, [-10.0] * dim, [10.0, -10.0] * (dim // 2)])
    points = centres[torch.arange(n) % 3] + 0.1 * torch.randn(n, dim, generator=g)
    return points, centres


def _match(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest distance from a row of ``a`` to its nearest row of ``b``."""
    return float(torch.cdist(a, b).min(1).values.max())


@pytest.mark.parametrize("bands", [3, 16])
@pytest.mark.parametrize("channels,f", [([8, 16, 16], 4), ([8, 16, 16, 16], 8)])
def test_vq_shapes_and_compression(bands, channels, f):
    torch.manual_seed(0)
    net = build_autoencoder("vq", bands, channels, latent_channels=4, num_embeddings=16)
    assert compression(channels) == f
    x = _images(bands)
    z = net.encode_stage_2_inputs(x)
    assert z.shape == (2, 4, 32 // f, 32 // f)
    recon, vq = net(x)
    assert recon.shape == x.shape and vq.ndim == 0 and torch.isfinite(vq)
    # the same widths give the same compression for the KL autoencoder
    assert autoencoder_kl(bands, channels, 4).encode_stage_2_inputs(x).shape == z.shape
    with pytest.raises(ValueError, match="autoencoder kind 'vqgan' is not one of"):
        build_autoencoder("vqgan")


def _saved_vq(folder, **config):
    torch.manual_seed(0)
    cfg = dict(VQ, **config)
    net = build_autoencoder(**{k: v for k, v in cfg.items()})
    ckpt = folder / "model.pt"
    torch.save(net.state_dict(), ckpt)
    write_latent_json(ckpt, 0.5, dict(cfg, crop_size=[32, 32]))
    return ckpt, net


def test_latent_codec_encodes_quantized_latents_and_decodes(tmp_path):
    ckpt, net = _saved_vq(tmp_path, image_channels=16)
    codec = load_latent(ckpt)
    assert codec.kind == "vq" and codec.latent_channels == 4 and codec.compression == 4 and codec.scale_factor == 0.5
    assert not any(p.requires_grad for p in codec.parameters())
    before = codec.autoencoder.quantizer.quantizer.embedding.weight.clone()
    x = _images(16)
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8)
    # every latent pixel is a codebook vector (scaled): the quantized latent, continuous values
    book = before * 0.5
    assert _match(z.movedim(1, -1).reshape(-1, 4), book) < 1e-3  # (the straight-through sum rounds)
    mu, sigma = codec.encode_moments(x)  # what the latent trainer's cache keeps: deterministic
    assert torch.equal(sigma, torch.zeros_like(mu)) and torch.allclose(codec.sample_latents(mu, sigma), z)
    y = codec.decode(z)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    net.eval()
    with torch.no_grad():
        assert torch.allclose(y, net.decode_stage_2_outputs(z / 0.5).clamp(-1, 1), atol=1e-6)
        # a latent off the codebook (a diffusion sample) is snapped to its nearest codes before decoding
        assert torch.allclose(codec.decode(z + 1e-3), y, atol=1e-6)
    assert torch.equal(codec.autoencoder.quantizer.quantizer.embedding.weight, before)  # eval: no EMA update


def test_record_round_trip_and_old_kl_record(tmp_path):
    ckpt, net = _saved_vq(tmp_path)
    meta = tmp_path / "latent.json"
    rec = json.loads(meta.read_text())
    assert rec["kind"] == "vq" and rec["config"]["kind"] == "vq" and rec["config"]["num_embeddings"] == 16
    assert rec["config"]["codebook_decay"] == 0.99 and rec["compression"] == 4
    codec = load_latent(ckpt)
    net.eval()
    x = _images(3)
    with torch.no_grad():
        assert torch.allclose(codec.decode(codec.encode(x)), net(x)[0].clamp(-1, 1), atol=1e-5)
    for bad, what in ((dict(rec, kind="gan"), "kind 'gan'"), (dict(rec, kind="kl"), "disagrees"),
                      (dict(rec, config={k: v for k, v in rec["config"].items() if k != "num_embeddings"}),
                       r"lacks \['config.num_embeddings'\]")):
        meta.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=what) as e:
            load_latent(ckpt)
        assert str(meta) in str(e.value)
    # a VQ-VAE's weights under a record that says 64 codes: the file and the kind are named
    meta.write_text(json.dumps(dict(rec, config=dict(rec["config"], num_embeddings=64))))
    with pytest.raises(DataError, match=r"model\.pt: does not fit the autoencoder .*latent\.json describes \(kind vq"):
        load_latent(ckpt)
    # a record written before kinds existed (no "kind" anywhere) is a KL autoencoder's
    torch.manual_seed(0)
    kl = tmp_path / "kl"
    kl.mkdir()
    torch.save(autoencoder_kl(1, [8, 16, 16], 4, 1).state_dict(), kl / "model.pt")
    (kl / "latent.json").write_text(json.dumps({"scale_factor": 1.0, "latent_channels": 4, "compression": 4, "config": {
        "image_channels": 1, "channels": [8, 16, 16], "latent_channels": 4, "num_res_blocks": 1}}))
    old = load_latent(kl / "model.pt")
    assert old.kind == "kl" and old.encode(_images(1)).shape == (2, 4, 8, 8)
    # a KL record does not carry the bundle's codebook settings
    write_latent_json(kl / "model.pt", 1.0, dict(VQ, kind="kl", image_channels=1))
    assert "num_embeddings" not in json.loads((kl / "latent.json").read_text())["config"]
    assert load_latent(kl / "model.pt").kind == "kl"


def test_vq_trainer_loss_falls_and_logs_perplexity_per_epoch(tmp_path):
    torch.manual_seed(0)
    net = autoencoder_vq(16, [8, 16, 16], 4, 1, num_embeddings=16)
    data = [{"image": _images(16, n=4)}]  # one fixed batch
    log = tmp_path / "training_log.jsonl"
    losses = []
    tr = AutoencoderTrainer("cpu", 4, data, net, torch.optim.Adam(net.parameters(), 3e-3),
                            train_handlers=[TrainingLog(log)])
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    tr.run()
    out = tr.state.output
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert "kl" not in out and out["vq"] >= 0 and 1.0 <= float(out["perplexity"]) <= 16
    epochs = [json.loads(l) for l in log.read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all({"recon_l1", "codebook_perplexity", "vq_loss"} <= set(e) for e in epochs)
    assert epochs[-1]["recon_l1"] == pytest.approx(float(out["l1"]))
    assert set(epoch_metrics("kl")) == {"recon_l1"}


def test_vq_gan_steps_the_discriminator():
    torch.manual_seed(0)
    net = autoencoder_vq(3, [8, 16, 16], 4, 1, num_embeddings=16)
    disc = patch_discriminator(0.1, 3, channels=8, num_layers_d=2)
    before = [p.clone() for p in disc.parameters()]
    tr = AutoencoderTrainer("cpu", 1, [{"image": _images(3)}] * 2, net, torch.optim.Adam(net.parameters(), 1e-3),
                            discriminator=disc, d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3), adv_weight=0.1)
    tr.run()
    assert torch.isfinite(tr.state.output["d_loss"]) and torch.isfinite(tr.state.output["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, disc.parameters()))


def test_kmeans_finds_the_cluster_centres():
    points, centres = _clusters()
    c, counts = kmeans(points, 3, iterations=5, generator=torch.Generator().manual_seed(0))
    assert _match(c, centres) < 0.05 and _match(centres, c) < 0.05  # one centroid at every centre
    assert counts.tolist() == [100.0, 100.0, 100.0]
    # more codes than clusters: every centroid inside a cluster, every cluster has one
    c8, counts8 = kmeans(points, 8, iterations=5, generator=torch.Generator().manual_seed(1))
    assert _match(c8, centres) < 0.5 and _match(centres, c8) < 0.5 and counts8.sum() == 300
    again = kmeans(points, 8, iterations=5, generator=torch.Generator().manual_seed(1))[0]
    assert torch.equal(c8, again)  # seeded
    with pytest.raises(ValueError, match="k >= 1"):
        kmeans(points, 0)


def test_kmeans_codebook_init_puts_codes_at_the_encoder_output_clusters_and_raises_perplexity():
    """The codebook of a VQ-VAE whose encoder outputs 3 well separated clusters: random (MONAI's N(0, 1)) codes
    leave most unused; after k-means init each cluster has its own code, the EMA update of a training forward
    keeps them there (its buffers were reset with the codes) and the perplexity is ~3."""
    points, centres = _clusters(n=3 * 64)
    # "images" that an identity encoder turns into (B, D, 8, 8) latents, 3 clusters interleaved over the pixels
    latents = points.reshape(3, 64, 4).movedim(-1, 1).reshape(3, 4, 8, 8)
    torch.manual_seed(0)
    net = autoencoder_vq(1, [8, 16, 16], latent_channels=4, num_embeddings=3, codebook_decay=0.9)
    net.encode = lambda images: images  # the synthetic encoder output
    q = net.quantizer
    q.eval()
    q(latents)
    random_perplexity = float(q.perplexity)
    book = kmeans_codebook_init(net, [{"image": latents[:2]}, {"image": latents[2:]}], num_batches=2, iterations=5,
                                generator=torch.Generator().manual_seed(0))
    weight = q.quantizer.embedding.weight
    assert torch.equal(weight, book) and _match(weight, centres) < 0.05 and _match(centres, weight) < 0.05
    q(latents)
    assert float(q.perplexity) == pytest.approx(3.0, abs=1e-3) and random_perplexity < 2.0
    q.train()
    q(latents)  # an EMA update on the same outputs: the codes stay at the centres
    assert _match(q.quantizer.embedding.weight, centres) < 0.05 and _match(centres, q.quantizer.embedding.weight) < 0.05
    with pytest.raises(ValueError, match="do not fit the codebook"):
        set_codebook(net, torch.zeros(4, 4))


def test_trainer_kmeans_init_every_epoch_and_only_for_vq():
    data = [{"image": _images(3, n=2, seed=s)} for s in range(2)]

    def run(kmeans_init: bool) -> tuple[AutoencoderTrainer, list]:
        torch.manual_seed(0)
        net = autoencoder_vq(3, [8, 16, 16], 4, 1, num_embeddings=16)
        tr = AutoencoderTrainer("cpu", 2, data, net, torch.optim.Adam(net.parameters(), 1e-3), kmeans_init=kmeans_init,
                                kmeans_batches=2)
        per_epoch = []
        tr.add_event_handler(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(e.state.metrics["codebook_perplexity"]))
        tr.run()
        return tr, per_epoch

    _, plain = run(False)
    _, init = run(True)
    assert min(init) > max(plain) and min(init) > 2.0, (init, plain)
    kl = autoencoder_kl(3, [8, 16, 16], 4)
    with pytest.raises(ValueError, match="kmeans_init needs a VQ-VAE"):
        AutoencoderTrainer("cpu", 1, data, kl, torch.optim.Adam(kl.parameters()), kmeans_init=True)


def test_ema_copies_the_codebook_instead_of_averaging_it():
    """k-means re-sets the codebook with its codes in a new order; an average of old and new codes would be
    neither, so the EMA model copies parameters that have no gradient (and keeps averaging the rest)."""
    torch.manual_seed(0)
    net = autoencoder_vq(3, [8, 16, 16], 4, 1, num_embeddings=16)
    ema = EMA(net, decay=0.9, warmup=False)
    tr = AutoencoderTrainer("cpu", 1, [{"image": _images(3)}], net, torch.optim.Adam(net.parameters(), 1e-2),
                            train_handlers=[ema])
    set_codebook(net, torch.randn(16, 4) + 5.0)
    tr.run()
    book, ema_book = net.quantizer.quantizer.embedding.weight, ema.ema_model.quantizer.quantizer.embedding.weight
    assert torch.equal(ema_book, book)
    conv, ema_conv = next(net.encoder.parameters()), next(ema.ema_model.encoder.parameters())
    assert not torch.equal(conv, ema_conv)  # trained weights are still averaged


@pytest.mark.slow
def test_vq_autoencoder_stage_through_the_bundle(phantom_dir, tmp_path):
    """train_autoencoder --autoencoder_kind vq --kmeans_init true: latent.json says vq, the log has the epoch's
    perplexity and reconstruction error, and --latent_ckpt loads it."""
    out = tmp_path / "ae"
    stage("train_autoencoder", dataset_dir=phantom_dir, output_dir=out, max_epochs=2, image_size=[32, 64],
          ae_channels=[8, 16, 16], ae_crop_size=[32, 32], batch_size=4, autoencoder_kind="vq", num_embeddings=16,
          kmeans_init=True, kmeans_batches=2, device="cpu", progress=False, num_threads=1)
    meta = json.loads((out / "latent.json").read_text())
    assert meta["kind"] == "vq" and meta["config"]["num_embeddings"] == 16 and meta["config"]["kmeans_init"] is True
    epochs = [json.loads(l) for l in (out / "training_log.jsonl").read_text().splitlines() if '"epoch"' in l]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    assert len(epochs) == 2 and all(e["codebook_perplexity"] > 1.0 and e["recon_l1"] > 0 for e in epochs)
    codec = load_latent(out / "model.pt")
    assert codec.kind == "vq" and codec.encode(torch.zeros(1, 1, 32, 64)).shape == (1, 4, 8, 16)


def test_latent_diffusion_runs_unchanged_on_a_vq_autoencoder(tmp_path):
    """The latent trainer (with its posterior cache) and sampler take a VQ codec as they take a KL one."""
    from monai_oct.core.seeding import sample_generators
    from monai_oct.engines.latent import LatentDiffusionTrainer, latent_sampler
    from monai_oct.engines.sampler import DiffusionSampler
    from monai_oct.networks.diffusion import conditional_diffusion_unet
    from monai_oct.schedulers import diffusion_scheduler

    codec = load_latent(_saved_vq(tmp_path, image_channels=16)[0])
    torch.manual_seed(0)
    unet = conditional_diffusion_unet(4, 0, channels=[8, 16], num_res_blocks=1)
    images = _images(16, n=2)
    tr = LatentDiffusionTrainer("cpu", 2, [{"image": images}], unet, torch.optim.Adam(unet.parameters()),
                                diffusion_scheduler("ddpm", 50), latent=codec, latent_cache=8)
    tr.run()
    assert tr.state.output["image"].shape == (2, 4, 8, 8) and torch.isfinite(tr.state.output["loss"])
    assert (tr.cache_misses, tr.cache_hits) == (2, 2) and torch.allclose(tr._encode(images), codec.encode(images), atol=1e-5)
    sampler = latent_sampler(DiffusionSampler(diffusion_scheduler("ddim", 50), 2), codec)
    x = sampler(unet.eval(), sample_generators([1, 2], "cpu"), (16, 32, 32), None, "cpu")
    assert x.shape == (2, 16, 32, 32) and x.abs().max() <= 1.0
