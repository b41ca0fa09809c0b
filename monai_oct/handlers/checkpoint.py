"""Crash-safe training for both bundles, on ignite's ``Checkpoint``: ``last.pt`` to resume, final weights on success.

``last.pt`` holds the state dict of every object handed in (model, EMA, optimizer, LR scheduler, grad
scaler), the trainer's own state (ignite's ``Engine.state_dict``: iteration, epoch length, max epochs) and the
run's hyper-parameters. It is written by ignite's :class:`~ignite.handlers.Checkpoint` every epoch (and every K
iterations) through :class:`AtomicSaver` and read back with ``weights_only=True``. When a run starts and
``output_dir/last.pt`` exists, everything is restored with ``Checkpoint.load_objects`` and training continues
from the saved *iteration* (a mid-epoch checkpoint resumes inside its epoch) up to ``max_epochs``.
Hyper-parameters that changed since ``last.pt`` was written are applied and logged (``learning_rate``,
``weight_decay``, ``max_epochs``) or stop the run with a message naming them (all others).

The final weights (``model.pt``, and ``model_raw.pt`` when asked) are written only when training completes:
a run that fails leaves ``last.pt`` to resume from and no final model.

In a multi-process (DDP) run every rank resumes from ``last.pt``, but only rank 0 writes it, the final weights
and the log; the weights are those of the plain network (a ``DistributedDataParallel`` wrapper is taken off, so
they load into a network built without one).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from torch.optim.lr_scheduler import LRScheduler

from monai_oct.core.io import remove_temporaries
from monai_oct.core.records import differences, plain
from monai_oct.engines.distributed import is_main_process, unwrap
from monai_oct.networks.checkpoint import MODEL_INFO_FILE, load_checkpoint, save_checkpoint, write_model_info
from monai_oct.optim import depends_on_length, scale_base_lr

__all__ = ["AtomicSaver", "TrainingCheckpoint", "TrainingLog", "APPLIED_ON_RESUME"]

logger = logging.getLogger(__name__)

#: hyper-parameters a resumed run may change: they take effect (and the log says so).
APPLIED_ON_RESUME = ("learning_rate", "weight_decay", "max_epochs")


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class AtomicSaver(BaseSaveHandler):
    """Ignite save handler writing ``dirname/filename`` through the project's atomic write (``save_checkpoint``).

    Ignite's ``DiskSaver(atomic=True)`` also writes a temporary file first, but under ``tempfile``'s random
    ``tmpXXXX`` names, which :func:`monai_oct.core.io.remove_temporaries` does not recognise, so a killed
    run's leftovers would stay in the output folder. :meth:`remove` does nothing: the checkpoint uses one fixed
    name (``last.pt``), which ignite removes before writing it again; the atomic replace makes that removal
    unneeded, and skipping it means there is never a moment without a complete ``last.pt``.

    Args:
        dirname: the folder written to (created when missing).
    """

    def __init__(self, dirname: str | os.PathLike) -> None:
        self.dirname = Path(dirname)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` to ``dirname/filename`` atomically."""
        save_checkpoint(dict(checkpoint), self.dirname / filename)

    def remove(self, filename: str) -> None:
        """Keep the file: the next save replaces it atomically (see the class docstring)."""


class _Hyperparameters:
    """The run's hyper-parameters as an object with a state dict (what ignite's ``Checkpoint`` saves)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = plain(dict(values))

    def state_dict(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # compared by TrainingCheckpoint, never loaded
        pass


class TrainingCheckpoint:
    """Save ``last.pt`` during training, resume from it on start, write the final weights when training completes.

    Ignite's ``Checkpoint`` does the saving (``last.pt``, one file kept) and the restoring (``load_objects``,
    the trainer included, so ignite resumes at the saved iteration). This class adds what the bundles need
    around it: resume only when ``last.pt`` exists, compare the stored hyper-parameters, write the final
    weights on ``COMPLETED`` only (MONAI's ``CheckpointSaver(save_final=True)`` also writes them when the run
    fails, so a failed run would look finished) and log the events.

    Args:
        output_dir: folder of ``last.pt`` and the final weights.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (None values are skipped), e.g.
            ``{"model": net, "ema": ema, "optimizer": opt, "lr_scheduler": sched}``; the trainer's
            ``GradScaler`` (``engine.scaler`` under AMP) joins as ``"scaler"``, the trainer as ``"trainer"``.
        final_model: module whose weights become ``final_filename`` (e.g. ``ema.ema_model``); None: ``save_dict["model"]``.
        raw_model: module whose weights become ``raw_filename``; None: none written.
        epoch_interval: save every this many epochs (0: never at epoch ends).
        iteration_interval: also save every this many iterations (0: never).
        resume: restore from ``last.pt`` when it exists.
        log_file: JSON-lines file the resume/save events are appended to (None: ``output_dir/training_log.jsonl``).
        hyperparameters: name -> value stored in ``last.pt`` and compared on resume; a changed value of
            :data:`APPLIED_ON_RESUME` is applied and logged (old -> new), any other change stops the run.
        final_filename: the final weights' file name.
        raw_filename: the raw weights' file name.
        stale_files: other files of an earlier run removed when this one starts afresh (e.g. the best-validation
            ``model.pt`` another handler writes), besides ``last.pt``, the final and raw weights and ``model.json``.
        model_info: written as ``model.json`` beside the final weights when training completes (what samplers
            check a checkpoint against, e.g. ``{"prediction_type": ...}``;
            :func:`~monai_oct.networks.checkpoint.read_model_info`); None: no ``model.json``.

    Raises:
        ValueError: when ``save_dict`` has no ``"model"`` and no ``final_model`` is given.
    """

    def __init__(self, output_dir: str | os.PathLike, save_dict: Mapping[str, Any], final_model: torch.nn.Module | None = None,
                 raw_model: torch.nn.Module | None = None, epoch_interval: int = 1, iteration_interval: int = 0,
                 resume: bool = True, log_file: str | os.PathLike | None = None,
                 hyperparameters: Mapping[str, Any] | None = None, final_filename: str = "model.pt",
                 raw_filename: str = "model_raw.pt", stale_files: Sequence[str] = (),
                 model_info: Mapping[str, Any] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        if final_model is None and "model" not in self.save_dict:
            raise ValueError("TrainingCheckpoint needs save_dict['model'] or final_model")
        self.final_model = unwrap(final_model if final_model is not None else self.save_dict["model"])
        self.raw_model = unwrap(raw_model) if raw_model is not None else None
        self.epoch_interval, self.iteration_interval = int(epoch_interval), int(iteration_interval)
        self.resume = bool(resume)
        self.log_file = Path(log_file) if log_file else self.output_dir / "training_log.jsonl"
        self.hyperparameters = _Hyperparameters(hyperparameters or {})
        self.final_filename, self.raw_filename = final_filename, raw_filename
        self.stale_files = tuple(str(f) for f in stale_files or ())
        self.model_info = plain(dict(model_info)) if model_info else None
        self.resumed_from: dict[str, int] | None = None
        self.checkpoint: Checkpoint | None = None
        self._saved_iteration = -1
        self._saves_attached = False

    @property
    def last_path(self) -> Path:
        """``output_dir/last.pt``."""
        return self.output_dir / "last.pt"

    def attach(self, engine: Engine) -> None:
        """Resume on ``STARTED``, save on epoch/iteration intervals, write the final weights on ``COMPLETED``."""
        if getattr(engine, "scaler", None) is not None and "scaler" not in self.save_dict:
            self.save_dict["scaler"] = engine.scaler
        to_save = dict(self.save_dict, trainer=engine, hyperparameters=self.hyperparameters)
        self.checkpoint = Checkpoint(to_save, AtomicSaver(self.output_dir), filename_pattern=self.last_path.name,
                                     n_saved=1, global_step_transform=lambda e, _: e.state.iteration)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.STARTED, self._attach_saves)
        engine.add_event_handler(Events.COMPLETED, self.finalize)

    def _attach_saves(self, engine: Engine) -> None:
        """Register the interval saves when the run starts, after every other handler: ignite calls handlers in
        the order they were added, and ``last.pt`` must hold the state *after* the iteration's LR-scheduler step
        and EMA update, or a resumed run would be one step behind."""
        if self._saves_attached:
            return
        self._saves_attached = True
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self.save)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine`` (MONAI handler convention)."""
        self.attach(engine)

    def save(self, engine: Engine) -> None:
        """Write ``last.pt`` atomically (once per iteration: an epoch end that is also an interval saves once; rank 0
        only in a multi-process run)."""
        if self.checkpoint is None:
            raise RuntimeError("TrainingCheckpoint.save before attach")
        if engine.state.iteration == self._saved_iteration or not is_main_process():
            return
        self.checkpoint(engine)
        self._saved_iteration = engine.state.iteration
        _append_jsonl(self.log_file, {"event": "checkpoint", "epoch": engine.state.epoch,
                                      "iteration": engine.state.iteration, "time": time.time()})

    def _check_hyperparameters(self, saved: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The changed hyper-parameters that apply; raises for those that cannot change."""
        now = self.hyperparameters.values
        changed = {k: v for k, v in differences(saved, now).items() if k in saved and k in now}
        frozen = {k: v for k, v in changed.items() if k not in APPLIED_ON_RESUME}
        schedule = now.get("lr_schedule")
        if "max_epochs" in changed and depends_on_length(schedule):
            old, new = changed["max_epochs"]
            raise ValueError(f"{self.last_path}: max_epochs {old!r} -> {new!r} would change the length of the "
                             f"{schedule!r} learning-rate schedule it was written with (it decays to its end at epoch "
                             f"{old}); keep --max_epochs {old}, or use another --output_dir (or --resume false) to train "
                             "the longer run from the start")
        if frozen:
            names = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in frozen.items())
            raise ValueError(f"{self.last_path}: changed since this checkpoint was written: {names}; these cannot change "
                             "on resume: put them back, or use another --output_dir (or delete last.pt) to start afresh")
        return changed

    def _apply(self, changed: Mapping[str, tuple[Any, Any]]) -> None:
        """Apply a changed learning rate / weight decay to the restored optimizer (and LR scheduler)."""
        optimizer = self.save_dict.get("optimizer")
        scheduler = next((v for v in self.save_dict.values() if isinstance(v, LRScheduler)), None)
        if optimizer is None:
            return
        if "learning_rate" in changed:
            old, new = changed["learning_rate"]
            scale_base_lr(optimizer, scheduler, float(new) / float(old))
        if "weight_decay" in changed:
            for group in optimizer.param_groups:
                group["weight_decay"] = float(changed["weight_decay"][1])

    def _remove_stale_results(self) -> None:
        """A run that starts afresh removes the final weights and ``last.pt`` an earlier run left in ``output_dir``,
        so that, should it fail, no earlier model is taken for its result."""
        names = (self.final_filename, self.raw_filename, self.last_path.name, MODEL_INFO_FILE, *self.stale_files)
        stale = [self.output_dir / n for n in dict.fromkeys(names)]
        removed = [p.name for p in stale if p.is_file()]
        for name in removed:
            (self.output_dir / name).unlink()
        if removed:
            logger.warning("%s: starting afresh; removed the earlier run's %s", self.output_dir, ", ".join(removed))
            _append_jsonl(self.log_file, {"event": "fresh_start", "removed": removed, "time": time.time()})

    def load(self, engine: Engine) -> None:
        """Restore every object and the trainer's iteration from ``last.pt`` when it exists.

        Raises:
            ValueError: when ``last.pt`` cannot be read, misses an object, does not fit, was written with other
                iterations per epoch or beyond ``max_epochs``, or with other hyper-parameters that cannot change
                (names the file, the key and the values).
        """
        if is_main_process():  # another rank's removal could meet rank 0's temporary file mid-write
            remove_temporaries(self.output_dir)
        if not (self.resume and self.last_path.is_file()):
            self._remove_stale_results()
            return
        device = getattr(engine.state, "device", None) or "cpu"
        ckpt = load_checkpoint(self.last_path, map_location=device)
        missing = [k for k in list(self.save_dict) + ["trainer"] if k not in ckpt]
        if missing:
            raise ValueError(f"{self.last_path}: checkpoint lacks {missing}; delete it to start afresh")
        saved_trainer = dict(ckpt["trainer"])
        length, max_epochs = engine.state.epoch_length, engine.state.max_epochs
        saved_trainer.pop("epoch", None)  # written before ignite kept the trainer's state: the iteration says all
        saved_trainer.setdefault("epoch_length", length)
        saved_trainer.setdefault("max_epochs", max_epochs)
        if saved_trainer["epoch_length"] != length:
            raise ValueError(f"{self.last_path}: written with {saved_trainer['epoch_length']} iterations per epoch, "
                             f"this run has {length} (batch_size or the data changed); put them back, or use another "
                             "--output_dir (or delete last.pt) to start afresh")
        iteration = int(saved_trainer["iteration"])
        if max_epochs is not None and iteration > max_epochs * length:
            raise ValueError(f"{self.last_path}: already trained {iteration} iterations ({iteration / length:g} epochs), "
                             f"more than --max_epochs {max_epochs}; raise --max_epochs to continue")
        changed = self._check_hyperparameters(ckpt.get("hyperparameters", {}))
        to_load = dict(self.save_dict, trainer=engine)
        try:
            Checkpoint.load_objects(to_load=to_load, checkpoint=dict(ckpt, trainer=saved_trainer))
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.last_path}: cannot restore it (config changed since it was written?): {e}") from e
        engine.state.max_epochs = max_epochs  # a grown --max_epochs continues further
        self._apply(changed)
        self._saved_iteration = iteration
        epoch, done = divmod(iteration, length)
        self.resumed_from = {"epoch": epoch, "iteration": iteration}
        where = f"epoch {epoch}" if not done else f"epoch {epoch} + {done} of {length} iterations"
        logger.info("resumed from %s at %s (iteration %d); continuing to epoch %s", self.last_path, where, iteration, max_epochs)
        for k, (old, new) in changed.items():
            logger.warning("%s: %s changed on resume: %r -> %r (applied)", self.last_path, k, old, new)
        if is_main_process():
            _append_jsonl(self.log_file, {"event": "resume", "epoch": epoch, "iteration": iteration, "time": time.time(),
                                          "changed": {k: [old, new] for k, (old, new) in changed.items()}})

    def finalize(self, engine: Engine) -> None:
        """Save ``last.pt`` and write the final (and raw) weights: only a completed run gets here (rank 0 only)."""
        if not is_main_process():
            return
        self.save(engine)
        if self.model_info is not None:  # first: final weights never stand without what they were trained for
            write_model_info(self.output_dir / self.final_filename, self.model_info)
        save_checkpoint(self.final_model.state_dict(), self.output_dir / self.final_filename)
        if self.raw_model is not None:
            save_checkpoint(self.raw_model.state_dict(), self.output_dir / self.raw_filename)
        _append_jsonl(self.log_file, {"event": "completed", "epoch": engine.state.epoch,
                                      "iteration": engine.state.iteration, "time": time.time()})


class TrainingLog:
    """Append one JSON line per epoch to ``log_file``: epoch, iteration, mean loss, learning rate, seconds, and the
    engine's scalar epoch metrics (``engine.state.metrics``: e.g. the autoencoder's ``recon_l1`` and
    ``codebook_perplexity``, computed before this handler runs as ignite's metrics attach first).

    Args:
        log_file: the JSON-lines file (appended to, so a resumed run continues it).
        optimizer: to log its first group's learning rate (None: not logged).
        loss_key: the loss's key in ``engine.state.output``.
    """

    def __init__(self, log_file: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None, loss_key: str = "loss") -> None:
        self.log_file, self.optimizer, self.loss_key = Path(log_file), optimizer, loss_key
        self._sum, self._n, self._t0 = 0.0, 0, time.time()

    def attach(self, engine: Engine) -> None:
        """Accumulate the loss every iteration, write at every epoch end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine``."""
        self.attach(engine)

    def _start(self, engine: Engine) -> None:
        self._sum, self._n, self._t0 = 0.0, 0, time.time()

    def _accumulate(self, engine: Engine) -> None:
        out = engine.state.output
        loss = out[self.loss_key] if isinstance(out, Mapping) else out
        self._sum += float(loss)
        self._n += 1

    def _write(self, engine: Engine) -> None:
        rec = {"event": "epoch", "epoch": engine.state.epoch, "iteration": engine.state.iteration,
               "loss": self._sum / max(self._n, 1), "seconds": round(time.time() - self._t0, 3)}
        if self.optimizer is not None:
            rec["lr"] = self.optimizer.param_groups[0]["lr"]
        for name, value in engine.state.metrics.items():
            if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1):
                rec.setdefault(name, float(value))
        _append_jsonl(self.log_file, rec)
