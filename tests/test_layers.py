"""The package's layers, as the README's layout table states them: each module imports only
modules of its own layer or below, and no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import causal_scrubbing

ROOT = Path(causal_scrubbing.__file__).parent

#: The README's layout table, bottom up: (layer, the modules and packages in it). Inside the core
#: the order of its modules is the import order its docstring gives.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["core.errors", "core.data", "core.names"]),
    ("core", ["core.graph"]),
    ("core", ["core.paths", "core.samplers", "core.rewrites"]),
    ("core", ["core.hypothesis"]),
    ("core", ["core.draws"]),
    ("core", ["core.memory"]),
    ("core", ["core.engine", "core.reference"]),
    ("core", ["core.results", "core"]),
    ("core", ["core.statistics"]),
    ("pipeline", ["options"]),
    ("pipeline", ["pipeline"]),
    ("pipeline", ["scrubbing"]),
    ("pipeline", ["experiment"]),
    ("models", ["models"]),
    ("search", ["searching"]),
    ("analysis", ["audit"]),
    ("presentation", ["report", "show"]),
    ("executors", ["distributed"]),
    ("research", ["experiments"]),
    ("research", ["bench"]),
    ("command line", ["cli"]),
]


FACADE = "causal_scrubbing (the package __init__)"


#: Imports that run upward, each inside one method only, imported when it is called: a result
#: object's `draw()` / `plot()` / `plot_curve()` returns a figure drawn by the presentation layer
#: (as a table's `.plot()` draws with a plotting library). `searching.curve` is here because
#: `CurveResult.plot()` wraps its curve (drawn in `searching.curve`, as curve.html is) in the
#: same `report.circuit.Figure`. (importing module, imported module)
LAZY_FIGURES = {("core.results", "report.circuit"), ("searching.result", "report.circuit"),
                ("searching.curve", "report.circuit")}


def rank(module: str) -> int:
    """The layer index of a module path such as `core.engine` or `experiments.paren.train`."""
    if module == FACADE:
        return len(LAYERS)  # the facade imports every layer: above them all
    best = None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > best[1]:
                    best = (i, len(name))
    assert best is not None, f"{module} is in no layer of the README's table; add it"
    return best[0]


def layer_name(i: int) -> str:
    return LAYERS[i][0] if i < len(LAYERS) else "the package facade"


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:  # the package's own __init__ is the facade over every layer
            out.append((".".join(parts), path))
    return out


def imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module relative to the package, names imported, line) for every import of
    this package's modules (relative, or absolute `causal_scrubbing.x`), outside strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("causal_scrubbing"):
                target = node.module.removeprefix("causal_scrubbing").lstrip(".")
            else:
                continue
            names = [a.name for a in node.names]
            if not target:  # `from .. import x`: the modules x, or names of the package facade
                found += [(n if (ROOT / n).is_dir() or (ROOT / f"{n}.py").is_file() else FACADE,
                           [n], node.lineno) for n in names]
            else:
                found.append((target, names, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("causal_scrubbing."):
                    found.append((a.name.removeprefix("causal_scrubbing."), [], node.lineno))
    return found


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_run_only_downward(module, path):
    own = rank(module)
    for target, _, line in imports(module, path):
        if target.split(".")[0] == module.split(".")[0] and rank(target) == own:
            continue  # inside one package of one layer
        if (module, target) in LAZY_FIGURES:
            continue
        assert rank(target) <= own, (
            f"{path.relative_to(ROOT)}:{line} imports {target} ({layer_name(rank(target))}), above "
            f"{module} ({layer_name(own)})")


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_no_module_imports_another_modules_private_names(module, path):
    for target, names, line in imports(module, path):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{path.relative_to(ROOT)}:{line} imports {private} from {target}"


def test_the_layer_table_covers_every_module():
    for module, _ in modules():
        rank(module)


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds relative, absolute and facade imports (so the checks above can fail)."""
    path = tmp_path / "engine.py"
    path.write_text("from ..experiments import load\nfrom .. import __version__\n"
                    "import causal_scrubbing.cli\nfrom .graph import _private\n")
    found = imports("core.engine", path)
    assert [t for t, _, _ in found] == ["experiments", FACADE, "cli", "core.graph"]
    assert [rank(t) > rank("core.engine") for t, _, _ in found] == [True, True, True, False]
