"""Annotated fundus photographs on DRIVE (issue 16): does the synthetic data help vessel and artery/vein segmentation?

Runs every stage of ``bundles/fundus_av`` as a user would (``python -m monai.bundle run`` on
:func:`monai_oct.bundle.fundus_stage_configs`), with the scale's preset layered last, so what is measured is what
ships:

1. data: ``monai-oct drive-datalist`` (train 21-35 / validation 36-40, the fixed 15 / 5 split by image; the DRIVE
   test half is held out), or at ``--scale smoke`` the fundus phantom written in the DRIVE layout;
2. ``train_masks`` (A/V label maps) and ``train_autoencoder`` -> ``train_images`` (RGB photographs in its latent
   space, conditioned on the A/V map);
3. ``synthesize`` N pairs (maps decoded to vessel trees, ``manifest.json`` with their plausibility: connectivity
   to the optic disc and artery-vein adjacency);
4. ``train_seg`` on real 15 / synthetic N / mixed (real + synthetic, ``--mix-ratio``) for every task of
   ``--tasks`` (vessel: vessel vs background; av: artery / vein / background) and every seed of ``--seeds``, the same
   iterations for every set, then ``evaluate_seg`` of the final weights (no checkpoint selection on the test data)
   on the 5 held-out images (or ``--test-datalist``);
5. adherence: ``evaluate_seg`` of the first seed's real-only segmenter on the synthetic images, their conditioning
   maps as the truth.

Writes ``results.md`` (real / synthetic / mixed x task: seed means of vessel Dice, sensitivity, specificity, AUC
and A/V accuracy, each seed, the issue's targets, the generated maps' quality), ``results.json`` and ``figure.png``
(real vs synthetic pairs) to ``--out``. The machinery is ``duke_retidiff.py``'s: steps whose inputs are ready run
``--jobs`` at a time, every step skips itself when its output exists, and each bundle resumes from its own checkpoint.

    python benchmarks/drive_av.py --scale mini --out runs/drive_mini --jobs 2 --threads 1    # <= 90 min, 2-core CPU
    python benchmarks/drive_av.py --scale smoke --out runs/drive_smoke                       # phantom, ~2 min
    python benchmarks/drive_av.py --scale long --out runs/drive_long --jobs 2 --threads 1    # image model 5x longer, real maps
    python benchmarks/drive_av.py --scale gpu --out runs/drive_gpu --device cuda:0          # the GPU sizes (not run)
    python benchmarks/drive_av.py --scale mini --out runs/drive_mini --dry-run               # the commands only
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duke_retidiff import ROOT, Plan, Runner, _cuda, _versions  # noqa: E402

from monai_oct.bundle import fundus_stage_configs  # noqa: E402
from monai_oct.recipes.presets import load_preset  # noqa: E402

FUNDUS = ROOT / "bundles" / "fundus_av"

#: Scales: the fundus_av preset that sizes every stage and what only this benchmark decides (data, seeds, tasks);
#: ``why`` goes into results.md.
SCALES: dict[str, dict[str, Any]] = {
    "mini": {
        "preset": "cpu_mini", "data": "drive", "seeds": [0, 1, 2], "tasks": ["av"],
        "why": ("2-core CPU, <= 90 min with --jobs 2 --threads 1 (bundles/fundus_av/configs/presets/cpu_mini.yaml "
                "states the sizes and the timed estimate); task av only: its evaluation scores the vessel metrics too"),
    },
    "long": {
        "preset": "cpu_mini", "data": "drive", "seeds": [0, 1, 2], "tasks": ["av"], "label_source": "real",
        "epochs": {"train_autoencoder": 300, "train_images": 200}, "num_samples": 30,
        "why": ("cpu_mini with the autoencoder (600 iterations) and the image model (800) trained 7.5x and 5x longer, "
                "conditioned on the 15 real train maps (2 images each, --label-source real: the image model alone "
                "is judged, as RetiDiff's R0/S66 row), ~65 min with --jobs 2 --threads 1 (mini's steps as timed)"),
    },
    "gpu": {
        "preset": "gpu", "data": "drive", "seeds": [0, 1, 2], "tasks": ["av"],
        "why": ("one GPU (bundles/fundus_av/configs/presets/gpu.yaml: thousands of iterations per stage, N = 200; "
                "written down, not run: no GPU was lent)"),
    },
    "smoke": {
        "preset": "cpu_smoke", "data": "phantom", "phantom": {"num": 6, "size": 128}, "seeds": [0], "tasks": ["av"],
        "why": "the whole chain on a 6-photograph 128x128 fundus phantom in a few minutes (numbers meaningless)",
    },
}

#: The training sets: (key, what it is; ``r`` real and ``n`` synthetic pairs).
SETS = (("real", "real {r}"), ("synthetic", "synthetic {n}"), ("mixed", "real {r} + synthetic {n}"))

#: metrics.csv names (MONAI's MetricsSaver rows of evaluate_seg) -> the results' column titles.
METRICS = {"val_vessel_dice": "vessel Dice", "val_vessel_sensitivity": "sensitivity", "val_vessel_specificity": "specificity",
           "val_vessel_auc": "AUC", "val_av_accuracy": "A/V accuracy"}


def configs(stage: str, preset: str) -> list[Path]:
    """The config files of a fundus_av stage, the preset last."""
    return [Path(f) for f in fundus_stage_configs(stage, preset)]


def read_metrics(csv_path: Path) -> dict[str, float]:
    """``{name: value}`` of an evaluation's ``metrics.csv`` (MONAI's ``MetricsSaver``: ``name,value`` rows)."""
    with open(csv_path, newline="") as fh:
        return {r[0]: float(r[1]) for r in csv.reader(fh) if len(r) > 1}


def parse_list(text: str | None, default: list, cast=str, known: tuple | None = None, what: str = "") -> list:
    """A comma-separated option (None: ``default``), cast, repeats dropped.

    Raises:
        ValueError: for an empty list or, with ``known``, a value not in it (naming it and the known ones).
    """
    if text is None:
        return list(default)
    vals = list(dict.fromkeys(cast(x.strip()) for x in text.split(",") if x.strip()))
    bad = [v for v in vals if known is not None and v not in known]
    if bad or not vals:
        raise ValueError(f"{what} {text!r}: " + (f"unknown {bad}; choose from {list(known)}" if bad else "none given"))
    return vals


def seed_means(runs: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The metrics of several seeds of one (task, set), averaged: ``{metric: mean}``, ``spread`` (max - min per
    metric) and ``seeds``; a metric only some seeds report is averaged over those."""
    names = sorted({k for m in runs.values() for k in m})
    out: dict[str, Any] = {"seeds": sorted(runs)}
    spread = {}
    for k in names:
        vals = [m[k] for m in runs.values() if k in m and m[k] == m[k]]
        out[k] = float(np.mean(vals)) if vals else float("nan")
        spread[k] = float(np.ptp(vals)) if vals else float("nan")
    out["spread"] = spread
    return out


def results_table(results: dict[str, dict[str, dict[int, dict[str, float]]]], n: int, n_real: int = 15) -> list[str]:
    """Markdown: one row per task x training set, the seed means of :data:`METRICS` (``n/a`` where not reported).

    Args:
        results: ``{task: {set key: {seed: metrics.csv values}}}``.
        n, n_real: the numbers of synthetic pairs and real training images (for the sets' descriptions).
    """
    lines = ["| task | training set | seeds | " + " | ".join(METRICS.values()) + " |", "|---|---|---|" + "---:|" * len(METRICS)]
    for task, sets in results.items():
        for key, what in SETS:
            if not sets.get(key):
                continue
            m = seed_means(sets[key])
            cells = [f"{m[k]:.3f} ± {m['spread'][k] / 2:.3f}" if k in m and m[k] == m[k] else "n/a" for k in METRICS]
            lines.append(f"| {task} | {what.format(r=n_real, n=n)} | {','.join(map(str, m['seeds']))} | " + " | ".join(cells) + " |")
    return lines


def seed_table(results: dict[str, dict[str, dict[int, dict[str, float]]]]) -> list[str]:
    """Markdown: vessel Dice and A/V accuracy of every seed."""
    lines = ["| task | set | seed | vessel Dice | A/V accuracy |", "|---|---|---:|---:|---:|"]
    for task, sets in results.items():
        for key, _ in SETS:
            for seed, m in sorted((sets.get(key) or {}).items()):
                av = m.get("val_av_accuracy")
                lines.append(f"| {task} | {key} | {seed} | {m.get('val_vessel_dice', float('nan')):.3f} | "
                             + (f"{av:.3f}" if av is not None else "n/a") + " |")
    return lines


def targets(results: dict[str, dict[str, dict[int, dict[str, float]]]], plausibility: dict | None,
            real: dict | None = None) -> list[tuple[str, str, bool | None]]:
    """The issue's targets: ``(target, measured, met)``; ``met`` None where this run did not measure it.

    Args:
        results: ``{task: {set key: {seed: metrics}}}``.
        plausibility: the synthetic set's manifest ``plausibility`` (with ``decoding`` where written).
        real: :func:`real_plausibility` of the real train maps (the reference of the vessel shape check).
    """
    out: list[tuple[str, str, bool | None]] = []
    for task, sets in results.items():
        m = {k: seed_means(v) for k, v in sets.items() if v}
        for metric in ("val_vessel_dice", "val_av_accuracy"):
            if "real" in m and "mixed" in m and metric in m["real"]:
                r, x = m["real"][metric], m["mixed"][metric]
                out.append((f"{task}: real + synthetic beats real only in {METRICS[metric]}", f"{x:.3f} vs {r:.3f}", bool(x > r)))
        if "real" in m and "synthetic" in m:
            r, s = m["real"]["val_vessel_dice"], m["synthetic"]["val_vessel_dice"]
            out.append((f"{task}: synthetic only within 0.05 vessel Dice of real only", f"{s:.3f} vs {r:.3f}", bool(s >= r - 0.05)))
    if plausibility:
        # the sampled maps' own connectivity (before the vessel-tree decoding removed what misses the disc: after
        # it every map is connected by construction); the decoded maps' where the synthesis wrote no decoding report
        dec = plausibility.get("decoding") or {}
        src, when = (dec, "sampled, before the decoding") if dec.get("min_connected_fraction") is not None else (plausibility, "decoded")
        c, k, adj = src.get("min_connected_fraction"), src.get("maps_connected"), plausibility.get("av_adjacent_pixels")
        out.append((">= 95 % of vessel pixels in components touching the disc (every generated map)",
                    f"{k}/{plausibility.get('num_maps')} maps, lowest {c:.3f} ({when})" if c is not None else "no vessels",
                    None if c is None else bool(c >= 0.95)))
        out.append(("artery and vein never adjacent without a crossing", f"{adj} adjacent pixels", adj == 0))
        if real and real.get("vessel_fraction") and plausibility.get("vessel_fraction") is not None:
            f, w = plausibility["vessel_fraction"] / real["vessel_fraction"], plausibility["vessel_width"] / real["vessel_width"]
            out.append(("trees, not blobs (this benchmark's check): vessel fraction 0.5-2 x and width <= 1.5 x the real maps'",
                        f"fraction {f:.2f} x, width {w:.2f} x", bool(0.5 <= f <= 2.0 and w <= 1.5)))
    return out


def plausibility_table(p: dict | None, real: dict | None) -> list[str]:
    """Markdown: the generated maps' connectivity, A/V adjacency and vessel shape beside the real train maps', and
    the sampled maps' connectivity before the decoding (``p["decoding"]``) where recorded."""
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731

    def row(name: str, q: dict | None) -> str:
        if not q:
            return f"| {name} | n/a | n/a | n/a | n/a | n/a | n/a |"
        return (f"| {name} | {q['num_maps']} | {f(q.get('connected_fraction'))} (lowest {f(q.get('min_connected_fraction'))}) | "
                f"{q.get('maps_connected')} | {q.get('av_adjacent_pixels')} | {f(q.get('vessel_fraction'))} | "
                f"{f(q.get('vessel_width'))} |")
    lines = ["| label maps | maps | vessel pixels connected to the disc, mean | maps >= 0.95 | A/V adjacent pixels | "
             "vessel fraction | vessel width (px) |", "|---|---:|---:|---:|---:|---:|---:|",
             row("synthetic (train_masks, vessel-tree decoding)", p), row("real train maps", real)]
    dec = (p or {}).get("decoding")
    if dec:
        lines += ["", f"The sampled maps before the vessel-tree decoding: {f(dec.get('connected_fraction'))} of their vessel "
                      f"pixels touched the disc (lowest map {f(dec.get('min_connected_fraction'))}, "
                      f"{dec.get('maps_connected')} of {dec.get('maps')} maps >= 0.95); the decoding removed "
                      f"{dec.get('removed_pixels')} pixels and made {dec.get('crossing_pixels')} crossings."]
    return lines


def real_plausibility(datalist: Path) -> dict | None:
    """:func:`monai_oct.metrics.fundus.fundus_plausibility` of the real train maps (the optic disc located as for a
    generated map), the reference for the synthetic maps' figures."""
    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_label
    from monai_oct.metrics.fundus import fundus_plausibility
    from monai_oct.transforms.vessels import ResolveUncertain, estimate_disc_centre

    items = load_datalist(datalist, key="train")
    labels = [np.asarray(ResolveUncertain()(read_label(it["label"]))) for it in items]
    if not labels:
        return None
    return fundus_plausibility(labels, disc_centres=[estimate_disc_centre(lab) for lab in labels])


def figure(out: Path, real: Path, synth: Path, rows: int = 3) -> None:
    """``figure.png``: rows of (real image, its A/V map, synthetic image, its A/V map), the real pair resized
    (nearest) to the synthetic size; A/V colours of ``FUNDUS_AV.palette``."""
    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_image, read_label, write_png
    from monai_oct.core.labels import FUNDUS_AV
    from monai_oct.core.visualise import label_to_rgb

    def rgb(img: np.ndarray) -> np.ndarray:
        return np.repeat(img[..., None], 3, axis=-1) if img.ndim == 2 else img[..., :3]

    def resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        r = np.linspace(0, a.shape[0] - 1, hw[0]).round().astype(int)
        c = np.linspace(0, a.shape[1] - 1, hw[1]).round().astype(int)
        return a[r][:, c]

    palette = np.asarray(FUNDUS_AV.palette, dtype=np.uint8)
    reals = load_datalist(real, key="train")[:rows]
    synths = load_datalist(synth / "datalist.json", key="training")[:rows]
    tiles = []
    for r_it, s_it in zip(reals, synths):
        s_img, s_lab = rgb(read_image(s_it["image"])), read_label(s_it["label"])
        hw = s_lab.shape[:2]
        r_img, r_lab = resize(rgb(read_image(r_it["image"])), hw), resize(read_label(r_it["label"]), hw)
        gap = np.full((hw[0], 4, 3), 255, np.uint8)
        parts = [r_img, label_to_rgb(r_lab, palette), s_img, label_to_rgb(s_lab, palette)]
        tiles.append(np.concatenate([x for p in parts for x in (p.astype(np.uint8), gap)][:-1], axis=1))
    if tiles:
        write_png(out / "figure.png", np.concatenate([np.pad(t, ((0, 4), (0, 0), (0, 0)), constant_values=255) for t in tiles]))


def autoencoder_check(out: Path, test: Path, image_size: list[int] | None, rows: int = 3) -> dict[str, Any] | None:
    """Reconstruct the held-out photographs with the trained autoencoder before any latent model is judged: what
    it loses (thin vessels, colour) no image model in its latent space can draw. Writes
    ``autoencoder/recon_check.json`` (L1 per image in [-1, 1] inside the FOV, and the mean) and
    ``autoencoder/recon_check.png`` (rows of real | reconstruction); returns the record, None before training
    (and, with ``image_size`` None, when the check has not been written: read it back only)."""
    import torch

    from monai_oct.core.io import read_json, write_json, write_png
    from monai_oct.networks.autoencoder import load_latent
    from monai_oct.recipes.fundus import fundus_transforms
    from monai_oct.recipes.items import resolve_items

    ckpt, done = out / "autoencoder" / "model.pt", out / "autoencoder" / "recon_check.json"
    if done.is_file():
        return read_json(done, "autoencoder check")
    if not ckpt.is_file() or image_size is None:
        return None
    codec, load = load_latent(ckpt), fundus_transforms(image_size, with_label=False)
    l1, tiles = [], []
    for it in resolve_items(str(test), ["test", "validation", "val"]):
        d = load({"image": it["image"], "fov": it["fov"]})
        img, fov = torch.as_tensor(d["image"])[None].float(), torch.as_tensor(d["fov"])[None] > 0.5
        with torch.no_grad():
            rec = codec.decode(codec.encode(img)).clamp(-1.0, 1.0)
        l1.append(float((rec - img).abs().mean(1, keepdim=True)[fov].mean()))
        if len(tiles) < rows:
            tiles.append(torch.cat([img, rec], dim=-1)[0])
    rec_record = {"l1": l1, "mean_l1": float(np.mean(l1)) if l1 else None, "datalist": str(test)}
    if tiles:
        grid = ((torch.cat(tiles, dim=-2).permute(1, 2, 0) + 1.0) * 127.5).round().clamp(0, 255).byte().numpy()
        write_png(out / "autoencoder" / "recon_check.png", grid)
    write_json(done, rec_record)
    return rec_record


def quality_lines(report: Path) -> list[str]:
    """Markdown of ``monai-oct evaluate``'s ``report.json``: FD / KID with the real-vs-real floor, MS-SSIM of both
    sets, the memorised fraction; a line saying it is missing otherwise."""
    from monai_oct.core.io import read_json

    if not report.is_file():
        return [f"Not run (no {report})."]
    rep = read_json(report, "quality report")
    fr, ms = rep.get("frechet") or {}, (rep.get("diversity") or {}).get("ms_ssim") or {}
    f = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    mem = (rep.get("memorisation") or {}).get("pixel") or {}
    return ["| FD | KID | FD floor (real vs real) | FD of a real set of the synthetic set's size | MS-SSIM real | "
            "MS-SSIM synthetic | memorised (pixels) |", "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {f(fr.get('fd'))} | {f(fr.get('kid'))} | {f(fr.get('fd_floor'))} | {f(fr.get('fd_matched'))} | "
            f"{f((ms.get('real') or {}).get('mean'))} | {f((ms.get('synthetic') or {}).get('mean'))} | "
            f"{f(mem.get('fraction_flagged'))} |", "", f"From `{report}` ({fr.get('extractor', 'no extractor')})."]


def write_results(out: Path, a: argparse.Namespace, cfg: dict, n: int, test: Path, real: Path, synth: Path,
                  results: dict, wall: float, timings: dict, adherence: dict[str, dict[str, float]] | None = None) -> None:
    """``results.json``, ``results.md`` and ``figure.png``.

    Args:
        results: ``{task: {set key: {seed: metrics.csv values of the evaluation}}}``.
        adherence: ``{task: metrics.csv values}`` of the real-only segmenter on the synthetic set (its conditioning
            maps as the truth): does the image show the vessels it was asked for?
    """
    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_json, write_json, write_text

    n_real = len(load_datalist(real, key="train"))

    manifest = synth / "manifest.json"
    plaus = read_json(manifest, "synthesis manifest").get("plausibility") if manifest.is_file() else None
    real_p = real_plausibility(real)
    goals = targets(results, plaus, real_p)
    rec = autoencoder_check(out, test, None)  # written by the plan's step; read back here
    means = {task: {k: seed_means(v) for k, v in sets.items() if v} for task, sets in results.items()}
    meta = {"scale": a.scale, "why": cfg["why"], "preset": cfg["preset"], "label_source": cfg.get("label_source", "masks"),
            "epochs": cfg.get("epochs") or {}, "num_samples": n, "num_real": n_real, "seed": a.seed,
            "seeds": cfg["seeds"], "tasks": cfg["tasks"], "test_datalist": str(test), "train_datalist": str(real),
            "device": a.device, "mix_ratio": a.mix_ratio, "jobs": a.jobs, "threads": a.threads, "versions": _versions(),
            "wall_time_min": round(wall / 60, 1), "step_minutes": {k: round(v / 60, 2) for k, v in timings.items()}}
    write_json(out / "results.json", {"meta": meta, "segmentation": means, "segmentation_seeds": results,
                                      "autoencoder_check": rec,
                                      "plausibility": {"synthetic": plaus, "real": real_p}, "adherence": adherence or {},
                                      "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in goals]})
    yes = {True: "yes", False: "**no**", None: "n/a"}
    lines = [f"# Annotated fundus photographs on DRIVE ({a.scale} scale)", "",
             f"Trained on `{real}` (list `train`), scored on `{test}` with the final weights of each run (no checkpoint "
             f"selection on the test data), inside the FOV; N = {n} synthetic pairs (maps: "
             f"{'train_masks samples' if meta['label_source'] == 'masks' else 'the real train maps, cycled'}), diffusion seed {a.seed}, segmentation "
             f"seeds {cfg['seeds']}, mix ratio {a.mix_ratio}; device {a.device}, {a.jobs} step(s) at once, "
             f"{a.threads or 'default'} thread(s) each; wall time of this invocation {wall / 60:.1f} min (sum of step "
             f"times, first runs: {sum(timings.values()) / 60:.1f} min); versions {meta['versions']}.",
             f"Scale: {cfg['why']}.", "",
             "## Segmentation (seed mean ± half the spread)", ""] + results_table(results, n, n_real)
    lines += ["", "Seeds:", ""] + seed_table(results)
    lines += ["", "## Autoencoder reconstruction of the held-out photographs", "",
              (f"Mean L1 inside the FOV {rec['mean_l1']:.3f} (images in [-1, 1]; per image "
               f"{', '.join(f'{v:.3f}' for v in rec['l1'])}); `autoencoder/recon_check.png`: real | reconstruction. "
               "Detail the autoencoder loses, no latent image model can draw.") if rec and rec.get("mean_l1") is not None
              else "Not checked (no autoencoder)."]
    lines += ["", "## Generated label maps", ""] + plausibility_table(plaus, real_p)
    lines += ["", f"## Adherence (the real-only segmenter of seed {cfg['seeds'][0]} on the {n} synthetic images, their "
                  "conditioning maps as the truth; compare with its row above)", "",
              "| task | vessel Dice | sensitivity | specificity | AUC | A/V accuracy |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {t} | " + " | ".join(f"{m[k]:.3f}" if k in m else "n/a" for k in METRICS) + " |" for t, m in (adherence or {}).items()]
    lines += ["", "## Targets (issue 16)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {yes[ok]} |" for t, m, ok in goals]
    lines += ["", "## Quality of the synthetic photographs (`monai-oct evaluate`, 256x256, against the real train set)", ""]
    lines += quality_lines(out / "quality" / "report.json")
    lines += ["", "## Step times (minutes)", "", "| step | min |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} |" for k, v in timings.items()]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    figure(out, real, synth)
    print(f"\nresults: {out / 'results.md'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="mini")
    p.add_argument("--out", type=Path, default=Path("runs/bench_drive_av"))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "drive_av",
                   help="DRIVE with RITE A/V labels (training/images, av, fov); not read at --scale smoke")
    p.add_argument("--test-datalist", type=Path, default=None,
                   help="labelled datalist to score on (lists test / validation / val; default: the 5 held-out train images)")
    p.add_argument("--seeds", default=None, help="segmentation seeds, e.g. 0,1,2 (default: the scale's)")
    p.add_argument("--tasks", default=None, help="segmentation tasks: vessel, av (default: the scale's)")
    p.add_argument("--device", default="cuda:0" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0, help="seed of the generative stages")
    p.add_argument("--num-samples", type=int, default=None, help="N synthetic pairs (default: the preset's)")
    p.add_argument("--mix-ratio", default="1,1", help="real:synthetic share of each mixed training epoch ('none': sizes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per step (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="steps run at once when their inputs are ready")
    p.add_argument("--label-source", choices=("masks", "real"), default=None,
                   help="the synthetic images' maps: masks (train_masks samples) or real (the real train maps, "
                        "cycled; train_masks is not run); default: the scale's (masks)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = p.parse_args(argv)

    cfg = dict(SCALES[a.scale])
    try:
        cfg["seeds"] = parse_list(a.seeds, cfg["seeds"], int, what="--seeds")
        cfg["tasks"] = parse_list(a.tasks, cfg["tasks"], known=("vessel", "av"), what="--tasks")
    except ValueError as e:
        p.error(str(e))
    preset = cfg["preset"]
    n = a.num_samples or cfg.get("num_samples") or load_preset(FUNDUS, preset, "synthesize")["num_samples"]
    cfg["label_source"] = a.label_source or cfg.get("label_source", "masks")
    epochs = dict(cfg.get("epochs") or {})  # stage -> max_epochs where the scale trains longer than its preset
    seg_epochs = load_preset(FUNDUS, preset, "train_seg")["max_epochs"]
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run, plan = Runner(out, a.device, a.dry_run, a.threads), Plan(a.jobs)
    t_start = time.time()
    ratio = None if a.mix_ratio.lower() == "none" else [float(x) for x in a.mix_ratio.split(",")]

    # 1. data
    data = out / "data"
    real = data / "datalist.json"
    if cfg["data"] == "drive":
        if not (a.data / "training").is_dir() and not a.dry_run:
            print(f"DRIVE A/V data not found under {a.data} (expects training/images, av, fov); nothing to do.")
            return 2
        data_cmd = [sys.executable, "-m", "monai_oct", "drive-datalist", "--root", str(a.data.resolve()), "--out", str(data)]
    else:
        ph = cfg["phantom"]
        data_cmd = [sys.executable, "-c", "import sys; from monai_oct.phantoms.fundus import write_fundus_phantom_dataset as w; "
                    f"w(sys.argv[1], num={ph['num']}, size={ph['size']}, seed={a.seed})", str(data)]
    test = (a.test_datalist or real).resolve()
    plan.add("data", lambda: run.step("data", real, data_cmd))

    # 2-3. the generative stages (the critical path first: Plan starts steps in this order) and the synthesis
    def stage(name: str, done: Path, **overrides: Any) -> None:
        if name in epochs:
            overrides["max_epochs"] = epochs[name]
        run.bundle(name, done, configs(name, preset), bundle_dir=FUNDUS, dataset_dir=str(data), seed=a.seed, progress=False,
                   **overrides)

    d = {k: out / k for k in ("autoencoder", "images", "masks", "synth_N")}
    latent = str(d["autoencoder"] / "model.pt")
    plan.add("train_autoencoder", lambda: stage("train_autoencoder", d["autoencoder"] / "model.pt", output_dir=str(d["autoencoder"])),
             after=["data"])
    maps = {"mask_ckpt": str(d["masks"] / "model.pt")} if cfg["label_source"] == "masks" else {"label_datalist": str(real)}
    image_size = load_preset(FUNDUS, preset, "train_autoencoder")["image_size"]
    plan.add("autoencoder_check", lambda: a.dry_run or autoencoder_check(out, test, image_size), after=["train_autoencoder"])
    if cfg["label_source"] == "masks":
        plan.add("train_masks", lambda: stage("train_masks", d["masks"] / "model.pt", output_dir=str(d["masks"])), after=["data"])
    plan.add("train_images", lambda: stage("train_images", d["images"] / "model.pt", output_dir=str(d["images"]), latent_ckpt=latent),
             after=["train_autoencoder"])
    synth = d["synth_N"]
    plan.add("synthesize", lambda: stage("synthesize", synth / "datalist.json", output_dir=str(synth), latent_ckpt=latent,
                                         image_ckpt=str(d["images"] / "model.pt"), num_samples=n, **maps),
             after=["train_images"] + (["train_masks"] if cfg["label_source"] == "masks" else []))

    # quality report of the synthetic photographs against the real train set (FD/KID on one RGB triplet with the
    # real-vs-real floor of a split of the train set, MS-SSIM diversity, memorisation); the held-out images stay out
    quality = out / "quality"
    plan.add("quality", lambda: run.step("quality", quality / "report.json", [
        sys.executable, "-m", "monai_oct", "evaluate", "--real", str(real), "--real-key", "train", "--synthetic",
        str(synth / "datalist.json"), "--synthetic-key", "training", "--out", str(quality), "--table", "fundus_av",
        "--image-size", "256", "256", "--device", a.device], required=False), after=["synthesize"])

    # 4. segmentation: every task x set x seed, the same iterations; the final weights scored on the test datalist
    results: dict[str, dict[str, dict[int, dict[str, float]]]] = {t: {} for t in cfg["tasks"]}
    sets = {"real": ([str(real)], None), "synthetic": ([str(synth / "datalist.json")], None),
            "mixed": ([str(real), str(synth / "datalist.json")], ratio)}

    def seg(task: str, key: str, seed: int) -> None:
        datalists, mix = sets[key]
        r = out / "seg" / f"{task}_{key}_seed{seed}"
        common = {"task": task, "seed": seed, "progress": False, "bundle_dir": FUNDUS}
        run.bundle(f"seg_{task}_{key}_seed{seed}", r / "model_final.pt", configs("train_seg", preset),
                   datalist=datalists if len(datalists) > 1 else datalists[0], mix_ratio=mix, val_datalist=str(test),
                   val_interval=seg_epochs + 1, output_dir=str(r), **common)
        run.bundle(f"eval_{task}_{key}_seed{seed}", r / "eval" / "metrics.csv", configs("evaluate_seg", preset),
                   datalist=str(test), ckpt=str(r / "model_final.pt"), output_dir=str(r / "eval"), **common)
        if (r / "eval" / "metrics.csv").is_file():
            results[task].setdefault(key, {})[seed] = read_metrics(r / "eval" / "metrics.csv")

    for task in cfg["tasks"]:
        for seed in cfg["seeds"]:
            plan.add(f"{task}_real_{seed}", lambda task=task, seed=seed: seg(task, "real", seed), after=["data"])
    for task in cfg["tasks"]:
        for key in ("mixed", "synthetic"):
            for seed in cfg["seeds"]:
                plan.add(f"{task}_{key}_{seed}", lambda task=task, key=key, seed=seed: seg(task, key, seed), after=["synthesize"])

    # 5. adherence: the first seed's real-only segmenter on the synthetic images, scored against their conditioning maps
    adherence: dict[str, dict[str, float]] = {}

    def adhere(task: str) -> None:
        r = out / "seg" / f"adherence_{task}"
        run.bundle(f"adherence_{task}", r / "metrics.csv", configs("evaluate_seg", preset), bundle_dir=FUNDUS,
                   datalist=str(synth / "datalist.json"), datalist_key=["training"], task=task, seed=cfg["seeds"][0],
                   ckpt=str(out / "seg" / f"{task}_real_seed{cfg['seeds'][0]}" / "model_final.pt"), output_dir=str(r), progress=False)
        if (r / "metrics.csv").is_file():
            adherence[task] = read_metrics(r / "metrics.csv")

    for task in cfg["tasks"]:
        plan.add(f"adherence_{task}", lambda task=task: adhere(task), after=["synthesize", f"{task}_real_{cfg['seeds'][0]}"])
    plan.run()
    if a.dry_run:
        return 0
    write_results(out, a, cfg, n, test, real, synth, results, time.time() - t_start, run.log, adherence)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
