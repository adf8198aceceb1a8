"""Toy graphs whose ground truth is known by construction.

In the spirit of Redwood's rust_circuit `tests/causal_scrubbing/test_experiment.py`: each test
builds a tiny hand-written model whose mechanism we know exactly, then scrubs hypotheses about
it. A hypothesis that states the truth must recover ~100% of the loss (usually the scrubbed
output is *identical* to the model's, so the scrubbed loss equals the model loss), while a
wrong one must be clearly rejected.

All data is integer-valued (so `SameFeature` classes are exact) and drawn from fixed seeds; the
loss is the squared error against a label `y` = the true function + small label noise (so the
model loss is small but non-zero). Every test also runs the fast engine against the literal,
path-by-path reference evaluator on the same draw.
"""

from __future__ import annotations

import torch

import causal_scrubbing as cs

N = 4000  # rows per dataset
NOISE = 0.1  # label-noise scale: the model loss is about NOISE**2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ints(gen: torch.Generator, low: int, high: int, n: int = N) -> torch.Tensor:
    """n i.i.d. uniform integers in [low, high)."""
    return torch.randint(low, high, (n,), generator=gen)


def _dataset(columns: dict[str, torch.Tensor], y_clean: torch.Tensor, seed: int) -> cs.Dataset:
    """Fields: `x` (float, one column per entry of `columns`), each column by name (long), and
    the label `y` = `y_clean` + label noise."""
    x = torch.stack([c.float() for c in columns.values()], dim=1)
    noise = NOISE * torch.randn(len(x), generator=_gen(seed + 1000))
    return cs.Dataset({"x": x, **{k: v.long() for k, v in columns.items()},
                       "y": y_clean.float() + noise})


def mse(out: torch.Tensor, ref: cs.Dataset) -> torch.Tensor:
    """Per-example squared error against the reference rows' label."""
    return (out - ref["y"]) ** 2


def assert_engine_matches_reference(graph: cs.Graph, root: cs.InterpNode, ds: cs.Dataset,
                                    n_ref: int = 500) -> None:
    """The fast engine and the literal reference evaluator agree on one shared draw."""
    corr = cs.check(graph, root)
    ref_idx = torch.randint(len(ds), (n_ref,), generator=_gen(123))
    s = cs.draw(corr, ds, ref_idx, torch.Generator().manual_seed(0))
    fast = cs.engine.evaluate(corr, ds, s)
    slow = cs.reference.evaluate(corr, ds, s)
    assert fast.shape == (n_ref,)
    torch.testing.assert_close(fast, slow)


def assert_exactly_model(r: cs.ScrubResult) -> None:
    """The scrubbed output equals the model's on every row, so the losses match row by row."""
    torch.testing.assert_close(r.per_example["scrubbed"], r.per_example["model"])
    assert abs(r.loss - r.model_loss) < 1e-6
    assert abs(r.loss_recovered - 1.0) < 1e-6


def assert_baseline_meaningful(r: cs.ScrubResult) -> None:
    """Scrubbing everything must hurt a lot, or 'loss recovered' would mean nothing."""
    assert r.baseline_loss > 20 * r.model_loss, r


# ---- 1. a correct hypothesis is accepted ----------------------------------------------------


def _two_layer_graph() -> cs.Graph:
    # h1 = relu(a - 1), h2 = 2b, h3 = 0 * c (a dead distractor);
    # out = p * q + p with p = h1 + h3 and q = h2.
    return cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: (x[:, 0] - 1).clamp(min=0), x="x"),
        cs.Node("h2", lambda x: 2 * x[:, 1], x="x"),
        cs.Node("h3", lambda x: 0 * x[:, 2], x="x"),
        cs.Node("out", lambda p, q: p * q + p, p=["h1", "h3"], q=["h2"]),
    ], output="out")


def test_correct_hypothesis_recovers_everything():
    """Ground truth: out = relu(a-1) * 2b + relu(a-1), and c is never used.

    The hypothesis says h1 depends only on the feature relu(a-1) (coarser than a: a = 0 and
    a = 1 fall in one class), h2 only on b, and leaves the dead node h3 unclaimed (so it is
    resampled uniformly). Every claim is true, so each resampled input gives h1 and h2 exactly
    the reference row's values: the scrubbed output equals the model's on every row and 100%
    of the loss is recovered, while the random baseline is far worse.
    """
    g = _gen(1)
    a, b, c = _ints(g, 0, 5), _ints(g, 0, 4), _ints(g, 0, 4)
    y = (a - 1).clamp(min=0) * 2 * b + (a - 1).clamp(min=0)
    ds = _dataset({"a": a, "b": b, "c": c}, y, seed=1)
    graph = _two_layer_graph()
    torch.testing.assert_close(graph(ds), y.float())  # the model computes the label

    def relu_a_minus_1(d: cs.Dataset) -> torch.Tensor:
        return (d["a"] - 1).clamp(min=0)

    root = cs.InterpNode("out", children=[
        cs.InterpNode("h1", cs.SameFeature(relu_a_minus_1), paths=cs.through("h1")),
        cs.InterpNode("h2", cs.SameFeature("b"), paths=cs.through("h2")),
    ])
    r = cs.scrub(graph, root, ds, mse, seed=0)

    assert r.loss_recovered > 0.98, r
    assert_exactly_model(r)
    assert_baseline_meaningful(r)
    assert r.ci[0] > 0.98, r
    assert_engine_matches_reference(graph, root, ds)


# ---- 2. cancelling intermediates ------------------------------------------------------------


def test_cancelling_intermediates_need_a_joint_claim():
    """Ground truth: h1 = 5*x0 and h2 = -5*x0 + x1 carry a big x0 signal that cancels exactly
    in out = h1 + h2 = x1; only the small x1 signal reaches the label y = x1 (+ noise).

    - Separate claims (h1 computes x0, h2 computes x1; or both compute x1) resample h1 and h2
      from *different* inputs, so the two x0 terms no longer cancel: the error is 5*(x0 - x0')
      and the scrubbed loss (~200) is far above even the random baseline (~0.5). Rejected.
    - One node claiming both paths (`through("h1") | through("h2")`) with feature x1 feeds h1
      and h2 the same input, which has the reference's x1: the cancellation survives and the
      output is exactly the model's. Accepted.
    """
    g = _gen(2)
    x0, x1 = _ints(g, -3, 4), _ints(g, 0, 2)
    ds = _dataset({"x0": x0, "x1": x1}, x1, seed=2)
    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: 5 * x[:, 0], x="x"),
        cs.Node("h2", lambda x: -5 * x[:, 0] + x[:, 1], x="x"),
        cs.Node("out", lambda resid: resid, resid=["h1", "h2"]),
    ], output="out")
    torch.testing.assert_close(graph(ds), x1.float())

    separate_true_parts = cs.InterpNode("out", children=[
        cs.InterpNode("h1", cs.SameFeature("x0"), paths=cs.through("h1")),
        cs.InterpNode("h2", cs.SameFeature("x1"), paths=cs.through("h2")),
    ])
    separate_both_x1 = cs.InterpNode("out", children=[
        cs.InterpNode("h1", cs.SameFeature("x1"), paths=cs.through("h1")),
        cs.InterpNode("h2", cs.SameFeature("x1"), paths=cs.through("h2")),
    ])
    joint = cs.InterpNode("out", children=[
        cs.InterpNode("h1+h2", cs.SameFeature("x1"), paths=cs.through("h1") | cs.through("h2")),
    ])

    for wrong in (separate_true_parts, separate_both_x1):
        r = cs.scrub(graph, wrong, ds, mse, seed=0)
        assert_baseline_meaningful(r)
        assert r.loss > 100 * r.model_loss, r
        assert r.loss > 10 * r.baseline_loss, r  # worse than scrubbing everything
        assert r.loss_recovered < 0, r
        assert r.ci[1] < 0, r

    r = cs.scrub(graph, joint, ds, mse, seed=0)
    assert r.loss_recovered > 0.98, r
    assert_exactly_model(r)

    for root in (separate_true_parts, joint):
        assert_engine_matches_reference(graph, root, ds)


# ---- 3. swapped intermediates ---------------------------------------------------------------


def test_swapped_intermediates_are_rejected():
    """Ground truth: h1 = a and h2 = b, out = 3*h1 + h2 (asymmetric), y = 3a + b.

    The true hypothesis (h1: a, h2: b) reproduces the model exactly. The swapped one (h1: b,
    h2: a) keeps the wrong variable fixed for each node, so h1 sees a random a and h2 a random
    b: the output is as bad as the random baseline (~0% recovered).
    """
    g = _gen(3)
    a, b = _ints(g, 0, 5), _ints(g, 0, 5)
    ds = _dataset({"a": a, "b": b}, 3 * a + b, seed=3)
    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: x[:, 0], x="x"),
        cs.Node("h2", lambda x: x[:, 1], x="x"),
        cs.Node("out", lambda p, q: 3 * p + q, p="h1", q="h2"),
    ], output="out")

    def hypothesis(f1: str, f2: str) -> cs.InterpNode:
        return cs.InterpNode("out", children=[
            cs.InterpNode("h1", cs.SameFeature(f1), paths=cs.through("h1")),
            cs.InterpNode("h2", cs.SameFeature(f2), paths=cs.through("h2")),
        ])

    true = cs.scrub(graph, hypothesis("a", "b"), ds, mse, seed=0)
    swapped = cs.scrub(graph, hypothesis("b", "a"), ds, mse, seed=0)

    assert_baseline_meaningful(true)
    assert true.loss_recovered > 0.98, true
    assert_exactly_model(true)
    assert swapped.loss_recovered < 0.3, swapped
    assert swapped.loss > 50 * swapped.model_loss, swapped
    assert swapped.ci[1] < 0.5, swapped
    assert_engine_matches_reference(graph, hypothesis("b", "a"), ds)


# ---- 4. correlated features -----------------------------------------------------------------


def test_correlated_feature_is_distinguished_from_the_true_one():
    """Ground truth: out = h = u (one bit), y = u. A second bit v equals u on 90% of the rows
    (chosen exactly: v is u with every 10th row flipped), so u and v are highly correlated
    (phi = 0.8) but not identical, and the model only reads u.

    Claiming h computes u reproduces the model exactly. Claiming h computes v resamples an
    input with the same v, whose u differs from the reference's with probability
    2 * 0.9 * 0.1 = 0.18 (vs 0.5 for a random input), so about 1 - 0.18 / 0.5 = 64% is
    recovered: noticeably worse, by a margin far larger than the sampling noise.
    """
    g = _gen(4)
    u = _ints(g, 0, 2)
    flip = (torch.arange(N) % 10 == 0).long()
    v = u ^ flip
    ds = _dataset({"u": u, "v": v}, u, seed=4)
    assert int((u == v).sum()) == N - N // 10
    phi = torch.corrcoef(torch.stack([u.float(), v.float()]))[0, 1].item()
    assert phi > 0.75

    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h", lambda x: x[:, 0], x="x"),
        cs.Node("out", lambda r: r, r="h"),
    ], output="out")

    def claims(feature: str) -> cs.InterpNode:
        return cs.InterpNode("out", children=[
            cs.InterpNode("h", cs.SameFeature(feature), paths=cs.through("h"))])

    true = cs.scrub(graph, claims("u"), ds, mse, seed=0)
    correlated = cs.scrub(graph, claims("v"), ds, mse, seed=0)

    assert_baseline_meaningful(true)
    assert true.loss_recovered > 0.98, true
    assert_exactly_model(true)
    assert 0.5 < correlated.loss_recovered < 0.8, correlated  # ~0.64 expected
    assert correlated.loss_recovered < true.loss_recovered - 0.2
    assert correlated.ci[1] < true.ci[0] - 0.1  # the intervals are well separated
    assert_engine_matches_reference(graph, claims("v"), ds)


# ---- 5. unspecified nodes -------------------------------------------------------------------


def test_unclaimed_node_is_resampled_unless_other_is_exact():
    """Ground truth: out = h1 + h2 with h1 = a, h2 = 2b, y = a + 2b; both nodes matter.

    The hypothesis only claims h1 (feature a). By default (`other=Uniform()` on the root)
    the unclaimed h2 reads one random input, so the output is wrong by 2*(b - b') and the loss
    is large (~20% recovered expected: b's share of the variance is 4/5). With
    `other=cs.Exact()` on the root the unclaimed paths keep the reference input, and the
    output (and so the loss) equals the model's exactly.
    """
    g = _gen(5)
    a, b = _ints(g, 0, 5), _ints(g, 0, 5)
    ds = _dataset({"a": a, "b": b}, a + 2 * b, seed=5)
    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: x[:, 0], x="x"),
        cs.Node("h2", lambda x: 2 * x[:, 1], x="x"),
        cs.Node("out", lambda resid: resid, resid=["h1", "h2"]),
    ], output="out")

    def only_h1(other: cs.Sampler | None) -> cs.InterpNode:
        return cs.InterpNode("out", other=other, children=[
            cs.InterpNode("h1", cs.SameFeature("a"), paths=cs.through("h1"))])

    default = cs.scrub(graph, only_h1(None), ds, mse, seed=0)
    assert_baseline_meaningful(default)
    assert default.loss > 100 * default.model_loss, default
    assert default.loss_recovered < 0.4, default
    assert default.ci[1] < 0.5, default

    kept = cs.scrub(graph, only_h1(cs.Exact()), ds, mse, seed=0)
    assert kept.loss_recovered > 0.98, kept
    assert_exactly_model(kept)

    # The mechanism, on one draw: the unclaimed paths read `other["out"]`.
    corr = cs.check(graph, only_h1(cs.Exact()))
    ref_idx = torch.arange(N)
    s = cs.draw(corr, ds, ref_idx, torch.Generator().manual_seed(0))
    assert torch.equal(s.other["out"], ref_idx)
    corr_default = cs.check(graph, only_h1(None))
    s_default = cs.draw(corr_default, ds, ref_idx, torch.Generator().manual_seed(0))
    assert (s_default.other["out"] != ref_idx).float().mean() > 0.99

    assert_engine_matches_reference(graph, only_h1(None), ds)
    assert_engine_matches_reference(graph, only_h1(cs.Exact()), ds)


# ---- 6. recursion: a child of a child -------------------------------------------------------


def test_grandchild_is_conditioned_on_its_parents_sample():
    """Ground truth: h1 = a; h2 = h1 * b (h2 reads h1 on port `h` and x directly on port
    `x`); out = h2; y = a * b. The inputs are a, b in 0..3 and an unused c.

    Hypothesis: h2 computes f = a*b (its other input, the direct x -> h2.x path, kept from
    h2's own draw by `other=Exact()`), and below it, the h1 -> h2 path carries g = a. The
    grandchild draws an input with the same a *as h2's draw* (not the reference's), so h2
    = a(ds[h2]) * b(ds[h2]) = f(ref): exactly the model output. This only works if the
    grandchild is conditioned on its parent's sample; conditioning on the reference instead
    would compute a(ref) * b(ds[h2]), which is badly wrong (checked below), as are the wrong
    grandchild features c (irrelevant) and b (the other factor).
    """
    g = _gen(6)
    a, b, c = _ints(g, 0, 4), _ints(g, 0, 4), _ints(g, 0, 4)
    ds = _dataset({"a": a, "b": b, "c": c}, a * b, seed=6)
    graph = cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: x[:, 0], x="x"),
        cs.Node("h2", lambda h, x: h * x[:, 1], h="h1", x="x"),
        cs.Node("out", lambda r: r, r="h2"),
    ], output="out")

    def product(d: cs.Dataset) -> torch.Tensor:
        return d["a"] * d["b"]

    def hypothesis(grandchild_feature: str) -> cs.InterpNode:
        return cs.InterpNode("out", children=[
            cs.InterpNode("h2", cs.SameFeature(product), paths=cs.through("h2"),
                          other=cs.Exact(), children=[
                cs.InterpNode("h1", cs.SameFeature(grandchild_feature),
                              paths=cs.through("h2").then("h1")),
            ]),
        ])

    true = cs.scrub(graph, hypothesis("a"), ds, mse, seed=0)
    assert_baseline_meaningful(true)
    assert true.loss_recovered > 0.98, true
    assert_exactly_model(true)

    for wrong_feature in ("c", "b"):
        wrong = cs.scrub(graph, hypothesis(wrong_feature), ds, mse, seed=0)
        assert wrong.loss > 100 * wrong.model_loss, wrong
        assert wrong.loss_recovered < 0.6, wrong
        assert wrong.ci[1] < true.ci[0] - 0.3, wrong

    # The draw itself: the grandchild matches its parent's a, not (always) the reference's.
    corr = cs.check(graph, hypothesis("a"))
    ref_idx = torch.arange(N)
    s = cs.draw(corr, ds, ref_idx, torch.Generator().manual_seed(0))
    assert torch.equal(product(ds)[s.ds["h2"]], product(ds)[ref_idx])
    assert torch.equal(a[s.ds["h1"]], a[s.ds["h2"]])
    differs = (a[s.ds["h1"]] != a[ref_idx]).float().mean().item()
    assert differs > 0.2  # so conditioning on the reference would be detectable here
    # ...and it would be detected: a(ref) * b(ds[h2]) has a large loss.
    ref_conditioned = (a[ref_idx] * b[s.ds["h2"]]).float()
    ref_conditioned_loss = ((ref_conditioned - ds["y"]) ** 2).mean().item()
    assert ref_conditioned_loss > 100 * true.model_loss

    assert_engine_matches_reference(graph, hypothesis("a"), ds)
    assert_engine_matches_reference(graph, hypothesis("c"), ds)


# ---- 7. sensitivity -------------------------------------------------------------------------


def _eps_graph(eps: float) -> cs.Graph:
    # out = h1 + h2 with h1 = a (claimed) and h2 = eps * c (left unclaimed).
    return cs.Graph([
        cs.Input("x"),
        cs.Node("h1", lambda x: x[:, 0], x="x"),
        cs.Node("h2", lambda x: eps * x[:, 1], x="x"),
        cs.Node("out", lambda resid: resid, resid=["h1", "h2"]),
    ], output="out")


def test_recovery_degrades_with_the_weight_of_an_unclaimed_node():
    """Ground truth: out = a + eps * c with a in 0..4 and c = +-1; y = out (+ noise). The
    hypothesis claims only h1 (feature a), so h2 = eps*c is resampled.

    The scrubbed loss exceeds the model's by eps^2 * E[(c - c')^2] = 2 eps^2 and the baseline's
    excess is 2 Var(a) + 2 eps^2 = 4 + 2 eps^2, so the expected loss recovered is
    1 - 2 eps^2 / (4 + 2 eps^2): 0.99875 for eps = 0.05 (close to, but measurably below, 1)
    and 1/3 for eps = 2 (a big drop).
    """
    g = _gen(7)
    a = _ints(g, 0, 5)
    c = 2 * _ints(g, 0, 2) - 1

    def hypothesis() -> cs.InterpNode:
        return cs.InterpNode("out", children=[
            cs.InterpNode("h1", cs.SameFeature("a"), paths=cs.through("h1"))])

    results = {}
    for eps in (0.05, 2.0):
        ds = _dataset({"a": a, "c": c}, a + eps * c, seed=7)
        graph = _eps_graph(eps)
        results[eps] = r = cs.scrub(graph, hypothesis(), ds, mse, seed=0)
        assert_baseline_meaningful(r)
        expected_gap = 2 * eps**2 / (4 + 2 * eps**2)
        assert 0.5 * expected_gap < 1 - r.loss_recovered < 1.5 * expected_gap, (eps, r)
        assert_engine_matches_reference(graph, hypothesis(), ds)

    small, large = results[0.05], results[2.0]
    assert 0.99 < small.loss_recovered < 0.9995, small  # close to 1, but below it
    assert small.ci[1] < 1, small
    assert small.loss > small.model_loss + 0.002, small  # measurably worse than the model
    assert large.loss_recovered < 0.5, large
    assert (1 - large.loss_recovered) > 100 * (1 - small.loss_recovered)
    assert large.ci[1] < small.ci[0] - 0.3
