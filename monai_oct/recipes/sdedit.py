"""SDEdit translation between image classes without paired data (issue 18, deliverable 5).

A real scan is noised to a fraction ``t`` of the diffusion schedule and denoised by a class-conditioned UNet with
another class (Meng et al., SDEdit, ICLR 2022; the chain is :class:`~monai_oct.engines.sampler.DiffusionSampler`'s
with ``source`` / ``strength``). Small ``t`` keeps the scan and changes little; ``t = 1`` draws a new scan of the
target class that ignores the source. :func:`sdedit_sweep` measures, for each ``t``:

- structure preservation: a teacher segmenter's Dice on the translated image against the source scan's label map
  (:func:`~monai_oct.metrics.adherence.adherence_report`, the same score as mask adherence);
- target-class accuracy: the share of translated images the B-scan classifier calls the target class.

A mask-conditioned UNet (stage 3) denoises with the source's own label map as its condition (``encoding``), so the
layers are kept by the condition as well as by the noised image; a stage-1 model gets the all-zero condition it
was trained on (``mask_condition=False``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from monai_oct.core.classes import ClassTable, get_class_table
from monai_oct.core.seeding import sample_generators, sample_seeds
from monai_oct.engines.diffusion import no_mask_condition
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.metrics.adherence import adherence_report
from monai_oct.metrics.classification import confusion_report
from monai_oct.recipes.classifier import classify
from monai_oct.transforms.encoding import encode_mask

__all__ = ["sdedit_translate", "sdedit_sweep"]


def _condition(network: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, num_label_classes: int,
               encoding: str, mask_condition: bool) -> torch.Tensor | None:
    """The condition of a UNet with mask channels: the encoded source label maps (``mask_condition``), or all
    zeros (what stage 1 trains on: no mask); None for a UNet without them.

    Raises:
        ValueError: when the mask condition is asked for and there are no labels.
    """
    n, c, h, w = images.shape
    extra = int(getattr(network, "in_channels", c)) - c
    if extra <= 0:
        return None
    if not mask_condition:
        return no_mask_condition(n, extra, (h, w))
    if labels is None:
        raise ValueError(f"the UNet takes a {extra}-channel mask condition; SDEdit needs the source scans' label maps")
    return encode_mask(labels, num_label_classes, encoding)


def sdedit_translate(network: nn.Module, sampler: DiffusionSampler, images: torch.Tensor, target: int | Sequence[int],
                     strength: float, seed: int = 0, labels: torch.Tensor | None = None, num_label_classes: int = 10,
                     encoding: str = "onehot", batch_size: int = 8, device: str | torch.device = "cpu",
                     mask_condition: bool = True) -> torch.Tensor:
    """Translate ``images`` to class ``target`` by noising them to ``strength`` and denoising with that class.

    Args:
        network: a class-conditioned diffusion UNet (``num_class_embeds``).
        sampler: its sampler (DDPM or DDIM; guidance as configured on it).
        images: ``(N, 1, H, W)`` source scans in [-1, 1].
        target: the class id of every image, or one per image.
        strength: the fraction ``t`` of the schedule, in [0, 1].
        seed: image ``i``'s noise comes from the stream ``(seed, i)``: the same for every ``t``.
        labels: ``(N, 1, H, W)`` source label maps (the condition of a mask-conditioned UNet).
        num_label_classes, encoding: how the label maps are encoded (as the UNet was trained).
        batch_size: images per sampler call.
        device: where the UNet runs.
        mask_condition: a UNet with mask channels gets the encoded ``labels`` (stage 3 / ``finetune_classes``);
            False: the all-zero condition (a stage-1 ``train_classes`` model, trained without masks).

    Returns:
        ``(N, 1, H, W)`` translated images.

    Raises:
        ValueError: from the sampler (strength, shapes, class ids) or a missing mask condition.
    """
    n = images.shape[0]
    targets = [int(target)] * n if isinstance(target, int) else [int(c) for c in target]
    seeds = sample_seeds(seed, range(n))
    cond = _condition(network, images, labels, num_label_classes, encoding, mask_condition)
    out = []
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        out.append(sampler(network, sample_generators(seeds[s:e], device), tuple(images.shape[1:]),
                           None if cond is None else cond[s:e], device, class_labels=targets[s:e],
                           source=images[s:e], strength=strength).cpu())
    return torch.cat(out)


def sdedit_sweep(network: nn.Module, sampler: DiffusionSampler, images: torch.Tensor, labels: torch.Tensor | None,
                 target: int | str, strengths: Sequence[float], table: ClassTable | str = "oct_pathology",
                 teacher: Callable[[torch.Tensor], torch.Tensor] | None = None, classifier: nn.Module | None = None,
                 classifier_size: Sequence[int] | None = None, seed: int = 0, encoding: str = "onehot",
                 num_label_classes: int = 10, batch_size: int = 8, device: str | torch.device = "cpu",
                 keep_images: bool = False, mask_condition: bool = True) -> dict[str, Any]:
    """Structure preservation and target-class accuracy of SDEdit translations against ``t``.

    Args:
        network, sampler: the class-conditioned UNet and its sampler.
        images: ``(N, 1, H, W)`` source scans in [-1, 1].
        labels: their label maps ``(N, 1, H, W)`` (the teacher's reference and a mask condition), or None.
        target: the class translated to (name or id of ``table``).
        strengths: the ``t`` values (fractions of the schedule, each in [0, 1]).
        table: the class table.
        teacher: a segmenter (``(B, 1, H, W)`` -> scores), e.g. :func:`~monai_oct.metrics.adherence.load_teacher`.
        classifier: the B-scan classifier (:func:`~monai_oct.networks.classifier.load_classifier`).
        classifier_size: the size it was trained at (its record's ``image_size``).
        seed, encoding, num_label_classes, batch_size, device, mask_condition: as :func:`sdedit_translate`.
        keep_images: also return each ``t``'s translations under ``"_images"`` (not JSON).

    Returns:
        ``{"target", "strengths", "per_t": [{"t", "dice", "target_accuracy", "predicted"}], "source": {...}}``;
        ``source`` scores the untranslated scans (Dice: the teacher's own accuracy; the classifier's predicted
        classes), the ceiling of the Dice column.

    Raises:
        ValueError: naming an unknown target class or a strength outside [0, 1].
    """
    table = get_class_table(table)
    cid = table.id_of(target, "SDEdit target")
    bad = [t for t in strengths if not 0.0 <= float(t) <= 1.0]
    if bad:
        raise ValueError(f"SDEdit strengths must be fractions of the schedule in [0, 1], got {bad}")

    def score(x: torch.Tensor) -> dict[str, Any]:
        row: dict[str, Any] = {}
        if teacher is not None and labels is not None:
            row["dice"] = adherence_report(x, labels, teacher, batch_size=batch_size)["mean_dice"]
        if classifier is not None:
            rep = confusion_report(classify(classifier, x, batch_size, classifier_size), [cid] * x.shape[0], table.names)
            row["target_accuracy"] = rep["accuracy"]
            row["predicted"] = rep["per_class"][table.names[cid]]["predicted"]
        return row

    out: dict[str, Any] = {"target": table.names[cid], "strengths": [float(t) for t in strengths], "seed": int(seed),
                           "num_images": int(images.shape[0]), "source": score(images), "per_t": []}
    kept = {}
    for t in strengths:
        x = sdedit_translate(network, sampler, images, cid, float(t), seed, labels, num_label_classes, encoding,
                             batch_size, device, mask_condition)
        out["per_t"].append({"t": float(t), **score(x),
                             "mean_abs_change": float((x - images).abs().mean())})
        if keep_images:
            kept[float(t)] = x
    if keep_images:
        out["_images"] = kept
    return out
