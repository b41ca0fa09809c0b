"""Synthesis of an annotated dataset: label maps (mask DDPM + DMC, or a datalist) -> conditioned images.

:class:`SamplerEngine` is an Ignite engine whose iterations are batches of sample indices. For index
``i`` it seeds one generator with ``seed + i``; the label source draws the label map with it (the mask
DDPM's noise, then DMC), the image sampler continues drawing from it for the image, and the pair is
written at once by :class:`PairWriter` (label PNG of class ids, then image PNG, each atomically). Indices
whose pair exists are skipped, so a killed synthesis started again writes only what is missing and ends
with exactly N pairs, each identical to what an uninterrupted run writes. At the end it writes
``datalist.json``, ``manifest.json`` and ``grid.png``.

A label source may also bring the image condition itself: :class:`SketchSource` (Wu et al.) returns
``{"label", "cond", "extras"}`` (the sketch-derived label map, the sketch, and the sketch again to be written
to ``sketches/``), and the engine then conditions on ``cond`` instead of encoding the label map.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from monai_oct.core.datalist import write_datalist
from monai_oct.core.io import read_image, read_label, write_json, write_png
from monai_oct.core.seeding import sample_generators
from monai_oct.core.visualise import pair_grid
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.engines.writer import PairWriter
from monai_oct.networks.diffusion import check_image_size
from monai_oct.transforms.encoding import encode_mask

__all__ = ["SamplerEngine"]

logger = logging.getLogger(__name__)


class SamplerEngine(Engine):
    """Generate N (label, image) pairs in batches and write each pair as soon as it exists.

    Args:
        num_samples: N.
        label_source: ``(indices, generators, device) -> (B, 1, H, W)`` ids (:class:`MaskSampler`, :class:`LabelBank`).
        image_network: the mask-conditioned image UNet (stage 3).
        image_sampler: its sampler.
        image_size: ``[H, W]`` generated.
        num_classes: C.
        encoding: condition encoding of the image UNet (``"onehot"`` or ``"scalar"``).
        writer: the :class:`PairWriter`.
        batch_size: samples per iteration.
        seed: sample ``i`` uses the generator seeded ``seed + i`` (label, then image).
        device: where to sample.
        progress: show a progress bar.
        manifest: extra entries for ``manifest.json`` (checkpoints, resolved config, ...).
        grid_size: pairs shown in ``grid.png``.
    """

    def __init__(self, num_samples: int, label_source: Callable, image_network: nn.Module, image_sampler: DiffusionSampler,
                 image_size: Sequence[int], num_classes: int, writer: PairWriter, encoding: str = "onehot",
                 batch_size: int = 8, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                 manifest: Mapping[str, Any] | None = None, grid_size: int = 16) -> None:
        super().__init__(self._iteration)
        if int(num_samples) < 1 or int(batch_size) < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.label_source, self.image_network, self.image_sampler = label_source, image_network.eval(), image_sampler
        self.image_size = [int(s) for s in image_size]
        check_image_size(image_network, self.image_size)
        self.num_classes, self.encoding, self.writer = int(num_classes), encoding, writer
        self.device = torch.device(device)
        self.extra_manifest = dict(manifest or {})
        self.grid_size = int(grid_size)
        self.skipped = 0
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=True, desc="synthesis").attach(self)
        self.add_event_handler(Events.COMPLETED, lambda _: self.finalize())

    def pending(self) -> list[list[int]]:
        """Batches of the indices still to write (removes stale temporary files first)."""
        self.writer.clean()
        todo = [i for i in range(self.num_samples) if not self.writer.done(i)]
        self.skipped = self.num_samples - len(todo)
        return [todo[k: k + self.batch_size] for k in range(0, len(todo), self.batch_size)]

    def _iteration(self, engine: Engine, indices: Sequence[int]) -> dict:
        gens = sample_generators([self.seed + i for i in indices], self.device)
        out = self.label_source(indices, gens, self.device)
        if isinstance(out, Mapping):  # the source brings its own condition (sketches)
            labels, cond, extras = out["label"], out["cond"].to(self.device), out.get("extras")
        else:
            labels, cond, extras = out, encode_mask(out, self.num_classes, self.encoding), None
        images = self.image_sampler(self.image_network, gens, (1, *self.image_size), cond, self.device)
        self.writer.write(indices, images, labels, extras)
        return {"indices": list(indices)}

    def run_all(self) -> Path:
        """Write every missing pair, then the datalist, manifest and grid; returns ``datalist.json``."""
        batches = self.pending()
        if self.skipped:
            logger.info("synthesis: %d of %d pairs already in %s; writing the other %d", self.skipped, self.num_samples,
                        self.writer.output_dir, self.num_samples - self.skipped)
        self._t0 = time.time()
        if batches:
            self.run(batches, max_epochs=1)
        else:
            self.finalize()
        return self.writer.output_dir / "datalist.json"

    def finalize(self) -> None:
        """Write ``datalist.json`` ({"training": [...]}), ``manifest.json`` and ``grid.png`` for the N pairs.

        Raises:
            RuntimeError: when a pair is missing (names it).
        """
        out = self.writer.output_dir
        missing = [self.writer.name(i) for i in range(self.num_samples) if not self.writer.done(i)]
        if missing:
            raise RuntimeError(f"{out}: {len(missing)} pair(s) missing after synthesis, e.g. {missing[0]}")
        pairs = [self.writer.paths(i) for i in range(self.num_samples)]
        write_datalist(out / "datalist.json", [{"image": str(im), "label": str(lab)} for im, lab in pairs], key="training")
        manifest = {
            "num_samples": self.num_samples,
            "seeds": {self.writer.name(i): self.seed + i for i in range(self.num_samples)},
            "seed": self.seed,
            "sampler": type(self.image_sampler.scheduler).__name__,
            "num_inference_steps": self.image_sampler.num_inference_steps,
            "guidance_scale": self.image_sampler.guidance_scale,
            "prediction_type": self.image_sampler.prediction_type,
            "image_size": self.image_size,
            "output_size": self.writer.output_size,
            "encoding": self.encoding,
            "files": [f"{sub}/{self.writer.name(i)}" for i in range(self.num_samples) for sub in ("images", "labels")]
            + [f"{d}/{self.writer.name(i)}" for d in self.writer.extra_dirs for i in range(self.num_samples)],
            "seconds": round(time.time() - getattr(self, "_t0", time.time()), 3),
            **self.extra_manifest,
        }
        ckpts = manifest.get("checkpoints")
        if isinstance(ckpts, Mapping):
            manifest["checkpoint_sha256"] = {k: _sha256(v) for k, v in ckpts.items() if v and Path(str(v)).is_file()}
        write_json(out / "manifest.json", manifest)
        k = min(self.grid_size, self.num_samples)
        imgs = torch.stack([torch.as_tensor(read_image(self.writer.paths(i)[0]), dtype=torch.float32)[None] for i in range(k)])
        labs = torch.stack([torch.as_tensor(read_label(self.writer.paths(i)[1]).astype(np.int64))[None] for i in range(k)])
        write_png(out / "grid.png", pair_grid(imgs / 127.5 - 1.0, labs, self.num_classes))
        logger.info("synthetic dataset: %d pairs in %s (datalist %s, grid %s)", self.num_samples, out, out / "datalist.json",
                    out / "grid.png")


def _sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the checkpoints a synthetic set was made from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
