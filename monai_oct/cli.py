"""Command-line entry point: ``monai-oct`` (also ``python -m monai_oct``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _cmd_phantom(args: argparse.Namespace) -> int:
    from monai_oct.phantoms.oct import write_phantom_dataset

    dl = write_phantom_dataset(args.out, num=args.num, size=args.size, seed=args.seed, val_fraction=args.val_fraction)
    print(f"wrote {args.num} phantom B-scans ({args.size[0]}x{args.size[1]}) to {args.out}; datalist: {dl}")
    return 0


def _cmd_multiband_phantoms(args: argparse.Namespace) -> int:
    from monai_oct.phantoms.multiband import DEFAULT_WAVELENGTHS, write_multiband_dataset

    bands = args.bands or list(DEFAULT_WAVELENGTHS)
    try:
        dl = write_multiband_dataset(args.out, num=args.num, size=args.size, wavelengths=bands, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} {len(bands)}-band phantoms ({args.size}x{args.size}) to {args.out}; datalist: {dl}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from monai_oct.core.datalist import check_dataset, load_datalist
    from monai_oct.core.io import DataError
    from monai_oct.core.labels import get_label_table

    table = get_label_table(args.table)
    try:
        items = load_datalist(args.datalist, root=args.root, key=args.key)
        report = check_dataset(items, table=table, num_classes=args.num_classes)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.datalist}:")
    print(report.summary(None if args.num_classes else table))
    return 0 if report.ok else 1


def _cmd_drive_datalist(args: argparse.Namespace) -> int:
    from monai_oct.core.drive import write_drive_datalist
    from monai_oct.core.io import DataError, read_json

    try:
        dl = write_drive_datalist(args.root, args.out, validation_ids=args.validation_ids, check=not args.no_check)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lists = read_json(dl, "datalist")
    print(f"wrote {dl}: " + ", ".join(f"{k} {len(v)} images (ids {', '.join(str(it['id']) for it in v)})"
                                       for k, v in lists.items()))
    return 0


def _cmd_sketch_stats(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.recipes.sketches import LayerThicknessStats

    try:
        stats = LayerThicknessStats.fit_datalist(args.datalist, root=args.root, key=args.key, table=args.table,
                                                 max_items=args.max_items, band_height=args.band_height,
                                                 image_size=args.size)
    except (DataError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = stats.save(args.out)
    layers = ", ".join(f"{t:.4f}+-{s:.4f}" for t, s in zip(stats.thickness_mean, stats.thickness_std))
    print(f"fitted sketch statistics on {stats.num_images} label maps of {args.datalist} -> {out}")
    print(f"  layer thickness (fraction of height): {layers}")
    print(f"  retina top {stats.top_mean:.3f}+-{stats.top_std:.3f}; fovea in {stats.fovea_probability:.0%} "
          f"(pit depth {stats.pit_depth:+.3f}); fluid in {stats.fluid_probability:.0%}")
    return 0


def _cmd_fit_boundaries(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.recipes.boundaries import BoundaryModel

    try:
        model = BoundaryModel.fit_datalist(args.datalist, band_height=args.band_height, dataset_dir=args.root,
                                           key=args.key, table=args.table, max_items=args.max_items,
                                           num_control=args.num_control)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = model.save(args.out)
    with_fluid = len(set(model.fluid_runs[:, 0].astype(int).tolist()))
    print(f"fitted a boundary model on {model.num_maps} label maps of {args.datalist} -> {out}")
    print(f"  {model.stddev.size} shape components at {model.num_control} control columns; "
          f"fluid carried from {with_fluid} of the maps")
    return 0


def _cmd_merge_synthesis(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.engines.shards import merge_synthesis

    try:
        datalist = merge_synthesis(args.out, args.shard_dirs, grid_size=args.grid_size)
    except (DataError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from monai_oct.core.io import read_json

    manifest = read_json(Path(args.out) / "manifest.json", "synthesis manifest")
    print(f"merged {len(manifest['shards'])} shard(s): {manifest['num_samples']} pairs in {args.out} "
          f"(datalist {datalist}, manifest {Path(args.out) / 'manifest.json'})")
    return 0


def _cmd_place_pathology(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError, read_json
    from monai_oct.recipes.placement import place_pathology

    if args.edit == "fluid":
        edit_args = {"num_pockets": args.count, "height_range": args.height, "width_range": args.width}
    else:
        edit_args = {"count": args.count, "height_range": args.height, "width_range": args.width}
    try:
        dl = place_pathology(args.datalist, args.out, edit=args.edit, num=args.num, seed=args.seed,
                             band_height=args.band_height, size=args.size, dataset_dir=args.root, key=args.key,
                             table=args.table, **{k: v for k, v in edit_args.items() if v is not None})
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rec = read_json(Path(args.out) / "placement.json", "placement record")["items"]
    print(f"placed {args.edit} in {len(rec)} label maps of {args.datalist} ({args.size[0]}x{args.size[1]}, seed {args.seed}): "
          f"{sum(r['inserted_pixels'] for r in rec)} pixels inserted")
    print(f"wrote {dl} (edited maps) and {Path(args.out) / 'datalist_control.json'} (the same maps unedited); "
          f"synthesize with --label_datalist {dl}")
    return 0


def _cmd_import_vendor(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.core.vendor import import_vendor

    try:
        result = import_vendor(args.files, args.out, key=args.key, labels=not args.no_labels)
    except (DataError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_oct.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick)


def _channels(value: str) -> int | None:
    """``--channels``: ``auto`` -> None, else a positive number."""
    if value.lower() == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number, got {value!r}")
    return int(value)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.metrics.fid import ExtractorUnavailable
    from monai_oct.recipes.quality import evaluate_synthesis

    try:
        rep = evaluate_synthesis(
            args.real, args.synthetic, args.out, reference=args.reference, real_key=args.real_key,
            synthetic_key=args.synthetic_key, reference_key=args.reference_key,
            image_size=args.image_size, extractor=args.extractor,
            extractor_layer=args.extractor_layer, teacher=args.teacher, teacher_network=args.teacher_network,
            teacher_image_size=args.teacher_image_size, table=args.table, max_images=args.max_images,
            max_pairs=args.max_pairs, repeats=args.repeats, batch_size=args.batch_size, device=args.device, seed=args.seed,
            channels=args.channels, structure_key=args.structure_key, band_range=args.band_range)
    except (DataError, ExtractorUnavailable, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fr, dv = rep.get("frechet") or {}, rep["diversity"]["ms_ssim"]
    mem = rep["memorisation"]
    nan = float("nan")
    bands = f", {rep['bands']['num_bands']} bands" if rep.get("bands") else ""
    print(f"real {rep['real']['num_images']} vs synthetic {rep['synthetic']['num_images']} images at {rep['image_size']}{bands}")
    per_triplet = fr.get("per_triplet", [])
    if len(per_triplet) > 1:  # one triplet (RGB): its numbers are the means printed below
        for t in per_triplet:
            print(f"  bands {t['bands']}: FD {t['fd']:.2f}  KID {t['kid']:.4f}  floor FD {t.get('fd_floor', nan):.2f} "
                  f"vs matched {t.get('fd_matched', nan):.2f}")
    if fr:
        print(("mean over triplets: " if len(per_triplet) > 1 else "")
              + f"FD {fr['fd']:.2f}  KID {fr['kid']:.4f}  floor FD {fr.get('fd_floor', nan):.2f} vs matched "
              f"{fr.get('fd_matched', nan):.2f} ({fr['extractor']})")
    sp = rep.get("spectral")
    if sp:
        gap = sp["ms_ssim_gap"]
        print(f"|MS-SSIM(synthetic) - MS-SSIM({sp['ms_ssim_gap_against']})| {gap['gap']:.4f}")
        fl = sp.get("kl_floor") or {}
        for name, v in ((sp.get("kl") or {}).get("per_structure") or {}).items():
            floor, matched = (fl.get("floor") or {}).get(name), (fl.get("matched") or {}).get(name)
            print(f"spectral KL {name}: " + (f"{v['kl']:.4f}" if v else "absent from a set")
                  + (f"  floor {floor:.4f} vs matched {matched:.4f}" if floor is not None and matched is not None else ""))
        if sp.get("kl_note") and args.structure_key:
            print(f"spectral KL {sp['kl_note']}")
    print("MS-SSIM real {:.3f} synthetic {:.3f}".format(*((dv[k] or {}).get("mean", float("nan")) for k in ("real", "synthetic"))))
    print(f"memorised: pixels {mem['pixel']['fraction_flagged']:.3f}"
          + (f", features {mem['feature']['fraction_flagged']:.3f}" if mem["feature"] else ""))
    if rep.get("adherence"):
        print(f"adherence mean Dice {rep['adherence']['mean_dice']:.4f}")
    for k, v in rep["plausibility"].items():
        if v:
            print(f"plausibility ({k}): {v['valid_column_fraction']:.4f} of columns valid")
    print(f"wrote {rep['report_path']}" + (f" and {rep['figure_path']}" if rep.get("figure_path") else ""))
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.recipes.classifier import real_class_split, train_classifier
    from monai_oct.recipes.items import resolve_items

    try:
        if args.train:
            split = {"train": resolve_items(args.train, args.key, fields=["image", "class"]),
                     "heldout": resolve_items(args.heldout, args.key, fields=["image", "class"]) if args.heldout else []}
            note = f"train {args.train}, held out {args.heldout}"
        else:
            split = real_class_split(args.data, args.first_heldout_frame)
            note = (f"{args.data}: Duke DME train / val; HCMS hc01 (healthy), ms01 (MS) frames < "
                    f"{args.first_heldout_frame} train, >= {args.first_heldout_frame} held out")
        rec = train_classifier(split["train"], split["heldout"], args.out, table=args.class_table,
                               image_size=args.image_size, max_epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=args.seed, device=args.device, split_note=note,
                               band_height=args.band_height)
    except (DataError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"trained on {rec['num_train']} scans in {rec['wall_s']:.0f} s; train accuracy {rec['train']['accuracy']:.3f}")
    if "heldout" in rec:
        per = ", ".join(f"{n} {r['accuracy']:.3f} ({r['images']})" for n, r in rec["heldout"]["per_class"].items())
        print(f"held-out accuracy {rec['heldout']['accuracy']:.3f} over {rec['num_heldout']} scans: {per}")
    print(f"wrote {Path(args.out) / 'classifier.pt'} and classifier.json")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from monai_oct.core.io import DataError
    from monai_oct.recipes.classifier import evaluate_classifier

    try:
        rep = evaluate_classifier(args.ckpt, args.datalist, args.out, key=args.key, classes=args.classes,
                                  device=args.device, band_height=args.band_height)
    except (DataError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    per = ", ".join(f"{n} {r['accuracy']:.3f} ({r['images']})" for n, r in rep["per_class"].items())
    print(f"accuracy {rep['accuracy']:.3f} over {rep['num_images']} images: {per}")
    print(f"wrote {Path(args.out) / 'classification.json'} and classification.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``monai-oct`` argument parser."""
    from monai_oct import __version__

    p = argparse.ArgumentParser(prog="monai-oct", description="Annotated retinal OCT synthesis with diffusion models (MONAI).")
    p.add_argument("--version", action="version", version=f"monai_oct {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    ph = sub.add_parser("phantom", help="write a phantom OCT dataset (images/, labels/, datalist.json)")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--num", type=int, default=32, help="number of B-scans")
    ph.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--val-fraction", type=float, default=0.25, help="share listed under 'validation'")
    ph.set_defaults(func=_cmd_phantom)

    mb = sub.add_parser("multiband-phantoms", help="write multi-band fundus phantoms (images/*.npy (C, H, W), structures/*.png, "
                        "bands.json, datalist.json) for bundles/retina_ldm")
    mb.add_argument("--out", required=True, help="output folder")
    mb.add_argument("--num", type=int, default=32, help="number of images")
    mb.add_argument("--size", type=int, default=64, help="image side (square, at least 32)")
    mb.add_argument("--bands", type=float, nargs="+", default=None, metavar="NM",
                    help="band centre wavelengths in nm, 450-920 (default: 16 bands 465-900 nm)")
    mb.add_argument("--seed", type=int, default=0, help="image i uses sample_seed(seed, i): sets of other seeds share no image")
    mb.set_defaults(func=_cmd_multiband_phantoms)

    ck = sub.add_parser("check-data", help="validate a datalist: files load, sizes match, label ids known")
    ck.add_argument("datalist", help="Decathlon-style datalist JSON")
    ck.add_argument("--root", default=None, help="folder the paths are relative to (default: the JSON's folder)")
    ck.add_argument("--key", default=None, help="list to check (default: 'train' or the only list)")
    ck.add_argument("--num-classes", type=int, default=None, help="accept ids 0..C-1 instead of the table's")
    ck.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    ck.set_defaults(func=_cmd_check_data)

    dd = sub.add_parser("drive-datalist", help="list DRIVE fundus photographs with A/V labels and FOV masks, split 15 / 5 by image")
    dd.add_argument("--root", required=True, help="the drive_av folder (holding training/{images,av,fov})")
    dd.add_argument("--out", required=True, help="output folder: datalist.json with 'train' and 'validation' lists")
    dd.add_argument("--validation-ids", type=int, nargs="+", default=[36, 37, 38, 39, 40], metavar="ID",
                    help="image ids of the validation list (default: the last five, 36-40)")
    dd.add_argument("--no-check", action="store_true", help="do not read the files (label ids, FOV masks, sizes) first")
    dd.set_defaults(func=_cmd_drive_datalist)

    ss = sub.add_parser("sketch-stats", help="fit layer-thickness statistics for random sketches on a labelled datalist")
    ss.add_argument("datalist", help="Decathlon-style datalist JSON with 'label' entries")
    ss.add_argument("--out", required=True, help="output JSON (LayerThicknessStats)")
    ss.add_argument("--root", default=None, help="folder the paths are relative to (default: the JSON's folder)")
    ss.add_argument("--key", default=None, help="list to read (default: 'train' or the only list)")
    ss.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    ss.add_argument("--max-items", type=int, default=None, help="fit on the first N items only")
    ss.add_argument("--band-height", type=int, default=None,
                    help="fit through the retina band the DDPM trains on (rows cropped around the layers, e.g. 224)")
    ss.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="resize the (band-cropped) labels to H W first, as the DDPM's --image_size (e.g. 64 128)")
    ss.set_defaults(func=_cmd_sketch_stats)

    fb = sub.add_parser("fit-boundaries", help="fit the boundary-curve label generator (synthesis --boundary_model) on a labelled datalist")
    fb.add_argument("datalist", help="Decathlon-style datalist JSON with 'label' entries")
    fb.add_argument("--out", required=True, help="output file (BoundaryModel): .json, else .npz")
    fb.add_argument("--band-height", type=int, default=224,
                    help="rows of the retina band cropped around the layers, at full resolution (0: whole B-scans)")
    fb.add_argument("--root", default=None, help="folder relative paths start from")
    fb.add_argument("--key", default=None, help="list to read (default: 'train' or the only list)")
    fb.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    fb.add_argument("--max-items", type=int, default=None, help="fit on the first N items only")
    fb.add_argument("--num-control", type=int, default=32, help="control columns across the width")
    fb.set_defaults(func=_cmd_fit_boundaries)

    mg = sub.add_parser("merge-synthesis", help="merge the shard runs of a synthesis (--shard i/n) into one listed, checked set")
    mg.add_argument("out", help="the set's folder (may hold shards itself): datalist.json, manifest.json, grid.png are written here")
    mg.add_argument("shard_dirs", nargs="*", metavar="SHARD_DIR", help="other folders holding shard runs (their pairs are copied into OUT)")
    mg.add_argument("--grid-size", type=int, default=16, help="pairs shown in grid.png")
    mg.set_defaults(func=_cmd_merge_synthesis)

    pp = sub.add_parser("place-pathology", help="insert fluid pockets or drusen into the label maps of a datalist "
                                               "(edited maps, inserted masks, a datalist for synthesis --label_datalist)")
    pp.add_argument("datalist", help="Decathlon-style datalist JSON with 'image' and 'label' entries")
    pp.add_argument("--out", required=True, help="output folder: labels/, inserted/, before/, original/, datalist.json, "
                                                 "datalist_control.json, placement.json")
    pp.add_argument("--edit", choices=["fluid", "drusen"], default="fluid", help="what to place (default: fluid)")
    pp.add_argument("--num", type=int, default=None, help="edit this many maps, spread evenly over the list (default: all)")
    pp.add_argument("--seed", type=int, default=0, help="map i is edited with the stream (seed, i)")
    pp.add_argument("--band-height", type=int, default=224, help="retina band rows cropped around the layers (0: whole maps)")
    pp.add_argument("--size", type=int, nargs=2, default=[224, 512], metavar=("H", "W"),
                    help="size the maps are resized to, the synthesis' --label_size (default: 224 512)")
    pp.add_argument("--count", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="pockets / drusen per map (default: the transform's, 1 3 / 1 4)")
    pp.add_argument("--height", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="pocket / druse height in rows (default: the transform's, 6 16 / 4 10)")
    pp.add_argument("--width", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                    help="pocket / druse width in columns (default: the transform's, 12 40 / 30 70)")
    pp.add_argument("--root", default=None, help="folder a relative datalist path starts from")
    pp.add_argument("--key", default=None, help="list to read (default: 'train' or 'training')")
    pp.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    pp.set_defaults(func=_cmd_place_pathology)

    iv = sub.add_parser("import-vendor", help="scanners' OCT files (Heidelberg .vol, .e2e, .xml; needs the vendor extra) "
                                              "-> B-scan PNGs, Duke DME label maps where the file has layer lines, datalist.json")
    iv.add_argument("files", nargs="+", metavar="FILE", help=".vol / .e2e / .xml files")
    iv.add_argument("--out", required=True, help="output folder: images/, labels/, datalist.json")
    iv.add_argument("--key", default="test", help="list name in datalist.json (default: test, what evaluate.yaml reads; "
                                                  "train to train on it)")
    iv.add_argument("--no-labels", action="store_true", help="write the B-scans only, even where the file has layer lines")
    iv.set_defaults(func=_cmd_import_vendor)

    de = sub.add_parser("demo", help="run the main job on built-in phantom data")
    de.add_argument("--out", default="runs/demo", help="output folder")
    de.add_argument("--quick", action="store_true", help="smallest possible run (used by the tests)")
    de.set_defaults(func=_cmd_demo)

    ev = sub.add_parser("evaluate", help="compare a synthetic dataset with a real one (grey, RGB or C-band .npy): "
                                          "report.json + report.png")
    ev.add_argument("--real", required=True, help="real training set: datalist JSON or image folder")
    ev.add_argument("--synthetic", required=True, help="synthetic set: datalist JSON or folder (labels = conditions)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--reference", default=None, help="second real set for the real-vs-real floor (default: split --real)")
    ev.add_argument("--real-key", default=None, help="datalist list of --real (default: train or the only list)")
    ev.add_argument("--synthetic-key", default=None)
    ev.add_argument("--reference-key", default=None)
    ev.add_argument("--image-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                    help="common size of all images (0 0: keep the files' size)")
    ev.add_argument("--extractor", default="tf_inception",
                    help="tf_inception (needs the fid extra), none, or a TorchScript file")
    ev.add_argument("--extractor-layer", default=None, help="layer of a TorchScript extractor to pool")
    ev.add_argument("--teacher", default=None, help="segmentation checkpoint (state dict) for mask adherence")
    ev.add_argument("--teacher-network", default="unet", help="network of --teacher (unet, basicunet, relaynet, ynet, gdnet)")
    ev.add_argument("--teacher-image-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    ev.add_argument("--table", default="duke_dme", help="label table")
    ev.add_argument("--max-images", type=int, default=None, help="at most this many images per set")
    ev.add_argument("--max-pairs", type=int, default=500, help="MS-SSIM pairs per set")
    ev.add_argument("--repeats", type=int, default=3, help="random draws of the matched-size floor")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--device", default="cpu")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--channels", type=_channels, default=None, metavar="auto|N",
                    help="channels of the images: auto (default: the files' own, grey PNG 1, RGB PNG 3, .npy (C, H, W) "
                         "C; the sets must agree; C > 1: FD/KID per band triplet (0,1,2),(3,4,5)... with floors), "
                         "1 (grey, RGB averaged) or a number the files must have")
    ev.add_argument("--structure-key", default=None,
                    help="datalist entry of structure masks (e.g. structures, of multiband-phantoms): spectral KL per "
                         "structure with its real-vs-real floor")
    ev.add_argument("--band-range", type=float, nargs=2, default=[0.0, 1.0], metavar=("LO", "HI"),
                    help="value range of .npy bands (default 0 1, reflectances)")
    ev.set_defaults(func=_cmd_evaluate)

    tc = sub.add_parser("train-classifier", help="train the B-scan classifier of image classes (healthy / DME / MS): "
                        "classifier.pt + classifier.json")
    tc.add_argument("--out", required=True, help="output folder")
    tc.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="folder with duke_dme/ and hcms_unlabeled/ (the default split; see recipes/classifier.py)")
    tc.add_argument("--first-heldout-frame", type=int, default=40, help="HCMS B-scans from this index on are held out")
    tc.add_argument("--train", nargs="+", default=None, help="training datalists/folders instead of --data's split")
    tc.add_argument("--heldout", nargs="+", default=None, help="held-out datalists/folders (with --train)")
    tc.add_argument("--key", default=None, help="datalist list of --train / --heldout")
    tc.add_argument("--class-table", default="oct_pathology")
    tc.add_argument("--image-size", type=int, nargs=2, default=[128, 256], metavar=("H", "W"))
    tc.add_argument("--band-height", type=int, default=None,
                    help="crop the retina band (rows, located from the image) before resizing, as the diffusion stages do")
    tc.add_argument("--epochs", type=int, default=30)
    tc.add_argument("--batch-size", type=int, default=16)
    tc.add_argument("--lr", type=float, default=1e-3)
    tc.add_argument("--device", default="cpu")
    tc.add_argument("--seed", type=int, default=0)
    tc.set_defaults(func=_cmd_train_classifier)

    cl = sub.add_parser("classify", help="score a datalist whose items name their class (a synthetic set) with the "
                        "classifier: accuracy per class + confusion matrix (classification.json / .md)")
    cl.add_argument("datalist", help="datalist (items with \"class\"), folder or image")
    cl.add_argument("--ckpt", required=True, help="classifier.pt of train-classifier")
    cl.add_argument("--out", required=True, help="output folder")
    cl.add_argument("--key", default=None, help="datalist list (default: train or the only list)")
    cl.add_argument("--classes", nargs="+", default=None, help="requested classes to score (default: all present)")
    cl.add_argument("--band-height", type=int, default=None,
                    help="crop the retina band first (whole real scans); synthetic bands: leave unset")
    cl.add_argument("--device", default="cpu")
    cl.set_defaults(func=_cmd_classify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
