"""Pictures people look at: images in [-1, 1] as 8-bit, label maps as grey levels or colour overlays (with a legend of
the label table's class names), sample grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from monai_oct.core.labels import DUKE_DME, UNANNOTATED, LabelTable

__all__ = ["PALETTE", "image_to_uint8", "label_to_uint8", "label_to_rgb", "pair_grid", "label_overlay", "label_legend",
           "overlay_panel", "line_plot"]


#: RGB colour per class id 0..9. The seven layers (1-7) take the Okabe-Ito colours, chosen to stay apart for
#: colour-blind readers (vermillion, sky blue, yellow, blue, orange, bluish green, reddish purple); the choroid (8)
#: is brown and fluid (9) an electric violet far from all of them (CIE L*a*b* distance to its nearest class 95 for
#: normal vision, above 40 under simulated deuteranopia, protanopia and tritanopia; checked by ``tests/test_visual.py``).
#: Vitreous (0) is never coloured by :func:`label_overlay`'s default.
PALETTE = np.array([
    [0, 0, 0], [213, 94, 0], [86, 180, 233], [240, 228, 66], [0, 114, 178],
    [230, 159, 0], [0, 158, 115], [204, 121, 167], [120, 70, 30], [135, 0, 255],
], dtype=np.uint8)


def image_to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., H, W)`` values in [-1, 1] -> uint8 in 0..255 (clipped, rounded)."""
    x = images.detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).numpy()


def label_to_uint8(labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Class ids -> grey levels spread over 0..255 (for looking at, not for storing ids)."""
    x = labels.detach().cpu().long().clamp(0, num_classes - 1).float()
    return (x * (255.0 / max(num_classes - 1, 1))).round().to(torch.uint8).numpy()


def label_to_rgb(labels: torch.Tensor | np.ndarray, palette: np.ndarray = PALETTE) -> np.ndarray:
    """Class ids ``(..., H, W)`` -> ``(..., H, W, 3)`` uint8 colours of ``palette``; :data:`UNANNOTATED` white."""
    lab = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    rgb = palette[np.clip(lab, 0, len(palette) - 1)]
    rgb[lab == UNANNOTATED] = 255
    return rgb


def pair_grid(images: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int = 10, ncol: int = 8,
              pad: int = 2, colour: bool = False) -> np.ndarray:
    """A uint8 grid: one column per sample, its label map (if any) above its image.

    Args:
        images: ``(B, 1, H, W)`` grey or ``(B, 3, H, W)`` RGB in [-1, 1] (an RGB grid then).
        labels: ``(B, 1, H, W)`` class ids or None.
        num_classes: C, for the label's grey levels.
        ncol: samples per row of the grid.
        pad: white separator width in pixels.
        colour: draw the label maps in :data:`PALETTE`'s colours (an RGB grid) instead of grey levels.

    Returns:
        ``(rows, cols)`` uint8 array, or ``(rows, cols, 3)`` with ``colour`` and labels or with RGB images.

    Raises:
        ValueError: for mismatched shapes.
    """
    if images.ndim != 4 or (labels is not None and labels.shape[0] != images.shape[0]):
        raise ValueError(f"images (B, C, H, W) and labels (B, 1, H, W) must match, got {tuple(images.shape)}, "
                         f"{None if labels is None else tuple(labels.shape)}")
    rgb = images.shape[1] == 3
    imgs = image_to_uint8(images.permute(0, 2, 3, 1) if rgb else images[:, 0])
    colour = (bool(colour) and labels is not None) or rgb
    if colour and not rgb:
        imgs = np.repeat(imgs[..., None], 3, -1)
    tiles = [imgs[i] for i in range(len(imgs))]
    if labels is not None:
        labs = label_to_rgb(labels[:, 0]) if colour else label_to_uint8(labels[:, 0], num_classes)
        sep = np.full((pad,) + imgs.shape[2:], 255, np.uint8)
        tiles = [np.concatenate([labs[i], sep, imgs[i]]) for i in range(len(imgs))]
    h, w = tiles[0].shape[:2]
    ncol = max(1, min(ncol, len(tiles)))
    nrow = (len(tiles) + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad) + tiles[0].shape[2:], 255, np.uint8)
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


def label_legend(names: Sequence[str], ids: Sequence[int] | None = None, width: int = 0, palette: np.ndarray = PALETTE,
                 row_height: int = 14) -> np.ndarray:
    """A legend strip: one colour swatch and class name per id, flowed into rows no wider than ``width``.

    Drawn with PIL's built-in font (no font file needed).

    Args:
        names: class names in id order (e.g. ``table.names``).
        ids: the ids to list (default: all but 0, as :func:`label_overlay` leaves 0 uncoloured).
        width: width of the strip in pixels; entries wrap onto new rows; 0 or narrower than the widest
            entry: that entry's width.
        palette: ``(C, 3)`` colours.
        row_height: pixels per row.

    Returns:
        ``(rows * row_height, width, 3)`` uint8 RGB on white.

    Raises:
        ValueError: for an id without a name or a colour.
    """
    from PIL import Image, ImageDraw, ImageFont

    ids = list(range(1, len(names))) if ids is None else [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < min(len(names), len(palette))]
    if bad:
        raise ValueError(f"legend: class ids {bad} have no name or colour ({len(names)} names, {len(palette)} colours)")
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sw, gap = row_height - 4, 8
    entries = [(i, str(names[i]), sw + 3 + int(draw.textlength(str(names[i]), font=font))) for i in ids]
    width = max([int(width)] + [w + 4 for _, _, w in entries])
    rows: list[list[tuple[int, str, int]]] = [[]]
    used = 2
    for e in entries:
        if rows[-1] and used + e[2] > width:
            rows.append([])
            used = 2
        rows[-1].append(e)
        used += e[2] + gap
    canvas = Image.new("RGB", (width, max(1, len(rows)) * row_height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        x, y = 2, r * row_height
        for i, name, w in row:
            draw.rectangle([x, y + 2, x + sw - 1, y + 2 + sw - 1], fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
            draw.text((x + sw + 3, y + 1), name, fill=(0, 0, 0), font=font)
            x += w + gap
    return np.asarray(canvas, dtype=np.uint8)


def overlay_panel(image: np.ndarray, labels: Sequence[np.ndarray], table: LabelTable = DUKE_DME, alpha: float = 0.45,
                  sep: int = 4) -> np.ndarray:
    """The image beside its label map(s) drawn over it (e.g. truth, prediction), with the class legend below.

    Args:
        image: ``(H, W)`` uint8 grey image.
        labels: ``(H, W)`` class-id maps, each shown as :func:`label_overlay` of ``image``.
        table: label table whose class names the legend lists (ids 1..C-1, as coloured).
        alpha: opacity of the colours.
        sep: white separator width in pixels.

    Returns:
        ``(H + legend rows, W', 3)`` uint8 RGB.

    Raises:
        ValueError: when a label map's size differs from the image's.
    """
    img = np.asarray(image).astype(np.uint8)
    white = np.full((img.shape[0], sep, 3), 255, np.uint8)
    tiles = [np.repeat(img[..., None], 3, -1)]
    for lab in labels:
        tiles += [white, label_overlay(img, np.asarray(lab).astype(np.int64), alpha=alpha)]
    panel = np.concatenate(tiles, axis=1)
    legend = label_legend(table.names, width=panel.shape[1])
    if legend.shape[1] > panel.shape[1]:
        panel = np.pad(panel, ((0, 0), (0, legend.shape[1] - panel.shape[1]), (0, 0)), constant_values=255)
    return np.concatenate([panel, np.full((sep, panel.shape[1], 3), 255, np.uint8), legend], axis=0)


def line_plot(x: Sequence[float], series: dict[str, Sequence[float]], markers: Sequence[float] = (),
              size: tuple[int, int] = (480, 280), x_label: str = "", y_label: str = "",
              palette: np.ndarray = PALETTE) -> np.ndarray:
    """A line chart of named series over a shared x axis, with dashed vertical markers, as a uint8 RGB picture.

    Drawn with PIL because matplotlib is not a dependency of this package (the benchmarks' figures are drawn the
    same way). Series take the palette's colours from id 1 on, in order, named in a legend at the top right.

    Args:
        x: the ``N`` x values (increasing).
        series: ``{name: N y values}``.
        markers: x values marked by a dashed grey vertical line (e.g. isosbestic wavelengths).
        size: ``(width, height)`` in pixels.
        x_label, y_label: axis captions.
        palette: colours.

    Returns:
        ``(height, width, 3)`` uint8.

    Raises:
        ValueError: for fewer than 2 x values, no series, or a series whose length is not ``len(x)``.
    """
    from PIL import Image, ImageDraw

    xs = np.asarray(x, dtype=np.float64)
    ys = {name: np.asarray(v, dtype=np.float64) for name, v in series.items()}
    if xs.size < 2 or not ys:
        raise ValueError(f"line_plot needs at least 2 x values and one series; got {xs.size} and {len(ys)}")
    for name, v in ys.items():
        if v.shape != xs.shape:
            raise ValueError(f"series {name!r} has {v.size} values for {xs.size} x values")
    w, h = size
    left, right, top, bottom = 56, 12, 12, 36
    pw, ph = w - left - right, h - top - bottom
    x_lo, x_hi = float(xs.min()), float(xs.max())
    y_lo, y_hi = min(float(v.min()) for v in ys.values()), max(float(v.max()) for v in ys.values())
    y_lo, y_hi = (y_lo - 0.5, y_hi + 0.5) if y_hi == y_lo else (y_lo, y_hi)

    def at(px: float, py: float) -> tuple[float, float]:
        return left + (px - x_lo) / (x_hi - x_lo) * pw, top + ph - (py - y_lo) / (y_hi - y_lo) * ph

    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    for m in markers:
        mx = at(float(m), y_lo)[0]
        for y0 in range(top, top + ph, 6):
            draw.line([(mx, y0), (mx, min(y0 + 3, top + ph))], fill=(150, 150, 150))
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    for i, (name, v) in enumerate(ys.items()):
        colour = tuple(int(c) for c in palette[1 + i % (len(palette) - 1)])
        draw.line([at(a, b) for a, b in zip(xs, v)], fill=colour, width=2)
        draw.line([(left + pw - 90, top + 8 + 12 * i), (left + pw - 74, top + 8 + 12 * i)], fill=colour, width=2)
        draw.text((left + pw - 70, top + 2 + 12 * i), name, fill="black")
    for px in np.linspace(x_lo, x_hi, 5):
        draw.text((at(px, y_lo)[0] - 12, top + ph + 4), f"{px:.4g}", fill="black")
    for py in np.linspace(y_lo, y_hi, 5):
        draw.text((4, at(x_lo, py)[1] - 6), f"{py:.3g}", fill="black")
    draw.text((left + pw // 2 - 4 * len(x_label), h - 14), x_label, fill="black")
    draw.text((left + 4, top + 2), y_label, fill="black")
    return np.asarray(img)
