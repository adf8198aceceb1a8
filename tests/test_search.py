"""`cs.search`: kept sets scored in causal-scrubbing semantics, ground truth, and its outputs.

The semantics is checked against a literal, path-by-path implementation written here (it shares
no code with the engine or the search's encodings): a path whose every edge is kept reads the
reference rows; a path that crosses a removed edge reads the other input.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.core.graph import Input, sum_values
from causal_scrubbing.experiments import toy
from causal_scrubbing.searching import (
    build_hypothesis,
    compact_hypothesis,
    effective,
    graph_edges,
    hypothesis_from_json,
)
from conftest import examples
from test_engine_vs_reference import dataset as random_dataset
from test_engine_vs_reference import random_graph

runner = CliRunner()


# ---- the literal semantics ------------------------------------------------------------------------


def literal(graph: cs.Graph, table: cs.Dataset, kept: set, rows_for) -> torch.Tensor:
    """Evaluate the treeified graph one path at a time; `rows_for(nodes, ports)` gives the rows
    the input copy at the end of that path reads."""

    def value(nodes: tuple[str, ...], ports: tuple[str, ...]) -> torch.Tensor:
        here = graph.nodes[nodes[-1]]
        if isinstance(here, Input):
            return table.rows(rows_for(nodes, ports))[here.field]
        return graph.apply(here.name, {
            port: sum_values([value((*nodes, u), (*ports, port)) for u in ups])
            for port, ups in graph.ports(here.name).items()})

    return value((graph.output,), ())


def crossed(nodes: tuple[str, ...], ports: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """The edges (sender, receiver, port) a path crosses, from the output down."""
    return [(nodes[i + 1], nodes[i], ports[i]) for i in range(len(ports))]


def shared_rows(corr: cs.Correspondence, sample: cs.Sample) -> torch.Tensor | None:
    """The rows of the one shared other input in a drawn sample (None if nothing reads it)."""
    for node in corr.nodes:
        if node.children and isinstance(node.other, cs.SharedUniform):
            return sample.other[node.name]
        if isinstance(node.sampler, cs.SharedUniform):
            return sample.ds[node.name]
    return None


def deep_graph(layers: int = 6, width: int = 4) -> cs.Graph:
    """Layers of `width` identity nodes, each reading every node of the layer below: the
    routes from the output multiply with depth (trees of independent draws pass the limit)."""
    nodes: list[cs.Input | cs.Node] = [cs.Input("x")]
    below = ["x"]
    for layer in range(layers):
        names = [f"l{layer}.{i}" for i in range(width)]
        nodes += [cs.Node(n, lambda r: r, r=below) for n in names]
        below = names
    return cs.Graph([*nodes, cs.Node("out", lambda r: r, r=below)], output="out")


@st.composite
def kept_sets(draw):
    graph, _ = random_graph(draw)
    edges = graph_edges(graph)
    kept = {e for e in edges if draw(st.booleans())}
    return graph, kept, draw(st.integers(0, 2**16))


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kept_sets())

def test_kept_set_scores_as_the_literal_semantics(case):
    graph, kept, seed = case
    ds = random_dataset(seed)
    ref = torch.randint(0, len(ds), (12,), generator=torch.Generator().manual_seed(seed + 1))
    for root in (build_hypothesis(graph, kept), compact_hypothesis(graph, kept)):
        corr = cs.check(graph, root)  # a valid hypothesis tree of the library
        sample = cs.draw(corr, ds, ref, torch.Generator().manual_seed(seed + 2))
        other = shared_rows(corr, sample)

        def rows_for(nodes, ports, other=other):
            return ref if all(e in kept for e in crossed(nodes, ports)) else other

        torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample),
                                   literal(graph, ds, kept, rows_for), rtol=1e-5, atol=1e-5)


def _prefix_name(graph: cs.Graph, nodes: tuple[str, ...], ports: tuple[str, ...]) -> str:
    """How `build_hypothesis` names the node claiming the route `nodes` (from the output)."""
    single = len(graph.ports(graph.output)) == 1
    name = nodes[1] if single else f"{nodes[0]}.{ports[0]} <- {nodes[1]}"
    for i in range(2, len(nodes)):
        name += f".{ports[i - 1]} <- {nodes[i]}"
    return name


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kept_sets())
def test_independent_draws_read_the_draw_where_the_path_leaves_the_kept_set(case):
    """With draws="independent", a path crossing a removed edge reads the other input drawn
    for the last kept treeified node above that edge (the output's, if it is the first)."""
    graph, kept, seed = case
    ds = random_dataset(seed)
    eff = effective(graph, kept)
    ref = torch.randint(0, len(ds), (12,), generator=torch.Generator().manual_seed(seed + 1))
    root = build_hypothesis(graph, kept, draws="independent")
    corr = cs.check(graph, root)
    sample = cs.draw(corr, ds, ref, torch.Generator().manual_seed(seed + 2))

    def rows_for(nodes, ports):
        edges = crossed(nodes, ports)
        for i, e in enumerate(edges):
            if e not in eff:
                if i == 0:
                    return sample.other[root.name] if root.children else sample.ds[root.name]
                return sample.other[_prefix_name(graph, nodes[:i + 1], ports[:i])]
        return ref

    torch.testing.assert_close(cs.engine.evaluate(corr, ds, sample),
                               literal(graph, ds, kept, rows_for), rtol=1e-5, atol=1e-5)


# ---- ground truth -----------------------------------------------------------------------------------


def test_toy_search_drops_the_distractor_and_finds_the_true_features():
    exp = toy.build()
    found = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400,
                      features=exp.features, seed=0)
    assert {str(e) for e in found.kept} == {"A -> out.resid", "B -> out.resid", "x -> A.x", "x -> B.x"}
    assert found.features == {"A": "a", "B": "b"}
    assert found.loss_recovered > 0.99 and found.heldout.loss_recovered > 0.99
    cs.check(exp.graph, found.hypothesis)
    nodes = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=400,
                      granularity="nodes")
    assert {e.sender for e in nodes.kept} == {"A", "B", "x"}
    assert all(e.port is None for e in nodes.kept)


def test_ranked_schedule_claims_features_like_the_greedy_one():
    """The ranked schedule is a removal step inside `search`: the feature step follows it and
    the held-out rescoring is the same, so on the toy it claims what the greedy schedule does.
    (The greedy schedule is named: this compares the two.)"""
    exp = toy.build()
    kw = dict(threshold=0.95, n=400, features=exp.features, seed=0, n_bootstrap=50)
    greedy = cs.search(exp.graph, exp.dataset, exp.loss_fn, schedule="greedy", **kw)
    ranked = cs.search(exp.graph, exp.dataset, exp.loss_fn, schedule="ranked", **kw)
    assert ranked.kept == greedy.kept and ranked.features == greedy.features == {"A": "a", "B": "b"}
    assert (greedy.schedule, ranked.schedule) == ("greedy", "ranked")
    assert ranked.to_dict()["schedule"] == "ranked" and greedy.to_dict()["schedule"] == "greedy"
    assert ranked.tolerances == (0.002, 0.01)  # the ranked schedule's default
    steps = [t["step"] for t in ranked.trace]
    assert steps[0] == "rank" and "top-k" in steps and "feature" in steps
    assert [t["what"] for t in ranked.trace if t["step"] == "feature" and t["accepted"]] == [
        "B: b", "A: a"]
    assert ranked.heldout.loss_recovered > 0.99
    cs.check(exp.graph, ranked.hypothesis)
    again = hypothesis_from_json(exp.graph, ranked.to_dict(), exp.features)
    assert str(again) == str(ranked.hypothesis)
    one_pass = cs.search(exp.graph, exp.dataset, exp.loss_fn, schedule="ranked", tolerances=(),
                         threshold=0.95, n=200, n_bootstrap=20)
    assert one_pass.tolerances == ()


def test_schedule_is_checked_before_any_compute():
    exp = toy.build()

    def never(out, rows):  # pragma: no cover - refused before computing
        raise AssertionError("computed")

    with pytest.raises(cs.ScrubError, match="schedule must be"):
        cs.search(exp.graph, exp.dataset, never, threshold=0.9, schedule="fast")
    with pytest.raises(cs.ScrubError, match="ranked schedule searches edges"):
        cs.search(exp.graph, exp.dataset, never, threshold=0.9, schedule="ranked",
                  granularity="nodes")
    # independent draws on a graph whose trees could pass the limit (routes multiply with depth)
    deep = deep_graph()
    with pytest.raises(cs.ScrubError, match=r"can reach \d+ nodes, above the limit of 2000"):
        cs.search(deep, cs.Dataset({"x": torch.zeros(10)}), never, threshold=0.9, n=5,
                  draws="independent", schedule="ranked")


def test_default_schedule_is_ranked_for_edges_and_greedy_where_ranked_does_not_apply():
    from causal_scrubbing.searching import MAX_TREE_NODES, SearchOptions, default_schedule, tree_bound

    exp = toy.build()
    kw = dict(threshold=0.95, n=200, n_bootstrap=20)
    edges = cs.search(exp.graph, exp.dataset, exp.loss_fn, **kw)
    nodes = cs.search(exp.graph, exp.dataset, exp.loss_fn, granularity="nodes", **kw)
    assert (edges.schedule, nodes.schedule) == ("ranked", "greedy")
    assert edges.tolerances == (0.002, 0.01)  # the ranked schedule's own default
    assert nodes.tolerances == ()
    assert [t["step"] for t in edges.trace][0] == "rank"
    # independent draws where the trees could pass the limit: the ranked schedule would refuse
    # the graph, so the default is the greedy one (which rejects such candidates unscored)
    deep = deep_graph()
    assert tree_bound(deep) > MAX_TREE_NODES
    assert default_schedule(deep, SearchOptions(threshold=0.9, draws="independent")) == "greedy"
    assert default_schedule(deep, SearchOptions(threshold=0.9)) == "ranked"
    assert default_schedule(exp.graph, SearchOptions(threshold=0.9, draws="independent")) == "ranked"


def _cancelling_pair() -> tuple[cs.Graph, cs.Dataset]:
    """out = h1 + h2 + h3 with h1 = 5 x0 and h2 = -5 x0 (a pair that cancels exactly) and
    h3 = x1, the label's only source: y = x1 + noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (2000, 2), generator=g).float()
    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: 5 * x[:, 0], x="x"),
        cs.Node("h2", lambda x: -5 * x[:, 0], x="x"),
        cs.Node("h3", lambda x: x[:, 1], x="x"),
        cs.Node("out", lambda resid: resid, resid=["h1", "h2", "h3"]),
    ], output="out")
    ds = cs.Dataset({"x": x, "y": x[:, 1] + 0.1 * torch.randn(2000, generator=g)})
    return graph, ds


def mse(out: torch.Tensor, ref: cs.Dataset) -> torch.Tensor:
    return (out - ref["y"]) ** 2


def test_greedy_removal_keeps_a_cancelling_pair():
    """Removing either member alone breaks the cancellation, so greedy search (ours, as ACDC's)
    keeps both, although with the shared other input they can go together. (The greedy
    schedule is named: this is its behaviour.)"""
    graph, ds = _cancelling_pair()
    found = cs.search(graph, ds, mse, threshold=0.95, n=300, schedule="greedy")
    assert {e.sender for e in found.kept if e.receiver == "out"} == {"h1", "h2", "h3"}
    without_pair = {e for e in graph_edges(graph) if e[0] not in ("h1", "h2")}
    both = cs.scrub(graph, compact_hypothesis(graph, without_pair), ds, mse, n=300)
    assert both.loss_recovered > 0.99  # the pair together carries nothing


def planted_circuit(seed: int) -> tuple[cs.Graph, cs.Dataset, set[str]]:
    """A graph with a planted circuit, and the edges of that circuit (as `str(edge)`).

    Six correlated input features x (a random mixing of independent ones). Five hidden nodes
    h_i = tanh(w_i . x); two or three of them (drawn) make the label, y = sum a_i h_i, and
    reach the output at full weight; the others reach it scaled by 1e-3 (tiny
    contributions). A canceller c = tanh(v . p) - tanh(v . q) reads x through two ports and is
    zero whenever both read the same input (a contribution that cancels). The output also
    reads x directly, scaled by 1e-3. The planted edges: x -> h_i.x and h_i -> out.resid for
    the label's nodes.
    """
    g = torch.Generator().manual_seed(seed)
    n, k = 2000, 6
    mix = torch.eye(k) + 0.6 * torch.randn(k, k, generator=g)  # correlated features
    x = torch.randn(n, k, generator=g) @ mix
    w = torch.randn(5, k, generator=g) / k**0.5
    v = torch.randn(k, generator=g) / k**0.5
    n_planted = int(torch.randint(2, 4, (1,), generator=g))
    planted = sorted(torch.randperm(5, generator=g)[:n_planted].tolist())
    a = 1 + torch.rand(5, generator=g)  # weights in [1, 2)
    scale = [float(a[i]) if i in planted else 1e-3 for i in range(5)]

    def hidden(i: int):
        return lambda x: scale[i] * torch.tanh(x @ w[i])

    nodes = [cs.Input("x"), *(cs.Node(f"h{i}", hidden(i), x="x") for i in range(5)),
             cs.Node("c", lambda p, q: torch.tanh(p @ v) - torch.tanh(q @ v), p="x", q="x"),
             cs.Node("out", lambda resid, skip: resid + 1e-3 * skip.sum(-1),
                     resid=[*(f"h{i}" for i in range(5)), "c"], skip="x")]
    y = sum(float(a[i]) * torch.tanh(x @ w[i]) for i in planted)
    edges = {f"x -> h{i}.x" for i in planted} | {f"h{i} -> out.resid" for i in planted}
    return cs.Graph(nodes, output="out"), cs.Dataset({"x": x, "y": y}), edges


@pytest.mark.parametrize("seed", range(10))
def test_search_finds_exactly_the_planted_circuit(seed):
    graph, ds, planted = planted_circuit(seed)
    every = {f"{s} -> {r}.{p}" for s, r, p in graph_edges(graph)}
    assert planted < every and len(every - planted) >= 8  # tiny, cancelling and skip edges
    found = cs.search(graph, ds, mse, threshold=0.95, n=300, seed=seed)
    assert {str(e) for e in found.kept} == planted
    assert found.heldout.loss_recovered > 0.95


def _weighted_sum(shares: list[float]) -> tuple[cs.Graph, cs.Dataset]:
    """out = sum_i c_i h_i with h_i = x_i (independent standard normal features) and
    y = out: resampling h_i alone costs the share c_i^2 / sum c_j^2 of loss recovered."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, len(shares), generator=g)
    c = torch.tensor(shares).sqrt()

    def term(i: int):
        return lambda x: c[i] * x[:, i]

    graph = cs.Graph([cs.Input("x"), *(cs.Node(f"h{i}", term(i), x="x") for i in range(len(shares))),
                      cs.Node("out", lambda resid: resid, resid=[f"h{i}" for i in range(len(shares))])],
                     output="out")
    return graph, cs.Dataset({"x": x, "y": x @ c})


def test_tolerances_spend_the_allowance_on_cheap_edges_first():
    """The search visits h3, h2, h1, h0 (senders latest first), which cost 84, 8, 4 and 4
    points. One pass at T = 0.9 removes h2 (92%) and then neither h1 nor h0 fits (88%); a first
    pass that takes only steps of at most 5 points removes h1 and h0 (92%), and the last pass
    cannot remove h2 (84%): one edge fewer at the same threshold."""
    graph, ds = _weighted_sum([0.04, 0.04, 0.08, 0.84])
    # the greedy schedule's visiting order and passes (named: the default is the ranked one)
    one = cs.search(graph, ds, mse, threshold=0.9, n=1000, schedule="greedy")
    two = cs.search(graph, ds, mse, threshold=0.9, n=1000, tolerances=[0.05], schedule="greedy")
    senders = {r: {e.sender for e in f.kept if e.receiver == "out"} for r, f in (("one", one), ("two", two))}
    assert senders == {"one": {"h0", "h1", "h3"}, "two": {"h2", "h3"}}
    assert one.tolerances == () and two.tolerances == (0.05,)
    assert 0.9 <= two.loss_recovered < 0.94 and 0.9 <= one.loss_recovered < 0.94
    # pass 0: the four edges into out, then x -> h3.x and x -> h2.x (h1 and h0 are gone, so
    # their input edges change nothing and are not scored); pass 1: the four still kept
    assert [t["pass"] for t in two.trace if t["step"] == "resample"] == [0] * 6 + [1] * 4
    assert two.to_dict()["tolerances"] == [0.05]
    assert two.heldout.loss_recovered == pytest.approx(0.92, abs=0.02)


def test_tolerances_find_exactly_the_planted_circuit():
    for seed in (0, 1):
        graph, ds, planted = planted_circuit(seed)
        found = cs.search(graph, ds, mse, threshold=0.95, n=300, seed=seed,
                          tolerances=(0.001, 0.01))
        assert {str(e) for e in found.kept} == planted


@pytest.mark.parametrize("schedule", ["greedy", "ranked"])
@pytest.mark.parametrize("draws", ["shared", "independent"])
def test_cached_clean_activations_change_no_candidates_number(draws, schedule):
    """Every candidate scored with clean activations kept across candidates gets the number
    it gets when each candidate runs its own clean passes (the feature step included), under
    either schedule (the ranked one's "rank" step scores nothing: nan in both traces)."""
    exp = toy.build()
    kw = dict(threshold=0.95, n=300, features=exp.features, seed=1, draws=draws,
              schedule=schedule)
    cached = cs.search(exp.graph, exp.dataset, exp.loss_fn, **kw)
    plain = cs.search(exp.graph, exp.dataset, exp.loss_fn, cache_mb=0, **kw)
    assert [t["what"] for t in cached.trace] == [t["what"] for t in plain.trace]
    assert [t["loss_recovered"] for t in cached.trace] == pytest.approx(
        [t["loss_recovered"] for t in plain.trace], abs=1e-6, nan_ok=True)
    assert cached.kept == plain.kept and cached.features == plain.features
    graph, ds, _ = planted_circuit(3)
    cached, plain = (cs.search(graph, ds, mse, threshold=0.95, n=300, seed=3, cache_mb=mb,
                               schedule=schedule) for mb in (None, 0))
    assert [t["loss_recovered"] for t in cached.trace] == pytest.approx(
        [t["loss_recovered"] for t in plain.trace], abs=1e-6, nan_ok=True)


def test_swapping_samplers_scores_as_the_tree_built_with_them():
    """The feature step checks and compiles one tree and swaps samplers in; that gives the
    very numbers of the tree built with those samplers."""
    from causal_scrubbing.searching import build_hypothesis
    from causal_scrubbing.searching.steps import claims_by_node

    exp = toy.build()
    kept = set(graph_edges(exp.graph))
    order = ["A", "B"]
    corr = cs.check(exp.graph, build_hypothesis(exp.graph, kept, {v: cs.Exact() for v in order}))
    plan = cs.engine.compile_plan(corr)
    claims = claims_by_node(corr)
    feature = cs.SameFeature(exp.features["a"], name="a")
    swapped = corr.with_samplers({i: feature for i in claims["A"]})
    built = cs.check(exp.graph, build_hypothesis(exp.graph, kept, {"A": feature, "B": cs.Exact()}))
    ref = torch.arange(64)
    s1 = cs.draw(swapped, exp.dataset, ref, torch.Generator().manual_seed(0))
    s2 = cs.draw(built, exp.dataset, ref, torch.Generator().manual_seed(0))
    assert all(torch.equal(s1.ds[k], s2.ds[k]) for k in s2.ds)
    assert not torch.equal(s1.ds[swapped.nodes[claims["A"][0]].name], ref)  # a real resample
    torch.testing.assert_close(cs.engine.evaluate(swapped, exp.dataset, s1, plan=plan),
                               cs.engine.evaluate(built, exp.dataset, s2))
    assert isinstance(corr.nodes[claims["A"][0]].sampler, cs.Exact)  # the original is untouched


def test_clean_cache_serves_one_graph_and_table():
    exp = toy.build()
    corr = cs.check(exp.graph, cs.InterpNode("out"))
    sample = cs.draw(corr, exp.dataset, torch.arange(16), torch.Generator().manual_seed(0))
    cache = cs.engine.CleanCache()
    first = cs.engine.evaluate(corr, exp.dataset, sample, cache=cache)
    assert cache.misses > 0 and cache.hits == 0
    again = cs.engine.evaluate(corr, exp.dataset, sample, cache=cache)
    assert torch.equal(first, again) and cache.hits > 0
    with pytest.raises(cs.ScrubError, match="another graph or table"):
        cs.engine.evaluate(corr, exp.dataset.rows(torch.arange(len(exp.dataset))), sample,
                           cache=cache)
    with pytest.raises(cs.ScrubError, match="cache_mb"):
        cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.9, cache_mb=-1)


def test_clean_cache_serves_smaller_chunks_and_holds_what_it_counts():
    """An evaluation that runs smaller chunks than the one that filled the cache (a hypothesis
    with more lanes) reads parts of the cached cells and gets the same output; one that runs
    larger chunks stops at the cells' ends. What the cache counts is what it holds: copies,
    not slices of a pass over many lanes."""
    exp = toy.build()
    corr = cs.check(exp.graph, cs.InterpNode("out"))
    sample = cs.draw(corr, exp.dataset, torch.arange(100), torch.Generator().manual_seed(0))
    plain = cs.engine.evaluate(corr, exp.dataset, sample)
    cache = cs.engine.CleanCache()
    first = cs.engine.evaluate(corr, exp.dataset, sample, cache=cache, chunk_size=30)
    assert (cache.origin, cache.cell) == (8, 30) and torch.equal(first, plain)
    misses = cache.misses
    for size in (7, 30, 64):
        assert torch.equal(cs.engine.evaluate(corr, exp.dataset, sample, cache=cache,
                                              chunk_size=size), plain)
        assert cache.misses == misses  # every value read from the cache
    held = [v for _, values in cache.values.values() for v in values.values()]
    assert cache.nbytes == sum(v.untyped_storage().nbytes() for v in held)
    assert sum(len(values) for _, values in cache.values.values()) == len(held)
    assert {rows for rows, _ in cache.values.values()} == {8, 30, 2}  # 8 + 3 x 30 + 2 rows
    # filled by small chunks: a cell grows chunk by chunk and serves a larger one later
    cache = cs.engine.CleanCache()
    cs.engine.evaluate(corr, exp.dataset, sample, cache=cache, chunk_size=50)
    cache.values.clear()  # (its cells stay those of the 50-row chunks)
    cache.nbytes = 0
    cs.engine.evaluate(corr, exp.dataset, sample, cache=cache, chunk_size=10)
    misses = cache.misses
    assert torch.equal(cs.engine.evaluate(corr, exp.dataset, sample, cache=cache), plain)
    assert cache.misses == misses


# ---- outputs ----------------------------------------------------------------------------------------


def test_search_cli_writes_json_hypothesis_file_and_report(tmp_path):
    out = tmp_path / "search"
    result = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "300",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "it/s" not in result.output and "candidate/s" not in result.output  # no progress bar
    data = json.loads((out / "search.json").read_text())
    for key in ("threshold", "granularity", "kept", "features", "loss_recovered", "heldout",
                "candidates", "seconds"):
        assert key in data
    assert data["threshold"] == 0.95 and data["granularity"] == "edges"
    assert data["schedule"] == "ranked" and data["tolerances"] == [0.002, 0.01]  # the default
    assert all(set(e) == {"sender", "receiver", "port"} for e in data["kept"])
    assert set(data["heldout"]) >= {"loss_recovered", "ci_low", "ci_high", "n"}
    assert data["heldout"]["n"] == 300 and data["candidates"] >= 6
    assert data["features"] == {"A": "a", "B": "b"}
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 3 and "<script" not in page  # the circuit, the trajectory, the tree
    assert page.count('<svg xmlns="http://www.w3.org/2000/svg" class="circuit"') == 1

    # hypothesis.py is an experiment file that reproduces the held-out number
    run = runner.invoke(app, ["run", str(out / "hypothesis.py"), "--out", str(tmp_path / "run"),
                              "--quiet"])
    assert run.exit_code == 0, run.output
    rerun = json.loads((tmp_path / "run" / "results.json").read_text())["experiments"][0]
    held = data["heldout"]
    assert rerun["loss_recovered"] == held["loss_recovered"]
    assert (rerun["ci_low"], rerun["ci_high"], rerun["n"]) == (held["ci_low"], held["ci_high"], held["n"])

    # an existing search is kept unless --force
    again = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_search_cli_ranked_schedule_claims_features(tmp_path):
    out = tmp_path / "ranked"
    result = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "300",
                                 "--schedule", "ranked", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "features: B = b, A = a" in result.output  # claimed from the output down
    data = json.loads((out / "search.json").read_text())
    assert data["schedule"] == "ranked" and data["features"] == {"A": "a", "B": "b"}
    assert data["tolerances"] == [0.002, 0.01]
    assert "<b>ranked</b><span>schedule</span>" in (out / "report.html").read_text()


def test_search_cli_greedy_schedule_by_name(tmp_path):
    out = tmp_path / "greedy"
    result = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "300",
                                 "--schedule", "greedy", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "search.json").read_text())
    assert data["schedule"] == "greedy" and data["tolerances"] == []
    assert data["features"] == {"A": "a", "B": "b"}


def test_progress_bar_shows_unless_quiet(tmp_path):
    result = runner.invoke(app, ["search", "toy", "--threshold", "0.95", "--n", "100",
                                 "--granularity", "nodes", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "candidate" in result.output


def test_hypothesis_from_json_rebuilds_the_found_tree():
    exp = toy.build()
    found = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=200,
                      features=exp.features)
    again = hypothesis_from_json(exp.graph, found.to_dict(), exp.features)
    assert str(again) == str(found.hypothesis)
    with pytest.raises(cs.ScrubError, match="declares no such feature"):
        hypothesis_from_json(exp.graph, found.to_dict(), {})


def test_bad_arguments_are_clear_errors():
    exp = toy.build()
    with pytest.raises(cs.ScrubError, match="granularity"):
        cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.9, granularity="heads")
    with pytest.raises(cs.ScrubError, match="draws"):
        cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.9, draws="many")
    for bad in ([0.01, 0.001], [-0.01], [float("nan")], ["a"]):
        with pytest.raises(cs.ScrubError, match="tolerances"):
            cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.9, tolerances=bad)
