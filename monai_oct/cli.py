"""Command-line entry point: ``monai-oct`` (also ``python -m monai_oct``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]


def _cmd_phantom(args: argparse.Namespace) -> int:
    from monai_oct.data.phantom import write_phantom_dataset

    dl = write_phantom_dataset(args.out, num=args.num, size=args.size, seed=args.seed, val_fraction=args.val_fraction)
    print(f"wrote {args.num} phantom B-scans ({args.size[0]}x{args.size[1]}) to {args.out}; datalist: {dl}")
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from monai_oct.data.datalist import DataError, check_dataset, load_datalist
    from monai_oct.data.labels import get_label_table

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


def _cmd_sketch_stats(args: argparse.Namespace) -> int:
    from monai_oct.data.datalist import DataError
    from monai_oct.data.sketches import LayerThicknessStats

    try:
        stats = LayerThicknessStats.fit_datalist(args.datalist, root=args.root, key=args.key, table=args.table,
                                                 max_items=args.max_items)
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from monai_oct.demo import run_demo

    return run_demo(Path(args.out), quick=args.quick)


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

    ck = sub.add_parser("check-data", help="validate a datalist: files load, sizes match, label ids known")
    ck.add_argument("datalist", help="Decathlon-style datalist JSON")
    ck.add_argument("--root", default=None, help="folder the paths are relative to (default: the JSON's folder)")
    ck.add_argument("--key", default=None, help="list to check (default: 'train' or the only list)")
    ck.add_argument("--num-classes", type=int, default=None, help="accept ids 0..C-1 instead of the table's")
    ck.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    ck.set_defaults(func=_cmd_check_data)

    ss = sub.add_parser("sketch-stats", help="fit layer-thickness statistics for random sketches on a labelled datalist")
    ss.add_argument("datalist", help="Decathlon-style datalist JSON with 'label' entries")
    ss.add_argument("--out", required=True, help="output JSON (LayerThicknessStats)")
    ss.add_argument("--root", default=None, help="folder the paths are relative to (default: the JSON's folder)")
    ss.add_argument("--key", default=None, help="list to read (default: 'train' or the only list)")
    ss.add_argument("--table", default="duke_dme", help="label table (default: duke_dme)")
    ss.add_argument("--max-items", type=int, default=None, help="fit on the first N items only")
    ss.set_defaults(func=_cmd_sketch_stats)

    de = sub.add_parser("demo", help="run the main job on built-in phantom data")
    de.add_argument("--out", default="runs/demo", help="output folder")
    de.add_argument("--quick", action="store_true", help="smallest possible run (used by the tests)")
    de.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
