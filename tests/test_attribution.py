"""EAP and EAP-IG (`cs.attribute`): against finite differences, the engine, and auto-circuit."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.core.draws import reference_rows
from causal_scrubbing.searching import compact_hypothesis, graph_edges
from causal_scrubbing.searching.attribution import finite_differences, shared_other_rows

ROOT = Path(__file__).resolve().parents[1]


def small_graph(linear: bool) -> tuple[cs.Graph, cs.Dataset]:
    """Two layers over a 3-vector input, ports summing several senders (one sum read by two
    ports), float64. `linear`: every node is linear (so the loss is linear in every port input);
    otherwise tanh and products."""
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(3, 3, generator=g, dtype=torch.float64) for _ in range(4)]
    act = (lambda t: t) if linear else torch.tanh
    nodes = [
        cs.Input("x"),
        cs.Node("a", lambda i: act(i @ w[0]), i="x"),
        cs.Node("b", lambda i: act(i @ w[1]), i="x"),
        cs.Node("c", (lambda i, j: i @ w[2] + j @ w[3]) if linear else (lambda i, j: act(i) * j),
                i=["x", "a"], j=["x", "a"]),
        cs.Node("out", (lambda r: r) if linear else (lambda r: r + r ** 2 / 4), r=["a", "b", "c"]),
    ]
    ds = cs.Dataset({"x": torch.randn(64, 3, generator=g, dtype=torch.float64)})
    return cs.Graph(nodes, output="out"), ds


def loss_fn(out: torch.Tensor, rows: cs.Dataset) -> torch.Tensor:  # [n]: linear in the output
    return out @ torch.tensor([1.0, -2.0, 0.5], dtype=out.dtype)


def test_eap_equals_finite_differences_exactly_where_the_loss_is_linear():
    graph, ds = small_graph(linear=True)
    ref, other = torch.arange(0, 20), torch.arange(20, 40)
    att = cs.attribute(graph, ds, loss_fn, ref=ref, other=other, chunk_size=7)
    fd = finite_differences(graph, ds, loss_fn, ref, other)
    assert set(att.scores) == set(fd) == set(graph_edges(graph))
    assert not att.exact
    for e in fd:
        assert att.scores[e] == pytest.approx(fd[e], abs=1e-12), e
    assert max(abs(v) for v in fd.values()) > 0.1  # (not all zero)


def test_eap_error_is_second_order_elsewhere():
    """On a nonlinear graph the EAP estimate's error shrinks as the square of the distance
    between the other input and the reference, so its relative error falls tenfold when the
    distance does."""
    graph, ds = small_graph(linear=False)
    x = ds["x"][:16]
    direction = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for eps in (1e-2, 1e-3, 1e-4):
        table = cs.Dataset({"x": torch.cat([x, x + eps * direction])})
        ref, other = torch.arange(16), torch.arange(16, 32)
        att = cs.attribute(graph, table, loss_fn, ref=ref, other=other)
        fd = finite_differences(graph, table, loss_fn, ref, other)
        scale = max(abs(v) for v in fd.values())
        errors.append(max(abs(att.scores[e] - fd[e]) for e in fd) / scale)
    assert errors[0] < 0.1  # a fair first-order estimate already (0.38 at eps = 0.1)
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5  # relative error O(eps)


def test_finite_differences_are_the_engines_loss_change_under_the_shared_draw():
    """What EAP estimates is what the search measures: resampling one edge under the shared
    other draw (`compact_hypothesis`) changes the engine's mean loss by the finite difference."""
    graph, ds = small_graph(linear=False)
    n, seed = 24, 3
    ref = reference_rows(len(ds), n, seed)
    other = shared_other_rows(graph, ds, ref, seed)
    fd = finite_differences(graph, ds, loss_fn, ref, other)
    edges = graph_edges(graph)
    model = cs.scrub(graph, cs.InterpNode("out"), ds, loss_fn, n=n, seed=seed, n_bootstrap=2).loss
    for e in edges:
        r = cs.scrub(graph, compact_hypothesis(graph, set(edges) - {e}), ds, loss_fn, n=n,
                     seed=seed, n_bootstrap=2)
        assert r.loss - model == pytest.approx(fd[e], rel=1e-6, abs=1e-6), e  # (float32 losses)
    # and attribute() picks that draw by default on the rows given
    att = cs.attribute(graph, ds, loss_fn, ref=ref, seed=seed)
    att2 = cs.attribute(graph, ds, loss_fn, ref=ref, other=other, seed=seed)
    assert att.scores == att2.scores


def test_eap_ig_scores_add_up_to_the_total_effect():
    """Integrated gradients along the line from the other input to the reference: with the
    trapezoid rule the scores add up to L(everything resampled) - L(model) (completeness)."""
    graph, ds = small_graph(linear=False)
    ref, other = torch.arange(0, 32), torch.arange(32, 64)
    ig = cs.attribute(graph, ds, loss_fn, method="eap-ig", steps=64, ref=ref, other=other)
    total = ig.resampled_loss - ig.model_loss
    assert abs(total) > 0.1
    assert ig.total == pytest.approx(total, rel=2e-3)
    # the uniform rule (auto-circuit's) is the same average with equal weights
    uni = cs.attribute(graph, ds, loss_fn, method="eap-ig", steps=4, rule="uniform", ref=ref,
                       other=other)
    pts = [cs.attribute(graph, ds, loss_fn, method="eap", ref=ref, other=other)]
    assert uni.steps == 4 and pts[0].steps == 1
    # EAP is EAP-IG's first point (alpha = 0): with one interval and the uniform rule, the
    # score is the mean of the alpha = 0 and alpha = 1 points, so it differs from EAP
    assert uni.scores != pts[0].scores


def test_ports_without_gradients_are_scored_exactly():
    """Token ids read by an embedding have no gradient: those edges are patched exactly."""
    emb = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    graph = cs.Graph([cs.Input("tok"), cs.Node("embed", lambda t: emb[t], t="tok"),
                      cs.Node("out", lambda r: torch.cat([r, r.tanh()[:, :1]], -1), r="embed")],
                     output="out")
    ds = cs.Dataset({"tok": torch.tensor([0, 1, 2, 3, 4, 4, 3, 2])})
    ref, other = torch.arange(4), torch.arange(4, 8)
    att = cs.attribute(graph, ds, loss_fn, ref=ref, other=other)
    fd = finite_differences(graph, ds, loss_fn, ref, other)
    assert att.exact == {("tok", "embed", "t")}
    assert att.scores[("tok", "embed", "t")] == pytest.approx(fd[("tok", "embed", "t")], abs=1e-12)


def test_ranking_and_errors():
    graph, ds = small_graph(linear=True)
    att = cs.attribute(graph, ds, loss_fn, n=16, n_heldout=16)
    ranked = att.ranking()
    assert sorted(ranked) == sorted(graph_edges(graph))
    assert [abs(att.scores[e]) for e in ranked] == sorted((abs(v) for v in att.scores.values()),
                                                          reverse=True)
    assert att.top(2) == set(ranked[:2])
    assert "Attribution(eap" in repr(att)
    with pytest.raises(cs.ScrubError, match="Unknown attribution method 'eapig'"):
        cs.attribute(graph, ds, loss_fn, method="eapig")
    with pytest.raises(cs.ScrubError, match="steps must be"):
        cs.attribute(graph, ds, loss_fn, method="eap-ig", steps=0)
    with pytest.raises(cs.ScrubError, match="one length"):
        cs.attribute(graph, ds, loss_fn, ref=torch.arange(3), other=torch.arange(4))
    with pytest.raises(cs.ScrubError, match="outside the dataset"):
        cs.attribute(graph, ds, loss_fn, ref=torch.arange(3), other=torch.tensor([0, 1, 99]))


# ---- against auto-circuit, on the TransformerLens copy of the IOI model --------------------------


@pytest.fixture(scope="module")
def peers():
    pytest.importorskip("auto_circuit", reason="the [tracr] extra (auto-circuit) is not installed")
    pytest.importorskip("transformer_lens")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import peers as module
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return module


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_scores_equal_auto_circuits_on_the_same_transformer_lens_copy(peers, method):
    """auto-circuit's `mask_gradient_prune_scores` on the TransformerLens copy of the IOI model
    (logit gradients, answer function minus the IO - S logit difference, which is the IOI
    experiment's loss), with the same clean/corrupt pairs: at mask 0 it is EAP; with
    `integrated_grad_samples=k` it sums k + 1 equally spaced points, our uniform rule times
    k + 1. auto-circuit joins `embed` and `pos_embed` into `Resid Start` (our two scores are
    added) and has no input edges; every other edge is compared one by one. (On paren the
    model is so sure of its answers that -log p has gradients of about 1e-8 on these rows.)"""
    torch.set_num_threads(1)
    mask_gradient = peers.tracr.auto_circuit("auto_circuit.prune_algos.mask_gradient")
    task = peers.ioi_task()
    graph, ds = task.graph, task.exp.dataset
    rows = torch.arange(40)
    patchable, loader = peers.auto_circuit_setup(task, rows)
    rng = random.Random(peers.SEED)  # the pairs auto_circuit_setup made
    other = torch.tensor([(j := rng.randrange(len(rows) - 1)) + (j >= i) for i in range(len(rows))])
    steps = 3
    kwargs = dict(mask_val=0.0) if method == "eap" else dict(integrated_grad_samples=steps)
    ps = mask_gradient.mask_gradient_prune_scores(patchable, loader, None, grad_function="logit",
                                                  answer_function="avg_diff", **kwargs)
    theirs = {e.name: float(e.prune_score(ps)) * (1 if method == "eap" else 1 / (steps + 1))
              for e in patchable.edges}
    att = cs.attribute(graph, ds, task.exp.loss_fn, method=method, steps=steps, rule="uniform",
                       ref=rows, other=rows[other])
    ours: dict[str, float] = {}
    for t, s in att.scores.items():
        name = peers.ac_name(t)
        if name is not None:
            ours[name] = ours.get(name, 0.0) + s
    assert set(ours) == set(theirs)
    scale = max(abs(v) for v in theirs.values())
    assert scale > 1e-3
    for name in theirs:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-5 * scale), name
