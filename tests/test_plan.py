"""The engine's plan, pass by pass, and the scheduling of `Graph.run` (`PortSums`).

Each compile pass states its pre- and post-conditions in its docstring; each is checked here
on hypotheses where it has work to do. The whole pipeline is checked against the literal
reference in test_engine_vs_reference.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.core.engine import (
    CleanOutput,
    CleanPortSum,
    OpResult,
    batch_group_ops,
    compile_plan,
    lower,
    share_clean_passes,
)
from causal_scrubbing.core.graph import PortSums
from causal_scrubbing.experiments import load, toy


def residual_graph(width: int = 3) -> cs.Graph:
    """x -> `width` heads (a Group) reading x -> out reading x and every head (a residual)."""
    heads = [f"h{i}" for i in range(width)]
    nodes = [cs.Input("x")]
    nodes += [cs.Node(h, lambda r, _k=i: (r * (_k + 2)).sin(), r="x") for i, h in enumerate(heads)]
    nodes.append(cs.Node("out", lambda r: r.cos(), r=["x", *heads]))
    group = cs.Group(tuple(heads), lambda r: {h: (r * (i + 2)).sin() for i, h in enumerate(heads)})
    return cs.Graph(nodes, output="out", groups=[group])


def check_ops_read_only_earlier(plan) -> None:
    for k, op in enumerate(plan.ops):
        for t in op.reads():
            assert not isinstance(t, OpResult) or t.index < k, f"op {k} reads a later op"
            assert not isinstance(t, CleanOutput | CleanPortSum) or t.lane in plan.lanes


def test_lower_emits_one_op_per_mixing_site_and_merges_identical_ones():
    exp = toy.build()
    corr = cs.check(exp.graph, exp.hypotheses["only_a"])
    plan = lower(corr.tree)
    check_ops_read_only_earlier(plan)
    assert [str(lane) for lane in plan.lanes] == ["ds[A]", "other[out]"]
    assert [op.node for op in plan.ops] == ["out"]  # only the output mixes lanes
    assert isinstance(plan.result, OpResult)
    assert len(set(plan.ops)) == len(plan.ops)  # no op twice


def two_layer_graph(groups: bool = True) -> cs.Graph:
    """x -> heads h0, h1 (a Group) -> an MLP m reading the residual (x, h0, h1) -> out reading
    (x, h0, h1, m)."""
    nodes = [cs.Input("x"),
             cs.Node("h0", lambda r: (2 * r).sin(), r="x"), cs.Node("h1", lambda r: (3 * r).sin(), r="x"),
             cs.Node("m", lambda r: r.tanh(), r=["x", "h0", "h1"]),
             cs.Node("out", lambda r: r.cos(), r=["x", "h0", "h1", "m"])]
    group = cs.Group(("h0", "h1"), lambda r: {"h0": (2 * r).sin(), "h1": (3 * r).sin()})
    return cs.Graph(nodes, output="out", groups=[group] if groups else [])


def test_lower_folds_a_clean_residual_prefix_into_the_port_sum():
    graph = two_layer_graph()
    root = cs.InterpNode("out", children=[cs.InterpNode("m", cs.Uniform(), paths=cs.through("m"))])
    plan = lower(cs.check(graph, root).tree)
    check_ops_read_only_earlier(plan)
    (op,) = plan.ops
    assert op.node == "out"
    (_, terms), = op.ports
    # x, h0, h1 on the root's other lane are the clean sum m's port reads: one term, not three
    assert [str(t) for t in terms] == ["other[out]:sum(m.r)", "ds[m]:m"]


def test_share_clean_passes_asks_lanes_for_port_sums():
    graph = two_layer_graph()
    root = cs.InterpNode("out", children=[cs.InterpNode("m", cs.Uniform(), paths=cs.through("m"))])
    corr = cs.check(graph, root)
    before, after = lower(corr.tree), share_clean_passes(graph, lower(corr.tree))
    check_ops_read_only_earlier(after)
    assert after.lanes == before.lanes
    # m's output on its own lane is all that lane gives: m becomes an op on its clean port sum,
    # so both lanes need the same activation (the sum at m.r) and share one clean pass
    assert [op.node for op in after.ops] == ["m", "out"]
    ds_m = next(lane for lane in after.lanes if str(lane) == "ds[m]")
    assert after.ops[0].ports == (("r", (CleanPortSum("m", "r", ds_m),)),)
    assert after.ops[1].reads()[1] == OpResult(0) and after.result == OpResult(1)
    # a Group member stays in the clean pass, which computes the group in one call
    root_h = cs.InterpNode("out", children=[cs.InterpNode("h1", cs.Uniform(), paths=cs.direct("h1"))])
    shared = share_clean_passes(graph, lower(cs.check(graph, root_h).tree))
    assert "h1" not in [op.node for op in shared.ops]
    assert CleanOutput("h1", shared.lanes[1]) in shared.reads()


def test_batch_group_ops_puts_group_members_reading_the_same_terms_together():
    graph = residual_graph()
    # every head on the root's other inputs, but the output reads them mixed with x on ds
    root = cs.InterpNode("out", children=[cs.InterpNode("x", cs.Exact(), paths=cs.direct("x"))])
    corr = cs.check(graph, root)
    plan = compile_plan(corr)
    assert sorted(k for b in plan.batches for k in b) == list(range(len(plan.ops)))
    unbatched = share_clean_passes(graph, lower(corr.tree))
    assert batch_group_ops(graph, unbatched).batches == plan.batches
    for batch in plan.batches:
        nodes = [plan.ops[k].node for k in batch]
        if len(batch) > 1:
            group = graph.group_of[nodes[0]]
            assert all(graph.group_of.get(n) is group for n in nodes)
            assert len({plan.ops[k].ports for k in batch}) == 1


def test_print_plan_reads_as_a_program_and_fits_on_a_screen():
    exp = load("paren")
    plan = compile_plan(cs.check(exp.graph, exp.hypotheses["Ex1b"]))
    text = str(plan)
    lines = text.splitlines()
    assert lines[0] == f"plan: {len(plan.lanes)} lanes, {len(plan.ops)} ops"
    assert len(lines) <= 25 and max(map(len, lines)) <= 160
    assert "L0 = other[logits]" in text and "result: %" in lines[-1]
    for k, op in enumerate(plan.ops):  # every op on its own line, with the claim it serves
        assert any(line.strip().startswith(f"%{k} = {op.node}(") and f"# for {op.serves!r}" in line
                   for line in lines)


def test_port_sums_add_left_to_right_and_free_early():
    g = torch.Generator().manual_seed(0)
    vals = {n: torch.randn(5, generator=g) for n in ("a", "b", "c")}
    graph = cs.Graph([cs.Input("a"), cs.Input("b"), cs.Input("c"),
                      cs.Node("u", lambda r: r, r=["a", "b"]),
                      cs.Node("out", lambda r, s: r + s, r=["a", "b", "c"], s="u")], output="out")
    sums = PortSums(graph, graph.order, kept=set(), wanted=set())
    for n in ("a", "b", "c"):
        sums.put(n, vals[n])
    assert sums.values == {}  # every node value was dropped once added to every sum holding it
    assert ("a", "b") in sums.partial  # u has not read it yet
    sums.done_reading(("a", "b"))  # u read its port: (a, b) is no longer held
    assert ("a", "b") not in sums.partial
    total = sums.read(("a", "b", "c"))
    # the extension started from (a, b)'s sum: the same additions, in the same order
    assert torch.equal(total, (vals["a"] + vals["b"]) + vals["c"])
    sums.done_reading(("a", "b", "c"))
    assert set(sums.partial) == {("u",)} and sums.alive() == []  # only u's port is still to come


def test_port_sums_refuse_an_unfinished_sum():
    graph = cs.Graph([cs.Input("a"), cs.Input("b"), cs.Node("out", lambda r: r, r=["a", "b"])],
                     output="out")
    sums = PortSums(graph, graph.order, kept=set(), wanted=set())
    sums.put("a", torch.ones(2))
    try:
        sums.read(("a", "b"))
    except AssertionError as err:
        assert "before it was finished" in str(err)
    else:
        raise AssertionError("an unfinished sum was read")


def test_graph_run_keeps_memory_near_one_layer():
    """A wide residual graph: the most held at once stays far below every value at once."""
    width, rows = 32, 64
    graph = residual_graph(width)
    batch = cs.Dataset({"x": torch.randn(rows, 16)})
    act = graph.run(batch, outputs={"out"}, ports=set(), measure_memory=True)
    every_value = (width + 2) * rows * 16 * 4
    assert 0 < act.peak_bytes <= every_value / 4
    assert torch.equal(act.outputs["out"], graph.forward(batch))
    # kept sums and outputs come back; grouped and one-by-one evaluation agree
    full = graph.run(batch)
    plain = cs.Graph(list(graph.nodes.values()), output="out").run(batch)
    for k in full.outputs:
        torch.testing.assert_close(full.outputs[k], plain.outputs[k])
    for k in full.port_inputs:
        torch.testing.assert_close(full.port_inputs[k], plain.port_inputs[k])


def position_graph() -> tuple[cs.Graph, cs.Dataset]:
    """x [n, 4] -> a (reads x) -> out (reads x and a); a's port split into positions {0}, {1, 2, 3}."""
    from causal_scrubbing.core import rewrites

    g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i.cumsum(1).sin(), i="x"),
                  cs.Node("out", lambda r: r.cos(), r=["x", "a"])], output="out")
    ds = cs.Dataset({"x": torch.randn(12, 4, generator=torch.Generator().manual_seed(0)),
                     "f": torch.arange(12) % 3})
    return rewrites.split_positions(g, "a", "i", {"first": [0], "rest": [1, 2, 3]}, check_on=ds), ds


def test_a_port_split_by_position_is_read_as_its_sum():
    """`Graph.run` reads a port whose parts select every position once as the sum they split
    (bit for bit the literal sum of the masked parts), without running the parts."""
    g, ds = position_graph()
    assert g.partitions == {("a", "i"): (("x",), 1, 4)}
    fast, literal = g.run(ds), g.run(ds, literal=True)
    assert torch.equal(fast.outputs["out"], literal.outputs["out"])
    assert torch.equal(fast.port_inputs[("a", "i")], literal.port_inputs[("a", "i")])
    assert "a.i@first" not in g.run(ds, outputs={"out"}, ports=set()).outputs
    short = cs.Dataset({"x": torch.randn(3, 5)})  # five positions: the split covers four
    with pytest.raises(cs.GraphError, match="split into positions 0..3.*has 5 positions"):
        g.forward(short)


def test_parts_fed_by_different_lanes_are_assembled_by_index():
    """Each position group of a's input claimed with its own data: the engine takes each part
    from its lane by index and equals the reference (which adds the masked parts)."""
    g, ds = position_graph()
    root = cs.InterpNode("out", children=[
        cs.InterpNode("first", cs.SameFeature("f"), paths=cs.through("a").then("a.i@first")),
        cs.InterpNode("rest", cs.Uniform(), paths=cs.through("a").then("a.i@rest"))])
    corr = cs.check(g, root)
    plan = compile_plan(corr)
    assert any(g.nodes[op.node].selects is not None for op in plan.ops)
    s = cs.draw(corr, ds, torch.arange(12), torch.Generator().manual_seed(1))
    torch.testing.assert_close(cs.engine.evaluate(corr, ds, s), cs.reference.evaluate(corr, ds, s),
                               rtol=0, atol=0)


def test_port_sums_start_from_the_sums_before_them():
    """`share_sums`: an op's port sum that extends an earlier one starts from it, and a sum
    read again is read, not recomputed; the values are bit for bit those of plain sums."""
    exp = load("paren")
    corr = cs.check(exp.graph, exp.hypotheses["Ex1b"])
    plan = compile_plan(corr)
    based = {t: s for t, s in plan.shared_sums.items() if s.base is not None}
    assert based and all(t[:len(s.base)] == s.base for t, s in based.items())
    assert all(plan.shared_sums[s.base].keep_until >= 0 for s in based.values())
    rows = torch.arange(64)
    s = cs.draw(corr, exp.dataset, rows, torch.Generator().manual_seed(0))
    plain = replace(plan, shared_sums={})
    assert torch.equal(cs.engine.evaluate(corr, exp.dataset, s, plan=plan),
                       cs.engine.evaluate(corr, exp.dataset, s, plan=plain))
