"""The package's layering, checked from its source: every import points down, and there is no import cycle.

The order is written once, here (``LAYERS``, lowest first). A module may import

- any module of a lower layer;
- a module of its own top-level package (``monai_oct.transforms.dmc`` -> ``monai_oct.transforms.utils``),
  as long as the module graph stays acyclic.

Importing a sibling package of the same layer, or anything above, fails. Every ``import`` in a module counts,
at the top, inside a function or under ``TYPE_CHECKING``: a lazy import does not hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monai_oct"

#: Layers, lowest first; each entry is a top-level package or module of ``monai_oct``.
LAYERS: list[tuple[str, ...]] = [
    ("__init__",),  # the version string only
    ("core",),  # label tables, file I/O, datalists, geometry, seeding, pictures
    ("phantoms",),  # data generators with exact labels
    ("transforms", "networks", "schedulers", "losses", "optim"),  # building blocks
    ("engines", "metrics"),  # engines and metrics use networks / schedulers / transforms
    ("handlers",),  # ignite handlers use engines' objects and metrics
    ("recipes",),  # how the pieces fit for a task
    ("bundle",),  # running bundle configs
    ("demo",),
    ("cli",),
    ("__main__",),
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every ``monai_oct`` module ``path`` imports (absolute or relative, at any depth of the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "monai_oct")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "monai_oct":
                continue
            out.add(target)
            for a in node.names:  # ``from monai_oct.core import io`` imports the module monai_oct.core.io
                if (PACKAGE.parent / (target.replace(".", "/") + f"/{a.name}.py")).is_file():
                    out.add(f"{target}.{a.name}")
    out.discard(module)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        graph[mod] = _imports(path, mod)
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_layer():
    graph = _graph()
    missing = sorted({_top(m) for m in graph} - set(RANK))
    assert not missing, f"add {missing} to LAYERS in {__file__}"


def test_imports_point_down():
    bad = []
    for mod, deps in _graph().items():
        src = _top(mod)
        for dep in sorted(deps):
            dst = _top(dep)
            if dst == src and mod != "monai_oct":
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{mod} -> {dep} ({src} is layer {RANK[src]}, {dst} layer {RANK[dst]})")
    assert not bad, "imports that do not point down:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _graph()
    # a package imports its own __init__ implicitly; cycles are between modules, not with their package file
    edges = {m: {d for d in deps if d in graph and not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("source, expected", [
    ("from monai_oct.recipes.sources import LabelBank\n", False),
    ("def f():\n    from monai_oct.cli import main\n", False),
    ("from monai_oct.core.io import read_json\n", True),
])
def test_the_check_sees_upward_and_lazy_imports(tmp_path, source, expected):
    """The checker itself: an upward import from core (also a lazy one) is seen, a downward one is fine."""
    path = PACKAGE / "core" / "labels.py"
    deps = {d for d in _imports_of_source(source, "monai_oct.core.labels")}
    ok = all(RANK[_top(d)] <= RANK["core"] for d in deps)
    assert ok == expected, (source, deps)
    assert path.is_file()


def _imports_of_source(source: str, module: str) -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.py"
        p.write_text(source)
        return _imports(p, module)
