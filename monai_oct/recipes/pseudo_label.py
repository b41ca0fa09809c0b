"""Knowledge adaptation (Wu et al., ISBI 2024): a teacher segmenter relabels a synthetic dataset.

A synthetic B-scan generated from a label map (its *condition*) does not follow that map exactly
("misregistration"). A teacher network trained on real scans predicts a label map for every synthetic
image; the distilled labels replace the condition. Optionally, where the teacher is unsure (max softmax
probability below ``keep_condition_below``) the condition label is kept.

Output layout (like the input): ``output_dir/images/<name>`` (copies), ``output_dir/labels/<stem>.png``,
``output_dir/datalist.json`` (``{"train": [{"image", "label", "condition"}]}``) and
``output_dir/pseudo_label_stats.json``. Labels already written are skipped on a re-run (a killed run
resumes), unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from monai_oct.core.datalist import write_datalist
from monai_oct.core.io import DataError, atomic_path, read_label, write_json, write_png
from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable
from monai_oct.recipes.seg_pipelines import seg_eval_transforms
from monai_oct.transforms.restore import RestoreBScan

__all__ = ["PseudoLabeller"]


class PseudoLabeller:
    """Relabel a (synthetic) dataset with a teacher network.

    Args:
        network: the teacher (weights loaded), mapping ``(B, 1, h, w)`` to ``(B, C, h, w)`` logits.
        output_dir: where the new dataset goes.
        image_size: ``[h, w]`` the teacher was trained at.
        band_height: retina band rows the teacher was trained on (None: whole images resized).
        band_from_label: locate the band from the condition label (allowed: synthetic data); False: from the image.
        keep_condition_below: keep the condition label where the teacher's max softmax probability is
            below this value (None or 0: always use the teacher).
        table: label table (ids, fill classes: ``background[0]`` above the band, ``background[-1]`` below).
        device: where the teacher runs.
        amp: bf16/fp16 autocast on CUDA.
        overwrite: recompute labels that already exist.
        key: list name of the written datalist.

    Raises:
        ValueError: for a threshold outside [0, 1].
    """

    def __init__(self, network: nn.Module, output_dir: str | os.PathLike, image_size: Sequence[int] | None,
                 band_height: int | None = None, band_from_label: bool = True, keep_condition_below: float | None = None,
                 table: LabelTable = DUKE_DME, device: str | torch.device = "cpu", amp: bool = False,
                 overwrite: bool = False, key: str = "train") -> None:
        thr = float(keep_condition_below or 0.0)
        if not 0.0 <= thr <= 1.0:
            raise ValueError(f"keep_condition_below must lie in [0, 1], got {keep_condition_below}")
        self.network, self.output_dir = network, Path(output_dir)
        self.image_size, self.band_height = image_size, (int(band_height) if band_height else None)
        self.band_from_label, self.threshold = bool(band_from_label), thr
        self.table, self.device, self.amp = table, torch.device(device), bool(amp)
        self.overwrite, self.key = bool(overwrite), key
        above, below = (table.background[0], table.background[-1]) if table.background else (0, 0)
        self.restore = RestoreBScan(self.band_height, fill_above=above, fill_below=below)

    @torch.no_grad()
    def predict(self, item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Teacher label map and confidence (max softmax probability), both at the image's original size."""
        has_label = "label" in item
        tf = seg_eval_transforms(self.image_size, self.band_height, with_label=has_label,
                                 band_from_label=self.band_from_label and has_label)
        d = tf(dict(item))
        x = d["image"][None].to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp and self.device.type == "cuda"):
            logits = self.network(x)
        prob = torch.softmax(logits.float(), dim=1)[0].cpu()
        prob = self.restore(prob, d["original_shape"], d.get("band_offset"))
        conf, pred = prob.max(dim=0)
        return pred.numpy().astype(np.uint8), conf.numpy()

    def __call__(self, items: Sequence[dict[str, Any]]) -> Path:
        """Relabel ``items`` (absolute ``image`` and optional ``label`` = condition paths); returns the datalist path.

        Raises:
            DataError: for an unreadable image or label (naming the file) or duplicate output names.
        """
        if not items:
            raise DataError("pseudo-labelling: the datalist is empty")
        names = [Path(it["image"]).name for it in items]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DataError(f"pseudo-labelling: several images share the names {sorted(dup)[:5]}; outputs would collide")
        was_training = self.network.training
        self.network.eval().to(self.device)
        out_items, stats = [], []
        try:
            for it, name in zip(items, names):
                img_out = self.output_dir / "images" / name
                lab_out = self.output_dir / "labels" / f"{Path(name).stem}.png"
                entry = {"image": str(img_out), "label": str(lab_out)}
                if "label" in it:
                    entry["condition"] = str(it["label"])
                out_items.append(entry)
                if lab_out.is_file() and img_out.is_file() and not self.overwrite:
                    continue
                pred, conf = self.predict(it)
                s = {"image": name, "mean_confidence": float(conf.mean())}
                if "label" in it:
                    cond = read_label(it["label"], self.table)
                    if cond.shape != pred.shape:
                        raise DataError(f"{it['label']}: condition size {cond.shape} differs from image size {pred.shape}")
                    annotated = cond != UNANNOTATED
                    s["changed_vs_condition"] = float((pred[annotated] != cond[annotated]).mean()) if annotated.any() else 0.0
                    if self.threshold > 0:
                        keep = (conf < self.threshold) & annotated
                        pred = np.where(keep, cond, pred).astype(np.uint8)
                        s["kept_condition"] = float(keep.mean())
                with atomic_path(img_out) as tmp:
                    shutil.copyfile(it["image"], tmp)
                write_png(lab_out, pred)  # label last: its presence marks the item done
                stats.append(s)
        finally:
            self.network.train(was_training)
        dl = self.output_dir / "datalist.json"
        write_datalist(dl, out_items, root=self.output_dir, key=self.key)
        self._write_stats(stats)
        return dl

    def _write_stats(self, stats: list[dict[str, Any]]) -> None:
        path = self.output_dir / "pseudo_label_stats.json"
        old = []
        if path.is_file():
            try:
                old = json.loads(path.read_text()).get("images", [])
            except (OSError, json.JSONDecodeError):
                old = []
        done = {s["image"] for s in stats}
        rows = [s for s in old if s.get("image") not in done] + stats

        def mean(k):
            v = [s[k] for s in rows if k in s]
            return float(np.mean(v)) if v else None

        summary = {"num_images": len(rows), "threshold": self.threshold, "mean_confidence": mean("mean_confidence"),
                   "changed_vs_condition": mean("changed_vs_condition"), "kept_condition": mean("kept_condition"),
                   "images": rows}
        write_json(path, summary)
