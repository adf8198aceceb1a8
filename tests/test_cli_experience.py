"""What the command line says and where it writes: one clear line for bad options, defaults
that do not collide, a status line while loading, one line on Ctrl-C, help that names its
arguments, and the pipeline's options checked in one place (issue: what a researcher sees)."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing import cli
from causal_scrubbing.cli import app
from causal_scrubbing.options import RunOptions, SearchOptions

runner = CliRunner()


@pytest.mark.parametrize("threshold", ["1.5", "-0.5", "nan"])
def test_threshold_outside_0_1_is_refused_with_one_line_and_nothing_written(tmp_path, threshold):
    out = tmp_path / "s"
    result = runner.invoke(app, ["search", "toy", "--threshold", threshold, "--out", str(out)])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --threshold must be a fraction")
    assert not out.exists()


def test_run_without_out_writes_runs_of_the_experiment_and_two_runs_do_not_collide(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        first = runner.invoke(app, ["run", "toy", "--n", "100", "--quiet", "--no-audit"])
        second = runner.invoke(app, ["run", "examples_file_stem.py", "--quiet"])
    finally:
        os.chdir(cwd)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "runs" / "toy" / "results.json").is_file()
    assert second.exit_code == 2 and "does not exist" in second.output  # a file's stem, no clash
    assert cli.default_out("examples/my_experiment.py").as_posix() == "runs/my_experiment"


def test_a_status_line_says_what_is_loading_unless_quiet(tmp_path):
    loud = runner.invoke(app, ["run", "toy", "--n", "100", "--no-audit", "--out", str(tmp_path / "a")])
    quiet = runner.invoke(app, ["run", "toy", "--n", "100", "--no-audit", "--quiet",
                                "--out", str(tmp_path / "b")])
    assert "loading toy" in loud.output
    assert "loading" not in quiet.output


def test_ctrl_c_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_experiment", interrupted)
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "toy", "--n", "100", "--quiet", "--out", str(out)])
    assert result.exit_code == 130
    assert "interrupted; nothing written" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_help_names_the_argument_and_shows_no_bool_noise():
    for command in ("run", "search", "show"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"}).output
        assert "NAME" in text and "{name}" not in text and "<bool>" not in text, command


def test_report_redraws_a_searchs_page(tmp_path):
    out = tmp_path / "s"
    found = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "200", "--quiet",
                                "--out", str(out)])
    assert found.exit_code == 0, found.output
    (out / "report.html").unlink()
    redrawn = runner.invoke(app, ["report", str(out)])
    assert redrawn.exit_code == 0, redrawn.output
    assert "search: toy" in (out / "report.html").read_text()
    data = json.loads((out / "search.json").read_text())
    assert data["reproduce"].endswith(f"--out {out / 'heldout'}")  # its own output directory
    assert f"--out {out / 'heldout'}" in (out / "hypothesis.py").read_text()


def test_the_feature_step_skip_is_printed(tmp_path, monkeypatch):
    from causal_scrubbing.searching import steps

    def too_large(*args, **kwargs):
        raise cs.ScrubError("tree too large (9 nodes > 3)")

    monkeypatch.setattr(steps, "build_hypothesis", too_large)  # only the feature step builds trees
    result = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "200", "--quiet",
                                 "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "feature step skipped: tree too large (9 nodes > 3)" in result.output


def test_undefined_recovery_does_not_suggest_the_baseline_already_used():
    g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: 0 * i, i="x")], output="out")
    ds = cs.Dataset({"x": torch.randn(200)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cs.scrub(g, cs.InterpNode("all"), ds, lambda o, r: (o - r["x"]) ** 2)
    text = " ".join(str(w.message) for w in caught if w.category is cs.UndefinedRecoveryWarning)
    assert "Loss recovered is undefined" in text and "random_baseline()" not in text


@pytest.mark.parametrize("bad, message", [
    (dict(n=0), "n must be a positive"), (dict(seed=-1), "seed must be a whole number"),
    (dict(chunk_size=0), "chunk_size must be"), (dict(memory_mb=-5), "memory_mb must be"),
    (dict(device="gpu"), "Did you mean 'cuda'"), (dict(n_bootstrap=0), "n_bootstrap must be"),
])
def test_run_options_check_every_value_in_one_place(bad, message):
    with pytest.raises(cs.ScrubError, match=message):
        RunOptions(**bad)
    with pytest.raises(cs.ScrubError, match=message):  # the same check through the API
        g = cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="out")
        cs.scrub(g, cs.InterpNode("all"), cs.Dataset({"x": torch.randn(20)}),
                 lambda o, r: (o - r["x"]) ** 2, **bad)


@pytest.mark.parametrize("bad, message", [
    (dict(threshold=2), "threshold must be a fraction"), (dict(granularity="heads"), "granularity"),
    (dict(draws="some"), "draws must be"), (dict(tolerances=(0.1, 0.01)), "increasing"),
    (dict(cache_mb=-1), "cache_mb must be"),
])
def test_search_options_check_every_value_in_one_place(bad, message):
    with pytest.raises(cs.ScrubError, match=message):
        SearchOptions(**bad)
