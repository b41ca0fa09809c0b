"""Schedulers (monai_oct.schedulers) against references: MONAI's own step, an analytic Gaussian, per-sample seeds;
and the amp_dtype switch of the sampler and the trainer."""

from __future__ import annotations

import logging

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from monai_oct.core.seeding import sample_generators
from monai_oct.engines.amp import autocast_dtype
from monai_oct.engines.diffusion import DiffusionTrainer
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.schedulers import (PerSampleDDIMScheduler, RespacedDDPMScheduler, diffusion_scheduler,
                                  randn_per_sample)

MU, S = 0.3, 0.2  # the analytic data: every pixel ~ N(MU, S^2)


class GaussianEpsilon(nn.Module):
    """The exact epsilon-predictor of data ~ N(mu, s^2) per pixel: E[eps | x_t] in closed form."""

    def __init__(self, alphas_cumprod: torch.Tensor, mu: float = MU, s: float = S) -> None:
        super().__init__()
        self.ac, self.mu, self.s = alphas_cumprod.double(), mu, s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ac[t].view(-1, 1, 1, 1).to(x)
        return (x - a.sqrt() * self.mu) * (1 - a).sqrt() / (a * self.s**2 + 1 - a)


def _monai(kind: str, T: int = 100, pt: str = "v_prediction"):
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(T, "cosine", prediction_type=pt, clip_sample=True)


@pytest.mark.parametrize("pt", ["epsilon", "v_prediction", "sample"])
def test_full_chain_ddpm_step_equals_monai(pt):
    ours, ref = diffusion_scheduler("ddpm", 100, "cosine", pt), _monai("ddpm", 100, pt)
    assert isinstance(ours, RespacedDDPMScheduler) and isinstance(ours, DDPMScheduler)
    ours.set_timesteps(100)
    ref.set_timesteps(100)
    x, out = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    for t in (99, 50, 1, 0):
        a = ours.step(out, t, x, generator=torch.Generator().manual_seed(t))
        b = ref.step(out, t, x, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5), t
    # one generator per sample: sample i's noise is what its own generator gives for one sample
    gens = sample_generators([4, 5, 6])
    a = ours.step(out, 50, x, generator=gens)[0]
    for i, seed in enumerate([4, 5, 6]):
        b = ref.step(out[i:i + 1], 50, x[i:i + 1], generator=torch.Generator().manual_seed(seed))[0]
        assert torch.allclose(a[i:i + 1], b, atol=1e-5)


def test_respaced_step_differs_from_monai_and_uses_next_timestep():
    """MONAI's step on a 10-of-100 chain uses alphas_cumprod[t - 1]: ours goes to the next timestep."""
    ours, ref = diffusion_scheduler("ddpm", 100, "cosine", "epsilon"), _monai("ddpm", 100, "epsilon")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    ts = [int(t) for t in ours.timesteps]
    assert ours.next_timestep(ts[0]) == ts[1] and ours.next_timestep(0) == -1
    x, out = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    a = ours.step(out, ts[2], x, generator=torch.Generator().manual_seed(0))[0]
    b = ref.step(out, ts[2], x, generator=torch.Generator().manual_seed(0))[0]
    assert (a - b).abs().max() > 0.05


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_equals_monai(eta):
    ours, ref = diffusion_scheduler("ddim", 100, "cosine", "v_prediction"), _monai("ddim")
    assert isinstance(ours, PerSampleDDIMScheduler)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    x, out, gens = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), [1, 2, 3]
    for t in [int(t) for t in ref.timesteps]:
        a = ours.step(out, t, x, eta, generator=sample_generators(gens))
        for i, seed in enumerate(gens):
            b = ref.step(out[i:i + 1], t, x[i:i + 1], eta, generator=torch.Generator().manual_seed(seed))
            assert torch.allclose(a[0][i:i + 1], b[0], atol=1e-5) and torch.allclose(a[1][i:i + 1], b[1], atol=1e-5)
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        ours.step(out[:2], 50, x[:2], 0.5, generator=sample_generators(gens))


def _chain_moments(kind: str, sched, n: int, mu: float, s: float) -> tuple[float, float]:
    """Mean and std of the discrete n-step chain for N(mu, s^2) data, from the papers' formulas: with the exact
    epsilon every step is affine in x_t plus Gaussian noise, so the moments follow a scalar recursion."""
    ac = [float(a) for a in sched.alphas_cumprod.double()]
    T = len(ac)
    ts = [round((T - 1) * (1 - i / (n - 1))) if n > 1 else T - 1 for i in range(n)]  # linspace(T - 1, 0, n)
    m, v = 0.0, 1.0
    for i, t in enumerate(ts):
        a = ac[t]
        c = (1 - a) ** 0.5 / (a * s * s + 1 - a)  # eps* = c (x - sqrt(a) mu)
        p, q = (1 - (1 - a) ** 0.5 * c) / a**0.5, (1 - a) ** 0.5 * c * mu  # x0 = p x + q
        if kind == "ddim":  # DDIM (Song et al. eq. 12, eta 0), MONAI's previous timestep t - T // n
            prev = t - T // n
            a_s = ac[prev] if prev >= 0 else 1.0
            A, B, var = a_s**0.5 * p + (1 - a_s) ** 0.5 * c, a_s**0.5 * q - (1 - a_s) ** 0.5 * c * a**0.5 * mu, 0.0
        else:  # DDPM posterior of the respaced chain (Nichol & Dhariwal 2021), fixed_small variance
            a_s = ac[ts[i + 1]] if i + 1 < n else 1.0
            beta = 1 - a / a_s
            c0, ct = a_s**0.5 * beta / (1 - a), (1 - beta) ** 0.5 * (1 - a_s) / (1 - a)
            A, B, var = c0 * p + ct, c0 * q, (1 - a_s) / (1 - a) * beta if i + 1 < n else 0.0
        m, v = A * m + B, A * A * v + var
    return m, v**0.5


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_analytic_gaussian_is_recovered_with_50_steps(kind):
    """Sampling with the exact epsilon of N(mu, s^2) data via DDIM-50 / respaced DDPM-50 (8 x 32 x 32 = 8192
    pixels) gives the moments of the discrete chain (within sampling error), and these are mu and s up to the
    chain's discretisation bias (measured: DDIM-50 mean -0.012, std -3.5 %; DDPM-50 std -7 %; none at 1000 steps)."""
    mu, s = 0.5, 1.0
    sched = diffusion_scheduler(kind, 1000, "linear_beta", "epsilon", clip_sample=False)
    net = GaussianEpsilon(sched.alphas_cumprod, mu, s)
    x = DiffusionSampler(sched, 50)(net, sample_generators(range(8)), (1, 32, 32), device="cpu")
    m, sd = _chain_moments(kind, sched, 50, mu, s)
    assert abs(float(x.mean()) - m) < 0.035 and abs(float(x.std()) / sd - 1) < 0.03, (float(x.mean()), float(x.std()), m, sd)
    assert abs(m - mu) < 0.02 and abs(sd / s - 1) < (0.04 if kind == "ddim" else 0.08), (m, sd)
    assert abs(float(x.mean()) - mu) < 0.04 and abs(float(x.std()) / s - 1) < 0.1


def test_monai_ddpm_step_on_a_respaced_chain_misses_the_gaussian():
    """The bug RespacedDDPMScheduler fixes: MONAI's DDPM step with 50 of 1000 steps does not reach N(MU, S^2)."""
    ref = DDPMScheduler(1000, "linear_beta", prediction_type="epsilon", clip_sample=True)
    net = GaussianEpsilon(ref.alphas_cumprod)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 32, 32, generator=g)
    for t in ref.timesteps:
        x = ref.step(net(x, torch.full((8,), int(t))), int(t), x, generator=g)[0]
    assert abs(float(x.std()) / S - 1) > 0.5, float(x.std())


@pytest.mark.parametrize("kind,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_same_seed_same_bytes_and_no_dependence_on_batch_mates(kind, eta):
    sched = diffusion_scheduler(kind, 100, "cosine", "epsilon")
    net = GaussianEpsilon(sched.alphas_cumprod)  # element-wise: a batch changes no kernel, so bytes must match
    s = DiffusionSampler(sched, 10, eta=eta)
    batch = s(net, sample_generators([10, 11, 12]), (1, 16, 16), device="cpu")
    assert torch.equal(batch, s(net, sample_generators([10, 11, 12]), (1, 16, 16), device="cpu"))
    alone = s(net, sample_generators([11]), (1, 16, 16), device="cpu")
    other_mates = s(net, sample_generators([99, 11]), (1, 16, 16), device="cpu")
    assert torch.equal(batch[1], alone[0]) and torch.equal(batch[1], other_mates[1])
    assert not torch.equal(batch[0], batch[1])


def test_sampler_refuses_monai_schedulers_and_bad_settings():
    with pytest.raises(TypeError, match="diffusion_scheduler"):
        DiffusionSampler(_monai("ddpm"), 10)
    with pytest.raises(ValueError, match="eta=0.5 is a DDIM setting"):
        DiffusionSampler(diffusion_scheduler("ddpm", 100), 10, eta=0.5)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        DiffusionSampler(diffusion_scheduler("ddpm", 100), 0)
    with pytest.raises(ValueError, match="unknown amp_dtype 'float8'"):
        DiffusionSampler(diffusion_scheduler("ddim", 100), 2, amp_dtype="float8")
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn_per_sample((3, 1, 4, 4), sample_generators([0, 1]))


def test_autocast_dtype_names_and_alias(caplog):
    assert autocast_dtype("bfloat16", device="cpu") is torch.bfloat16 and autocast_dtype("bf16") is torch.bfloat16
    assert autocast_dtype(None, device="cpu") is None and autocast_dtype("null") is None
    assert autocast_dtype(None, amp=True, device="cuda:0") is torch.float16  # the alias: amp true on CUDA = float16
    assert autocast_dtype("bfloat16", amp=True, device="cuda:0") is torch.bfloat16  # amp_dtype wins
    with caplog.at_level(logging.WARNING):
        assert autocast_dtype(None, amp=True, device="cpu") is None
    assert "use --amp_dtype bfloat16" in caplog.text
    with pytest.raises(ValueError, match="amp_dtype float16 needs a CUDA device, got cpu"):
        autocast_dtype("float16", device="cpu")


def _tiny_net():
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 2, channels=(8, 16), num_res_blocks=1)
    with torch.no_grad():  # MONAI zero-initialises the output convs: an untrained UNet would predict exact zeros
        for prm in net.parameters():
            if not prm.any():
                prm.normal_(0, 0.1)
    return net


def test_amp_dtype_reaches_sampler_and_trainer_on_cpu():
    net = _tiny_net().eval()
    seen = []
    hook = net.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    cond = torch.rand(2, 2, 8, 8) * 2 - 1
    out = DiffusionSampler(diffusion_scheduler("ddim", 100), 2, amp_dtype="bfloat16")(
        net, sample_generators([0, 1]), (1, 8, 8), cond)
    assert set(seen) == {torch.bfloat16} and out.dtype == torch.float32
    with pytest.raises(ValueError, match="float16 needs a CUDA device, got cpu"):
        DiffusionSampler(diffusion_scheduler("ddim", 100), 2, amp_dtype="float16")(
            net, sample_generators([0, 1]), (1, 8, 8), cond)
    hook.remove()
    batch = {"image": torch.rand(2, 1, 8, 8) * 2 - 1, "cond": cond}
    opt = torch.optim.SGD(net.parameters(), 0.0)
    tr = DiffusionTrainer("cpu", 1, [batch], net, opt, diffusion_scheduler("ddpm", 100), 2, amp_dtype="bfloat16")
    assert tr.amp and tr.amp_kwargs["dtype"] is torch.bfloat16 and tr.scaler is None  # bf16: no GradScaler
    seen.clear()
    net.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    tr.run()
    assert seen == [torch.bfloat16]
    with pytest.raises(ValueError, match="float16 needs a CUDA device, got cpu"):
        DiffusionTrainer("cpu", 1, [batch], net, opt, diffusion_scheduler("ddpm", 100), 2, amp_dtype="float16")
    assert not DiffusionTrainer("cpu", 1, [batch], net, opt, diffusion_scheduler("ddpm", 100), 2, amp=True).amp


class _SeedRecorder:
    """A sampler stand-in that records the first draw of every generator it is given."""

    def __init__(self):
        self.first = []

    def __call__(self, network, generators, shape, condition=None, device=None):
        self.first.append([float(torch.randn(1, generator=g)) for g in generators])
        return torch.zeros((len(generators), *shape))


def test_sample_grid_seeds_are_per_sample_streams_not_seed_plus_i(tmp_path):
    """SampleGrid with seeds 0 and 1 must not share samples (with seed + i they shared all but one)."""
    from types import SimpleNamespace

    from monai_oct.core.seeding import sample_seeds
    from monai_oct.handlers.samples import SampleGrid

    net = nn.Linear(1, 1)
    rec = _SeedRecorder()
    for seed in (0, 1):
        SampleGrid(net, rec, (1, 4, 4), tmp_path / str(seed), num_samples=3, seed=seed).write(
            SimpleNamespace(state=SimpleNamespace(epoch=1)))
    expect = [[float(torch.randn(1, generator=g)) for g in sample_generators(sample_seeds(s, range(3)))] for s in (0, 1)]
    assert rec.first == expect
    assert not set(rec.first[0]) & set(rec.first[1])


def test_bundle_stage_with_amp_dtype_bfloat16_on_cpu(phantom_dir, tmp_path):
    """--amp_dtype bfloat16 reaches the trainer and the grid sampler of a stage on CPU; float16 stops it, named."""
    import subprocess

    from conftest import run_stage

    tiny = dict(image_size=[16, 32], band_height=48, channels=[8, 16], num_res_blocks=1, num_train_timesteps=20,
                batch_size=4, device="cpu", progress=False, sample_steps=2, num_sample_images=2, num_threads=1)
    log = run_stage("pretrain", dataset_dir=phantom_dir, output_dir=tmp_path / "pre", max_epochs=1, sample_interval=1,
                    amp_dtype="bfloat16", **tiny)
    assert log.count("autocast bfloat16 on cpu") >= 2, log[-3000:]  # the trainer and the sample-grid sampler
    assert (tmp_path / "pre" / "model.pt").is_file() and (tmp_path / "pre" / "samples" / "epoch_0001.png").is_file()
    from monai_oct.bundle import run_bundle
    from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE

    with pytest.raises(subprocess.CalledProcessError) as e:
        run_bundle(OCT_DDPM_BUNDLE, ["common.yaml", "pretrain.yaml"], in_process=False, env=BUNDLE_ENV, timeout=180,
                   dataset_dir=str(phantom_dir), output_dir=str(tmp_path / "fp16"), max_epochs=1, amp_dtype="float16",
                   **tiny)
    assert "amp_dtype float16 needs a CUDA device, got cpu" in e.value.stdout + e.value.stderr
    assert not (tmp_path / "fp16" / "model.pt").exists()
