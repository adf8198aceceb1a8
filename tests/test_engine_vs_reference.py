"""The fast engine equals the literal reference evaluator on random graphs and hypotheses.

Random DAGs (several inputs, nodes with several ports, each port summing a random set of
earlier nodes, nonlinear node functions, node `Group`s computed by one batched call), random
valid correspondences built from every kind of matcher and sampler, and random integer
features. For each case both evaluators run on the very same sampled datasets and must agree
to float tolerance.
"""

from __future__ import annotations

from functools import partial

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import causal_scrubbing as cs
from causal_scrubbing.bench import hook_loop
from conftest import examples

N_ROWS, DIM = 24, 3


def node_fn(weights: dict[str, torch.Tensor], **port_values: torch.Tensor) -> torch.Tensor:
    total = sum(v @ weights[p] for p, v in sorted(port_values.items()))
    return torch.tanh(total) + 0.1 * total


def group_fn(members: dict[str, dict[str, torch.Tensor]], **port_values: torch.Tensor):
    """All members in one call: their weights stacked, as a layer's heads are."""
    names = list(members)
    total = sum(torch.einsum("bi,mij->mbj", v, torch.stack([members[m][p] for m in names]))
                for p, v in sorted(port_values.items()))  # [members, batch, DIM]
    out = torch.tanh(total) + 0.1 * total
    return {m: out[i] for i, m in enumerate(names)}


def random_graph(draw) -> tuple[cs.Graph, list[str]]:
    """A random DAG; sometimes a node is followed by siblings with the very same ports, and
    they form a `Group` computed by one batched call (as a layer's heads are)."""
    n_inputs = draw(st.integers(1, 2))
    n_nodes = draw(st.integers(2, 6))
    names = [f"x{i}" for i in range(n_inputs)]
    nodes: list[cs.Input | cs.Node] = [cs.Input(n) for n in names]
    groups: list[cs.Group] = []
    k = 0
    while k < n_nodes:
        n_ports = draw(st.integers(1, 3))
        ports = {}
        for p in range(n_ports):
            ups = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
            ports[f"p{p}"] = ups
        size = draw(st.sampled_from([1, 1, 2, 3]))  # siblings sharing these ports
        members: dict[str, dict[str, torch.Tensor]] = {}
        for _ in range(size):
            name = f"n{k}"
            g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
            weights = {p: torch.randn(DIM, DIM, generator=g) / DIM**0.5 for p in ports}
            nodes.append(cs.Node(name, partial(node_fn, weights), **ports))
            members[name] = weights
            k += 1
        names.extend(members)
        if size > 1:
            groups.append(cs.Group(tuple(members), partial(group_fn, members)))
    # the output reads every node without a reader, so group members all matter
    readers = {u for n in nodes if isinstance(n, cs.Node) for ups in n.ports.values() for u in ups}
    loose = [n for n in names if n not in readers]
    if len(loose) > 1:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        out_w = {"p0": torch.randn(DIM, DIM, generator=g) / DIM**0.5}
        nodes.append(cs.Node("out", partial(node_fn, out_w), p0=loose))
        names.append("out")
    return cs.Graph(nodes, output=names[-1], groups=groups), names


def random_matcher(draw, graph: cs.Graph, base: cs.Matcher | None, below: str) -> cs.Matcher:
    """A matcher extending `base` (None: from the output) towards the inputs from `below`."""
    candidates = sorted(graph.upstream[below])
    target = draw(st.sampled_from(candidates))
    port = None
    if not graph.is_input(target) and draw(st.booleans()):
        port = draw(st.sampled_from(sorted(graph.ports(target))))
    between = sorted(graph.upstream[below] - {target} - set(graph.upstream[target]))
    excluding = draw(st.lists(st.sampled_from(between), max_size=2, unique=True)) if between else []
    is_direct = draw(st.integers(0, 5)) == 0
    if base is None:
        m: cs.Matcher = cs.through(target, port, excluding=excluding, direct=is_direct)
    else:
        assert isinstance(base, cs.core.paths.Chain)
        m = base.then(target, port, excluding=excluding, direct=is_direct)
    if base is None and draw(st.integers(0, 4)) == 0:  # sometimes a union of two chains
        other = draw(st.sampled_from(candidates))
        m = m | cs.through(other)
    return m


def random_sampler(draw, shared: list[cs.Sampler]) -> cs.Sampler:
    kind = draw(st.sampled_from(["exact", "uniform", "f0", "f1", "f01", "shared", "pooled"]))
    if kind == "exact":
        return cs.Exact()
    if kind == "uniform":
        return cs.Uniform()
    if kind in ("f0", "f1"):
        return cs.SameFeature(kind)
    if kind == "f01":
        return cs.SameFeature(lambda d: torch.stack([d["f0"], d["f1"]], dim=1), name="f0,f1")
    return shared[0] if kind == "shared" else shared[1]


def with_random_sae(draw, graph: cs.Graph) -> cs.Graph:
    """`graph` with an SAE written at a random node (random architecture and latent groups)."""
    from causal_scrubbing.models import sae as sae_mod

    site = draw(st.sampled_from([n for n in graph.order if not graph.is_input(n)]))
    d_sae = draw(st.integers(2, 6))
    arch = draw(st.sampled_from(sae_mod.ARCHITECTURES))
    sae = sae_mod.SAE.random(DIM, d_sae, arch, k=draw(st.integers(1, d_sae)) if arch == "topk" else None,
                             seed=draw(st.integers(0, 2**16)))
    groups = draw(st.sampled_from([None, "each", {"g": list(range(d_sae // 2 + 1))}]))
    return sae_mod.sae_rewrite(graph, site, sae, groups=groups, check_on=dataset(0))


def with_random_position_splits(draw, graph: cs.Graph) -> cs.Graph:
    """`graph` with one or two ports split by "position" (the feature axis, DIM positions)
    into random groups: nodes the engine takes by index (`Selection`) where it can."""
    from causal_scrubbing.core import rewrites

    ports = [(n, p) for n in graph.order if not graph.is_input(n) for p in sorted(graph.ports(n))]
    for node, port in draw(st.lists(st.sampled_from(ports), min_size=1, max_size=2, unique=True)):
        labels = draw(st.lists(st.integers(0, 2), min_size=DIM, max_size=DIM))
        groups = {f"g{k}": [i for i in range(DIM) if labels[i] == k] for k in set(labels)}
        graph = rewrites.split_positions(graph, node, port, groups, check_on=dataset(0))
    return graph


@st.composite
def cases(draw, sae: bool = False, positions: bool = False):
    graph, _ = random_graph(draw)
    if sae:  # the SAE rewrite: latent groups, bias and error nodes, all in one node group
        graph = with_random_sae(draw, graph)
    if positions:  # ports split by position, whose parts can be fed different data
        graph = with_random_position_splits(draw, graph)
    shared = [cs.SharedUniform(), cs.Pooled(cs.SameFeature("f0"), size=2)]
    root = cs.InterpNode("root", random_sampler(draw, shared), other=random_sampler(draw, shared))
    # Grow the tree one candidate at a time, keeping only children that leave it valid.
    frontier = [(root, None, graph.output, 0)]
    count = 0
    while frontier and count < 6:
        parent, base, below, depth = frontier.pop(0)
        if not graph.upstream[below] or depth >= 3:
            continue
        for _ in range(draw(st.integers(1 if depth == 0 else 0, 3))):
            m = random_matcher(draw, graph, base, below)
            child = cs.InterpNode(f"i{count}", random_sampler(draw, shared), paths=m,
                                  other=random_sampler(draw, shared))
            parent.children.append(child)
            try:
                cs.check(graph, root)
            except cs.HypothesisError:
                parent.children.pop()
                continue
            count += 1
            seg = m.segments[-1] if isinstance(m, cs.core.paths.Chain) else None
            if seg is not None and not graph.is_input(seg.node):
                frontier.append((child, m, seg.node, depth + 1))
    seed = draw(st.integers(0, 2**16))
    chunk = draw(st.integers(3, 20))
    return graph, root, seed, chunk


def dataset(seed: int) -> cs.Dataset:
    g = torch.Generator().manual_seed(seed)
    return cs.Dataset({
        "x0": torch.randn(N_ROWS, DIM, generator=g),
        "x1": torch.randn(N_ROWS, DIM, generator=g),
        "f0": torch.randint(0, 3, (N_ROWS,), generator=g),
        "f1": torch.randint(0, 2, (N_ROWS,), generator=g),
    })


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_engine_equals_reference(case):
    graph, root, seed, chunk = case
    ds = dataset(seed)
    corr = cs.check(graph, root)
    ref = torch.randint(0, N_ROWS, (16,), generator=torch.Generator().manual_seed(seed + 1))
    sample = cs.draw(corr, ds, ref, torch.Generator().manual_seed(seed + 2))
    fast = cs.engine.evaluate(corr, ds, sample, chunk_size=chunk)
    slow = cs.reference.evaluate(corr, ds, sample)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    hooks = hook_loop.evaluate(corr, ds, sample, chunk_size=chunk or 1024)  # the bench baseline
    torch.testing.assert_close(hooks, slow, rtol=1e-5, atol=1e-5)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(sae=True))
def test_engine_equals_reference_with_sae_rewrites(case):
    test_engine_equals_reference.hypothesis.inner_test(case)


@settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(positions=True))
def test_engine_equals_reference_with_position_splits(case):
    """Ports split by position: the engine reads a whole split port's input as its sum and
    assembles parts fed by different lanes by index; the reference adds the masked parts."""
    test_engine_equals_reference.hypothesis.inner_test(case)


def test_generated_hypotheses_are_not_trivial():
    """The generator really produces deep trees and lane-mixing plans (guards the test above)."""
    depths, mixing = [], []

    @settings(max_examples=examples(60), deadline=None, database=None, derandomize=True)
    @given(cases())
    def collect(case):
        graph, root, _, _ = case
        corr = cs.check(graph, root)
        depths.append(max(corr.depth))
        plan = cs.engine.compile_plan(corr)
        mixing.append(plan.stats["mixing_ops"])
        batched.append(any(len(b) > 1 for b in plan.batches))
        grouped.append(bool(graph.groups))

    batched: list[bool] = []
    grouped: list[bool] = []
    collect()
    assert max(depths) >= 2
    assert sum(grouped) > len(grouped) / 4  # groups are common
    assert any(batched)  # and some plans compute group members in one call
    assert sum(d >= 1 for d in depths) > len(depths) / 2
    assert sum(m > 0 for m in mixing) > len(mixing) / 2


@st.composite
def search_trees(draw):
    """A search's hypothesis (`build_hypothesis`): a random graph less one or two edges as a
    tree with a node per kept route, `Exact` or a feature at each node, and one shared draw
    for every removed edge, so that many lanes get the same rows and ops repeat."""
    from causal_scrubbing.searching.edges import build_hypothesis, graph_edges

    graph, _ = random_graph(draw)
    edges = graph_edges(graph)
    removed = draw(st.lists(st.sampled_from(edges), min_size=1, max_size=2, unique=True))
    kept = [e for e in edges if e not in removed]  # most kept: many routes through each node
    nodes = [v for v in graph.order if not graph.is_input(v) and v != graph.output]
    features = {v: cs.SameFeature(draw(st.sampled_from(["f0", "f1"])))
                for v in draw(st.lists(st.sampled_from(nodes), unique=True))} if nodes else {}
    root = build_hypothesis(graph, kept, features, draws="shared")
    return graph, root, draw(st.integers(0, 2**16)), draw(st.integers(3, 20))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_trees())
def test_engine_equals_reference_on_search_trees(case):
    """Ops that repeat an earlier op's computation on a draw (`engine.same_ops`) are skipped."""
    test_engine_equals_reference.hypothesis.inner_test(case)


def test_search_trees_repeat_ops():
    """The search trees above do give ops that repeat (guards the test above)."""
    repeated: list[bool] = []

    @settings(max_examples=examples(60), deadline=None, database=None, derandomize=True)
    @given(search_trees())
    def collect(case):
        graph, root, seed, _ = case
        corr = cs.check(graph, root)
        ref = torch.randint(0, N_ROWS, (16,), generator=torch.Generator().manual_seed(seed + 1))
        sample = cs.draw(corr, dataset(seed), ref, torch.Generator().manual_seed(seed + 2))
        same = cs.engine.slots(cs.engine.compile_plan(corr), sample).same_as
        repeated.append(any(k != j for k, j in enumerate(same)))

    collect()
    assert sum(repeated) > len(repeated) / 10
