"""Multi-band latent diffusion: quality against sampling speed over compression x latent channels x UNet width
(issue 17, deliverable 4).

1. Phantom sets (``monai_oct.phantoms.multiband.write_multiband_dataset``): train and validation, 16 bands
   465-900 nm, disjoint seeds.
2. For every compression f and latent channel count: ``retina_ldm/train_autoencoder`` (the VQ-GAN, k-means
   codebook initialisation); for every UNet width on top of it: ``retina_ldm/train_diffusion`` (the three-level
   latent UNet) and ``retina_ldm/synthesize`` (N images, DDIM; seconds per image = the synthesis's own time,
   sampling + decoding, over N).
3. Quality of every synthetic set (``monai_oct.metrics.spectral.spectral_report``): spectral KL per structure
   (artery, vein, ONH) at matched sizes against its real-vs-real floor, |MS-SSIM(synthetic) - MS-SSIM(validation)|,
   nearest training images, and artery/vein separability (a linear classifier on band values) of synthetic vs
   real. The real images' structures are the phantom's masks. Synthetic images have none: their structures are
   assigned by a per-pixel classifier (:func:`monai_oct.metrics.spectral.structure_classifier`: logistic
   regression on the log band values of the pixel and of its Gaussian-smoothed neighbourhood, classes background /
   artery / vein / ONH / outside the FOV) trained on the real training images. Caveat: the classifier assigns artery vs vein by band values, so
   the synthetic separability is measured on pixels already chosen to look like one or the other; it is an upper
   bound, and the classifier's own held-out accuracy on real validation images (``classifier_accuracy``) says how
   far its labels can be trusted.
4. ``results.md`` + ``results.json`` (one row per configuration) and ``pareto.png`` (spectral KL / floor and
   |dMS-SSIM| against seconds per image, the Pareto front of each joined) in ``--out``.

Every step skips itself when its output exists (a killed run started again resumes; a stage itself resumes from
its ``last.pt``). Stages run in this process (``monai_oct.bundle.run_bundle``), one at a time.

    python benchmarks/multiband_ldm.py --scale smoke --out runs/mldm_smoke      # ~1 min, numbers meaningless
    python benchmarks/multiband_ldm.py --scale cpu --out runs/mldm_cpu --threads 2   # ~30 min on 2 cores
    python benchmarks/multiband_ldm.py --scale long --out runs/mldm_long --threads 1  # 2 configurations, <= 35 min
    python benchmarks/multiband_ldm.py --scale cpu --out runs/mldm_cpu --rescore      # new metrics, no training
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai_oct.core.io import read_bands, read_json, read_label, write_json, write_text  # noqa: E402

#: Epochs of the long scale (the cpu scale: 15 and 30). At 120 / 150 the whole run took 9.5 min on the shared 2-core
#: CPU, one thread (per epoch: autoencoder f8 2.1 s, f4 0.85 s; latent UNet 16-32-32 f8 0.4 s, f4 0.5 s), so twice
#: that (~19 min there, <= 35 min at twice the per-epoch time of a busier machine).
LONG_AE_EPOCHS, LONG_LDM_EPOCHS = 240, 300
#: Scales. ``size``: image side; ``train``/``val``: phantom images; ``samples``: synthetic images per configuration;
#: ``compressions`` x ``latent_channels`` x ``widths`` (UNet widths, three levels) is the sweep, unless
#: ``configs`` lists ``[f, z, widths]`` configurations instead.
SCALES: dict[str, dict[str, Any]] = {
    "smoke": {"size": 64, "train": 8, "val": 4, "samples": 4, "compressions": [8, 16], "latent_channels": [4],
              "widths": [[8, 16, 16]], "ae_base": 8, "ae_crop": None, "ae_epochs": 1, "ldm_epochs": 1, "ae_lr": 1e-3, "steps": 3, "batch": 8,
              "timesteps": 100, "why": "smoke test of the chain (numbers meaningless)"},
    "cpu": {"size": 64, "train": 48, "val": 16, "samples": 16, "compressions": [4, 8, 16], "latent_channels": [4, 8],
            "widths": [[16, 32, 32], [32, 64, 64]], "ae_base": 16, "ae_crop": 32, "ae_epochs": 15, "ldm_epochs": 30, "ae_lr": 2e-4,
            "steps": 20,
            "batch": 8, "timesteps": 1000,
            "why": "64x64 16-band phantoms, 12 configurations, sized for ~30 min on this 2-core CPU"},
    # the two cpu configurations whose synthetic sets held every structure, trained far longer (the cpu scale's
    # autoencoders ended at recon L1 0.24-0.28 on [-1, 1] images, still falling); "configs" replaces the sweep
    "long": {"size": 64, "train": 48, "val": 16, "samples": 16, "configs": [[8, 4, [16, 32, 32]], [4, 4, [16, 32, 32]]],
             "ae_base": 16, "ae_crop": 32, "ae_epochs": LONG_AE_EPOCHS, "ldm_epochs": LONG_LDM_EPOCHS, "ae_lr": 2e-4,
             "steps": 20, "batch": 8, "timesteps": 1000,
             "why": "the cpu scale's f8_z4_w16 and f4_z4_w16 trained longer, sized for <= 35 min of one CPU thread "
                    "on this shared 2-core machine"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    p.add_argument("--out", type=Path, default=Path("runs/multiband_ldm"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rescore", action="store_true",
                   help="recompute every configuration's metrics.json (e.g. after a change of the structure classifier) "
                        "from the synthetic sets in --out; trains nothing, fails naming a missing set")
    return p.parse_args(argv)


def configurations(cfg: dict[str, Any]) -> list[tuple[int, int, list[int]]]:
    """``[(f, z, widths)]`` of a scale: its ``configs`` or the sweep ``compressions x latent_channels x widths``,
    grouped by ``(f, z)`` (one autoencoder each)."""
    if "configs" in cfg:
        return [(int(f), int(z), list(w)) for f, z, w in cfg["configs"]]
    return [(f, z, list(w)) for f, z in itertools.product(cfg["compressions"], cfg["latent_channels"])
            for w in cfg["widths"]]


def config_name(f: int, z: int, widths: Sequence[int]) -> str:
    """``f8_z4_w32`` (compression, latent channels, UNet base width)."""
    return f"f{f}_z{z}_w{widths[0]}"


def load_set(datalist: Path, key: str = "training") -> tuple[np.ndarray, np.ndarray | None]:
    """``(images (N, C, H, W), structures (N, H, W) or None)`` of a C-band datalist."""
    from monai_oct.core.datalist import load_datalist

    items = load_datalist(datalist, key=key)
    images = np.stack([read_bands(it["image"]) for it in items])
    if all("structures" in it for it in items):
        return images, np.stack([read_label(it["structures"]) for it in items])
    return images, None


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both lower is better), by ascending x.

    A point is dominated when another one is <= in both and < in one; NaN points are never on the front.
    """
    ok = [i for i, (x, y) in enumerate(points) if x == x and y == y]
    front = [i for i in ok if not any(points[j][0] <= points[i][0] and points[j][1] <= points[i][1]
                                      and points[j] != points[i] for j in ok)]
    return sorted(front, key=lambda i: points[i])


def row_of(name: str, f: int, z: int, widths: Sequence[int], rep: dict, timing: dict, clf_acc: float) -> dict:
    """One results row from a :func:`~monai_oct.metrics.spectral.spectral_report` and the step times."""
    floor = rep["spectral_kl_floor"]
    ratio = {k: v for k, v in (floor["ratio"] or {}).items() if v is not None}
    sep = rep["separability"]
    return {"config": name, "compression": f, "latent_channels": z, "widths": list(widths),
            "seconds_per_image": timing["seconds_per_image"], "ae_minutes": timing.get("ae_minutes"),
            "ldm_minutes": timing.get("ldm_minutes"),
            "kl_matched": floor["matched"], "kl_floor": floor["floor"], "kl_ratio": ratio,
            # over every structure: a set in which one is not found (no ratio) has none, rather than a flattering one
            "kl_ratio_mean": float(np.mean(list(ratio.values()))) if ratio and len(ratio) == len(floor["floor"])
            else float("nan"),
            "ms_ssim_gap": rep["ms_ssim"]["gap"] if rep.get("ms_ssim") else float("nan"),
            "sep_real": sep["real"]["accuracy"], "sep_synthetic": sep["synthetic"]["accuracy"],
            "sep_points": sep["difference"], "sep_error": sep["synthetic"].get("error"),
            "nn_min": rep["memorisation"]["pixel"]["nn_distance_min"],
            "nn_real_real_min": rep["memorisation"]["pixel"]["real_real_min"],
            "memorised": rep["memorisation"]["pixel"]["num_flagged"],
            "classifier_accuracy": clf_acc}


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def results_table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per configuration, the Pareto-front ones in bold."""
    pts = [(r["seconds_per_image"], r["kl_ratio_mean"]) for r in rows]
    front = set(pareto_front(pts))
    lines = ["| config | f | z | UNet | s/image | KL/floor artery | vein | ONH | mean | \\|dMS-SSIM\\| | A/V acc real | "
             "synthetic | NN min (real-real) |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        name = f"**{r['config']}**" if i in front else r["config"]
        kr = r["kl_ratio"]
        lines.append(f"| {name} | {r['compression']} | {r['latent_channels']} | {'-'.join(map(str, r['widths']))} | "
                     f"{_f(r['seconds_per_image'])} | {_f(kr.get('artery'), '.2f')} | {_f(kr.get('vein'), '.2f')} | "
                     f"{_f(kr.get('onh'), '.2f')} | {_f(r['kl_ratio_mean'], '.2f')} | {_f(r['ms_ssim_gap'])} | "
                     f"{_f(r['sep_real'])} | {_f(r['sep_synthetic'])} | {_f(r['nn_min'])} ({_f(r['nn_real_real_min'])}) |")
    return lines


def pareto_plot(rows: list[dict], path: Path, size: tuple[int, int] = (420, 300)) -> None:
    """``path``: two panels, spectral KL / floor and |dMS-SSIM| against seconds per image, one dot per
    configuration (labelled), its Pareto front joined. Drawn with PIL (matplotlib is no dependency)."""
    from PIL import Image, ImageDraw

    from monai_oct.core.io import atomic_path

    w, h = size
    img = Image.new("RGB", (2 * w, h), "white")
    draw = ImageDraw.Draw(img)
    for p, (key, title) in enumerate((("kl_ratio_mean", "spectral KL / floor"), ("ms_ssim_gap", "|dMS-SSIM|"))):
        pts = [(float(r["seconds_per_image"]), float(r[key])) for r in rows]
        ok = [q for q in pts if q[0] == q[0] and q[1] == q[1]]
        x0, y0, pw, ph = p * w + 50, 20, w - 70, h - 60
        draw.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        draw.text((x0, 4), f"{title} vs s/image", fill="black")
        if not ok:
            continue
        xs, ys = [q[0] for q in ok], [q[1] for q in ok]
        xl, xh = min(xs), max(xs) + 1e-9
        yl, yh = min(ys), max(ys) + 1e-9

        def at(q: tuple[float, float]) -> tuple[float, float]:
            return x0 + 8 + (q[0] - xl) / (xh - xl) * (pw - 16), y0 + ph - 8 - (q[1] - yl) / (yh - yl) * (ph - 16)

        front = [at(pts[i]) for i in pareto_front(pts)]
        if len(front) > 1:
            draw.line(front, fill=(213, 94, 0), width=2)
        for r, q in zip(rows, pts):
            if q[0] == q[0] and q[1] == q[1]:
                cx, cy = at(q)
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(0, 114, 178))
                draw.text((cx + 4, cy - 10), r["config"], fill="black")
        draw.text((x0, y0 + ph + 6), f"{xl:.3g} s", fill="black")
        draw.text((x0 + pw - 40, y0 + ph + 6), f"{xh:.3g} s", fill="black")
        draw.text((2, y0), f"{yh:.3g}", fill="black") if p == 0 else draw.text((x0 - 48, y0), f"{yh:.3g}", fill="black")
        draw.text((x0 - 48, y0 + ph - 10), f"{yl:.3g}", fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def classifier_line(scores: dict[str, Any]) -> str:
    """``artery 0.86 / 0.72, ...``: recall / precision per structure of :func:`~monai_oct.metrics.spectral.classifier_scores`."""
    return ", ".join(f"{name} {_f(v['recall'], '.2f')} / {_f(v['precision'], '.2f')}"
                     for name, v in scores["per_structure"].items())


def codec_ceiling(ae: Path, train: np.ndarray, train_m: np.ndarray, val: np.ndarray, val_m: np.ndarray,
                  seed: int = 0) -> dict[str, Any]:
    """What the autoencoder alone costs: its reconstructions of the real validation images scored as a synthetic
    set with their true structure masks (spectral KL / floor, :func:`~monai_oct.metrics.spectral.spectral_kl_floor`)
    and their L1; no latent model drawing in this codec's space can do better. Written once to ``ae/codec.json``.

    Args:
        ae: the autoencoder's folder (``model.pt``, ``latent.json``).
        train, train_m, val, val_m: real ``(N, C, H, W)`` reflectances in [0, 1] and ``(N, H, W)`` structure ids.
        seed: the floor's draws.
    """
    import torch

    from monai_oct.metrics.spectral import spectral_kl_floor
    from monai_oct.networks.autoencoder import load_latent

    done = ae / "codec.json"
    if done.is_file():
        return read_json(done, "codec ceiling")
    codec = load_latent(ae / "model.pt")
    with torch.no_grad():
        rec = codec.decode(codec.encode(torch.as_tensor(val).float() * 2 - 1)).clamp(-1, 1).numpy() / 2 + 0.5
    kl = spectral_kl_floor(train, train_m, rec, val_m, seed=seed)
    write_json(done, {"l1": float(np.abs(rec - val).mean() * 2), "kl_ratio": kl["ratio"], "kl": kl})
    return read_json(done, "codec ceiling")


def write_results(out: Path, a: argparse.Namespace, cfg: dict, rows: list[dict], clf: dict[str, Any],
                  codecs: dict[str, dict] | None = None) -> None:
    """``results.json``, ``results.md`` and ``pareto.png`` in ``out``; ``clf``: the structure classifier's
    :func:`~monai_oct.metrics.spectral.classifier_scores` on the real validation images; ``codecs``: each
    autoencoder's :func:`codec_ceiling` by name (``ae_f8_z4``)."""
    clf_acc = clf["accuracy"]
    write_json(out / "results.json", {"scale": a.scale, "settings": cfg, "classifier_accuracy": clf_acc,
                                      "classifier": clf, "rows": rows, "codecs": codecs or {}})
    lines = [f"# Multi-band latent diffusion, scale {a.scale}", "", cfg["why"] + ".", "",
             f"{cfg['train']} train / {cfg['val']} validation phantoms ({cfg['size']}x{cfg['size']}, 16 bands), "
             f"{cfg['samples']} synthetic images per configuration, DDIM-{cfg['steps']}; f = compression, z = latent "
             "channels. KL/floor: spectral KL of the synthetic set at matched sizes over the real-vs-real floor (target "
             "<= 2). A/V acc: held-out accuracy of a linear artery/vein classifier on band values (target: synthetic "
             "within 5 points of real). Synthetic structures come from a per-pixel classifier trained on the real "
             "spectra (`structure_classifier`); bold: the Pareto front of KL/floor against s/image.", "",
             f"Structure classifier on the real validation pixels, recall / precision: {classifier_line(clf)} (pixel "
             f"accuracy {clf_acc:.3f}; a structure it misses on real images cannot be judged on synthetic ones).", ""]
    lines += results_table(rows) + ["", "![Pareto](pareto.png)", ""]
    if codecs:
        lines += ["Codec ceiling: each autoencoder's reconstructions of the real validation images, scored as a synthetic "
                  "set with their true masks (no latent model in that space can do better; target KL/floor <= 2):", "",
                  "| autoencoder | recon L1 ([-1, 1]) | KL/floor artery | vein | ONH |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {c['l1']:.3f} | " + " | ".join(_f((c.get("kl_ratio") or {}).get(k), ".2f")
                                                             for k in ("artery", "vein", "onh")) + " |"
                  for name, c in codecs.items()] + [""]
    write_text(out / "results.md", "\n".join(lines))
    pareto_plot(rows, out / "pareto.png")
    print(f"results: {out / 'results.md'}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    cfg = SCALES[a.scale]
    out = a.out.resolve()
    import torch

    from monai_oct.bundle import bundle_dir, ldm_stage_configs, run_bundle
    from monai_oct.metrics.spectral import (classifier_scores, classify_structures, spectral_report,
                                            structure_classifier)
    from monai_oct.phantoms.multiband import write_multiband_dataset

    if a.threads:
        torch.set_num_threads(a.threads)
    data = {s: out / "data" / s for s in ("train", "validation")}
    for k, (s, n) in enumerate((("train", cfg["train"]), ("validation", cfg["val"]))):
        if not (data[s] / "datalist.json").is_file():
            write_multiband_dataset(data[s], num=n, size=cfg["size"], seed=a.seed + 1000 * k)
    train, train_m = load_set(data["train"] / "datalist.json")
    val, val_m = load_set(data["validation"] / "datalist.json")
    clf = structure_classifier(train, train_m, seed=a.seed)
    clf_scores = classifier_scores(classify_structures(clf, val), val_m)
    clf_acc = clf_scores["accuracy"]
    print(f"structure classifier on the real validation images (recall / precision): {classifier_line(clf_scores)}")
    if a.rescore:
        missing = [str(out / "runs" / config_name(f, z, w) / "synthetic" / "datalist.json")
                   for f, z, w in configurations(cfg)
                   if not (out / "runs" / config_name(f, z, w) / "synthetic" / "datalist.json").is_file()]
        if missing:
            raise SystemExit(f"--rescore: no synthetic set to rescore at {', '.join(missing)}; run without --rescore")
    bundle = bundle_dir("retina_ldm")
    common = dict(dataset_dir=str(data["train"]), device=a.device, progress=False, seed=a.seed,
                  image_size=[cfg["size"]] * 2, batch_size=cfg["batch"], num_train_timesteps=cfg["timesteps"],
                  prediction_type="v_prediction", schedule="cosine", log_interval=0, sample_interval=0,
                  num_sample_images=2, sample_steps=3, num_res_blocks=1, learning_rate=1e-3)
    rows, codecs = [], {}
    for (f, z), group in itertools.groupby(configurations(cfg), key=lambda c: c[:2]):
        ae = out / "runs" / f"ae_f{f}_z{z}"
        t = time.time()
        if not (ae / "model.pt").is_file():
            run_bundle(bundle, ldm_stage_configs("train_autoencoder"), output_dir=str(ae), compression=f,
                       latent_channels=z, ae_base_channels=cfg["ae_base"], max_epochs=cfg["ae_epochs"],
                       ae_crop_size=[cfg["ae_crop"]] * 2 if cfg["ae_crop"] else None,
                       **{**common, "learning_rate": cfg["ae_lr"]})
            write_json(ae / "timing.json", {"minutes": (time.time() - t) / 60})
        codecs[ae.name] = codec_ceiling(ae, train, train_m, val, val_m, seed=a.seed)
        for *_, widths in group:
            name = config_name(f, z, widths)
            run = out / "runs" / name
            t = time.time()
            if not (run / "ldm" / "model.pt").is_file():
                run_bundle(bundle, ldm_stage_configs("train_diffusion"), output_dir=str(run / "ldm"),
                           latent_ckpt=str(ae / "model.pt"), channels=widths, max_epochs=cfg["ldm_epochs"], **common)
                write_json(run / "ldm" / "timing.json", {"minutes": (time.time() - t) / 60})
            syn = run / "synthetic"
            if not (syn / "datalist.json").is_file():
                run_bundle(bundle, ldm_stage_configs("synthesize"), output_dir=str(syn), latent_ckpt=str(ae / "model.pt"),
                           image_ckpt=str(run / "ldm" / "model.pt"), channels=widths, num_samples=cfg["samples"],
                           num_inference_steps=cfg["steps"], **common)
            metrics = run / "metrics.json"
            if a.rescore or not metrics.is_file():
                images, _ = load_set(syn / "datalist.json")
                rep = spectral_report(images, classify_structures(clf, images), train, train_m, val, seed=a.seed)
                manifest = read_json(syn / "manifest.json", "synthesis manifest")
                timing = {"seconds_per_image": manifest["seconds"] / cfg["samples"],
                          "ae_minutes": read_json(ae / "timing.json").get("minutes") if (ae / "timing.json").is_file() else None,
                          "ldm_minutes": read_json(run / "ldm" / "timing.json").get("minutes")
                          if (run / "ldm" / "timing.json").is_file() else None}
                write_json(metrics, row_of(name, f, z, widths, rep, timing, clf_acc))
            rows.append(json.loads(metrics.read_text()))
    write_results(out, a, cfg, rows, clf_scores, codecs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
