"""Speed of the diffusion engines, side by side: training step, DDPM/DDIM sampling, sampler overhead, peak memory.

What is timed is the project's own code: one iteration of :class:`monai_oct.engines.DiffusionTrainer` (noise, forward,
MSE to the v/epsilon target, backward, gradient clip, AdamW step) and :class:`monai_oct.engines.DiffusionSampler`
on the mask-conditioned UNet of :func:`monai_oct.networks.conditional_diffusion_unet` (default: the small CPU recipe
of ``bundles/oct_ddpm/docs/README.md``: channels 32,64,64,128, attention at the lowest level, 1 res block, 10 one-hot
condition channels, v-prediction, cosine schedule, T = 1000). Random weights: speed does not depend on them.

Rows (``--variants``): ``baseline`` is the recipe as the bundle runs it (flash attention on, float32, contiguous,
eager); every other row changes one thing: ``no_flash`` (attention by MONAI's matmul/softmax), ``channels_last``
(weights and batches in NHWC), ``bf16`` (``torch.autocast`` bfloat16 in the trainer and the sampler),
``compile`` (``torch.compile`` of the UNet; its first iteration/call pays the compilation, reported apart);
``all`` turns the four on together. An option that fails (say ``torch.compile`` without a working compiler) is
reported as ``failed: <reason>`` in its cells; the other rows still run.

Columns:

- training: median seconds per iteration at ``--batch`` after ``--warmup`` iterations;
- sampling: seconds per image (batch ``--batch``) for each ``--samplers`` kind (default ``ddim``; any of
  ``monai_oct.schedulers.SCHEDULERS``, e.g. ``dpmpp2m heun``: flow samplers on a flow network) at 25/50/100 steps,
  measured whole, and DDPM-1000 =
  1000 x the per-step time of a ``--ddpm_steps``-step DDPM run (same per-step work: one UNet call, the update and
  the per-sample noise), so it is extrapolated unless ``--ddpm_steps 1000``;
- overhead = sampler time / (network evaluations x one bare UNet forward at the same batch and settings; ``heun``
  evaluates ``2K - 1`` times in ``K`` steps), best of ``--repeats``
  interleaved repeats (other processes share a CPU); target <= 1.05;
- peak memory: CUDA ``torch.cuda.max_memory_allocated`` in the phase (tensors only, weights included); CPU the
  rise of the process's peak resident set over its size at the start of the phase (Linux: ``VmHWM`` reset through
  ``/proc/self/clear_refs`` after ``malloc_trim``; elsewhere ``ru_maxrss``, which only sees new process-wide peaks).

Run (the small CPU recipe, 64x128, batch 8; at most about 5 minutes on an idle 2-core CPU: ~35 s per eager row
from the measured 0.38 s/it and 0.13 s per UNet forward, and the compile row is cut at 150 s)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 \\
    python benchmarks/speed.py --device cpu --threads 2 --size 64 128 --batch 8 --repeats 1 \\
        --compile_timeout 150 --out runs/speed/cpu_64x128.json

On a GPU (the recipe, then the paper's scale)::

    python benchmarks/speed.py --device cuda --size 64 128 --batch 8 --repeats 3 --variants \\
        baseline,no_flash,channels_last,bf16,compile,all --compile_timeout 300 --out runs/speed/cuda_64x128.json
    python benchmarks/speed.py --device cuda --size 480 480 --batch 8 --channels 64 128 256 512 --num_res_blocks 2 \\
        --variants baseline,no_flash,channels_last,bf16,compile,all --compile_timeout 300 --out runs/speed/cuda_480.json

``--quick`` runs tiny settings (seconds; what the tests use).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from ignite.engine import Events

from monai_oct.core.seeding import sample_generators
from monai_oct.engines import DiffusionSampler, DiffusionTrainer
from monai_oct.networks import conditional_diffusion_unet
from monai_oct.schedulers import FLOW_SAMPLERS, SCHEDULERS, diffusion_scheduler

__all__ = ["Variant", "VARIANTS", "PeakMemory", "parse_args", "run_variant", "format_table", "main"]


@dataclass(frozen=True)
class Variant:
    """One row of the table: which speed options are on."""

    name: str
    flash: bool = True
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False


#: the rows ``--variants`` can name; ``baseline`` is the bundle's recipe, the others change one option (``all``: four).
VARIANTS = {
    "baseline": Variant("baseline"),
    "no_flash": Variant("no_flash", flash=False),
    "channels_last": Variant("channels_last", channels_last=True),
    "bf16": Variant("bf16", bf16=True),
    "compile": Variant("compile", compile=True),
    "all": Variant("all", channels_last=True, bf16=True, compile=True),
}
DEFAULT_VARIANTS = ("baseline", "no_flash", "channels_last", "bf16", "compile")
QUICK = {"size": [16, 32], "batch": 2, "channels": [8, 16, 16, 32], "warmup": 1, "iterations": 2, "ddpm_steps": 3,
         "bare_steps": 3, "repeats": 1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--quick`` replaces size, batch, channels and counts by tiny values)."""
    p = argparse.ArgumentParser(prog="speed.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", type=int, nargs=2, default=[64, 128], metavar=("H", "W"), help="image size")
    p.add_argument("--batch", type=int, default=8, help="training and sampling batch")
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64, 128], help="UNet widths per level")
    p.add_argument("--num_res_blocks", type=int, default=1)
    p.add_argument("--condition_channels", type=int, default=10, help="one-hot mask channels (Duke: 10)")
    p.add_argument("--timesteps", type=int, default=1000, help="T of the forward process (DDPM-T row)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {sorted(VARIANTS)}")
    p.add_argument("--warmup", type=int, default=2, help="training iterations before timing (compile: >= 1)")
    p.add_argument("--iterations", type=int, default=8, help="timed training iterations (median reported)")
    p.add_argument("--ddim_steps", type=int, nargs="+", default=[25, 50, 100],
                   help="steps of each --samplers run (heun: 2K - 1 network evaluations for K steps)")
    p.add_argument("--samplers", nargs="+", default=["ddim"], choices=sorted(k for k in SCHEDULERS if k != "ddpm"),
                   help="samplers timed at each --ddim_steps besides DDPM-T (flow samplers on a flow network)")
    p.add_argument("--ddpm_steps", type=int, default=20, help="timed DDPM steps; DDPM-T = T x per-step time")
    p.add_argument("--bare_steps", type=int, default=20, help="bare UNet forwards per timing block")
    p.add_argument("--repeats", type=int, default=2, help="interleaved sampling repeats (best of)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode (e.g. max-autotune)")
    p.add_argument("--compile_timeout", type=float, default=0,
                   help="> 0: run the torch.compile rows in a child process and report them failed after this many "
                        "seconds (inductor on a small CPU can compile for minutes); 0: in this process, no limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row_out", default=None, help=argparse.SUPPRESS)  # child process: write the one row here
    p.add_argument("--quick", action="store_true", help=f"tiny defaults (tests): {QUICK}")
    p.add_argument("--out", default=None, help="write results JSON here and the table next to it (.md)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--quick" in argv:
        p.set_defaults(**QUICK)  # options given explicitly still win
    args = p.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        p.error(f"--variants: unknown {unknown or names}; choose from {sorted(VARIANTS)}")
    args.variants = names
    f = 2 ** (len(args.channels) - 1)
    if args.size[0] % f or args.size[1] % f:
        p.error(f"--size {args.size} must divide by {f} (the UNet with channels {args.channels} down-samples "
                f"{len(args.channels) - 1} times)")
    if min(args.batch, args.iterations, args.ddpm_steps, args.bare_steps, args.repeats, *args.ddim_steps) < 1:
        p.error("--batch, --iterations, --ddpm_steps, --bare_steps, --repeats and --ddim_steps must be >= 1")
    if args.ddpm_steps > args.timesteps:
        p.error(f"--ddpm_steps {args.ddpm_steps} exceeds --timesteps {args.timesteps}")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: only cpu and cuda are supported")
    return args


def _failure(exc: BaseException) -> str:
    """``failed: <reason>`` for a table cell (first line of the message, shortened)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    msg = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return "failed: " + (msg[:160] + "..." if len(msg) > 160 else msg)


class PeakMemory:
    """Peak memory of a phase, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` since the phase started (tensors, absolute). CPU: peak resident set
    during the phase minus the resident set at its start; the start is taken after ``gc.collect`` and glibc's
    ``malloc_trim`` (freed memory back to the system) and the kernel's peak (``VmHWM``) is reset by writing 5 to
    ``/proc/self/clear_refs``. Where that reset is impossible, ``ru_maxrss`` is used, which only rises when the
    process as a whole reaches a new peak (a lower bound; 0 when an earlier phase peaked higher).

    Args:
        device: the phase's device.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self._start = 0.0
        libc_name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(libc_name) if libc_name else None
            self._libc.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            self._libc = None

    @staticmethod
    def _status_kib(field: str) -> float | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return float(line.split()[1])
        except OSError:
            return None
        return None

    def start(self) -> None:
        """Begin the phase."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda max_memory_allocated"
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._start = self._status_kib("VmRSS") or 0.0
            self.method = "cpu peak RSS rise (VmHWM reset)"
        except OSError:
            self._start = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            self.method = "cpu ru_maxrss rise (lower bound)"

    def stop(self) -> float:
        """End the phase; the peak in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.method.startswith("cpu peak RSS"):
            return max((self._status_kib("VmHWM") or 0.0) - self._start, 0.0) / 1024
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._start, 0.0) / 1024


def _sync(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _network(args: argparse.Namespace, v: Variant, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(parameters' owner, module to call)``: the UNet and, for ``compile``, its ``torch.compile`` wrapper."""
    torch.manual_seed(args.seed)
    net = conditional_diffusion_unet(1, args.condition_channels, channels=args.channels,
                                     num_res_blocks=args.num_res_blocks, use_flash_attention=v.flash).to(device)
    if v.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not v.compile:
        return net, net
    kw = {"backend": args.compile_backend}
    if args.compile_mode:
        kw["mode"] = args.compile_mode
    return net, torch.compile(net, **kw)


def _batch(args: argparse.Namespace, v: Variant, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed)
    h, w = args.size
    b = {"image": torch.rand(args.batch, 1, h, w, generator=g) * 2 - 1,
         "cond": torch.rand(args.batch, args.condition_channels, h, w, generator=g) * 2 - 1}
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format
    return {k: t.to(device).contiguous(memory_format=fmt) for k, t in b.items()}


def time_training(args: argparse.Namespace, v: Variant, device: torch.device) -> dict[str, Any]:
    """Median s/it of the project's ``DiffusionTrainer`` (and the first iteration's time: warm-up / compile)."""
    net, model = _network(args, v, device)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    batch = _batch(args, v, device)
    n = args.warmup + args.iterations
    amp = {"amp_dtype": "bfloat16"} if v.bf16 else {}
    trainer = DiffusionTrainer(device, 1, [batch] * n, model, opt,
                               diffusion_scheduler("ddpm", args.timesteps, "cosine", "v_prediction"),
                               args.condition_channels, clip_grad_norm=1.0, **amp)
    sync, times, t0 = _sync(device), [], [0.0]

    def started(_):
        sync()
        t0[0] = time.perf_counter()

    def completed(_):
        sync()
        times.append(time.perf_counter() - t0[0])

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    trainer.run()
    timed = sorted(times[args.warmup:])
    return {"train_s_per_it": timed[len(timed) // 2], "train_first_it_s": times[0]}


def time_sampling(args: argparse.Namespace, v: Variant, device: torch.device) -> dict[str, Any]:
    """Best-of-repeats times of the project's ``DiffusionSampler`` (DDPM, DDIM-n) and of bare UNet forwards.

    Every cell is caught on its own: a sampler that fails is reported, the others still run.
    """
    net, model = _network(args, v, device)
    net.eval()
    sync = _sync(device)
    b, (h, w), cc = args.batch, args.size, args.condition_channels
    cond = _batch(args, v, device)["cond"]
    x = torch.randn(b, 1 + cc, h, w, device=device)  # the sampler's input buffer is contiguous too
    t = torch.full((b,), args.timesteps // 2, dtype=torch.long, device=device)
    amp = {"amp_dtype": "bfloat16"} if v.bf16 else {}
    samplers = {f"DDPM-{args.timesteps}": (DiffusionSampler(
        diffusion_scheduler("ddpm", args.timesteps, "cosine", "v_prediction"), args.ddpm_steps, **amp), args.ddpm_steps)}
    for kind in args.samplers:
        pt = "flow" if kind in FLOW_SAMPLERS else "v_prediction"  # speed does not depend on the (random) weights
        for n in args.ddim_steps:
            s = DiffusionSampler(diffusion_scheduler(kind, args.timesteps, "cosine", pt), n, **amp)
            samplers[sampler_key(kind, n)] = (s, len(s.timesteps))  # network evaluations (heun: 2n - 1)

    def bare(steps: int) -> None:
        for _ in range(steps):
            if v.bf16:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    model(x, t)
            else:
                model(x, t)

    def run_sampler(s: DiffusionSampler) -> None:
        s(model, sample_generators(range(b), device), (1, h, w), cond)

    out: dict[str, Any] = {}
    best: dict[str, float] = {}
    with torch.no_grad():
        sync()
        t0 = time.perf_counter()
        try:  # warm-up: allocator, kernels, and for compile the inference graph (its compilation time)
            bare(2)
            run_sampler(DiffusionSampler(diffusion_scheduler("ddim", args.timesteps, "cosine", "v_prediction"), 2, **amp))
            sync()
        except Exception as e:  # noqa: BLE001 - reported in the table
            fail = _failure(e)
            return {"unet_forward_s": fail, **{k: fail for k in samplers}, "sample_warmup_s": fail}
        out["sample_warmup_s"] = time.perf_counter() - t0
        for _ in range(args.repeats):  # interleaved, best of: other processes share the machine
            cells = [("unet_forward_s", lambda: bare(args.bare_steps), args.bare_steps)]
            cells += [(k, (lambda s=s: run_sampler(s)), n) for k, (s, n) in samplers.items()]
            for key, fn, steps in cells:
                if isinstance(out.get(key), str):
                    continue  # failed before
                try:
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    dt = (time.perf_counter() - t0) / steps
                    best[key] = min(best.get(key, math.inf), dt)
                except Exception as e:  # noqa: BLE001
                    out[key] = _failure(e)
    bare_t = best.get("unet_forward_s")
    if bare_t is not None:
        out["unet_forward_s"] = bare_t
    for key, (_, n) in samplers.items():
        if key not in best:
            continue
        per_step = best[key]
        total_steps = args.timesteps if key == f"DDPM-{args.timesteps}" else n
        out[key] = per_step * total_steps / b  # seconds per image
        if bare_t is not None:
            out[f"{key} overhead"] = per_step / bare_t
    return out


def warm_up(args: argparse.Namespace, device: torch.device) -> None:
    """One untimed trainer iteration and sampler call of the baseline: the process's one-off start-up costs (kernel
    libraries, thread pools, lazy imports, allocator growth) then land in no row, so the first row compares with the
    others."""
    quick = argparse.Namespace(**{**vars(args), "warmup": 0, "iterations": 1, "ddpm_steps": 1, "ddim_steps": [1],
                                  "bare_steps": 1, "repeats": 1})
    time_training(quick, VARIANTS["baseline"], device)
    time_sampling(quick, VARIANTS["baseline"], device)


def _argv(args: argparse.Namespace, **override: Any) -> list[str]:
    """The command line reproducing ``args`` (with ``override``), for a child process."""
    skip = {"quick", "out", "variants"}
    vals = {**vars(args), **override}
    out: list[str] = []
    for k, x in vals.items():
        if k in skip or x is None:
            continue
        out += [f"--{k}", *(str(i) for i in x)] if isinstance(x, (list, tuple)) else [f"--{k}", str(x)]
    variants = vals["variants"]
    return out + ["--variants", ",".join(variants) if isinstance(variants, (list, tuple)) else str(variants)]


def _run_isolated(args: argparse.Namespace, v: Variant) -> dict[str, Any]:
    """One row in a child process killed after ``--compile_timeout`` seconds; a timeout or crash becomes the row."""
    with tempfile.TemporaryDirectory() as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [sys.executable, str(Path(__file__).resolve())] + _argv(
            args, variants=[v.name], compile_timeout=0, row_out=str(row_file))
        # its own process group, so that a timeout also ends the compiler processes inductor started
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=args.compile_timeout)
            if proc.returncode == 0 and row_file.is_file():
                return json.loads(row_file.read_text())
            tail = [ln for ln in (log or "").strip().splitlines() if not ln.startswith("[speed]")]
            reason = f"child process exited {proc.returncode}" + (f": {tail[-1]}" if tail else "")
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            reason = f"not finished within --compile_timeout {args.compile_timeout:g} s (compilation included)"
    keys = ["train_s_per_it", "train_first_it_s", "unet_forward_s", *sampler_keys(args), "peak_mem_train_mib",
            "peak_mem_sample_mib"]
    return {"variant": v.name, "options": asdict(v), "memory_method": "", **{k: "failed: " + reason for k in keys}}


def run_variant(args: argparse.Namespace, v: Variant, device: torch.device) -> dict[str, Any]:
    """All the cells of one row; failures become ``failed: <reason>`` strings, never exceptions."""
    if v.compile and args.compile_timeout > 0:
        return _run_isolated(args, v)
    row: dict[str, Any] = {"variant": v.name, "options": asdict(v)}
    mem = PeakMemory(device)
    phases = (("train", time_training, ("train_s_per_it", "train_first_it_s")),
              ("sample", time_sampling, ("unet_forward_s", *sampler_keys(args))))
    for phase, fn, keys in phases:
        try:
            mem.start()
            row.update(fn(args, v, device))
            row[f"peak_mem_{phase}_mib"] = mem.stop()
        except Exception as e:  # noqa: BLE001 - reported, the other rows still run
            fail = _failure(e)
            for k in keys:
                row[k] = fail
            row[f"peak_mem_{phase}_mib"] = fail
        finally:
            if v.compile:
                torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["memory_method"] = mem.method
    return row


def _cell(x: Any, fmt: str = "{:.4f}") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x.replace("|", "/")
    return fmt.format(x)


def sampler_key(kind: str, steps: int) -> str:
    """A sampling column: ``DDIM-50``, ``DPMPP2M-20``, ``HEUN-10`` (steps, not network evaluations)."""
    return f"{kind.upper()}-{steps}"


def sampler_keys(args: argparse.Namespace) -> list[str]:
    """The sampling columns: ``DDPM-T`` then, for each ``--samplers`` kind, one per ``--ddim_steps``."""
    return [f"DDPM-{args.timesteps}"] + [sampler_key(k, n) for k in getattr(args, "samplers", ["ddim"])
                                         for n in args.ddim_steps]


def format_table(result: dict[str, Any]) -> str:
    """The markdown table (and its notes) of a :func:`main` result."""
    a = argparse.Namespace(**result["config"])
    keys = sampler_keys(a)
    ddpm = keys[0]
    head = (["variant", f"train s/it (b={a.batch})", "1st it s", "UNet fwd s"]
            + [f"{k}{' *' if a.ddpm_steps < a.timesteps and k == ddpm else ''} s/img" for k in keys]
            + ["overhead " + "/".join(keys),
               "peak MiB train", "peak MiB sample"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        ovh = [r.get(f"{k} overhead") for k in keys]
        ovh_s = " / ".join(_cell(o, "{:.3f}") for o in ovh) if all(isinstance(o, float) for o in ovh) else next(
            (_cell(r.get(k)) for k in keys if isinstance(r.get(k), str)), "-")
        cells = ([r["variant"], _cell(r.get("train_s_per_it")), _cell(r.get("train_first_it_s"), "{:.2f}"),
                  _cell(r.get("unet_forward_s"))] + [_cell(r.get(k)) for k in keys]
                 + [ovh_s, _cell(r.get("peak_mem_train_mib"), "{:.0f}"), _cell(r.get("peak_mem_sample_mib"), "{:.0f}")])
        seen: set[str] = set()
        for i, c in enumerate(cells):  # a failure's reason once per row
            if c.startswith("failed"):
                cells[i] = "failed (same)" if c in seen else c
                seen.add(c)
        lines.append("| " + " | ".join(cells) + " |")
    env = result["environment"]
    notes = [
        "",
        f"{env['device_name']}, torch {env['torch']}, {env['threads']} thread(s); image {a.size[0]}x{a.size[1]}, batch "
        f"{a.batch}, UNet channels {tuple(a.channels)}, {a.num_res_blocks} res block(s), {a.condition_channels} condition "
        f"channels, v-prediction, cosine, T={a.timesteps}; wall time {result['wall_s']:.0f} s.",
        f"train: median of {a.iterations} DiffusionTrainer iterations after {a.warmup} warm-up (1st it = warm-up/compile). "
        f"Sampling: DiffusionSampler, seconds per image at batch {a.batch}, best of {a.repeats}; DDIM measured whole.",
    ]
    if a.ddpm_steps < a.timesteps:
        notes.append(f"* {ddpm} extrapolated: {a.timesteps} x the per-step time of a {a.ddpm_steps}-step DDPM run "
                     "(same per-step work: UNet call, update, per-sample noise).")
    notes.append(f"overhead = sampler time / (network evaluations x bare UNet forward at batch {a.batch}, same options), target <= 1.05. "
                 f"Peak memory: {result['memory_method']}.")
    return "\n".join(lines + notes) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; write ``--out`` (JSON) and its ``.md`` twin. Returns the result dict."""
    args = parse_args(argv)
    device = torch.device(args.device)
    threads0 = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
        if any(VARIANTS[n].compile for n in args.variants):
            import torch._inductor.config as inductor_config

            inductor_config.compile_threads = args.threads  # its C++/Triton compile workers too
    t_start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*GradScaler.*")  # MONAI builds one for amp even on CPU
            warnings.filterwarnings("ignore", category=FutureWarning)
            warm_up(args, device)
            rows = []
            for name in args.variants:
                rows.append(run_variant(args, VARIANTS[name], device))
                print(f"[speed] {name} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr, flush=True)
        env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
               "device": str(device), "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"}
        if args.row_out:
            Path(args.row_out).write_text(json.dumps(rows[0]))
        methods = sorted({r["memory_method"] for r in rows if r.get("memory_method")})
        result = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "environment": env, "rows": rows,
                  "memory_method": ", ".join(methods), "wall_s": time.perf_counter() - t_start}
        table = format_table(result)
        result["table"] = table
        print(table, flush=True)
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))
            out.with_suffix(".md").write_text(table)
        return result
    finally:
        torch.set_num_threads(threads0)


if __name__ == "__main__":
    main()
