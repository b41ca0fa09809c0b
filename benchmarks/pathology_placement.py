"""Pathology placement (issue 18): does the mask-conditioned model draw fluid where a user put it?

1. ``monai-oct place-pathology`` edits N label maps of ``--labels`` (default: Duke DME train, cropped to the
   synthesis band and resized to the written size, as ``synthesize.yaml --label_datalist`` reads them): one fluid
   pocket per map (``RandInsertFluidd``, seeded per map, DME-sized: ``--height`` 8-30 rows, ``--width`` 20-80
   columns at 224x512), and, separately, drusen (``RandInsertDrusend``);
2. ``oct_ddpm/synthesize`` with ``--label_datalist``: one image per edited map from the stage-3 model
   (``--image-ckpt``), and one per unedited map (the control set: the same maps, the same seeds, so the two sets
   differ only by the edit);
3. ``oct_layer_seg/pseudo_label``: the teacher (``--teacher``, a 66/0 segmenter) segments every synthetic image;
4. score: the Dice of the teacher's fluid against the inserted pocket, ignoring fluid the map already had
   (``monai_oct.recipes.placement.inserted_fluid_dice``; mean, share found, per pocket-size bin), the teacher's
   fluid Dice on the control set (what it finds of fluid drawn from real maps: the reference), and the drusen
   maps' column validity (``layer_order_validity``).

Writes ``results.md``, ``results.json`` and ``figure.png`` (edited label | synthetic image | teacher prediction) to
``--out``. Every step skips itself when its output exists. Without the checkpoints or the data it says so and
exits 0 (``--dry-run`` still prints the plan).

    python benchmarks/pathology_placement.py --out runs/placement18 --num-samples 16 --threads 1 \\
        --image-ckpt runs/bench13/stage3_finetune/model.pt --teacher runs/bench13/seg/unet_R66_S0_seed0/model_final.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from duke_retidiff import ROOT, Plan, Runner, _cuda, _versions, ddpm_configs, scale_settings, seg_configs  # noqa: E402

#: Scales: the bundles' preset of the synthesis and the teacher (``configs/presets/<preset>.yaml``); the stage-3
#: model and the teacher must have been trained with it.
SCALES: dict[str, dict[str, Any]] = {
    "mini": {"preset": "cpu_mini",
             "why": "cpu_mini: 64x128 pixel UNet images enlarged to 224x512 bands, the teacher (--teacher-network) at 128x256"},
    "tiny": {"preset": "cpu_smoke", "why": "smoke test (numbers meaningless)"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", choices=sorted(SCALES), default="mini")
    p.add_argument("--out", type=Path, default=Path("runs/placement"))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder holding duke_dme/")
    p.add_argument("--labels", type=Path, default=None, help="labelled datalist to edit (default: Duke DME train)")
    p.add_argument("--image-ckpt", type=Path, default=Path("runs/bench13/stage3_finetune/model.pt"))
    p.add_argument("--teacher", type=Path, default=Path("runs/bench13/seg/unet_R66_S0_seed0/model_final.pt"))
    p.add_argument("--teacher-network", default="unet")
    p.add_argument("--num-samples", type=int, default=16, help="N label maps edited (spread evenly over --labels)")
    p.add_argument("--pockets", type=int, nargs=2, default=[1, 1], metavar=("LOW", "HIGH"), help="fluid pockets per map")
    p.add_argument("--height", type=float, nargs=2, default=[8, 30], metavar=("LOW", "HIGH"), help="pocket height (rows)")
    p.add_argument("--width", type=float, nargs=2, default=[20, 80], metavar=("LOW", "HIGH"), help="pocket width (columns)")
    p.add_argument("--sampler", default=None, help="synthesis sampler (default: the preset's)")
    p.add_argument("--num-inference-steps", type=int, default=None, help="sampler steps (default: the preset's)")
    p.add_argument("--rows", type=int, default=4, help="rows of figure.png")
    p.add_argument("--device", default="cuda:0" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per step (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="steps run at once when their inputs are ready")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p.parse_args(argv)


def missing_inputs(a: argparse.Namespace, labels: Path) -> list[str]:
    """What the run needs and does not find (the labels, the two checkpoints), as ``--flag path`` strings."""
    return [f"--{k} {v}" for k, v in (("labels", labels), ("image-ckpt", a.image_ckpt), ("teacher", a.teacher))
            if not v.is_file()]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.argv = list(sys.argv[1:] if argv is None else argv)
    cfg = scale_settings(SCALES, a.scale)
    labels = (a.labels or a.data / "duke_dme" / "datalist_train.json").resolve()
    a.image_ckpt, a.teacher = a.image_ckpt.resolve(), a.teacher.resolve()
    missing = missing_inputs(a, labels)
    if missing and not a.dry_run:
        print(f"pathology placement skipped: not found {', '.join(missing)}")
        return 0
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run, plan = Runner(out, a.device, a.dry_run, a.threads), Plan(a.jobs)
    g = cfg["ddpm"]
    size = g.get("output_size") or g["image_size"]
    t_start = time.time()
    n = a.num_samples
    edit = {"fluid": ["--count", *map(str, a.pockets), "--height", *map(str, a.height), "--width", *map(str, a.width)],
            "drusen": []}
    for kind, extra in edit.items():
        d = out / f"edit_{kind}"
        plan.add(f"place_{kind}", lambda kind=kind, d=d, extra=extra: run.step(f"place_{kind}", d / "datalist.json", [
            sys.executable, "-m", "monai_oct", "place-pathology", str(labels), "--out", str(d), "--edit", kind,
            "--num", str(n), "--seed", str(a.seed), "--band-height", str(g["band_height"] or 0),
            "--size", *map(str, size), *extra]))
    synth = {"image_ckpt": str(a.image_ckpt), "seed": a.seed, "progress": False, "num_samples": n,
             "sampler": a.sampler, "num_inference_steps": a.num_inference_steps}
    for name, dl in (("edited", "datalist.json"), ("control", "datalist_control.json")):
        s, t = out / f"synth_{name}", out / f"teacher_{name}"
        plan.add(f"synth_{name}", lambda name=name, s=s, dl=dl: run.bundle(
            f"synthesize_{name}", s / "datalist.json", ddpm_configs(cfg, "synthesize"),
            label_datalist=str(out / "edit_fluid" / dl), output_dir=str(s), **synth), after=["place_fluid"])
        plan.add(f"teacher_{name}", lambda name=name, s=s, t=t: run.bundle(
            f"teacher_{name}", t / "datalist.json", seg_configs(cfg, "pseudo_label"), dataset_dir=str(s),
            ckpt=str(a.teacher), output_dir=str(t), network=a.teacher_network, progress=False),  # bands taken whole
            after=[f"synth_{name}"])
    plan.run()
    if a.dry_run:
        if missing:
            print(f"(a real run would skip: not found {', '.join(missing)})")
        return 0
    res = score(out)
    write_results(out, a, cfg, labels, res, time.time() - t_start, run.log)
    return 0


def _items(path: Path) -> list[dict[str, str]]:
    from monai_oct.core.io import read_json

    return read_json(path, "datalist")["training"]


def score(out: Path) -> dict[str, Any]:
    """Inserted-fluid Dice of the edited set, the control set's fluid Dice, the drusen maps' validity.

    Synthetic pair ``k`` (``synth_<k:05d>.png``) was drawn from map ``k`` of its label datalist (the synthesis takes
    the maps in order), so it is scored against that map's masks.
    """
    from monai_oct.core.io import DataError, read_label
    from monai_oct.core.labels import UNANNOTATED
    from monai_oct.recipes.placement import fluid_dice_summary, inserted_fluid_dice, layer_order_validity

    def pred(name: str, k: int) -> np.ndarray:
        return read_label(out / f"teacher_{name}" / "labels" / f"synth_{k:05d}.png")

    edited, dice, pixels, names = _items(out / "edit_fluid" / "datalist.json"), [], [], []
    for k, it in enumerate(edited):
        lab, ins, before = read_label(it["label"]), read_label(it["inserted"]), read_label(it["before"])
        drawn = read_label(out / "synth_edited" / "labels" / f"synth_{k:05d}.png")
        if not np.array_equal(drawn, lab):
            raise DataError(f"{out / 'synth_edited'}: pair {k} was not drawn from the edited map {it['label']}")
        ignore = (before != 0) | (lab == UNANNOTATED)
        dice.append(inserted_fluid_dice(pred("edited", k), ins, before, ignore=lab == UNANNOTATED))
        pixels.append(int(((ins != 0) & ~ignore).sum()))
        names.append(Path(it["label"]).name)
    inserted = fluid_dice_summary(dice, pixels)
    inserted["names"], inserted["pixels"] = names, pixels

    control, cdice, inter, total = _items(out / "edit_fluid" / "datalist_control.json"), [], 0, 0
    for k, it in enumerate(control):
        lab, p = read_label(it["label"]), pred("control", k)
        truth, pf = (lab == 9) & (lab != UNANNOTATED), (p == 9) & (lab != UNANNOTATED)
        cdice.append(inserted_fluid_dice(p, truth, None, ignore=lab == UNANNOTATED))
        inter, total = inter + int((truth & pf).sum()), total + int(truth.sum() + pf.sum())
    ctrl = fluid_dice_summary(cdice)
    ctrl["pooled"] = 2.0 * inter / total if total else float("nan")

    drusen = _items(out / "edit_drusen" / "datalist.json")
    validity = layer_order_validity([read_label(it["label"]) for it in drusen],
                                    before=[read_label(Path(it["label"]).parent.parent / "original" / Path(it["label"]).name)
                                            for it in drusen])
    fluid_validity = layer_order_validity([read_label(it["label"]) for it in edited])
    return {"inserted_fluid": inserted, "control_fluid": ctrl, "drusen_validity": validity,
            "fluid_validity": fluid_validity}


def write_results(out: Path, a: argparse.Namespace, cfg: dict, labels: Path, res: dict, wall: float,
                  timings: dict) -> None:
    """``results.json``, ``results.md`` and ``figure.png``."""
    from monai_oct.core.io import read_json, write_json, write_text

    place = read_json(out / "edit_fluid" / "placement.json", "placement record")
    manifest = read_json(out / "synth_edited" / "manifest.json", "synthesis manifest")
    gen = {k: manifest.get(k) for k in ("seed", "num_samples")}
    gen.update({k: manifest["generation"].get(k) for k in ("sampler", "num_inference_steps") if k in manifest["generation"]})
    meta = {"scale": a.scale, "preset": cfg["preset"], "labels": str(labels), "image_ckpt": str(a.image_ckpt),
            "teacher": str(a.teacher), "teacher_network": a.teacher_network, "seed": a.seed, "device": a.device,
            "threads": a.threads, "pockets": a.pockets, "height": a.height, "width": a.width, "synthesis": gen,
            "placement": {k: v for k, v in place.items() if k != "items"}, "versions": _versions(),
            "command": " ".join(["python", "benchmarks/pathology_placement.py", *a.argv]),
            "wall_time_min": round(wall / 60, 1), "step_minutes": {k: round(v / 60, 2) for k, v in timings.items()}}
    write_json(out / "results.json", {"meta": meta, **res})
    f, c, dv, fv = res["inserted_fluid"], res["control_fluid"], res["drusen_validity"], res["fluid_validity"]
    target = "met" if f["mean"] >= 0.6 else "not met"
    lines = [f"# Pathology placement ({a.scale} scale, N = {f['num_images']})", "",
             f"Label maps: `{labels}` ({len(f['per_image'])} spread evenly, band {place['band_height']} rows, "
             f"{place['size'][0]}x{place['size'][1]}); one fluid pocket per map of {a.height[0]:g}-{a.height[1]:g} rows x "
             f"{a.width[0]:g}-{a.width[1]:g} columns (seed {a.seed}, map i from the stream (seed, i)); images from "
             f"`{a.image_ckpt}` ({gen}); teacher `{a.teacher}` ({a.teacher_network}). {cfg['why']}. "
             f"Wall time {wall / 60:.1f} min; versions {meta['versions']}.", "", f"    {meta['command']}", "",
             "## Inserted fluid found by the teacher (target: Dice >= 0.6)", "",
             "Dice of the teacher's fluid (class 9) on the synthetic image against the inserted pocket, fluid the map "
             "already had left out; found = Dice > 0.", "",
             "| set | images | mean Dice | found |", "|---|---:|---:|---:|",
             f"| all pockets | {f['num_images']} | {f['mean']:.3f} | {f['found']:.3f} |"]
    lines += [f"| pockets of {b} px | {s['num_images']} | {s['mean']:.3f} | {s['found']:.3f} |" for b, s in f["bins"].items()]
    lines += ["", f"Target {target} (mean {f['mean']:.3f}).", "",
              "Reference: the teacher's fluid Dice on the control set (the same maps unedited, the same seeds; images "
              f"with fluid in the map): mean {c['mean']:.3f} over {c['num_images']} images, found {c['found']:.3f}, "
              f"pooled over pixels {c['pooled']:.3f}.", "",
              "Per image (edited set):", "", "| map | inserted px | Dice |", "|---|---:|---:|"]
    lines += [f"| {nm} | {px} | {d:.3f} |" for nm, px, d in zip(f["names"], f["pixels"], f["per_image"])]
    lines += ["", "## Layer order of the edited maps (column validity)", "",
              "| edit | maps | valid column fraction (mean) | maps with every column valid | invalid columns | "
              "columns valid before that stay valid |", "|---|---:|---:|---:|---:|---:|",
              f"| drusen | {len(dv['per_image'])} | {dv['mean']:.4f} | {dv['all_valid']:.3f} | {dv['invalid_columns']} | "
              f"{dv['kept']:.4f} |",
              f"| fluid | {len(fv['per_image'])} | {fv['mean']:.4f} | {fv['all_valid']:.3f} | {fv['invalid_columns']} | |",
              "", "![edited label | synthetic image | teacher prediction](figure.png)", "",
              "## Step times (minutes)", "", "| step | min |", "|---|---:|"]
    lines += [f"| {k} | {v / 60:.1f} |" for k, v in timings.items()]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    figure(out, a.rows)
    print(f"\nresults: {out / 'results.md'}")


def figure(out: Path, rows: int = 4) -> None:
    """``figure.png``: rows of (edited label map, synthetic image, teacher prediction over it), the legend below."""
    from monai_oct.core.io import read_image, read_label, write_png
    from monai_oct.core.visualise import label_legend, label_overlay, label_to_rgb
    from monai_oct.core.labels import DUKE_DME

    tiles = []
    for k, it in enumerate(_items(out / "edit_fluid" / "datalist.json")[:rows]):
        img = read_image(out / "synth_edited" / "images" / f"synth_{k:05d}.png").astype(np.uint8)
        pred = read_label(out / "teacher_edited" / "labels" / f"synth_{k:05d}.png")
        sep = np.full((img.shape[0], 4, 3), 255, np.uint8)
        tiles.append(np.concatenate([label_to_rgb(read_label(it["label"])), sep, np.repeat(img[..., None], 3, -1), sep,
                                     label_overlay(img, pred)], axis=1))
        tiles.append(np.full((4, tiles[-1].shape[1], 3), 255, np.uint8))
    if tiles:
        grid = np.concatenate(tiles, axis=0)
        legend = label_legend(DUKE_DME.names, width=grid.shape[1])[:, : grid.shape[1]]
        legend = np.pad(legend, ((0, 0), (0, grid.shape[1] - legend.shape[1]), (0, 0)), constant_values=255)
        write_png(out / "figure.png", np.concatenate([grid, legend], axis=0))


if __name__ == "__main__":
    raise SystemExit(main())
