"""Writing a synthetic dataset pair by pair: each file atomically, the label before its image; and the lock
that keeps a second synthesis out of a folder being written."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_oct.core.io import remove_temporaries, temp_path, write_npy, write_png
from monai_oct.core.visualise import image_to_uint8

__all__ = ["PairWriter", "ImageWriter", "BandWriter", "set_writer", "writer_for", "FolderLock"]


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
    """Write (image, label) pairs as ``images/<name>.png`` (8-bit grey, or RGB for 3-channel images) and
    ``labels/<name>.png`` (class ids).

    A pair is complete when both files exist; each is written to a temporary file and renamed, the label
    first, so an interrupted write leaves at most a label without its image (redone on resume).

    Extra per-sample images (``extra_dirs``, e.g. ``("sketches",)``: the sketch each image was drawn from) are
    written before the label, as 8-bit PNGs of their [-1, 1] values (nearest resize), so a pair whose image
    exists has all its files.

    Args:
        output_dir: dataset folder.
        output_size: ``[H, W]`` to resize what is written to (None: the labels' size, i.e. the generated size,
            or a label source's finer label size, the image enlarged to it). A label that has this size already
            is written untouched; others are resized nearest-exact.
        prefix: file name prefix; names are ``<prefix><index:05d>.png``.
        extra_dirs: sub-folders of extra images written with each pair.
        datalist_extras: those of ``extra_dirs`` whose files ``datalist.json`` lists in each item, under the
            folder's name (e.g. ``("fov",)``: a fundus pair's field of view, which segmentation reads).
    """

    #: the datalist keys of a sample's files and the folders they are written to (in write order's reverse: a sample
    #: is complete when all exist), and the files' extension; a writer of other files (e.g. C-band ``.npy`` images
    #: without labels, :class:`BandWriter`) changes these three, not the methods
    KEYS: tuple[str, ...] = ("image", "label")
    SUBDIRS: tuple[str, ...] = ("images", "labels")
    EXT = ".png"

    def __init__(self, output_dir: str | os.PathLike, output_size: Sequence[int] | None = None, prefix: str = "synth_",
                 extra_dirs: Sequence[str] = (), datalist_extras: Sequence[str] = ()) -> None:
        self.output_dir = Path(output_dir)
        self.output_size = None if output_size is None else [int(s) for s in output_size]
        self.prefix = prefix
        self.extra_dirs = tuple(str(d) for d in extra_dirs or ())
        bad = [d for d in self.extra_dirs if d in self.SUBDIRS or not d or "/" in d]
        if bad:
            raise ValueError(f"extra_dirs must be plain folder names other than images/labels, got {bad}")
        self.datalist_extras = tuple(str(d) for d in datalist_extras or ())
        if not set(self.datalist_extras) <= set(self.extra_dirs):
            raise ValueError(f"datalist_extras {list(self.datalist_extras)} must be among extra_dirs {list(self.extra_dirs)}")

    def name(self, index: int, prefix: str | None = None) -> str:
        """File name of sample ``index`` (with ``prefix`` instead of the writer's, e.g. a replaced set's)."""
        return f"{self.prefix if prefix is None else prefix}{int(index):05d}{self.EXT}"

    def paths(self, index: int) -> tuple[Path, ...]:
        """``(image path, label path)`` of sample ``index`` (one path per :attr:`SUBDIRS`)."""
        n = self.name(index)
        return tuple(self.output_dir / sub / n for sub in self.SUBDIRS)

    def extra_path(self, sub: str, index: int) -> Path:
        """Path of sample ``index``'s extra image in ``sub``."""
        return self.output_dir / sub / self.name(index)

    def done(self, index: int) -> bool:
        """Whether every file of sample ``index`` exists."""
        return all(p.is_file() for p in self.paths(index)) and all(self.extra_path(d, index).is_file() for d in self.extra_dirs)

    def files(self, index: int) -> list[str]:
        """Every file of sample ``index``, relative to ``output_dir``: image, label, then the extra images."""
        n = self.name(index)
        return [f"{sub}/{n}" for sub in (*self.SUBDIRS, *self.extra_dirs)]

    def item(self, index: int) -> dict[str, str]:
        """Sample ``index``'s datalist item: ``{"image", "label"}`` (:attr:`KEYS`) and the ``datalist_extras``
        (absolute paths)."""
        return {**{k: str(p) for k, p in zip(self.KEYS, self.paths(index))},
                **{d: str(self.extra_path(d, index)) for d in self.datalist_extras}}

    def describe(self) -> dict:
        """What of the writer determines the files: ``{"output_size", "prefix", "extra_dirs"}`` (and
        ``datalist_extras`` when there are some, so sets written before it existed compare equal)."""
        out = {"output_size": self.output_size, "prefix": self.prefix, "extra_dirs": list(self.extra_dirs)}
        if self.datalist_extras:
            out["datalist_extras"] = list(self.datalist_extras)
        return out

    def clear(self, extra_dirs: Sequence[str] = (), prefix: str | None = None,
              indices: Sequence[int] | None = None) -> int:
        """Remove every pair file and temporary, before a synthesis that replaces the folder's set.

        Only pair files go (``<prefix>*.png``, with this writer's prefix and ``prefix``, in images/, labels/, this
        writer's extra folders and ``extra_dirs``), nothing else a user keeps in the folder.

        Args:
            extra_dirs: extra folders of the set being replaced.
            prefix: file name prefix of the set being replaced.
            indices: remove only these samples' files (a shard's, beside other shards writing theirs).

        Returns:
            how many files were removed.
        """
        n = self.clean(indices)
        for sub in dict.fromkeys((*self.SUBDIRS, *self.extra_dirs, *extra_dirs)):
            for pre in dict.fromkeys((self.prefix, prefix or self.prefix)):
                if indices is None:
                    found = list((self.output_dir / str(sub)).glob(f"{pre}*{self.EXT}"))
                else:
                    found = [self.output_dir / str(sub) / self.name(i, pre) for i in indices]
                for p in found:
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        n += 1
        return n

    def clean(self, indices: Sequence[int] | None = None) -> int:
        """Remove temporary files a killed run left behind; returns how many.

        Args:
            indices: only these samples' temporaries (a shard must not take another shard's half-written file
                away); None: every temporary of the folder.
        """
        subs = ("", "images", "labels", *self.extra_dirs)
        if indices is None:
            return sum(remove_temporaries(self.output_dir / sub) for sub in subs)
        n = 0
        for sub in subs[1:]:
            for i in indices:
                tmp = temp_path(self.output_dir / sub / self.name(i))
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    n += 1
        return n

    def write(self, indices: Sequence[int], images: torch.Tensor, labels: torch.Tensor,
              extras: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write a batch: ``images (B, 1 or 3, H, W)`` in [-1, 1], ``labels (B, 1, H, W)`` class ids, and
        ``extras`` (``{folder: (B, 1, H, W) in [-1, 1]}``, one entry per ``extra_dirs``).

        Raises:
            ValueError: when ``extras`` does not match ``extra_dirs``.
        """
        extras = dict(extras or {})
        if set(extras) != set(self.extra_dirs):
            raise ValueError(f"extra images {sorted(extras)} do not match the writer's extra_dirs {list(self.extra_dirs)}")
        size = self.output_size or list(labels.shape[-2:])  # a pair's image and label always share a size
        images = _resize(images.float().cpu(), size, label=False)
        labels = _resize(labels.cpu(), size, label=True)
        img_u8 = image_to_uint8(images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0])
        lab_u8 = labels[:, 0].numpy().astype(np.uint8)
        ext_u8 = {d: image_to_uint8(_resize(x.float().cpu(), size, label=False, nearest=True)[:, 0])
                  for d, x in extras.items()}
        for k, i in enumerate(indices):
            for d, x in ext_u8.items():
                write_png(self.extra_path(d, i), x[k])
            img_path, lab_path = self.paths(i)
            write_png(lab_path, lab_u8[k])
            write_png(img_path, img_u8[k])


class ImageWriter(PairWriter):
    """Write images without labels as ``images/<name>.png`` (a class-only synthesis, whose images are conditioned
    on no label map: :class:`~monai_oct.recipes.sources.NoMaskSource`); each file atomically. A sample is complete
    when its image exists; its datalist item is ``{"image"}``.

    Args:
        output_dir: dataset folder.
        output_size: ``[H, W]`` to resize the images to (area when shrinking, bilinear when growing; None: as
            generated).
        prefix: file name prefix.
    """

    KEYS = ("image",)
    SUBDIRS = ("images",)

    def __init__(self, output_dir: str | os.PathLike, output_size: Sequence[int] | None = None,
                 prefix: str = "synth_") -> None:
        super().__init__(output_dir, output_size, prefix)

    def describe(self) -> dict:
        """What of the writer determines the files: ``{"output_size", "prefix", "labels": False}``."""
        return {"output_size": self.output_size, "prefix": self.prefix, "labels": False}

    def write(self, indices: Sequence[int], images: torch.Tensor, labels: torch.Tensor | None = None,
              extras: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write a batch of ``(B, 1 or 3, H, W)`` images in [-1, 1] (``labels`` and ``extras`` unused)."""
        images = _resize(images.float().cpu(), self.output_size, label=False)
        img_u8 = image_to_uint8(images.permute(0, 2, 3, 1) if images.shape[1] == 3 else images[:, 0])
        for k, i in enumerate(indices):
            write_png(self.paths(i)[0], img_u8[k])


class BandWriter(ImageWriter):
    """Write C-band images as ``images/<prefix><index:05d>.npy``, float32 ``(C, H, W)`` in [0, 1], atomically.

    A sample is complete when its ``.npy`` exists (no label: generation is unconditional).

    Args:
        output_dir: dataset folder.
        output_size: ``[H, W]`` to resize to (area when shrinking, bilinear when growing; None: as generated).
        prefix: file name prefix.
    """

    EXT = ".npy"

    def describe(self) -> dict:
        """What of the writer determines the files: ``{"output_size", "prefix", "format": "npy"}``."""
        return {"output_size": self.output_size, "prefix": self.prefix, "format": "npy"}

    def write(self, indices: Sequence[int], images: torch.Tensor, labels: torch.Tensor | None = None,
              extras: Any = None) -> None:
        """Write a batch of ``(B, C, H, W)`` images in [-1, 1] as reflectances in [0, 1] (``labels`` unused)."""
        x = _resize(images.float().cpu(), self.output_size, label=False)
        x = ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).numpy().astype(np.float32)
        for k, i in enumerate(indices):
            write_npy(self.paths(i)[0], x[k])


def set_writer(output_dir: str | os.PathLike, output_size: Sequence[int] | None = None, labels: bool = True,
               **kwargs) -> PairWriter:
    """The writer of a synthetic set: :class:`PairWriter` (image and label) or, without ``labels``,
    :class:`ImageWriter` (images only); ``kwargs`` go to :class:`PairWriter`."""
    if labels:
        return PairWriter(output_dir, output_size, **kwargs)
    return ImageWriter(output_dir, output_size, **kwargs)


def writer_for(output_dir: str | os.PathLike, generation: Mapping) -> PairWriter:
    """The writer of a set from its manifest's ``generation`` record (what :meth:`PairWriter.describe` put there):
    a :class:`BandWriter` for ``format: npy`` (C-band images), an :class:`ImageWriter` for ``labels: false``
    (class-only PNG images), else a :class:`PairWriter` with the set's output size, prefix and extra folders (what
    ``merge-synthesis`` needs to find every file)."""
    size, prefix = generation.get("output_size"), generation.get("prefix", "synth_")
    if generation.get("format") == "npy":
        return BandWriter(output_dir, size, prefix)
    if generation.get("labels") is False:
        return ImageWriter(output_dir, size, prefix)
    return PairWriter(output_dir, size, prefix, generation.get("extra_dirs") or (), generation.get("datalist_extras") or ())


class FolderLock:
    """An exclusive lock on a folder: ``<folder>/.lock``, created with ``O_EXCL``, holding ``"<pid> <host>"``.

    A second process that finds a live owner's lock stops with a message naming the folder and the pid; a lock
    left by a dead process of this host (a killed run) is taken over. Written here rather than with
    ``fcntl.flock`` so that the lock names its owner and works the same where ``flock`` is advisory-only or
    missing (network file systems, Windows); a lock from another host is treated as live.

    Args:
        folder: the folder to lock (created).
        name: the lock file's name.
    """

    def __init__(self, folder: str | os.PathLike, name: str = ".lock") -> None:
        self.folder = Path(folder)
        self.path = self.folder / name
        self.held = False

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except OSError as e:
            return e.errno == errno.EPERM  # exists, owned by someone else
        return True

    def _owner(self) -> tuple[int | None, str]:
        try:
            parts = self.path.read_text().split()
        except OSError:
            return None, ""
        try:
            return int(parts[0]), parts[1] if len(parts) > 1 else socket.gethostname()
        except (IndexError, ValueError):
            return None, ""

    def acquire(self) -> "FolderLock":
        """Take the lock (or a stale one over).

        Raises:
            RuntimeError: when a live process holds it (names the folder, the pid and the lock file).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        took_over = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                pid, host = self._owner()
                here = host == socket.gethostname()
                if not took_over and pid is not None and here and pid != os.getpid() and not self._alive(pid):
                    if self._owner() == (pid, host):  # still the dead owner's lock: take it over, once
                        self.path.unlink(missing_ok=True)
                    took_over = True
                    continue
                who = "a process" if pid is None else f"pid {pid}" + ("" if here else f" on {host}")
                raise RuntimeError(f"{self.folder} is being written by another synthesis ({who}, lock {self.path}); "
                                   f"wait for it to finish, or delete {self.path} if that process is not running") from None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        self.held = True
        return self

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
