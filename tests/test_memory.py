"""Memory as a number the user sets: the process budget, and the guard that keeps the resident
set under it by handing freed memory back (`memory.ResidentGuard`)."""

from __future__ import annotations

import logging

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.core import engine, memory
from causal_scrubbing.experiments import load, run_experiment


def test_the_guard_trims_only_above_its_limit(caplog):
    far = memory.ResidentGuard(limit_mb=memory.resident_mb() + 100_000)
    assert far.check() is False and far.trims == 0
    near = memory.ResidentGuard(limit_mb=1.0)  # every process is above 1 MB
    with caplog.at_level(logging.WARNING, logger="causal_scrubbing.core.memory"):
        assert near.check() is True and near.check() is True
    assert near.trims == 2 and near.peak_mb > 1.0
    warnings = [r for r in caplog.records if "above the limit" in r.getMessage()]
    assert len(warnings) == 1 and "--memory-budget" in warnings[0].getMessage()


def test_a_budget_changes_no_number():
    exp = load("paren")
    sub = {k: exp.hypotheses[k] for k in ("Ex1b", "Ex4")}
    import dataclasses

    exp = dataclasses.replace(exp, hypotheses=sub)
    free = run_experiment(exp, n=300, seed=1)
    tight = run_experiment(exp, n=300, seed=1, memory_budget_mb=memory.resident_mb() + 200)
    for key in sub:
        assert torch.equal(free.results[key].per_example["scrubbed"],
                           tight.results[key].per_example["scrubbed"])
        assert tight.results[key].settings["memory_budget_mb"] is not None


def test_a_budget_below_what_is_in_use_is_refused_before_any_compute():
    with pytest.raises(cs.ScrubError, match=r"already holds .* Raise the budget \(--memory-budget\)"):
        engine.memory_limits(torch.device("cpu"), None, 10.0)
    with pytest.raises(cs.ScrubError, match="positive number of MB"):
        engine.memory_limits(torch.device("cpu"), None, -5.0)


def test_the_budget_sizes_the_chunks():
    in_use = memory.resident_mb()
    chunk, limit = engine.memory_limits(torch.device("cpu"), None, in_use + 300)
    assert limit == in_use + 300 and 100 < chunk <= 150  # half of what is left
    chunk, limit = engine.memory_limits(torch.device("cpu"), None, None)
    assert chunk == engine.default_memory_mb(torch.device("cpu")) and limit >= in_use + 1000


def test_cli_memory_budget_too_small_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["run", "toy", "--memory-budget", "1", "--quiet",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Raise the budget" in result.output, result.output
    assert "Traceback" not in result.output


def test_memory_budget_with_ray_is_refused_before_any_compute(tmp_path):
    result = CliRunner().invoke(app, ["run", "toy", "--ray", "--memory-budget", "4000",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "single-process" in result.output, result.output


def test_search_takes_a_memory_budget(tmp_path):
    result = CliRunner().invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "200",
                                      "--memory-budget", "1", "--quiet",
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "Raise the budget" in result.output, result.output


def test_chunks_are_never_smaller_than_the_probe(caplog):
    """A chunk budget too small for one row still runs chunks of the probe's 8 rows (the probe
    has just run at that size; smaller chunks only spend time on small matrix products), and
    the result is the same as one chunk of every row."""
    g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: 2 * i, i="x"),
                  cs.Node("out", lambda u, v: u + v, u="a", v="x")], output="out")
    ds = cs.Dataset({"x": torch.randn(40, 64)})
    corr = cs.check(g, cs.InterpNode("out", children=[
        cs.InterpNode("a", cs.Exact(), paths=cs.through("a"))]))
    s = cs.draw(corr, ds, torch.arange(40), torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="causal_scrubbing.core.engine"):
        tiny = engine.evaluate(corr, ds, s, memory_mb=1e-6)
    assert any("chunks of 8 rows" in r.getMessage() for r in caplog.records)
    assert torch.equal(tiny, engine.evaluate(corr, ds, s, chunk_size=40))
