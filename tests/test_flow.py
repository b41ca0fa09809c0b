"""Rectified flow (--prediction_type flow, monai_oct.schedulers.flow): Euler is MONAI's RFlowScheduler.step, the
analytic Gaussian is reached (Heun at 10 steps closer than Euler at 10), samples do not depend on their batch mates,
the trainer regresses MONAI's velocity and overfits a fixed batch, flow and diffusion samplers do not mix; and the
bundle trains a flow model and synthesizes from it with --sampler euler."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.schedulers import RFlowScheduler
from ignite.engine import Events
from torch import nn

from monai_oct.core.seeding import sample_generators
from monai_oct.engines.diffusion import DiffusionTrainer, diffusion_target
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.checkpoint import write_model_info
from monai_oct.schedulers import SCHEDULERS, FlowEulerScheduler, FlowHeunScheduler, diffusion_scheduler

M, S, T = 0.5, 0.5, 1000  # the analytic data: every pixel ~ N(M, S^2)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for these tiny networks: conftest's two threads spin against each other on a shared CPU
    (measured: the 30-iteration training below takes 64 s with 2 threads beside another job, 0.9 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class GaussianVelocity(nn.Module):
    """The exact velocity of MONAI's linear path for data ~ N(m, s^2) per pixel. With u = t/T,
    x_u = (1 - u) x0 + u noise ~ N((1 - u) m, var), var = (1 - u)^2 s^2 + u^2, and r = x_u - (1 - u) m:
    E[x0 | x_u] = m + (1 - u) s^2 / var * r, E[noise | x_u] = u / var * r, v = E[x0 | x_u] - E[noise | x_u]
    (float64). Its ODE maps the noise z at u = 1 to m + s z at u = 0. Counts its calls (the NFE)."""

    def __init__(self, m: float = M, s: float = S, num_train_timesteps: int = T) -> None:
        super().__init__()
        self.m, self.s, self.T, self.calls = m, s, num_train_timesteps, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        u, xd = (t.double() / self.T).view(-1, *[1] * (x.ndim - 1)), x.double()
        var = (1 - u) ** 2 * self.s**2 + u**2
        r = xd - (1 - u) * self.m
        return (self.m + ((1 - u) * self.s**2 - u) / var * r).to(x.dtype)


def _flow(kind: str, **kwargs):
    return diffusion_scheduler(kind, T, prediction_type="flow", clip_sample=False, **kwargs)


@pytest.mark.parametrize("transform", [False, True])
def test_euler_is_monai_rflow_step_for_step(transform):
    """The euler sampler's timesteps and every (x_next, x0) equal MONAI's RFlowScheduler (2D, the same transform)
    stepped with an explicit next timestep (0 after the last); the step follows the chain by itself."""
    ours = _flow("euler", flow_timestep_transform=transform)
    ref = RFlowScheduler(T, use_discrete_timesteps=True, use_timestep_transform=transform, base_img_size_numel=64 * 64,
                         spatial_dim=2)
    for s in (ours, ref):
        s.set_timesteps(10, input_img_size_numel=64 * 128)
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert (ours.timesteps[1] != 900) == transform  # the 2D shift moved the timesteps towards noise
    net, ts = GaussianVelocity(), [int(t) for t in ref.timesteps] + [0]
    x_a = x_b = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t, t_next in zip(ts[:-1], ts[1:]):
        tt = torch.full((3,), t)
        (x_a, x0_a), (x_b, x0_b) = ours.step(net(x_a, tt), t, x_a), ref.step(net(x_b, tt), t, x_b, t_next)
        assert torch.equal(x_a, x_b) and torch.equal(x0_a, x0_b), t
    assert x_a.abs().max() > 0.1


def test_velocity_target_is_what_the_euler_step_integrates():
    """The trainer's target for flow is x0 - noise, and with it MONAI's x0 prediction (and an Euler step to t = 0)
    from add_noise's x_t gives back x0: the sign of the target is the one the sampler integrates."""
    sched = _flow("euler")
    sched.set_timesteps(10)
    x0, noise = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4)
    t = torch.tensor([300, 700])
    target = diffusion_target(sched, x0, noise, t)
    assert torch.equal(target, x0 - noise)
    x_t = sched.add_noise(x0, noise, t)
    for i in range(2):
        _, x0_hat = sched.step(target[i:i + 1], int(t[i]), x_t[i:i + 1], next_timestep=0)
        assert torch.allclose(x0_hat, x0[i:i + 1], atol=1e-6)


def _moment_error(kind: str, steps: int, n: int = 256) -> tuple[float, int]:
    """|mean - M| + |std - S| of ``n`` 8x8 samples of the exact velocity, and the number of network calls."""
    net = GaussianVelocity()
    x = DiffusionSampler(_flow(kind), steps)(net, sample_generators(range(n)), (1, 8, 8), device="cpu")
    return abs(float(x.double().mean()) - M) + abs(float(x.double().std()) - S), net.calls


def test_analytic_gaussian_euler_50_heun_10_and_heun_beats_euler():
    """N(0, 1) noise mapped by the exact velocity of N(M, S^2) data: Euler-50 and Heun-10 land within 0.025 of
    (M, S) (mean + std; the 256 x 64 noise values themselves are 0.003 off); Heun-10 is at least 3x closer than
    Euler-10 (measured 0.012 vs 0.072). Heun's NFE is 2K - 1 (the last step is Euler's)."""
    err_e50, nfe_e50 = _moment_error("euler", 50)
    err_h10, nfe_h10 = _moment_error("heun", 10)
    err_e10, nfe_e10 = _moment_error("euler", 10)
    assert (nfe_e50, nfe_h10, nfe_e10) == (50, 19, 10)
    assert err_e50 < 0.025 and err_h10 < 0.025, (err_e50, err_h10)
    assert err_h10 * 3 < err_e10, (err_h10, err_e10)


@pytest.mark.parametrize("kind", ["euler", "heun"])
def test_same_samples_whatever_the_batch(kind):
    """Sample i of a batch of 4 equals sample i drawn alone, and a rerun gives the same bytes (deterministic);
    with clip_sample on, samples stay in [-1, 1]."""
    net = GaussianVelocity(m=0.0, s=2.0)  # data beyond [-1, 1]: clipping acts
    sampler = DiffusionSampler(diffusion_scheduler(kind, T, prediction_type="flow"), 4)
    batch = sampler(net, sample_generators(range(4)), (1, 6, 6), device="cpu")
    alone = torch.cat([sampler(net, sample_generators([i]), (1, 6, 6), device="cpu") for i in range(4)])
    assert torch.equal(batch, alone)
    assert torch.equal(batch, sampler(net, sample_generators(range(4)), (1, 6, 6), device="cpu"))
    assert batch.abs().max() <= 1.0 and batch.abs().max() > 0.9


def test_heun_chain_and_out_of_order_step_is_named():
    """Heun's timesteps list each evaluation (t_0, t_1, t_1, ..., t_{K-1}, t_{K-1}); a step off that order stops."""
    heun = _flow("heun")
    heun.set_timesteps(4)
    assert heun.timesteps.tolist() == [1000, 750, 750, 500, 500, 250, 250]
    x = torch.zeros(1, 1, 2, 2)
    heun.step(x, 1000, x)
    with pytest.raises(ValueError, match="timestep 500, expected 750"):
        heun.step(x, 500, x)


def test_flow_and_diffusion_samplers_do_not_mix(tmp_path):
    """A flow network with a diffusion sampler, a v-model with a flow sampler (factory), and a checkpoint whose
    model.json records another prediction type than the sampler's (DiffusionSampler) stop naming both."""
    assert SCHEDULERS["euler"] is FlowEulerScheduler and SCHEDULERS["heun"] is FlowHeunScheduler
    with pytest.raises(ValueError, match=r"sampler 'ddim' is a diffusion sampler .* prediction_type 'flow'"):
        diffusion_scheduler("ddim", T, prediction_type="flow")
    with pytest.raises(ValueError, match=r"sampler 'heun' is a flow sampler .* prediction_type 'v_prediction'"):
        diffusion_scheduler("heun", T, prediction_type="v_prediction")
    with pytest.raises(ValueError, match="unknown flow_timesteps"):
        diffusion_scheduler("euler", T, prediction_type="flow", flow_timesteps="normal")
    ckpt = tmp_path / "model.pt"
    write_model_info(ckpt, {"prediction_type": "flow"})
    with pytest.raises(ValueError, match=r"model.pt: trained with prediction_type 'flow' .* sampler 'ddpm' "
                                         r"\(RespacedDDPMScheduler\) is set up for prediction_type 'epsilon'.*euler\|heun"):
        DiffusionSampler(diffusion_scheduler("ddpm", T), 5, checkpoint=str(ckpt))
    DiffusionSampler(_flow("heun"), 5, checkpoint=str(ckpt))  # matches
    write_model_info(ckpt, {"prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match=r"trained with prediction_type 'v_prediction' .* sampler 'euler'"):
        DiffusionSampler(_flow("euler"), 5, checkpoint=str(ckpt))
    DiffusionSampler(_flow("euler"), 5, checkpoint=str(tmp_path / "other" / "model.pt"))  # no model.json: not checked


def test_trainer_flow_overfits_a_fixed_batch_with_condition_and_dropout():
    """30 iterations of a tiny conditional UNet with prediction_type flow (logit-normal timesteps, the 2D shift,
    condition dropout) on one fixed batch: every loss finite, the last 5 at most 3/4 of the first 5 (fresh noise and
    t every iteration); the trainer draws t with the scheduler's sample_timesteps (floats in [0, T) with the shift)."""
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 2, channels=[8, 8], num_res_blocks=1)
    sched = diffusion_scheduler("euler", 100, prediction_type="flow", flow_timesteps="logit-normal",
                                flow_timestep_transform=True, flow_base_numel=4 * 4)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, "cond": torch.rand(4, 2, 8, 8, generator=g)}
    drawn = []
    sample_timesteps = sched.sample_timesteps
    sched.sample_timesteps = lambda x: drawn.append(sample_timesteps(x)) or drawn[-1]
    trainer = DiffusionTrainer("cpu", 30, [batch], net, torch.optim.Adam(net.parameters(), 3e-3), sched,
                               condition_channels=2, prediction_type="flow", p_uncond=0.2)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5]), losses  # measured 0.61
    t = torch.cat(drawn)
    assert len(drawn) == 30 and t.dtype.is_floating_point and 0 <= t.min() and t.max() < 100


def test_trainer_flow_under_bfloat16_autocast():
    """Flow training under bf16 autocast on the CPU: the forward runs in bfloat16, the loss (float32) is finite."""
    from monai_oct.networks.diffusion import conditional_diffusion_unet

    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 0, channels=[8, 8], num_res_blocks=1)
    batch = {"image": torch.rand(2, 1, 8, 8) * 2 - 1}
    trainer = DiffusionTrainer("cpu", 2, [batch], net, torch.optim.Adam(net.parameters(), 1e-3),
                               diffusion_scheduler("euler", 100, prediction_type="flow"), amp_dtype="bfloat16")
    trainer.run()
    assert trainer.state.output["pred"].dtype == torch.bfloat16 and torch.isfinite(trainer.state.output["loss"])


@pytest.mark.slow
def test_bundle_pretrain_flow_then_synthesize_euler(phantom_dir, tmp_path):
    """pretrain --prediction_type flow (tiny, 1 epoch) writes model.json recording it and sample grids (euler);
    synthesize --sampler euler --num_inference_steps 3 from it writes the pairs; the default ddpm sampler on that
    checkpoint stops naming both."""
    import subprocess

    from conftest import BUNDLE_ENV, OCT_DDPM_BUNDLE, run_stage
    from test_oct_ddpm_bundle import TINY, check_synthetic

    from monai_oct.bundle import run_bundle, stage_configs

    tiny = dict(TINY, prediction_type="flow", max_epochs=1)
    run_stage("pretrain", output_dir=tmp_path / "pre", dataset_dir=phantom_dir, **tiny)
    info = json.loads((tmp_path / "pre" / "model.json").read_text())
    assert info["prediction_type"] == "flow" and info["num_train_timesteps"] == TINY["num_train_timesteps"]
    assert any((tmp_path / "pre" / "samples").glob("*.png"))
    ckpt = tmp_path / "pre" / "model.pt"
    out = tmp_path / "synth"
    # stage 1's UNet (an all-zero condition of the same channels) stands in for stage 3's
    run_stage("synthesize", output_dir=out, dataset_dir=phantom_dir, label_datalist="datalist.json", num_samples=2,
              sampler="euler", num_inference_steps=3, image_ckpt=ckpt, **tiny)
    gen = check_synthetic(out, 2, (16, 32))["generation"]
    assert gen["sampler"] == "FlowEulerScheduler" and gen["prediction_type"] == "flow", gen
    assert gen["config"]["flow_timestep_transform"] is False and gen["config"]["flow_base_numel"] == 4096, gen
    with pytest.raises(subprocess.CalledProcessError) as err:  # TINY's v_prediction and the default ddpm sampler
        run_bundle(OCT_DDPM_BUNDLE, stage_configs("synthesize"), in_process=False, env=BUNDLE_ENV, timeout=120,
                   output_dir=tmp_path / "synth2", dataset_dir=phantom_dir, label_datalist="datalist.json",
                   num_samples=1, num_inference_steps=3, image_ckpt=ckpt, **TINY)
    last = (err.value.stderr or "").strip().splitlines()[-1]
    assert "trained with prediction_type 'flow'" in last and "'v_prediction'" in last and "euler|heun" in last, last
