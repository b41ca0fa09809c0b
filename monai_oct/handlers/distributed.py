"""Handlers in a multi-process (DDP) run: which ones run on ranks other than 0, and a log of the items each rank saw.

In a run started by torchrun every process builds the same handler list. Those that only write for people
(console statistics, TensorBoard, progress bars, the JSON-lines training log, sample grids, the best-metric
checkpoint) run on rank 0 alone: :func:`handlers_for_rank` drops them elsewhere. The others stay on every rank:
the EMA, the LR schedule, the loss guard, the validation handler (its metrics gather across ranks) and
:class:`~monai_oct.handlers.checkpoint.TrainingCheckpoint` (every rank resumes from ``last.pt``; only rank 0
writes it and the final weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import CheckpointSaver, StatsHandler
from monai.handlers.tensorboard_handlers import TensorBoardHandler

from monai_oct.engines.distributed import get_rank, is_main_process
from monai_oct.handlers.checkpoint import TrainingLog
from monai_oct.handlers.samples import SampleGrid
from monai_oct.handlers.segmentation import SegmentationOverlays

__all__ = ["MAIN_PROCESS_ONLY", "handlers_for_rank", "SeenItemsLog"]

#: handler types that run on rank 0 only (they write what people read; nothing else depends on them).
MAIN_PROCESS_ONLY: tuple[type, ...] = (StatsHandler, TensorBoardHandler, ProgressBar, TrainingLog, SampleGrid, CheckpointSaver,
                                       SegmentationOverlays)


def handlers_for_rank(handlers: Sequence[Any] | None, main_only: Sequence[type] = MAIN_PROCESS_ONLY) -> list[Any] | None:
    """The handlers this process attaches: all on rank 0, those not of a ``main_only`` type elsewhere.

    Args:
        handlers: a bundle's handler list (None stays None).
        main_only: the types kept on rank 0 only.

    Returns:
        the list for this rank.
    """
    if handlers is None:
        return None
    if is_main_process():
        return list(handlers)
    keep = [h for h in handlers if not isinstance(h, tuple(main_only))]
    for h in handlers:
        if isinstance(h, TensorBoardHandler) and h not in keep:
            _discard_event_file(h)
    return keep


def _discard_event_file(handler: TensorBoardHandler) -> None:
    """Close a dropped TensorBoard handler's writer and remove the empty event file it created.

    MONAI's TensorBoard handlers open their ``SummaryWriter`` (and its file) when constructed, before any rank
    check can drop them; the file holds no events, only TensorBoard's header. torch names it
    ``events.out.tfevents.<time>.<host>.<pid>.<n>``, so this process's files are those with its pid.
    """
    writer = getattr(handler, "_writer", None)
    if writer is None or not getattr(handler, "internal_writer", False):
        return
    handler.close()
    for p in Path(writer.get_logdir()).glob(f"events.out.tfevents.*.{os.getpid()}.*"):
        p.unlink(missing_ok=True)


class SeenItemsLog:
    """Append, at every epoch start, the dataset indices and image paths this rank's sampler draws.

    A debug record that shows how the data was split across processes: ``log_dir/items_rank<r>.jsonl``, one line
    ``{"rank", "epoch", "indices", "images"}`` per epoch. It reads the loader's sampler after MONAI's workflow set
    its epoch, so it lists what the loader draws (the samplers used here draw the same indices for an epoch
    however often they are iterated).

    Args:
        log_dir: the folder of the log files.
        image_key: the items' image field (their paths are logged beside the indices).
    """

    def __init__(self, log_dir: str | os.PathLike, image_key: str = "image") -> None:
        self.log_dir, self.image_key = Path(log_dir), image_key

    def attach(self, engine: Engine) -> None:
        """Write at ``EPOCH_STARTED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.write)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine``."""
        self.attach(engine)

    @property
    def path(self) -> Path:
        """``log_dir/items_rank<r>.jsonl`` of this process."""
        return self.log_dir / f"items_rank{get_rank()}.jsonl"

    def write(self, engine: Engine) -> None:
        """Append this epoch's indices and image paths."""
        loader = engine.data_loader
        indices = [int(i) for i in loader.sampler]
        data = getattr(loader.dataset, "data", None)
        images = [str(data[i].get(self.image_key)) if isinstance(data[i], dict) else None for i in indices] if data else []
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"rank": get_rank(), "epoch": engine.state.epoch, "indices": indices, "images": images}) + "\n")
