"""The B-scan classifier: which class of an image-level :class:`~monai_oct.core.classes.ClassTable` a scan shows.

A small MONAI :class:`~monai.networks.nets.DenseNet` (2-D, one grey channel; adaptive pooling, so any image size),
sized to train on a CPU at 128x256 in minutes. Its weights are a state dict ``classifier.pt``; the record beside
it (``classifier.json``) names the class table's classes (id order), the network's settings and the image size, so
that :func:`load_classifier` rebuilds the same network and scores images at the size it was trained at.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from monai.networks.nets import DenseNet
from torch import nn

from monai_oct.core.io import read_json
from monai_oct.networks.checkpoint import load_weights

__all__ = ["bscan_classifier", "classifier_record_path", "load_classifier", "CLASSIFIER_DEFAULTS"]

#: Settings of the default classifier: a DenseNet of 4 short dense blocks, ~0.1 M parameters.
CLASSIFIER_DEFAULTS: dict[str, Any] = {"init_features": 16, "growth_rate": 8, "block_config": [2, 3, 4, 3],
                                       "dropout_prob": 0.1}


def bscan_classifier(num_classes: int, **settings: Any) -> nn.Module:
    """A 2-D DenseNet mapping ``(B, 1, H, W)`` images in [-1, 1] to ``(B, num_classes)`` logits.

    Args:
        num_classes: classes of the table.
        settings: :class:`~monai.networks.nets.DenseNet` arguments overriding :data:`CLASSIFIER_DEFAULTS`.

    Returns:
        the network (untrained).
    """
    kw = {**CLASSIFIER_DEFAULTS, **settings}
    kw["block_config"] = tuple(int(b) for b in kw["block_config"])
    return DenseNet(spatial_dims=2, in_channels=1, out_channels=int(num_classes), **kw)


def classifier_record_path(ckpt: str | os.PathLike) -> Path:
    """``classifier.json`` beside ``classifier.pt`` (the same stem, ``.json``)."""
    return Path(ckpt).with_suffix(".json")


def load_classifier(ckpt: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The trained classifier of ``ckpt`` and its record.

    Args:
        ckpt: ``classifier.pt`` written by :func:`monai_oct.recipes.classifier.train_classifier`.
        device: where the network goes.

    Returns:
        ``(network in eval mode, record)``; the record holds ``classes`` (names, id order), ``network`` (the
        settings) and ``image_size``.

    Raises:
        FileNotFoundError: naming ``ckpt`` or its record when one is missing.
        DataError: for an unreadable record or weights that do not fit it (from the loaders).
    """
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: classifier checkpoint not found (train one with monai-oct train-classifier)")
    rec_path = classifier_record_path(ckpt)
    if not rec_path.is_file():
        raise FileNotFoundError(f"{rec_path}: the record of classifier {ckpt} is missing (classes, network, image size)")
    record: Mapping[str, Any] = read_json(rec_path, "classifier record")
    net = bscan_classifier(len(record["classes"]), **record.get("network", {}))
    load_weights(net, ckpt, map_location="cpu")
    return net.to(device).eval(), dict(record)

