"""Mask adherence: does each synthetic image show the label map it was conditioned on?

A teacher segmenter (e.g. the ``oct_layer_seg`` checkpoint, trained on real scans) predicts a label map
on every synthetic image; its Dice against the conditioning label (per class, unannotated pixels
ignored, :class:`monai_oct.metrics.segmentation.LayerDiceMetric`) measures how faithfully the generator
followed the mask. The value is bounded by the teacher's own accuracy on real scans: report that beside
it (``oct_layer_seg`` ``evaluate.yaml``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable
from monai_oct.metrics.segmentation import LayerDiceMetric
from monai_oct.networks.segmentation import load_weights, resolve_network

__all__ = ["SegmentationTeacher", "load_teacher", "adherence_report"]


class SegmentationTeacher:
    """Run a segmentation network on images of any size: ``(B, 1, H, W)`` in [-1, 1] -> logits ``(B, C, H, W)``.

    Args:
        network: maps ``(B, 1, h, w)`` to ``(B, C, h, w)`` logits.
        image_size: ``(h, w)`` the network was trained at: images are resized to it and the logits back
            (bilinear); None: the images are padded (replicate) to a multiple of ``divisible`` and cropped back.
        divisible: size multiple the network needs (16 for a 5-level UNet).
        device: where the network runs.
    """

    def __init__(self, network: nn.Module, image_size: Sequence[int] | None = None, divisible: int = 16,
                 device: str | torch.device = "cpu") -> None:
        self.network = network.eval().to(device)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.divisible = max(1, int(divisible))
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().to(self.device)
        h, w = x.shape[-2:]
        if self.image_size is not None:
            y = self.network(F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False))
            return F.interpolate(y.float(), size=(h, w), mode="bilinear", align_corners=False).cpu()
        ph, pw = (-h) % self.divisible, (-w) % self.divisible
        y = self.network(F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x)
        return y[..., :h, :w].float().cpu()


def load_teacher(checkpoint: str | os.PathLike, network: str | nn.Module = "unet", num_classes: int = 10,
                 channels: Sequence[int] | None = None, image_size: Sequence[int] | None = None,
                 device: str | torch.device = "cpu", key: str = "model") -> SegmentationTeacher:
    """A :class:`SegmentationTeacher` from a state-dict checkpoint (e.g. ``oct_layer_seg``'s ``model.pt``).

    Args:
        checkpoint: the state dict (``weights_only=True``).
        network: network name (``unet``, ``basicunet``, ``relaynet``) or module, as trained.
        num_classes: classes of the network.
        channels: channel widths, as trained (default: the factory's).
        image_size: training input size (see :class:`SegmentationTeacher`).
        device: where it runs.
        key: entry holding the state dict in a multi-object checkpoint.

    Raises:
        FileNotFoundError, ValueError: from :func:`monai_oct.networks.segmentation.load_weights`.
    """
    net = resolve_network(network, in_channels=1, out_channels=num_classes, channels=channels)
    load_weights(net, checkpoint, key=key, map_location="cpu")
    return SegmentationTeacher(net, image_size=image_size, device=device)


def adherence_report(images: torch.Tensor, labels: torch.Tensor, teacher: Callable[[torch.Tensor], torch.Tensor],
                     table: LabelTable = DUKE_DME, batch_size: int = 8, worst: int = 5,
                     names: Sequence[str] | None = None, ignore_index: int = UNANNOTATED,
                     return_predictions: bool = False) -> dict[str, Any]:
    """Dice between the teacher's prediction on each image and the label the image was conditioned on.

    Args:
        images: ``(N, 1, H, W)`` in [-1, 1].
        labels: conditioning label maps ``(N, 1, H, W)`` (ids; ``ignore_index`` skipped).
        teacher: ``(B, 1, H, W) -> (B, C, H, W)`` scores or ``(B, 1, H, W)`` ids.
        table: label table (class names, groups).
        batch_size: images per teacher call.
        worst: number of lowest-Dice images listed.
        names: image names for the report.
        ignore_index: unannotated label value.
        return_predictions: also return the predicted ids under ``"_predictions"`` (not JSON; for figures).

    Returns:
        ``{"mean_dice", "classes": {id: {name, dice}}, "groups", "per_image_mean_dice", "worst": [...],
        "definition"}`` (NaN written as None).

    Raises:
        ValueError: when images and labels disagree in number or size.
    """
    if labels is None:
        raise ValueError("mask adherence needs the conditioning label of every synthetic image")
    if images.shape[0] != labels.shape[0] or images.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    metric = LayerDiceMetric(num_classes=table.num_classes, ignore_index=ignore_index, groups=table.groups,
                             reduction="none")
    preds = []
    for s in range(0, images.shape[0], batch_size):
        y = teacher(images[s:s + batch_size])
        y = torch.as_tensor(y)
        ids = y.argmax(1, keepdim=True) if y.shape[1] > 1 else y.round().long()
        metric(ids.cpu(), labels[s:s + batch_size].cpu())
        preds.append(ids.cpu())
    per = metric.aggregate("none")  # (N, C + G)
    mc = list(metric.mean_classes)
    cls = per[:, mc]
    img_mean = torch.where(torch.isnan(cls).all(1), torch.full_like(cls[:, 0], float("nan")), torch.nanmean(cls, 1))
    col = metric.per_column()

    def clean(v: float) -> float | None:
        return None if v != v else float(v)

    order = torch.argsort(torch.nan_to_num(img_mean, nan=2.0))[:worst].tolist()
    out = {
        "num_images": int(images.shape[0]),
        "mean_dice": clean(float(metric.aggregate("mean"))),
        "mean_classes": mc,
        "classes": {str(c): {"name": table.classes.get(c, str(c)), "dice": clean(col[str(c)])} for c in range(table.num_classes)},
        "groups": {g: {"classes": list(ids), "dice": clean(col[g])} for g, ids in table.groups.items()},
        "per_image_mean_dice": [clean(v) for v in img_mean.tolist()],
        "worst": [{"index": i, "name": None if names is None else str(names[i]), "mean_dice": clean(float(img_mean[i]))}
                  for i in order],
        "definition": ("Teacher prediction on each synthetic image vs its conditioning label: per-class Dice over annotated "
                       "pixels (NaN when a class is absent from both; skipped), averaged over images; mean_dice averages "
                       "mean_classes. Bounded by the teacher's own accuracy on real scans."),
    }
    if return_predictions:
        out["_predictions"] = torch.cat(preds)
    return out
