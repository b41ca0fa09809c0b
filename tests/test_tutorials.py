"""The tutorial notebooks run top to bottom in a fresh ``python3`` kernel (so they stay true), render to markdown with
their pictures, and are committed without outputs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the dev extra (nbclient, nbformat, ipykernel) runs the notebooks")
pytest.importorskip("nbclient", reason="the dev extra (nbclient, nbformat, ipykernel) runs the notebooks")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("tutorials_render", ROOT / "tutorials" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

NOTEBOOKS = render.notebooks()


def _untracked(folder: Path) -> set[str]:
    """Files under ``folder`` that git does not track and does not ignore (what a notebook must not leave)."""
    res = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", str(folder)], cwd=ROOT,
                         capture_output=True, text=True)
    return set(res.stdout.split()) if res.returncode == 0 else set()


def test_the_six_tutorials_are_notebooks():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"]
    assert not list((ROOT / "tutorials").glob("*.md")), "a markdown tutorial left beside its notebook"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    """Every cell runs without error (nbclient raises ``CellExecutionError`` naming the cell), the notebook writes into
    its ``OUT`` only, shows at least one picture, and renders to markdown with the pictures as linked PNG files."""
    before = _untracked(ROOT / "tutorials")
    t0 = time.time()
    nb = render.execute(path, tmp_path / "out", timeout=240)
    seconds = time.time() - t0
    assert any((tmp_path / "out").iterdir()), "the notebook wrote nothing into OUT"
    assert _untracked(ROOT / "tutorials") == before, "the notebook wrote into the repository"
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert pngs, f"{path.name} shows no picture"
    md = render.to_markdown(nb, tmp_path / "md" / f"{path.stem}.md")
    text = md.read_text()
    images = sorted((tmp_path / "md" / f"{path.stem}_files").glob("*.png"))
    assert len(images) == len(pngs) and all(f"{p.parent.name}/{p.name}" in text for p in images)
    for target in render.LINK.findall(text):  # links to the repository's files still lead there from the page
        target = target.partition("#")[0]
        sibling = target.endswith(".md") and "/" not in target
        if target and not target.startswith(("http:", "https:")) and not sibling:
            assert (md.parent / target).exists(), f"{md.name}: link {target} leads nowhere"
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_stripped(path):
    """Outputs and execution counts stay out of git (they are rebuilt by ``make tutorials``), and the parameter cell
    that points ``OUT`` away from the repository is there."""
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before committing"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.strip() == "OUT = None"
    assert nb.metadata.get("kernelspec", {}).get("name") == render.KERNEL


def test_stripped_check_catches_outputs(tmp_path):
    """The check above fails on an executed notebook (so it is not vacuous)."""
    nb = nbformat.read(str(NOTEBOOKS[0]), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    nb.cells[2].execution_count = 1
    bad = tmp_path / NOTEBOOKS[0].name
    nbformat.write(nb, str(bad))
    with pytest.raises(AssertionError, match="cells \\[2\\]"):
        test_committed_notebook_is_stripped(bad)


def test_kernel_is_this_interpreter(tmp_path):
    """The ``python3`` kernel runs this environment's interpreter (ipykernel's kernelspec in the venv), and sees this
    checkout's package first, so the notebooks test the code next to them."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("OUT = None"), nbformat.v4.new_code_cell(
        "import sys, monai_oct; print(sys.prefix); print(monai_oct.__file__)")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "probe.ipynb"
    nbformat.write(nb, str(path))
    prefix, package = render.execute(path, tmp_path / "out").cells[1].outputs[0].text.split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()  # the executable resolves to the base python
    assert Path(package).resolve() == (ROOT / "monai_oct" / "__init__.py").resolve()


def test_notebook_without_parameter_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    with pytest.raises(ValueError, match="parameters"):
        render.set_parameters(nb, tmp_path)
