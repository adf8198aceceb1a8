"""The performance machinery computes exactly what the plain algorithm computes.

Node groups, residual prefix sums, port patching, the hook-based baseline and the benchmark
are speed devices; each is checked here against the slow, obvious computation. Timings are
never asserted (they live in `causal-scrub bench`).
"""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing import bench
from causal_scrubbing.bench import hook_loop, tl_peer
from causal_scrubbing.cli import app
from causal_scrubbing.core import engine, rewrites
from causal_scrubbing.experiments import ioi
from causal_scrubbing.experiments import load as load_experiment


def small_ioi():
    return ioi.random_workload(n_layers=6, n_heads=8, d_model=64, d_vocab=300, n=128)


def test_group_is_used_and_equals_its_members():
    calls = []

    def both(x):
        calls.append(1)
        return {"a": 2 * x, "b": 3 * x}

    nodes = [cs.Input("x"), cs.Node("a", lambda x: 2 * x, x="x"), cs.Node("b", lambda x: 3 * x, x="x"),
             cs.Node("out", lambda r: r, r=["a", "b"])]
    grouped = cs.Graph(nodes, "out", groups=[cs.Group(("a", "b"), both)])
    plain = cs.Graph(nodes, "out")
    ds = cs.Dataset({"x": torch.randn(5, 3)})
    assert torch.equal(grouped.forward(ds), plain.forward(ds))
    assert len(calls) == 1
    only_a = grouped.run(ds, outputs={"a"}, ports=set())  # one member needed: its own fn
    assert len(calls) == 1 and torch.equal(only_a.outputs["a"], 2 * ds["x"])


def test_group_members_must_share_ports():
    nodes = [cs.Input("x"), cs.Input("y"), cs.Node("a", lambda x: x, x="x"),
             cs.Node("b", lambda x: x, x="y"), cs.Node("out", lambda r: r, r=["a", "b"])]
    with pytest.raises(cs.GraphError, match="same ports"):
        cs.Graph(nodes, "out", groups=[cs.Group(("a", "b"), lambda x: {})])


def test_transformer_groups_match_per_head_nodes():
    model = small_ioi().graph.module
    g = model.graph()
    ungrouped = cs.Graph(list(g.nodes.values()), g.output, module=model)
    batch = cs.Dataset({"tokens": torch.randint(0, 300, (4, 64))})
    with torch.inference_mode():
        torch.testing.assert_close(g.forward(batch), ungrouped.forward(batch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g.forward(batch), model(batch["tokens"]), rtol=1e-4, atol=1e-4)


def test_residual_prefix_sums_equal_sums_from_scratch():
    model = small_ioi().graph.module
    g = model.graph()
    batch = cs.Dataset({"tokens": torch.randint(0, 300, (3, 64))})
    ports = {(n, "q") for n in g.nodes if n.startswith("a")} | {("out", "resid")}
    acts = g.run(batch)
    kept = g.run(batch, outputs=set(), ports=ports)
    for node, port in ports:
        scratch = cs.core.graph.sum_values([acts.outputs[u] for u in g.ports(node)[port]])
        assert torch.equal(kept.port_inputs[(node, port)], scratch), (node, port)


def test_patch_replaces_a_port_input():
    g = cs.Graph([cs.Input("x"), cs.Node("a", lambda x: x + 1, x="x"),
                  cs.Node("out", lambda r: 10 * r, r=["a", "x"])], "out")
    ds = cs.Dataset({"x": torch.ones(2)})
    patched = g.run(ds, outputs={"out"}, ports=set(), patch={("out", "r"): torch.zeros(2)})
    assert torch.equal(patched.outputs["out"], torch.zeros(2))
    assert torch.equal(g.forward(ds), torch.full((2,), 30.0))


@pytest.mark.parametrize("hypothesis,min_passes", [("circuit", 4), ("name movers only", 1)])
def test_hook_loop_and_engine_agree_on_a_transformer(hypothesis, min_passes):
    exp = small_ioi()
    corr = cs.check(exp.graph, exp.hypotheses[hypothesis])
    sample = cs.draw(corr, exp.dataset, torch.arange(12), torch.Generator().manual_seed(0))
    plan = engine.compile_plan(corr)
    fast = engine.evaluate(corr, exp.dataset, sample, plan=plan, chunk_size=5)
    hooks = hook_loop.evaluate(corr, exp.dataset, sample, plan=plan, chunk_size=5)
    torch.testing.assert_close(fast, hooks, rtol=1e-5, atol=1e-5)
    assert len(hook_loop.patch_passes(plan)) >= min_passes  # nested claims: several passes


def test_ioi_roles_are_disjoint_and_complain_when_too_small():
    heads = [h for hs in ioi.workload.roles(12, 12).values() for h in hs]
    assert len(heads) == len(set(heads)) == 17
    with pytest.raises(ValueError, match="too few heads"):
        ioi.workload.roles(2, 2)


def test_bench_cli_writes_ratios_and_agreeing_losses(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--repeats", "1", "--only", "GPT",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "/limit" in result.output and "GPT-2-small-shaped IOI" in result.output
    assert "TL x" in result.output and "TL MB" in result.output
    data = json.loads(out.read_text())
    assert data["machine"] and len(data["workloads"]) == 1
    w = data["workloads"][0]
    assert w["lanes"] == 9 and w["engine_s"] > 0 and w["limit_s"] > 0 and w["hooks_s"] > 0
    assert w["loss_hooks"] == pytest.approx(w["loss_engine"], rel=1e-5)
    assert w["threads"] == torch.get_num_threads()
    if tl_peer.available() is None:
        assert w["tl_s"] > 0 and w["tl_peak_mb"] is not None
        assert w["loss_tl"] == pytest.approx(w["loss_engine"], rel=1e-5)
        assert data["versions"]["transformer_lens"]
    assert not any("DIFFER" in note for note in w["notes"])


# ---- the TransformerLens peer ----------------------------------------------------------------

needs_tl = pytest.mark.skipif(tl_peer.available() is not None, reason=tl_peer.TL_MISSING)


@needs_tl
@pytest.mark.parametrize("workload", [w.name for w in bench.workloads(quick=True)])
def test_tl_peer_equals_the_engine_on_every_quick_workload(workload):
    """The same draws and plan as `bench.measure`; the peer's outputs and mean loss equal the
    engine's to float rounding, in chunks (per-position parts, estimates, attention splits,
    Shortformer positions, padding masks and classifier heads included)."""
    w = next(w for w in bench.workloads(quick=True) if w.name == workload)
    exp = w.experiment()
    table = exp.dataset
    corr = cs.check(exp.graph, exp.hypotheses[w.hypothesis])
    ref = cs.core.draws.reference_rows(len(table), w.n, 0)
    sample = cs.core.draws.draw_hypothesis(corr, table, ref, 0)
    plan = engine.compile_plan(corr)
    peer = tl_peer.TLPeer(exp.graph.module, check_tokens=table["tokens"][:4])
    fast = engine.evaluate(corr, table, sample, plan=plan)
    ours = peer.evaluate(corr, table, sample, plan=plan, chunk_size=w.n // 3 + 1)
    torch.testing.assert_close(ours, fast, rtol=1e-4, atol=1e-4)
    rows = table.rows(ref)
    assert float(exp.loss_fn(ours, rows).mean()) == pytest.approx(
        float(exp.loss_fn(fast, rows).mean()), rel=1e-5, abs=1e-6)
    assert len(peer.script(corr, plan, table["tokens"].shape[1]).passes) <= len(
        hook_loop.patch_passes(plan))  # receivers packed into as few passes as the hooks allow


@needs_tl
def test_tl_peer_handles_every_bundled_hypothesis():
    """Unseen hypotheses: every hypothesis of the paren and IOI experiments (the estimate, the
    per-position splits, nothing and everything scrubbed)."""
    for name, n in (("paren", 12), ("ioi", 24)):
        exp = load_experiment(name)
        peer = tl_peer.TLPeer(exp.graph.module, check_tokens=exp.dataset["tokens"][:4])
        for hyp, root in exp.hypotheses.items():
            corr = cs.check(exp.graph, root)
            sample = cs.draw(corr, exp.dataset, torch.arange(n), torch.Generator().manual_seed(1))
            torch.testing.assert_close(peer.evaluate(corr, exp.dataset, sample),
                                       engine.evaluate(corr, exp.dataset, sample),
                                       rtol=1e-4, atol=1e-4, msg=f"{name} {hyp}")


@needs_tl
def test_tl_peer_refuses_what_it_cannot_write_with_hooks():
    """A rewrite whose part is an estimate of the head's *output* is not a hook; the peer says
    so instead of computing it some other way, and the bench notes it."""
    exp = small_ioi()
    name = "a5.h0"
    graph = rewrites.add_estimate(exp.graph, name, lambda h: 0.5 * h,
                                  check_on=exp.dataset.rows(torch.arange(4)))
    corr = cs.check(graph, cs.InterpNode("logits", cs.Exact(), children=[
        cs.InterpNode("est", cs.SameFeature("io"), paths=cs.through(f"{name}.est"))]))
    peer = tl_peer.TLPeer(graph.module)
    with pytest.raises(tl_peer.NotExpressible, match="cannot identify"):
        peer.script(corr, engine.compile_plan(corr), 64)
    notes: list[str] = []
    assert bench.tl_peer_for(graph, exp.dataset, corr, engine.compile_plan(corr), notes) is None
    assert notes and notes[0].startswith("TL peer: n/a, ")


def test_bench_without_transformer_lens_says_so(monkeypatch):
    """transformer_lens is an optional extra: without it the bench runs the other evaluators
    and names the extra."""
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # makes the import fail
    assert tl_peer.available() == tl_peer.TL_MISSING
    w = next(w for w in bench.workloads(quick=True) if w.name == "IOI")
    w.n = 16
    m = bench.measure(w, repeats=1, with_reference=False)
    assert m.tl_s is None and m.tl_peak_mb is None and m.loss_tl is None
    assert any(n == f"TL peer: {tl_peer.TL_MISSING}" for n in m.notes)
    row = bench.format_table([m]).splitlines()[1].split()  # IOI lanes n engine /limit ref hooks TL ...
    assert row[0] == "IOI" and row[7] == "n/a" and row[-1] == "n/a"


def test_bench_measures_at_each_thread_count():
    data = bench.run(quick=True, repeats=1, only=["GPT"], progress=False, with_reference=False,
                     threads=[1, 2])
    assert [w["threads"] for w in data["workloads"]] == [1, 2] and data["threads"] == [1, 2]
    assert "1, 2 torch threads" in data["machine"]
    assert data["table"].splitlines()[0].split()[:2] == ["workload", "thr"]
    bad = CliRunner().invoke(app, ["bench", "--quick", "--threads", "0", "--quiet"])
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_bench_scale_runs_the_command_at_two_sizes_in_child_processes(tmp_path):
    """`bench --scale`: each run is `causal-scrub run` in its own process, with its peak
    resident memory (the child's, not the test's) and the numbers that run wrote."""
    out = tmp_path / "scale.json"
    result = CliRunner().invoke(app, ["bench", "--scale", "300", "--scale-base", "150", "--only",
                                      "toy", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "time per row at 300 rows" in result.output
    data = json.loads(out.read_text())
    assert data["experiment"] == "toy" and data["machine"]
    assert [r["n"] for r in data["runs"]] == [150, 300]
    direct = cs.experiments.run_experiment(load_experiment("toy"), n=300, seed=0)
    for r in data["runs"]:
        assert r["wall_s"] > 0 and r["cpu_s"] > 0 and 20 < r["peak_mb"] < 20_000
    assert data["runs"][1]["loss_recovered"] == pytest.approx(
        {name: res.loss_recovered for name, res in direct.results.items()})
    bad = CliRunner().invoke(app, ["bench", "--scale", "100", "--scale-base", "200", "--quiet"])
    assert bad.exit_code == 2 and "more rows than the base run" in bad.output


def test_bench_reference_agrees_on_a_small_graph():
    w = bench.Workload("induction naive", lambda: load_experiment("induction"), "naive", 6, 3)
    m = bench.measure(w, repeats=1)
    assert m.reference_s is not None and m.reference_rows == 3
    assert not any("DIFFER" in note for note in m.notes)


def test_bench_rejects_unknown_workloads():
    result = CliRunner().invoke(app, ["bench", "--only", "nonexistent", "--quiet"])
    assert result.exit_code == 2 and "No workload matches" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_engine_matches_cpu():
    exp = small_ioi()
    corr = cs.check(exp.graph, exp.hypotheses["circuit"])
    sample = cs.draw(corr, exp.dataset, torch.arange(32), torch.Generator().manual_seed(0))
    cpu = engine.evaluate(corr, exp.dataset, sample)
    exp.graph.to("cuda")
    try:
        gpu = engine.evaluate(corr, exp.dataset.to("cuda"), sample)
    finally:
        exp.graph.to("cpu")
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_bench_runs():
    data = bench.run(quick=True, repeats=1, device="cuda", only=["GPT"], progress=False)
    assert data["workloads"][0]["engine_peak_mb"] > 0
    assert not any("DIFFER" in n for n in data["workloads"][0]["notes"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_paren_run_matches_cpu():
    exp = load_experiment("paren")
    hyps = {k: exp.hypotheses[k] for k in ("Ex2b", "Ex4")}  # the estimate and per-position features
    kw = dict(n=64, seed=0, baseline=exp.baseline, n_bootstrap=10)
    cpu = cs.scrub_many(exp.graph, hyps, exp.dataset, exp.loss_fn, device="cpu", **kw)
    gpu = cs.scrub_many(exp.graph, hyps, exp.dataset, exp.loss_fn, device="cuda", **kw)
    exp.graph.to("cpu")
    for k in hyps:
        torch.testing.assert_close(gpu[k].per_example["scrubbed"], cpu[k].per_example["scrubbed"],
                                   rtol=1e-3, atol=1e-3)


def test_layer_group_with_pattern_parts_equals_each_part():
    model = small_ioi().graph.module
    first = rewrites.previous_position
    parts = {"h0.prev": (0, first), "h0.rest": (0, rewrites.complement(first)), "h3": (3, None)}
    fn = model.layer_heads_fn(1, parts)
    resid = torch.randn(2, 64, 64)
    together = fn(q=resid, k=resid, v=resid)
    alone = {"h0.prev": model.head_fn(1, 0, first), "h0.rest": model.head_fn(1, 0, parts["h0.rest"][1]),
             "h3": model.head_fn(1, 3)}
    for name, head in alone.items():
        torch.testing.assert_close(together[name], head(q=resid, k=resid, v=resid), rtol=1e-5, atol=1e-5)
