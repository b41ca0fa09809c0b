"""Wu et al. (ISBI 2024) on Duke DME at small scale: sketch-to-OCT synthesis with knowledge adaptation.

Every stage runs as the bundle a user would run (``python -m monai.bundle run``, through the runner of
``benchmarks/duke_retidiff.py``), and every step skips itself when its output exists:

1. sketch statistics fitted through the DDPM's geometry (``monai-oct sketch-stats --band-height --size``);
2. ``oct_ddpm/train_sketch``: a sketch-conditioned image DDPM on the Duke train pairs (sketches drawn on the fly);
3. ``oct_ddpm/synthesize_sketch``: N images from N random sketches, labelled with the sketch-derived labels;
4. ``oct_layer_seg/train``: the teacher, trained on the real train set (also the "real" row of the table);
5. ``oct_layer_seg/pseudo_label``: the teacher relabels the synthetic images (distilled labels), so the same
   images carry two label sets;
6. segmentation trained on real / synthetic with sketch labels / synthetic with distilled labels / real +
   synthetic (distilled labels), every run the same number of iterations, scored on a test datalist (default
   Duke **val**; the test split is held out) with the final weights.

Writes ``results.md`` and ``results.json`` (scale, seed, versions, wall time, step times) to ``--out``.

    python benchmarks/wu_sketch.py --scale tiny --out runs/wu_tiny      # smoke check, a few minutes on a 2-core CPU
    python benchmarks/wu_sketch.py --scale mini --out runs/wu_mini      # ~1 h on a 2-core CPU
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duke_retidiff import (  # noqa: E402
    Runner,
    _versions,
    benchmark_parser,
    ddpm_configs,
    resolve_data,
    scale_settings,
    seg_configs,
    seg_steps,
    seg_tables,
)

#: Scales: the bundles' preset that sizes every stage (``configs/presets/<preset>.yaml`` of oct_ddpm and
#: oct_layer_seg) and which segmentation networks to train; ``why`` says what each is for.
SCALES: dict[str, dict[str, Any]] = {
    "mini": {
        "preset": "cpu_mini_64x128",  # its published rows were made at the first mini scale
        "why": ("2-core CPU, about an hour: the oct_ddpm small CPU recipe (224-row band -> 64x128, UNet 32-64-64-128, "
                "v-prediction, cosine schedule, lr 1e-3 with warm-up, batch 8), 160 epochs of the 66 Duke train pairs "
                "(~1440 iterations, ~1 s each on one thread of a loaded CPU), N=200 DDIM-50 samples written as 224x512 bands; MONAI UNet segmentation, "
                "1500 iterations per training set"),
        "networks": ["unet"],
    },
    "tiny": {
        "preset": "cpu_smoke",
        "why": "smoke test of the whole chain in a few minutes (numbers meaningless)",
        "networks": ["unet"],
    },
}

#: The four training sets of Wu et al.'s table: key -> (what it is, real images, synthetic images and labels).
ROWS: list[tuple[str, str, str]] = [
    ("real", "66 real", "-"),
    ("synth_sketch", "-", "N (sketch labels)"),
    ("synth_distilled", "-", "N (distilled labels)"),
    ("real_synth", "66 real", "N (distilled labels)"),
]


def main(argv: list[str] | None = None) -> int:
    a = benchmark_parser(__doc__, SCALES, "runs/bench_wu").parse_args(argv)

    cfg = scale_settings(SCALES, a.scale)
    g = cfg["ddpm"]
    paths = resolve_data(a)
    if paths is None:
        return 2
    data, out, duke, test = paths
    real = str(duke / "datalist_train.json")
    n = a.num_samples or g["num_samples"]
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, a.device, a.dry_run, a.threads)
    t_start = time.time()

    # 1. sketch statistics at the DDPM's geometry (the band the network sees)
    stats = out / "sketch_stats.json"
    run.step("sketch_stats", stats, [sys.executable, "-m", "monai_oct", "sketch-stats", real, "--out", str(stats),
                                        "--band-height", str(g["band_height"]), "--size", *map(str, g["image_size"])])

    # 2-3. sketch DDPM and synthesis
    geo = {"seed": a.seed, "progress": False}
    sk, syn = out / "sketch_ddpm", out / "synth_sketch"
    run.bundle("train_sketch", sk / "model.pt", ddpm_configs(cfg, "train_sketch"), dataset_dir=str(duke), datalist=real,
               output_dir=str(sk), **geo)
    run.bundle("synthesize_sketch", syn / "datalist.json", ddpm_configs(cfg, "synthesize_sketch"), image_ckpt=str(sk / "model.pt"),
               num_samples=n, sketch_stats=str(stats), output_dir=str(syn), **geo)

    # 4-6. teacher on real, distilled labels, the four training sets
    ratio = None if a.mix_ratio.lower() == "none" else [float(x) for x in a.mix_ratio.split(",")]
    results: dict[str, dict] = {}
    for net in cfg["networks"]:
        results[net] = seg_steps(run, cfg, {"real": ([real], None)}, test, a.seed, net)
        teacher = out / "seg" / f"{net}_real" / "model_final.pt"
        distilled = out / f"synth_distilled_{net}"
        run.bundle(f"pseudo_label_{net}", distilled / "datalist.json", seg_configs(cfg, "pseudo_label"),
                   dataset_dir=str(syn), ckpt=str(teacher), output_dir=str(distilled), network=net,
                   progress=False)  # pseudo_label.yaml takes the synthetic bands whole (band_height 0)
        sets = {"synth_sketch": ([str(syn / "datalist.json")], None),
                "synth_distilled": ([str(distilled / "datalist.json")], None),
                "real_synth": ([real, str(distilled / "datalist.json")], ratio)}
        results[net].update(seg_steps(run, cfg, sets, test, a.seed, net))
        if not a.dry_run:
            results[net]["label_agreement"] = label_agreement(syn, distilled)
    if a.dry_run:
        return 0
    write_results(out, a.scale, cfg, n, a.seed, a.device, a.mix_ratio, test, results, time.time() - t_start, run.log)
    return 0


def label_agreement(synth: Path, distilled: Path) -> dict[str, float]:
    """Pixel agreement and mean Dice (classes 1-9) between the sketch-derived and the distilled labels of the same
    images: how far the images drifted from their sketches (Wu et al.'s misregistration)."""
    import numpy as np

    from monai_oct.core.datalist import load_datalist
    from monai_oct.core.io import read_label

    a_items = {Path(it["image"]).name: it["label"] for it in load_datalist(synth / "datalist.json", key="training")}
    b_items = {Path(it["image"]).name: it["label"] for it in load_datalist(distilled / "datalist.json")}
    inter, total, agree, pixels = np.zeros(10), np.zeros(10), 0, 0
    for name, la in a_items.items():
        if name not in b_items:
            continue
        x, y = read_label(la).astype(np.int64), read_label(b_items[name]).astype(np.int64)
        agree += int((x == y).sum())
        pixels += x.size
        for c in range(1, 10):
            inter[c] += ((x == c) & (y == c)).sum()
            total[c] += (x == c).sum() + (y == c).sum()
    present = total[1:] > 0
    dice = 2 * inter[1:][present] / total[1:][present]
    return {"pixel_agreement": round(agree / max(pixels, 1), 4), "mean_dice": round(float(dice.mean()) if dice.size else float("nan"), 4)}


def write_results(out: Path, scale: str, cfg: dict, n: int, seed: int, device: str, mix_ratio: str, test: Path,
                  results: dict, wall: float, timings: dict) -> None:
    """``results.json`` and ``results.md``: mean / group / per-class Dice of each training set and network.

    Args:
        out: output folder.
        scale, cfg: the scale's name and settings.
        n: number of synthetic images.
        seed, device, mix_ratio: run settings.
        test: the test datalist.
        results: ``{network: {row key: metrics.json of the evaluate bundle, "label_agreement": {...}}}``.
        wall: seconds of this invocation.
        timings: seconds per step (first runs).
    """
    meta = {"scale": scale, "settings": cfg, "num_samples": n, "seed": seed, "test_datalist": str(test), "device": device,
            "mix_ratio": mix_ratio, "versions": _versions(), "wall_time_min": round(wall / 60, 1),
            "step_minutes": {k: round(v / 60, 2) for k, v in timings.items()}}
    (out / "results.json").write_text(json.dumps({"meta": meta, "segmentation": results}, indent=1, default=str))
    lines = [f"# Wu et al. sketch-to-OCT + knowledge adaptation on Duke DME ({scale} scale)", "",
             f"Test datalist: `{test}`; seed {seed}; device {device}; N = {n} synthetic images; real:synthetic mix {mix_ratio}; "
             f"wall time of this invocation {wall / 60:.1f} min (all steps, first runs: {sum(timings.values()) / 60:.1f} min); "
             f"versions {meta['versions']}.", f"Scale: {cfg['why']}.", "",
             "## Segmentation (Dice on the test datalist, final weights)", ""]
    for net, res in results.items():
        lines += seg_tables(net, res, [(k, r, sy.replace("N", str(n), 1)) for k, r, sy in ROWS], first="training set")
        agree = res.get("label_agreement")
        if agree:
            lines += ["", f"Sketch-derived vs distilled labels of the same synthetic images: pixel agreement "
                          f"{agree['pixel_agreement']:.3f}, mean Dice 1-9 {agree['mean_dice']:.3f} (1.0: no drift)."]
        lines.append("")
    lines += ["## Step times (minutes)", "", "| step | min |", "|---|---:|"] + [f"| {k} | {v / 60:.1f} |" for k, v in timings.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"\nresults: {out / 'results.md'}")


if __name__ == "__main__":
    raise SystemExit(main())
