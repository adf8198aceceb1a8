"""The tutorials in docs/tutorials run from top to bottom, and are well-formed jupytext notebooks.

Each tutorial is a jupytext percent-format `.py` file. Executing it as a script runs every
cell in order, so a cell that fails (or an assertion that keeps its prose honest) fails
here. Each runs in a fresh working directory, so nothing it writes lands in the repository.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))


def test_the_tutorials_are_all_here():
    assert [p.name for p in TUTORIALS] == ["01_your_own_model.py", "02_paren.py", "03_ioi.py", "04_sae.py"]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_is_a_percent_format_notebook(path):
    text = path.read_text()
    header = re.match(r"# ---\n((?:#.*\n)+?)# ---\n", text)
    assert header, f"{path.name}: no jupytext header"
    assert "format_name: percent" in header.group(1) and "kernelspec:" in header.group(1)
    cells = re.split(r"^# %%", text, flags=re.M)[1:]
    markdown = [c for c in cells if c.startswith(" [markdown]")]
    code = [c for c in cells if not c.startswith(" [markdown]")]
    assert len(markdown) >= 4 and len(code) >= 4
    assert markdown[0].split("\n")[1].startswith("# # Tutorial"), "opens with a title cell"
    for cell in markdown:  # markdown cells hold only comments
        lines = [ln for ln in cell.split("\n")[1:] if ln.strip()]
        assert all(ln.startswith("#") for ln in lines), cell[:80]


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_links_resolve(path):
    for target in re.findall(r"\]\(([^)#]+)\)", path.read_text()):
        if not target.startswith("http"):
            assert (path.parent / target).resolve().exists(), f"{path.name}: broken link {target}"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert "recovered" in out  # every tutorial scrubs and prints what it found
    assert namespace  # the cells defined their names
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_the_notebook_copy_matches_its_source(path):
    """Each tutorial's .ipynb (for Jupyter and Colab) holds the cells of its .py source."""
    import json

    jupytext = pytest.importorskip("jupytext", reason="jupytext is in the test extra")
    notebook = path.with_suffix(".ipynb")
    assert notebook.is_file(), f"{notebook.name} is missing: run `make notebooks`"
    want = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    got = [(c["cell_type"], "".join(c["source"])) for c in json.loads(notebook.read_text())["cells"]]
    assert got == want, f"{notebook.name} is out of date with {path.name}: run `make notebooks`"
