"""Synthesis of an annotated dataset: label maps (mask DDPM + DMC, or a datalist) -> conditioned images.

:class:`SamplerEngine` is an Ignite engine whose iterations are batches of sample indices. Sample ``i`` of a
run seeded ``seed`` draws from one generator seeded :func:`~monai_oct.core.seeding.sample_seed` ``(seed, i)``
(never ``seed + i``, so runs with different seeds share no sample): the label source draws the label map with
it (the mask DDPM's noise, then DMC), the image sampler continues drawing from it for the image, and the pair
is written at once by :class:`PairWriter` (label PNG of class ids, then image PNG, each atomically).

A synthesis folder never holds a set the manifest does not describe:

- the run holds ``output_dir/.lock`` (:class:`FolderLock`): a second run into the folder stops, naming the pid;
- ``manifest.json`` is written at the start (``"status": "running"``, the seed, the per-sample seeds and
  ``generation``: every setting that determines the pairs, with the checkpoints' sha256) and completed at the
  end (``"status": "complete"``, the files, the time);
- a rerun into a folder with a manifest compares its ``generation`` with the recorded one: equal -> only the
  missing pairs are written (a killed run restarted loses and duplicates nothing, and each pair is identical
  to what an uninterrupted run writes; ``num_samples`` may grow); different -> it stops, naming the differing
  keys, unless ``overwrite``, which first removes the folder's pairs.

Across processes (a run started by torchrun, see :mod:`monai_oct.engines.distributed`): rank 0 takes the lock,
checks the folder, removes a killed run's temporary files and writes the "running" manifest while the other ranks
wait at a barrier; then rank ``r`` of ``W`` writes the missing pairs ``i`` with ``i % W == r``; after a second
barrier rank 0 writes the datalist, the completed manifest and the grid. Sample ``i`` draws from the stream
``(seed, i)`` whichever rank writes it, so a W-process set is byte for byte the 1-process set, and a killed
multi-process run started again (with any number of processes) writes exactly the missing pairs.

Across commands (``shard="i/n"``, :mod:`monai_oct.engines.shards`): the run writes only the pairs ``k`` with
``k % n == i`` (under torchrun its ranks split them further), holds ``.lock.shard-i-of-n`` and records itself in
``manifests/shard-i-of-n.json`` (its generation, indices, host, pid, start and end, status), so shard runs may
share one folder at the same time; it writes no datalist or set manifest: ``monai-oct merge-synthesis`` does, once
every shard is complete. A shard resumed writes only its missing pairs; one whose generation differs from its
own record stops (or, with ``overwrite``, replaces its own pairs only), and one that differs from another shard's
record in the folder stops, naming that file.

A label source returns ``{"label": (B, 1, h, w) ids}`` and may add ``"cond"`` (its own image condition, e.g.
the sketch of :class:`~monai_oct.recipes.sources.SketchSource`; otherwise the engine encodes the label map) and
``"extras"`` (images written beside each pair, e.g. ``sketches/``). ``(h, w)`` is the source's label size, which
may be finer than ``image_size`` (labels at the written size, the image UNet smaller): the engine then conditions
on the label's encoding area-averaged to ``image_size``
(:func:`~monai_oct.transforms.encoding.encode_mask_resized`: a boundary between two of the network's pixels
is a fraction, not a shifted edge), as stage 3 trained with ``label_size``, and the writer writes the label at
its own size with the image enlarged to it. A source of no label maps (class-only synthesis,
:class:`~monai_oct.recipes.sources.NoMaskSource`) returns only ``"cond"`` (the "no mask" zeros), and its writer
(:class:`~monai_oct.engines.writer.ImageWriter`) writes images only.

Classes (a class-conditioned image UNet, :mod:`monai_oct.core.classes`): sample ``i``'s class is ``class_ids[i]``
when the engine is given a plan (``--class_name`` / ``class_samples``), else the label source's ``class_of(i)``
when it has one (the ``class`` of a label datalist's item), else none (the null class). The class goes to the
sampler as ``class_labels`` and is recorded with the pair: ``"class"`` in its ``datalist.json`` entry and the
manifest's ``"classes"`` (one name per pair). A set without classes is written exactly as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn

from monai_oct.core.classes import ClassTable
from monai_oct.core.io import read_json, write_json
from monai_oct.core.labels import UNANNOTATED
from monai_oct.core.records import differences, plain
from monai_oct.core.seeding import sample_generators, sample_seed
from monai_oct.engines.diffusion import null_class_id
from monai_oct.engines.distributed import barrier, get_rank, get_world_size, is_main_process
from monai_oct.engines.sampler import DiffusionSampler
from monai_oct.engines.shards import (MANIFEST_DIR, manifest_head, parse_shard, set_files, shard_manifests, shard_name,
                                      write_set_index)
from monai_oct.engines.writer import FolderLock, PairWriter
from monai_oct.networks.diffusion import check_image_size
from monai_oct.transforms.encoding import encode_mask_resized

__all__ = ["SamplerEngine"]

logger = logging.getLogger(__name__)


class SamplerEngine(Engine):
    """Generate N (label, image) pairs in batches and write each pair as soon as it exists.

    Args:
        num_samples: N.
        label_source: ``(indices, generators, device) -> {"label": (B, 1, h, w) ids, optional "cond", "extras"}``
            (``(h, w)`` the label size: ``image_size`` or finer)
            (:class:`~monai_oct.recipes.sources.MaskSampler`, ``LabelBank``, ``SketchSource``).
        image_network: the mask-conditioned image UNet (stage 3).
        image_sampler: its sampler.
        image_size: ``[H, W]`` generated.
        num_classes: C.
        writer: the :class:`PairWriter`.
        encoding: condition encoding of the image UNet (``"onehot"`` or ``"scalar"``; a source's ``"cond"`` wins).
        batch_size: samples per iteration (does not change the pairs).
        seed: sample ``i`` uses the generator seeded ``sample_seed(seed, i)`` (label, then image).
        device: where to sample.
        progress: show a progress bar (rank 0 only in a multi-process run).
        manifest: extra entries for ``manifest.json`` (``checkpoints``: ``{name: path}``, hashed into
            ``generation``; anything else is recorded as it is).
        config: the parsed config values that determine the pairs beyond what the engine reads off its parts
            (network widths, schedule, label-source settings, ...); recorded as ``generation["config"]`` and
            compared on a rerun.
        runtime: settings recorded but not compared (device, threads, ...).
        overwrite: replace a set made with other settings (its pairs are removed first) instead of stopping.
        grid_size: pairs shown in ``grid.png``.
        shard: ``"i/n"`` (or ``[i, n]``): write only the pairs ``k % n == i``, recorded in
            ``manifests/shard-i-of-n.json``, for ``monai-oct merge-synthesis`` to list; None: the whole set.
        class_table: the classes of a class-conditioned image UNet (names written with each pair).
        class_ids: the class id of every sample (``len == num_samples``; :func:`~monai_oct.core.classes.class_plan`);
            None: the label source's ``class_of(i)`` where it has one, else no class.
        image_channels: channels of the generated images (1 grey B-scans, 3 RGB fundus photographs).

    A label source may also return ``"fov"``, a ``(B, 1, h, w)`` bool field of view (fundus): the condition is
    "no class" outside it (the labels encoded as :data:`~monai_oct.core.labels.UNANNOTATED` there, 0.0 in every
    one-hot channel, as the training labels are outside a photograph's FOV) and the generated images are set to
    black (-1) outside it, as real photographs are; the written label maps keep the source's ids.

    Raises:
        ValueError: a bad ``num_samples``, ``batch_size``, ``seed`` or ``shard`` (names the value); class ids of
            another count than ``num_samples``, or without ``class_table``, or for an image UNet without class
            embeddings.
    """

    def __init__(self, num_samples: int, label_source: Callable, image_network: nn.Module, image_sampler: DiffusionSampler,
                 image_size: Sequence[int], num_classes: int, writer: PairWriter, encoding: str = "onehot",
                 batch_size: int = 8, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
                 manifest: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 runtime: Mapping[str, Any] | None = None, overwrite: bool = False, grid_size: int = 16,
                 shard: str | Sequence[int] | None = None, class_table: ClassTable | None = None,
                 class_ids: Sequence[int] | None = None, image_channels: int = 1) -> None:
        super().__init__(self._iteration)
        self.image_channels = int(image_channels)
        if int(num_samples) < 1 or int(batch_size) < 1:
            raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.num_samples, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.label_source, self.image_network, self.image_sampler = label_source, image_network.eval(), image_sampler
        self.image_size = [int(s) for s in image_size]
        check_image_size(image_network, self.image_size)
        self.num_classes, self.encoding, self.writer = int(num_classes), encoding, writer
        self.device = torch.device(device)
        self.extra_manifest = dict(manifest or {})
        self.config, self.runtime = dict(config or {}), dict(runtime or {})
        self.overwrite = bool(overwrite)
        self.grid_size = int(grid_size)
        self.skipped = 0
        self.shard = parse_shard(shard)
        self.class_table = class_table
        self.class_ids = None if class_ids is None else [int(c) for c in class_ids]
        if self.class_ids is not None:
            if len(self.class_ids) != self.num_samples or class_table is None:
                raise ValueError(f"class_ids: {len(self.class_ids)} ids (needs {self.num_samples}, one per sample, and a "
                                 f"class_table; got {class_table!r})")
            if null_class_id(image_network) is None:
                raise ValueError("class_ids given, but the image UNet has no class embeddings (trained without classes)")
        self.lock = FolderLock(writer.output_dir, ".lock" if self.shard is None else f".lock.{shard_name(self.shard)}")
        if progress and is_main_process():
            from ignite.handlers import ProgressBar

            ProgressBar(persist=True, desc="synthesis").attach(self)

    @property
    def manifest_path(self) -> Path:
        """``output_dir/manifest.json``, or a shard's ``output_dir/manifests/shard-i-of-n.json``."""
        if self.shard is not None:
            return self.writer.output_dir / MANIFEST_DIR / f"{shard_name(self.shard)}.json"
        return self.writer.output_dir / "manifest.json"

    def indices(self, num_samples: int | None = None) -> range:
        """The indices this run writes, of ``range(num_samples)`` (default N): all, or the shard's ``k % n == i``."""
        i, n = self.shard or (0, 1)
        return range(i, self.num_samples if num_samples is None else int(num_samples), n)

    def _own_indices(self) -> list[int] | None:
        """The indices whose files this run may clean or clear: None (every file) without a shard."""
        return None if self.shard is None else list(self.indices())

    def generation(self) -> dict:
        """Every setting that determines the pairs (besides ``num_samples``), as recorded and compared.

        Read off the engine's parts (seed, sizes, encoding, the sampler, the writer, the checkpoints' sha256)
        plus ``config``; ``batch_size`` and the ``runtime`` entries are left out (they do not change the pairs).
        """
        s = self.image_sampler
        ckpts = self.extra_manifest.get("checkpoints")
        ckpts = {k: str(v) for k, v in ckpts.items() if v} if isinstance(ckpts, Mapping) else {}
        return plain({
            "seed": self.seed,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "encoding": self.encoding,
            **({"image_channels": self.image_channels} if self.image_channels != 1 else {}),
            "sampler": type(s.scheduler).__name__,
            "num_train_timesteps": int(s.scheduler.num_train_timesteps),
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale,
            "prediction_type": str(s.scheduler.prediction_type),
            **self.writer.describe(),
            "checkpoint_sha256": {k: _sha256(v) if Path(v).is_file() else None for k, v in ckpts.items()},
            "config": self.config,
        })

    def _check_folder(self, generation: dict) -> None:
        """Stop (or, with ``overwrite``, clear the pairs) when the folder holds a set made otherwise.

        Raises:
            ValueError: naming the folder and the differing keys (old -> new), or pairs without a manifest.
        """
        out, old = self.writer.output_dir, None
        recorded = [self.manifest_path]
        if self.shard is not None:  # else the folder's set, else another shard (of the same generation, checked below)
            recorded += [out / "manifest.json", *shard_manifests(out)]
        for path in recorded:  # a shard's own record first
            if path.is_file():
                old = read_json(path, "synthesis manifest")
                break
        if self.shard is not None:
            self._check_other_shards(generation)
        upto = max(self.num_samples, int((old or {}).get("num_samples", 0) or 0))
        have = [i for i in self.indices(upto) if self.writer.done(i)]
        if old is None and not have:
            return
        if old is None:
            problem = f"holds {len(have)} pair(s) but no {self.manifest_path.name}, so the seed and config that made them are unknown"
        elif "generation" not in old:
            problem = "has a manifest.json without a 'generation' record (an older version's)"
        else:
            diff = [f"{k}: {a!r} -> {b!r}" for k, (a, b) in differences(old["generation"], generation).items()]
            beyond = [i for i in have if i >= self.num_samples]
            if not diff and not beyond:
                return
            problem = (f"was made with other settings ({'; '.join(diff)})" if diff else
                       f"holds {len(beyond)} pair(s) beyond --num_samples {self.num_samples} (recorded "
                       f"num_samples {old.get('num_samples')}); a smaller set would leave them unlisted")
        if not self.overwrite:
            raise ValueError(f"{out} {problem}; use another --output_dir, or --overwrite true to replace its pairs")
        recorded = (old or {}).get("generation") or {}
        own = None if self.shard is None else list(self.indices(upto))
        gone = self.writer.clear(recorded.get("extra_dirs") or (), recorded.get("prefix"), indices=own)
        for name in ("datalist.json", "grid.png", "manifest.json") if self.shard is None else ():
            (out / name).unlink(missing_ok=True)
        self.manifest_path.unlink(missing_ok=True)
        logger.info("synthesis: --overwrite: removed %d file(s) of the set in %s (%s)", gone, out, problem)

    def _check_other_shards(self, generation: dict) -> None:
        """Stop a shard whose settings differ from another shard's record in the folder (the merge would refuse).

        Raises:
            ValueError: naming the other shard's manifest and the differing keys.
        """
        for path in shard_manifests(self.writer.output_dir):
            if path == self.manifest_path:
                continue
            other = read_json(path, "shard manifest")
            diff = differences(other.get("generation") or {}, generation)  # num_samples may grow: the merge checks it
            if diff:
                keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
                raise ValueError(f"{self.writer.output_dir}: shard {shard_name(self.shard)} differs from {path} ({keys}); "
                                 "shards of one set need the same settings: use another --output_dir")

    def _manifest(self, generation: dict, status: str, **extra: Any) -> dict:
        share = self.indices()
        runtime = plain({"batch_size": self.batch_size, "device": str(self.device), **self.runtime})
        manifest = {**manifest_head(self.writer, status, self.num_samples, self.seed, share, generation, runtime),
                    **self.extra_manifest}
        if self.shard is not None:
            manifest.update(shard=f"{self.shard[0]}/{self.shard[1]}", indices=list(share), host=socket.gethostname(),
                            pid=os.getpid(), processes=get_world_size(), started=getattr(self, "_started", None))
        manifest.update(extra)
        return manifest

    def _write_manifest(self, generation: dict, status: str, **extra: Any) -> None:
        write_json(self.manifest_path, self._manifest(generation, status, **extra))

    def pending(self, rank: int = 0, world_size: int = 1, clean: bool = True) -> list[list[int]]:
        """Batches of the indices still to write of this rank's share (every ``world_size``-th of :meth:`indices`,
        from the ``rank``-th: ``i % world_size == rank`` without a shard).

        Args:
            rank: this process's rank.
            world_size: the number of processes sharing the indices.
            clean: remove a killed run's temporary files first (rank 0 does it before the others start: a
                removal while another rank writes would take that rank's temporary file away).
        """
        if clean:
            self.writer.clean(self._own_indices())
        share = self.indices()[int(rank)::int(world_size)]
        todo = [i for i in share if not self.writer.done(i)]
        self.skipped = len(share) - len(todo)
        return [todo[k: k + self.batch_size] for k in range(0, len(todo), self.batch_size)]

    def class_of(self, index: int) -> int | None:
        """Sample ``index``'s class id: the plan's, else the label source's ``class_of``, else None."""
        if self.class_ids is not None:
            return self.class_ids[int(index)]
        source = getattr(self.label_source, "class_of", None)
        return None if source is None else source(int(index))

    def _class_labels(self, indices: Sequence[int]) -> list[int] | None:
        """The batch's class ids for the sampler (the null class where a sample has none); None without classes."""
        ids = [self.class_of(i) for i in indices]
        if all(c is None for c in ids):
            return None
        null = null_class_id(self.image_network)
        if null is None:
            raise ValueError("the label source gives classes, but the image UNet has no class embeddings (trained "
                             "without classes)")
        return [null if c is None else c for c in ids]

    def class_records(self, num_samples: int) -> list[dict[str, str | None]] | None:
        """``[{"class": name or None}]`` of samples ``0..num_samples-1`` (datalist entries), None without classes."""
        ids = [self.class_of(i) for i in range(int(num_samples))]
        if all(c is None for c in ids) or self.class_table is None:
            return None
        return [{"class": None if c is None else self.class_table.names[c]} for c in ids]

    def _iteration(self, engine: Engine, indices: Sequence[int]) -> dict:
        gens = sample_generators([sample_seed(self.seed, i) for i in indices], self.device)
        out = self.label_source(indices, gens, self.device)
        labels = out.get("label")  # None: no label maps (class-only synthesis), the source gives the condition
        cond = out.get("cond")
        fov = out.get("fov")
        if cond is None and labels is not None:  # labels of any size: their encoding area-averaged to the network's size
            known = labels if fov is None else torch.where(fov.to(labels.device), labels, torch.full_like(labels, UNANNOTATED))
            cond = encode_mask_resized(known, self.num_classes, self.image_size, self.encoding)
        cond = None if cond is None else cond.to(self.device)
        kw = {} if (classes := self._class_labels(indices)) is None else {"class_labels": classes}
        images = self.image_sampler(self.image_network, gens, (self.image_channels, *self.image_size), cond, self.device, **kw)
        if fov is not None:  # black outside the field of view, at the image's size
            inside = F.interpolate(fov.float().to(images.device), size=images.shape[-2:], mode="nearest-exact") > 0.5
            images = torch.where(inside, images, torch.full_like(images, -1.0))
        self.writer.write(indices, images, labels, out.get("extras"))
        return {"indices": list(indices)}

    def run_all(self) -> Path:
        """Lock the folder, check or start its manifest, write every missing pair, then the datalist, the
        completed manifest and the grid; returns ``datalist.json``.

        In a multi-process run rank 0 locks, checks and finalises, each rank writes its share (module docstring).

        Raises:
            RuntimeError: when another live synthesis holds the folder.
            ValueError: when the folder holds a set made with other settings (without ``overwrite``).
        """
        rank, world = get_rank(), get_world_size()
        if rank == 0:
            self.lock.acquire()
        try:
            if rank == 0:
                self._generation = self.generation()
                self._check_folder(self._generation)
                self.writer.clean(self._own_indices())
                self._started = _now()
                self._write_manifest(self._generation, "running")
            barrier()  # the others start once the folder is checked and cleaned
            batches = self.pending(rank, world, clean=False)
            if self.skipped:
                logger.info("synthesis: %d of %d pairs already in %s; writing the other %d%s", self.skipped,
                            self.skipped + sum(map(len, batches)), self.writer.output_dir, sum(map(len, batches)),
                            f" (rank {rank} of {world})" if world > 1 else "")
            self._t0 = time.time()
            if batches:
                self.run(batches, max_epochs=1)
            barrier()  # every share written
            if rank == 0:
                self.finalize_shard() if self.shard is not None else self.finalize()
        finally:
            self.lock.release()
        if self.shard is not None and rank == 0:  # the last line the user sees
            logger.info("synthesis: shard %d/%d complete (%s); the set needs a merge once every shard is complete: "
                        "monai-oct merge-synthesis %s [other shard folders]", *self.shard, self.manifest_path,
                        self.writer.output_dir)
        return self.writer.output_dir / "datalist.json"

    def finalize(self) -> None:
        """Write ``datalist.json`` ({"training": [...]}), the completed ``manifest.json`` and ``grid.png``.

        Raises:
            RuntimeError: when a pair is missing (names it).
        """
        records = self.class_records(self.num_samples)
        extra = {} if records is None else {"classes": [r["class"] for r in records]}
        manifest = self._manifest(getattr(self, "_generation", None) or self.generation(), "complete",
                                  files=set_files(self.writer, self.num_samples),
                                  seconds=round(time.time() - getattr(self, "_t0", time.time()), 3), **extra)
        write_set_index(self.writer, self.num_samples, manifest, self.num_classes, self.grid_size, records)

    def finalize_shard(self) -> None:
        """Complete a shard's ``manifests/shard-i-of-n.json`` (its files, end time, seconds, and its pairs' ``classes``
        in the order of ``indices`` when they have classes); no datalist.

        Raises:
            RuntimeError: when a pair of the shard is missing (names it).
        """
        missing = [self.writer.name(i) for i in self.indices() if not self.writer.done(i)]
        if missing:
            raise RuntimeError(f"{self.writer.output_dir}: {len(missing)} pair(s) of shard {shard_name(self.shard)} "
                               f"missing after synthesis, e.g. {missing[0]}")
        records = self.class_records(self.num_samples)  # each pair's class, aligned with "indices", for the merge
        extra = {} if records is None else {"classes": [records[i]["class"] for i in self.indices()]}
        self.manifest = self._manifest(getattr(self, "_generation", None) or self.generation(), "complete",
                                       files=[f for i in self.indices() for f in self.writer.files(i)], ended=_now(),
                                       seconds=round(time.time() - getattr(self, "_t0", time.time()), 3), **extra)
        write_json(self.manifest_path, self.manifest)


def _now() -> str:
    """The local time, ISO 8601 with its offset (a shard's start and end)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the checkpoints a synthetic set was made from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
