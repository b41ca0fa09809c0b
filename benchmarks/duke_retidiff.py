"""RetiDiff on Duke DME end to end: does the synthetic data help a strong layer segmenter?

Runs every stage as the bundles a user would run (``python -m monai.bundle run``), so what is measured is
what ships:

1. stage 1 (``oct_ddpm/pretrain``) on unannotated B-scans: Duke train images without labels + ``hcms_unlabeled``;
2. label maps: stage 2 (``oct_ddpm/train_masks``, the paper's mask DDPM; at mini scale one-hot encoded, sampled at
   the written resolution and decoded layer-order-aware) and the boundary model (``monai-oct fit-boundaries``: the
   eight layer boundaries per column from a shape model of the 66 train maps, rasterised at the written size);
3. stage 3 (``oct_ddpm/finetune``) from stage 1 on the 66 (image, mask) pairs with DRM, conditioned on the
   area-downsampled encoding of the full-resolution label;
4. synthesis: N pairs from each label source (``synth_N``: boundary model, ``synth_N_dmc``: stage 2) and one image
   per real train mask (``synth_66``, RetiDiff's R/S 0/66 setting); optionally the same masks sampled with DDPM-1000
   and DDIM-k (``--compare-samplers``);
5. segmentation (``oct_layer_seg``) trained on R/S 66/0 and 66/N (each with every seed of ``--seeds``), 0/66, 0/N,
   66/N with the synthetic set relabelled by the 66/0 model (teacher pseudo-labels), and 0/N, 66/N of the stage-2
   set; every run the same number of iterations, scored on a test datalist (default Duke **val**: the test split
   is held out) with the final weights (no checkpoint selection on the test data), pooled and per subject;
6. each synthetic set's quality report (``monai-oct evaluate``: FID/KID with its real-vs-real floor, diversity,
   memorisation, mask adherence to the teacher, plausibility).

Writes ``results.md`` (a table shaped like RetiDiff's Table 2 plus per-class and per-subject Dice), ``results.json``
and ``figure.png`` to ``--out``. Steps whose inputs are ready run ``--jobs`` at a time; every step skips itself when
its output exists, and each bundle resumes from its own checkpoint, so a killed benchmark started again loses
nothing and repeats nothing.

    python benchmarks/duke_retidiff.py --scale mini --out runs/bench_mini --jobs 2 --threads 1    # <= 90 min, 2-core CPU
    python benchmarks/duke_retidiff.py --scale mini64 --out runs/bench_mini64     # the first (64x128) mini scale
    python benchmarks/duke_retidiff.py --scale paper --networks unet,ynet,relaynet,gdnet --device cuda:0   # Table 2's four
    python benchmarks/duke_retidiff.py --scale mini --networks unet,ynet,relaynet,gdnet --seg-epochs 5 \
        --rows R66_S0,R66_SN --seeds 0 --label-sources boundaries \
        --out runs/table2_cpu --jobs 2 --threads 1     # Table 2 on the CPU: 165 iterations per run, all networks alike
    # (to reuse an earlier run's diffusion stages and synthetic set, link its stage1_pretrain, stage3_finetune,
    #  boundary_model.json, synth_N, synth_66, quality and real_bands into the new --out: those steps then skip)
    python benchmarks/duke_retidiff.py --scale paper --out runs/bench_paper --device cuda:0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from monai_oct.bundle import bundle_command, stage_configs
from monai_oct.recipes.presets import load_preset, preset_file, preset_stages

ROOT = Path(__file__).resolve().parents[1]
DDPM = ROOT / "bundles" / "oct_ddpm" / "configs"
SEG = ROOT / "bundles" / "oct_layer_seg" / "configs"

#: Scales: the bundles' preset that sizes every stage (``configs/presets/<preset>.yaml`` of oct_ddpm and
#: oct_layer_seg: geometry, networks, epochs, counts) and what only this benchmark decides (which segmentation
#: networks, segmentation seeds, label sources, the sampler comparison); ``why`` says what each is for (it goes
#: into results.md).
SCALES: dict[str, dict[str, Any]] = {
    "mini": {
        "preset": "cpu_mini",
        "why": ("2-core CPU, <= 90 min with --jobs 2 --threads 1: the segmenter (MONAI UNet) sees the 224-row retina band "
                "at 128x256, 1485 iterations; label maps are made at the written 224x512 (boundary model, or the one-hot "
                "mask DDPM at 64x128 enlarged smoothly and decoded layer-order-aware); images by the 64x128 pixel UNet "
                "(32,64,64,128) conditioned on the area-downsampled one-hot label and enlarged to 224x512; stage 1 20 "
                "epochs of the 164 unannotated scans, stage 2 100 epochs, stage 3 100 epochs of the 66 pairs; DDIM-50; "
                "N=400 pairs per label source"),
        "networks": ["unet"], "seeds": [0, 1, 2], "label_sources": ["boundaries", "dmc"],
        "compare": {"num_samples": 16, "fast_steps": 50},
    },
    "mini_latent": {
        "preset": "cpu_mini_latent", "seg_preset": "cpu_mini", "latent": True,
        "why": ("mini's segmenter and boundary-model label maps, with the images generated at the written 224x512 by "
                "latent diffusion: stage 0 trains MONAI's AutoencoderKL (f = 4) on the 164 unannotated bands, stages 1 "
                "and 3 train the same UNet (32,64,64,128) on its 4x56x128 latents, conditioned on the one-hot label "
                "area-averaged to 56x128; DDIM-50 latents decoded; N=400"),
        "networks": ["unet"], "seeds": [0, 1, 2], "label_sources": ["boundaries"],
        "compare": {"num_samples": 16, "fast_steps": 50},
    },
    "mini64": {
        "preset": "cpu_mini_64x128",
        "why": ("the first mini scale (published 64x128 rows): a 224-row retina band resized to 64x128 for every "
                "network; label maps from the scalar mask DDPM + DMC at 64x128, enlarged by nearest neighbour; N=200"),
        "networks": ["unet"], "seeds": [0], "label_sources": ["dmc"], "compare": {"num_samples": 16, "fast_steps": 50},
    },
    "tiny": {
        "preset": "cpu_smoke",
        "why": "smoke test of the whole chain in a few minutes (numbers meaningless)",
        "networks": ["unet"], "seeds": [0], "label_sources": ["dmc"], "compare": {"num_samples": 4, "fast_steps": 5},
    },
    "paper": {
        "preset": "paper",
        "why": "RetiDiff's published settings (480x480, 1000-step DDPM, AdamW 1e-5, batch 2, N=1000) for a GPU",
        "networks": ["unet", "relaynet"], "seeds": [0, 1, 2], "label_sources": ["dmc", "boundaries"],
        "compare": {"num_samples": 200, "fast_steps": 50},
    },
}


def scale_settings(scales: dict[str, dict[str, Any]], scale: str) -> dict[str, Any]:
    """A scale's settings: its entry of ``scales`` plus ``ddpm``, the oct_ddpm preset's shared values, ``ddpm_stages``,
    its per-stage values, and ``seg``, the oct_layer_seg preset's (``seg_preset`` where the entry names one, else
    ``preset``; as :func:`monai_oct.recipes.presets.load_preset` reads them; results.json records them all)."""
    cfg = dict(scales[scale])
    cfg.setdefault("seg_preset", cfg["preset"])
    cfg["ddpm"] = load_preset(DDPM.parent, cfg["preset"])
    cfg["ddpm_stages"] = preset_stages(DDPM.parent, cfg["preset"])
    cfg["seg"] = load_preset(SEG.parent, cfg["seg_preset"])
    return cfg


def ddpm_configs(cfg: dict[str, Any], stage: str) -> list[Path]:
    """The config files of an oct_ddpm stage at the scale ``cfg``: common, the stage, the preset (last, so it wins)."""
    return [DDPM / c for c in stage_configs(stage)] + [preset_file(DDPM.parent, cfg["preset"])]


def seg_configs(cfg: dict[str, Any], *stages: str) -> list[Path]:
    """The config files of an oct_layer_seg run: train.yaml, the preset, then ``stages`` (e.g. ``"evaluate"``)."""
    return [SEG / "train.yaml", preset_file(SEG.parent, cfg["seg_preset"])] + [SEG / f"{s}.yaml" for s in stages]


class Runner:
    """Runs the steps, skipping each whose output exists, and times them into ``log``."""

    def __init__(self, out: Path, device: str, dry_run: bool = False, threads: int = 0) -> None:
        self.out, self.device, self.dry_run = out, device, dry_run
        self.env = dict(os.environ)
        if threads:  # torch reads these at start-up; 1 thread is far faster than 2 on a loaded 2-core machine
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.env.setdefault("MALLOC_MMAP_THRESHOLD_", "33554432")
        self.env.setdefault("MALLOC_TRIM_THRESHOLD_", "17179869184")
        self.log: dict[str, float] = {}
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timing_file = out / "timings.json"
        self._lock = threading.Lock()  # steps may run in threads (Plan): one writer of timings.json at a time
        if self.timing_file.is_file():
            self.log.update(json.loads(self.timing_file.read_text()))

    def bundle(self, name: str, done: Path, configs: list[Path], *, bundle_dir: Path | None = None, **overrides: Any) -> None:
        """Run one bundle stage (``python -m monai.bundle run``) as :meth:`step`; None overrides are left out.

        Args:
            bundle_dir: the bundle whose ``metadata.json`` and ``logging.conf`` the stage uses (default: the folder
                above the first config's; the fundus stages start with oct_ddpm's files but are ``fundus_av``'s).
        """
        overrides.setdefault("device", self.device)
        self.step(name, done, bundle_command(bundle_dir or configs[0].parent.parent, configs,
                                             **{k: v for k, v in overrides.items() if v is not None}))

    def step(self, name: str, done: Path, cmd: list[str], required: bool = True) -> bool:
        """Run ``cmd`` unless ``done`` exists; output in ``logs/<name>.log``, time in ``timings.json``.

        Returns:
            True when ``done`` exists afterwards (or in a dry run).

        Raises:
            RuntimeError: a ``required`` step that fails or does not write ``done`` (with the log's last lines).
        """
        if done.exists():
            print(f"[skip] {name}: {done} exists")
            return True
        print(f"[run ] {name}: {' '.join(cmd[1:])}", flush=True)
        if self.dry_run:
            return True
        t0 = time.time()
        with open(self.logs / f"{name}.log", "a") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        if rc != 0 or not done.exists():
            tail = (self.logs / f"{name}.log").read_text().splitlines()[-25:]
            msg = f"step {name} failed (exit {rc}); last lines of {self.logs / (name + '.log')}:\n" + "\n".join(tail)
            if required:
                raise RuntimeError(msg)
            print(f"[warn] {msg}")
            return False
        with self._lock:
            if self.timing_file.is_file():  # another Runner on the same folder may have added steps meanwhile
                self.log = {**json.loads(self.timing_file.read_text()), **self.log}
            self.log[name] = self.log.get(name, 0.0) + time.time() - t0
            tmp = self.timing_file.with_name(".tmp." + self.timing_file.name)
            tmp.write_text(json.dumps(self.log, indent=1))
            tmp.replace(self.timing_file)
        print(f"[done] {name}: {self.log[name] / 60:.1f} min", flush=True)
        return True


class Plan:
    """Steps with dependencies, run ``jobs`` at a time: among the steps whose dependencies are done, the one added
    first starts first (so add the critical path first). After a failure nothing new starts; the steps running
    finish and :meth:`run` raises the first error.

    A thread per step and a counter, not ``concurrent.futures``: a pool worker blocked on a dependency would hold a
    slot, and each step is a subprocess anyway (the threads only wait).

    Args:
        jobs: steps running at once (each a bundle process; with ``--threads 1`` one core each).
    """

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self.steps: list[tuple[str, Any, tuple[str, ...]]] = []

    def add(self, name: str, fn: Any, after: tuple[str, ...] | list[str] = ()) -> str:
        """Add step ``name`` (``fn()`` runs it) to start once every step of ``after`` is done; returns ``name``.

        Raises:
            ValueError: for a name added twice or a dependency never added.
        """
        names = {n for n, _, _ in self.steps}
        missing = [d for d in after if d not in names]
        if name in names or missing:
            raise ValueError(f"plan: step {name!r} " + ("added twice" if name in names else f"waits on unknown steps {missing}"))
        self.steps.append((name, fn, tuple(after)))
        return name

    def run(self) -> None:
        """Run every step.

        Raises:
            the first exception a step raised (after the running steps finished).
        """
        cond, done, errors = threading.Condition(), set(), []
        pending, running = list(self.steps), 0

        def work(name: str, fn: Any) -> None:
            nonlocal running
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised by run() in the main thread
                errors.append(e)
            finally:
                with cond:
                    running -= 1
                    done.add(name)
                    cond.notify_all()

        with cond:
            while running or (pending and not errors):
                ready = [] if errors else [st for st in pending if set(st[2]) <= done]
                for st in ready[: self.jobs - running]:
                    pending.remove(st)
                    running += 1
                    threading.Thread(target=work, args=st[:2], name=st[0], daemon=True).start()
                cond.wait()
        if errors:
            raise errors[0]

def unlabeled_datalist(data: Path, out: Path) -> Path:
    """Duke train images (their labels dropped) + every ``hcms_unlabeled`` PNG, as one image-only datalist."""
    duke = json.loads((data / "duke_dme" / "datalist_train.json").read_text())["train"]
    items = [{"image": str((data / "duke_dme" / it["image"]).resolve())} for it in duke]
    items += [{"image": str(p.resolve())} for p in sorted((data / "hcms_unlabeled").glob("*.png"))]
    if not items:
        raise FileNotFoundError(f"no unannotated images under {data}")
    path = out / "unlabeled.json"
    path.write_text(json.dumps({"training": items}, indent=1))
    return path


#: The segmentation rows (training sets) of the main label source; the other sources add R0_SN_<src>, R66_SN_<src>.
ROWS = ("R66_S0", "R66_SN", "R0_SN", "R0_S66", "R66_SN_pseudo")


def parse_rows(text: str | None) -> set[str]:
    """The rows of ``--rows`` (comma-separated; None: all of :data:`ROWS`). Selecting ``R0_SN`` or ``R66_SN`` also
    selects the other label sources' row of that name.

    Raises:
        ValueError: for an empty list or an unknown row, naming the known ones.
    """
    if text is None:
        return set(ROWS)
    rows = {x.strip() for x in text.split(",") if x.strip()}
    bad = sorted(rows - set(ROWS))
    if bad or not rows:
        raise ValueError(f"--rows {text!r}: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(ROWS)}")
    return rows


def parse_networks(text: str) -> list[str]:
    """The segmentation networks of ``--networks`` (comma-separated, lower-cased, in order, repeats dropped).

    Raises:
        ValueError: for an empty list or a name ``monai_oct.networks.segmentation.segmentation_network`` does not
            know, naming it and the known ones.
    """
    from monai_oct.networks.segmentation import SEGMENTATION_NETWORKS

    names = list(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    bad = [x for x in names if x not in SEGMENTATION_NETWORKS]
    if bad or not names:
        raise ValueError(f"--networks {text!r}: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(SEGMENTATION_NETWORKS)}")
    return names


def seg_steps(run: Runner, cfg: dict[str, Any], sets: dict[str, tuple[list[str], list[float] | None]], test: Path,
              seed: int, network: str, tag: str = "") -> dict[str, dict]:
    """Train one segmentation model per training set (same iterations) and score its final weights on ``test``.

    Args:
        tag: appended to each run's folder and step names (e.g. ``"_seed1"``), so that repeats of a set coexist.

    Returns:
        ``{set name: metrics.json of the evaluation}`` (sets whose evaluation is missing are left out).
    """
    common = {"network": network, "seed": seed, "progress": False}
    results = {}
    for name, (datalists, ratio) in sets.items():
        d = run.out / "seg" / f"{network}_{name}{tag}"
        run.bundle(f"seg_{network}_{name}{tag}", d / "model_final.pt", seg_configs(cfg), datalist=datalists, mix_ratio=ratio,
                   val_datalist=str(test), output_dir=str(d), val_interval=cfg["seg"]["max_epochs"] + 1,
                   max_epochs=cfg.get("seg_overrides"), **common)
        run.bundle(f"eval_{network}_{name}{tag}", d / "eval" / "metrics.json", seg_configs(cfg, "evaluate"),
                   datalist=str(test), ckpt=str(d / "model_final.pt"), output_dir=str(d / "eval"), overlays=2, **common)
        if (d / "eval" / "metrics.json").is_file():
            results[name] = json.loads((d / "eval" / "metrics.json").read_text())
            results[name]["per_subject"] = per_subject_dice(d / "eval" / "per_image.csv")
    return results


def per_subject_dice(csv_path: Path) -> dict[str, float]:
    """Mean Dice 1-9 per test subject from an evaluation's ``per_image.csv``: per class the mean over the subject's
    images where the class occurs (Dice is NaN where neither truth nor prediction has it), then the mean over
    classes. The subject is the ``Subject_NN`` of the file name (``"all"`` when a name has none)."""
    import csv
    import re

    if not csv_path.is_file():
        return {}
    rows: dict[str, list[dict[str, str]]] = {}
    with open(csv_path, newline="") as fh:
        for r in csv.DictReader(fh):
            m = re.search(r"Subject_\d+", r["image"])
            rows.setdefault(m.group(0) if m else "all", []).append(r)
    out = {}
    for subject, rs in sorted(rows.items()):
        cols = [f"dice_{c}" for c in range(1, 10) if f"dice_{c}" in rs[0]]  # Duke DME classes 1-9 (0: vitreous)
        per_class = [np.nanmean([float(r[c]) if r[c] != "" else np.nan for r in rs]) for c in cols]
        out[subject] = round(float(np.nanmean(per_class)), 4)
    return out


def benchmark_parser(doc: str, scales: dict, out: str) -> argparse.ArgumentParser:
    """The arguments every Duke benchmark takes (scale, output, data, test datalist, device, seed, N, mix, threads)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(scales), default="mini")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding duke_dme/ (and hcms_unlabeled/)")
    p.add_argument("--test-datalist", type=Path, default=None, help="labelled datalist to score on (default: Duke val)")
    p.add_argument("--device", default="cuda:0" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=None, help="N synthetic pairs (default: the scale's)")
    p.add_argument("--mix-ratio", default="1,1", help="real:synthetic share of each mixed training epoch ('none': sizes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per step (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="steps run at once when their inputs are ready (2 on a 2-core CPU "
                                                       "with --threads 1)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def resolve_data(a: argparse.Namespace) -> tuple[Path, Path, Path, Path] | None:
    """``(data, out, duke_dir, test_datalist)`` as absolute paths; None (after saying why) without the Duke data."""
    data, out = a.data.resolve(), a.out.resolve()
    duke = data / "duke_dme"
    if not (duke / "datalist_train.json").is_file():
        print(f"Duke DME data not found under {data} (expects duke_dme/datalist_train.json); nothing to do.")
        return None
    return data, out, duke, (a.test_datalist or duke / "datalist_val.json").resolve()


def main(argv: list[str] | None = None) -> int:
    p = benchmark_parser(__doc__, SCALES, "runs/bench_retidiff")
    p.add_argument("--compare-samplers", action="store_true", help="also sample the same masks with DDPM-1000 and DDIM")
    p.add_argument("--seeds", default=None, help="segmentation seeds of the 66/0 and 66/N rows, e.g. 0,1,2 (default: the scale's)")
    p.add_argument("--comparison-samples", type=int, default=None,
                   help="pairs of each label source after the first (default: N, as the main set)")
    p.add_argument("--label-sources", default=None, help="label sources of the synthetic sets, first = the main set: "
                                                         "boundaries, dmc (default: the scale's)")
    p.add_argument("--networks", default=None, help="segmentation networks, first = the quality report's teacher, e.g. "
                                                    "unet,ynet,relaynet,gdnet (RetiDiff's Table 2; default: the scale's)")
    p.add_argument("--rows", default=None,
                   help="segmentation rows to train, e.g. R66_S0,R66_SN (Table 2's R/S pairs only); default all of "
                        + ", ".join(ROWS) + " and the other label sources' R0_SN / R66_SN")
    p.add_argument("--seg-epochs", type=int, default=None,
                   help="segmentation epochs instead of the preset's (every network and set alike; the paper networks "
                        "cost ~15x the mini UNet per iteration on the CPU); results.md says so. Use its own --out")
    a = p.parse_args(argv)

    cfg = scale_settings(SCALES, a.scale)
    if a.seg_epochs is not None:
        if a.seg_epochs < 1:
            p.error(f"--seg-epochs must be >= 1, got {a.seg_epochs}")
        per_epoch = cfg["seg"].get("samples_per_epoch")
        iters = f" ({a.seg_epochs * per_epoch // cfg['seg']['batch_size']} iterations)" if per_epoch else ""
        cfg["why"] += f"; segmentation {a.seg_epochs} epochs{iters} instead of the preset's {cfg['seg']['max_epochs']}"
        cfg["seg"]["max_epochs"] = cfg["seg_overrides"] = a.seg_epochs
    if a.networks:
        try:
            cfg["networks"] = parse_networks(a.networks)
        except ValueError as e:
            p.error(str(e))
    paths = resolve_data(a)
    if paths is None:
        return 2
    data, out, duke, test = paths
    n = a.num_samples or cfg["ddpm"]["num_samples"]
    n_other = a.comparison_samples or n
    seeds = [int(x) for x in a.seeds.split(",")] if a.seeds else list(cfg["seeds"])
    sources = a.label_sources.split(",") if a.label_sources else list(cfg["label_sources"])
    if not seeds or set(sources) - {"boundaries", "dmc"} or not sources:
        p.error(f"--seeds needs at least one seed and --label-sources only boundaries and dmc, got {seeds} / {sources}")
    try:
        rows = parse_rows(a.rows)
    except ValueError as e:
        p.error(str(e))
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, a.device, a.dry_run, a.threads)
    plan = Plan(a.jobs)
    t_start = time.time()
    real = str(duke / "datalist_train.json")
    ratio = None if a.mix_ratio.lower() == "none" else [float(x) for x in a.mix_ratio.split(",")]
    g = cfg["ddpm"]

    # 1-3. the diffusion stages and the boundary model (the critical path first: Plan starts steps in this order)
    geo = {"seed": a.seed, "progress": False}
    s0, s1, s2, s3 = out / "stage0_autoencoder", out / "stage1_pretrain", out / "stage2_masks", out / "stage3_finetune"
    unlabeled = unlabeled_datalist(data, out)
    image_geo = dict(geo)  # what stages 1, 3 and the syntheses share: latent scales add the autoencoder
    if cfg.get("latent"):
        plan.add("stage0", lambda: run.bundle("stage0_autoencoder", s0 / "model.pt", ddpm_configs(cfg, "train_autoencoder"),
                                              datalist=str(unlabeled), dataset_dir=str(data), output_dir=str(s0), **geo))
        image_geo["latent_ckpt"] = str(s0 / "model.pt")
    plan.add("stage1", lambda: run.bundle("stage1_pretrain", s1 / "model.pt", ddpm_configs(cfg, "pretrain"),
                                          datalist=str(unlabeled), dataset_dir=str(data), output_dir=str(s1), **image_geo),
             after=["stage0"] if cfg.get("latent") else [])
    plan.add("stage3", lambda: run.bundle("stage3_finetune", s3 / "model.pt", ddpm_configs(cfg, "finetune"), dataset_dir=str(duke),
                                          datalist=real, pretrained_ckpt=str(s1 / "model.pt"), output_dir=str(s3), **image_geo),
             after=["stage1"])
    bmodel = out / "boundary_model.json"
    synth = {"image_ckpt": str(s3 / "model.pt"), **image_geo}
    sets_dir = {src: out / ("synth_N" if i == 0 else f"synth_N_{src}") for i, src in enumerate(sources)}
    s66 = out / "synth_66"
    results: dict[str, dict] = {net: {} for net in cfg["networks"]}
    quality: dict[str, dict | None] = {}
    main_src, sN = sources[0], sets_dir[sources[0]]
    sN_list = str(sN / "datalist.json")
    teacher0 = out / "seg" / f"{cfg['networks'][0]}_R66_S0_seed{seeds[0]}" / "model_final.pt"

    def add_source(src: str) -> None:
        """The label model of ``src`` (the boundary model's fit, or stage 2) and its N synthetic pairs (step 4)."""
        if src == "boundaries":
            plan.add("labels_boundaries", lambda: run.step("fit_boundaries", bmodel, [
                sys.executable, "-m", "monai_oct", "fit-boundaries", real, "--band-height", str(g["band_height"]), "--out", str(bmodel)]))
            label_args = {"boundary_model": str(bmodel)}
        else:
            plan.add("labels_dmc", lambda: run.bundle("stage2_masks", s2 / "model.pt", ddpm_configs(cfg, "train_masks"), dataset_dir=str(duke),
                                                      datalist=real, output_dir=str(s2), **geo))
            label_args = {"mask_ckpt": str(s2 / "model.pt")}
        d, k = sets_dir[src], n if src == main_src else n_other
        plan.add(f"synth_{src}", lambda: run.bundle(f"synthesize_N_{src}", d / "datalist.json", ddpm_configs(cfg, "synthesize"),
                                                    num_samples=k, output_dir=str(d), **label_args, **synth),
                 after=["stage3", f"labels_{src}"])

    def add_quality(src: str) -> None:
        """Step 6 for ``src``: its quality report, the first network's 66/0 model as the adherence teacher."""
        d = sets_dir[src]
        plan.add(f"quality_{src}", lambda: quality.__setitem__(
            src, quality_report(run, out, cfg, d, duke, teacher=teacher0, name="quality" if d == sN else f"quality_{src}")),
            after=[f"synth_{src}"] + teacher_step(cfg["networks"][0]))

    def teacher_step(net: str) -> list[str]:
        """The step training ``net``'s 66/0 model of the first seed, if this run trains it (``--rows`` may leave it
        to an earlier run, whose model then serves)."""
        return [f"{net}_R66_S0_{seeds[0]}"] if "R66_S0" in rows else []

    def seg(net: str, sets: dict, seed: int, tag: str = "") -> None:
        for key, m in seg_steps(run, cfg, sets, test, seed, net, tag).items():
            results[net].setdefault(key, {})[seed] = m

    # 4. synthesis of the main set and one image per real train mask
    add_source(main_src)
    plan.add("synth_66", lambda: run.bundle("synthesize_66", s66 / "datalist.json", ddpm_configs(cfg, "synthesize"),
                                            label_datalist=real, num_samples=66, output_dir=str(s66), **synth), after=["stage3"])

    # 5. segmentation: R/S rows (seeds for 66/0 and 66/N), teacher pseudo-labels
    for net in cfg["networks"]:
        for seed in seeds if "R66_S0" in rows else ():
            plan.add(f"{net}_R66_S0_{seed}", lambda net=net, seed=seed: seg(net, {"R66_S0": ([real], None)}, seed, f"_seed{seed}"))
        for seed in seeds if "R66_SN" in rows else ():
            plan.add(f"{net}_R66_SN_{seed}", lambda net=net, seed=seed: seg(net, {"R66_SN": ([real, sN_list], ratio)}, seed, f"_seed{seed}"),
                     after=[f"synth_{main_src}"])
        if "R0_SN" in rows:
            plan.add(f"{net}_R0_SN", lambda net=net: seg(net, {"R0_SN": ([sN_list], None)}, seeds[0], f"_seed{seeds[0]}"),
                     after=[f"synth_{main_src}"])
        if "R0_S66" in rows:
            plan.add(f"{net}_R0_S66", lambda net=net: seg(net, {"R0_S66": ([str(s66 / "datalist.json")], None)}, seeds[0],
                                                          f"_seed{seeds[0]}"), after=["synth_66"])
        pseudo = out / f"synth_N_pseudo_{net}"
        teacher = out / "seg" / f"{net}_R66_S0_seed{seeds[0]}" / "model_final.pt"

        def pseudo_rows(net: str = net, pseudo: Path = pseudo, teacher: Path = teacher) -> None:
            run.bundle(f"pseudo_label_{net}", pseudo / "datalist.json", seg_configs(cfg, "pseudo_label"), dataset_dir=str(sN),
                       ckpt=str(teacher), output_dir=str(pseudo), network=net,
                       progress=False)  # pseudo_label.yaml takes the synthetic bands whole (band_height 0)
            seg(net, {"R66_SN_pseudo": ([real, str(pseudo / "datalist.json")], ratio)}, seeds[0], f"_seed{seeds[0]}")

        if "R66_SN_pseudo" in rows:
            plan.add(f"{net}_R66_SN_pseudo", pseudo_rows, after=[f"synth_{main_src}"] + teacher_step(net))
    add_quality(main_src)

    # the other label sources last (comparison rows: 0/N and 66/N, the first seed)
    for src in sources[1:]:
        add_source(src)
        other = str(sets_dir[src] / "datalist.json")
        other_rows = {k: v for k, v in {f"R0_SN_{src}": ([other], None), f"R66_SN_{src}": ([real, other], ratio)}.items()
                      if k.rsplit("_", 1)[0] in rows}
        for net in cfg["networks"] if other_rows else ():
            plan.add(f"{net}_{src}_rows", lambda net=net, sets=other_rows: seg(net, sets, seeds[0], f"_seed{seeds[0]}"),
                     after=[f"synth_{src}"])
        add_quality(src)
    plan.run()

    compare = {}
    if a.compare_samplers:
        compare = sampler_comparison(run, cfg, a, out, synth, s2, real, ratio, test)
    if a.dry_run:
        return 0
    write_results(out, a, cfg, n, test, results, compare, quality, time.time() - t_start, run.log,
                  {"seeds": seeds, "label_sources": sources, "sets": {k: str(v) for k, v in sets_dir.items()},
                   "comparison_samples": n_other})
    return 0


def sampler_comparison(run: Runner, cfg: dict, a: argparse.Namespace, out: Path, synth: dict, s2: Path, real: str,
                       ratio, test: Path) -> dict:
    """The same stage-2 masks sampled with DDPM-1000 and DDIM-k; sampling time per image and 66/n Dice of each."""
    c = cfg["compare"]
    res = {}
    masks = out / "synth_N"  # reuse the first masks of the main set: same labels, only the image sampler differs
    for name, sampler, steps in (("ddpm1000", "ddpm", 1000), (f"ddim{c['fast_steps']}", "ddim", c["fast_steps"])):
        d = out / f"compare_{name}"
        sub = out / f"compare_masks_{c['num_samples']}.json"
        items = json.loads((masks / "datalist.json").read_text())["training"][: c["num_samples"]]
        sub.write_text(json.dumps({"training": [{k: str(masks / v) for k, v in it.items() if k in ("image", "label")} for it in items]}))
        run.bundle(f"compare_{name}", d / "datalist.json", ddpm_configs(cfg, "synthesize"), label_datalist=str(sub), num_samples=c["num_samples"],
                   sampler=sampler, num_inference_steps=steps, output_dir=str(d), **synth)
        seg = seg_steps(run, cfg, {f"R66_S{c['num_samples']}_{name}": ([real, str(d / "datalist.json")], ratio)}, test, a.seed,
                        cfg["networks"][0])
        res[name] = {"seconds_per_image": run.log.get(f"compare_{name}", float("nan")) / c["num_samples"], "steps": steps,
                     "metrics": next(iter(seg.values()), None)}
    return res


def band_dataset(datalist: Path, out: Path, band_height: int, size: list[int] | None) -> Path:
    """Real B-scans cropped to the retina band (located from the label) at the synthetic images' size, so that
    distances compare like with like; returns the datalist written (``training``)."""
    from monai_oct.core.datalist import load_datalist, write_datalist
    from monai_oct.core.io import write_png
    from monai_oct.recipes.pipelines import bscan_transforms

    dl = out / "datalist.json"
    if dl.is_file():
        return dl
    chain = bscan_transforms(image_size=size, keys=["image", "label"], band_height=band_height or None, band_from_label=True)
    items = []
    for it in load_datalist(datalist):
        d = chain(dict(it))
        name = Path(it["image"]).name
        img = ((d["image"][0].numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
        write_png(out / "images" / name, img)
        write_png(out / "labels" / name, d["label"][0].numpy().astype(np.uint8))
        items.append({"image": str(out / "images" / name), "label": str(out / "labels" / name)})
    write_datalist(dl, items, key="training")
    return dl


_BANDS_LOCK = threading.Lock()


def quality_report(run: Runner, out: Path, cfg: dict, synth: Path, duke: Path, teacher: Path, name: str = "quality") -> dict | None:
    """``monai-oct evaluate`` of the synthetic set against the Duke train bands, the val bands as the real-vs-real
    reference, the 66/0 segmentation model as the adherence teacher; the report goes to ``out/name``."""
    q = out / name
    if not (q / "report.json").is_file() and not run.dry_run:
        g = cfg["ddpm"]
        size = g["output_size"] or g["image_size"]
        with _BANDS_LOCK:  # two quality steps may run at once; the real bands are written once
            real = band_dataset(duke / "datalist_train.json", out / "real_bands" / "train", g["band_height"], size)
            ref = band_dataset(duke / "datalist_val.json", out / "real_bands" / "val", g["band_height"], size)
        s = cfg["seg"]
        cmd = [sys.executable, "-m", "monai_oct", "evaluate", "--real", str(real), "--reference", str(ref),
               "--synthetic", str(synth / "datalist.json"), "--teacher", str(teacher), "--teacher-network", cfg["networks"][0],
               "--teacher-image-size", *map(str, s["image_size"]), "--image-size", *map(str, size), "--out", str(q)]
        run.step(name, q / "report.json", cmd, required=False)  # a missing report leaves the other results
    return json.loads((q / "report.json").read_text()) if (q / "report.json").is_file() else None


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _versions() -> dict[str, str]:
    import monai
    import torch

    import monai_oct

    return {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
            "monai_oct": monai_oct.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cpus"}


GROUPS = ("NFL-IPL", "ONL-ISM", "IRF")


def seg_tables(network: str, res: dict[str, dict], rows: list[tuple[str, str, str]], first: str = "R/S") -> list[str]:
    """Markdown of one network's rows: mean Dice 1-9, RetiDiff's groups and mean PA, then per-class Dice.

    Args:
        network: the heading.
        res: ``{row key: metrics.json of the evaluate bundle}`` (missing rows are skipped).
        rows: ``(key, real, synthetic)`` in table order.
        first: the first column's title.
    """
    from monai_oct.core.labels import DUKE_DME

    nan = float("nan")
    lines = [f"### {network}", "", f"| {first} | real | synthetic | mean Dice 1-9 | " + " | ".join(GROUPS) + " | mean PA |",
             "|---|---|---|---:|" + "---:|" * len(GROUPS) + "---:|"]
    per_class = ["", "Per-class Dice:", "", f"| {first} | " + " | ".join(DUKE_DME.names[1:]) + " |",
                 "|---|" + "---:|" * (DUKE_DME.num_classes - 1)]
    for key, r, s in rows:
        m = res.get(key)
        if m is None:
            continue
        g, pc = m.get("groups", {}), m.get("classes", {})  # metrics.json: {"classes": {"1": {"dice": ...}}, "groups": ...}
        lines.append(f"| {key} | {r} | {s} | {m['mean_dice']:.3f} | " + " | ".join(f"{g.get(x, {}).get('dice', nan):.3f}" for x in GROUPS)
                     + f" | {m.get('mean_pa', nan):.3f} |")
        per_class.append(f"| {key} | " + " | ".join(f"{pc.get(str(c), {}).get('dice', nan):.3f}" for c in range(1, DUKE_DME.num_classes)) + " |")
    return lines + per_class


def seed_mean(runs: dict[int, dict]) -> dict:
    """The metrics of several seeds of one row, averaged: ``mean_dice``, ``mean_pa``, each group's and class's Dice,
    each subject's Dice (``per_subject``); ``seeds`` lists the seeds averaged."""
    ms = list(runs.values())

    def avg(get) -> float:
        vals = [get(m) for m in ms]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else float("nan")

    keys = ms[0]
    return {"seeds": sorted(runs), "mean_dice": avg(lambda m: m.get("mean_dice")), "mean_pa": avg(lambda m: m.get("mean_pa")),
            "pixel_accuracy": avg(lambda m: m.get("pixel_accuracy")),
            "groups": {g: {k: avg(lambda m, g=g, k=k: m.get("groups", {}).get(g, {}).get(k)) for k in ("dice", "pa")}
                       for g in keys.get("groups", {})},
            "classes": {c: {"dice": avg(lambda m, c=c: m.get("classes", {}).get(c, {}).get("dice"))} for c in keys.get("classes", {})},
            "per_subject": {k: avg(lambda m, k=k: m.get("per_subject", {}).get(k)) for k in keys.get("per_subject", {})}}


def table2(means: dict[str, dict[str, dict]], rows: list[tuple[str, str, str]]) -> list[str]:
    """Markdown in RetiDiff's Table 2 layout: one row per R/S setting x model, Dice and pixel accuracy of NFL-IPL,
    ONL-ISM, IRF and their mean (the mean of the three groups, as RetiDiff's mean column); then each model's gain from
    the synthetic data (66/N vs 66/0): mean Dice and fluid (IRF) Dice, absolute and relative.

    Args:
        means: ``{network: {row key: seed means of metrics.json}}`` (:func:`seed_mean`); missing rows are skipped.
        rows: ``(key, real, synthetic)`` in table order.
    """
    nan = float("nan")

    def cols(m: dict, what: str) -> list[float]:
        v = [m.get("groups", {}).get(g, {}).get(what) for g in GROUPS]
        v = [nan if x is None else float(x) for x in v]
        return v + [float(np.mean(v))]

    head = " | ".join(f"Dice {g}" for g in (*GROUPS, "mean")) + " | " + " | ".join(f"PA {g}" for g in (*GROUPS, "mean"))
    lines = [f"| R/S | model | {head} |", "|---|---|" + "---:|" * (2 * len(GROUPS) + 2)]
    for key, r, s in rows:
        for net, res in means.items():
            if key in res:
                vals = cols(res[key], "dice") + cols(res[key], "pa")
                lines.append(f"| {r}/{s} | {net} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    lines += ["", "Gain from the synthetic data (66/N vs 66/0; RetiDiff reports Y-Net's fluid Dice +53.8 %):", "",
              "| model | mean Dice 66/0 | 66/N | change | IRF Dice 66/0 | 66/N | change | relative |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for net, res in means.items():
        if "R66_S0" in res and "R66_SN" in res:
            f0, d0 = cols(res["R66_S0"], "dice")[2:]  # IRF, mean
            f1, d1 = cols(res["R66_SN"], "dice")[2:]
            rel = f"{100 * (f1 - f0) / f0:+.1f} %" if f0 > 0 else "n/a"
            lines.append(f"| {net} | {d0:.3f} | {d1:.3f} | {d1 - d0:+.3f} | {f0:.3f} | {f1:.3f} | {f1 - f0:+.3f} | {rel} |")
    return lines


def seed_table(res: dict[str, dict[int, dict]], keys: list[str]) -> list[str]:
    """Markdown: mean Dice 1-9 and fluid Dice of each seed of the rows ``keys``, their mean ± spread (max - min)."""
    lines = ["| R/S | seeds | mean Dice 1-9 per seed | mean ± spread | fluid Dice per seed | fluid mean |", "|---|---|---|---:|---|---:|"]
    for key in keys:
        runs = res.get(key) or {}
        if not runs:
            continue
        d = [runs[s]["mean_dice"] for s in sorted(runs)]
        f = [runs[s].get("classes", {}).get("9", {}).get("dice", float("nan")) for s in sorted(runs)]
        lines.append(f"| {key} | {','.join(map(str, sorted(runs)))} | {', '.join(f'{x:.3f}' for x in d)} | "
                     f"{np.mean(d):.3f} ± {np.ptp(d) / 2:.3f} | {', '.join(f'{x:.3f}' for x in f)} | {np.mean(f):.3f} |")
    return lines


def subject_table(res: dict[str, dict], keys: list[str]) -> list[str]:
    """Markdown: mean Dice 1-9 per test subject (seed means) beside the pooled value, for the rows ``keys``."""
    subjects = sorted({k for key in keys for k in (res.get(key) or {}).get("per_subject", {})})
    lines = ["| R/S | pooled | " + " | ".join(subjects) + " |", "|---|---:|" + "---:|" * len(subjects)]
    for key in keys:
        m = res.get(key)
        if m:
            lines.append(f"| {key} | {m['mean_dice']:.3f} | " + " | ".join(f"{m['per_subject'].get(x, float('nan')):.3f}" for x in subjects) + " |")
    return lines


def write_results(out: Path, a: argparse.Namespace, cfg: dict, n: int, test: Path, results: dict, compare: dict,
                  quality: dict[str, dict | None], wall: float, timings: dict, plan: dict) -> None:
    """``results.json``, ``results.md`` (Table 2 shape with seed means, seeds, per-subject and per-class Dice, the
    quality of each synthetic set) and ``figure.png``.

    Args:
        results: ``{network: {row key: {seed: metrics.json of the evaluation (+ "per_subject")}}}``.
        quality: ``{label source: monai-oct evaluate report or None}``.
        plan: ``{"seeds", "label_sources", "sets"}`` of this run.
    """
    src = plan["label_sources"]
    rows = [("R66_S0", "66", "0"), ("R0_S66", "0", "66 (real masks)"), ("R0_SN", "0", f"{n} ({src[0]})"),
            ("R66_SN", "66", f"{n} ({src[0]})"), ("R66_SN_pseudo", "66", f"{n} ({src[0]}, teacher labels)")]
    rows += [(f"{k}_{s}", r, f"{plan['comparison_samples']} ({s})") for s in src[1:] for k, r in (("R0_SN", "0"), ("R66_SN", "66"))]
    means = {net: {key: seed_mean(runs) for key, runs in res.items()} for net, res in results.items()}
    meta = {"scale": a.scale, "settings": {k: v for k, v in cfg.items()}, "num_samples": n, "seed": a.seed, **plan,
            "test_datalist": str(test), "device": a.device, "mix_ratio": a.mix_ratio, "jobs": a.jobs, "threads": a.threads,
            "versions": _versions(), "wall_time_min": round(wall / 60, 1),
            "step_minutes": {k: round(v / 60, 2) for k, v in timings.items()}}
    (out / "results.json").write_text(json.dumps({"meta": meta, "segmentation": means, "segmentation_seeds": results,
                                                   "samplers": compare, "quality": quality}, indent=1, default=str))
    lines = [f"# RetiDiff on Duke DME ({a.scale} scale)", "",
             f"Test datalist: `{test}`; diffusion seed {a.seed}, segmentation seeds {plan['seeds']} (66/0 and 66/N; other rows "
             f"seed {plan['seeds'][0]}); device {a.device}, {a.jobs} step(s) at once, {a.threads or 'default'} thread(s) each; "
             f"wall time of this invocation {wall / 60:.1f} min (sum of step times, first runs: {sum(timings.values()) / 60:.1f} min); "
             f"versions {meta['versions']}.", f"Scale: {cfg['why']}.", "",
             "## RetiDiff's Table 2 (test datalist, final weights; rows with several seeds: their mean)", ""]
    lines += table2(means, rows) + ["", "## Segmentation per model (Dice on the test datalist, final weights; rows with "
                                        "several seeds: their mean)", ""]
    for net in results:
        lines += seg_tables(net, means[net], rows) + ["", "Seeds:", ""] + seed_table(results[net], ["R66_S0", "R66_SN"])
        lines += ["", "Per test subject (mean over the subject's images of each class's Dice, then over classes 1-9; "
                      "pooled = the evaluation's mean Dice):", ""] + subject_table(means[net], [k for k, _, _ in rows]) + [""]
    if compare:
        lines += ["## Samplers (same masks, 66 real + these synthetic)", "", "| sampler | steps | s / image | mean Dice 1-9 | IRF |", "|---|---:|---:|---:|---:|"]
        for name, c in compare.items():
            m = c.get("metrics") or {}
            lines.append(f"| {name} | {c['steps']} | {c['seconds_per_image']:.2f} | {m.get('mean_dice', float('nan')):.3f} | "
                         f"{m.get('groups', {}).get('IRF', {}).get('dice', float('nan')):.3f} |")
        lines.append("")
    for s_name, q in quality.items():
        if q:
            sec, k = timings.get(f"synthesize_N_{s_name}"), n if s_name == src[0] else plan["comparison_samples"]
            cost = f"; {sec / k:.2f} s per pair (labels + DDIM images, this step's wall time / N)" if sec else ""
            lines += [f"## Quality of the {s_name} synthetic set{cost}", ""] + quality_table(q) + [""]
    lines += ["## Step times (minutes)", "", "| step | min |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} |" for k, v in timings.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    figure(out)
    print(f"\nresults: {out / 'results.md'}")


def quality_table(q: dict) -> list[str]:
    """Headline rows of a ``monai-oct evaluate`` report (FD/KID beside their real-vs-real floor, diversity,
    memorisation, adherence, plausibility)."""
    nan = float("nan")
    f, d, m = q.get("frechet") or {}, (q.get("diversity") or {}).get("ms_ssim", {}), q.get("memorisation") or {}
    a, p = q.get("adherence") or {}, q.get("plausibility") or {}
    return ["| measure | synthetic vs real train bands | real vs real (floor) |", "|---|---:|---:|",
            f"| Fréchet distance (TF-Inception), matched sizes | {f.get('fd_matched', nan):.1f} | {f.get('fd_floor', nan):.1f} |",
            f"| KID | {f.get('kid_matched', nan):.4f} | {f.get('kid_floor', nan):.4f} |",
            f"| mean pairwise MS-SSIM (lower = more diverse) | {d.get('synthetic', {}).get('mean', nan):.3f} | {d.get('real', {}).get('mean', nan):.3f} |",
            f"| memorised (closer to a train image than any real pair) | {(m.get('pixel') or {}).get('fraction_flagged', nan):.3f} | |",
            f"| mask adherence: teacher Dice vs conditioning label, mean 1-9 | {a.get('mean_dice', nan):.3f} | |",
            f"| label plausibility: valid column fraction | {(p.get('synthetic') or {}).get('valid_column_fraction', nan):.3f} | "
            f"{(p.get('real') or {}).get('valid_column_fraction', nan):.3f} |",
            f"| LPIPS | {q.get('lpips_note', 'not computed')} | |"]


def figure(out: Path, rows: int = 4) -> None:
    """``figure.png``: rows of (real image, real label, synthetic image, synthetic label) at the synthetic size."""
    from monai_oct.core.io import read_image, read_label, write_png

    def colour(lab: np.ndarray) -> np.ndarray:
        return (lab.astype(np.float32) * (255.0 / 9.0)).clip(0, 255).astype(np.uint8)

    sN = out / "synth_N"
    items = json.loads((sN / "datalist.json").read_text())["training"][:rows]
    tiles = []
    for it in items:
        img, lab = read_image(sN / it["image"]), read_label(sN / it["label"])
        tiles.append(np.concatenate([img.astype(np.uint8), np.full((img.shape[0], 4), 255, np.uint8), colour(lab)], axis=1))
    if tiles:
        w = max(t.shape[1] for t in tiles)
        grid = np.concatenate([np.pad(t, ((0, 4), (0, w - t.shape[1])), constant_values=255) for t in tiles], axis=0)
        write_png(out / "figure.png", grid)


if __name__ == "__main__":
    raise SystemExit(main())
