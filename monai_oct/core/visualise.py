"""Pictures people look at: images in [-1, 1] as 8-bit, label maps as grey levels or colour overlays, sample grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_oct.core.labels import UNANNOTATED

__all__ = ["PALETTE", "image_to_uint8", "label_to_uint8", "pair_grid", "label_overlay"]


#: RGB colour per class id 0..9 (vitreous dark, layers distinct, choroid brown, fluid cyan).
PALETTE = np.array([
    [0, 0, 0], [230, 25, 75], [245, 130, 48], [255, 225, 25], [60, 180, 75],
    [0, 130, 200], [145, 30, 180], [240, 50, 230], [128, 80, 40], [70, 240, 240],
], dtype=np.uint8)


def image_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., H, W)`` values in [-1, 1] -> uint8 in 0..255 (clipped, rounded)."""
    x = images.detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).numpy()


def label_to_uint8(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Class ids -> grey levels spread over 0..255 (for looking at, not for storing ids)."""
    x = labels.detach().cpu().long().clamp(0, num_classes - 1).float()
    return (x * (255.0 / max(num_classes - 1, 1))).round().to(torch.uint8).numpy()


def pair_grid(images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int = 10, ncol: int = 8,
              pad: int = 2) -> np.ndarray:
    """A uint8 grid: one column per sample, its label map (if any) above its image.

    Args:
        images: ``(B, 1, H, W)`` in [-1, 1].
        labels: ``(B, 1, H, W)`` class ids or None.
        num_classes: C, for the label's grey levels.
        ncol: samples per row of the grid.
        pad: white separator width in pixels.

    Returns:
        ``(rows, cols)`` uint8 array.

    Raises:
        ValueError: for mismatched shapes.
    """
    if images.ndim != 4 or (labels is not None and labels.shape[0] != images.shape[0]):
        raise ValueError(f"images (B, C, H, W) and labels (B, 1, H, W) must match, got {tuple(images.shape)}, "
                         f"{None if labels is None else tuple(labels.shape)}")
    imgs = image_to_uint8(images[:, 0])
    tiles = [imgs[i] for i in range(len(imgs))]
    if labels is not None:
        labs = label_to_uint8(labels[:, 0], num_classes)
        tiles = [np.concatenate([labs[i], np.full((pad, imgs.shape[2]), 255, np.uint8), imgs[i]]) for i in range(len(imgs))]
    h, w = tiles[0].shape
    ncol = max(1, min(ncol, len(tiles)))
    nrow = (len(tiles) + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = t
    return grid


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.45, background: Sequence[int] = (0,)) -> np.ndarray:
    """Blend a coloured label map over a grey B-scan.

    Args:
        image: ``(H, W)`` uint8 grey image (or RGB, converted by the mean).
        label: ``(H, W)`` class ids; ``background`` ids and :data:`UNANNOTATED` stay uncoloured.
        alpha: opacity of the colours.
        background: ids left uncoloured.

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ValueError: when the sizes differ.
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img.mean(-1)
    lab = np.asarray(label)
    if img.shape != lab.shape:
        raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
    rgb = np.repeat(img.astype(np.float32)[..., None], 3, axis=-1)
    colour = PALETTE[np.clip(lab, 0, len(PALETTE) - 1).astype(int)].astype(np.float32)
    on = ~np.isin(lab, list(background) + [UNANNOTATED]) & (lab < len(PALETTE))
    rgb[on] = (1 - alpha) * rgb[on] + alpha * colour[on]
    return np.clip(rgb, 0, 255).astype(np.uint8)
