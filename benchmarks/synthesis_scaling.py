"""Synthesis throughput with 1 process and with n concurrent shard processes (``--shard i/n``), then the merge.

Each row runs the real ``bundles/oct_ddpm`` synthesis (``common.yaml`` + ``synthesize.yaml`` + a preset, default
``cpu_mini``: the image UNet 32-64-64-128 at 64x128) as ``python -m monai.bundle run`` subprocesses, ``--threads``
threads each, with random image weights (speed does not depend on them) and label maps drawn by a boundary model
(``monai-oct fit-boundaries`` on ``--label_datalist_for_fit``, fitted once into ``--work``). Rows:

- ``1``: one unsharded run of N pairs;
- ``n``: n shard runs ``--shard i/n`` started together into one folder, then ``monai-oct merge-synthesis``.

Columns: ``wall s`` from the first start to the last end (process start-up, model load, sampling, writing; the
n-process row includes the merge, also shown alone), ``pairs/s`` = N / wall s, ``speed-up`` against the 1-process
row, and ``sampling pairs/s`` from the manifests' ``seconds`` (the engine's loop only: N / the slowest shard).
The merged set is checked to be byte-identical to the 1-process set (``identical``).

Run (on a shared machine: ``nice``; say so with the numbers)::

    nice -n 19 python benchmarks/synthesis_scaling.py --num-samples 32 --steps 10 --processes 2 --threads 1 \\
        --out benchmarks/results/synthesis_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_oct.bundle import bundle_command, bundle_env, stage_configs  # noqa: E402
from monai_oct.core.io import write_json  # noqa: E402

BUNDLE = ROOT / "bundles" / "oct_ddpm"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-samples", type=int, default=32, help="N pairs of each row")
    p.add_argument("--steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--processes", type=int, nargs="+", default=[2], help="shard counts to time besides 1 process")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    p.add_argument("--batch", type=int, default=8, help="synthesis batch size")
    p.add_argument("--preset", default="cpu_mini", help="preset of bundles/oct_ddpm/configs/presets")
    p.add_argument("--label_datalist_for_fit", type=Path,
                   default=ROOT.parent / "shared" / "data" / "duke_dme" / "datalist_train.json",
                   help="datalist the boundary model is fitted on (once, into --work)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "synthesis_scaling", help="scratch folder (replaced)")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def _configs(preset: str) -> list[str]:
    return [*stage_configs("synthesize"), str(BUNDLE / "configs" / "presets" / f"{preset}.yaml")]


def _random_image_ckpt(path: Path, preset: str) -> Path:
    """The preset's stage-3 UNet, as the configs build it, with random weights."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) if not Path(c).is_absolute() else c for c in _configs(preset)])
    parser["bundle_root"] = str(BUNDLE)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def", instantiate=True).state_dict(), path)
    return path


def _run_together(commands: list[list[str]], logs: list[Path], env: dict[str, str]) -> float:
    """Start every command at once, wait for all; returns the wall seconds (fails naming a failed log)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT) for c, log in zip(commands, logs)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    for code, log in zip(codes, logs):
        if code:
            raise SystemExit(f"a synthesis failed (exit {code}); its log: {log}\n{log.read_text()[-3000:]}")
    return wall


def _pairs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for s in ("images", "labels") for p in sorted((folder / s).glob("*.png"))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import shutil

    work = args.work
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = bundle_env({"OMP_NUM_THREADS": str(args.threads)})
    boundaries = work / "boundaries.npz"
    subprocess.run([sys.executable, "-m", "monai_oct", "fit-boundaries", str(args.label_datalist_for_fit),
                    "--band-height", "224", "--out", str(boundaries)], env=env, check=True, capture_output=True)
    ckpt = _random_image_ckpt(work / "image.pt", args.preset)
    base = dict(image_ckpt=ckpt, boundary_model=boundaries, num_samples=args.num_samples, sampler="ddim",
                num_inference_steps=args.steps, batch_size=args.batch, num_threads=args.threads, device="cpu",
                progress=False, seed=0)

    load_before = os.getloadavg()  # the machine may be shared: what else ran is part of the numbers
    rows = []
    one = work / "p1"
    wall = _run_together([bundle_command(BUNDLE, _configs(args.preset), output_dir=one, **base)], [work / "p1.log"], env)
    seconds = json.loads((one / "manifest.json").read_text())["seconds"]
    rows.append({"processes": 1, "wall_s": wall, "merge_s": 0.0, "sampling_s": seconds})
    for n in args.processes:
        out = work / f"p{n}"
        cmds = [bundle_command(BUNDLE, _configs(args.preset), output_dir=out, shard=f"{i}/{n}", **base) for i in range(n)]
        wall = _run_together(cmds, [work / f"p{n}_shard{i}.log" for i in range(n)], env)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "monai_oct", "merge-synthesis", str(out)], env=env, check=True,
                       capture_output=True)
        merge = time.perf_counter() - t0
        shards = json.loads((out / "manifest.json").read_text())["shards"]
        rows.append({"processes": n, "wall_s": wall + merge, "merge_s": merge,
                     "sampling_s": max(float(s["seconds"]) for s in shards), "identical": _pairs(out) == _pairs(one)})
    ref = args.num_samples / rows[0]["wall_s"]
    for r in rows:
        r["pairs_per_s"] = args.num_samples / r["wall_s"]
        r["speed_up"] = r["pairs_per_s"] / ref
        r["sampling_pairs_per_s"] = args.num_samples / r["sampling_s"]

    print(f"synthesis scaling: N = {args.num_samples}, DDIM-{args.steps}, preset {args.preset}, batch {args.batch}, "
          f"{args.threads} thread(s) a process, {os.cpu_count()} CPU(s), load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print("| processes | wall s | merge s | pairs/s | speed-up | sampling pairs/s | identical to 1 process |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['wall_s']:.1f} | {r['merge_s']:.1f} | {r['pairs_per_s']:.3f} | "
              f"{r['speed_up']:.2f} | {r['sampling_pairs_per_s']:.3f} | {r.get('identical', '-')} |")
    result = {"num_samples": args.num_samples, "steps": args.steps, "preset": args.preset, "batch_size": args.batch,
              "threads": args.threads, "cpu_count": os.cpu_count(), "platform": platform.platform(),
              "torch": torch.__version__, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "rows": rows}
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
