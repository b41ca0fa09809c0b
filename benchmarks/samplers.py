"""Fast samplers validated downstream (issue 14): the same label maps sampled by every sampler at every NFE, each
cell scored by its cost, its distance to real scans and the Dice of a segmenter trained on it.

Every stage runs as the bundle a user would run (``python -m monai.bundle run``, through the runner and step plan of
``benchmarks/duke_retidiff.py``); every step skips itself when its output exists, so a killed run started again
repeats nothing:

1. the models, one per parametrisation, both at the scale's preset (mini: ``cpu_mini``): **v-prediction** = stage 1
   (``pretrain``) then stage 3 (``finetune``) from it; **rectified flow** = the same two stages with
   ``--prediction_type flow`` (``--flow-init flow``, the default: a flow stage 1 of its own, so that each
   parametrisation is trained end to end the same way) or its stage 3 from the v stage 1 (``--flow-init v``).
   ``--v-ckpt`` / ``--flow-ckpt`` take existing stage-3 ``model.pt`` files instead;
2. the label maps: ``monai-oct fit-boundaries`` on Duke train, then every cell synthesizes with ``--boundary_model``
   and the same ``--seed``: sample ``i`` draws its label, then its noise, from the stream ``sample_seed(seed, i)``,
   so every cell holds the same N label maps (checked: ``labels_identical`` in results.json) and differs only in the
   sampler and its steps;
3. the cells: ``--samplers`` x ``--nfe``, the diffusion samplers (ddpm, ddim, dpmpp2m, dpmpp3m) on the v model, the
   flow samplers (euler, heun) on the flow model. NFE is the number of network evaluations: ``K`` steps for every
   sampler but heun, whose ``K`` steps cost ``2K - 1``; heun takes the largest ``K`` with ``2K - 1 <= NFE``
   (:func:`steps_for_nfe`: NFE 20 -> K 10, 19 evaluations). One more cell: ``--bf16-sampler`` at NFE 20 with
   ``--amp_dtype bfloat16`` (deliverable 5);
4. the teacher: a 66/0 segmenter (``oct_layer_seg``, the first seed), or ``--teacher``;
5. per cell: s/pair (its synthesis step's wall time / N; steps that run at once share the CPU), the quality report
   (``monai-oct evaluate``: FD and KID at matched sizes beside the real-vs-real floor, the teacher's adherence to the
   conditioning labels);
6. for the ``--dice-cells`` (default: the reference DDPM at the largest NFE, each sampler at NFE 20 and 10, and the
   bf16 cell) the downstream Dice of 66 real + the cell's N pairs over the scale's segmentation seeds (mean +- half
   the range): every cell x 3 seeds of segmentation runs does not fit (36 x 3 runs of 7-25 minutes on the CPU).

Writes ``results.md`` (sampler, NFE, s/pair, FD, FD/floor, KID, adherence, Dice mean +- spread), ``results.json`` and
``nfe.png`` (Dice and FD against NFE, log x axis, one line a sampler) to ``--out``.

    python benchmarks/samplers.py --scale tiny --out runs/samplers_tiny --jobs 2 --threads 1   # smoke (numbers meaningless), ~15 min
    python benchmarks/samplers.py --scale tiny --out runs/samplers_tiny --jobs 2 --threads 1 --samplers ddpm,heun --nfe 5 \
        --dice-cells ddpm:5,heun:5 --bf16-sampler ddpm                                   # 3 cells: 4.8 min measured
    python benchmarks/samplers.py --scale mini_cpu --out runs/samplers14 --jobs 2 --threads 1 \
        --v-ckpt runs/bench13/stage3_finetune/model.pt --flow-init v \
        --teacher runs/bench13/seg/unet_R66_S0_seed0/model_final.pt   # the CPU's trimmed grid, N = 64 (about 2 h)
    python benchmarks/samplers.py --scale mini --out runs/samplers_mini --device cuda  # the issue's setting, N = 64
    python benchmarks/samplers.py --scale mini --dry-run                              # the commands and the expected time
    python benchmarks/samplers.py --scale mini --v-ckpt runs/bench13/stage3_finetune/model.pt --nfe 20,10 --samplers ddim,dpmpp2m

Expected time of ``--scale mini`` (the dry run prints it for the chosen cells): on this 2-core CPU about 28 h with
one step at a time (synthesis ~10 h: ~7100 NFE per pair over the 37 cells at ~0.08 s per NFE and pair; segmentation
~14 h: the 14 Dice cells x 3 seeds of ~20-minute runs; quality ~2 h; the four diffusion stages ~1.3 h), so the
issue's 90 minutes do not hold on the CPU: run it with ``--device cuda`` or trim ``--nfe`` / ``--samplers`` /
``--dice-cells``, or list the cells themselves (``--cells ddpm:1000,dpmpp2m:20,...``). ``--scale mini_cpu`` is that
trim: the same models, N = 64, 14 cells (the NFE 100 and 50 cells of the fast samplers left out) and Dice for the
DDPM-1000 reference, DPM-Solver++ 2M at NFE 20 and 10 and its bf16 twin, about 2 h with ``--jobs 2`` given the
trained v model and teacher.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duke_retidiff import (  # noqa: E402
    Plan,
    Runner,
    _versions,
    benchmark_parser,
    ddpm_configs,
    quality_report,
    resolve_data,
    scale_settings,
    seed_mean,
    seg_steps,
)

from monai_oct.schedulers import DIFFUSION_SAMPLERS, FLOW_SAMPLERS  # noqa: E402

#: Scales: the bundles' preset that sizes every stage, what this benchmark decides (N, NFE grid, segmentation
#: seeds) and the costs its time estimate uses (measured on this 2-core CPU beside other work: at mini
#: ``s_per_nfe_pair`` from the DDIM-50 synthesis of ``benchmarks/results/duke_retidiff_mini.md``, the rest from its
#: step times; at tiny the step times of a 3-cell run; ``startup_min``: a synthesis bundle's start-up; ``seg_min``:
#: train + evaluate); ``why`` goes into results.md.
SCALES: dict[str, dict[str, Any]] = {
    "mini": {
        "preset": "cpu_mini",
        "why": ("the issue's setting: the cpu_mini models (64x128 pixel UNet 32-64-64-128, stage 1 20 epochs of the 164 "
                "unannotated scans, stage 3 100 epochs of the 66 pairs), N = 64 boundary-model label maps written at "
                "224x512, NFE 1000/100/50/20/10/5, MONAI UNet segmentation (1485 iterations) on 66 real + N, seeds 0, 1, 2"),
        "networks": ["unet"], "seeds": [0, 1, 2], "num_samples": 64, "nfe": [1000, 100, 50, 20, 10, 5],
        "cost": {"s_per_nfe_pair": 0.08, "startup_min": 0.3, "stage_min": 20.0, "seg_min": 20.0, "quality_min": 3.0},
    },
    "mini_cpu": {
        "preset": "cpu_mini",
        "why": ("mini's models and segmenter, trimmed to what this 2-core CPU does in about two hours with --jobs 2 "
                "--threads 1: N = 64, the reference DDPM-1000 (plus DDPM-100), the fast samplers at NFE 20 / 10 / 5 "
                "only (the full grid's NFE 100 and 50 cells cost 1.5 h of synthesis and tell nothing about the target), "
                "downstream Dice over seeds 0, 1, 2 for DDPM-1000, DPM-Solver++ 2M at NFE 20 and 10 and its bf16 twin"),
        "networks": ["unet"], "seeds": [0, 1, 2], "num_samples": 64,
        "cells": ("ddpm:1000,ddpm:100,ddim:20,ddim:10,dpmpp2m:20,dpmpp2m:10,dpmpp2m:5,dpmpp3m:10,dpmpp3m:5,"
                  "euler:20,euler:10,heun:20,heun:10"),
        "dice_cells": "ddpm:1000,dpmpp2m:20,dpmpp2m:10",
        "cost": {"s_per_nfe_pair": 0.03, "startup_min": 0.3, "stage_min": 20.0, "seg_min": 7.0, "quality_min": 3.0},
    },
    "tiny": {
        "preset": "cpu_smoke",
        "why": "smoke test of the whole chain (32x64 models of one epoch, T = 100, N = 4; numbers meaningless)",
        "networks": ["unet"], "seeds": [0], "num_samples": 4, "nfe": [20, 5],
        "cost": {"s_per_nfe_pair": 0.002, "startup_min": 0.3, "stage_min": 0.4, "seg_min": 0.9, "quality_min": 1.0},
    },
}

#: The sampler every other one is compared with (at the largest NFE of the grid: DDPM-1000 at mini scale).
REFERENCE = "ddpm"
#: The NFE of the cells that get downstream Dice by default (besides the reference) and of the bf16 cell.
DICE_NFE = (20, 10)
BF16_NFE = 20


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The steps ``K`` (``--num_inference_steps``) of ``sampler`` that spend at most ``nfe`` network evaluations.

    Heun's ``K`` steps cost ``2K - 1`` evaluations (two per step, the last an Euler step), so it takes
    ``K = (nfe + 1) // 2``; every other sampler evaluates the network once a step, ``K = nfe``.

    Raises:
        ValueError: for ``nfe < 1``.
    """
    if int(nfe) < 1:
        raise ValueError(f"NFE must be >= 1, got {nfe}")
    return (int(nfe) + 1) // 2 if sampler == "heun" else int(nfe)


def nfe_of(sampler: str, steps: int) -> int:
    """The network evaluations of ``steps`` steps of ``sampler`` (``2K - 1`` for heun, else ``K``)."""
    return 2 * int(steps) - 1 if sampler == "heun" else int(steps)


@dataclass(frozen=True)
class Cell:
    """One sampler at one NFE budget (``amp_dtype``: the sampling autocast, None = float32)."""

    sampler: str
    nfe: int
    amp_dtype: str | None = None

    @property
    def name(self) -> str:
        return f"{self.sampler}_{self.nfe}" + ("_bf16" if self.amp_dtype == "bfloat16" else f"_{self.amp_dtype}" if self.amp_dtype else "")

    @property
    def steps(self) -> int:
        return steps_for_nfe(self.sampler, self.nfe)

    @property
    def evaluations(self) -> int:
        return nfe_of(self.sampler, self.steps)

    @property
    def model(self) -> str:
        """``"flow"`` for the flow samplers, else ``"v"``."""
        return "flow" if self.sampler in FLOW_SAMPLERS else "v"


def grid(samplers: list[str], nfes: list[int]) -> list[Cell]:
    """The float32 cells, sampler-major in the order given."""
    return [Cell(s, n) for s in samplers for n in nfes]


def parse_cells(spec: str) -> list[tuple[str, int]]:
    """``"SAMPLER:NFE,..."`` as ``[(sampler, nfe), ...]`` in the order given, duplicates dropped.

    Raises:
        ValueError: for an item that is not ``NAME:INTEGER``.
    """
    out: list[tuple[str, int]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        name, sep, nfe = item.partition(":")
        if not sep or not nfe.strip().lstrip("-").isdigit():
            raise ValueError(f"expected SAMPLER:NFE,..., got {item!r} in {spec!r}")
        if (name.strip().lower(), int(nfe)) not in out:
            out.append((name.strip().lower(), int(nfe)))
    return out


def dice_cells(spec: str, cells: list[Cell], samplers: list[str], nfes: list[int]) -> list[Cell]:
    """The cells whose downstream Dice is measured.

    Args:
        spec: ``"default"`` (the reference sampler at the largest NFE and every sampler at NFE 20 and 10, where the
            grid has them), ``"all"``, ``"none"`` or ``"SAMPLER:NFE,..."`` (e.g. ``"ddpm:1000,heun:20"``).
        cells: the grid's cells.

    Raises:
        ValueError: for a ``SAMPLER:NFE`` not in the grid.
    """
    if spec == "all":
        return list(cells)
    if spec == "none":
        return []
    if spec == "default":
        want = {(REFERENCE, max(nfes))} if REFERENCE in samplers else set()
        want |= {(s, n) for s in samplers for n in DICE_NFE if n in nfes}
    else:
        try:
            want = set(parse_cells(spec))
        except ValueError:
            raise ValueError(f"--dice-cells: expected default, all, none or SAMPLER:NFE,..., got {spec!r}") from None
        unknown = sorted(want - {(c.sampler, c.nfe) for c in cells})
        if unknown:
            raise ValueError(f"--dice-cells: {', '.join(f'{s}:{n}' for s, n in unknown)} not in the grid "
                             f"(--samplers {','.join(samplers)} x --nfe {','.join(map(str, nfes))})")
    return [c for c in cells if (c.sampler, c.nfe) in want]


def expected_minutes(cost: dict[str, float], cells: list[Cell], n: int, dice: list[Cell], seeds: list[int],
                     stages: int) -> dict[str, float]:
    """The CPU time a scale's run takes, one step at a time, from its measured ``cost`` (see :data:`SCALES`):
    ``{"stages", "synthesis", "quality", "segmentation", "total"}`` in minutes."""
    est = {"stages": stages * cost["stage_min"],
           "synthesis": sum(c.evaluations for c in cells) * n * cost["s_per_nfe_pair"] / 60 + len(cells) * cost["startup_min"],
           "quality": len(cells) * cost["quality_min"],
           "segmentation": (len(dice) * len(seeds) + 1) * cost["seg_min"]}  # + 1: the teacher
    est["total"] = sum(est.values())
    return {k: round(v, 1) for k, v in est.items()}


def label_digest(folder: Path) -> str:
    """sha256 over the names and bytes of ``folder/labels/*.png`` (equal digests: the same label maps)."""
    h = hashlib.sha256()
    for p in sorted((folder / "labels").glob("*.png")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser(__doc__, SCALES, "runs/bench_samplers")
    p.add_argument("--samplers", default=",".join(DIFFUSION_SAMPLERS + FLOW_SAMPLERS),
                   help="comma-separated; the flow samplers (euler, heun) run on the flow model, the others on the v model")
    p.add_argument("--nfe", default=None, help="network evaluations per image, comma-separated (default: the scale's)")
    p.add_argument("--cells", default=None,
                   help="SAMPLER:NFE,... the cells themselves instead of the --samplers x --nfe grid (default: the "
                        "scale's cells where it lists them, e.g. mini_cpu)")
    p.add_argument("--dice-cells", default=None,
                   help="cells with downstream Dice: default (reference at the largest NFE + each sampler at NFE 20 "
                        "and 10), all, none, or SAMPLER:NFE,... (default: the scale's, else default)")
    p.add_argument("--bf16-sampler", default="dpmpp2m", help=f"sampled at NFE {BF16_NFE} with --amp_dtype bfloat16 "
                                                              "(its Dice measured too); none: no bf16 cell")
    p.add_argument("--bf16-seeds", default=None,
                   help="segmentation seeds of the bf16 cell's Dice, comma-separated (default: the scale's seeds); it is "
                        "compared with its float32 twin on the same seeds, so one seed already shows a paired effect")
    p.add_argument("--v-ckpt", type=Path, default=None, help="a trained v-prediction stage-3 model.pt (no v training)")
    p.add_argument("--flow-ckpt", type=Path, default=None, help="a trained --prediction_type flow stage-3 model.pt")
    p.add_argument("--flow-init", choices=["flow", "v"], default="flow",
                   help="the flow stage 3 starts from a flow stage 1 of its own (flow) or from the v stage 1 (v)")
    p.add_argument("--teacher", type=Path, default=None, help="a 66/0 segmenter model_final.pt (default: trained here)")
    a = p.parse_args(argv)

    cfg = scale_settings(SCALES, a.scale)
    spec = a.cells or (cfg.get("cells") if a.nfe is None and a.samplers == p.get_default("samplers") else None)
    try:
        pairs = parse_cells(spec) if spec else None
        nfes = [int(x) for x in a.nfe.split(",")] if a.nfe else list(cfg.get("nfe", []))
    except ValueError as e:
        p.error(f"--cells: {e}" if spec else f"--nfe takes comma-separated integers, got {a.nfe!r}")
    samplers = list(dict.fromkeys(s for s, _ in pairs)) if pairs else [s.strip().lower() for s in a.samplers.split(",") if s.strip()]
    if pairs:
        nfes = sorted({n for _, n in pairs}, reverse=True)
    unknown = [s for s in samplers if s not in DIFFUSION_SAMPLERS + FLOW_SAMPLERS]
    T = int(cfg["ddpm"]["num_train_timesteps"])
    if unknown or not samplers or not nfes or min(nfes) < 1 or max(nfes) > T:
        p.error(f"--samplers / --cells take {', '.join(DIFFUSION_SAMPLERS + FLOW_SAMPLERS)} (got {unknown or samplers}) "
                f"and --nfe values in [1, {T}] (num_train_timesteps of {cfg['preset']}; got {nfes})")
    cells = [Cell(s, n) for s, n in pairs] if pairs else grid(samplers, nfes)
    try:
        dice = dice_cells(a.dice_cells or cfg.get("dice_cells", "default"), cells, samplers, nfes)
    except ValueError as e:
        p.error(str(e))
    bf16 = None if a.bf16_sampler.lower() == "none" else Cell(a.bf16_sampler, BF16_NFE, "bfloat16")
    if bf16 is not None:
        if bf16.sampler not in DIFFUSION_SAMPLERS + FLOW_SAMPLERS:
            p.error(f"--bf16-sampler: unknown sampler {a.bf16_sampler!r}")
        cells.append(bf16)
        dice.append(bf16)
    missing = [f"--{k.replace('_', '-')} {v}" for k, v in (("v_ckpt", a.v_ckpt), ("flow_ckpt", a.flow_ckpt), ("teacher", a.teacher))
               if v is not None and not v.is_file()]
    if missing:
        p.error(f"no such checkpoint: {', '.join(missing)}")
    paths = resolve_data(a)
    if paths is None:
        return 2
    data, out, duke, test = paths
    n = a.num_samples or cfg["num_samples"]
    seeds, t_start = list(cfg["seeds"]), time.time()
    real, geo = str(duke / "datalist_train.json"), {"seed": a.seed, "progress": False}
    ratio = None if a.mix_ratio.lower() == "none" else [float(x) for x in a.mix_ratio.split(",")]
    out.mkdir(parents=True, exist_ok=True)
    run, plan = Runner(out, a.device, a.dry_run, a.threads), Plan(a.jobs)

    # 1. the two models (the critical path first: Plan starts the steps in the order added)
    models, trained = add_models(plan, run, cfg, a, out, data, duke, real, geo, {c.model for c in cells})
    # 2. the boundary model; 4. the teacher
    g = cfg["ddpm"]
    bmodel = out / "boundary_model.json"
    plan.add("boundaries", lambda: run.step("fit_boundaries", bmodel, [
        sys.executable, "-m", "monai_oct", "fit-boundaries", real, "--band-height", str(g["band_height"]), "--out", str(bmodel)]))
    net = cfg["networks"][0]
    teacher, teacher_metrics = a.teacher.resolve() if a.teacher else None, {}
    if teacher is None:
        teacher = out / "seg" / f"{net}_R66_S0_seed{seeds[0]}" / "model_final.pt"
        plan.add("teacher", lambda: teacher_metrics.update(
            seg_steps(run, cfg, {"R66_S0": ([real], None)}, test, seeds[0], net, f"_seed{seeds[0]}")))
    teacher_step = [] if a.teacher else ["teacher"]

    # 3. + 5. every cell's synthesis and quality report; 6. the Dice cells' segmentation runs
    quality: dict[str, dict | None] = {}
    seg: dict[str, dict[int, dict]] = {}
    for c in cells:
        plan.add(f"synth_{c.name}", lambda c=c: run.bundle(
            f"synth_{c.name}", out / "cells" / c.name / "datalist.json", ddpm_configs(cfg, "synthesize"), image_ckpt=str(models[c.model]),
            boundary_model=str(bmodel), num_samples=n, sampler=c.sampler, num_inference_steps=c.steps, amp_dtype=c.amp_dtype,
            prediction_type="flow" if c.model == "flow" else None, output_dir=str(out / "cells" / c.name), **geo),
            after=[f"model_{c.model}", "boundaries"])
    for c in cells:
        plan.add(f"quality_{c.name}", lambda c=c: quality.__setitem__(
            c.name, quality_report(run, out, cfg, out / "cells" / c.name, duke, teacher, name=f"quality_{c.name}")),
            after=[f"synth_{c.name}", *teacher_step])
    try:
        bf16_seeds = [int(x) for x in a.bf16_seeds.split(",") if x.strip()] if a.bf16_seeds else seeds
    except ValueError:
        p.error(f"--bf16-seeds takes comma-separated integers, got {a.bf16_seeds!r}")
    for c in dice:
        for seed in (bf16_seeds if c.amp_dtype else seeds):
            def seg_cell(c: Cell = c, seed: int = seed) -> None:
                sets = {f"R66_S{n}_{c.name}": ([real, str(out / "cells" / c.name / "datalist.json")], ratio)}
                for m in seg_steps(run, cfg, sets, test, seed, net, f"_seed{seed}").values():
                    seg.setdefault(c.name, {})[seed] = m

            plan.add(f"seg_{c.name}_{seed}", seg_cell, after=[f"synth_{c.name}"])
    reference = max((c for c in cells if c.sampler == REFERENCE and not c.amp_dtype), key=lambda c: c.nfe, default=None)
    reference = reference.name if reference else None
    est = expected_minutes(cfg["cost"], cells, n, dice, seeds, stages=trained)
    print(f"{len(cells)} cells, {len(dice)} with Dice over seeds {seeds}; expected CPU minutes, one step at a time: {est}")
    plan.run()
    if a.dry_run:
        return 0
    digests = {c.name: label_digest(out / "cells" / c.name) for c in cells}
    meta = {"scale": a.scale, "why": cfg["why"], "settings": cfg, "num_samples": n, "seed": a.seed, "seeds": seeds,
            "nfe": nfes, "samplers": samplers, "reference": reference, "bf16": bf16.name if bf16 else None,
            "dice_cells": [c.name for c in dice],
            "models": {k: str(v) for k, v in models.items()}, "flow_init": None if a.flow_ckpt else a.flow_init,
            "teacher": str(teacher), "teacher_metrics": teacher_metrics.get("R66_S0"), "test_datalist": str(test),
            "device": a.device, "jobs": a.jobs, "threads": a.threads, "labels_identical": len(set(digests.values())) == 1,
            "versions": _versions(), "expected_minutes": est, "wall_time_min": round((time.time() - t_start) / 60, 1),
            "step_minutes": {k: round(v / 60, 2) for k, v in run.log.items()}}
    rows = [cell_row(c, synthesis_seconds(out / "cells" / c.name), run.log.get(f"synth_{c.name}"), n, quality.get(c.name),
                     seg.get(c.name)) for c in cells]
    write_results(out, meta, rows)
    return 0


def add_models(plan: Plan, run: Runner, cfg: dict, a: Any, out: Path, data: Path, duke: Path, real: str,
               geo: dict, needed: set[str]) -> tuple[dict[str, Path], int]:
    """Add the steps that train the stage-3 models of ``needed`` (``"v"``, ``"flow"``) unless given by
    ``--v-ckpt`` / ``--flow-ckpt``; each model's last step is named ``model_v`` / ``model_flow`` (a no-op for a
    given checkpoint or a model no cell samples).

    Returns:
        ``{"v": stage-3 model.pt, "flow": stage-3 model.pt}`` and the number of diffusion stages trained.
    """
    from duke_retidiff import unlabeled_datalist

    given = {"v": a.v_ckpt, "flow": a.flow_ckpt}
    unlabeled = unlabeled_datalist(data, out)
    flow = {"prediction_type": "flow"}
    stage1 = {"v": out / "stage1_pretrain", "flow": out / "stage1_pretrain_flow"}
    stage3 = {"v": out / "stage3_finetune", "flow": out / "stage3_finetune_flow"}
    init = {"v": "v", "flow": a.flow_init}  # whose stage 1 each stage 3 starts from
    want1 = {init[m] for m in needed if given[m] is None}
    for m in ("v", "flow"):
        if m in want1:
            plan.add(f"stage1_{m}", lambda m=m: run.bundle(stage1[m].name, stage1[m] / "model.pt", ddpm_configs(cfg, "pretrain"),
                                                           datalist=str(unlabeled), dataset_dir=str(data), output_dir=str(stage1[m]),
                                                           **geo, **(flow if m == "flow" else {})))
    for m in ("v", "flow"):
        if given[m] is not None or m not in needed:  # given, or no cell samples it: nothing to train
            plan.add(f"model_{m}", lambda: None)
            continue
        plan.add(f"model_{m}", lambda m=m: run.bundle(
            stage3[m].name, stage3[m] / "model.pt", ddpm_configs(cfg, "finetune"), dataset_dir=str(duke), datalist=real,
            pretrained_ckpt=str(stage1[init[m]] / "model.pt"), output_dir=str(stage3[m]), **geo, **(flow if m == "flow" else {})),
            after=[f"stage1_{init[m]}"])
    trained = len(want1) + sum(1 for m in needed if given[m] is None)
    return {m: (given[m].resolve() if given[m] is not None else stage3[m] / "model.pt") for m in ("v", "flow")}, trained


def synthesis_seconds(folder: Path) -> float | None:
    """The synthesis engine's own seconds (``manifest.json`` ``seconds``: label maps, images and their writing, without
    the bundle process's start-up, which is 15-20 s on this CPU: as long as a whole NFE-5 cell of 64 pairs)."""
    try:
        return float(json.loads((folder / "manifest.json").read_text())["seconds"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def cell_row(cell: Cell, seconds: float | None, step_seconds: float | None, n: int, q: dict | None,
             runs: dict[int, dict] | None) -> dict[str, Any]:
    """One row of the table: the cell's sampler, steps, NFE, precision, s/pair (the engine's ``seconds`` / n; the
    whole step's ``step_seconds`` / n too), FD, FD/floor, KID (and its floor), teacher adherence and the downstream
    Dice per seed with their mean and spread (half of max - min, NaN for one seed); NaN where a measurement is
    missing."""
    nan = float("nan")
    f, adh = (q or {}).get("frechet") or {}, (q or {}).get("adherence") or {}
    fd, floor = f.get("fd_matched", nan), f.get("fd_floor", nan)
    dice = {s: runs[s]["mean_dice"] for s in sorted(runs or {})}
    vals = list(dice.values())
    return {"cell": cell.name, "sampler": cell.sampler, "model": cell.model, "nfe_budget": cell.nfe, "steps": cell.steps,
            "nfe": cell.evaluations, "amp_dtype": cell.amp_dtype, "s_per_pair": seconds / n if seconds else nan,
            "step_s_per_pair": step_seconds / n if step_seconds else nan,
            "fd": fd, "fd_floor": floor, "fd_over_floor": fd / floor if floor == floor and floor else nan,
            "kid": f.get("kid_matched", nan), "kid_floor": f.get("kid_floor", nan), "adherence": adh.get("mean_dice", nan),
            "dice_seeds": dice, "dice_mean": float(np.mean(vals)) if vals else nan,
            "dice_spread": float(np.ptp(vals)) / 2 if len(vals) > 1 else nan,
            "segmentation": seed_mean(runs) if runs else None}


def bf16_paired(rows: list[dict]) -> dict[str, Any] | None:
    """The bf16 cell against its float32 twin (same sampler and NFE) on the segmentation seeds both have: ``{"twin",
    "seeds", "bf16", "float32", "delta", "fd_bf16", "fd_float32"}`` (mean Dice over those seeds), or None when either
    has no Dice or they share no seed."""
    for r in rows:
        if r["amp_dtype"] != "bfloat16":
            continue
        twin = next((t for t in rows if t["sampler"] == r["sampler"] and t["nfe_budget"] == r["nfe_budget"] and not t["amp_dtype"]), None)
        common = sorted(set(r["dice_seeds"]) & set(twin["dice_seeds"])) if twin else []
        if common:
            b, f = (float(np.mean([x["dice_seeds"][k] for k in common])) for x in (r, twin))
            return {"twin": twin["cell"], "seeds": common, "bf16": b, "float32": f, "delta": b - f,
                    "fd_bf16": r["fd"], "fd_float32": twin["fd"]}
    return None


def _json_safe(obj: Any) -> Any:
    """``obj`` with every NaN float replaced by None (JSON has no NaN: a missing measurement is ``null``)."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def _f(x: float, fmt: str) -> str:
    return "-" if x is None or x != x else format(x, fmt)


def write_results(out: Path, meta: dict, rows: list[dict]) -> None:
    """``results.json`` (``meta``, ``cells``), ``results.md`` (one table row a cell) and ``nfe.png``.

    Args:
        meta: the run's settings and provenance (as :func:`main` builds it: ``scale``, ``why``, ``num_samples``,
            ``seeds``, ``reference``, ``bf16``, ``labels_identical``, ``teacher_metrics``, ``step_minutes``, ...).
        rows: :func:`cell_row` of every cell.
    """
    from monai_oct.core.io import write_json, write_text

    write_json(out / "results.json", {"meta": meta, "cells": _json_safe(rows)})
    n, ref = meta["num_samples"], next((r for r in rows if r["cell"] == meta["reference"]), None)
    teacher = meta.get("teacher_metrics") or {}
    lines = [f"# Samplers on the same {n} label maps ({meta['scale']} scale)", "",
             f"Scale: {meta['why']}. Diffusion seed {meta['seed']}, every cell the same boundary-model label maps and "
             f"initial noise (label maps identical across cells: {meta['labels_identical']}); models {meta['models']} "
             f"(flow stage 3 from {'the given checkpoint' if meta['flow_init'] is None else 'a flow stage 1' if meta['flow_init'] == 'flow' else 'the v stage 1'}); "
             f"device {meta['device']}, {meta['jobs']} step(s) at once, {meta['threads'] or 'default'} thread(s) each; "
             f"wall time {meta['wall_time_min']} min; versions {meta['versions']}.", "",
             "NFE = network evaluations per image: K steps, heun 2K - 1 (K the largest with 2K - 1 <= the cell's NFE). "
             "s/pair = the synthesis engine's time / N (label map + image + writing, from its manifest.json; without the "
             "15-20 s start-up of the bundle process; steps run at once share the CPU). "
             "FD / KID: TF-Inception, synthetic vs Duke train bands at matched sizes; floor = real train vs real val. "
             "Adherence: the teacher's (66/0 segmenter) mean Dice 1-9 against the conditioning labels. "
             f"Dice: mean Dice 1-9 on `{meta['test_datalist']}` of a segmenter trained on 66 real + these {n} pairs, "
             f"seeds {meta['seeds']}, mean ± half the range; only the Dice cells are segmented ({', '.join(meta['dice_cells']) or 'none'}; "
             f"by default the reference {meta['reference']}, each sampler at NFE {' and '.join(map(str, DICE_NFE))} and "
             "the bf16 cell), since every cell x 3 seeds of segmentation runs does not fit.", ""]
    if teacher:
        lines += [f"66/0 (the teacher, seed {meta['seeds'][0]}): mean Dice 1-9 {teacher.get('mean_dice', float('nan')):.3f}.", ""]
    lines += ["| sampler | K | NFE | s/pair | FD | FD/floor | KID | adherence | Dice mean ± spread | Dice per seed | Δ Dice vs reference |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        name = r["sampler"] + (f" ({r['amp_dtype']})" if r["amp_dtype"] else "") + (" (reference)" if r is ref else "")
        k = len(r["dice_seeds"])
        dice = f"{r['dice_mean']:.3f} ± {r['dice_spread']:.3f}" if k > 1 else f"{r['dice_mean']:.3f} (1 seed)" if k else "-"
        delta = _f(r["dice_mean"] - ref["dice_mean"], "+.3f") if ref and r["dice_seeds"] and r is not ref else "-"
        lines.append(f"| {name} | {r['steps']} | {r['nfe']} | {_f(r['s_per_pair'], '.3f')} | {_f(r['fd'], '.1f')} | "
                     f"{_f(r['fd_over_floor'], '.2f')} | {_f(r['kid'], '.4f')} | {_f(r['adherence'], '.3f')} | {dice} | "
                     f"{', '.join(f'{v:.3f}' for v in r['dice_seeds'].values()) or '-'} | {delta} |")
    floor = next((r["fd_floor"] for r in rows if r["fd_floor"] == r["fd_floor"]), float("nan"))
    lines += ["", f"FD floor {_f(floor, '.1f')}, KID floor {_f(next((r['kid_floor'] for r in rows if r['kid_floor'] == r['kid_floor']), float('nan')), '.4f')}."]
    fast = [r for r in rows if r["nfe_budget"] == BF16_NFE and not r["amp_dtype"] and r["fd"] == r["fd"]]
    if meta.get("bf16") and fast:
        best = min(fast, key=lambda r: r["fd"])
        lines.append(f"bf16 cell: {meta['bf16']}; the fast sampler with the lowest FD at NFE {BF16_NFE}: {best['sampler']}.")
    paired = bf16_paired(rows)
    if paired:
        lines.append(f"bf16 vs its float32 twin ({paired['twin']}) on the same segmentation seeds {paired['seeds']}: "
                     f"Dice {paired['bf16']:.3f} vs {paired['float32']:.3f} (Δ {paired['delta']:+.3f}); "
                     f"FD {_f(paired['fd_bf16'], '.1f')} vs {_f(paired['fd_float32'], '.1f')}.")
    lines += ["", "## Step times (minutes)", "", "| step | min |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in meta["step_minutes"].items()]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    nfe_plot(rows, out / "nfe.png", meta["reference"])
    print(f"\nresults: {out / 'results.md'}")


def nfe_plot(rows: list[dict], path: Path, reference: str | None = None, size: tuple[int, int] = (420, 300)) -> None:
    """``path``: two panels, downstream Dice and FD against NFE (log x axis), one line a sampler (float32 cells;
    the bf16 cell a square), the ``reference`` cell's value a grey line across. Drawn with PIL: matplotlib is no
    dependency of the toolkit (nor installed here).
    """
    from PIL import Image, ImageDraw

    from monai_oct.core.io import atomic_path
    from monai_oct.core.visualise import PALETTE

    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    colour = {s: tuple(int(v) for v in PALETTE[1 + i % (len(PALETTE) - 1)]) for i, s in enumerate(samplers)}
    w, h = size
    img = Image.new("RGB", (2 * w, h + 20 + 14 * len(samplers)), "white")
    draw = ImageDraw.Draw(img)
    xs = [r["nfe"] for r in rows]
    lx0, lx1 = np.log10(min(xs)), np.log10(max(xs)) + 1e-9
    for p, (key, title) in enumerate((("dice_mean", "Dice (66/N)"), ("fd", "FD"))):
        vals = [r[key] for r in rows if r[key] == r[key]]
        x0, y0, pw, ph = p * w + 50, 20, w - 70, h - 60
        draw.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        draw.text((x0, 4), f"{title} vs NFE (log)", fill="black")
        if not vals:
            draw.text((x0 + 10, y0 + ph // 2), "not measured", fill="black")
            continue
        lo, hi = min(vals), max(vals)
        pad = 0.08 * (hi - lo) if hi - lo > 1e-12 else 0.5  # points off the frame
        lo, hi = lo - pad, hi + pad

        def pt(nfe: float, v: float) -> tuple[float, float]:
            return (x0 + 12 + (pw - 24) * (np.log10(nfe) - lx0) / (lx1 - lx0 or 1), y0 + ph * (1 - (v - lo) / (hi - lo)))

        ref = next((r[key] for r in rows if r["cell"] == reference and r[key] == r[key]), None)
        if ref is not None:
            draw.line([x0, pt(1, ref)[1], x0 + pw, pt(1, ref)[1]], fill=(160, 160, 160), width=1)
        for nfe in sorted({r["nfe_budget"] for r in rows}):  # the grid's NFE (heun's points sit at 2K - 1 beside them)
            x = pt(nfe, lo)[0]
            draw.line([x, y0 + ph, x, y0 + ph + 4], fill="black")
            draw.text((x - 8, y0 + ph + 6), str(nfe), fill="black")
        draw.text((x0 - 48, y0), f"{hi:.3g}", fill="black")
        draw.text((x0 - 48, y0 + ph - 10), f"{lo:.3g}", fill="black")
        for s in samplers:
            for amp in (None, "bfloat16"):
                pts = [pt(r["nfe"], r[key]) for r in sorted(rows, key=lambda r: r["nfe"])
                       if r["sampler"] == s and r["amp_dtype"] == amp and r[key] == r[key]]
                if len(pts) > 1:
                    draw.line(pts, fill=colour[s], width=2)
                for x, y in pts:
                    box = [x - 3, y - 3, x + 3, y + 3]
                    draw.ellipse(box, fill=colour[s]) if amp is None else draw.rectangle(box, outline=colour[s], width=2)
    for i, s in enumerate(samplers):
        y = h + 10 + 14 * i
        draw.line([50, y + 5, 70, y + 5], fill=colour[s], width=3)
        draw.text((76, y), s + ("  (square: bf16)" if any(r["sampler"] == s and r["amp_dtype"] for r in rows) else ""), fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


if __name__ == "__main__":
    raise SystemExit(main())
