"""``make demo``: the main job on built-in phantom data."""

from __future__ import annotations

from pathlib import Path

from monai_oct.data.datalist import check_dataset, load_datalist
from monai_oct.data.phantom import write_phantom_dataset

__all__ = ["run_demo"]


def run_demo(out: Path, quick: bool = False) -> int:
    """Write and validate a phantom dataset under ``out``; returns an exit code."""
    out = Path(out)
    data = out / "phantom"
    dl = write_phantom_dataset(data, num=8 if quick else 48, size=(256, 256), seed=0)
    report = check_dataset(load_datalist(dl))
    print(report.summary())
    if not report.ok:
        return 1
    print(f"\nphantom dataset: {data}\ndatalist: {dl}")
    return 0
