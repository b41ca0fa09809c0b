"""One call that compares a synthetic dataset with a real one: ``report.json`` + ``report.png``.

:func:`evaluate_synthesis` loads both sets (datalists, folders or item lists) at one size and runs every
quality measure of :mod:`monai_oct.metrics` that its inputs allow:

===================  =================================================  ===========================
section              what                                               needs
===================  =================================================  ===========================
``frechet``          FD + KID real vs synthetic, real-vs-real floor       a feature extractor
``diversity``        mean pairwise MS-SSIM of each set                    -
``memorisation``     nearest training image (pixels, features)           -
``adherence``        teacher Dice vs the conditioning labels              a teacher + synthetic labels
``plausibility``     valid-column fraction of label maps                  labels
``lpips``            not computed: its VGG/AlexNet weights download        -
===================  =================================================  ===========================

The figure shows rows of real and synthetic images (synthetic ones with their labels overlaid when
present), the closest synthetic/training pairs found by the memorisation check, and the headline numbers.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from monai_oct.core.io import atomic_path, write_json
from monai_oct.core.labels import DUKE_DME, LabelTable, get_label_table
from monai_oct.core.visualise import image_to_uint8, label_legend, label_overlay
from monai_oct.metrics.adherence import adherence_report, load_teacher
from monai_oct.metrics.diversity import diversity_report
from monai_oct.metrics.fid import extract_features, frechet_summary, get_extractor
from monai_oct.metrics.memorisation import memorisation_report
from monai_oct.metrics.plausibility import plausibility_report
from monai_oct.recipes.image_sets import ImageSet, load_image_set

__all__ = ["LPIPS_NOTE", "evaluate_synthesis", "quality_figure", "write_report"]

#: Why LPIPS is absent from the report.
LPIPS_NOTE = ("LPIPS not computed: the lpips package fetches its VGG/AlexNet backbone weights from the internet on "
              "first use (torchvision model zoo downloads), which this offline toolkit does not do. Diversity is reported "
              "with MS-SSIM instead.")


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def write_report(report: dict[str, Any], output_dir: str | os.PathLike, name: str = "report.json") -> Path:
    """Write ``report`` as JSON (NaN as null, private ``_`` keys dropped) atomically; returns the path."""
    return write_json(Path(output_dir) / name, _json_safe(report))


def _tile(img: torch.Tensor, label: torch.Tensor | None, h: int) -> "Any":
    from PIL import Image

    a = image_to_uint8(img[0])
    rgb = label_overlay(a, label[0].numpy()) if label is not None else np.repeat(a[..., None], 3, -1)
    im = Image.fromarray(rgb)
    w = max(1, round(im.width * h / im.height))
    return im.resize((w, h), Image.BILINEAR)


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if abs(x) < 1e4 else f"{x:.3g}"
    return str(x)


def quality_figure(real: ImageSet, synthetic: ImageSet, report: dict[str, Any], path: str | os.PathLike,
                   num: int = 6, tile_height: int = 128, table: LabelTable = DUKE_DME) -> Path:
    """Write the PNG figure: real row, synthetic row, closest memorisation pairs, headline numbers.

    Synthetic label maps are drawn over their images, with the legend of ``table``'s class names at the bottom.

    Returns:
        the written path.
    """
    from PIL import Image, ImageDraw

    pad, text_h = 6, 16
    rows: list[tuple[str, list[tuple[Any, str]]]] = []
    rows.append((f"real ({len(real)})", [(_tile(real.images[i], None, tile_height), real.names[i] if real.paths else "")
                                          for i in range(min(num, len(real)))]))
    rows.append((f"synthetic ({len(synthetic)})" + (" + labels" if synthetic.labels is not None else ""),
                 [(_tile(synthetic.images[i], None if synthetic.labels is None else synthetic.labels[i], tile_height),
                   synthetic.names[i] if synthetic.paths else "") for i in range(min(num, len(synthetic)))]))
    mem = report.get("memorisation") or {}
    pairs = (mem.get("pixel") or {}).get("closest") or []
    pair_tiles = []
    for p in pairs[: max(1, num // 2)]:
        s, t = p["synthetic"], p["train"]
        flag = " COPY?" if p["flagged"] else ""
        pair_tiles.append((_tile(synthetic.images[s], None, tile_height), f"synth {s}{flag}"))
        pair_tiles.append((_tile(real.images[t], None, tile_height), f"train {t}: rms {p['distance']:.3f}"))
    if pair_tiles:
        thr = mem["pixel"]["real_real_min"]
        rows.append((f"closest synthetic | training pairs (pixels; real-real min rms {thr:.3f})", pair_tiles))

    fr = report.get("frechet") or {}
    dv = (report.get("diversity") or {}).get("ms_ssim") or {}
    ad = report.get("adherence") or {}
    pl = report.get("plausibility") or {}
    lines = [
        f"FD {_fmt(fr.get('fd'), 1)}  KID {_fmt(fr.get('kid'), 4)}  floor FD {_fmt(fr.get('fd_floor'), 1)} / matched "
        f"{_fmt(fr.get('fd_matched'), 1)}  ({fr.get('extractor', 'no extractor')})",
        "MS-SSIM real " + _fmt((dv.get("real") or {}).get("mean")) + "  synthetic " + _fmt((dv.get("synthetic") or {}).get("mean")),
        f"memorised (pixels) {_fmt((mem.get('pixel') or {}).get('fraction_flagged'))}  (features) "
        f"{_fmt((mem.get('feature') or {}).get('fraction_flagged'))}",
        f"adherence Dice {_fmt(ad.get('mean_dice'))}  plausibility {_fmt((pl.get('synthetic') or {}).get('valid_column_fraction'))}",
    ]
    width = max([sum(t.width for t, _ in tiles) + pad * (len(tiles) + 1) for _, tiles in rows] + [720])
    legend = Image.fromarray(label_legend(table.names, width=width - 2 * pad)) if synthetic.labels is not None else None
    height = (sum(text_h + tile_height + text_h + pad for _ in rows) + len(lines) * text_h + 2 * pad
              + (legend.height + pad if legend is not None else 0))
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = pad
    for title, tiles in rows:
        draw.text((pad, y), title, fill=(0, 0, 0))
        y += text_h
        x = pad
        for im, cap in tiles:
            canvas.paste(im, (x, y))
            draw.text((x, y + tile_height + 2), cap[:40], fill=(60, 60, 60))
            x += im.width + pad
        y += tile_height + text_h + pad
    for line in lines:
        draw.text((pad, y), line, fill=(0, 0, 120))
        y += text_h
    if legend is not None:
        canvas.paste(legend, (pad, y + pad))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def evaluate_synthesis(real: Any, synthetic: Any, output_dir: str | os.PathLike | None = None,
                       reference: Any = None, real_key: str | Sequence[str] | None = None,
                       synthetic_key: str | Sequence[str] | None = None, reference_key: str | Sequence[str] | None = None,
                       image_size: Sequence[int] | None = (256, 256),
                       extractor: str | os.PathLike | nn.Module | Callable | None = "tf_inception",
                       extractor_layer: str | None = None,
                       teacher: str | os.PathLike | Callable | None = None, teacher_network: str = "unet",
                       teacher_image_size: Sequence[int] | None = None, table: str | LabelTable = DUKE_DME,
                       max_images: int | None = None, max_pairs: int = 500, repeats: int = 3, kid_subsets: int = 100,
                       batch_size: int = 8, device: str = "cpu", seed: int = 0, figure: bool = True) -> dict[str, Any]:
    """Compare a synthetic dataset with the real training set; write ``report.json`` and ``report.png``.

    Args:
        real: the real *training* set (datalist JSON, image folder or items): Fréchet reference and the
            images memorisation searches.
        synthetic: the synthetic set; its labels (if any) are the conditioning masks.
        output_dir: where to write; None: write nothing, only return the report.
        reference: optional second real set (e.g. validation) for the real-vs-real floor; default: a held-out
            part of ``real``.
        real_key, synthetic_key, reference_key: datalist list names (first present wins).
        image_size: common ``(H, W)`` for all images (None: the files' own, which must agree).
        extractor: ``"tf_inception"``, ``"none"``, a TorchScript path, a module or a callable (see
            :func:`monai_oct.metrics.fid.get_extractor`).
        extractor_layer: layer of a module extractor to pool features from.
        teacher: segmenter for mask adherence: a state-dict checkpoint path (built as ``teacher_network``) or
            a callable ``(B, 1, H, W) -> (B, C, H, W)``; None: adherence skipped.
        teacher_network: network name of a checkpoint teacher.
        teacher_image_size: the teacher's training input size (images are resized to it and back).
        table: label table (name or object).
        max_images: use at most this many images per set (seeded choice); None: all.
        max_pairs: pairs per set for MS-SSIM.
        repeats: random draws of the matched-size Fréchet floor.
        kid_subsets: KID subsets.
        batch_size: batch size of the networks.
        device: where the networks run.
        seed: seed of every random choice (same seed, same report).
        figure: write ``report.png``.

    Returns:
        the report dict (also written to ``output_dir/report.json``).

    Raises:
        DataError: for unreadable or inconsistent data (naming the file).
        ExtractorUnavailable: when the requested extractor cannot be built.
    """
    t0 = time.time()
    table = get_label_table(table)
    torch.manual_seed(seed)
    real_set = load_image_set(real, real_key, image_size, True, max_images, table, seed)
    synth_set = load_image_set(synthetic, synthetic_key, image_size, True, max_images, table, seed + 1)
    ref_set = None if reference is None else load_image_set(reference, reference_key, image_size, False, max_images,
                                                           table, seed + 2)
    if real_set.images.shape[-2:] != synth_set.images.shape[-2:]:
        raise ValueError(f"real images are {tuple(real_set.images.shape[-2:])} and synthetic ones "
                         f"{tuple(synth_set.images.shape[-2:])}: give image_size to compare them")
    report: dict[str, Any] = {
        "real": {"source": real_set.source, "num_images": len(real_set), "labelled": real_set.labels is not None},
        "synthetic": {"source": synth_set.source, "num_images": len(synth_set), "labelled": synth_set.labels is not None},
        "reference": None if ref_set is None else {"source": ref_set.source, "num_images": len(ref_set)},
        "image_size": list(real_set.images.shape[-2:]),
        "seed": seed,
    }

    ext = get_extractor(extractor, layer=extractor_layer) if extractor_layer else get_extractor(extractor)
    feats_r = feats_s = None
    if ext is not None:
        feats_r = extract_features(ext, real_set.images, batch_size, device)
        feats_s = extract_features(ext, synth_set.images, batch_size, device)
        feats_q = None if ref_set is None else extract_features(ext, ref_set.images, batch_size, device)
        fr = frechet_summary(feats_r, feats_s, feats_q, repeats=repeats, kid_subsets=kid_subsets, seed=seed)
        fr["extractor"] = getattr(ext, "name", type(ext).__name__)
        if getattr(ext, "weights", None):
            fr["extractor_weights"] = ext.weights
        fr["note"] = ("With tens of images the Fréchet distance is mostly bias: compare fd_matched with fd_floor "
                      "(real vs real at the same sample sizes), not fd with published values.")
        report["frechet"] = fr
    else:
        report["frechet"] = None

    report["diversity"] = diversity_report({"real": real_set.images, "synthetic": synth_set.images},
                                           max_pairs=max_pairs, seed=seed)
    report["memorisation"] = memorisation_report(synth_set.images, real_set.images, feats_s, feats_r,
                                                 synthetic_names=synth_set.names, train_names=real_set.names)

    if teacher is not None and synth_set.labels is not None:
        tch = teacher if callable(teacher) else load_teacher(teacher, teacher_network, table.num_classes,
                                                             image_size=teacher_image_size, device=device)
        report["adherence"] = adherence_report(synth_set.images, synth_set.labels, tch, table, batch_size,
                                               names=synth_set.names)
        report["adherence"]["teacher"] = str(teacher) if not callable(teacher) else type(teacher).__name__
    else:
        report["adherence"] = None
        report["adherence_note"] = ("skipped: no teacher given" if teacher is None
                                    else "skipped: the synthetic set has no labels")

    report["plausibility"] = {
        name: plausibility_report(s.labels, table, names=s.names) if s.labels is not None else None
        for name, s in (("real", real_set), ("synthetic", synth_set))
    }
    report["lpips"] = None
    report["lpips_note"] = LPIPS_NOTE
    report["seconds"] = round(time.time() - t0, 1)
    if output_dir is not None:
        path = write_report(report, output_dir)
        report["report_path"] = str(path)
        if figure:
            report["figure_path"] = str(quality_figure(real_set, synth_set, report, Path(output_dir) / "report.png",
                                                         table=table))
            write_report(report, output_dir)
    return report
