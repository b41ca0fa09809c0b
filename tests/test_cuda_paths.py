"""The CUDA paths (fp16 AMP with a GradScaler, bf16, flash attention, the sampler on the GPU, a bundle stage on
cuda:0). They run where a GPU is present and skip with a message elsewhere (CI has none); the CPU twins of
these checks are in test_diffusion_engines.py."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events

from monai_oct.engines.diffusion import DiffusionTrainer
from monai_oct.core.seeding import sample_generators
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.schedulers import diffusion_scheduler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU paths not exercised here")
DEV = torch.device("cuda:0")


def _batches(n=6, b=8, size=32, cond=10):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, size, size, generator=g) * 2 - 1
    c = torch.rand(b, cond, size, size, generator=g) * 2 - 1
    return [{"image": x, "cond": c}] * n


@pytest.mark.parametrize("amp_dtype", ["float16", "bfloat16"], ids=["fp16+scaler", "bf16"])
def test_amp_training_learns_on_cuda(amp_dtype):
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 10, channels=(16, 32, 32)).to(DEV)
    opt = torch.optim.AdamW(net.parameters(), 2e-3)
    losses = []
    tr = DiffusionTrainer(DEV, 12, _batches(), net, opt, diffusion_scheduler("ddpm", 100, "cosine", "v_prediction"),
                          condition_channels=10, amp_dtype=amp_dtype)
    tr.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    tr.run()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert next(net.parameters()).dtype == torch.float32  # autocast, not a cast of the weights
    if amp_dtype == "float16":
        assert tr.scaler is not None and tr.scaler.is_enabled()
    else:
        assert tr.scaler is None  # bf16 needs no loss scaling


def test_flash_attention_matches_plain_on_cuda():
    torch.manual_seed(0)
    a = conditional_diffusion_unet(1, 2, channels=(16, 32), attention_levels=(False, True), use_flash_attention=True).to(DEV).eval()
    b = conditional_diffusion_unet(1, 2, channels=(16, 32), attention_levels=(False, True), use_flash_attention=False).to(DEV).eval()
    b.load_state_dict(a.state_dict())
    x, t = torch.randn(2, 3, 64, 64, device=DEV), torch.tensor([3, 40], device=DEV)
    with torch.no_grad():
        assert torch.allclose(a(x, t), b(x, t), atol=1e-4)


@pytest.mark.parametrize("amp_dtype", [None, "bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_sampler_on_cuda_is_seeded_per_sample(kind, amp_dtype):
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 0, channels=(16, 32)).to(DEV).eval()
    s = DiffusionSampler(diffusion_scheduler(kind, 100, "cosine", "v_prediction"), 10, amp_dtype=amp_dtype)
    amp = amp_dtype is not None
    two = s(net, sample_generators([5, 6], DEV), (1, 32, 32))
    one = s(net, sample_generators([6], DEV), (1, 32, 32))
    assert two.device.type == "cuda" and torch.isfinite(two).all()
    assert torch.allclose(two[1:], one, atol=2e-2 if amp else 1e-5)  # sample i depends on its seed, not its batch


def test_bundle_stage_on_cuda(phantom_dir, tmp_path):
    from monai_oct.bundle import bundle_dir, run_bundle

    out = tmp_path / "finetune"
    run_bundle(bundle_dir("oct_ddpm"), ["common.yaml", "finetune.yaml"], dataset_dir=str(phantom_dir), pretrained_ckpt="null",
               output_dir=str(out), image_size=[32, 32], channels=[16, 32], num_res_blocks=1, max_epochs=2, batch_size=4,
               num_train_timesteps=50, sample_interval=0, sample_steps=2, num_sample_images=2, device="cuda:0", amp_dtype="float16",
               progress=False, in_process=False)
    log = [json.loads(x) for x in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log if e.get("event") == "epoch"] == [1, 2]
    assert (out / "model.pt").is_file()
