"""Sampler overhead of every scheduler of ``monai_oct.schedulers.SCHEDULERS``: the solver's own arithmetic per step
against one bare UNet forward, and a whole ``DiffusionSampler`` run against ``NFE x forward``.

The network is the mini recipe's conditional UNet (``conditional_diffusion_unet``: channels 32,64,64,128, 1 res block,
1 image + 10 condition channels, random weights: speed does not depend on them), v-prediction, cosine, T = 1000
(``euler`` / ``heun``: ``prediction_type="flow"``). ``NFE`` is the length of the sampler's ``timesteps``: ``--steps`` for
every sampler but ``heun``, whose ``K`` steps evaluate the network ``2K - 1`` times.
Columns, each the best of ``--repeats`` (a shared CPU disturbs some runs):

- ``forward s``: one bare ``network(x, t)`` at ``--batch`` (``NFE`` of them timed together, interleaved with the
  sampler runs);
- ``step ms``: one ``scheduler.step`` (conversion to x0, clip, the update, its noise), timed along a whole chain of
  ``NFE`` calls with a fixed network output;
- ``step / forward``: the solver's share of a step;
- ``sampler / (NFE x forward)``: a whole ``DiffusionSampler`` run of ``--steps`` steps over ``NFE x forward``; the
  issue's target is <= 1.05.

Run (1 thread, beside other work: ``nice``)::

    nice -n 19 python benchmarks/sampler_overhead.py --threads 1 --size 64 128 --batch 16 --steps 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from monai_oct.core.io import write_json
from monai_oct.core.seeding import sample_generators
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.diffusion import conditional_diffusion_unet
from monai_oct.schedulers import FLOW_SAMPLERS, SCHEDULERS, diffusion_scheduler


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="steps K of each sampler run (NFE = K; heun: 2K - 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64, 128])
    p.add_argument("--samplers", default=",".join(SCHEDULERS), help="comma-separated keys of SCHEDULERS")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def _best_time(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls (the CPU may be shared: the fastest is the least disturbed)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per sampler: forward s, step ms, step / forward, sampler / (NFE x forward); the bare forwards are timed
    interleaved with the sampler runs (``NFE`` forwards, then one run, ``--repeats`` times), each the best of its."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cc, (h, w), b = 10, args.size, args.batch
    net = conditional_diffusion_unet(1, cc, channels=args.channels, num_res_blocks=1).eval()
    inp, t = torch.randn(b, 1 + cc, h, w), torch.full((b,), 500, dtype=torch.long)
    net(inp, t)  # warm-up
    cond = torch.rand(b, cc, h, w) * 2 - 1
    rows = []
    for kind in args.samplers.split(","):
        sched = diffusion_scheduler(kind, 1000, "cosine", "flow" if kind in FLOW_SAMPLERS else "v_prediction")
        sampler = DiffusionSampler(sched, args.steps)
        nfe = len(sampler.timesteps)
        out, x0 = torch.randn(b, 1, h, w) * 0.1, torch.randn(b, 1, h, w)

        def chain() -> None:
            x, gens = x0, sample_generators(range(b))
            for ts in sampler.timesteps:
                x = sched.step(out, ts, x, generator=gens)[0]

        step = _best_time(chain, args.repeats) / nfe
        bare, run = [], []
        for _ in range(args.repeats):
            bare.append(_best_time(lambda: [net(inp, t) for _ in range(nfe)], 1))
            run.append(_best_time(lambda: sampler(net, sample_generators(range(b)), (1, h, w), cond), 1))
        forward = min(bare) / nfe
        rows.append({"sampler": kind, "nfe": nfe, "forward_s": forward, "step_ms": 1000 * step,
                     "step_over_forward": step / forward, "overhead": min(run) / min(bare)})
    return rows


def format_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """A markdown table of :func:`measure`'s rows."""
    lines = [f"batch {args.batch}, {args.size[0]}x{args.size[1]}, channels {args.channels}, {args.threads} thread(s), "
             f"best of {args.repeats}", "",
             "| sampler | NFE | forward s | step ms | step / forward | sampler / (NFE x forward) |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sampler']} | {r['nfe']} | {r['forward_s']:.3f} | {r['step_ms']:.2f} | {r['step_over_forward']:.4f} "
              f"| {r['overhead']:.3f} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    rows = measure(args)
    print(format_table(rows, args))
    if args.out is not None:
        write_json(args.out, {"args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
