"""Run a stage of a monai_oct bundle from Python (demo, benchmarks, tests), in-process or as a subprocess.

``run_bundle("bundles/oct_ddpm", ["common.yaml", "pretrain.yaml"], dataset_dir=..., max_epochs=2)`` is the
same as ``python -m monai.bundle run --config_file "['bundles/oct_ddpm/configs/common.yaml', ...]"
--dataset_dir ... --max_epochs 2`` (with the bundle's metadata.json and logging.conf).

Every config's ``initialize:`` starts with :func:`install_error_handler`, so that a failed stage ends with the
cause as its last line (not MONAI's "Failed to evaluate ConfigExpression" wrapper) and exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, Sequence

import torch

__all__ = ["as_bool", "bundle_command", "bundle_dir", "bundle_env", "bundle_root", "run_bundle", "check_device", "root_cause",
           "error_summary", "install_error_handler", "stage_configs",
           "FUNDUS_STAGES", "fundus_stage_configs", "ldm_stage_configs", "LDM_STAGES"]

#: the package's folder: an exception raised by code under it is "one of ours" (its message names the file or value).
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
#: what torch says when a CUDA device is asked for on a machine (or a torch build) without one.
_NO_CUDA = ("not compiled with cuda", "no nvidia driver", "no cuda gpus are available", "cuda driver initialization failed")
#: the advice appended to those messages.
NO_CUDA_ADVICE = "no CUDA device; use --device cpu"
#: the config files of the oct_ddpm stages that extend another stage (after ``common.yaml``): the sketch
#: synthesis is an overlay of ``synthesize.yaml``; every other stage is ``common.yaml`` + ``<stage>.yaml``.
STAGE_CONFIGS = {"synthesize_sketch": ("synthesize.yaml", "synthesize_sketch.yaml"),
                 # class conditioning (issue 18): stage 1 / stage 3 with classes, and their synthesis
                 "train_classes": ("pretrain.yaml", "train_classes.yaml"),
                 "finetune_classes": ("finetune.yaml", "train_classes.yaml"),
                 "synthesize_classes": ("synthesize.yaml", "synthesize_classes.yaml")}

#: the stages of ``bundles/retina_ldm`` and the oct_ddpm config each one extends (None: only oct_ddpm's common.yaml).
LDM_STAGES = {"train_autoencoder": "train_autoencoder.yaml", "train_diffusion": None, "synthesize": "synthesize.yaml"}

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


def _is_bundle(folder: Path, name: str) -> bool:
    """Whether ``folder`` is the bundle ``name``: it holds ``configs/`` and is called ``name`` or its
    ``configs/metadata.json`` says ``"name": name``."""
    configs = folder / "configs"
    if not configs.is_dir():
        return False
    if folder.resolve().name == name:
        return True
    try:
        return json.loads((configs / "metadata.json").read_text()).get("name") == name
    except (OSError, ValueError, AttributeError):
        return False


def _running_config_root() -> Path | None:
    """The folder of the first config file of the ``ConfigWorkflow`` that is evaluating this call, if any.

    MONAI's parser does not tell an expression which file it came from; the workflow does
    (``ConfigWorkflow.config_root_path``, the folder ``monai.bundle run`` also takes ``metadata.json`` and
    ``logging.conf`` from), and it is on the call stack while it parses its config.
    """
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigWorkflow):
            return Path(owner.config_root_path)
        frame = frame.f_back
    return None


def bundle_root(name: str) -> str:
    """The default ``bundle_root`` of a bundle's configs: the folder above the config files being run.

    So that ``cd bundles/oct_layer_seg && python -m monai.bundle run --config_file configs/inference.yaml`` (as
    model-zoo bundles are run) and ``python -m monai.bundle run --config_file
    bundles/oct_layer_seg/configs/inference.yaml`` from the project root both find ``models/``, whatever
    the working directory. In order:

    1. the parent of the folder of the first config file of the running ``ConfigWorkflow`` (``monai.bundle
       run``, ``check_properties``, :func:`run_bundle`), when that parent is the bundle ``name``;
    2. the working directory or its parent, when it is that bundle (a ``ConfigParser`` used directly);
    3. ``bundles/<name>`` under the working directory; 4. ``bundles/<name>`` of this checkout.

    ``--bundle_root`` on the command line (or MONAI Label, which sets it) replaces this.

    Args:
        name: the bundle's name (its folder name and ``metadata.json``'s ``name``), e.g. ``"oct_layer_seg"``.

    Returns:
        the bundle folder, relative to the working directory where it lies below it (``"."`` inside the bundle,
        ``"bundles/oct_layer_seg"`` at the project root), else absolute.

    Raises:
        FileNotFoundError: when none of these is the bundle (the message lists where it looked).
    """
    config_root = _running_config_root()
    candidates = [config_root.parent] if config_root is not None and config_root.name == "configs" else []
    cwd = Path.cwd()
    candidates += [cwd, cwd.parent, cwd / "bundles" / name, Path(__file__).resolve().parents[1] / "bundles" / name]
    for folder in candidates:
        if _is_bundle(folder, name):
            return os.path.relpath(folder) if folder.resolve().is_relative_to(cwd.resolve()) else str(folder.resolve())
    raise FileNotFoundError(f"bundle {name!r} not found (looked in {[str(c) for c in candidates]}); pass --bundle_root")


def stage_configs(stage: str) -> list[str]:
    """The config files (names in ``bundles/oct_ddpm/configs``, in load order) of an oct_ddpm stage.

    ``stage_configs("pretrain") == ["common.yaml", "pretrain.yaml"]``;
    ``stage_configs("synthesize_sketch") == ["common.yaml", "synthesize.yaml", "synthesize_sketch.yaml"]``.
    """
    return ["common.yaml", *STAGE_CONFIGS.get(stage, (f"{stage}.yaml",))]


#: the fundus_av stages: ``(bundle, file)`` in load order; each is layered on the OCT bundle's config of the same role
FUNDUS_STAGES = {
    "train_masks": (("oct_ddpm", "common.yaml"), ("fundus_av", "common.yaml"), ("oct_ddpm", "train_masks.yaml"),
                    ("fundus_av", "train_masks.yaml")),
    "train_autoencoder": (("oct_ddpm", "common.yaml"), ("fundus_av", "common.yaml"), ("oct_ddpm", "train_autoencoder.yaml"),
                          ("fundus_av", "train_autoencoder.yaml")),
    "train_images": (("oct_ddpm", "common.yaml"), ("fundus_av", "common.yaml"), ("oct_ddpm", "finetune.yaml"),
                     ("fundus_av", "train_images.yaml")),
    "synthesize": (("oct_ddpm", "common.yaml"), ("fundus_av", "common.yaml"), ("oct_ddpm", "synthesize.yaml"),
                   ("fundus_av", "synthesize.yaml")),
    "train_seg": (("oct_layer_seg", "train.yaml"), ("fundus_av", "train_seg.yaml")),
    "evaluate_seg": (("oct_layer_seg", "train.yaml"), ("fundus_av", "train_seg.yaml"), ("oct_layer_seg", "evaluate.yaml"),
                     ("fundus_av", "evaluate_seg.yaml")),
}


def fundus_stage_configs(stage: str, preset: str | None = None) -> list[str]:
    """The config files (absolute paths in this checkout, in load order) of a ``fundus_av`` stage.

    The fundus stages run the OCT bundles' configs of the same role with the fundus data laid over them (same
    engines, override names and files): ``fundus_stage_configs("train_masks")`` is ``oct_ddpm/configs/common.yaml``,
    ``fundus_av/configs/common.yaml``, ``oct_ddpm/configs/train_masks.yaml``, ``fundus_av/configs/train_masks.yaml``
    (under ``bundles/``); ``preset`` adds ``fundus_av/configs/presets/<preset>.yaml`` last.

    Raises:
        KeyError: for an unknown stage, listing the stages.
    """
    if stage not in FUNDUS_STAGES:
        raise KeyError(f"unknown fundus_av stage {stage!r}; stages: {list(FUNDUS_STAGES)}")
    root = Path(__file__).resolve().parents[1] / "bundles"
    files = [str(root / b / "configs" / f) for b, f in FUNDUS_STAGES[stage]]
    return files + ([str(root / "fundus_av" / "configs" / "presets" / f"{preset}.yaml")] if preset else [])


def ldm_stage_configs(stage: str, preset: str | None = None) -> list[str]:
    """The config files (relative to ``bundles/retina_ldm/configs``, in load order) of a retina_ldm stage.

    ``root.yaml`` (so that this bundle's ``metadata.json`` and ``bundle_root`` are used), oct_ddpm's
    ``common.yaml`` and the oct_ddpm stage it extends, then ``common.yaml``, ``<stage>.yaml`` and the preset.

    Raises:
        ValueError: for a stage retina_ldm does not have (names those it has).
    """
    if stage not in LDM_STAGES:
        raise ValueError(f"retina_ldm has no stage {stage!r} (stages: {list(LDM_STAGES)})")
    base = "../../oct_ddpm/configs/"
    extends = [base + LDM_STAGES[stage]] if LDM_STAGES[stage] else []
    return ["root.yaml", base + "common.yaml", *extends, "common.yaml", f"{stage}.yaml",
            *([f"presets/{preset}.yaml"] if preset else [])]


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


def check_device(device: str | torch.device | None) -> None:
    """Check that ``device`` can be used here: a CUDA device needs one.

    Args:
        device: what ``--device`` gave (``"cpu"``, ``"cuda:0"``, a ``torch.device``); None passes.

    Raises:
        ValueError: ``"--device cuda:0: no CUDA device; use --device cpu"`` when CUDA is asked for and absent.
    """
    if device is None:
        return
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: {NO_CUDA_ADVICE}")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (``__cause__``, or ``__context__`` unless suppressed), outer first."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return out


def _raised_by_us(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_PACKAGE_DIR)


def root_cause(exc: BaseException) -> BaseException:
    """The exception a user needs to read in a chain of wrappers (MONAI's "Failed to evaluate ...", "applying transform ...").

    That is the outermost exception raised by this package's code (its messages name the file or value, and one
    that wraps a library error adds the context), else the innermost exception of the chain.
    """
    chain = _chain(exc)
    ours = [e for e in chain if _raised_by_us(e)]
    return ours[0] if ours else chain[-1]


def error_summary(exc: BaseException) -> str:
    """One line for the end of a failed run: ``"<type>: <message>"`` of :func:`root_cause`, on one line.

    torch's messages for a missing CUDA device get ``"no CUDA device; use --device cpu"`` appended.
    """
    root = root_cause(exc)
    msg = " ".join(line.strip() for line in str(root).splitlines() if line.strip())
    line = f"{type(root).__name__}: {msg}" if msg else type(root).__name__
    if any(k in msg.lower() for k in _NO_CUDA):
        line += f" -> {NO_CUDA_ADVICE}"
    return line


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """Print the traceback, then :func:`error_summary` as the last line, and leave with exit code 1.

    ``os._exit`` skips the interpreter's shutdown, where native threads left by a failed run (data loading, torch's
    pools) can abort the process with "terminate called without an active exception" (exit code 134).
    """
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: Python's own handling
        sys.__excepthook__(exc_type, exc, tb)
        return
    try:
        sys.stdout.flush()
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        print(error_summary(exc), file=sys.stderr)
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed stream must not change the exit code
                pass
        os._exit(1)


def _is_command_line() -> bool:
    """Whether this process is ``python -m monai.bundle ...`` (or ``python -m monai_oct ...``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec) and str(spec.name).startswith(("monai.bundle", "monai_oct"))


def install_error_handler(device: str | torch.device | None = None, force: bool = False) -> None:
    """Make a failed bundle run end with its cause as the last line of stderr and exit code 1; check ``device``.

    MONAI's config machinery wraps every exception of a stage in ``RuntimeError("Failed to evaluate ...")``
    chains, so the message that names the bad file sits mid-traceback. This sets ``sys.excepthook`` to print
    the traceback as usual and then :func:`error_summary` (the root cause, one line) before exiting with
    ``os._exit(1)`` (:func:`_excepthook`). Only a command-line run (``python -m monai.bundle``) is changed, unless
    ``force``: a notebook or test that runs a bundle in-process keeps its own handling. Called first in every
    config's ``initialize:`` list.

    Args:
        device: the stage's ``@device``, checked with :func:`check_device` (after the handler is set, so the
            message is the last line).
        force: install in any process.

    Raises:
        ValueError: for a CUDA device on a machine without one.
    """
    if force or _is_command_line():
        sys.excepthook = _excepthook
    check_device(device)
