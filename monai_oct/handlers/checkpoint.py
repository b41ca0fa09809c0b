"""Crash-safe training: an atomic ``last.pt`` every epoch (or K iterations), resumed on start; final weights.

``last.pt`` holds the state dict of every object handed in (model, EMA, optimizer, LR scheduler, grad
scaler) and the trainer's ``epoch``/``iteration``. When a run starts and ``output_dir/last.pt`` exists,
everything is restored and training continues from the saved epoch up to ``max_epochs``: a run killed
with ``kill -9`` and started again with the same command picks up where its last checkpoint left it.
At the end ``model.pt`` holds the weights to sample with (the EMA weights when an EMA is given) and
``model_raw.pt`` the raw weights. Every write goes to a temporary file renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from ignite.engine import Engine, Events

from monai_oct.networks.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainingCheckpoint", "TrainingLog"]

logger = logging.getLogger(__name__)


def _append_jsonl(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class TrainingCheckpoint:
    """Save ``last.pt`` atomically during training, resume from it on start, write the final weights.

    Args:
        output_dir: folder of ``last.pt``, ``model.pt`` and ``model_raw.pt``.
        save_dict: name -> object with ``state_dict``/``load_state_dict`` (None values are skipped), e.g.
            ``{"model": net, "ema": ema, "optimizer": opt, "lr_scheduler": sched, "scaler": scaler}``.
        final_model: module whose weights become ``model.pt`` (e.g. ``ema.ema_model``); None: ``save_dict["model"]``.
        raw_model: module whose weights become ``model_raw.pt``; None: none written.
        epoch_interval: save every this many epochs (0: never at epoch ends).
        iteration_interval: also save every this many iterations (0: never).
        resume: restore from ``last.pt`` when it exists.
        log_file: JSON-lines file the resume/save events are appended to (None: ``output_dir/training_log.jsonl``).

    Raises:
        ValueError: when ``save_dict`` has no ``"model"`` and no ``final_model`` is given.
    """

    def __init__(self, output_dir: str | os.PathLike, save_dict: Mapping[str, Any], final_model: torch.nn.Module | None = None,
                 raw_model: torch.nn.Module | None = None, epoch_interval: int = 1, iteration_interval: int = 0,
                 resume: bool = True, log_file: str | os.PathLike | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.save_dict = {k: v for k, v in save_dict.items() if v is not None}
        if final_model is None and "model" not in self.save_dict:
            raise ValueError("TrainingCheckpoint needs save_dict['model'] or final_model")
        self.final_model = final_model if final_model is not None else self.save_dict["model"]
        self.raw_model = raw_model
        self.epoch_interval, self.iteration_interval = int(epoch_interval), int(iteration_interval)
        self.resume = bool(resume)
        self.log_file = Path(log_file) if log_file else self.output_dir / "training_log.jsonl"
        self.resumed_from: dict[str, int] | None = None

    @property
    def last_path(self) -> Path:
        """``output_dir/last.pt``."""
        return self.output_dir / "last.pt"

    def attach(self, engine: Engine) -> None:
        """Resume on ``STARTED``, save on epoch/iteration intervals, write the final weights on ``COMPLETED``.

        The engine's ``GradScaler`` (``engine.scaler``, MONAI trainers under AMP) joins ``save_dict`` as ``"scaler"``.
        """
        if getattr(engine, "scaler", None) is not None and "scaler" not in self.save_dict:
            self.save_dict["scaler"] = engine.scaler
        engine.add_event_handler(Events.STARTED, self.load)
        if self.epoch_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.epoch_interval), self.save)
        if self.iteration_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.iteration_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.finalize)

    def __call__(self, engine: Engine) -> None:
        """Attach to ``engine`` (MONAI handler convention)."""
        self.attach(engine)

    def state(self, engine: Engine) -> dict[str, Any]:
        """What ``last.pt`` holds: each object's state dict and ``{"trainer": {"epoch", "iteration"}}``."""
        out: dict[str, Any] = {k: v.state_dict() for k, v in self.save_dict.items()}
        out["trainer"] = {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)}
        return out

    def save(self, engine: Engine) -> None:
        """Write ``last.pt`` atomically."""
        save_checkpoint(self.state(engine), self.last_path)
        _append_jsonl(self.log_file, {"event": "checkpoint", "epoch": engine.state.epoch,
                                      "iteration": engine.state.iteration, "time": time.time()})

    def load(self, engine: Engine) -> None:
        """Restore every object and the trainer's epoch/iteration from ``last.pt`` when it exists.

        Raises:
            ValueError: when ``last.pt`` cannot be read or misses an object (names the file and the key).
        """
        if not (self.resume and self.last_path.is_file()):
            return
        ckpt = load_checkpoint(self.last_path, map_location=engine.state.device if hasattr(engine.state, "device") else "cpu")
        missing = [k for k in list(self.save_dict) + ["trainer"] if k not in ckpt]
        if missing:
            raise ValueError(f"{self.last_path}: checkpoint lacks {missing}; delete it to start afresh")
        for k, obj in self.save_dict.items():
            try:
                obj.load_state_dict(ckpt[k])
            except (RuntimeError, ValueError, KeyError) as e:
                raise ValueError(f"{self.last_path}: cannot restore {k!r} (config changed since it was written?): {e}") from e
        epoch, iteration = int(ckpt["trainer"]["epoch"]), int(ckpt["trainer"]["iteration"])
        engine.state.epoch, engine.state.iteration = epoch, iteration
        self.resumed_from = {"epoch": epoch, "iteration": iteration}
        msg = f"resumed from {self.last_path} at epoch {epoch} (iteration {iteration}); continuing to epoch {engine.state.max_epochs}"
        logger.info(msg)
        print(msg, flush=True)
        _append_jsonl(self.log_file, {"event": "resume", "epoch": epoch, "iteration": iteration, "time": time.time()})

    def finalize(self, engine: Engine) -> None:
        """Save ``last.pt`` and write ``model.pt`` (+ ``model_raw.pt``)."""
        self.save(engine)
        save_checkpoint(self.final_model.state_dict(), self.output_dir / "model.pt")
        if self.raw_model is not None:
            save_checkpoint(self.raw_model.state_dict(), self.output_dir / "model_raw.pt")
        _append_jsonl(self.log_file, {"event": "completed", "epoch": engine.state.epoch,
                                      "iteration": engine.state.iteration, "time": time.time()})


class TrainingLog:
    """Append one JSON line per epoch to ``log_file``: epoch, iteration, mean loss, learning rate, seconds.

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
        _append_jsonl(self.log_file, rec)
