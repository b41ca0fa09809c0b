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

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.transforms import Compose, Resized
from torch import nn

if TYPE_CHECKING:
    from monai_oct.data.sketches import RandomSketchDataset

from monai_oct.data.datalist import DataError, read_image, read_label, write_datalist, write_png
from monai_oct.data.labels import LabelTable
from monai_oct.data.mixing import read_datalists, concat_sources
from monai_oct.engines.sampler import DiffusionSampler, sample_generators
from monai_oct.networks.diffusion import check_image_size
from monai_oct.handlers.samples import image_to_uint8, pair_grid
from monai_oct.transforms.band import RetinaBandCropd
from monai_oct.transforms.dmc import DiscreteMaskClustering
from monai_oct.transforms.encoding import encode_mask
from monai_oct.transforms.io import LoadBScand

__all__ = ["PairWriter", "MaskSampler", "LabelBank", "SamplerEngine", "build_label_source", "SketchSource", "sketch_source"]


def _resize(x: torch.Tensor, size: Sequence[int] | None, label: bool, nearest: bool = False) -> torch.Tensor:
    """Resize ``(B, C, H, W)``: labels by nearest neighbour, images by area (shrinking) or bilinear (growing)
    (``nearest``: images by nearest neighbour too, e.g. sketches, whose three levels must stay three)."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    size = tuple(int(s) for s in size)
    if label:
        return F.interpolate(x.float(), size=size, mode="nearest-exact").long()
    if nearest:
        return F.interpolate(x.float(), size=size, mode="nearest-exact")
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PairWriter:
    """Write (image, label) pairs as ``images/<name>.png`` (8-bit grey) and ``labels/<name>.png`` (class ids).

    A pair is complete when both files exist; each is written to a temporary file and renamed, the label
    first, so an interrupted write leaves at most a label without its image (redone on resume).

    Extra per-sample images (``extra_dirs``, e.g. ``("sketches",)``: the sketch each image was drawn from) are
    written before the label, as 8-bit PNGs of their [-1, 1] values (nearest resize), so a pair whose image
    exists has all its files.

    Args:
        output_dir: dataset folder.
        output_size: ``[H, W]`` to resize what is written to (None: the generated size).
        prefix: file name prefix; names are ``<prefix><index:05d>.png``.
        extra_dirs: sub-folders of extra images written with each pair.
    """

    def __init__(self, output_dir: str | os.PathLike, output_size: Sequence[int] | None = None, prefix: str = "synth_",
                 extra_dirs: Sequence[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.output_size = None if output_size is None else [int(s) for s in output_size]
        self.prefix = prefix
        self.extra_dirs = tuple(str(d) for d in extra_dirs or ())
        bad = [d for d in self.extra_dirs if d in ("images", "labels") or not d or "/" in d]
        if bad:
            raise ValueError(f"extra_dirs must be plain folder names other than images/labels, got {bad}")

    def name(self, index: int) -> str:
        """File name of sample ``index``."""
        return f"{self.prefix}{int(index):05d}.png"

    def paths(self, index: int) -> tuple[Path, Path]:
        """``(image path, label path)`` of sample ``index``."""
        n = self.name(index)
        return self.output_dir / "images" / n, self.output_dir / "labels" / n

    def extra_path(self, sub: str, index: int) -> Path:
        """Path of sample ``index``'s extra image in ``sub``."""
        return self.output_dir / sub / self.name(index)

    def done(self, index: int) -> bool:
        """Whether every file of sample ``index`` exists."""
        return all(p.is_file() for p in self.paths(index)) and all(self.extra_path(d, index).is_file() for d in self.extra_dirs)

    def clean(self) -> int:
        """Remove temporary files a killed run left behind; returns how many."""
        n = 0
        for sub in ("images", "labels", *self.extra_dirs):
            for p in (self.output_dir / sub).glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def write(self, indices: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
              extras: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write a batch: ``images (B, 1, H, W)`` in [-1, 1], ``labels (B, 1, H, W)`` class ids, and
        ``extras`` (``{folder: (B, 1, H, W) in [-1, 1]}``, one entry per ``extra_dirs``).

        Raises:
            ValueError: when ``extras`` does not match ``extra_dirs``.
        """
        extras = dict(extras or {})
        if set(extras) != set(self.extra_dirs):
            raise ValueError(f"extra images {sorted(extras)} do not match the writer's extra_dirs {list(self.extra_dirs)}")
        images = _resize(images.float().cpu(), self.output_size, label=False)
        labels = _resize(labels.cpu(), self.output_size, label=True)
        img_u8 = image_to_uint8(images[:, 0])
        lab_u8 = labels[:, 0].numpy().astype(np.uint8)
        ext_u8 = {d: image_to_uint8(_resize(x.float().cpu(), self.output_size, label=False, nearest=True)[:, 0])
                  for d, x in extras.items()}
        for k, i in enumerate(indices):
            for d, x in ext_u8.items():
                write_png(self.extra_path(d, i), x[k])
            img_path, lab_path = self.paths(i)
            write_png(lab_path, lab_u8[k])
            write_png(img_path, img_u8[k])


class MaskSampler:
    """Label maps from the stage-2 mask DDPM: sample a scalar-encoded map, then DMC to class ids.

    Args:
        network: the unconditional mask DDPM (1 channel in and out).
        sampler: its sampler.
        image_size: ``[H, W]`` of the maps.
        num_classes: C.
        dmc: the decoder (default ``DiscreteMaskClustering(num_classes)``).
    """

    def __init__(self, network: nn.Module, sampler: DiffusionSampler, image_size: Sequence[int], num_classes: int,
                 dmc: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.network, self.sampler = network.eval(), sampler
        self.shape = (1, int(image_size[0]), int(image_size[1]))
        check_image_size(network, self.shape)
        self.dmc = dmc if dmc is not None else DiscreteMaskClustering(num_classes)

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
        """``(B, 1, H, W)`` int64 ids for ``indices``, drawing from their ``generators``."""
        values = self.sampler(self.network, generators, self.shape, None, device)
        return self.dmc(values).to(device)


class LabelBank:
    """Label maps from a datalist (RetiDiff's R/S 0/66 setting): sample ``i`` uses map ``i % L``.

    Args:
        labels: ``(L, 1, H, W)`` class ids.
        names: the source file of each map (for the manifest).
    """

    def __init__(self, labels: torch.Tensor, names: Sequence[str] | None = None) -> None:
        if labels.ndim != 4 or labels.shape[1] != 1 or labels.shape[0] == 0:
            raise ValueError(f"labels must have shape (L, 1, H, W) with L >= 1, got {tuple(labels.shape)}")
        self.labels = labels.long()
        self.names = list(names) if names is not None else [str(i) for i in range(labels.shape[0])]

    @classmethod
    def from_datalist(cls, datalist: str | os.PathLike | Sequence[str], image_size: Sequence[int], dataset_dir: str | None = None,
                      key: str | Sequence[str] | None = ("train", "training"), band_height: int | None = None,
                      flip: bool = False, table: LabelTable | str | None = "duke_dme") -> "LabelBank":
        """Load every ``label`` of a datalist: band crop around the retina (from the label), nearest resize.

        Args:
            datalist: path(s) of datalists (relative ones start at ``dataset_dir``).
            image_size: ``[H, W]`` of the maps.
            dataset_dir: folder relative datalist paths start from.
            key: list name(s) to read.
            band_height: retina band rows (None/0: whole B-scan).
            flip: also add the left-right mirror of every map (after the originals).
            table: label table the ids are checked against.

        Raises:
            DataError: a missing datalist or label file, or an item without ``label``.
        """
        items = concat_sources(read_datalists(datalist, key=list(key) if isinstance(key, (list, tuple)) else key, dataset_dir=dataset_dir))
        missing = [it["image"] for it in items if "label" not in it]
        if missing:
            raise DataError(f"{datalist}: {len(missing)} item(s) without 'label', e.g. {missing[0]}")
        t = [LoadBScand(["label"], label_keys=["label"], table=table)]
        if band_height:
            t.append(RetinaBandCropd(["label"], band_height=int(band_height), label_key="label"))
        t.append(Resized(["label"], spatial_size=[int(s) for s in image_size], mode="nearest"))
        chain = Compose(t)
        maps = torch.stack([torch.as_tensor(chain({"label": it["label"]})["label"]).long() for it in items])
        names = [it["label"] for it in items]
        if flip:
            maps = torch.cat([maps, torch.flip(maps, dims=[-1])])
            names = names + [f"{n} (mirrored)" for n in names]
        return cls(maps, names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
        """``(B, 1, H, W)`` ids of maps ``i % L`` (the generators are not used)."""
        return self.labels[[int(i) % len(self) for i in indices]].to(device)


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
            print(f"synthesis: {self.skipped} of {self.num_samples} pairs already in {self.writer.output_dir}; "
                  f"writing the other {self.num_samples - self.skipped}", flush=True)
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
        _write_json(out / "manifest.json", manifest)
        k = min(self.grid_size, self.num_samples)
        imgs = torch.stack([torch.as_tensor(read_image(self.writer.paths(i)[0]), dtype=torch.float32)[None] for i in range(k)])
        labs = torch.stack([torch.as_tensor(read_label(self.writer.paths(i)[1]).astype(np.int64))[None] for i in range(k)])
        write_png(out / "grid.png", pair_grid(imgs / 127.5 - 1.0, labs, self.num_classes))
        print(f"synthetic dataset: {self.num_samples} pairs in {out} (datalist {out / 'datalist.json'}, grid {out / 'grid.png'})", flush=True)


def _sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def build_label_source(image_size: Sequence[int], num_classes: int, label_datalist: str | Sequence[str] | None = None,
                       mask_ckpt: str | os.PathLike | None = None, mask_network: nn.Module | None = None,
                       mask_sampler: DiffusionSampler | None = None, dataset_dir: str | None = None,
                       band_height: int | None = None, label_flip: bool = False, dmc_smooth: int = 0,
                       table: LabelTable | str | None = "duke_dme", device: str | torch.device = "cpu") -> Callable:
    """The label maps of a synthesis: from ``label_datalist`` when given, else sampled from the stage-2 model.

    Args:
        image_size: ``[H, W]``.
        num_classes: C.
        label_datalist: datalist(s) whose labels condition the images (RetiDiff R/S 0/N).
        mask_ckpt: stage-2 ``model.pt`` (used when no ``label_datalist``).
        mask_network: the (untrained) mask UNet the checkpoint is loaded into.
        mask_sampler: its sampler.
        dataset_dir: folder relative datalist paths start from.
        band_height: retina band rows for datalist labels (None/0: whole B-scan).
        label_flip: also use the mirrored datalist labels.
        dmc_smooth: median window of DMC (0: none).
        table: label table for datalist labels.
        device: where the mask UNet runs.

    Returns:
        a :class:`LabelBank` or :class:`MaskSampler`.

    Raises:
        ValueError: when neither a datalist nor a mask checkpoint (with network and sampler) is given.
    """
    if label_datalist:
        return LabelBank.from_datalist(label_datalist, image_size, dataset_dir=dataset_dir, band_height=band_height,
                                       flip=bool(label_flip), table=table)
    if not mask_ckpt or mask_network is None or mask_sampler is None:
        raise ValueError("synthesis needs label maps: give --mask_ckpt (stage 2 model.pt) or --label_datalist")
    from monai_oct.networks.checkpoint import load_weights

    net = load_weights(mask_network, mask_ckpt).to(device)
    return MaskSampler(net, mask_sampler, image_size, num_classes, DiscreteMaskClustering(num_classes, smooth=int(dmc_smooth)))


class SketchSource:
    """Random layer sketches as the condition of a sketch-conditioned image DDPM (Wu et al.).

    Sample ``i`` is item ``i`` of a :class:`~monai_oct.data.sketches.RandomSketchDataset` (seeded ``(seed, i)``,
    independent of the batch it falls in), so a resumed synthesis redraws exactly the same sketches.

    Args:
        dataset: the random sketches (``{"sketch", "label"}`` items at the image size).
        write_sketches: also return the sketches as ``extras["sketches"]`` for :class:`PairWriter`.

    Raises:
        ValueError: when the dataset's size is not ``(H, W)``.
    """

    def __init__(self, dataset: "RandomSketchDataset", write_sketches: bool = True) -> None:
        if len(getattr(dataset, "size", ())) != 2:
            raise ValueError("SketchSource needs a RandomSketchDataset with a (H, W) size")
        self.dataset, self.write_sketches = dataset, bool(write_sketches)

    def __len__(self) -> int:
        return len(self.dataset)

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"label": (B, 1, H, W) ids, "cond": (B, 1, H, W) sketches, "extras": {"sketches": ...}}`` (generators unused)."""
        items = [self.dataset[int(i) % len(self.dataset)] for i in indices]
        sketches = torch.stack([it["sketch"] for it in items]).float()
        out = {"label": torch.stack([it["label"] for it in items]).long().to(device), "cond": sketches.to(device)}
        if self.write_sketches:
            out["extras"] = {"sketches": sketches}
        return out


def sketch_source(num_samples: int, image_size: Sequence[int], stats: str | os.PathLike | None = None,
                  band_height: int | None = None, seed: int = 0, table: LabelTable | str = "duke_dme",
                  **sketch_kwargs: Any) -> SketchSource:
    """The :class:`SketchSource` of a sketch synthesis, its renderer set like training's without the augmentation.

    Args:
        num_samples: N.
        image_size: ``[H, W]`` of the sketches (the image DDPM's size).
        stats: a JSON of :class:`~monai_oct.data.sketches.LayerThicknessStats` fitted at the training geometry
            (``monai-oct sketch-stats DATALIST --band-height B --size H W``); None: the built-in Duke statistics
            for ``band_height`` (full frame or the 224-row band).
        band_height: the training band height (only to pick the built-in statistics).
        seed: sketch ``i`` is drawn with seed ``(seed, i)``.
        table: label table.
        sketch_kwargs: :class:`~monai_oct.transforms.sketch.LayerSketch` arguments of training (``line_width``,
            ``fluid_styles``, ...); deformation, jitter and dropped boundaries are switched off and fluid is
            always drawn, whatever is given.

    Raises:
        ValueError: for statistics of another table, or no built-in statistics for ``band_height``.
    """
    from monai_oct.data.sketches import LayerThicknessStats, RandomSketchDataset
    from monai_oct.transforms.sketch import LayerSketch

    st = LayerThicknessStats.load(stats) if stats else LayerThicknessStats.duke_defaults(band_height)
    kw = dict(sketch_kwargs, deform=0.0, jitter=0.0, drop_prob=0.0, fluid_prob=1.0)
    sketcher = LayerSketch(table, **kw)
    return SketchSource(RandomSketchDataset(num_samples, st, image_size, seed=seed, sketcher=sketcher))
