"""Speed of the diffusion engines: DiffusionTrainer s/it, DDIM-50 s/image and sampler overhead.

The CPU-recipe UNet (channels 32,64,64,128, attention at the lowest level, 1 res block, 10 one-hot condition
channels), v-prediction, cosine schedule, batch 8. Overhead = sampler time / (50 x bare UNet forward), best of
interleaved repeats (target <= 1.05). Run: python benchmarks/diffusion_engine_speed.py THREADS DEVICE HxW [amp]
e.g. `python benchmarks/diffusion_engine_speed.py 2 cpu 64x128` or `... 8 cuda 256x256 amp`.
"""
import time, sys, torch
from ignite.engine import Events
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
dev = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
size = [int(s) for s in sys.argv[3].split("x")] if len(sys.argv) > 3 else [64, 128]
amp = len(sys.argv) > 4 and sys.argv[4] == "amp"
from monai_oct.networks import conditional_diffusion_unet, diffusion_scheduler
from monai_oct.engines import DiffusionTrainer, DiffusionSampler, sample_generators
sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
for flash in (True, False):
    torch.manual_seed(0)
    net = conditional_diffusion_unet(1, 10, channels=(32, 64, 64, 128), num_res_blocks=1, use_flash_attention=flash).to(dev)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    batch = {"image": torch.rand(8, 1, *size, device=dev) * 2 - 1, "cond": torch.rand(8, 10, *size, device=dev) * 2 - 1}
    n_it = 12 if dev.type == "cpu" else 60
    tr = DiffusionTrainer(dev, 1, [batch] * n_it, net, opt, diffusion_scheduler("ddpm", 1000, "cosine", "v_prediction"), 10, amp=amp)
    times = []
    tr.add_event_handler(Events.ITERATION_STARTED, lambda e: (sync(), times.append(time.perf_counter())))
    tr.run(); sync(); times.append(time.perf_counter())
    its = sorted(b - a for a, b in zip(times[2:], times[3:]))
    net.eval()
    x = torch.randn(8, 11, *size, device=dev); t = torch.full((8,), 500, dtype=torch.long, device=dev)
    steps = 50
    s = DiffusionSampler(diffusion_scheduler("ddim", 1000, "cosine", "v_prediction"), steps, amp=amp)
    bare, samp = [], []
    with torch.no_grad():
        net(x, t)
        for rep in range(3 if dev.type == "cpu" else 5):  # interleaved, best of: other processes share the CPU
            sync(); t0 = time.perf_counter()
            for _ in range(steps):
                if amp:
                    with torch.autocast(dev.type):
                        net(x, t)
                else:
                    net(x, t)
            sync(); bare.append(time.perf_counter() - t0)
            t0 = time.perf_counter(); s(net, sample_generators(range(8), dev), (1, *size), batch["cond"]); sync(); samp.append(time.perf_counter() - t0)
    print(f"{dev.type} flash={flash} amp={amp} threads={torch.get_num_threads()} size={size}: train median {its[len(its)//2]:.4f} s/it (batch 8); "
          f"DDIM-50 batch 8 best {min(samp):.3f} s = {min(samp)/8:.4f} s/image; 50 bare forwards best {min(bare):.3f} s; "
          f"overhead ratio (best/best) {min(samp)/min(bare):.3f}", flush=True)
