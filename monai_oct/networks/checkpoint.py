"""State-dict checkpoints: one loader for every network of the project and an atomic writer.

Checkpoints are plain state dicts, or dicts of state dicts (``{"model": ..., "ema": ..., "optimizer": ...}``),
written to a temporary file and renamed into place (a killed run never leaves a half-written file under
the final name) and read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["load_weights", "maybe_load_weights", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (a state dict or a dict of them) to ``path`` atomically (temp file + ``os.replace``).

    Args:
        obj: what ``torch.save`` writes; keep it to tensors, numbers, strings, lists and dicts so that
            ``weights_only=True`` can read it back.
        path: destination file (parent folders are created).

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file cannot be read (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle / zip errors come in many types
        raise ValueError(f"{path}: cannot read checkpoint ({e})") from e


def load_weights(network: nn.Module, path: str | os.PathLike, key: str = "model", strict: bool = True,
                 map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a state-dict checkpoint into ``network`` (``torch.load(..., weights_only=True)``) and return it.

    Accepts a plain state dict (what ``CheckpointSaver`` writes for a single object, or a diffusion stage's
    ``model.pt``) or a dict holding it under ``key`` (``{"model": ..., "optimizer": ...}``, e.g. ``last.pt``
    with ``key="ema"`` for its EMA weights).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a state dict or does not fit the network (names the file).
    """
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
        ckpt = ckpt[key]
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(ckpt).__name__}")
    try:
        network.load_state_dict(ckpt, strict=strict)
    except RuntimeError as e:
        raise ValueError(f"{path}: checkpoint does not fit {type(network).__name__} (wrong --network or channels?): {e}") from e
    return network


def maybe_load_weights(network: nn.Module, path: str | os.PathLike | None, key: str = "model", strict: bool = True,
                       map_location: str | torch.device = "cpu") -> nn.Module:
    """:func:`load_weights` when ``path`` is given; ``network`` unchanged for None, ``""``, ``"none"`` or ``"null"``
    (how an optional checkpoint looks when it comes from a command line).

    Raises:
        FileNotFoundError, ValueError: as :func:`load_weights`.
    """
    if path is None or str(path).strip().lower() in ("", "none", "null"):
        return network
    return load_weights(network, path, key=key, strict=strict, map_location=map_location)
