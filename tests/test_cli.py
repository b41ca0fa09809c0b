"""The monai-oct command line: phantom and check-data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from monai_oct.cli import main
from monai_oct.core.io import write_png


def test_phantom_then_check_data(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--num", "4", "--size", "40", "48", "--seed", "1"]) == 0
    assert main(["check-data", str(tmp_path / "datalist.json")]) == 0
    out = capsys.readouterr().out
    assert "items: 3 (3 with labels)" in out and "OK" in out


def test_check_data_rejects_bad_files_by_name(tmp_path, capsys):
    write_png(tmp_path / "i.png", np.zeros((8, 8), np.uint8))
    write_png(tmp_path / "l12.png", np.full((8, 8), 12, np.uint8))
    write_png(tmp_path / "l_small.png", np.zeros((8, 7), np.uint8))
    (tmp_path / "dl.json").write_text(json.dumps({"train": [
        {"image": "i.png", "label": "l12.png"},
        {"image": "i.png", "label": "l_small.png"},
        {"image": "gone.png", "label": "l12.png"},
    ]}))
    assert main(["check-data", str(tmp_path / "dl.json")]) == 1
    out = capsys.readouterr().out
    assert "l12.png: label ids [12]" in out
    assert "l_small.png: label size" in out
    assert "gone.png: file not found" in out
    assert main(["check-data", str(tmp_path / "dl.json"), "--num-classes", "13"]) == 1  # 12 now valid, others not
    out = capsys.readouterr().out
    assert "[12]" not in out and "gone.png" in out
    assert main(["check-data", str(tmp_path / "nope.json")]) == 2


def test_python_dash_m_entry_point(duke_dir):
    for split, n in [("train", 66), ("val", 22)]:
        r = subprocess.run([sys.executable, "-m", "monai_oct", "check-data", str(duke_dir / f"datalist_{split}.json")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert f"items: {n} ({n} with labels)" in r.stdout
