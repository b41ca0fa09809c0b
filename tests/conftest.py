"""Shared fixtures: a small phantom dataset (built once per session) and the real data when present."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

# one thread per pytest-xdist worker (`make test` runs -n 2: the workers already fill the cores), else up to two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

#: ../shared/data beside the repository (real data; absent on a user's fresh machine).
SHARED_DATA = Path(os.environ.get("MONAI_OCT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
#: the diffusion bundle the stage tests run, and the environment of their subprocesses (one thread, fast malloc).
OCT_DDPM_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "oct_ddpm"
BUNDLE_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def load_benchmark(name: str, module: str | None = None):
    """``benchmarks/<name>.py`` imported by path (benchmarks are scripts, not a package) as ``module`` (default
    ``name``), registered in ``sys.modules`` (dataclasses look their module up there), with ``benchmarks/`` on the
    path for the benchmarks that import each other."""
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(module or name, folder / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_stage(name: str, timeout: float = 180, **overrides) -> str:
    """Run one stage of the oct_ddpm bundle (its :func:`~monai_oct.bundle.stage_configs`) as a subprocess; return its output,
    or fail the test with the output's end when it fails."""
    from monai_oct.bundle import run_bundle, stage_configs

    try:
        res = run_bundle(OCT_DDPM_BUNDLE, stage_configs(name), in_process=False, env=BUNDLE_ENV,
                         timeout=timeout, **overrides)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"stage {name} failed ({e.returncode}):\n{(e.stdout + e.stderr)[-4000:]}")
    return res.stdout + res.stderr


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 12-scan 64x64 phantom dataset (``datalist.json`` with train 9 / validation 3)."""
    from monai_oct.phantoms.oct import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(out, num=12, size=(64, 64), seed=0)
    return out


@pytest.fixture(scope="session")
def duke_dir() -> Path:
    """``../shared/data/duke_dme``; skips the test when the real data is absent."""
    d = SHARED_DATA / "duke_dme"
    if not (d / "datalist_train.json").is_file():
        pytest.skip(f"real Duke DME data not found at {d} (set MONAI_OCT_SHARED_DATA); skipping")
    return d


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found; skipping")
    return SHARED_DATA
