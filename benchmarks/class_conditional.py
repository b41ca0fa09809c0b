"""Class-conditional synthesis (issue 18): the B-scan classifier, the guidance-scale sweep and SDEdit translation.

1. ``data``: the classifier's split (``--scale mini``: the real scans, ``monai_oct.recipes.classifier.real_class_split``:
   Duke DME train / val, HCMS hc01 (healthy) and ms01 (MS) B-scans 1-39 train / 40-49 held out; ``smoke``: a phantom
   set whose items get the classes healthy / DME / MS in turn, numbers meaningless) as ``data/train.json`` and
   ``data/heldout.json`` (items with ``class``);
2. ``classifier``: ``monai-oct train-classifier`` on the train list (retina bands as the diffusion stages crop them),
   scored on the held-out list (accuracy per class, confusion matrix);
3. ``class_model``: ``--class-ckpt`` when given, else ``oct_ddpm`` ``train_classes`` (stage 1 with classes) on the
   train list at the scale's preset;
4. ``synth_g<s>``: ``synthesize_classes`` for every guidance scale of ``--guidance`` (``class_samples`` = N per class,
   the same seeds; class only, ``--mask_condition false``: a stage-1 model gets the all-zero "no mask" condition it
   was trained on and the set is images only; with ``--class-ckpt-masks`` conditioned on the Duke label maps of
   ``data/labels.json``), then the classifier on it (``classification.json``, what ``monai-oct classify`` writes: accuracy
   per requested class);
5. score: per class and scale, FD / KID of the synthetic images of the class against the real train scans of the
   class with the real-vs-real floor (held-out scans of the class: ``metrics.fid.frechet_summary``, the extractor of
   ``monai-oct evaluate``); SDEdit (``recipes.sdedit.sdedit_sweep``) of held-out DME scans to each other class for
   every ``t`` of ``--strengths`` (a stage-1 model gets the all-zero mask, ``--class-ckpt-masks`` the source's
   label map): the teacher's Dice against the source scan's label (``--teacher``, when given) and
   the classifier's target-class accuracy.

Writes ``results.md``, ``results.json`` and ``figure.png`` (accuracy and FD vs guidance scale; Dice and accuracy vs
t) to ``--out``. Steps skip themselves when their outputs exist (the score is recomputed each run).

    python benchmarks/class_conditional.py --scale smoke --out runs/class18_smoke --threads 1
    python benchmarks/class_conditional.py --scale mini --out runs/class18 --threads 1 \\
        --teacher runs/bench13/seg/unet_R66_S0_seed0/model_final.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duke_retidiff import ROOT, Runner, _cuda, _versions, ddpm_configs, scale_settings  # noqa: E402

NAMES = ["healthy", "DME", "MS"]

#: Scales. ``mini`` is sized for a 2-core CPU shared with another run (~90 min from a step timing, ~2.5 h as run):
#: the classifier 2.1 min (measured), stage 1 with classes on 144 scans, 100 epochs = 1800 steps at 2.0 s a step
#: (timed alone: batch 8 at 64x128, 1 thread; in the run, beside the other benchmark, 72 s an 18-step epoch, so
#: ~2 h) (EMA 0.999: cpu_mini's 0.9999 barely moves
#: in 1800 steps), 4 scales x 3 x 12 DDIM-25 class-only samples (guided: a 2 x 16 batch a step, 3.9 s measured)
#: ~15 min, SDEdit 8 scans x 2 targets x 5 t ~5 min. The epochs are kept: fewer would leave the class barely
#: learnt, and the targets are about what the class does.
SCALES: dict[str, dict[str, Any]] = {
    "mini": {"preset": "cpu_mini", "data": "real", "classifier_size": [128, 256], "classifier_epochs": 30,
             "class_epochs": 100, "class_ema": 0.999, "per_class": 12, "guidance": [1, 2, 3, 5],
             "strengths": [0.0, 0.25, 0.5, 0.75, 1.0],
             "sdedit_images": 8, "steps": 25, "sampler": "ddim",
             "why": "cpu_mini: 64x128 pixel UNet on 224-row bands, the classifier a small DenseNet at 128x256 bands"},
    "smoke": {"preset": "cpu_smoke", "data": "phantom", "classifier_size": [32, 64], "classifier_epochs": 2,
              "class_epochs": 1, "per_class": 2, "guidance": [1, 3], "strengths": [0.0, 0.5, 1.0],
              "sdedit_images": 2, "steps": 5, "sampler": "ddim", "why": "smoke test on phantoms (numbers meaningless)"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="mini")
    p.add_argument("--out", type=Path, default=Path("runs/class_conditional"))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with duke_dme/, hcms_unlabeled/")
    p.add_argument("--class-ckpt", type=Path, default=None, help="class-conditioned image UNet (train_classes.yaml); "
                   "default: trained here")
    p.add_argument("--class-ckpt-masks", action="store_true", help="--class-ckpt is a finetune_classes model: synthesis "
                   "conditions on Duke label maps, SDEdit on the source's (default: a stage-1 model, class only: the "
                   "all-zero condition it was trained on)")
    p.add_argument("--teacher", type=Path, default=None, help="segmenter for SDEdit's structure Dice (oct_layer_seg)")
    p.add_argument("--teacher-network", default="unet")
    p.add_argument("--guidance", type=float, nargs="+", default=None, help="guidance scales (default: the scale's)")
    p.add_argument("--strengths", type=float, nargs="+", default=None, help="SDEdit t values (default: the scale's)")
    p.add_argument("--per-class", type=int, default=None, help="synthetic scans per class and scale")
    p.add_argument("--extractor", default="tf_inception", help="FD features (as monai-oct evaluate --extractor)")
    p.add_argument("--device", default="cuda:0" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per step (0: torch's default)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def write_split(cfg: dict, data: Path, out: Path, seed: int) -> Path:
    """``out/data/train.json`` and ``heldout.json`` (items with ``class``), and for synthesis the label maps
    (``labels.json``); returns the folder."""
    from monai_oct.core.datalist import load_datalist, write_datalist
    from monai_oct.recipes.classifier import real_class_split

    d = out / "data"
    if (d / "labels.json").is_file():
        return d
    if cfg["data"] == "real":
        split = real_class_split(data)
        labels = load_datalist(data / "duke_dme" / "datalist_train.json", key="train")
    else:
        from monai_oct.phantoms.oct import write_phantom_dataset

        write_phantom_dataset(d / "phantom", num=24, size=(256, 256), seed=seed, val_fraction=0.25)
        items = load_datalist(d / "phantom" / "datalist.json", key="train")
        val = load_datalist(d / "phantom" / "datalist.json", key="validation")
        split = {"train": [{**it, "class": NAMES[i % 3]} for i, it in enumerate(items)],
                 "heldout": [{**it, "class": NAMES[i % 3]} for i, it in enumerate(val)]}
        labels = split["train"]
    for name, items in split.items():
        write_datalist(d / f"{name}.json", items)
    write_datalist(d / "labels.json", labels)
    return d


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    from monai_oct.recipes.classifier import evaluate_classifier

    cfg = scale_settings(SCALES, a.scale)
    guidance, strengths = a.guidance or cfg["guidance"], a.strengths or cfg["strengths"]
    n = a.per_class or cfg["per_class"]
    data, out = a.data.resolve(), a.out.resolve()
    if cfg["data"] == "real" and not (data / "hcms_unlabeled").is_dir():
        print(f"class-conditional benchmark skipped: real data not found under {data} (duke_dme/, hcms_unlabeled/)")
        return 0
    if a.class_ckpt is not None and not a.class_ckpt.is_file():
        print(f"class-conditional benchmark skipped: not found --class-ckpt {a.class_ckpt}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out, a.device, a.dry_run, a.threads)
    t0 = time.time()
    d = write_split(cfg, data, out, a.seed)
    band = cfg["ddpm"].get("band_height") or None
    clf = out / "classifier" / "classifier.pt"
    run.step("classifier", clf.with_suffix(".json"), [
        sys.executable, "-m", "monai_oct", "train-classifier", "--train", str(d / "train.json"), "--heldout",
        str(d / "heldout.json"), "--out", str(clf.parent), "--image-size", *map(str, cfg["classifier_size"]),
        "--epochs", str(cfg["classifier_epochs"]), "--seed", str(a.seed), "--device", a.device,
        *(["--band-height", str(band)] if band else [])])
    ckpt = a.class_ckpt.resolve() if a.class_ckpt else out / "class_model" / "model.pt"
    if a.class_ckpt is None:
        run.bundle("class_model", ckpt, ddpm_configs(cfg, "train_classes"), datalist=str(d / "train.json"),
                   dataset_dir=str(d), output_dir=str(ckpt.parent), max_epochs=cfg["class_epochs"], seed=a.seed,
                   progress=False, ema_decay=cfg.get("class_ema"))
    for s in guidance:
        sd = out / f"synth_g{s:g}"
        masks = {"label_datalist": str(d / "labels.json")} if a.class_ckpt_masks else {}
        run.bundle(f"synth_g{s:g}", sd / "datalist.json", ddpm_configs(cfg, "synthesize_classes"), image_ckpt=str(ckpt),
                   output_dir=str(sd), dataset_dir=str(d), mask_condition=bool(a.class_ckpt_masks), **masks,
                   class_samples={c: n for c in NAMES}, num_samples=n * len(NAMES), guidance_scale=float(s),
                   seed=a.seed, progress=False, sampler=cfg["sampler"], num_inference_steps=cfg["steps"])
    if a.dry_run:
        return 0
    for s in guidance:  # what `monai-oct classify` writes, in this process (no start-up per scale)
        sd = out / f"synth_g{s:g}"
        if not (sd / "classifier" / "classification.json").is_file():
            evaluate_classifier(clf, sd / "datalist.json", sd / "classifier", key="training", device=a.device)
    res = {"guidance": guidance_scores(out, d, guidance, a), "sdedit": sdedit_scores(cfg, a, out, d, ckpt, clf, strengths)}
    res["classifier"] = {k: v for k, v in _json(clf.with_suffix(".json")).items() if not k.endswith("_items")}
    write_results(out, a, cfg, res, time.time() - t0, run.log, ckpt)
    return 0


def _json(path: Path) -> Any:
    from monai_oct.core.io import read_json

    return read_json(path)


def guidance_scores(out: Path, d: Path, guidance: list[float], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Per guidance scale: the classifier's accuracy per requested class and FD/KID per class vs the floor."""
    from monai_oct.core.datalist import load_datalist
    from monai_oct.metrics.fid import ExtractorUnavailable, extract_features, frechet_summary, get_extractor
    from monai_oct.recipes.image_sets import load_image_set

    synth0 = load_image_set(out / f"synth_g{guidance[0]:g}" / "datalist.json", key="training", image_size=None,
                            with_labels=False)
    size = tuple(synth0.images.shape[-2:])
    try:
        ext = get_extractor(a.extractor) if a.extractor != "none" else None
    except ExtractorUnavailable as e:
        print(f"[warn] no FD: {e}")
        ext = None

    def feats(items: list[dict]) -> Any:
        if ext is None or len(items) < 2:
            return None
        x = load_image_set(items, image_size=size, with_labels=False).images
        return extract_features(ext, x, device=a.device)

    train, held = load_datalist(d / "train.json"), load_datalist(d / "heldout.json")
    real = {c: feats([it for it in train if it["class"] == c]) for c in NAMES}
    ref = {c: feats([it for it in held if it["class"] == c]) for c in NAMES}
    rows = []
    for s in guidance:
        sd = out / f"synth_g{s:g}"
        rep = _json(sd / "classifier" / "classification.json")
        items = load_datalist(sd / "datalist.json", key="training")
        row: dict[str, Any] = {"scale": s, "accuracy": rep["accuracy"], "per_class": {}, "confusion": rep["confusion"]}
        for c in NAMES:
            pc = {"accuracy": (rep["per_class"].get(c) or {}).get("accuracy")}
            fs = feats([it for it in items if it["class"] == c])
            if fs is not None and real[c] is not None:
                pc["frechet"] = frechet_summary(real[c], fs, reference=ref[c], kid_subset_size=max(2, min(len(fs), 50)),
                                                seed=a.seed)
            row["per_class"][c] = pc
        rows.append(row)
    return rows


def sdedit_scores(cfg: dict, a: argparse.Namespace, out: Path, d: Path, ckpt: Path, clf: Path,
                  strengths: list[float]) -> dict[str, Any]:
    """SDEdit of held-out DME scans (bands as the model saw them, labels for the teacher) to every other class."""
    import torch
    from monai.bundle import ConfigParser

    from monai_oct.core.datalist import load_datalist
    from monai_oct.metrics.adherence import load_teacher
    from monai_oct.networks.classifier import load_classifier
    from monai_oct.recipes.diffusion_pipelines import finetune_transforms
    from monai_oct.recipes.sdedit import sdedit_sweep

    g = cfg["ddpm"]
    parser = ConfigParser()
    parser.read_config([str(p) for p in ddpm_configs(cfg, "synthesize_classes")])
    parser.update({"image_ckpt": str(ckpt), "device": a.device, "sampler": cfg["sampler"],
                   "num_inference_steps": cfg["steps"], "output_dir": str(out / "sdedit"), "class_samples": None,
                   "class_name": "DME", "num_samples": 1})
    net, sampler = parser.get_parsed_content("image_network"), parser.get_parsed_content("image_sampler")
    held = [it for it in load_datalist(d / "heldout.json") if it["class"] == "DME" and "label" in it]
    if cfg["data"] != "real":
        held = load_datalist(d / "heldout.json")
    held = held[: cfg["sdedit_images"]]
    chain = finetune_transforms(g["image_size"], g.get("num_classes", 10), g.get("encoding", "onehot"),
                                band_height=g.get("band_height"), drm_prob=0.0)
    batch = [chain(dict(it)) for it in held]
    images = torch.stack([torch.as_tensor(b["image"]).float() for b in batch])
    labels = torch.stack([torch.as_tensor(b["label"]).long() for b in batch])
    teacher = (load_teacher(a.teacher, a.teacher_network, image_size=None, device=a.device)
               if a.teacher is not None and a.teacher.is_file() else None)
    classifier, record = load_classifier(clf, a.device)
    res = {"sources": [it["image"] for it in held], "teacher": None if teacher is None else str(a.teacher), "targets": {}}
    for target in ("healthy", "MS"):
        rep = sdedit_sweep(net, sampler, images, labels, target, strengths, teacher=teacher, classifier=classifier,
                           classifier_size=record["image_size"], seed=a.seed, encoding=g.get("encoding", "onehot"),
                           device=a.device, keep_images=True, mask_condition=a.class_ckpt_masks)
        kept = rep.pop("_images")
        res["targets"][target] = rep
        np.save(out / f"sdedit_{target}.npy", np.stack([kept[float(t)][0, 0].numpy() for t in strengths]))
    return res


def write_results(out: Path, a: argparse.Namespace, cfg: dict, res: dict, wall: float, timings: dict, ckpt: Path) -> None:
    """``results.json``, ``results.md`` and ``figure.png``."""
    from monai_oct.core.io import write_json, write_text
    from monai_oct.metrics.classification import confusion_markdown

    meta = {"scale": a.scale, "preset": cfg["preset"], "class_ckpt": str(ckpt), "teacher": str(a.teacher or ""),
            "seed": a.seed, "device": a.device, "threads": a.threads, "versions": _versions(),
            "command": " ".join(["python", "benchmarks/class_conditional.py", *a.argv]),
            "wall_time_min": round(wall / 60, 1), "step_minutes": {k: round(v / 60, 2) for k, v in timings.items()}}
    write_json(out / "results.json", {"meta": meta, **res})

    def f(v: Any, nd: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{nd}f}"

    c = res["classifier"]
    lines = [f"# Class-conditional synthesis ({a.scale} scale)", "", f"{cfg['why']}. Class model `{ckpt}`; wall time "
             f"{wall / 60:.1f} min.", "", f"    {meta['command']}", "", "Classifier split: " + str(c.get("split", "")), ""]
    lines.append(confusion_markdown(c["heldout"], "Classifier on held-out real scans") if "heldout" in c else "")
    lines += ["## Guidance scale: accuracy per requested class, FD per class vs the real-vs-real floor", "",
              "| scale | accuracy | " + " | ".join(f"{n} acc | {n} FD (floor)" for n in NAMES) + " |",
              "|---:|---:|" + "---:|---:|" * len(NAMES)]
    for r in res["guidance"]:
        cells = []
        for n in NAMES:
            pc = r["per_class"][n]
            fr = pc.get("frechet") or {}
            cells += [f(pc["accuracy"]), f"{f(fr.get('fd_matched'), 1)} ({f(fr.get('fd_floor'), 1)})"]
        lines.append(f"| {r['scale']:g} | {f(r['accuracy'])} | " + " | ".join(cells) + " |")
    lines += ["", "FD at matched sizes (`fd_matched`: real train scans of the class vs its synthetic scans) and the "
              "floor (`fd_floor`: the same real scans vs the held-out real scans of the class). Target: accuracy >= "
              "0.9 with FD <= 2 x floor.", "", "## SDEdit: held-out DME scans translated to another class, against t", "",
              "| target | t | teacher Dice vs source label | target-class accuracy | mean abs change |",
              "|---|---:|---:|---:|---:|"]
    for tgt, rep in res["sdedit"]["targets"].items():
        lines.append(f"| {tgt} | source | {f(rep['source'].get('dice'))} | {f(rep['source'].get('target_accuracy'))} | 0 |")
        lines += [f"| {tgt} | {r['t']:g} | {f(r.get('dice'))} | {f(r.get('target_accuracy'))} | {r['mean_abs_change']:.3f} |"
                  for r in rep["per_t"]]
    lines += ["", "![accuracy and FD vs guidance scale; Dice and accuracy vs t](figure.png)", "",
              "## Step times (minutes)", "", "| step | min |", "|---|---:|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in timings.items()]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    figure(out, res)
    print(f"\nresults: {out / 'results.md'}")


def _panels(path: Path, panels: list[tuple[str, list[float], dict[str, list[float]], float | None]],
            size: tuple[int, int] = (360, 260)) -> None:
    """``path``: one line plot a panel ``(title, xs, {series: ys}, guide line or None)``, the legend below; drawn with
    PIL (matplotlib is no dependency of the toolkit, nor installed here). NaN / None points are left out."""
    from PIL import Image, ImageDraw

    from monai_oct.core.io import atomic_path
    from monai_oct.core.visualise import PALETTE

    names = list(dict.fromkeys(k for _, _, series, _ in panels for k in series))
    colour = {k: tuple(int(v) for v in PALETTE[1 + i % (len(PALETTE) - 1)]) for i, k in enumerate(names)}
    w, h = size
    img = Image.new("RGB", (len(panels) * w, h + 14 * len(names) + 10), "white")
    draw = ImageDraw.Draw(img)
    for p, (title, xs, series, guide) in enumerate(panels):
        x0, y0, pw, ph = p * w + 50, 20, w - 70, h - 50
        draw.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        draw.text((x0, 4), title, fill="black")
        vals = [v for ys in series.values() for v in ys if v is not None and v == v] + ([guide] if guide else [])
        if not vals or not xs:
            draw.text((x0 + 10, y0 + ph // 2), "not measured", fill="black")
            continue
        lo, hi = min(vals), max(vals)
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-9 else (lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))
        xl, xh = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

        def pt(x: float, v: float) -> tuple[float, float]:
            return x0 + 10 + (pw - 20) * (x - xl) / (xh - xl), y0 + ph * (1 - (v - lo) / (hi - lo))

        if guide:
            draw.line([x0, pt(xl, guide)[1], x0 + pw, pt(xl, guide)[1]], fill=(160, 160, 160))
        for x in xs:
            draw.text((pt(x, lo)[0] - 6, y0 + ph + 4), f"{x:g}", fill="black")
        draw.text((x0 - 48, y0), f"{hi:.3g}", fill="black")
        draw.text((x0 - 48, y0 + ph - 10), f"{lo:.3g}", fill="black")
        for k, ys in series.items():
            pts = [pt(x, v) for x, v in zip(xs, ys) if v is not None and v == v]
            if len(pts) > 1:
                draw.line(pts, fill=colour[k], width=2)
            for x, y in pts:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour[k])
    for i, k in enumerate(names):
        y = h + 4 + 14 * i
        draw.line([50, y + 5, 70, y + 5], fill=colour[k], width=3)
        draw.text((76, y), k, fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def figure(out: Path, res: dict) -> None:
    """``figure.png``: accuracy per class and FD / floor per class vs guidance scale; SDEdit's teacher Dice and
    target-class accuracy vs t."""
    scales = [r["scale"] for r in res["guidance"]]

    def ratio(pc: dict) -> float | None:
        fr = pc.get("frechet") or {}
        return fr["fd_matched"] / fr["fd_floor"] if fr.get("fd_floor") else None

    acc = {n: [r["per_class"][n]["accuracy"] for r in res["guidance"]] for n in NAMES}
    fd = {f"{n} FD/floor": [ratio(r["per_class"][n]) for r in res["guidance"]] for n in NAMES}
    sd, ts = {}, []
    for tgt, rep in res["sdedit"]["targets"].items():
        ts = [r["t"] for r in rep["per_t"]]
        sd[f"DME->{tgt} accuracy"] = [r.get("target_accuracy") for r in rep["per_t"]]
        sd[f"DME->{tgt} teacher Dice"] = [r.get("dice") for r in rep["per_t"]]
    _panels(out / "figure.png", [("accuracy per class vs guidance scale", scales, acc, None),
                                 ("FD / floor per class vs guidance (line: 2)", scales, fd, 2.0),
                                 ("SDEdit vs t (fraction of the schedule)", ts, sd, None)])


if __name__ == "__main__":
    raise SystemExit(main())
