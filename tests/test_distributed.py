"""The Ray executor (`causal_scrubbing.distributed`) gives the single-process numbers.

One small local Ray cluster (2 CPUs) serves the whole module; each run starts its own worker
actors on it, as a command does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing import engine, experiments
from causal_scrubbing.core.draws import draw_hypothesis, reference_rows, sampling_context

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed (pip install '.[ray]')")

from causal_scrubbing import distributed  # noqa: E402


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def toy():
    return experiments.load("toy")


@pytest.fixture(scope="module")
def paren():
    return experiments.load("paren")


def assert_same_run(a: cs.Run, b: cs.Run) -> None:
    assert list(a.results) == list(b.results)
    for key in a.results:
        ra, rb = a.results[key], b.results[key]
        for field in ("scrubbed", "model", "baseline", "ref_index"):
            assert torch.equal(ra.per_example[field], rb.per_example[field]), (key, field)
        assert ra.summary() == rb.summary(), key
    assert a.circuits == b.circuits and set(a.circuits) == set(a.results)  # the report's drawings


def test_split_and_join_cover_every_row_once():
    for n, rows in [(1, 1), (10, 3), (200, 64), (7, 100)]:
        chunks = distributed.split(n, rows)
        assert sum(b - a for a, b in chunks) == n and chunks[0][0] == 0 and chunks[-1][1] == n
        joined = distributed.join({c: torch.arange(*c).float() for c in chunks}, n, "x")
        assert torch.equal(joined, torch.arange(n).float())
    with pytest.raises(RuntimeError, match="does not continue"):  # a row counted twice
        distributed.join({(0, 2): torch.zeros(2), (1, 3): torch.zeros(2)}, 3, "x")
    with pytest.raises(RuntimeError, match="does not continue"):  # a row lost in the middle
        distributed.join({(0, 1): torch.zeros(1), (2, 3): torch.zeros(1)}, 3, "x")
    with pytest.raises(RuntimeError, match="cover rows"):  # rows lost at the end
        distributed.join({(0, 2): torch.zeros(2)}, 3, "x")


@pytest.mark.parametrize("which", ["toy", "paren"])
def test_engine_rows_do_not_depend_on_chunks(which, request):
    """What makes the distributed run exact: a row's output is the same whichever rows share
    its batch (chunks of 1, of 37, or all rows at once)."""
    exp = request.getfixturevalue(which)
    n = 60
    ref = reference_rows(len(exp.dataset), n, 3)
    ctx = sampling_context(exp.dataset, 3)
    keys = ["Ex1b", "Ex4"] if which == "paren" else list(exp.hypotheses)
    for key in keys:
        corr = cs.check(exp.graph, exp.hypotheses[key])
        s = draw_hypothesis(corr, exp.dataset, ref, 3, ctx=ctx)
        whole = engine.evaluate(corr, exp.dataset, s)
        by13 = torch.cat([engine.evaluate(corr, exp.dataset, s.rows(a, min(n, a + 13)))
                          for a in range(0, n, 13)])
        ones = torch.cat([engine.evaluate(corr, exp.dataset, s.rows(a, a + 1)) for a in range(3)])
        assert torch.equal(whole, by13) and torch.equal(whole[:3], ones), key


def test_same_numbers_as_single_process_toy(local_cluster, toy):
    runs = distributed.sweep(toy, recipe="toy", seeds=[0, 1], n=300, chunk_rows=37, workers=2)
    for seed, run in runs.items():
        assert_same_run(run, experiments.run_experiment(toy, n=300, seed=seed))


def test_same_numbers_as_single_process_paren(local_cluster, paren):
    run = distributed.run_experiment(paren, recipe="paren", n=96, seed=1, chunk_rows=32,
                                     workers=2)
    assert_same_run(run, experiments.run_experiment(paren, n=96, seed=1))


def test_a_killed_worker_is_restarted_and_its_tasks_retried(local_cluster, toy, tmp_path):
    crashed = tmp_path / "crashed"
    runs = distributed.sweep(toy, recipe="toy", seeds=[2], n=150, chunk_rows=50, workers=2,
                             _crash_once=str(crashed))
    assert crashed.exists()  # a worker process really exited mid-run
    assert_same_run(runs[2], experiments.run_experiment(toy, n=150, seed=2))


NAN_EXPERIMENT = """
    from causal_scrubbing.experiments import toy

    def build():
        exp = toy.build()
        loss = exp.loss_fn
        exp.loss_fn = lambda out, ref: loss(out, ref) * float("nan")
        return exp
"""


def test_a_users_error_stops_the_run_with_the_librarys_message(local_cluster, tmp_path):
    path = tmp_path / "nan_experiment.py"
    path.write_text(textwrap.dedent(NAN_EXPERIMENT))
    with pytest.raises(cs.NaNLossError) as single:
        experiments.run_experiment(experiments.load(str(path)), n=40, seed=0)
    with pytest.raises(cs.NaNLossError) as on_ray:
        distributed.run_experiment(str(path), n=40, seed=0, workers=1, max_retries=0)
    assert type(on_ray.value) is cs.NaNLossError  # the library's own error, not Ray's wrapper
    assert str(on_ray.value) == str(single.value)


def test_an_error_building_the_experiment_on_a_worker_is_the_librarys(local_cluster, tmp_path):
    path = tmp_path / "fails_on_workers.py"
    path.write_text(textwrap.dedent(f"""
        import os
        from causal_scrubbing.experiments import toy

        def build():
            if os.getpid() != {os.getpid()}:
                raise ValueError("no model on this node")
            return toy.build()
    """))
    with pytest.raises(experiments.ExperimentFileError, match="ValueError: no model on this node"):
        distributed.run_experiment(str(path), n=20, workers=1, max_retries=0)


def test_cli_run_with_ray_writes_the_same_numbers(local_cluster, tmp_path):
    from causal_scrubbing.cli import app

    runner = CliRunner()
    for flags, out in [([], "single"), (["--ray", "--workers", "2"], "ray")]:
        res = runner.invoke(app, ["run", "toy", "--n", "120", "--seed", "4", "--quiet",
                                  "--out", str(tmp_path / out), *flags])
        assert res.exit_code == 0, res.output
    single, on_ray = (json.loads((tmp_path / d / "results.json").read_text())
                      for d in ("single", "ray"))
    assert on_ray == single


def test_cli_refuses_cluster_options_without_ray(tmp_path):
    from causal_scrubbing.cli import app

    res = CliRunner().invoke(app, ["run", "toy", "--workers", "2", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--ray" in res.output


def test_nothing_imports_ray_without_the_flag():
    code = textwrap.dedent("""
        import sys
        import causal_scrubbing as cs
        from causal_scrubbing import cli, experiments
        exp = experiments.load("toy")
        cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=50)
        experiments.run_experiment(exp, n=50)
        assert "ray" not in sys.modules, "ray was imported"
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_ctrl_c_stops_the_cluster_it_started_and_writes_nothing(tmp_path):
    """Ctrl-C while tasks run (simulated: the wait for the first result is interrupted) in a
    fresh process, where the command starts its own local cluster."""
    code = textwrap.dedent(f"""
        import ray
        from typer.testing import CliRunner
        from causal_scrubbing.cli import app

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt
        ray.wait = interrupted
        out = {str(tmp_path / "run")!r}
        res = CliRunner().invoke(app, ["run", "toy", "--ray", "--workers", "1", "--n", "50",
                                       "--quiet", "--out", out])
        # Ctrl-C ends the command with exit status 130 (128 + SIGINT)
        assert res.exit_code == 130, (res.exit_code, repr(res.exception), res.output)
        assert not ray.is_initialized(), "the local cluster is still up"
    """)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert not (tmp_path / "run").exists()  # no results, not even an empty directory
