"""Diffusion engines: UNet factory, trainer (targets, dropout, NaN), EMA, checkpoints/resume, sampler."""

from __future__ import annotations

import json
import time

import pytest
import torch
from ignite.engine import Events
from torch import nn

from monai_oct.core.io import TEMP_PATTERN
from monai_oct.engines.diffusion import DiffusionTrainer, diffusion_target
from monai_oct.core.seeding import sample_generators
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.handlers.checkpoint import TrainingCheckpoint, TrainingLog
from monai_oct.handlers.ema import EMA
from monai_oct.networks.checkpoint import load_weights, save_checkpoint
from monai_oct.optim import make_lr_scheduler
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.schedulers import diffusion_scheduler


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest (and share the CPU best) on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(cond=2, channels=(8, 16)):
    torch.manual_seed(0)
    return conditional_diffusion_unet(1, cond, channels=channels)


class Recorder(nn.Module):
    """Wraps a network and keeps the inputs it was called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x, timesteps, context=None, **kw):
        self.inputs.append(x.detach().clone())
        return self.net(x, timesteps)


def test_factory_channels_and_errors():
    net = conditional_diffusion_unet(1, 10, channels=(16, 32, 32))
    assert net.in_channels == 11 and net.out_channels == 1
    assert net.attention_levels == (False, False, True)
    out = net(torch.zeros(2, 11, 16, 16), torch.tensor([0, 5]))
    assert out.shape == (2, 1, 16, 16)
    assert conditional_diffusion_unet(1, 0, channels=(8, 16)).in_channels == 1
    with pytest.raises(ValueError, match="one entry per level"):
        conditional_diffusion_unet(1, 2, channels=(8, 16), attention_levels=(True,))
    with pytest.raises(ValueError, match="does not divide"):
        conditional_diffusion_unet(1, 2, channels=(8, 24), num_head_channels=16)
    with pytest.raises(ValueError, match=r"image size \[30, 32\] does not divide by 4"):
        DiffusionTrainer("cpu", 1, [{"image": torch.zeros(1, 1, 30, 32)}], net, torch.optim.SGD(net.parameters(), 0.1),
                         diffusion_scheduler("ddpm", 10), 10).run()
    with pytest.raises(ValueError, match="unknown noise schedule"):
        diffusion_scheduler("ddpm", 10, "warp")
    with pytest.raises(ValueError, match="unknown sampler"):
        diffusion_scheduler("pndm", 10)


def test_flash_attention_matches_plain_attention():
    torch.manual_seed(0)
    a = conditional_diffusion_unet(1, 2, channels=(8, 16), use_flash_attention=True).eval()
    b = conditional_diffusion_unet(1, 2, channels=(8, 16), use_flash_attention=False).eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 40])
    with torch.no_grad():
        assert torch.allclose(a(x, t), b(x, t), atol=1e-5)


def test_targets_epsilon_v_sample():
    torch.manual_seed(1)
    x, n, t = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4), torch.tensor([0, 17, 99])
    s = diffusion_scheduler("ddpm", 100, "cosine", "v_prediction")
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(diffusion_target(s, x, n, t), a.sqrt() * n - (1 - a).sqrt() * x, atol=1e-6)
    assert diffusion_target(s, x, n, t, "epsilon") is n
    assert diffusion_target(s, x, n, t, "sample") is x
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_target(s, x, n, t, "score")
    # a trainer refuses a prediction type its scheduler would decode differently
    net = _net()
    with pytest.raises(ValueError, match="differs from the scheduler"):
        DiffusionTrainer("cpu", 1, [], net, torch.optim.SGD(net.parameters(), 0.1), s, 2, prediction_type="epsilon")


def _batches(n=4, b=4, size=16, cond=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=g) * 2 - 1
    c = torch.rand(b, cond, size, size, generator=g) * 2 - 1
    return [{"image": x, "cond": c}] * n


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_decreases_on_tiny_overfit(prediction_type):
    net = _net()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    sched = diffusion_scheduler("ddpm", 50, "cosine", prediction_type)
    losses = []
    tr = DiffusionTrainer("cpu", 15, _batches(), net, opt, sched, condition_channels=2)
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    tr.run()
    assert len(losses) == 60
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_condition_dropout_and_zero_condition():
    sched = diffusion_scheduler("ddpm", 20)
    for p, expect_zero in [(1.0, "all"), (0.0, "none"), (0.5, "some")]:
        rec = Recorder(_net())
        torch.manual_seed(3)
        opt = torch.optim.SGD(rec.parameters(), 0.0)
        batches = [{"image": torch.zeros(16, 1, 8, 8), "cond": torch.ones(16, 2, 8, 8)}] * 2
        DiffusionTrainer("cpu", 1, batches, rec, opt, sched, condition_channels=2, p_uncond=p).run()
        cond = torch.cat(rec.inputs)[:, 1:]
        per_sample = cond.flatten(1)
        zero = (per_sample == 0).all(1)
        ones = (per_sample == 1).all(1)
        assert bool((zero | ones).all())  # a whole condition is dropped or kept, never part of it
        if expect_zero == "all":
            assert bool(zero.all())
        elif expect_zero == "none":
            assert not bool(zero.any())
        else:
            assert 0 < int(zero.sum()) < zero.numel()
    # no condition in the batch: stage 1's all-zero mask
    rec = Recorder(_net())
    DiffusionTrainer("cpu", 1, [{"image": torch.zeros(2, 1, 8, 8)}], rec, torch.optim.SGD(rec.parameters(), 0.0),
                     sched, condition_channels=2).run()
    assert rec.inputs[0].shape[1] == 3 and bool((rec.inputs[0][:, 1:] == 0).all())


def test_nan_loss_names_iteration_and_epoch():
    net = _net()
    bad = _batches(n=3)
    bad[2] = {"image": torch.full((4, 1, 16, 16), float("nan")), "cond": bad[0]["cond"]}
    tr = DiffusionTrainer("cpu", 2, bad, net, torch.optim.SGD(net.parameters(), 0.01), diffusion_scheduler("ddpm", 20),
                          condition_channels=2)
    with pytest.raises(FloatingPointError, match="iteration 3, epoch 1"):
        tr.run()


def test_ema_math_and_state_dict():
    from ignite.engine import Engine
    from ignite.handlers import EMAHandler

    lin = nn.Linear(2, 1, bias=False)
    nn.init.constant_(lin.weight, 1.0)
    ema = EMA(lin, decay=0.9, warmup=False)
    assert isinstance(ema, EMAHandler)  # ignite's handler does the averaging
    with torch.no_grad():
        lin.weight.fill_(3.0)
    engine = Engine(lambda e, b: None)
    ema.attach(engine)
    engine.run([0], max_epochs=1)
    assert torch.allclose(ema.ema_model.weight, torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    engine.run([0], max_epochs=2)  # one more iteration
    assert torch.allclose(ema.ema_model.weight, torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3.0))
    assert ema.num_updates == 2 and engine.state.ema_momentum == pytest.approx(0.1)
    warm = EMA(lin, decay=0.999)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    other = EMA(nn.Linear(2, 1, bias=False), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.ema_model.weight, ema.ema_model.weight) and other.num_updates == 2
    every = EMA(lin, decay=0.9, update_every=2)
    eng = Engine(lambda e, b: None)
    every.attach(eng)
    eng.run([0, 1, 2], max_epochs=1)
    assert every.num_updates == 1
    with pytest.raises(ValueError):
        EMA(lin, decay=1.0)


def test_checkpoint_resume_and_final_weights(tmp_path):
    def build(max_epochs):
        net = _net()
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        lr = make_lr_scheduler(opt, total_steps=100, warmup_steps=3, schedule="cosine")
        ema = EMA(net, 0.9)
        ck = TrainingCheckpoint(tmp_path, {"model": net, "ema": ema, "optimizer": opt, "lr_scheduler": lr},
                                final_model=ema.ema_model, raw_model=net)
        from monai.handlers import LrScheduleHandler

        handlers = [ema, ck, LrScheduleHandler(lr, epoch_level=False, print_lr=False), TrainingLog(tmp_path / "log.jsonl", opt)]
        tr = DiffusionTrainer("cpu", max_epochs, _batches(n=2), net, opt, diffusion_scheduler("ddpm", 20), 2,
                              train_handlers=handlers)
        return tr, net, ema, ck

    tr, net, ema, ck = build(2)
    tr.run()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["trainer"] == {"iteration": 4, "epoch_length": 2, "max_epochs": 2}  # ignite's Engine.state_dict
    assert saved["ema"]["num_updates"] == 4 and saved["lr_scheduler"]["last_epoch"] == 4
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], v) for k, v in ema.ema_model.state_dict().items())
    assert not all(torch.equal(final[k], v) for k, v in net.state_dict().items())  # EMA differs from raw
    assert not list(tmp_path.glob(TEMP_PATTERN))

    tr2, net2, ema2, ck2 = build(3)
    tr2.run()
    assert ck2.resumed_from == {"epoch": 2, "iteration": 4}
    assert tr2.state.epoch == 3 and tr2.state.iteration == 6 and ema2.num_updates == 6
    events = [l for l in (tmp_path / "training_log.jsonl").read_text().splitlines() if '"resume"' in l]
    assert len(events) == 1 and '"epoch": 2' in events[0]
    epochs = [l for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == 3  # epochs 1, 2, then 3 after the resume
    # the same command once more: nothing left to train, the state stays at the last epoch
    tr3, _, ema3, ck3 = build(3)
    tr3.run()
    assert ck3.resumed_from == {"epoch": 3, "iteration": 6} and tr3.state.iteration == 6 and ema3.num_updates == 6
    # the final weights load into a fresh network through the shared loader
    load_weights(_net(), tmp_path / "model.pt")
    raw = load_weights(_net(), tmp_path / "last.pt", key="model")
    assert all(torch.equal(raw.state_dict()[k], v) for k, v in net2.state_dict().items())


class Killed(Exception):
    """What the test's kill handler raises: the run ends there, as a crash would."""


def _resumable(out, max_epochs, kill_at=None, lr=1e-3, weight_decay=0.0, batch_size=4, n=3, resume=True, lr_schedule=None):
    """A diffusion trainer with EMA, warm-up + cosine LR and ``last.pt`` every iteration; ``kill_at``: crash then."""
    from monai.handlers import LrScheduleHandler

    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=weight_decay)
    sched = make_lr_scheduler(opt, total_steps=max_epochs * n, warmup_steps=2, schedule="cosine")
    ema = EMA(net, 0.9)
    ck = TrainingCheckpoint(out, {"model": net, "ema": ema, "optimizer": opt, "lr_scheduler": sched}, final_model=ema.ema_model,
                            raw_model=net, iteration_interval=1, resume=resume,
                            hyperparameters={"learning_rate": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                                             "max_epochs": max_epochs, "lr_schedule": lr_schedule})
    handlers = [ck, ema, LrScheduleHandler(sched, epoch_level=False, print_lr=False)]  # last.pt still after both
    tr = DiffusionTrainer("cpu", max_epochs, _batches(n=n, b=batch_size), net, opt, diffusion_scheduler("ddpm", 20), 2,
                          train_handlers=handlers)
    if kill_at:
        def kill(engine):
            raise Killed(engine.state.iteration)

        tr.add_event_handler(Events.ITERATION_COMPLETED(once=kill_at), kill)
    return tr, opt, ema, ck


def test_mid_epoch_resume_ends_at_the_same_iteration_and_lr(tmp_path):
    """Bug 3: a run killed inside an epoch restored the epoch in progress as done and lost its remaining iterations."""
    ref, ref_opt, ref_ema, _ = _resumable(tmp_path / "ref", 4)
    ref.run()
    assert ref.state.iteration == 12 and ref_ema.num_updates == 12

    out = tmp_path / "killed"
    tr, _, _, _ = _resumable(out, 4, kill_at=5)  # crashes in iteration 5, before saving it
    with pytest.raises(Killed):
        tr.run()
    assert torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"] == 4  # the 1st of epoch 2's 3
    assert not (out / "model.pt").exists() and not (out / "model_raw.pt").exists()  # a crash writes no final weights
    tr2, opt2, ema2, ck2 = _resumable(out, 4)
    tr2.run()
    assert ck2.resumed_from == {"epoch": 1, "iteration": 4}
    assert tr2.state.iteration == ref.state.iteration == 12 and tr2.state.epoch == 4
    assert ema2.num_updates == 12
    assert opt2.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-15)  # the schedule completed
    assert (out / "model.pt").is_file() and (out / "model_raw.pt").is_file()


def test_resume_applies_a_changed_learning_rate_and_logs_it(tmp_path, caplog):
    """Bug 6: --learning_rate on resume was silently replaced by the checkpoint's optimizer state."""
    out = tmp_path / "run"
    tr, _, _, _ = _resumable(out, 4, kill_at=4)
    with pytest.raises(Killed):
        tr.run()
    ref, ref_opt, _, _ = _resumable(tmp_path / "ref", 4, lr=2e-3)  # what the schedule at 2e-3 ends at
    ref.run()
    tr2, opt2, _, ck2 = _resumable(out, 4, lr=2e-3, weight_decay=0.01)
    with caplog.at_level("INFO"):
        tr2.run()
    assert "learning_rate changed on resume: 0.001 -> 0.002 (applied)" in caplog.text
    assert "weight_decay changed on resume: 0.0 -> 0.01 (applied)" in caplog.text
    assert opt2.param_groups[0]["weight_decay"] == 0.01
    assert opt2.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], abs=1e-15)
    saved = torch.load(out / "last.pt", weights_only=True)["hyperparameters"]
    assert saved["learning_rate"] == 2e-3  # the checkpoint now records what was applied
    resume = [l for l in (out / "training_log.jsonl").read_text().splitlines() if '"resume"' in l]
    assert '"learning_rate": [0.001, 0.002]' in resume[0]


def test_resume_stops_on_a_hyperparameter_that_cannot_change(tmp_path):
    """Bug 6: a changed batch size (other iterations per epoch, another schedule) stops the run, naming it."""
    out = tmp_path / "run"
    tr, _, _, _ = _resumable(out, 2, kill_at=2)
    with pytest.raises(Killed):
        tr.run()
    before = (out / "last.pt").read_bytes()
    tr2, _, _, _ = _resumable(out, 2, batch_size=2)
    with pytest.raises(ValueError, match=r"last.pt: changed since this checkpoint was written: batch_size 4 -> 2"):
        tr2.run()
    assert (out / "last.pt").read_bytes() == before  # nothing restored, nothing overwritten
    tr3, _, _, _ = _resumable(out, 2, n=4)  # the data changed: 4 iterations per epoch instead of 3
    with pytest.raises(ValueError, match="written with 3 iterations per epoch, this run has 4"):
        tr3.run()


def test_resume_refuses_a_longer_run_under_a_decaying_schedule(tmp_path):
    """A grown --max_epochs kept the restored cosine schedule's old length: the added epochs restarted the cosine
    (or ran at lr 0 under a linear schedule). It now stops naming max_epochs; with a constant schedule it continues."""
    out = tmp_path / "cosine"
    _resumable(out, 2, lr_schedule="cosine")[0].run()
    before = (out / "last.pt").read_bytes()
    with pytest.raises(ValueError, match=r"max_epochs 2 -> 4 would change the length of the 'cosine' learning-rate schedule"):
        _resumable(out, 4, lr_schedule="cosine")[0].run()
    assert (out / "last.pt").read_bytes() == before
    out = tmp_path / "constant"
    _resumable(out, 2, lr_schedule="constant")[0].run()
    tr, _, _, ck = _resumable(out, 4, lr_schedule="constant")
    tr.run()
    assert ck.resumed_from == {"epoch": 2, "iteration": 6} and tr.state.iteration == 12


def test_fresh_start_removes_the_earlier_runs_results(tmp_path):
    """A run started afresh (resume off) into a finished folder that then failed left the earlier run's final
    weights, so they looked like its result; they are removed when it starts."""
    out = tmp_path / "run"
    _resumable(out, 2)[0].run()
    assert (out / "model.pt").is_file() and (out / "model_raw.pt").is_file()
    tr, _, _, _ = _resumable(out, 2, kill_at=2, resume=False)
    with pytest.raises(Killed):
        tr.run()
    assert not (out / "model.pt").exists() and not (out / "model_raw.pt").exists()
    assert torch.load(out / "last.pt", weights_only=True)["trainer"]["iteration"] == 1  # the new run's, not the old one
    assert '"fresh_start"' in (out / "training_log.jsonl").read_text()


def test_checkpoint_refuses_a_mismatched_last_pt(tmp_path):
    save_checkpoint({"model": {}, "trainer": {"iteration": 1, "epoch_length": 1, "max_epochs": 2}}, tmp_path / "last.pt")
    net = _net()
    opt = torch.optim.SGD(net.parameters(), 0.1)
    ck = TrainingCheckpoint(tmp_path, {"model": net, "optimizer": opt})
    tr = DiffusionTrainer("cpu", 2, _batches(n=1), net, opt, diffusion_scheduler("ddpm", 20), 2, train_handlers=[ck])
    with pytest.raises(ValueError, match="lacks \\['optimizer'\\]"):
        tr.run()


def _monai(kind, T, schedule, prediction_type):
    """MONAI's own scheduler class (not this package's subclass): the reference."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(T, {"linear": "linear_beta"}.get(schedule, schedule), prediction_type=prediction_type, clip_sample=True)


def _monai_loop(net, sched, steps, cond, seed, kind, timestep_map=None):
    """The reference: MONAI's scheduler.step in a plain loop (one sample, one generator)."""
    assert type(sched).__module__.startswith("monai.networks.schedulers")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 1, 16, 16), generator=g)
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            tt = torch.tensor([int(timestep_map[int(t)] if timestep_map else t)])
            out = net(torch.cat([x, cond], 1), tt)
            x = sched.step(out, int(t), x, generator=g)[0] if kind == "ddpm" else sched.step(out, int(t), x)[0]
    return x


@pytest.mark.parametrize("kind,T,steps", [("ddpm", 20, 20), ("ddim", 100, 8)])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_sampler_equals_monai_scheduler_step(kind, T, steps, prediction_type):
    net = _net().eval()
    cond = torch.rand(1, 2, 16, 16) * 2 - 1
    ours = DiffusionSampler(diffusion_scheduler(kind, T, "cosine", prediction_type), steps)(
        net, sample_generators([7]), (1, 16, 16), cond)
    ref = _monai_loop(net, _monai(kind, T, "cosine", prediction_type), steps, cond, 7, kind)
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())


def test_respaced_ddpm_is_the_ddpm_of_the_respaced_chain():
    """DDPM with 6 of 100 steps == MONAI's full-chain DDPM step on the 6-step chain with alphas_cumprod[tau]."""
    net = _net().eval()
    cond = torch.rand(1, 2, 16, 16) * 2 - 1
    full = diffusion_scheduler("ddpm", 100, "cosine", "v_prediction")
    ours = DiffusionSampler(full, 6)(net, sample_generators([3]), (1, 16, 16), cond)
    tau = [int(t) for t in full.timesteps.flip(0)]  # ascending: 0 .. 99
    short = _monai("ddpm", 6, "linear_beta", "v_prediction")
    short.alphas_cumprod = full.alphas_cumprod[tau].clone()
    short.alphas = short.alphas_cumprod / torch.cat([torch.ones(1), short.alphas_cumprod[:-1]])
    short.betas = 1 - short.alphas
    ref = _monai_loop(net, short, 6, cond, 3, "ddpm", timestep_map=dict(enumerate(tau)))
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_sampler_seeded_per_sample(kind):
    net = _net().eval()
    cond = torch.rand(3, 2, 16, 16) * 2 - 1
    s = DiffusionSampler(diffusion_scheduler(kind, 50, "cosine", "v_prediction"), 5)
    batch = s(net, sample_generators([10, 11, 12]), (1, 16, 16), cond)
    again = s(net, sample_generators([10, 11, 12]), (1, 16, 16), cond)
    alone = s(net, sample_generators([11]), (1, 16, 16), cond[1:2])
    assert torch.equal(batch, again)
    assert torch.allclose(batch[1:2], alone, atol=1e-6)  # sample 1 does not depend on its batch
    assert not torch.allclose(batch[0], batch[1])


def test_guidance_uses_zero_condition():
    rec = Recorder(_net()).eval()
    cond = torch.ones(2, 2, 16, 16)
    s = DiffusionSampler(diffusion_scheduler("ddim", 20), 3, guidance_scale=2.0)
    s(rec, sample_generators([0, 1]), (1, 16, 16), cond)
    x = rec.inputs[0]
    assert x.shape[0] == 4 and bool((x[:2, 1:] == 0).all()) and bool((x[2:, 1:] == 1).all())
    assert torch.equal(x[:2, :1], x[2:, :1])  # same noisy image in both halves
    with pytest.raises(ValueError, match="does not match"):
        s(rec, sample_generators([0]), (1, 16, 16), cond)


def test_sampler_overhead_is_small():
    """Sampler time / (steps x bare UNet forward) stays near 1 (the brief's target is <= 1.05 at 64x128)."""
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 10, channels=(16, 32, 32)).eval()
    b, steps = 4, 10
    x = torch.randn(b, 11, 32, 64)
    t = torch.full((b,), 10, dtype=torch.long)
    cond = torch.rand(b, 10, 32, 64) * 2 - 1
    s = DiffusionSampler(diffusion_scheduler("ddpm", 100, "cosine", "v_prediction"), steps)
    with torch.no_grad():
        net(x, t)
    ratios = []
    for _ in range(3):  # best of 3: other processes share this CPU
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(steps):
                net(x, t)
            bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        s(net, sample_generators(range(b)), (1, 32, 64), cond)
        ratios.append((time.perf_counter() - t0) / bare)
    assert min(ratios) < 1.15, ratios


@pytest.mark.parametrize("module", ["monai_oct.handlers.samples", "monai_oct.handlers.segmentation"])
def test_modules_import_first_in_a_fresh_interpreter(module):
    """engines import handlers (grids) and handlers import the sampler: no import cycle whichever comes first."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_load_weights_adapts_input_channels(tmp_path):
    small = _net(cond=1).eval()  # e.g. stage 1 trained with a scalar condition
    save_checkpoint(small.state_dict(), tmp_path / "m.pt")
    big = conditional_diffusion_unet(1, 10, channels=(8, 16)).eval()
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(big, tmp_path / "m.pt")
    load_weights(big, tmp_path / "m.pt", adapt_input=True)
    w = big.state_dict()["conv_in.conv.weight"]
    assert torch.equal(w[:, :2], small.state_dict()["conv_in.conv.weight"]) and bool((w[:, 2:] == 0).all())
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([1, 9])
    with torch.no_grad():  # the extra (zero-weighted) condition channels change nothing
        assert torch.allclose(big(torch.cat([x, torch.randn(2, 9, 16, 16)], 1), t), small(x, t), atol=1e-5)


def test_same_seed_same_training():
    def train():
        torch.manual_seed(0)
        net = _net()
        DiffusionTrainer("cpu", 2, _batches(n=2), net, torch.optim.AdamW(net.parameters(), 1e-3),
                         diffusion_scheduler("ddpm", 20, "cosine", "v_prediction"), 2, p_uncond=0.3).run()
        return net.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- synthesis engine: per-sample seed streams, lock, checked manifest ----------------------------------------------

def _synthesis(out, seed=0, num_samples=4, steps=2, overwrite=False, config=None, num_classes=3, shard=None):
    """A tiny SamplerEngine: 16x16, labels from a 2-map LabelBank, one-hot condition, DDIM."""
    from monai_oct.engines.synthesis import SamplerEngine
    from monai_oct.engines.writer import PairWriter
    from monai_oct.recipes.sources import LabelBank

    labels = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    labels[0, :, 4:9], labels[1, :, 6:12] = 1, 2
    sampler = DiffusionSampler(diffusion_scheduler("ddim", 20, "cosine", "v_prediction"), steps)
    return SamplerEngine(num_samples, LabelBank(labels), _net(cond=num_classes), sampler, [16, 16], num_classes,
                         PairWriter(out), batch_size=2, seed=seed, progress=False, overwrite=overwrite,
                         config=dict(config or {"label_datalist": None}), shard=shard)


def _pairs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for sub in ("images", "labels") for p in sorted((out / sub).glob("*.png"))}


def test_synthesis_seeds_never_overlap_between_runs(tmp_path):
    """Bug 8: with ``seed + i`` the runs seeded 0 and 1 shared all but one pair byte for byte."""
    from monai_oct.core.seeding import sample_seed

    _synthesis(tmp_path / "s0", seed=0).run_all()
    _synthesis(tmp_path / "s1", seed=1).run_all()
    _synthesis(tmp_path / "s0_again", seed=0).run_all()
    a, b, again = _pairs(tmp_path / "s0"), _pairs(tmp_path / "s1"), _pairs(tmp_path / "s0_again")
    assert a == again  # same seed, same bytes
    images = lambda d: {v for k, v in d.items() if k.startswith("images/")}  # noqa: E731
    assert len(images(a)) == 4 and not images(a) & images(b)  # no image of seed 0 is one of seed 1
    manifest = json.loads((tmp_path / "s1" / "manifest.json").read_text())
    assert manifest["seeds"] == {f"synth_{i:05d}.png": sample_seed(1, i) for i in range(4)}
    assert manifest["status"] == "complete" and manifest["seed"] == 1


def test_synthesis_refuses_another_seed_then_overwrites(tmp_path):
    """Bug 7: a rerun with another seed kept the old pairs and rewrote the manifest with the new seed."""
    out = tmp_path / "s"
    _synthesis(out, seed=0).run_all()
    first = _pairs(out)
    with pytest.raises(ValueError, match=r"seed: 0 -> 1") as e:
        _synthesis(out, seed=1).run_all()
    assert str(out) in str(e.value) and "--overwrite true" in str(e.value)
    with pytest.raises(ValueError, match=r"num_inference_steps: 2 -> 3"):
        _synthesis(out, seed=0, steps=3).run_all()
    with pytest.raises(ValueError, match=r"config.label_datalist: None -> 'x.json'"):
        _synthesis(out, seed=0, config={"label_datalist": "x.json"}).run_all()
    assert _pairs(out) == first and json.loads((out / "manifest.json").read_text())["seed"] == 0  # nothing touched
    assert not (out / ".lock").exists()

    _synthesis(out, seed=1, overwrite=True).run_all()
    assert _pairs(out) == _pairs_of_fresh_run(tmp_path / "fresh1", seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["status"] == "complete"


def _pairs_of_fresh_run(out, seed):
    _synthesis(out, seed=seed).run_all()
    return _pairs(out)


def test_synthesis_lock_refuses_a_live_run_and_takes_over_a_stale_one(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "s"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(f"{live.pid}\n")
        with pytest.raises(RuntimeError, match=rf"{out}.*pid {live.pid}"):
            _synthesis(out).run_all()
        assert not (out / "images").exists() and (out / ".lock").read_text().split()[0] == str(live.pid)
    finally:
        live.kill()
        live.wait()
    # the same pid, now dead: a stale lock of a killed run is taken over
    _synthesis(out).run_all()
    assert len(_pairs(out)) == 8 and not (out / ".lock").exists()

    # two runs at once into one folder (before: both exit 0, a mixed set): the second stops, the first completes
    import os

    both = tmp_path / "both"
    first = _synthesis(both, seed=0)
    refused = []

    @first.on(Events.ITERATION_COMPLETED(once=1))
    def second_run(engine):
        with pytest.raises(RuntimeError, match=rf"{both} is being written by another synthesis \(pid {os.getpid()}"):
            _synthesis(both, seed=1).run_all()
        refused.append(True)

    first.run_all()
    assert refused and _pairs(both) == _pairs(out) and json.loads((both / "manifest.json").read_text())["seed"] == 0


def test_synthesis_manifest_written_at_start_and_resume_is_exact(tmp_path):
    """A run stopped after its first batch left a 'running' manifest; the rerun writes only what is missing,
    and the set equals an uninterrupted run's, byte for byte. Growing num_samples on resume is allowed."""
    from ignite.engine import Events as E

    out = tmp_path / "s"
    eng = _synthesis(out, num_samples=4)

    @eng.on(E.ITERATION_COMPLETED)
    def stop(engine):
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "running" and manifest["seed"] == 0 and manifest["num_samples"] == 4
        raise KeyboardInterrupt  # as a killed run

    with pytest.raises(KeyboardInterrupt):
        eng.run_all()
    assert len(_pairs(out)) == 4 and not (out / ".lock").exists()  # one batch of 2 pairs
    resumed = _synthesis(out, num_samples=4)
    resumed.run_all()
    assert resumed.skipped == 2
    assert _pairs(out) == _pairs_of_fresh_run(tmp_path / "fresh", seed=0)
    grown = _synthesis(out, num_samples=6)
    grown.run_all()
    assert grown.skipped == 4 and len(_pairs(out)) == 12
    with pytest.raises(ValueError, match="num_samples"):
        _synthesis(out, num_samples=3).run_all()  # would leave pairs the datalist does not list


def test_synthesis_refuses_pairs_without_manifest(tmp_path):
    out = tmp_path / "s"
    _synthesis(out).run_all()
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="no manifest.json"):
        _synthesis(out).run_all()
    _synthesis(out, overwrite=True).run_all()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_every_label_source_returns_a_dict():
    from monai_oct.recipes.sources import LabelBank, MaskSampler

    gens = sample_generators([0, 1])
    bank = LabelBank(torch.zeros(3, 1, 16, 16, dtype=torch.long))
    assert set(bank([0, 4], gens, torch.device("cpu"))) == {"label"}
    masks = MaskSampler(_net(cond=0), DiffusionSampler(diffusion_scheduler("ddim", 20), 2), [16, 16], 3)
    out = masks([0, 1], gens, torch.device("cpu"))
    assert set(out) == {"label"} and out["label"].shape == (2, 1, 16, 16)
