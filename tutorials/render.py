"""Execute the tutorial notebooks and render the executed copies as markdown with images (``make tutorials``).

``python tutorials/render.py --out docs/tutorials`` runs every ``tutorials/*.ipynb`` in a fresh ``python3`` kernel
(nbclient), each with its own temporary ``OUT`` folder (the notebook's parameter cell, tagged ``parameters``), and
writes ``docs/tutorials/<name>.md`` with the pictures in ``docs/tutorials/<name>_files/``. The rendered copy is a
build product (git-ignored); the notebooks in git carry no outputs (``tests/test_tutorials.py`` checks both).

The markdown writer is a few lines of our own rather than ``jupyter nbconvert --to markdown``: nbconvert would
add about ten packages (jinja2, mistune, bleach, beautifulsoup4, pandocfilters, ...) to the ``dev`` extra for what
is a loop over cells; nbclient and nbformat, which execute and read the notebooks, are the ones the tests need.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
#: the kernel every notebook runs in: the one ipykernel installs into the environment (``share/jupyter/kernels``),
#: which jupyter_client starts with this interpreter.
KERNEL = "python3"
#: terminal colour codes of IPython's tracebacks
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: a markdown link's target
LINK = re.compile(r"\]\(([^)\s]+)\)")


def notebooks(folder: str | os.PathLike = TUTORIALS) -> list[Path]:
    """The tutorial notebooks, in reading order (their names start with the number)."""
    return sorted(Path(folder).glob("*.ipynb"))


def set_parameters(nb: nbformat.NotebookNode, out: str | os.PathLike) -> None:
    """Point the notebook's parameter cell (the code cell tagged ``parameters``) at ``out``.

    Raises:
        ValueError: when the notebook has no such cell (it would write wherever its default points).
    """
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = f"OUT = {str(out)!r}"
            return
    raise ValueError("the notebook has no code cell tagged 'parameters' (it must hold OUT = ...)")


def execute(path: str | os.PathLike, out: str | os.PathLike, timeout: int = 300) -> nbformat.NotebookNode:
    """Run a notebook top to bottom with ``OUT = out``, in ``out`` as working directory; return the executed copy.

    The kernel sees this checkout first on ``PYTHONPATH`` (as the bundles' subprocesses do), so a worktree's own
    package is what the notebook imports.

    Args:
        path: the ``.ipynb`` file (left unchanged).
        out: the folder the notebook writes into (created).
        timeout: seconds any one cell may run.

    Raises:
        nbclient.exceptions.CellExecutionError: when a cell fails (the message names the cell and the error).
        ValueError: when the notebook has no parameter cell.
    """
    nb = nbformat.read(str(path), as_version=4)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    set_parameters(nb, out)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(out)}})
    client.execute(env=env)
    return nb


def _rebase_links(text: str, folder: Path) -> str:
    """Markdown links of a notebook (relative to ``tutorials/``) made to work from ``folder``: a sibling notebook
    becomes its rendered ``.md``, any other relative path is rewritten relative to ``folder``."""

    def rebase(m: re.Match) -> str:
        target, _, anchor = m.group(1).partition("#")
        if not target or re.match(r"[a-z]+:", target):
            return m.group(0)
        if target.endswith(".ipynb") and "/" not in target:
            new = target[: -len(".ipynb")] + ".md"
        else:
            new = Path(os.path.relpath(TUTORIALS / target, folder.resolve())).as_posix()
        return f"]({new}{'#' + anchor if anchor else ''})"

    return LINK.sub(rebase, text)


def _fence(text: str, lang: str = "") -> str:
    return f"```{lang}\n{text.rstrip()}\n```\n"


def to_markdown(nb: nbformat.NotebookNode, path: str | os.PathLike) -> Path:
    """Write an executed notebook as markdown: text cells as they are (links rebased to the page's folder), code in
    fences, then its outputs (text in fences, PNGs as files in ``<stem>_files/`` linked from the page, markdown
    outputs as they are).

    Returns:
        the markdown file.
    """
    path = Path(path)
    files = path.with_name(f"{path.stem}_files")
    files.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    n_img = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(_rebase_links(cell.source, path.parent).rstrip() + "\n")
            continue
        if cell.cell_type != "code":
            continue
        parts.append(_fence(cell.source, "python"))
        stream = ""  # consecutive stream messages (a kernel sends many) make one block
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                stream += output.text
                continue
            if stream:
                parts.append(_fence(stream))
                stream = ""
            if output.output_type == "error":
                parts.append(_fence(ANSI.sub("", "\n".join(output.traceback))))
            elif output.output_type in ("display_data", "execute_result"):
                data = output.get("data", {})
                if "image/png" in data:
                    name = f"{path.stem}_{n_img:02d}.png"
                    (files / name).write_bytes(base64.b64decode(data["image/png"]))
                    parts.append(f"![output {n_img}]({files.name}/{name})\n")
                    n_img += 1
                elif "text/markdown" in data:
                    parts.append(data["text/markdown"].rstrip() + "\n")
                elif "text/plain" in data:
                    parts.append(_fence(data["text/plain"]))
        if stream:
            parts.append(_fence(stream))
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> int:
    """Execute the notebooks (all, or those named) and render them under ``--out``; print each one's time."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="notebooks to render (default: tutorials/*.ipynb)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "tutorials", help="folder of the rendered copies")
    ap.add_argument("--timeout", type=int, default=300, help="seconds any one cell may run")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for nb_path in args.notebooks or notebooks():
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix=f"{nb_path.stem}_") as work:
            nb = execute(nb_path, work, args.timeout)
        md = to_markdown(nb, args.out / f"{nb_path.stem}.md")
        print(f"{nb_path.name}: {time.time() - t0:.1f} s -> {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
