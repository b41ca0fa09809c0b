"""How the shared pieces fit for fundus photographs with artery/vein labels (``bundles/fundus_av``).

The same trainers, samplers, synthesis engine and writer as OCT; what differs is data:

- :func:`fundus_transforms`: load the RGB photograph (``LoadBScand(channels=3)``), its A/V label (ids checked
  against :data:`~monai_oct.core.labels.FUNDUS_AV`) and its field of view; the uncertain class resolved to its
  neighbours' vessel class (:class:`~monai_oct.transforms.vessels.ResolveUncertaind`, for the four-class
  generative stages); outside the FOV the label is 255 (ignored by losses and metrics) and the image black
  (:class:`~monai_oct.transforms.fov.MaskOutsideFOVd`); image area-resized, label and FOV nearest; image in [-1, 1].
  There is no band crop.
- the stage chains :func:`mask_transforms` (the one-hot A/V map is the image of the unconditional mask DDPM),
  :func:`autoencoder_transforms` (random crops of the photographs) and :func:`image_transforms` (photograph +
  one-hot condition; the latent trainer area-averages it to the latent size).
- :class:`FundusLabelSource`: the label maps of a synthesis inside a circular field of view, which the engine
  blackens the images outside of and the writer writes to ``fov/``; :func:`write_plausibility` adds
  :func:`~monai_oct.metrics.fundus.fundus_plausibility` of the written label maps to ``manifest.json``.
- segmentation: :func:`seg_transforms` (``task`` ``"vessel"``: background / vessel; ``"av"``: background / artery /
  vein with a crossing trained as artery and an uncertain pixel not trained), and :func:`metric_output`, what the
  fundus metrics read from an evaluator's output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    MapLabelValued,
    RandFlipd,
    Resized,
    ScaleIntensityRanged,
    SelectItemsd,
)

from monai_oct.core.io import read_json, read_label, write_json
from monai_oct.core.labels import FUNDUS_AV, UNANNOTATED, LabelTable, get_label_table
from monai_oct.metrics.fundus import fundus_plausibility
from monai_oct.recipes.latent_pipelines import crop_transform
from monai_oct.transforms.encoding import MaskEncoded
from monai_oct.transforms.fov import MaskOutsideFOVd
from monai_oct.transforms.io import LoadBScand
from monai_oct.transforms.vessels import ResolveUncertain, ResolveUncertaind, estimate_disc_centre, vessel_tree_total

__all__ = ["GENERATIVE_CLASSES", "SEG_TASKS", "fundus_transforms", "mask_transforms", "autoencoder_transforms",
           "image_transforms", "circular_fov", "FundusLabelSource", "write_plausibility", "seg_transforms",
           "seg_num_classes", "metric_output", "seg_metrics"]

#: Classes of the generative stages: background, artery, vein, crossing (uncertain resolved to its neighbours).
GENERATIVE_CLASSES = 4

#: Segmentation tasks: FUNDUS_AV id -> trained class (255: not trained). ``av`` counts a crossing as artery.
SEG_TASKS: dict[str, list[int]] = {"vessel": [0, 1, 1, 1, 1], "av": [0, 1, 2, 1, UNANNOTATED]}


def fundus_transforms(image_size: Sequence[int] | None, with_label: bool = True, resolve_uncertain: bool = True,
                      table: LabelTable | str = FUNDUS_AV) -> Compose:
    """Load a fundus item ``{"image", "label", "fov"}`` (see the module docstring).

    Args:
        image_size: ``[H, W]`` (None: keep the size).
        with_label: load ``label`` too (the autoencoder needs only the image and its FOV).
        resolve_uncertain: map the uncertain class to its neighbours' vessel class (four-class stages).
        table: the label table the ids are checked against.

    Returns:
        a ``Compose``: ``image`` float ``(3, H, W)`` in [-1, 1] (-1 outside the FOV), ``label`` int64 ``(1, H, W)``
        (255 outside the FOV), ``fov`` float ``(1, H, W)`` (1 inside).

    Raises (when applied):
        DataError: naming a missing or unreadable file or a label with ids outside the table.
        ValueError: naming the files when a FOV's size differs from its image's.
    """
    keys = ["image", "label"] if with_label else ["image"]
    labels = keys[1:]
    t: list = [LoadBScand(keys, label_keys=labels, table=table, channels=3),
               LoadBScand(["fov"], label_keys=["fov"], table=None)]
    if with_label and resolve_uncertain:
        t.append(ResolveUncertaind(labels))
    t.append(MaskOutsideFOVd(labels, fov_key="fov", image_keys=["image"], image_fill=0.0, as_bool=False) if labels else
             MaskOutsideFOVd(["image"], fov_key="fov", ignore_value=0.0, as_bool=False))
    if image_size is not None:
        size = [int(s) for s in image_size]
        t += [Resized(["image"], spatial_size=size, mode="area"), Resized(labels + ["fov"], spatial_size=size, mode="nearest")]
    t += [ScaleIntensityRanged(["image"], a_min=0.0, a_max=255.0, b_min=-1.0, b_max=1.0, clip=True),
          ScaleIntensityRanged(["fov"], a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)]
    if labels:
        t.append(CastToTyped(labels, dtype=torch.int64))
    t.append(EnsureTyped(keys + ["fov"], track_meta=False))
    return Compose(t)


def _seeded(steps: list, seed: int) -> Compose:
    chain = Compose(steps)
    chain.set_random_state(seed)
    return chain


def mask_transforms(image_size: Sequence[int], flip: float = 0.0, seed: int = 0, encoding: str = "onehot",
                    num_classes: int = GENERATIVE_CLASSES) -> Compose:
    """Stage ``train_masks``: ``{"image"}`` = the A/V map in the mask DDPM's encoding (outside the FOV: no class).

    Args:
        image_size: ``[H, W]``.
        flip: probability of a left-right flip (a left eye becomes a right one).
        seed: seed of the random transforms.
        encoding: ``"onehot"`` (C channels, decoded by :class:`~monai_oct.transforms.vessels.VesselTreeDecode`)
            or ``"scalar"``.
        num_classes: C (4: background, artery, vein, crossing).
    """
    return _seeded([fundus_transforms(image_size),
                    MaskEncoded(["label"], num_classes=num_classes, mode=encoding, output_key="image"),
                    SelectItemsd(["image"]), RandFlipd(["image"], prob=flip, spatial_axis=1)], seed)


def autoencoder_transforms(image_size: Sequence[int], crop_size: Sequence[int] | None = None, flip: float = 0.0,
                           seed: int = 0) -> Compose:
    """Stage ``train_autoencoder``: ``{"image"}`` photographs (black outside the FOV), random ``crop_size`` crops.

    Raises:
        ValueError: for a crop larger than ``image_size``.
    """
    steps = [fundus_transforms(image_size, with_label=False), SelectItemsd(["image"]),
             RandFlipd(["image"], prob=flip, spatial_axis=1), crop_transform(crop_size, image_size)]
    return _seeded([t for t in steps if t is not None], seed)


def image_transforms(image_size: Sequence[int], flip: float = 0.0, seed: int = 0, encoding: str = "onehot",
                     num_classes: int = GENERATIVE_CLASSES) -> Compose:
    """Stage ``train_images``: ``{"image", "cond", "label"}``, ``cond`` the encoded A/V map at ``image_size``
    (no class outside the FOV; the latent trainer area-averages it to the latent size)."""
    return _seeded([fundus_transforms(image_size),
                    MaskEncoded(["label"], num_classes=num_classes, mode=encoding, output_key="cond"),
                    SelectItemsd(["image", "cond", "label"]),
                    RandFlipd(["image", "cond", "label"], prob=flip, spatial_axis=1)], seed)


def circular_fov(size: Sequence[int], radius: float = 0.47) -> torch.Tensor:
    """``(1, H, W)`` bool disc centred in the frame, of ``radius`` times the shorter side (DRIVE's FOV is about 0.47
    of its 565 px width; the fundus phantom's 240/512)."""
    h, w = (int(s) for s in size)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return (((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) <= (float(radius) * min(h, w)) ** 2)[None]


class FundusLabelSource:
    """The label maps of a fundus synthesis inside a circular field of view.

    Wraps a label source of :mod:`monai_oct.recipes.sources` (the mask DDPM's :class:`MaskSampler` with
    ``decode="vessel_tree"``, or a ``LabelBank`` of real maps, whose uncertain pixels are resolved here): outside the
    FOV the maps are background; the FOV is returned as ``"fov"`` (the engine blackens the image there) and as the
    extra image ``fov`` (the writer writes ``fov/<name>.png``, 0 / 255, and lists it in ``datalist.json``).

    A ``vessel_tree`` decoder of the inner source (``MaskSampler(decode="vessel_tree")``) is given the same FOV:
    the mask DDPM learnt "no class" (0.0 in every channel) outside a photograph's FOV, so the argmax there is noise,
    which would otherwise count as vessels where the decoder looks for the optic disc (the densest vessels).

    Args:
        source: the inner label source.
        fov_radius: FOV radius as a fraction of the shorter side.
    """

    def __init__(self, source: Callable, fov_radius: float = 0.47) -> None:
        self.source, self.fov_radius = source, float(fov_radius)
        self.resolve = ResolveUncertain()
        decoder = getattr(source, "vessel_tree", None)
        if decoder is not None and decoder.fov is None:
            decoder.fov = circular_fov(source.label_size, self.fov_radius)[0].numpy()

    def __getattr__(self, name: str) -> Any:  # decode, report, ... of the inner source
        return getattr(self.__dict__["source"], name)

    def __call__(self, indices: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> dict:
        """``{"label": (B, 1, h, w) ids 0-3, "fov": (B, 1, h, w) bool, "extras": {"fov": ±1}}``."""
        labels = self.source(indices, generators, device)["label"]
        labels = torch.stack([torch.as_tensor(self.resolve(lab.cpu())) for lab in labels]).long()
        fov = circular_fov(labels.shape[-2:], self.fov_radius)[None].expand_as(labels)
        labels = torch.where(fov, labels, torch.zeros_like(labels)).to(device)
        return {"label": labels, "fov": fov.to(device), "extras": {"fov": fov.float() * 2.0 - 1.0}}


def write_plausibility(output_dir: str | os.PathLike, table: LabelTable | str = FUNDUS_AV) -> dict:
    """Add ``"plausibility"`` (:func:`~monai_oct.metrics.fundus.fundus_plausibility` of every label map the set's
    ``datalist.json`` lists, the optic disc located by :func:`~monai_oct.transforms.vessels.estimate_disc_centre`)
    to ``output_dir/manifest.json``, atomically; returns it. The maps' connectivity after the vessel-tree decoding
    is close to 1 by construction (it removes what misses the disc), so where the synthesis wrote its decoding
    reports (``label_decoding*.json``, every pair with ``kept_pixels``) ``"decoding"`` adds what the sampled maps
    had before it: :func:`~monai_oct.transforms.vessels.vessel_tree_total` plus ``min_connected_fraction`` and
    ``maps_connected`` (>= 0.95) per map.

    Raises:
        DataError: naming a missing or unreadable datalist, manifest or label file.
    """
    out, table = Path(output_dir), get_label_table(table)
    items = read_json(out / "datalist.json", "synthesis datalist")["training"]
    labels = [read_label(out / it["label"] if not os.path.isabs(it["label"]) else it["label"], table) for it in items]
    report = fundus_plausibility(labels, disc_centres=[estimate_disc_centre(lab, table) for lab in labels], table=table)
    report["definition"] += " The disc of a generated map is where its vessels are densest."
    per_sample: dict[str, dict] = {}
    for path in sorted(out.glob("label_decoding*.json")):  # the vessel-tree decoding's reports (one file per rank)
        per_sample.update(read_json(path, "label decoding report").get("per_sample") or {})
    if per_sample:
        reports = [per_sample.get(str(i)) for i in range(len(items))]
        if all(r is not None and "kept_pixels" in r for r in reports):
            before = [r["kept_pixels"] / (r["kept_pixels"] + r["removed_pixels"])
                      for r in reports if r["kept_pixels"] + r["removed_pixels"]]
            report["decoding"] = {**vessel_tree_total(reports),
                                  "min_connected_fraction": float(min(before)) if before else None,
                                  "maps_connected": sum(b >= 0.95 for b in before),
                                  "definition": ("the sampled maps before VesselTreeDecode: connected_fraction = kept / "
                                                 "(kept + removed) vessel pixels over every map, the share already in "
                                                 "components touching the disc; removed_pixels were set to background, "
                                                 "crossing_pixels made crossings where artery touched vein")}
    manifest = read_json(out / "manifest.json", "synthesis manifest")
    manifest["plausibility"] = report
    write_json(out / "manifest.json", manifest)
    return report


def seg_num_classes(task: str) -> int:
    """Output classes of a segmentation ``task`` (vessel: 2, av: 3).

    Raises:
        ValueError: for an unknown task.
    """
    if task not in SEG_TASKS:
        raise ValueError(f"unknown fundus segmentation task {task!r}; use one of {sorted(SEG_TASKS)}")
    return len({c for c in SEG_TASKS[task] if c != UNANNOTATED})


def seg_transforms(image_size: Sequence[int] | None, task: str = "vessel", train: bool = True, flip: float = 0.5,
                   seed: int = 0) -> Compose:
    """Segmentation chain: ``{"image", "label"}`` (+ ``"source"`` of a mixed set).

    Training (``train``) maps the label to the task's classes (MONAI's ``MapLabelValued``; 255 outside the FOV, so
    the masked loss ignores it) and flips; evaluation keeps the :data:`FUNDUS_AV` ids, which the fundus metrics score.

    Raises:
        ValueError: for an unknown task.
    """
    seg_num_classes(task)
    steps: list = [fundus_transforms(image_size, resolve_uncertain=False)]
    if train:
        steps += [MapLabelValued(["label"], orig_labels=list(range(len(SEG_TASKS[task]))), target_labels=SEG_TASKS[task]),
                  CastToTyped(["label"], dtype=torch.int64),
                  SelectItemsd(["image", "label", "source"], allow_missing_keys=True),
                  RandFlipd(["image", "label"], prob=flip, spatial_axis=1)]
    else:
        steps.append(SelectItemsd(["image", "label"]))
    return _seeded(steps, seed)


def metric_output(kind: str) -> Callable[[Any], tuple[list, list]]:
    """An ``IgniteMetricHandler`` ``output_transform`` for the fundus metrics from softmax ``pred`` and ``label``.

    Args:
        kind: ``"vessel"`` (``y_pred`` = the vessel probability, 1 - background) or ``"av"`` (``y_pred`` = the
            argmax ids: 0, 1 artery, 2 vein, as :data:`FUNDUS_AV` numbers them).

    Raises:
        ValueError: for another kind.
    """
    if kind not in ("vessel", "av"):
        raise ValueError(f"metric output kind must be 'vessel' or 'av', got {kind!r}")

    def transform(output: Any) -> tuple[list, list]:
        items = output if isinstance(output, list) else [output]
        preds = [torch.as_tensor(it["pred"]) for it in items]
        preds = [1.0 - p[:1] if kind == "vessel" else p.argmax(0, keepdim=True) for p in preds]
        return preds, [torch.as_tensor(it["label"]) for it in items]

    return transform


def seg_metrics(task: str, key: bool = False) -> dict[str, Any]:
    """The validation metrics of a fundus segmentation bundle, as MONAI ``IgniteMetricHandler`` s.

    Args:
        task: ``"vessel"`` or ``"av"`` (adds ``val_av_accuracy``, artery/vein accuracy on true artery and vein pixels).
        key: only the key metric ``val_vessel_dice`` (what ``CheckpointSaver`` keeps the best model by); else the
            others: vessel sensitivity, specificity and AUC inside the FOV (and the A/V accuracy).

    Raises:
        ValueError: for an unknown task.
    """
    from monai.handlers import IgniteMetricHandler

    from monai_oct.metrics.fundus import ArteryVeinMetric, VesselMetric

    seg_num_classes(task)
    vessel = metric_output("vessel")
    if key:
        return {"val_vessel_dice": IgniteMetricHandler(VesselMetric(key="dice"), output_transform=vessel)}
    out = {f"val_vessel_{k}": IgniteMetricHandler(VesselMetric(key=k), output_transform=vessel)
           for k in ("sensitivity", "specificity", "auc")}
    if task == "av":
        out["val_av_accuracy"] = IgniteMetricHandler(ArteryVeinMetric(key="av_accuracy"), output_transform=metric_output("av"))
    return out
