"""Run a stage of a monai_oct bundle from Python (demo, benchmarks, tests), in-process or as a subprocess.

``run_bundle("bundles/oct_ddpm", ["common.yaml", "pretrain.yaml"], dataset_dir=..., max_epochs=2)`` is the
same as ``python -m monai.bundle run --config_file "['bundles/oct_ddpm/configs/common.yaml', ...]"
--dataset_dir ... --max_epochs 2`` (with the bundle's metadata.json and logging.conf).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["as_bool", "bundle_command", "bundle_dir", "bundle_env", "run_bundle", "stage_configs"]

#: the config files of the oct_ddpm stages that extend another stage (after ``common.yaml``): the sketch
#: synthesis is an overlay of ``synthesize.yaml``; every other stage is ``common.yaml`` + ``<stage>.yaml``.
STAGE_CONFIGS = {"synthesize_sketch": ("synthesize.yaml", "synthesize_sketch.yaml")}

_FALSE = ("false", "0", "no", "off", "none", "")


def as_bool(value: Any) -> bool:
    """A command-line flag as a bool: ``False``/``"false"``/``"0"``/``"no"``/``None`` are False, the rest True."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


def bundle_dir(name: str) -> Path:
    """The folder of one of the project's bundles (``"oct_ddpm"``, ``"oct_layer_seg"``) in this checkout.

    Raises:
        FileNotFoundError: when there is no such bundle (the message lists those that exist).
    """
    root = Path(__file__).resolve().parents[1] / "bundles"
    d = root / name
    if not (d / "configs").is_dir():
        have = sorted(p.name for p in root.iterdir() if (p / "configs").is_dir()) if root.is_dir() else []
        raise FileNotFoundError(f"no bundle {name!r} under {root} (have: {have})")
    return d


def stage_configs(stage: str) -> list[str]:
    """The config files (names in ``bundles/oct_ddpm/configs``, in load order) of an oct_ddpm stage.

    ``stage_configs("pretrain") == ["common.yaml", "pretrain.yaml"]``;
    ``stage_configs("synthesize_sketch") == ["common.yaml", "synthesize.yaml", "synthesize_sketch.yaml"]``.
    """
    return ["common.yaml", *STAGE_CONFIGS.get(stage, (f"{stage}.yaml",))]


def _bundle_files(bundle_dir: str | os.PathLike, configs: Sequence[str]) -> tuple[list[str], str | None, str | None]:
    """``(config files, metadata.json or None, logging.conf or None)`` of a stage."""
    d = Path(bundle_dir) / "configs"
    files = [str(c) if Path(c).is_absolute() or Path(c).is_file() else str(d / c) for c in configs]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"bundle config(s) not found: {missing}")
    meta = str(d / "metadata.json") if (d / "metadata.json").is_file() else None
    logging_file = str(d / "logging.conf") if (d / "logging.conf").is_file() else None
    return files, meta, logging_file


def _cli_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_cli_value(x) if not isinstance(x, str) else repr(x) for x in v) + "]"
    return str(v)


def bundle_command(bundle_dir: str | os.PathLike, configs: Sequence[str], python: str | None = None, **overrides: Any) -> list[str]:
    """The ``python -m monai.bundle run`` command line of a stage (overrides as ``--key value``)."""
    files, meta, logging_file = _bundle_files(bundle_dir, configs)
    cmd = [python or sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files)]
    if meta:
        cmd += ["--meta_file", meta]
    if logging_file:
        cmd += ["--logging_file", logging_file]
    for k, v in overrides.items():
        cmd += [f"--{k}", _cli_value(v)]
    return cmd


def bundle_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage's subprocess: this one, plus ``env``, with this checkout first on ``PYTHONPATH``."""
    full_env = dict(os.environ, **(env or {}))
    root = str(Path(__file__).resolve().parents[1])
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in [root, full_env.get("PYTHONPATH", "")] if p)
    return full_env


def run_bundle(bundle_dir: str | os.PathLike, configs: Sequence[str], in_process: bool = True,
               env: dict[str, str] | None = None, timeout: float | None = None, **overrides: Any) -> Any:
    """Run one stage of a bundle.

    Args:
        bundle_dir: the bundle folder (holding ``configs/``).
        configs: config files, names inside ``configs/`` or paths (later ones override earlier ones).
        in_process: run through ``monai.bundle.run`` in this process (True) or as a subprocess.
        env: extra environment variables of the subprocess.
        timeout: subprocess time limit in seconds.
        overrides: config overrides (``dataset_dir=...``, ``image_size=[64, 128]``, ...).

    Returns:
        in-process: what ``monai.bundle.run`` returns; subprocess: the ``CompletedProcess`` (output captured).

    Raises:
        FileNotFoundError: for a missing config file.
        subprocess.CalledProcessError: when the subprocess fails (its output is attached).
    """
    if in_process:
        from monai.bundle import run

        files, meta, logging_file = _bundle_files(bundle_dir, configs)
        return run(config_file=files, meta_file=meta, logging_file=logging_file, **overrides)
    res = subprocess.run(bundle_command(bundle_dir, configs, **overrides), env=bundle_env(env), capture_output=True, text=True,
                         timeout=timeout)
    if res.returncode != 0:
        raise subprocess.CalledProcessError(res.returncode, res.args, res.stdout, res.stderr)
    return res
