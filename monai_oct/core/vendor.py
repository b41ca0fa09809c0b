"""Scanners' own OCT files (Heidelberg HEYEX ``.vol``, ``.e2e`` and ``.xml`` exports) -> a datalist of B-scan PNGs.

The files are parsed by ``eyepy`` (optional: ``pip install monai-oct[vendor]``); this module checks what it is given,
turns eyepy's volume into 8-bit B-scans and, where the file carries layer segmentations, into label maps of the
:data:`~monai_oct.core.labels.DUKE_DME` table, and writes them with the toolkit's atomic writers.

Layer lines -> Duke regions. HEYEX stores one row position per A-scan for each segmented line, named as eyepy's
``SEG_MAPPING`` (``ILM``, ``RNFL``, ...); a line names the lower edge of its layer (``RNFL`` = RNFL/GCL). Duke DME's
8 boundaries are taken from :data:`HEYEX_TO_DUKE`, in order:

=====  ======================  ===========
Duke   boundary                HEYEX line
=====  ======================  ===========
1      ILM                     ILM
2      NFL / GCL               RNFL
3      IPL / INL               IPL
4      INL / OPL               INL
5      OPL / ONL               OPL
6      IS myoid / ellipsoid    PR1 (EZ)
7      IS / OS                 PR2 (IZ)
8      Bruch's membrane        BM
=====  ======================  ===========

Boundaries 6 and 7 are the nearest lines HEYEX draws (its ellipsoid and interdigitation zones), not the same
anatomical definitions as Chiu et al.'s, so classes 6 (ISE) and 7 (OS-RPE) of an imported map are approximate.
HEYEX has no fluid segmentation: an imported map never holds class 9. The regions are filled by
:func:`monai_oct.core.duke.boundaries_to_label`; a column where any of the 8 lines is missing, or where two lines
cross, is :data:`~monai_oct.core.labels.UNANNOTATED` (255). A file without all 8 lines (HEYEX's automatic
segmentation often holds only ILM and BM) gives images without labels, and the result says why.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from monai_oct.core.datalist import write_datalist
from monai_oct.core.duke import boundaries_to_label
from monai_oct.core.io import DataError, write_png

__all__ = [
    "VENDOR_FORMATS",
    "HEYEX_TO_DUKE",
    "VendorVolume",
    "VendorImport",
    "check_heyex_vol_header",
    "read_vendor_volume",
    "heyex_layers_to_labels",
    "import_vendor",
]

#: file extension -> (format name, eyepy import function in ``eyepy.io``).
VENDOR_FORMATS: dict[str, tuple[str, str]] = {
    ".vol": ("Heidelberg HEYEX VOL", "import_heyex_vol"),
    ".e2e": ("Heidelberg HEYEX E2E", "import_heyex_e2e"),
    ".xml": ("Heidelberg HEYEX XML export", "import_heyex_xml"),
}

#: HEYEX line names (eyepy's ``SEG_MAPPING``) of Duke DME's boundaries 1..8 (see the module docstring).
HEYEX_TO_DUKE: tuple[str, ...] = ("ILM", "RNFL", "IPL", "INL", "OPL", "PR1", "PR2", "BM")

#: HEYEX VOL file header (2048 bytes, little endian): the fields read before eyepy parses the file, then padding.
_VOL_HEADER = struct.Struct("<12s3I3d2I2dId4sQiI")
_VOL_HEADER_SIZE = 2048
_VOL_VERSIONS = (b"HSF-OCT-", b"ep-v")  # HEYEX's own (101, 102, 103) and what eyepy's writer puts there

_INSTALL = "pip install monai-oct[vendor]"


@dataclass
class VendorVolume:
    """The B-scans of one vendor file.

    Attributes:
        path: the file.
        format: its format's name (``"Heidelberg HEYEX VOL"``).
        bscans: ``(N, H, W)`` uint8 B-scans.
        layers: line name -> ``(N, W)`` float row positions (0-based, NaN where not segmented).
        meta: scanner fields kept in the datalist (laterality, pixel size in mm).
    """

    path: Path
    format: str
    bscans: np.ndarray
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class VendorImport:
    """What :func:`import_vendor` wrote: the datalist, and per file its B-scans and labelled B-scans (or why none)."""

    datalist: Path
    files: list[dict[str, Any]] = field(default_factory=list)

    @property
    def num_bscans(self) -> int:
        return sum(f["bscans"] for f in self.files)

    @property
    def num_labelled(self) -> int:
        return sum(f["labelled"] for f in self.files)

    def summary(self) -> str:
        """One line per file and a total."""
        lines = [f"{f['path']}: {f['format']}, {f['bscans']} B-scans, {f['labelled']} with layer labels"
                 + (f" ({f['why_unlabelled']})" if f.get("why_unlabelled") else "") for f in self.files]
        lines.append(f"wrote {self.num_bscans} B-scans ({self.num_labelled} labelled) and {self.datalist}")
        return "\n".join(lines)


class _QuietLayerCount(logging.Filter):
    """Drops eyepy's "less layers than expected" warning: a HEYEX file holds 17 lines, eyepy names 19 (the two extra
    are the angiography slabs' IPL+ / IPL-), so it fires for every ordinary .vol file and means nothing here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "less layers than expected" not in record.getMessage()


logging.getLogger("eyepy.io.HeVolReader").addFilter(_QuietLayerCount())


def _eyepy_io():
    """``eyepy.io``, or an ImportError that says how to install it."""
    try:
        import eyepy.io
    except ImportError as e:
        raise ImportError(f"reading scanners' OCT files (.vol, .e2e, .xml) needs eyepy: {_INSTALL} ({e})") from e
    return eyepy.io


def check_heyex_vol_header(path: str | os.PathLike) -> dict[str, Any]:
    """Check a HEYEX VOL file's header and size before it is parsed (eyepy reads whatever the bytes say).

    The layout (Heidelberg's "VOL file format" specification, as eyepy reads it): a 2048-byte header
    (version ``HSF-OCT-1xx``, A-scans per B-scan ``size_x``, B-scans ``n_bscans``, rows ``size_y``, ...,
    SLO size, ``bscan_hdr_size``), the SLO image (``size_x_slo * size_y_slo`` bytes), then per B-scan a
    ``bscan_hdr_size``-byte header (with the layer lines) followed by ``size_y * size_x`` float32 values.

    Args:
        path: the ``.vol`` file.

    Returns:
        the header fields checked: ``version``, ``size_x``, ``n_bscans``, ``size_y``, ``bscan_hdr_size``.

    Raises:
        DataError: naming the file when it is shorter than a header, its version is not HEYEX VOL's, a size is
            zero or implausible, or the file is shorter than the header says.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_VOL_HEADER_SIZE)
    if len(head) < _VOL_HEADER_SIZE:
        raise DataError(f"{path}: corrupt HEYEX VOL file: {len(head)} bytes, shorter than the {_VOL_HEADER_SIZE}-byte header")
    (version, size_x, n_bscans, size_y, _sx, _dist, _sy, slo_x, slo_y, _sxs, _sys, _field, _focus, _pos, _time,
     pattern, hdr) = _VOL_HEADER.unpack_from(head)
    if not version.startswith(_VOL_VERSIONS):
        shown = version.rstrip(b"\x00").decode("ascii", "replace")
        raise DataError(f"{path}: not a HEYEX VOL file this toolkit reads: version {shown!r} "
                        f"(expected 'HSF-OCT-1xx')")
    sizes = {"size_x": size_x, "n_bscans": n_bscans, "size_y": size_y, "size_x_slo": slo_x, "size_y_slo": slo_y}
    bad = {k: v for k, v in sizes.items() if not 0 < v <= 1 << 16}
    if bad or hdr < 256:
        raise DataError(f"{path}: corrupt HEYEX VOL header: {bad or {'bscan_hdr_size': hdr}} out of range")
    expected = _VOL_HEADER_SIZE + slo_x * slo_y + n_bscans * (hdr + 4 * size_x * size_y)
    if size < expected:
        raise DataError(f"{path}: corrupt or truncated HEYEX VOL file: its header ({n_bscans} B-scans of "
                        f"{size_y}x{size_x}, SLO {slo_y}x{slo_x}) needs {expected} bytes, the file has {size}")
    return {"version": version.rstrip(b"\x00").decode("ascii", "replace"), "size_x": size_x, "n_bscans": n_bscans,
            "size_y": size_y, "bscan_hdr_size": hdr, "scan_pattern": pattern}


def _to_uint8(data: np.ndarray) -> np.ndarray:
    """eyepy's B-scans as uint8: uint8 kept; floats in [0, 1] (eyepy's VOL intensity transform) scaled by 255."""
    data = np.asarray(data)
    if data.dtype == np.uint8:
        return data
    data = np.nan_to_num(data.astype(np.float64))
    if data.max(initial=0.0) <= 1.0:
        data = data * 255.0
    return np.clip(np.round(data), 0, 255).astype(np.uint8)


def read_vendor_volume(path: str | os.PathLike) -> VendorVolume:
    """Read one vendor file with eyepy: its B-scans as uint8 and its layer lines.

    Args:
        path: a ``.vol``, ``.e2e`` or ``.xml`` file (:data:`VENDOR_FORMATS`).

    Returns:
        the :class:`VendorVolume`.

    Raises:
        DataError: naming the file when it is missing, its extension is not one of :data:`VENDOR_FORMATS`, its
            header is corrupt (``.vol``, :func:`check_heyex_vol_header`) or eyepy cannot read it.
        ImportError: when eyepy is not installed (the message says ``pip install monai-oct[vendor]``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    ext = path.suffix.lower()
    if ext not in VENDOR_FORMATS:
        raise DataError(f"{path}: unknown scanner file type {path.suffix!r}; readable: {', '.join(VENDOR_FORMATS)} "
                        "(Heidelberg HEYEX)")
    name, reader = VENDOR_FORMATS[ext]
    if ext == ".vol":
        check_heyex_vol_header(path)
    io = _eyepy_io()
    try:
        volume = getattr(io, reader)(path)
        bscans = _to_uint8(np.stack([np.asarray(b.data) for b in volume]))
        layers = {n: np.asarray(a.data, dtype=np.float64) for n, a in volume.layers.items()}
        meta = {"laterality": str(volume.meta["laterality"]) if "laterality" in volume.meta else None,
                "scale_x_mm": float(volume.scale_x), "scale_y_mm": float(volume.scale_y)}
    except Exception as e:  # eyepy and construct raise many types for files they cannot parse
        raise DataError(f"{path}: cannot read {name} file ({type(e).__name__}: {e})") from e
    if bscans.ndim != 3 or min(bscans.shape) == 0:
        raise DataError(f"{path}: {name} file holds no B-scans (shape {bscans.shape})")
    return VendorVolume(path=path, format=name, bscans=bscans, layers=layers, meta=meta)


def heyex_layers_to_labels(layers: dict[str, np.ndarray], shape: tuple[int, int, int]) -> tuple[np.ndarray | None, str]:
    """Duke DME label maps from HEYEX layer lines (:data:`HEYEX_TO_DUKE`, see the module docstring).

    Args:
        layers: line name -> ``(N, W)`` 0-based row positions, NaN where not segmented.
        shape: ``(N, H, W)`` of the B-scans.

    Returns:
        ``(labels, why)``: ``(N, H, W)`` uint8 maps (255 in columns missing a line or with crossing lines) and
        ``""``; or ``None`` and the reason when one of the 8 lines is absent or never drawn (B-scans without any
        segmented column get an all-255 map, see :func:`import_vendor`).
    """
    n, h, w = shape
    present = {k: v for k, v in layers.items() if np.isfinite(v).any()}  # a line HEYEX never drew is all NaN
    missing = [k for k in HEYEX_TO_DUKE if k not in present]
    if missing:
        return None, (f"no {', '.join(missing)} line{'s' if len(missing) > 1 else ''}; "
                      f"found {', '.join(sorted(present)) or 'none'}")
    bounds = np.stack([layers[k] for k in HEYEX_TO_DUKE], axis=1)  # N x 8 x W
    if bounds.shape != (n, len(HEYEX_TO_DUKE), w):
        return None, f"layer lines of shape {bounds.shape[::2]} do not match the B-scans {(n, w)}"
    crossing = (np.diff(bounds, axis=1) < 0).any(axis=1)  # N x W
    bounds = np.where(crossing[:, None, :], np.nan, bounds)
    labels = np.stack([boundaries_to_label(bounds[i] + 1.0, h) for i in range(n)])  # 1-based rows, as Duke's
    return labels, ""


def import_vendor(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, key: str = "test",
                  labels: bool = True) -> VendorImport:
    """Convert vendor files into ``out_dir/images/*.png`` (+ ``labels/*.png``) and ``out_dir/datalist.json``.

    Every file is read and checked before anything is written; each PNG and the datalist (written last) are
    written atomically. B-scan ``i`` of ``NAME.vol`` becomes ``NAME_{i:03d}.png``; its datalist item holds
    ``image``, ``label`` (when the file has all 8 lines), ``volume`` (the file), ``bscan`` (``i``) and the
    scanner's ``laterality`` and pixel size. B-scans of a labelled file that hold no segmented column are left out
    of ``label`` (listed with the image only).

    Args:
        paths: ``.vol`` / ``.e2e`` / ``.xml`` files.
        out_dir: output folder.
        key: the datalist's list name (``"test"``: what the segmentation bundle's evaluate.yaml reads;
            ``"train"`` to train on it).
        labels: write label maps where the files have layer lines.

    Returns:
        a :class:`VendorImport` (datalist path, per-file counts).

    Raises:
        DataError: naming the file (see :func:`read_vendor_volume`), or two files of the same name.
        ImportError: when eyepy is missing.
    """
    out_dir = Path(out_dir)
    if not paths:
        raise DataError("no vendor files given")
    stems: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in stems:
            raise DataError(f"{p}: same name as {stems[p.stem]}; B-scan PNGs are named after the file, rename one")
        stems[p.stem] = p
    volumes = []
    for p in stems.values():
        vol = read_vendor_volume(p)
        lab, why = heyex_layers_to_labels(vol.layers, vol.bscans.shape) if labels else (None, "labels not asked for")
        volumes.append((vol, lab, why))
    result = VendorImport(datalist=out_dir / "datalist.json")
    items = []
    for vol, lab, why in volumes:
        stem, labelled = vol.path.stem, 0
        for i, image in enumerate(vol.bscans):
            name = f"{stem}_{i:03d}.png"
            item: dict[str, Any] = {"image": str(out_dir / "images" / name)}
            write_png(item["image"], image)
            if lab is not None and (lab[i] != 255).any():
                item["label"] = str(out_dir / "labels" / name)
                write_png(item["label"], lab[i])
                labelled += 1
            items.append({**item, "volume": str(vol.path.resolve()), "bscan": i, **vol.meta})
        result.files.append({"path": str(vol.path), "format": vol.format, "bscans": len(vol.bscans),
                             "labelled": labelled, "why_unlabelled": why})
    write_datalist(result.datalist, items, key=key)
    return result
