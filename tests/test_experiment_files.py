"""Experiment files: `causal-scrub run path/to/file.py` treats a user's file like a bundled one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from causal_scrubbing import experiments
from causal_scrubbing.cli import app
from causal_scrubbing.experiments import Experiment, ExperimentFileError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_experiment.py"
runner = CliRunner()


def write(tmp_path: Path, body: str, name: str = "exp.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


TOY_FILE = """
    from causal_scrubbing.experiments import toy

    def build():
        return toy.build()
"""


def test_file_runs_exactly_like_the_bundled_experiment(tmp_path):
    """A file returning the toy experiment gives the toy's table and results.json, number for number."""
    path = write(tmp_path, TOY_FILE)
    args = ["--n", "400", "--seed", "2", "--quiet"]
    bundled = runner.invoke(app, ["run", "toy", *args, "--out", str(tmp_path / "a")])
    from_file = runner.invoke(app, ["run", str(path), *args, "--out", str(tmp_path / "b")])
    assert bundled.exit_code == 0 and from_file.exit_code == 0, from_file.output
    table = lambda out: out.split("\nwrote ")[0]  # noqa: E731 - the paths written differ
    assert table(from_file.output) == table(bundled.output)
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    drop = lambda d: {k: v for k, v in d.items() if k != "versions"}  # noqa: E731
    assert drop(a) == drop(b)
    assert (tmp_path / "b" / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_example_file_runs_and_its_hypotheses_rank_as_documented(tmp_path):
    out = tmp_path / "mine"
    result = runner.invoke(app, ["run", str(EXAMPLE), "--n", "1000", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == "my_experiment"
    rec = {x["name"]: x["loss_recovered"] for x in data["experiments"]}
    assert list(rec) == ["mlp_computes_xor", "mlp_computes_y", "mlp_reads_xor_and_cd", "mlp_reads_a_b"]
    assert rec["mlp_reads_xor_and_cd"] > 0.99 and rec["mlp_computes_y"] > 0.99
    assert rec["mlp_computes_xor"] < 0.9 and rec["mlp_reads_a_b"] < 0.9
    assert "mlp_reads_a_b" in (out / "report.html").read_text()


def test_show_accepts_a_file(tmp_path):
    result = runner.invoke(app, ["show", str(write(tmp_path, TOY_FILE)), "--hypothesis", "only_b"])
    assert result.exit_code == 0, result.output
    assert "hypothesis 'only_b'" in result.output and "ds[B]" in result.output


def test_load_registers_one_private_module_per_path(tmp_path):
    body = """
        from dataclasses import dataclass   # dataclasses need the module in sys.modules
        from causal_scrubbing.experiments import toy

        @dataclass
        class Settings:
            repeats: int = 10

        def build():
            return toy.build()
    """
    path = write(tmp_path, body, name="my-exp.py")
    before = set(sys.modules)
    exp = experiments.load(str(path))
    again = experiments.load(path)
    assert isinstance(exp, Experiment) and isinstance(again, Experiment)
    added = set(sys.modules) - before
    assert len(added) == 1
    (name,) = added
    assert name.startswith("causal_scrubbing_experiment_file_my_exp_")
    assert Path(sys.modules[name].__file__) == path.resolve()


def test_missing_file_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "nope.py"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope.py" in result.output and "does not exist" in result.output


def test_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "d.py").mkdir()
    with pytest.raises(ExperimentFileError, match="is a directory"):
        experiments.load(tmp_path / "d.py")


def test_file_without_build(tmp_path):
    path = write(tmp_path, "x = 1\n")
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert str(path.resolve()) in result.output and "defines no build()" in result.output


def test_build_that_is_not_a_function(tmp_path):
    with pytest.raises(ExperimentFileError, match="has a build that is a int"):
        experiments.load(write(tmp_path, "build = 3\n"))


def test_build_returning_the_wrong_type(tmp_path):
    path = write(tmp_path, "def build():\n    return {'graph': None}\n")
    with pytest.raises(ExperimentFileError, match=r"build\(\) in experiment file .*exp\.py.* returned a "
                                                  r"dict; it must return a causal_scrubbing"):
        experiments.load(path)


def test_error_while_importing_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "import torch\n\nvalue = undefined_name + 1\n")
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert str(path.resolve()) in result.output
    assert "line 3" in result.output and "NameError" in result.output and "undefined_name" in result.output
    failed = [m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(path.resolve())]
    assert failed == []  # a file that failed to import leaves no module behind


def test_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "def build():\n    return (\n")
    with pytest.raises(ExperimentFileError, match=r"exp\.py.*line \d.*SyntaxError"):
        experiments.load(path)


def test_error_inside_build_names_the_file_line_and_function(tmp_path):
    body = """
        def helper():
            raise RuntimeError("no weights here")

        def build():
            return helper()
    """
    path = write(tmp_path, body)
    with pytest.raises(ExperimentFileError) as info:
        experiments.load(path)
    msg = str(info.value)
    assert msg.startswith("build() in experiment file") and str(path.resolve()) in msg
    assert "line 3, in helper" in msg and "RuntimeError: no weights here" in msg
    assert isinstance(info.value.__cause__, RuntimeError)


def test_hypothesis_of_the_wrong_type(tmp_path):
    body = """
        import dataclasses
        from causal_scrubbing.experiments import toy

        def build():
            return dataclasses.replace(toy.build(), hypotheses={"h": "not a node"})
    """
    with pytest.raises(ExperimentFileError, match="hypothesis 'h' is a str"):
        experiments.load(write(tmp_path, body))


def test_no_hypotheses(tmp_path):
    body = """
        import dataclasses
        from causal_scrubbing.experiments import toy

        def build():
            return dataclasses.replace(toy.build(), hypotheses={})
    """
    with pytest.raises(ExperimentFileError, match="no hypotheses"):
        experiments.load(write(tmp_path, body))


def test_unknown_name_mentions_files(tmp_path):
    result = runner.invoke(app, ["run", "my_experiment", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "path to a .py file" in result.output


def test_the_documented_skeleton_is_a_working_experiment_file(tmp_path):
    doc = (ROOT / "docs" / "experiment_files.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "def build" in b]
    path = tmp_path / "and_gate.py"
    path.write_text(snippet)
    result = runner.invoke(app, ["run", str(path), "--n", "300", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "o" / "results.json").read_text())["experiments"]
    assert row["name"] == "A reads a" and 0.2 < row["loss_recovered"] < 0.8  # 50% in expectation


def test_quiet_turns_every_progress_bar_off(tmp_path):
    path = write(tmp_path, TOY_FILE)
    for quiet in (False, True):
        result = subprocess.run(
            [sys.executable, "-m", "causal_scrubbing.cli", "run", str(path), "--n", "100",
             "--out", str(tmp_path / f"o{int(quiet)}")] + (["--quiet"] if quiet else []),
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "correct" in result.stdout
        if quiet:
            assert result.stderr == ""
        else:
            assert "scrubbing" in result.stderr  # the bar over hypotheses


def test_a_missing_optional_extra_names_the_pip_extra(monkeypatch):
    """The induction experiment's tokenizer needs `tokenizers`, from the `[induction]` extra."""
    from causal_scrubbing.core.errors import ExtraNotInstalled
    from causal_scrubbing.experiments.induction import data

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` now fails
    install = re.escape("pip install 'causal-scrubbing[induction]'")
    with pytest.raises(ExtraNotInstalled, match=install) as err:
        data.tokenizer()
    assert "The induction tokenizer needs the optional package 'tokenizers'" in str(err.value)
    assert isinstance(err.value, ImportError) and isinstance(err.value.__cause__, ImportError)
