"""Where the label maps (and conditions) of a synthesis come from: the mask DDPM + DMC, a datalist, or random sketches.

A *label source* is a callable ``(indices, generators, device) -> {"label": (B, 1, h, w) ids, ...}``: it may
add ``"cond"`` (a condition of its own, e.g. the sketch; otherwise the engine encodes the label map) and
``"extras"`` (images written beside each pair). :class:`~monai_oct.engines.synthesis.SamplerEngine` calls it
with the per-sample generators of the indices, so a source that draws randomness draws it per sample.
``(h, w)`` is the source's *label size* (``label_size``, default the image size), which may be finer than the
image UNet's ``image_size``: the engine conditions on the label's encoding area-averaged to ``image_size`` and
the writer writes the label at its own size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.transforms import Compose, Resized
from torch import nn

from monai_oct.core.classes import ClassTable, get_class_table
from monai_oct.core.io import read_json, write_json
from monai_oct.core.labels import LabelTable
from monai_oct.engines.diffusion import no_mask_condition
from monai_oct.engines.distributed import get_rank, get_world_size
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.networks.checkpoint import load_weights
from monai_oct.networks.diffusion import check_image_size
from monai_oct.recipes.boundaries import boundary_source
from monai_oct.recipes.items import resolve_items
from monai_oct.recipes.sketches import LayerThicknessStats, RandomSketchDataset
from monai_oct.transforms.band import RetinaBandCropd
from monai_oct.transforms.dmc import DiscreteMaskClustering
from monai_oct.transforms.encoding import condition_channels
from monai_oct.transforms.io import LoadBScand
from monai_oct.transforms.sketch import LayerSketch
from monai_oct.transforms.topology import LayerOrderDecode, merge_decoding_reports
from monai_oct.transforms.utils import check_mode
from monai_oct.transforms.vessels import VesselTreeDecode, vessel_tree_total

__all__ = ["MaskSampler", "LabelBank", "NoMaskSource", "build_label_source", "SketchSource", "sketch_source"]


class MaskSampler:
    """Label maps from the stage-2 mask DDPM: sample a map in its encoding, decode it to class ids at ``label_size``.

    RetiDiff samples a scalar-encoded map and clusters it into ids with DMC
    (:class:`~monai_oct.transforms.dmc.DiscreteMaskClustering`), pixel by pixel, so nothing keeps the layers in
    order. ``decode`` chooses what follows the sampling:

    - scalar + ``"dmc"`` (default, the paper's): values bilinearly enlarged to ``label_size`` (when larger), DMC.
    - scalar + ``"topology"``: the same, then :class:`~monai_oct.transforms.topology.LayerOrderDecode` of the ids
      (the valid map that changes fewest pixels).
    - onehot + ``"topology"`` (default): the C channels bilinearly enlarged to ``label_size`` (smooth class
      scores, so boundaries land between the sampled pixels), then ``LayerOrderDecode`` of the scores.
    - onehot + ``"argmax"``: the enlarged channels' argmax (no anatomical constraint).
    - onehot + ``"vessel_tree"`` (fundus A/V maps): :class:`~monai_oct.transforms.vessels.VesselTreeDecode`, the
      argmax with the vessel components that miss the optic disc removed and artery-vein contacts made crossings;
      its per-sample reports are kept in ``tree_reports``.

    Args:
        network: the unconditional mask DDPM (1 channel in and out for scalar, C for onehot).
        sampler: its sampler.
        image_size: ``[H, W]`` the network samples at.
        num_classes: C.
        dmc: the scalar decoder (default ``DiscreteMaskClustering(num_classes)``).
        encoding: ``"scalar"`` or ``"onehot"``, as the network was trained (``--mask_encoding``).
        label_size: ``[h, w]`` of the returned maps (None: ``image_size``); may be larger than ``image_size``.
        decode: ``"dmc"`` (scalar), ``"argmax"`` / ``"vessel_tree"`` (onehot) or ``"topology"`` (either); None: dmc / topology.
        table: label table of the topology decoding.
        min_fluid: fluid components smaller than this are given back to their layer (topology decoding).
        report_path: with ``"topology"`` or ``"vessel_tree"``, a JSON file that keeps the decoding report of every
            sample (by index, so a resumed synthesis adds to it) and their sum under ``"total"``
            (:func:`merge_decoding_reports` keys; for vessel trees
            :func:`~monai_oct.transforms.vessels.vessel_tree_total`'s); a multi-process run writes one file per
            rank (``<name>.rank<r>.json``). None: ``report`` / ``tree_reports`` only.

    Raises:
        ValueError: for an unknown encoding or decode, a decode that does not fit the encoding, a ``label_size``
            smaller than ``image_size``, or a network whose channels do not fit the encoding.
    """

    def __init__(self, network: nn.Module, sampler: DiffusionSampler, image_size: Sequence[int], num_classes: int,
                 dmc: Callable[[torch.Tensor], torch.Tensor] | None = None, encoding: str = "scalar",
                 label_size: Sequence[int] | None = None, decode: str | None = None,
                 table: LabelTable | str = "duke_dme", min_fluid: int = 16,
                 report_path: str | os.PathLike | None = None) -> None:
        self.network, self.sampler = network.eval(), sampler
        self.encoding = check_mode(encoding)
        self.num_classes = int(num_classes)
        self.shape = (condition_channels(num_classes, self.encoding), int(image_size[0]), int(image_size[1]))
        check_image_size(network, self.shape)
        if getattr(network, "out_channels", self.shape[0]) != self.shape[0]:
            raise ValueError(f"a {self.encoding} mask DDPM of {num_classes} classes has {self.shape[0]} channel(s), this network "
                             f"{network.out_channels}: give the --mask_encoding stage 2 was trained with")
        self.label_size = tuple(int(s) for s in (label_size or image_size))
        if len(self.label_size) != 2 or any(a < b for a, b in zip(self.label_size, self.shape[1:])):
            raise ValueError(f"label_size {list(self.label_size)} must be [h, w] no smaller than image_size {list(self.shape[1:])}")
        allowed = ("dmc", "topology") if self.encoding == "scalar" else ("argmax", "topology", "vessel_tree")
        self.decode = decode or allowed[0 if self.encoding == "scalar" else 1]
        if self.decode not in allowed:
            raise ValueError(f"mask_decode {self.decode!r} does not fit mask_encoding {self.encoding!r}; use one of {allowed}")
        self.dmc = dmc if dmc is not None else DiscreteMaskClustering(num_classes)
        self.topology = LayerOrderDecode(table, min_fluid) if self.decode == "topology" else None
        self.vessel_tree = VesselTreeDecode(table) if self.decode == "vessel_tree" else None
        self.tree_reports: dict[str, dict] = {}
        self.report_path = None
        self.reports: dict[str, dict] = {}
        if report_path is not None and (self.topology is not None or self.vessel_tree is not None):
            path = Path(report_path)
            self.report_path = path.with_name(f"{path.stem}.rank{get_rank()}{path.suffix}") if get_world_size() > 1 else path
            if self.report_path.is_file():
                kept = dict(read_json(self.report_path, "label decoding report").get("per_sample", {}))
                (self.reports if self.topology is not None else self.tree_reports).update(kept)

    @property
    def report(self) -> dict:
        """The summed decoding report of every sample decoded so far (zeros without topology decoding)."""
        return merge_decoding_reports(*self.reports.values())

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"label": (B, 1, *label_size) int64 ids}`` for ``indices``, drawing from their ``generators``."""
        values = self.sampler(self.network, generators, self.shape, None, device).float()
        if tuple(values.shape[-2:]) != self.label_size:
            values = F.interpolate(values, size=self.label_size, mode="bilinear", align_corners=False)
        if self.encoding == "scalar":
            labels = self.dmc(values).to(device)
        else:
            labels = values.argmax(1, keepdim=True) if self.decode == "argmax" else values
        if self.vessel_tree is not None:
            out = []
            for i, one in zip(indices, labels):
                out.append(self.vessel_tree(one.cpu()))
                self.tree_reports[str(int(i))] = self.vessel_tree.last_report
            if self.report_path is not None:
                write_json(self.report_path, {"total": vessel_tree_total(self.tree_reports.values()),
                                              "per_sample": self.tree_reports})
            return {"label": torch.stack(out).long().to(device)}
        if self.topology is None:
            return {"label": labels.long()}
        return {"label": self._decode(labels, indices).to(device)}

    def _decode(self, labels: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Topology-decode each map, keep its report by index, rewrite the report file."""
        out = []
        for i, one in zip(indices, labels):
            out.append(self.topology(one))
            self.reports[str(int(i))] = self.topology.last_report
        if self.report_path is not None:
            write_json(self.report_path, {"total": self.report, "per_sample": self.reports})
        return torch.stack(out).long()



class LabelBank:
    """Label maps from a datalist (RetiDiff's R/S 0/66 setting): sample ``i`` uses map ``i % L``.

    Args:
        labels: ``(L, 1, H, W)`` class ids.
        names: the source file of each map (for the manifest).
        classes: the image class id of each map (:mod:`monai_oct.core.classes`; sample ``i`` is drawn with
            ``classes[i % L]``); None: no classes.
    """

    def __init__(self, labels: torch.Tensor, names: Sequence[str] | None = None,
                 classes: Sequence[int] | None = None) -> None:
        if labels.ndim != 4 or labels.shape[1] != 1 or labels.shape[0] == 0:
            raise ValueError(f"labels must have shape (L, 1, H, W) with L >= 1, got {tuple(labels.shape)}")
        self.labels = labels.long()
        self.names = list(names) if names is not None else [str(i) for i in range(labels.shape[0])]
        self.classes = None if classes is None else [int(c) for c in classes]
        if self.classes is not None and len(self.classes) != len(self.labels):
            raise ValueError(f"{len(self.classes)} classes for {len(self.labels)} label maps")

    @classmethod
    def from_datalist(cls, datalist: str | os.PathLike | Sequence[str], image_size: Sequence[int], dataset_dir: str | None = None,
                      key: str | Sequence[str] | None = ("train", "training"), band_height: int | None = None,
                      flip: bool = False, table: LabelTable | str | None = "duke_dme",
                      label_size: Sequence[int] | None = None,
                      class_table: ClassTable | str | None = None) -> "LabelBank":
        """Load every ``label`` of a datalist: band crop around the retina (from the label), one nearest-exact resize.

        Args:
            datalist: path(s) of datalists (relative ones start at ``dataset_dir``).
            image_size: ``[H, W]`` of the maps when ``label_size`` is None.
            dataset_dir: folder relative datalist paths start from.
            key: list name(s) to read.
            band_height: retina band rows (None/0: whole B-scan).
            flip: also add the left-right mirror of every map (after the originals).
            table: label table the ids are checked against.
            label_size: ``[h, w]`` the maps are loaded at (e.g. the written ``output_size``, finer than the image
                UNet); None: ``image_size``.
            class_table: look every item's class up in this table (its ``class`` field or a file-name rule), so
                each map's image is drawn with its item's class; None: no classes.

        Raises:
            DataError: a missing datalist or label file, an item without ``label``, or (with ``class_table``)
                an item without a known class (names its file).
        """
        items = resolve_items(datalist, key, dataset_dir, require_label=True)
        classes = None if class_table is None else [get_class_table(class_table).class_of(it) for it in items]
        t = [LoadBScand(["label"], label_keys=["label"], table=table)]
        if band_height:
            t.append(RetinaBandCropd(["label"], band_height=int(band_height), label_key="label"))
        # nearest-exact: torch's "nearest" shifts boundaries by up to a row (a set made with it before label_size
        # existed has no label_size in its manifest, so a rerun into it is refused rather than mixed)
        t.append(Resized(["label"], spatial_size=[int(s) for s in label_size or image_size], mode="nearest-exact"))
        chain = Compose(t)
        maps = torch.stack([torch.as_tensor(chain({"label": it["label"]})["label"]).long() for it in items])
        names = [it["label"] for it in items]
        if flip:
            maps = torch.cat([maps, torch.flip(maps, dims=[-1])])
            names = names + [f"{n} (mirrored)" for n in names]
            classes = None if classes is None else classes + classes
        return cls(maps, names, classes)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"label": (B, 1, H, W) ids}`` of maps ``i % L`` (the generators are not used)."""
        return {"label": self.labels[[int(i) % len(self) for i in indices]].to(device)}

    def class_of(self, index: int) -> int | None:
        """The class id of sample ``index`` (its map's item's class), None without classes."""
        return None if self.classes is None else self.classes[int(index) % len(self)]


class NoMaskSource:
    """No label maps: every sample gets the "no mask" condition (class-only synthesis, issue 18).

    A UNet with condition channels trained without masks (stage 1, ``pretrain.yaml`` + ``train_classes.yaml``) saw
    the all-zero condition in every training step (:func:`~monai_oct.engines.diffusion.no_mask_condition`, the
    trainer's condition of a batch without one); fed a label map's encoding at sampling it would get an input it
    never learnt. This source gives it the same zeros, and no ``"label"``: the set is images only
    (:class:`~monai_oct.engines.writer.ImageWriter`). The class of each sample comes from the engine's plan.

    Args:
        image_size: ``[H, W]`` of the image UNet.
        condition_channels: its condition channels (0: an unconditional UNet, no condition at all).
    """

    #: no label map is decoded (what a synthesis records as ``mask_decode``)
    decode = None

    def __init__(self, image_size: Sequence[int], condition_channels: int) -> None:
        self.image_size = [int(s) for s in image_size]
        self.condition_channels = int(condition_channels)
        if self.condition_channels < 0:
            raise ValueError(f"condition_channels must be >= 0, got {condition_channels}")

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"cond": (B, condition_channels, H, W) zeros}`` (``{"cond": None}`` without condition channels)."""
        if self.condition_channels == 0:
            return {"cond": None}
        return {"cond": no_mask_condition(len(indices), self.condition_channels, self.image_size, device)}


def build_label_source(image_size: Sequence[int], num_classes: int, label_datalist: str | Sequence[str] | None = None,
                       mask_ckpt: str | os.PathLike | None = None, mask_network: nn.Module | None = None,
                       mask_sampler: DiffusionSampler | None = None, dataset_dir: str | None = None,
                       band_height: int | None = None, label_flip: bool = False, dmc_smooth: int = 0,
                       table: LabelTable | str | None = "duke_dme", device: str | torch.device = "cpu",
                       label_size: Sequence[int] | None = None, mask_options: Mapping[str, Any] | None = None,
                       boundary_model: str | os.PathLike | None = None,
                       class_table: ClassTable | str | None = None, mask_condition: bool = True,
                       condition_channels: int | None = None) -> Callable:
    """The label maps of a synthesis: from ``boundary_model`` or ``label_datalist`` when given, else the stage-2 model;
    none (:class:`NoMaskSource`) without ``mask_condition``.

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
        label_size: ``[h, w]`` of the label maps (datalist maps are loaded at it, the mask model's samples are
            enlarged to it); None: ``image_size``.
        mask_options: further :class:`MaskSampler` arguments (``encoding``, ``decode``, ``min_fluid``, ``report_path``).
        boundary_model: a fitted :class:`~monai_oct.recipes.boundaries.BoundaryModel` file (``monai-oct fit-boundaries``),
            drawn at ``label_size``.
        class_table: with ``label_datalist``, the class table its items' classes are looked up in (the source's
            ``class_of(i)``); the other sources have no classes.
        mask_condition: False: no label maps, every image conditioned on the "no mask" zeros a model trained
            without masks saw (class-only synthesis of a stage-1 class model); needs ``condition_channels``.
        condition_channels: the image UNet's condition channels (used without ``mask_condition``).

    Returns:
        a :class:`~monai_oct.recipes.boundaries.BoundarySource`, :class:`LabelBank`, :class:`MaskSampler` or
        :class:`NoMaskSource`.

    Raises:
        ValueError: when neither a datalist nor a mask checkpoint (with network and sampler) is given, or both a
            boundary model and a datalist; without ``mask_condition``, when label maps (a datalist or a boundary
            model) are given anyway or ``condition_channels`` is missing.
        DataError: naming a boundary model file that is missing, bad or fitted for another table.
    """
    if not mask_condition:
        if label_datalist or boundary_model:
            given = f"--label_datalist {label_datalist}" if label_datalist else f"--boundary_model {boundary_model}"
            raise ValueError(f"class-only synthesis (--mask_condition false) takes no label maps, got {given}")
        if condition_channels is None:
            raise ValueError("class-only synthesis (mask_condition false) needs the image UNet's condition_channels")
        return NoMaskSource(image_size, condition_channels)
    if boundary_model:
        if label_datalist:
            raise ValueError("synthesis label maps: give --boundary_model or --label_datalist, not both")
        return boundary_source(boundary_model, label_size or image_size, table=table)
    if label_datalist:
        return LabelBank.from_datalist(label_datalist, image_size, dataset_dir=dataset_dir, band_height=band_height,
                                       flip=bool(label_flip), table=table, label_size=label_size,
                                       class_table=class_table)
    if not mask_ckpt or mask_network is None or mask_sampler is None:
        raise ValueError("synthesis needs label maps: give --mask_ckpt (stage 2 model.pt) or --label_datalist")
    net = load_weights(mask_network, mask_ckpt).to(device)
    return MaskSampler(net, mask_sampler, image_size, num_classes, DiscreteMaskClustering(num_classes, smooth=int(dmc_smooth)),
                       label_size=label_size, table=table or "duke_dme", **dict(mask_options or {}))



class SketchSource:
    """Random layer sketches as the condition of a sketch-conditioned image DDPM (Wu et al.).

    Sample ``i`` is item ``i`` of a :class:`~monai_oct.recipes.sketches.RandomSketchDataset` (seeded ``(seed, i)``,
    independent of the batch it falls in), so a resumed synthesis redraws exactly the same sketches.

    Args:
        dataset: the random sketches (``{"sketch", "label"}`` items at the image size).
        write_sketches: also return the sketches as ``extras["sketches"]`` for :class:`PairWriter`.

    Raises:
        ValueError: when the dataset's size is not ``(H, W)``.
    """

    def __init__(self, dataset: RandomSketchDataset, write_sketches: bool = True) -> None:
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
        stats: a JSON of :class:`~monai_oct.recipes.sketches.LayerThicknessStats` fitted at the training geometry
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
    st = LayerThicknessStats.load(stats) if stats else LayerThicknessStats.duke_defaults(band_height)
    kw = dict(sketch_kwargs, deform=0.0, jitter=0.0, drop_prob=0.0, fluid_prob=1.0)
    sketcher = LayerSketch(table, **kw)
    return SketchSource(RandomSketchDataset(num_samples, st, image_size, seed=seed, sketcher=sketcher))
