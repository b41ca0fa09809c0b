"""DPM-Solver++ multistep (monai_oct.schedulers.dpm_solver) against references: order 1 is MONAI's DDIM step for step,
the analytic Gaussian (exact ODE map known) is reached more closely than by DDIM, samples do not depend on their batch
mates, bad input is named; and a tiny synthesis through the bundle with --sampler dpmpp2m."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from monai_oct.core.seeding import sample_generators
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.schedulers import SCHEDULERS, diffusion_scheduler
from monai_oct.schedulers.dpm_solver import (DPMSolverMultistepScheduler, DPMSolverPP2MScheduler,
                                             DPMSolverPP3MScheduler)

M, S = 0.5, 0.5  # the analytic data: every pixel ~ N(M, S^2)


class GaussianDenoiser(nn.Module):
    """The exact network for data ~ N(m, s^2) per pixel: E[x0 | x_t] = m + a s^2 / (a^2 s^2 + sigma^2) (x_t - a m)
    (a = alpha_t), returned as the epsilon, v or x0 that ``prediction_type`` asks for (computed in float64)."""

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, m: float = M, s: float = S) -> None:
        super().__init__()
        self.ac, self.pt, self.m, self.s = alphas_cumprod.double(), prediction_type, m, s

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a2 = self.ac[t.long()].view(-1, *[1] * (x.ndim - 1))
        a, sg, xd = a2.sqrt(), (1 - a2).sqrt(), x.double()
        x0 = self.m + a * self.s**2 / (a2 * self.s**2 + sg**2) * (xd - a * self.m)
        eps = (xd - a * x0) / sg
        return {"epsilon": eps, "v_prediction": a * eps - sg * x0, "sample": x0}[self.pt].to(x.dtype)


def _fixed_network(shape, seed: int = 0):
    """A fixed random "network": linear in x and t with per-pixel weights (element-wise, so batch-independent)."""
    g = torch.Generator().manual_seed(seed)
    w, b, c = (torch.randn(shape, generator=g) * k for k in (0.3, 0.5, 0.2))
    return lambda x, t: w * x + b + c * math.sin(int(t) / 7.0)


def _chain(sched, n: int, net, x_t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run a scheduler's chain of ``n`` steps from ``x_t``; every step's ``(x_next, x0)``."""
    sched.set_timesteps(n)
    out, x = [], x_t
    for t in (int(v) for v in sched.timesteps):
        x, x0 = sched.step(net(x, torch.full((x.shape[0],), t)), t, x)
        out.append((x, x0))
    return out


@pytest.mark.parametrize("schedule", ["cosine", "linear_beta"])
@pytest.mark.parametrize("pt", ["epsilon", "v_prediction"])
def test_order_one_is_ddim_step_for_step(pt, schedule):
    """DPM-Solver++(1) is DDIM (eta 0): the project's PerSampleDDIMScheduler stepped on the solver's trailing
    timesteps (T = 100, 10 steps: DDIM's own step goes to t - T // n, the clean image after the last) gives the same
    x_next and x0 at every step of the chain."""
    T, n = 100, 10
    dpm = DPMSolverMultistepScheduler(T, schedule, solver_order=1, prediction_type=pt, clip_sample=False)
    ddim = diffusion_scheduler("ddim", T, schedule, pt, clip_sample=False)
    dpm.set_timesteps(n)
    ddim.set_timesteps(n)
    ts = [int(t) for t in dpm.timesteps]
    assert ts == list(range(99, 0, -10))  # trailing: T-1 down to T/n - 1
    net = _fixed_network((1, 1, 8, 8))
    x_a = x_b = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for t in ts:
        (x_a, x0_a), (x_b, x0_b) = dpm.step(net(x_a, t), t, x_a), ddim.step(net(x_b, t), t, x_b)
        assert torch.allclose(x0_a, x0_b, rtol=1e-4, atol=1e-5) and torch.allclose(x_a, x_b, rtol=1e-4, atol=1e-5), t
    assert x_a.abs().max() > 0.1  # a non-trivial chain was compared


def _moment_errors(x: torch.Tensor, exact: torch.Tensor) -> float:
    """|mean difference| + |std difference| of a sample and the exact ODE map of the same noise."""
    return abs(float(x.double().mean() - exact.mean())) + abs(float(x.double().std() - exact.std()))


@pytest.mark.parametrize("schedule,std_tol", [("cosine", 0.01), ("linear_beta", 0.05)])
@pytest.mark.parametrize("pt", ["epsilon", "v_prediction", "sample"])
def test_analytic_gaussian_2m_beats_ddim_and_3m_is_no_worse(pt, schedule, std_tol):
    """x_T ~ N(0, 1) on 5 x 64 x 64 = 20480 pixels, the exact denoiser of N(M, S^2) data, T = 1000. The exact ODE maps
    each pixel to M + S (x_T - a_T M) / sqrt(a_T^2 S^2 + sigma_T^2); errors are of the mean and std against that map
    of the same noise. Measured (cosine / linear): DDIM-20 0.032 / 0.060, DPM-Solver++(1)-20 0.038 / 0.070,
    2M-20 0.0015 / 0.022 (std 0.3 % / 4.4 % low, the last, first-order, jump to t = 0), 2M-10 0.025 / 0.097,
    3M-10 0.021 / 0.093; the same for the three prediction types."""
    T = 1000
    x_T = torch.randn(5, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    ac = diffusion_scheduler("ddim", T, schedule).alphas_cumprod.double()
    a_T, s_T = float(ac[-1]) ** 0.5, (1 - float(ac[-1])) ** 0.5
    exact = M + S * (x_T.double() - a_T * M) / math.sqrt(a_T**2 * S**2 + s_T**2)

    def sample(kind: str, n: int) -> torch.Tensor:
        sched = diffusion_scheduler(kind, T, schedule, pt, clip_sample=False)
        return _chain(sched, n, GaussianDenoiser(sched.alphas_cumprod, pt), x_T)[-1][0]

    x2 = sample("dpmpp2m", 20)
    assert abs(float(x2.mean()) - M) < 0.01 and abs(float(x2.std()) / S - 1) < std_tol, (float(x2.mean()), float(x2.std()))
    err = {"2m20": _moment_errors(x2, exact), "ddim20": _moment_errors(sample("ddim", 20), exact),
           "2m10": _moment_errors(sample("dpmpp2m", 10), exact), "3m10": _moment_errors(sample("dpmpp3m", 10), exact)}
    first = DPMSolverMultistepScheduler(T, schedule, solver_order=1, prediction_type=pt, clip_sample=False)
    err["1st20"] = _moment_errors(_chain(first, 20, GaussianDenoiser(first.alphas_cumprod, pt), x_T)[-1][0], exact)
    assert err["2m20"] < 0.75 * min(err["ddim20"], err["1st20"]), err
    assert err["3m10"] <= err["2m10"], err


@pytest.mark.parametrize("kind", ["dpmpp2m", "dpmpp3m"])
def test_sampler_same_samples_whatever_the_batch(kind):
    """Through DiffusionSampler: one sampler (one scheduler, its x0 history restarted at the first timestep) for
    three batches; sample 11 is the same bytes alone, among [10, 11, 12] and among [99, 11]."""
    sched = diffusion_scheduler(kind, 100, "cosine", "v_prediction")
    s = DiffusionSampler(sched, 8)
    net = GaussianDenoiser(sched.alphas_cumprod, "v_prediction")
    batch = s(net, sample_generators([10, 11, 12]), (1, 16, 16), device="cpu")
    alone = s(net, sample_generators([11]), (1, 16, 16), device="cpu")
    other_mates = s(net, sample_generators([99, 11]), (1, 16, 16), device="cpu")
    assert torch.equal(batch[1], alone[0]) and torch.equal(batch[1], other_mates[1])
    assert torch.equal(batch, s(net, sample_generators([10, 11, 12]), (1, 16, 16), device="cpu"))
    assert not torch.equal(batch[0], batch[1])


def test_factory_names_and_orders():
    assert SCHEDULERS["dpmpp2m"] is DPMSolverPP2MScheduler and SCHEDULERS["dpmpp3m"] is DPMSolverPP3MScheduler
    two, three = diffusion_scheduler("dpmpp2m", 100, "cosine", "v_prediction"), diffusion_scheduler("DPMPP3M", 100)
    assert (two.solver_order, three.solver_order) == (2, 3) and two.clip_sample and two.prediction_type == "v_prediction"
    assert isinstance(three, DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match="dpmpp2m"):  # the unknown-name message lists the new names
        diffusion_scheduler("dpm", 100)


def test_orders_used_and_deterministic_step():
    """Order per step: 1 first, then up to the solver order; the last step (to the clean image) first order; with
    fewer than 15 steps the step before it at most second order. The generator is accepted and unused."""
    s = DPMSolverPP3MScheduler(100, "cosine")
    s.set_timesteps(10)
    assert [len(s._steps[int(t)][1].c_d) for t in s.timesteps] == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    s.set_timesteps(20)
    assert [len(s._steps[int(t)][1].c_d) for t in s.timesteps] == [1, 2] + [3] * 17 + [1]
    x, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t0 = int(s.timesteps[0])
    a = s.step(out, t0, x, generator=sample_generators([0, 1]))
    b = s.step(out, t0, x)  # a step at the first timestep starts a new chain
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="solver_order 4"):
        DPMSolverMultistepScheduler(100, solver_order=4)
    with pytest.raises(ValueError, match="solver_order 0"):
        diffusion_scheduler("dpmpp2m", 100, solver_order=0)
    s = diffusion_scheduler("dpmpp2m", 100)
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match=r"step called before set_timesteps\(num_inference_steps\)"):
        s.step(x, 99, x)
    with pytest.raises(ValueError, match=r"num_inference_steps must be in \[1, 100\].*got 101"):
        s.set_timesteps(101)
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="timestep 50 is not one of the 5 timesteps"):
        s.step(x, 50, x)
    with pytest.raises(ValueError, match="step at timestep 59 must follow timestep 79"):
        s.step(x, 59, x)  # the chain has not started
    s.step(x, 99, x)
    s.set_timesteps(5)  # resets the chain
    with pytest.raises(ValueError, match="must follow timestep 99 .last step: none"):
        s.step(x, 79, x)
    with pytest.raises(ValueError, match="does not match the sample"):
        s.step(torch.zeros(1, 2, 4, 4), 99, x)


@pytest.mark.slow
def test_bundle_synthesis_with_dpmpp2m(phantom_dir, tmp_path):
    """A tiny synthesis (2 pairs from the phantom's label maps, untrained image UNet) with --sampler dpmpp2m
    --num_inference_steps 5: the pairs, the datalist and a manifest naming the solver."""
    from conftest import run_stage
    from test_oct_ddpm_bundle import TINY, _random_image_ckpt, check_synthetic

    out = tmp_path / "synth"
    run_stage("synthesize", output_dir=out, dataset_dir=phantom_dir, label_datalist="datalist.json", num_samples=2,
              sampler="dpmpp2m", num_inference_steps=5, image_ckpt=_random_image_ckpt(tmp_path / "img.pt", **TINY),
              **TINY)
    manifest = check_synthetic(out, 2, (16, 32))
    gen = manifest["generation"]
    assert gen["sampler"] == "DPMSolverPP2MScheduler" and gen["num_inference_steps"] == 5, gen
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
