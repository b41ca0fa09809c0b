"""State-dict checkpoints: one loader for every network of the project and an atomic writer.

Checkpoints are plain state dicts, or dicts of state dicts (``{"model": ..., "ema": ..., "optimizer": ...}``),
written to a temporary file and renamed into place (a killed run never leaves a half-written file under
the final name) and read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from monai_oct.core.io import DataError, atomic_path, read_json, write_json

logger = logging.getLogger(__name__)

__all__ = ["load_weights", "maybe_load_weights", "adapt_input_channels", "load_checkpoint", "save_checkpoint",
           "MODEL_INFO_FILE", "model_info_path", "read_model_info", "write_model_info", "trained_class_embeds",
           "trained_mask_condition"]

#: what a training stage records beside its weights (e.g. the diffusion stages' ``prediction_type``).
MODEL_INFO_FILE = "model.json"


def model_info_path(ckpt: str | os.PathLike) -> Path:
    """``model.json`` beside a checkpoint (one for ``model.pt``, ``model_raw.pt`` and ``last.pt`` of a stage)."""
    return Path(ckpt).parent / MODEL_INFO_FILE


def write_model_info(ckpt: str | os.PathLike, info: Mapping[str, Any]) -> Path:
    """Write ``info`` as ``model.json`` beside ``ckpt`` (atomically); returns its path."""
    return write_json(model_info_path(ckpt), dict(info))


def read_model_info(ckpt: str | os.PathLike | None) -> dict[str, Any]:
    """The ``model.json`` beside ``ckpt``; ``{}`` when there is none (weights from elsewhere, or older runs).

    Raises:
        DataError: when ``model.json`` exists but is not a JSON object (names the file).
    """
    if ckpt is None or not model_info_path(ckpt).is_file():
        return {}
    info = read_json(model_info_path(ckpt), "model info")
    if not isinstance(info, dict):
        raise DataError(f"{model_info_path(ckpt)}: expected a JSON object, got {type(info).__name__}")
    return info


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` (a state dict or a dict of them) to ``path`` atomically (temp file + ``os.replace``).

    Args:
        obj: what ``torch.save`` writes; keep it to tensors, numbers, strings, lists and dicts so that
            ``weights_only=True`` can read it back.
        path: destination file (parent folders are created).

    Returns:
        the path written.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def _pickled_objects(message: str) -> list[str]:
    """The classes/functions named in torch's ``weights_only`` refusal ("Unsupported global: GLOBAL x.Y ...")."""
    return sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint with ``weights_only=True``.

    A file that holds pickled Python objects (a whole ``nn.Module`` saved with ``torch.save(model, ...)``, an
    optimizer object, ...) is refused with what it holds and how to write a state dict instead; torch's own
    advice to load it with ``weights_only=False`` (which runs the file's code) is not repeated.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        DataError: when the file cannot be read or is not a plain state dict (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        held = _pickled_objects(str(e))
        what = f"pickled Python objects ({', '.join(held)})" if held else "pickled Python objects"
        raise DataError(f"{path}: not a plain state dict: it holds {what}, which this toolkit does not unpickle; "
                        f"write the weights as a state dict, e.g. torch.save(model.state_dict(), path) or "
                        f"torch.save({{'model': model.state_dict()}}, path), and load that") from None
    except Exception as e:  # zip / truncation errors come in many types
        raise DataError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        f"is it a torch.save file, completely written?") from None


def adapt_input_channels(state: dict, network: nn.Module, keep: int | None = None) -> list[str]:
    """Fit weights whose shapes differ from ``network``'s only in dimension 1 (input channels), in place.

    The first ``min(old, new)`` input channels are copied and any extra channels get zero weights, so the
    adapted network computes what the checkpoint's did and ignores the new inputs until it learns to use
    them (e.g. a stage-1 UNet pretrained with a 1-channel condition, fine-tuned with a 10-channel one).

    Args:
        state: the checkpoint's state dict (changed in place).
        network: the network it is loaded into.
        keep: copy only the first ``keep`` input channels and zero all others (e.g. ``keep=1``: keep the
            image channel of a stage-1 UNet and start a condition of another kind, such as a sketch,
            from zero weights); None: copy ``min(old, new)``.

    Returns:
        the names of the adapted entries.
    """
    own = network.state_dict()
    adapted = []
    for name, value in list(state.items()):
        target = own.get(name)
        if target is None or not isinstance(value, torch.Tensor) or value.shape == target.shape or value.ndim < 2:
            continue
        if value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            new = torch.zeros_like(target)
            n = min(value.shape[1], target.shape[1], keep if keep is not None else value.shape[1])
            new[:, :n] = value[:, :n].to(new.dtype)
            state[name] = new
            adapted.append(name)
    return adapted


def load_weights(network: nn.Module, path: str | os.PathLike, key: str = "model", strict: bool = True,
                 map_location: str | torch.device = "cpu", adapt_input: bool = False,
                 keep_input_channels: int | None = None) -> nn.Module:
    """Load a state-dict checkpoint into ``network`` (``torch.load(..., weights_only=True)``) and return it.

    Accepts a plain state dict (what ``CheckpointSaver`` writes for a single object, or a diffusion stage's
    ``model.pt``) or a dict holding it under ``key`` (``{"model": ..., "optimizer": ...}``, e.g. ``last.pt``).

    Args:
        network: the module to load into.
        path: the checkpoint.
        key: where the state dict sits in a dict checkpoint.
        strict: every key must match (``load_state_dict(strict=...)``).
        map_location: where tensors are loaded to.
        adapt_input: fit weights that differ only in their number of input channels
            (:func:`adapt_input_channels`; a different condition encoding between two stages).
        keep_input_channels: with ``adapt_input``, copy only this many leading input channels, zero the rest.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        DataError: (a ``ValueError``) when the file is not a state dict or does not fit the network (names the file).
    """
    path = Path(path)
    ckpt = _state_dict(path, key, map_location)
    if adapt_input:
        ckpt = dict(ckpt)
        adapted = adapt_input_channels(ckpt, network, keep=keep_input_channels)
        if adapted:
            kept = "" if keep_input_channels is None else f"first {keep_input_channels} kept, "
            logger.info("%s: input channels adapted (%sother channels zero) for %s", path, kept, adapted)
    try:
        network.load_state_dict(ckpt, strict=strict)
    except RuntimeError as e:
        raise DataError(f"{path}: checkpoint does not fit {type(network).__name__} (wrong --network or channels?): {e}") from e
    return network


def _state_dict(path: str | os.PathLike, key: str = "model", map_location: str | torch.device = "cpu") -> dict:
    """The state dict in the checkpoint at ``path``: the file itself, or its ``key`` entry when it is a dict holding one.

    Raises:
        DataError: when the file holds no state dict (names the file).
    """
    ckpt = load_checkpoint(path, map_location)
    if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
        ckpt = ckpt[key]
    if not isinstance(ckpt, dict):
        raise DataError(f"{path}: expected a state dict, got {type(ckpt).__name__}")
    return ckpt


def trained_class_embeds(path: str | os.PathLike | None, key: str = "model") -> int | None:
    """``num_class_embeds`` of the diffusion UNet whose weights are at ``path`` (the rows of its
    ``class_embedding.weight``), so that a sampling config builds the network the checkpoint was trained as.

    Args:
        path: the checkpoint (a state dict or a dict holding it under ``key``); None or a missing file: None
            (loading the weights later names the missing file).
        key: where the state dict sits in a dict checkpoint.

    Returns:
        the number of class embeddings, or None for weights trained without classes.

    Raises:
        DataError: when the file is not a state dict (names the file).
    """
    if path is None or not Path(path).is_file():
        return None
    weight = _state_dict(path, key).get("class_embedding.weight")
    return None if weight is None else int(weight.shape[0])


def trained_mask_condition(path: str | os.PathLike | None) -> bool:
    """Whether the image UNet at ``path`` was trained conditioned on label maps: its ``model.json``'s
    ``mask_condition`` (``train_classes.yaml`` records it: false after ``pretrain.yaml``, whose trainer feeds the
    all-zero "no mask" condition, true after ``finetune.yaml``); True when not recorded (weights from elsewhere,
    older runs, every stage-3 model), so a synthesis config samples the model with the condition it learnt.

    Raises:
        DataError: when ``model.json`` is not a JSON object (names the file).
    """
    return bool(read_model_info(path).get("mask_condition", True))


def maybe_load_weights(network: nn.Module, path: str | os.PathLike | None, key: str = "model", strict: bool = True,
                       map_location: str | torch.device = "cpu", adapt_input: bool = False,
                       keep_input_channels: int | None = None) -> nn.Module:
    """:func:`load_weights` when ``path`` is given; ``network`` unchanged for None, ``""``, ``"none"`` or ``"null"``
    (how an optional checkpoint looks when it comes from a command line).

    Raises:
        FileNotFoundError, DataError: as :func:`load_weights`.
    """
    if path is None or str(path).strip().lower() in ("", "none", "null"):
        return network
    return load_weights(network, path, key=key, strict=strict, map_location=map_location, adapt_input=adapt_input,
                        keep_input_channels=keep_input_channels)
