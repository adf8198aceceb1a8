"""`ranked_search`: attribution ranks, bisection finds a passing top-k, greedy pruning; planted
circuits are found; the tree limit of independent draws is refused before any compute."""

from __future__ import annotations

import random

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments import toy
from causal_scrubbing.searching import build_hypothesis, graph_edges
from causal_scrubbing.searching.ranked import check_tree_limit, ranked_search, tree_bound
from test_search import deep_graph


def planted() -> tuple[cs.Graph, cs.Dataset, set[tuple[str, str, str]]]:
    """x (4 numbers) feeds a, b, c, d; e reads a and c; out reads b, d and e. The label is
    tanh(x0) + x1 * x2: e computes tanh(x0) from a (c's term in e is multiplied by 0), b
    computes x1 * x2, d writes zeros. The circuit: x -> a -> e -> out and x -> b -> out."""
    def col(i):
        return lambda v: v[:, i:i + 1]
    nodes = [
        cs.Input("x"),
        cs.Node("a", col(0), v="x"),
        cs.Node("b", lambda v: v[:, 1:2] * v[:, 2:3], v="x"),
        cs.Node("c", col(3), v="x"),
        cs.Node("d", lambda v: 0 * v[:, :1], v="x"),
        cs.Node("e", lambda i, j: torch.tanh(i) + 0 * j, i="a", j="c"),
        cs.Node("out", lambda r: r[:, 0], r=["b", "d", "e"]),
    ]
    x = torch.randn(3000, 4, generator=torch.Generator().manual_seed(0))
    ds = cs.Dataset({"x": x, "y": torch.tanh(x[:, 0]) + x[:, 1] * x[:, 2]})
    circuit = {("x", "a", "v"), ("a", "e", "i"), ("e", "out", "r"), ("x", "b", "v"),
               ("b", "out", "r")}
    return cs.Graph(nodes, output="out"), ds, circuit


def mse(out: torch.Tensor, rows: cs.Dataset) -> torch.Tensor:
    return (out - rows["y"]) ** 2


@pytest.mark.parametrize("prune", ["ascending", "output-first"])
def test_finds_the_planted_circuit(prune):
    graph, ds, circuit = planted()
    found = ranked_search(graph, ds, mse, threshold=0.99, n=300, prune=prune, n_bootstrap=50)
    assert {(e.sender, e.receiver, e.port) for e in found.kept} == circuit
    assert found.loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert found.heldout.loss_recovered == pytest.approx(1.0, abs=1e-6)
    assert found.n_edges == len(graph_edges(graph))
    steps = [t["step"] for t in found.trace]
    assert steps[0] == "rank" and "top-k" in steps and "start" in steps
    # the same circuit as the greedy search finds
    greedy = cs.search(graph, ds, mse, threshold=0.99, n=300, n_bootstrap=50, schedule="greedy")
    assert {(e.sender, e.receiver, e.port) for e in greedy.kept} == circuit


def test_bisection_alone_stops_at_a_passing_top_k():
    exp = toy.build()
    found = ranked_search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=300,
                          prune="none", n_bootstrap=50)
    assert found.loss_recovered >= 0.95
    tops = [t for t in found.trace if t["step"] == "top-k"]
    assert all(t["accepted"] == (t["loss_recovered"] >= 0.95) for t in tops)
    assert found.candidates == len(tops)  # every candidate is a top-k set here
    assert sorted(str(e) for e in found.kept) == ['A -> out.resid', 'B -> out.resid',
                                                  'x -> A.x', 'x -> B.x']


def test_tree_bound_bounds_every_tree():
    graph, _, _ = planted()
    bound = tree_bound(graph)
    edges = graph_edges(graph)
    rng = random.Random(0)
    sizes = []
    for _ in range(200):
        kept = {e for e in edges if rng.random() < 0.6}
        root = build_hypothesis(graph, kept, draws="independent")
        count, stack = 0, [root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children)
        sizes.append(count)
    assert max(sizes) <= bound
    assert max(sizes) > 1


def test_independent_draws_on_a_deep_graph_are_refused_before_any_compute():
    graph = deep_graph(layers=6, width=4)  # fully connected layers: routes multiply with depth
    assert tree_bound(graph) > 2000

    def never(out, rows):  # pragma: no cover - the search must refuse before computing
        raise AssertionError("computed")

    ds = cs.Dataset({"x": torch.zeros(10)})
    with pytest.raises(cs.ScrubError, match=r"can reach \d+ nodes, above the limit of 2000"):
        ranked_search(graph, ds, never, threshold=0.9, draws="independent", n=5)
    check_tree_limit(graph, "shared")  # shared draws: two nodes, whatever is kept
    with pytest.raises(cs.ScrubError, match="draws='shared'"):
        check_tree_limit(graph, "independent")


def test_independent_draws_where_the_tree_fits():
    graph, ds, circuit = planted()
    found = ranked_search(graph, ds, mse, threshold=0.99, n=300, draws="independent",
                          n_bootstrap=50)
    assert {(e.sender, e.receiver, e.port) for e in found.kept} == circuit


def test_bad_input():
    exp = toy.build()
    for kwargs, match in [({"threshold": "high"}, "threshold must be a number"),
                          ({"threshold": 0.9, "method": "acdc"}, "Unknown attribution method"),
                          ({"threshold": 0.9, "prune": "random"}, "prune must be"),
                          ({"threshold": 0.9, "tolerances": (0.1, 0.01)}, "increasing")]:
        with pytest.raises(cs.ScrubError, match=match):
            ranked_search(exp.graph, exp.dataset, exp.loss_fn, n=50, **kwargs)


def test_cli_schedule_ranked(tmp_path):
    from typer.testing import CliRunner

    from causal_scrubbing.cli import app

    out = tmp_path / "ranked"
    res = CliRunner().invoke(app, ["search", "toy", "--threshold", "0.95", "--schedule", "ranked",
                                   "--n", "200", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "4 kept edges" in res.output and (out / "search.json").exists()
    rerun = CliRunner().invoke(app, ["run", str(out / "hypothesis.py"), "--n", "200",
                                     "--out", str(tmp_path / "rerun"), "--quiet"])
    assert rerun.exit_code == 0, rerun.output
    bad = CliRunner().invoke(app, ["search", "toy", "--threshold", "0.95", "--schedule", "fast",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--schedule must be greedy or ranked" in bad.output


def test_greedy_search_with_independent_draws_rejects_trees_past_the_limit(monkeypatch):
    """The greedy search falls back instead of stopping halfway: a candidate whose tree would
    pass the limit is rejected unscored and counted in the trace. (The limit is lowered to 3
    nodes here so that a small graph reaches it.)"""
    from functools import partial

    from causal_scrubbing import searching
    from causal_scrubbing.searching import steps

    graph, ds, circuit = planted()
    limited = partial(searching.build_hypothesis, max_nodes=3)
    monkeypatch.setattr(steps, "build_hypothesis", limited)  # the candidates' trees
    monkeypatch.setattr(searching, "build_hypothesis", limited)  # the found one's
    # the greedy schedule's fallback, so named (the default edge schedule is the ranked one)
    found = cs.search(graph, ds, mse, threshold=0.99, n=200, draws="independent", n_bootstrap=20,
                      schedule="greedy")
    notes = [t for t in found.trace if t["step"] == "note"]
    assert len(notes) == 1 and "rejected unscored" in notes[0]["what"]
    rejected = [t for t in found.trace if t["step"] == "resample" and t["loss_recovered"] != t[
        "loss_recovered"]]  # NaN: not scored
    assert rejected and not any(t["accepted"] for t in rejected)
    assert int(notes[0]["what"].split()[0]) == len(rejected)
    kept = {(e.sender, e.receiver, e.port) for e in found.kept}
    assert circuit <= kept  # what matters is kept; some edges stay because their trees were big
    assert found.heldout.loss_recovered >= 0.99
