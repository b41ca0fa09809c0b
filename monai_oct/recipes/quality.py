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
``bands``            band count and the FD's band triplets                C > 1 bands
``spectral``         \|MS-SSIM(synthetic) - MS-SSIM(validation)\|,        C > 1 bands or structure masks
                     spectral KL per structure with its floor             (KL: ``structure_key`` masks)
===================  =================================================  ===========================

Images keep their channels (``channels=None``): grey B-scans (1), RGB fundus photographs (3), ``.npy`` multi-band
images (C). One channel is the grey report, unchanged. With C > 1 the Fréchet section is
:func:`~monai_oct.metrics.fid.triplet_frechet_summary`: the extractor sees the bands in triplets, each with its FD,
KID and real-vs-real floor (``per_triplet``), and ``fd``, ``fd_floor``, ... are the means over the triplets;
MS-SSIM and the pixel memorisation use all C bands, the feature memorisation the triplets' features side by side.

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

from monai_oct.core.io import DataError, atomic_path, write_json
from monai_oct.core.labels import DUKE_DME, LabelTable, get_label_table
from monai_oct.core.visualise import image_to_uint8, label_legend, label_overlay
from monai_oct.metrics.adherence import adherence_report, load_teacher
from monai_oct.metrics.diversity import diversity_report
from monai_oct.metrics.fid import (
    band_triplets,
    extract_features,
    extract_triplet_features,
    frechet_summary,
    get_extractor,
    triplet_frechet_summary,
)
from monai_oct.metrics.memorisation import memorisation_report
from monai_oct.metrics.plausibility import plausibility_report
from monai_oct.metrics.spectral import ms_ssim_gap, spectral_kl, spectral_kl_floor
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
    """A picture of one image: grey, RGB, or C > 3 bands in false colour (last, middle, first band as R, G, B)."""
    from PIL import Image

    c = img.shape[0]
    a = image_to_uint8(img[0] if c < 3 else img[[c - 1, c // 2, 0] if c > 3 else [0, 1, 2]].permute(1, 2, 0))
    if label is not None:
        rgb = label_overlay(a, label[0].numpy())
    else:
        rgb = a if a.ndim == 3 else np.repeat(a[..., None], 3, -1)
    im = Image.fromarray(rgb)
    w = max(1, round(im.width * h / im.height))
    return im.resize((w, h), Image.BILINEAR)


def _mean(per_structure: dict[str, float | None] | None) -> float | None:
    """Mean of a ``{structure: value or None}`` dict over its values (None when there are none)."""
    vals = [v for v in (per_structure or {}).values() if v is not None]
    return float(np.mean(vals)) if vals else None


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
    if fr.get("per_triplet"):
        lines.insert(1, "FD per band triplet: " + "  ".join(
            f"{t['bands']} {_fmt(t['fd'], 1)} (floor {_fmt(t.get('fd_floor'), 1)})" for t in fr["per_triplet"]))
    sp = report.get("spectral") or {}
    if sp:
        fl = sp.get("kl_floor") or {}
        lines.append(f"|dMS-SSIM| {_fmt(sp['ms_ssim_gap']['gap'])}  spectral KL {_fmt((sp.get('kl') or {}).get('mean'))}"
                     f"  matched {_fmt(_mean(fl.get('matched')))} vs floor {_fmt(_mean(fl.get('floor')))}")
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


def _spectral_section(real: ImageSet, synthetic: ImageSet, reference: ImageSet | None, max_pairs: int, repeats: int,
                      seed: int, bins: int) -> dict[str, Any]:
    """``|MS-SSIM(synthetic) - MS-SSIM(validation)|`` (the reference set, else the real one) and, with structure
    masks in the real and synthetic sets, the spectral KL per structure with its real-vs-real floor, on the [-1, 1]
    images (:mod:`monai_oct.metrics.spectral`)."""
    val = reference if reference is not None else real
    out: dict[str, Any] = {"ms_ssim_gap": ms_ssim_gap(synthetic.images, val.images, value_range=(-1.0, 1.0),
                                                      max_pairs=max_pairs, seed=seed),
                           "ms_ssim_gap_against": "reference" if reference is not None else "real"}
    if real.structures is None or synthetic.structures is None:
        out["kl"] = out["kl_floor"] = None
        out["kl_note"] = "skipped: no structure masks (structure_key) in " + (
            "the real set" if real.structures is None else "the synthetic set")
        return out
    kl_args = {"value_range": (-1.0, 1.0), "bins": bins}
    out["kl"] = spectral_kl(real.images, real.structures, synthetic.images, synthetic.structures, **kl_args)
    try:
        out["kl_floor"] = spectral_kl_floor(real.images, real.structures, synthetic.images, synthetic.structures,
                                            repeats=repeats, seed=seed, **kl_args)
    except ValueError as e:  # too few real images for two parts: the KL stands without its floor
        out["kl_floor"] = None
        out["kl_note"] = str(e)
    return out


def evaluate_synthesis(real: Any, synthetic: Any, output_dir: str | os.PathLike | None = None,
                       reference: Any = None, real_key: str | Sequence[str] | None = None,
                       synthetic_key: str | Sequence[str] | None = None, reference_key: str | Sequence[str] | None = None,
                       image_size: Sequence[int] | None = (256, 256),
                       extractor: str | os.PathLike | nn.Module | Callable | None = "tf_inception",
                       extractor_layer: str | None = None,
                       teacher: str | os.PathLike | Callable | None = None, teacher_network: str = "unet",
                       teacher_image_size: Sequence[int] | None = None, table: str | LabelTable = DUKE_DME,
                       max_images: int | None = None, max_pairs: int = 500, repeats: int = 3, kid_subsets: int = 100,
                       batch_size: int = 8, device: str = "cpu", seed: int = 0, figure: bool = True,
                       channels: int | None = None, structure_key: str | None = None,
                       band_range: Sequence[float] = (0.0, 1.0), kl_bins: int = 32) -> dict[str, Any]:
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
        channels: channels read from each file (:func:`~monai_oct.recipes.image_sets.read_set_image`): None (the
            files' own: grey 1, RGB 3, ``.npy`` C; the three sets must agree), 1 (grey, RGB averaged), or a number
            the files must have.
        structure_key: datalist entry of structure masks (the multi-band phantom's ``"structures"``): with masks in
            the real and synthetic sets the ``spectral`` section holds the spectral KL per structure and its
            real-vs-real floor (:mod:`monai_oct.metrics.spectral`); None: no KL.
        band_range: value range of ``.npy`` bands (mapped to [-1, 1]).
        kl_bins: histogram bins of the spectral KL.

    Returns:
        the report dict (also written to ``output_dir/report.json``).

    Raises:
        DataError: for unreadable or inconsistent data (naming the file).
        ExtractorUnavailable: when the requested extractor cannot be built.
    """
    t0 = time.time()
    table = get_label_table(table)
    torch.manual_seed(seed)
    opts = {"channels": channels, "structure_key": structure_key, "band_range": band_range}
    real_set = load_image_set(real, real_key, image_size, True, max_images, table, seed, **opts)
    synth_set = load_image_set(synthetic, synthetic_key, image_size, True, max_images, table, seed + 1, **opts)
    ref_set = None if reference is None else load_image_set(reference, reference_key, image_size, False, max_images,
                                                           table, seed + 2, **opts)
    for name, other in (("synthetic", synth_set), ("reference", ref_set)):
        if other is not None and other.num_channels != real_set.num_channels:
            raise DataError(f"{other.paths[0]}: the {name} images have {other.num_channels} band(s) but the real ones "
                            f"{real_set.num_channels} (e.g. {real_set.paths[0]}); compare sets of the same bands")
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

    bands = real_set.num_channels
    # a file or module extractor sees C > 1 bands as 3-channel triplets
    ext = get_extractor(extractor, in_channels=3 if bands > 1 else None,
                        **({"layer": extractor_layer} if extractor_layer else {}))
    feats_r = feats_s = None
    if bands > 1:
        report["bands"] = {"num_bands": bands, "triplets": [list(t) for t in band_triplets(bands)],
                           "band_range": [float(v) for v in band_range]}
    if ext is not None:
        fd_args = {"repeats": repeats, "kid_subsets": kid_subsets, "seed": seed}
        if bands == 1:
            feats_r = extract_features(ext, real_set.images, batch_size, device)
            feats_s = extract_features(ext, synth_set.images, batch_size, device)
            feats_q = None if ref_set is None else extract_features(ext, ref_set.images, batch_size, device)
            fr = frechet_summary(feats_r, feats_s, feats_q, **fd_args)
        else:
            triplets = band_triplets(bands)
            tr, ts = (extract_triplet_features(ext, x.images, triplets, batch_size, device) for x in (real_set, synth_set))
            tq = None if ref_set is None else extract_triplet_features(ext, ref_set.images, triplets, batch_size, device)
            fr = triplet_frechet_summary(tr, ts, tq, triplets=triplets, **fd_args)
            feats_r, feats_s = torch.cat(tr, 1), torch.cat(ts, 1)
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
        name: plausibility_report(s.labels, table, names=s.names) if s.labels is not None and table.layer_order else None
        for name, s in (("real", real_set), ("synthetic", synth_set))
    }
    if not table.layer_order:
        report["plausibility_note"] = f"skipped: label table {table.name!r} has no layer order (column validity is for OCT)"
    if bands > 1 or structure_key:
        report["spectral"] = _spectral_section(real_set, synth_set, ref_set, max_pairs, repeats, seed, kl_bins)
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
