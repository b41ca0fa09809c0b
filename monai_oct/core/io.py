"""File I/O of the toolkit: image and label files, JSON, and the one atomic write everything uses.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file beside the
target (``.tmp.<name>``, :data:`TEMP_PATTERN`) and renamed over it only when complete, so nothing
half-written ever lies under a final name; :func:`remove_temporaries` clears what a killed run left.
Every reader error is a :class:`DataError` that names the file.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from monai_oct.core.labels import LabelTable

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "TEMP_PATTERN",
    "atomic_path",
    "remove_temporaries",
    "read_image",
    "read_label",
    "read_bands",
    "read_channels",
    "write_npy",
    "read_grey",
    "pil_array",
    "to_grey",
    "check_same_size",
    "write_png",
    "read_json",
    "write_json",
    "write_text",
]

#: glob pattern of the temporary files :func:`atomic_path` writes.
TEMP_PATTERN = ".tmp.*"


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_path` writes ``path`` under: ``.tmp.<name>`` in the same folder, so it keeps
    the file's suffixes and a writer that picks its format from them (PIL, nibabel, ...) writes the right one."""
    path = Path(path)
    return path.with_name(f".tmp.{path.name}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` when the block succeeds.

    The parent folder is created. When the block raises, the temporary file is removed and ``path`` is left as
    it was (absent, or its previous complete content).

    Args:
        path: the final file.

    Yields:
        the temporary file (same folder, so the rename is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Remove the temporary files of :func:`atomic_path` that a killed run left in ``folder``; returns how many."""
    n = 0
    for p in Path(folder).glob(TEMP_PATTERN):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON atomically (values JSON cannot hold are written as ``str``); returns the path."""
    return write_text(path, json.dumps(obj, indent=indent, default=str))


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """Bad input data: the message names the file and what is wrong with it."""


#: PIL modes whose pixels are read as they are; any other mode (RGBA, LA, CMYK, ...) is converted to RGB first.
_KEPT_MODES = ("L", "RGB", "P", "I", "I;16")


def pil_array(im: Any) -> np.ndarray:
    """The pixels of an open PIL image as :func:`read_image` returns them (``H x W`` or ``H x W x 3``)."""
    return np.array(im if im.mode in _KEPT_MODES else im.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2D image file into a numpy array (``H x W`` grey or ``H x W x 3`` RGB).

    Raises:
        DataError: when the file is missing or cannot be decoded.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: cannot read image (empty file, 0 bytes)")
    try:
        with Image.open(path) as im:
            arr = pil_array(im)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from e
    if arr.ndim not in (2, 3):
        raise DataError(f"{path}: expected a 2D image, got array of shape {arr.shape}")
    return arr


def read_label(path: str | os.PathLike, table: LabelTable | None = None) -> np.ndarray:
    """Read a label map of class ids (``H x W``, uint8) and check its ids against ``table``.

    Raises:
        DataError: when the file is missing, unreadable, not single channel or holds unknown ids.
    """
    arr = read_image(path)
    if arr.ndim != 2:
        raise DataError(f"{path}: a label map must be single channel, got shape {arr.shape}")
    if table is not None:
        try:
            table.validate_ids(arr, where=str(path))
        except ValueError as e:
            raise DataError(str(e)) from None
    return arr.astype(np.uint8)


def to_grey(arr: np.ndarray) -> np.ndarray:
    """An ``H x W`` image from an ``H x W`` grey or ``H x W x C`` colour array: the mean of the first three channels.

    A B-scan saved as RGB holds the same value in each channel, so the mean is exact for it; for a colour
    picture it is a plain average (no luminance weights), as the quality metrics read images too.

    Returns:
        ``arr`` unchanged when it is 2D, else a float64 ``H x W`` array.
    """
    arr = np.asarray(arr)
    return arr if arr.ndim == 2 else arr[..., :3].astype(np.float64).mean(-1)


def read_grey(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``H x W`` grey (:func:`read_image`, RGB averaged by :func:`to_grey`).

    Raises:
        DataError: when the file is missing or cannot be decoded.
    """
    return to_grey(read_image(path))


def check_same_size(image: str | os.PathLike, image_shape: tuple[int, ...], label: str | os.PathLike,
                    label_shape: tuple[int, ...]) -> None:
    """Check that an image and its label map have the same ``(H, W)``.

    Args:
        image: the image file (for the message).
        image_shape: its shape; only the last two entries are compared (channels first or ``H x W``).
        label: the label file.
        label_shape: its shape.

    Raises:
        DataError: naming both files and both sizes.
    """
    hw_image, hw_label = tuple(int(s) for s in image_shape[-2:]), tuple(int(s) for s in label_shape[-2:])
    if hw_image != hw_label:
        raise DataError(f"{label}: label size {hw_label} differs from image {image} size {hw_image}")


def write_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array (``H x W`` or ``H x W x 3``) as PNG atomically (temp file + rename)."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")


def read_bands(path: str | os.PathLike) -> np.ndarray:
    """Read a multi-band image ``.npy`` file: ``(C, H, W)`` float32.

    Raises:
        DataError: when the file is missing or unreadable, not 3D, not numeric or holds non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read multi-band image ({e})") from e
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected a (C, H, W) numeric array, got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: holds non-finite values (NaN or inf)")
    return arr


def read_channels(path: str | os.PathLike) -> np.ndarray:
    """Read an image of any channel count as ``(C, H, W)``: ``.npy`` by :func:`read_bands` (float32), an image file
    (:data:`IMAGE_EXTENSIONS`) by :func:`read_image` (grey ``C = 1``, RGB ``C = 3``, its own integer type).

    Raises:
        DataError: for an extension that is neither (naming the file and the supported ones), or what the two
            readers raise.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return read_bands(path)
    if suffix not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unknown image extension {suffix or '(none)'!r}; expected .npy (C, H, W) or one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}")
    arr = read_image(path)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr[..., :3], -1, 0)


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as ``.npy`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The parsed content of a JSON file.

    Args:
        path: the file.
        what: what the file is, for the error message ("datalist", "sketch statistics", ...).

    Raises:
        DataError: naming the file when it is missing, unreadable or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
