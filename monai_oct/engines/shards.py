"""Synthesis that scales out: shard runs (``--shard i/n``) write disjoint pairs, :func:`merge_synthesis` makes the set.

A shard ``i/n`` of an N-pair synthesis writes the pairs ``k`` with ``k % n == i`` (each from its stream
``sample_seed(seed, k)``, so a pair is the same bytes whichever process writes it). Shard runs are independent
processes (separate commands, possibly on other machines), each of which may itself be a torchrun job whose ranks
split the shard further. Several may write into one folder at the same time: each holds its own lock
``.lock.shard-i-of-n`` and its own manifest ``manifests/shard-i-of-n.json`` (status, generation, its indices, host,
pid, start/end time), and removes only its own temporary files. A shard run writes no ``datalist.json`` and no
set ``manifest.json``; :func:`merge_synthesis` (``monai-oct merge-synthesis OUT [SHARD_DIR ...]``) reads every
shard manifest (in ``OUT`` and in each ``SHARD_DIR``), checks them, copies the shard folders' pairs into ``OUT``
(each file atomically) and writes what an unsharded run writes at its end: ``datalist.json``, the complete
``manifest.json`` (plus ``shards``: per-shard provenance) and ``grid.png``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from monai_oct.core.datalist import write_datalist
from monai_oct.core.io import DataError, atomic_path, read_bands, read_image, read_json, read_label, write_json, write_png
from monai_oct.core.records import differences
from monai_oct.core.seeding import sample_seed
from monai_oct.core.visualise import pair_grid
from monai_oct.engines.writer import FolderLock, PairWriter, writer_for

__all__ = ["parse_shard", "shard_name", "shard_manifests", "manifest_head", "set_files", "write_set_index",
           "merge_synthesis", "MANIFEST_DIR"]

logger = logging.getLogger(__name__)

#: the folder of a synthesis folder that holds the shard manifests.
MANIFEST_DIR = "manifests"

#: the keys of a shard manifest that describe the shard run, not the set (left out of the merged manifest's top level).
SHARD_KEYS = ("status", "num_samples", "seed", "seeds", "generation", "runtime", "files", "seconds", "shard",
              "indices", "host", "pid", "processes", "started", "ended", "classes")


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``--shard``'s value as ``(i, n)``: shard ``i`` of ``n`` writes the pairs ``k`` with ``k % n == i``.

    Args:
        value: ``"i/n"``, ``[i, n]``, or None / ``"null"`` / ``""`` (the whole set).

    Returns:
        ``(i, n)`` with ``0 <= i < n``, or None.

    Raises:
        ValueError: naming the value, when it is not ``i/n`` with integers ``n >= 1`` and ``0 <= i < n``.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none")):
        return None
    parts: Sequence[Any]
    if isinstance(value, str):
        parts = value.strip().split("/")
    elif isinstance(value, (list, tuple)):
        parts = value
    else:
        parts = ()
    if len(parts) != 2 or any(isinstance(p, bool) for p in parts):
        raise ValueError(f"--shard {value!r}: expected i/n (shard i of n, e.g. 0/2), or null for the whole set")
    try:
        i, n = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError(f"--shard {value!r}: i and n must be integers (shard i of n, e.g. 0/2)") from None
    if n < 1:
        raise ValueError(f"--shard {value!r}: the number of shards n must be >= 1, got {n}")
    if not 0 <= i < n:
        raise ValueError(f"--shard {value!r}: the shard index i must be in 0..{n - 1} for n = {n}, got {i}")
    return i, n


def shard_name(shard: tuple[int, int]) -> str:
    """``shard-i-of-n``: the name of shard ``(i, n)``'s lock (``.lock.<name>``) and manifest (``manifests/<name>.json``)."""
    return f"shard-{int(shard[0])}-of-{int(shard[1])}"


def shard_manifests(folder: str | os.PathLike) -> list[Path]:
    """The shard manifests of a synthesis folder (``manifests/shard-*.json``), sorted."""
    return sorted((Path(folder) / MANIFEST_DIR).glob("shard-*.json"))


def manifest_head(writer: PairWriter, status: str, num_samples: int, seed: int, indices: Sequence[int],
                  generation: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, Any]:
    """The keys every synthesis manifest starts with (a run's, a shard's, a merged set's), in this order: ``status``,
    ``num_samples``, ``seed``, ``seeds`` (each written pair's ``sample_seed(seed, i)``), ``generation``, ``runtime``."""
    return {"status": status, "num_samples": int(num_samples), "seed": int(seed),
            "seeds": {writer.name(i): sample_seed(int(seed), i) for i in indices}, "generation": generation,
            "runtime": runtime}


def set_files(writer: PairWriter, num_samples: int) -> list[str]:
    """The files of an N-pair set, as ``manifest.json`` lists them: each pair's image, label and extra images."""
    return [f for i in range(num_samples) for f in writer.files(i)]


def write_set_index(writer: PairWriter, num_samples: int, manifest: Mapping[str, Any], num_classes: int,
                    grid_size: int = 16, records: Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write what lists a finished set: ``datalist.json`` ({"training": [...]}), ``manifest.json`` and ``grid.png``.

    ``grid.png`` shows the first ``grid_size`` pairs (image beside its label); a writer without labels
    (:class:`~monai_oct.engines.writer.BandWriter`'s C-band ``.npy`` images) gets the band mean of each image.

    Args:
        writer: the set's writer (its folder, names and extra folders).
        num_samples: N; pairs ``0..N-1`` must all exist.
        manifest: the complete manifest, written as it is.
        num_classes: C, for the grid's colours.
        grid_size: pairs shown in ``grid.png``.
        records: extra fields of each pair's datalist entry (e.g. ``{"class": "DME"}``), one per pair; None: none.

    Returns:
        ``datalist.json``.

    Raises:
        RuntimeError: when a pair is missing (names it).
    """
    out = writer.output_dir
    missing = [writer.name(i) for i in range(num_samples) if not writer.done(i)]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} pair(s) missing after synthesis, e.g. {missing[0]}")
    extra = list(records) if records is not None else [{}] * num_samples
    write_datalist(out / "datalist.json", [{**writer.item(i), **extra[i]} for i in range(num_samples)], key="training")
    write_json(out / "manifest.json", dict(manifest))
    k = min(int(grid_size), num_samples)
    if writer.EXT == ".npy":  # C-band reflectances in [0, 1] (BandWriter): the band mean
        imgs = torch.stack([torch.as_tensor(read_bands(writer.paths(i)[0])).mean(0, keepdim=True) for i in range(k)]) * 255.0
    else:
        imgs = torch.stack([_channels_first(read_image(writer.paths(i)[0])) for i in range(k)])
    labs = (torch.stack([torch.as_tensor(read_label(writer.paths(i)[1]).astype(np.int64))[None] for i in range(k)])
            if "label" in writer.KEYS else None)  # an ImageWriter's or BandWriter's set has no labels
    write_png(out / "grid.png", pair_grid(imgs / 127.5 - 1.0, labs, num_classes))
    logger.info("synthetic dataset: %d %s in %s (datalist %s, grid %s)", num_samples,
                "pairs" if labs is not None else "images", out, out / "datalist.json", out / "grid.png")
    return out / "datalist.json"


def _channels_first(arr: np.ndarray) -> torch.Tensor:
    """A read image (``H x W`` grey or ``H x W x 3`` RGB) as a float ``(C, H, W)`` tensor."""
    x = torch.as_tensor(np.asarray(arr), dtype=torch.float32)
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def _ranges(indices: Sequence[int], limit: int = 20) -> str:
    """``0-3, 7, 9-12`` (at most ``limit`` runs, then ``...``)."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    return ", ".join(text) + (", ..." if len(runs) > limit else "")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compared(manifest: Mapping[str, Any]) -> dict:
    """What must agree between the shards of one set: ``num_samples`` and ``generation``."""
    return {"num_samples": manifest.get("num_samples"), **(manifest.get("generation") or {})}


def _class_records(shards: Mapping[str, Mapping[str, Any]], num_samples: int) -> list[dict[str, Any]] | None:
    """``[{"class": name}]`` of pairs ``0..N-1`` from the shard manifests' ``classes`` (aligned with their
    ``indices``), as an unsharded run lists them; None when no shard has classes.

    Raises:
        ValueError: when some shards record classes and others do not, or a shard's ``classes`` and ``indices``
            differ in length (names the manifest).
    """
    with_classes = [e for e in shards.values() if e["manifest"].get("classes") is not None]
    if not with_classes:
        return None
    if len(with_classes) != len(shards):
        bare = sorted(str(e["path"]) for e in shards.values() if e["manifest"].get("classes") is None)
        raise ValueError(f"some shards record their pairs' classes and {', '.join(bare)} do(es) not: shards of one "
                         "class-conditional set all record them; run those shards again with this version")
    out: list[dict[str, Any]] = [{"class": None} for _ in range(num_samples)]
    for e in with_classes:
        idx, cls = e["manifest"].get("indices") or [], e["manifest"]["classes"]
        if len(idx) != len(cls):
            raise ValueError(f"{e['path']}: {len(cls)} classes for {len(idx)} indices")
        for i, c in zip(idx, cls):
            out[int(i)] = {"class": c}
    return out


def _check_readable(path: Path, label: bool) -> None:
    if path.suffix == ".npy":  # a C-band image (read_bands names the file in its errors)
        read_bands(path)
        return
    try:
        read_label(path) if label else read_image(path)
    except DataError:
        raise
    except Exception as e:  # PIL's errors name no file
        raise DataError(f"{path}: cannot be read as a PNG ({type(e).__name__}: {e})") from e


def merge_synthesis(output_dir: str | os.PathLike, shard_dirs: Sequence[str | os.PathLike] = (),
                    grid_size: int = 16) -> Path:
    """Merge shard runs into one synthetic set in ``output_dir`` and list it, as an unsharded run does at its end.

    Every shard manifest in ``output_dir`` and in each of ``shard_dirs`` is read and checked: each is complete,
    all share one ``generation`` and ``num_samples`` N (the seed, the settings, the checkpoints' sha256), and
    together they cover ``0..N-1`` exactly once (the same shard found in several folders counts once). Every
    listed file must exist and read; a file found twice (in a shard folder and in ``output_dir``, or in two
    copies of one shard) must have the same bytes. Only then are the shard folders' files copied into
    ``output_dir`` (each atomically, the label before its image; the shard folders are left as they are) with
    their shard manifests, and ``datalist.json``, ``manifest.json`` (the unsharded run's format plus
    ``shards``: per-shard provenance; ``seconds`` is the shards' sum, ``runtime`` what they share) and
    ``grid.png`` are written. Holds ``output_dir/.lock`` meanwhile.

    Args:
        output_dir: the set's folder (may hold shards itself, or be new).
        shard_dirs: other folders holding shard runs (their ``manifests/shard-*.json`` and pairs).
        grid_size: pairs shown in ``grid.png``.

    Returns:
        ``output_dir/datalist.json``.

    Raises:
        FileNotFoundError: a shard folder that does not exist.
        ValueError: no shard manifest; shards of other generations (names the keys and both files); missing,
            overlapping or out-of-range indices (lists them and the missing shards); a file present twice with
            different bytes (names both).
        RuntimeError: a shard that is not complete (names its manifest), or a live process holding ``output_dir``.
        DataError: a pair file that is missing or unreadable (names it).
    """
    out = Path(output_dir)
    folders = list(dict.fromkeys([out.resolve()] + [Path(d).resolve() for d in shard_dirs]))
    for d in folders[1:]:
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such shard folder")
    found = [(folder, p, read_json(p, "shard manifest")) for folder in folders if folder.is_dir()
             for p in shard_manifests(folder)]
    if not found:
        raise ValueError(f"no shard manifest ({MANIFEST_DIR}/shard-*.json) in {', '.join(map(str, folders))}; "
                         "run the synthesis with --shard i/n first")
    unfinished = [f"{p} (status {m.get('status')!r})" for _, p, m in found if m.get("status") != "complete"]
    if unfinished:
        raise RuntimeError(f"shard(s) not complete: {'; '.join(unfinished)}; a stopped shard resumes with its own "
                           "command (it writes only its missing pairs), then merge again")
    _, ref_path, ref = found[0]
    for _, p, m in found[1:]:
        diff = differences(_compared(ref), _compared(m))
        if diff:
            keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"shards of different generations, {ref_path} and {p}: {keys}; merge only shards made "
                             "with the same checkpoints, seed and settings")
    set_manifest = out / "manifest.json"
    if set_manifest.is_file():
        old = read_json(set_manifest, "synthesis manifest")
        diff = differences(_compared(old), _compared(ref)) if "generation" in old else {"generation": ("<absent>", "")}
        if diff:
            raise ValueError(f"{set_manifest} describes another set than the shards ({ref_path}): "
                             f"{'; '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in diff.items())}; merge into another folder")

    # one entry per shard name, with every folder holding it
    shards: dict[str, dict] = {}
    for folder, p, m in found:
        entry = shards.setdefault(p.stem, {"manifest": m, "path": p, "folders": []})
        if sorted(m.get("indices") or []) != sorted(entry["manifest"].get("indices") or []):
            raise ValueError(f"{entry['path']} and {p} are both {p.stem} but list different indices")
        entry["folders"].append(folder)
    num_samples = int(ref["num_samples"])
    owner: dict[int, str] = {}
    overlap: list[str] = []
    for name, entry in shards.items():
        for i in entry["manifest"].get("indices") or []:
            if int(i) in owner:
                overlap.append(f"{i} ({owner[int(i)]} and {name})")
            owner[int(i)] = name
    beyond = sorted(i for i in owner if not 0 <= i < num_samples)
    missing = [i for i in range(num_samples) if i not in owner]
    problems = []
    if missing:
        counts = {int(e["manifest"]["shard"].split("/")[1]) for e in shards.values() if e["manifest"].get("shard")}
        absent = ([shard_name((i, n)) for n in counts for i in range(n) if shard_name((i, n)) not in shards]
                  if len(counts) == 1 else [])
        problems.append(f"{len(missing)} of the {num_samples} indices are in no shard ({_ranges(missing)})"
                        + (f"; missing shard(s): {', '.join(absent)}" if absent else ""))
    if overlap:
        problems.append(f"indices in two shards: {', '.join(overlap[:20])}")
    if beyond:
        problems.append(f"indices beyond num_samples {num_samples}: {_ranges(beyond)}")
    if problems:
        raise ValueError(f"the shards ({', '.join(sorted(shards))}) do not cover 0..{num_samples - 1} exactly once: "
                         + "; ".join(problems))

    gen = ref["generation"]
    writer = writer_for(out, gen)
    lock = FolderLock(out)
    lock.acquire()
    try:
        copies: list[tuple[Path, Path]] = []
        here = out.resolve()
        for i in range(num_samples):
            for rel in writer.files(i):
                sources = [f / rel for f in shards[owner[i]]["folders"]]
                for src in sources:
                    if not src.is_file():
                        raise DataError(f"{src}: listed by {shards[owner[i]]['path']} but missing")
                    _check_readable(src, label=rel.startswith("labels/"))
                dst = here / rel
                held = [dst] if dst.is_file() and dst not in sources else []
                digests = {s: _digest(s) for s in dict.fromkeys(sources + held)}
                if len(set(digests.values())) > 1:
                    raise ValueError(f"{rel} differs between {' and '.join(map(str, digests))}: a file present "
                                     "twice must have the same bytes (another set's pair?)")
                if not dst.is_file():
                    copies.append((sources[0], dst))
        writer.clean()  # no shard is running (all complete): a killed copy's temporaries can go
        for src, dst in sorted(copies, key=lambda c: c[1].parent.name == "images"):  # a pair's image last, as written
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        for name, entry in shards.items():
            if here not in entry["folders"]:
                write_json(here / MANIFEST_DIR / f"{name}.json", entry["manifest"])
        runtimes = [e["manifest"].get("runtime") or {} for e in shards.values()]
        common = {k: v for k, v in runtimes[0].items() if all(r.get(k, object()) == v for r in runtimes)}
        manifest = {
            **manifest_head(writer, "complete", num_samples, ref["seed"], range(num_samples), gen, common),
            **{k: v for k, v in ref.items() if k not in SHARD_KEYS},
            "files": set_files(writer, num_samples),
            "seconds": round(sum(float(e["manifest"].get("seconds") or 0.0) for e in shards.values()), 3),
            "shards": [{"shard": e["manifest"].get("shard"), "manifest": f"{MANIFEST_DIR}/{name}.json",
                        "folders": [str(f) for f in e["folders"]], "num_pairs": len(e["manifest"].get("indices") or []),
                        **{k: e["manifest"].get(k) for k in ("host", "pid", "processes", "started", "ended", "seconds",
                                                           "runtime")}}
                       for name, e in sorted(shards.items())],
        }
        records = _class_records(shards, num_samples)
        if records is not None:
            manifest["classes"] = [r["class"] for r in records]
        datalist = write_set_index(writer, num_samples, manifest, int(gen.get("num_classes") or 10), grid_size, records)
    finally:
        lock.release()
    logger.info("merged %d shard(s) into %s: %d pairs, %d copied", len(shards), out, num_samples,
                sum(1 for _, d in copies if d.parent.name == "images"))
    return datalist
