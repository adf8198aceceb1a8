"""The samplers: what each one draws, from where, how uniformly, and how reproducibly.

Samplers map reference row indices to drawn row indices; `cs.draw` applies them top down so
that every node's dataset is conditioned on its parent's draw. Every random choice comes from
the `torch.Generator` passed in, so all draws here are fixed by their seeds.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import causal_scrubbing as cs

# ---- helpers -----------------------------------------------------------------------------


def ctx_for(table: cs.Dataset, seed: int = 0, **kwargs) -> cs.SamplingContext:
    return cs.SamplingContext(table, torch.Generator().manual_seed(seed), **kwargs)


def table(n: int = 240, seed: int = 1234) -> cs.Dataset:
    """`f`: 4 classes in random order; `g`: 2 classes; `pair`: [n, 2]; `label`: a field."""
    gen = torch.Generator().manual_seed(seed)
    f = torch.randint(0, 4, (n,), generator=gen)
    pair = torch.randint(0, 3, (n, 2), generator=gen)
    return cs.Dataset({
        "x": torch.arange(n, dtype=torch.float32),
        "f": f,
        "g": torch.randint(0, 2, (n,), generator=gen),
        "pair": pair,
        "label": (f * 7 + 3) % 5,
    })


def fan_graph(k: int) -> cs.Graph:
    """x feeds n0 .. n{k-1}, all summed into out's one port; m has two ports p, q reading x."""
    nodes = [cs.Input("x"), cs.Node("m", lambda p, q: p + q, p="x", q="x")]
    nodes += [cs.Node(f"n{i}", lambda i: i + 1, i="x") for i in range(k)]
    return cs.Graph([*nodes, cs.Node("out", lambda resid: resid,
                                     resid=[f"n{i}" for i in range(k)] + ["m"])], output="out")


def draw(root: cs.InterpNode, ds: cs.Dataset, ref: torch.Tensor, seed: int = 0,
         k: int = 6) -> cs.Sample:
    return cs.draw(cs.check(fan_graph(k), root), ds, ref, torch.Generator().manual_seed(seed))


def distinct(tensors) -> int:
    return len({tuple(t.tolist()) for t in tensors})


# ---- SameFeature -------------------------------------------------------------------------


def test_same_feature_matches_the_reference_and_really_resamples():
    ds = table()
    ref = torch.arange(len(ds))
    drawn = cs.SameFeature("f")(ref, ctx_for(ds))
    assert drawn.shape == ref.shape and drawn.dtype == torch.long
    assert torch.equal(ds["f"][drawn], ds["f"][ref])
    # classes hold ~60 rows, so a sampler that just returned the reference would be caught
    assert (drawn == ref).float().mean() < 0.1


def test_same_feature_on_a_random_reference_batch():
    ds = table()
    ref = torch.randint(0, len(ds), (500,), generator=torch.Generator().manual_seed(5))
    drawn = cs.SameFeature("f")(ref, ctx_for(ds, seed=3))
    assert len(drawn) == 500
    assert torch.equal(ds["f"][drawn], ds["f"][ref])


def test_same_feature_multidimensional_feature_matches_every_column():
    ds = table()
    ref = torch.arange(len(ds))
    drawn = cs.SameFeature("pair")(ref, ctx_for(ds))
    assert (ds["pair"][drawn] == ds["pair"][ref]).all()
    # every column-0 value comes with all three column-1 values, so a sampler that matched
    # column 0 alone would get column 1 wrong on about 2/3 of the rows
    pair = ds["pair"]
    for v in range(3):
        assert len(torch.unique(pair[pair[:, 0] == v, 1])) == 3


def test_same_feature_three_dimensional_feature():
    ds = table()
    grid = torch.stack([ds["pair"], ds["pair"].flip(1)], dim=1)  # [n, 2, 2]
    ref = torch.arange(len(ds))
    drawn = cs.SameFeature(lambda d: grid)(ref, ctx_for(ds))
    assert (grid[drawn] == grid[ref]).flatten(1).all()


def test_same_feature_callable_feature():
    ds = table()

    def x_mod_5(d: cs.Dataset) -> torch.Tensor:
        return d["x"].long() % 5

    ref = torch.arange(len(ds))
    drawn = cs.SameFeature(x_mod_5)(ref, ctx_for(ds))
    assert torch.equal(drawn % 5, ref % 5)
    assert (drawn != ref).float().mean() > 0.9  # 48 rows per class


def test_same_feature_string_field_feature():
    ds = table()
    ref = torch.arange(len(ds))
    drawn = cs.SameFeature("label")(ref, ctx_for(ds))
    assert torch.equal(ds["label"][drawn], ds["label"][ref])


def test_same_feature_float_features_use_exact_equality():
    # 0.1 + 0.2 != 0.3 in floating point: those are two classes, not one.
    values = torch.tensor([0.1, 0.2, 0.1 + 0.2, 0.3], dtype=torch.float64).repeat(25)
    ds = cs.Dataset({"v": values})
    ref = torch.arange(len(ds))
    drawn = cs.SameFeature("v")(ref, ctx_for(ds))
    assert torch.equal(values[drawn], values[ref])
    assert torch.equal(drawn % 4, ref % 4)


def test_same_feature_float32_and_bool_features():
    ds = table()
    f32 = ds["f"].float() / 3
    flag = ds["g"].bool()
    ref = torch.arange(len(ds))
    for feature, values in [(lambda d: f32, f32), (lambda d: flag, flag)]:
        drawn = cs.SameFeature(feature)(ref, ctx_for(ds))
        assert torch.equal(values[drawn], values[ref])


def test_same_feature_draws_uniformly_within_each_class():
    # Classes of very different sizes (2, 5 and 13 rows), interleaved in a fixed random order.
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(7))
    f = torch.tensor([0] * 2 + [1] * 5 + [2] * 13)[perm]
    ds = cs.Dataset({"f": f})
    per_class = 30_000
    ref = torch.cat([torch.nonzero(f == c).flatten()[0].repeat(per_class) for c in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.SmallClassWarning)  # far more draws than rows
        drawn = cs.SameFeature("f")(ref, ctx_for(ds, seed=11))
    assert torch.equal(f[drawn], f[ref])
    counts = torch.bincount(drawn, minlength=20).double()
    for c in range(3):
        members = torch.nonzero(f == c).flatten()
        expected = per_class / len(members)
        # the smallest expectation is 30000/13 ~ 2308 (sd ~ 46); 10% is ~5 sd
        rel = (counts[members] - expected).abs() / expected
        assert rel.max() < 0.10, (c, counts[members].tolist(), expected)


def test_same_feature_draws_only_from_the_source_rows():
    # Rows [0, 10) hold reference examples; samplers may only draw from [10, 200).
    ds = table(200)
    ctx = ctx_for(ds, source_start=10)
    ref = torch.arange(10).repeat(50)
    drawn = cs.SameFeature("f")(ref, ctx)
    assert drawn.min() >= 10 and drawn.max() < 200
    assert torch.equal(ds["f"][drawn], ds["f"][ref])


def test_same_feature_respects_source_stop():
    ds = table(200)
    ctx = ctx_for(ds, source_start=10, source_stop=120)
    ref = torch.arange(200)
    drawn = cs.SameFeature("f")(ref, ctx)
    assert drawn.min() >= 10 and drawn.max() < 120
    assert torch.equal(ds["f"][drawn], ds["f"][ref])
    assert len(torch.unique(drawn)) > 80  # the whole window is used, not a few rows


def test_small_class_warning_when_drawing_more_rows_than_a_class_has():
    f = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    ds = cs.Dataset({"f": f})
    ref = torch.tensor([0, 1, 0, 1, 0, 2])  # five rows from class 0, which has 2 examples
    with pytest.warns(cs.SmallClassWarning, match=r"f = 0: 2 examples, 5 rows") as record:
        drawn = cs.SameFeature("f")(ref, ctx_for(ds))
    assert torch.equal(f[drawn], f[ref])
    assert len([w for w in record if issubclass(w.category, cs.SmallClassWarning)]) == 1


def test_no_small_class_warning_when_every_class_is_large_enough():
    f = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    ds = cs.Dataset({"f": f})
    ref = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])  # exactly as many rows as each class has
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cs.SameFeature("f")(ref, ctx_for(ds))
    assert not [w for w in record if issubclass(w.category, cs.SmallClassWarning)]


def test_small_class_warning_counts_source_rows_only():
    # Class 1 has 3 rows in the table but only 1 in the source window [3, 8).
    f = torch.tensor([1, 1, 0, 0, 0, 0, 0, 1])
    ds = cs.Dataset({"f": f})
    with pytest.warns(cs.SmallClassWarning, match=r"f = 1: 1 examples, 2 rows"):
        drawn = cs.SameFeature("f")(torch.tensor([0, 1]), ctx_for(ds, source_start=3))
    assert drawn.tolist() == [7, 7]


def test_draw_with_a_source_window_draws_every_dataset_from_it():
    ds = table(200)
    hyp = every_sampler_hypothesis()
    hyp.sampler = cs.SameFeature("g")  # the root too, so no node returns the reference itself
    ref = torch.arange(10)
    s = cs.draw(cs.check(fan_graph(6), hyp), ds, ref, torch.Generator().manual_seed(0),
                source=(10, 200))
    for name, rows in [*s.ds.items(), *s.other.items()]:
        assert rows.min() >= 10 and rows.max() < 200, name
    assert torch.equal(ds["g"][s.ds["root"]], ds["g"][ref])


# ---- a feature with a different value on every row ----------------------------------------


def unique_feature_hypothesis(*samplers: cs.Sampler) -> cs.InterpNode:
    return cs.InterpNode("root", children=[
        cs.InterpNode(f"n{i}", s, paths=cs.through(f"n{i}")) for i, s in enumerate(samplers)])


def test_feature_with_a_value_per_row_warns_that_it_acts_like_exact():
    ds = table(40)  # x = 0, 1, ..., 39: every row its own class
    with pytest.warns(cs.FeatureWarning) as w:
        s = draw(unique_feature_hypothesis(cs.SameFeature("x")), ds, torch.arange(40))
    assert len(w) == 1
    message = str(w[0].message)
    for part in ("interpretation node 'n0'", "feature 'x'", "every one of the 40 source rows",
                 "cs.Exact()"):
        assert part in message, part
    assert torch.equal(s.ds["n0"], torch.arange(40))  # it did behave like Exact


def test_feature_warning_comes_once_per_feature():
    ds = table(40)
    by_value = lambda d: d["x"] * 2  # noqa: E731
    with pytest.warns(cs.FeatureWarning) as w:
        draw(unique_feature_hypothesis(cs.SameFeature("x"), cs.SameFeature("x"),
                                       cs.Pooled(cs.SameFeature(by_value, name="twice x")),
                                       cs.SameFeature(by_value, name="twice x")), ds, torch.arange(8))
    messages = sorted(str(x.message) for x in w)
    assert len(messages) == 2, messages
    assert "interpretation node 'n0': feature 'x'" in messages[0]
    assert "interpretation node 'n2': feature 'twice x'" in messages[1]


def test_feature_warning_names_the_hypothesis_in_scrub_many():
    ds = table(40)
    hyps = {"coarse": unique_feature_hypothesis(cs.SameFeature("f")),
            "fine": unique_feature_hypothesis(cs.SameFeature("x"))}
    loss = lambda out, ref: (out - ref["x"]) ** 2  # noqa: E731
    with pytest.warns(cs.FeatureWarning, match="hypothesis 'fine', interpretation node 'n0'"):
        cs.scrub_many(fan_graph(2), hyps, ds, loss)


def test_a_feature_with_repeated_values_does_not_warn():
    # pyproject turns warnings into errors, so any FeatureWarning here fails the test
    ds = table(40)
    s = draw(unique_feature_hypothesis(cs.SameFeature("f"), cs.SameFeature("pair")), ds,
             torch.arange(40))
    assert len(s) == 40


def test_every_row_differs():
    ds = cs.Dataset({"u": torch.arange(5), "r": torch.tensor([0, 1, 2, 3, 3])})
    assert cs.SameFeature("u").every_row_differs(ctx_for(ds))
    assert not cs.SameFeature("r").every_row_differs(ctx_for(ds))
    assert not cs.SameFeature("u").every_row_differs(ctx_for(ds, source_start=4))  # one row


# ---- Exact, Uniform, SharedUniform --------------------------------------------------------


def test_exact_returns_the_reference():
    ds = table()
    ref = torch.tensor([5, 3, 3, 200, 0])
    assert torch.equal(cs.Exact()(ref, ctx_for(ds)), ref)


def test_uniform_covers_the_source_range_evenly():
    ds = table(30)
    ctx = ctx_for(ds, source_start=5, source_stop=25)
    drawn = cs.Uniform()(torch.zeros(8000, dtype=torch.long), ctx)
    assert len(drawn) == 8000
    assert sorted(torch.unique(drawn).tolist()) == list(range(5, 25))
    counts = torch.bincount(drawn - 5, minlength=20)
    assert counts.min() > 300 and counts.max() < 500  # expected 400 each, sd ~ 20


def test_uniform_ignores_the_reference():
    ds = table()
    a = cs.Uniform()(torch.zeros(100, dtype=torch.long), ctx_for(ds, seed=3))
    b = cs.Uniform()(torch.arange(100) + 50, ctx_for(ds, seed=3))
    assert torch.equal(a, b)
    assert (a != 0).float().mean() > 0.9


def test_shared_uniform_is_shared_by_nodes_holding_the_same_instance():
    ds = table()
    shared, other_shared = cs.SharedUniform(), cs.SharedUniform()
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c0", shared, paths=cs.through("n0")),
        cs.InterpNode("c1", shared, paths=cs.through("n1")),
        cs.InterpNode("c2", other_shared, paths=cs.through("n2")),
        cs.InterpNode("c3", other_shared, paths=cs.through("n3")),
    ])
    s = draw(root, ds, torch.arange(64))
    assert torch.equal(s.ds["c0"], s.ds["c1"])
    assert torch.equal(s.ds["c2"], s.ds["c3"])
    assert not torch.equal(s.ds["c0"], s.ds["c2"])
    assert (s.ds["c0"] != torch.arange(64)).float().mean() > 0.9  # not the reference


def test_shared_uniform_is_shared_across_different_parents():
    # One node under the root, one under u: their parents' rows differ, the draw does not.
    ds = table()
    shared = cs.SharedUniform()
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c0", shared, paths=cs.through("n0")),
        cs.InterpNode("u", cs.Uniform(), paths=cs.through("m"), children=[
            cs.InterpNode("p", shared, paths=cs.through("m", port="p"))])])
    s = draw(root, ds, torch.arange(64))
    assert not torch.equal(s.ds["u"], s.ds["root"])
    assert torch.equal(s.ds["c0"], s.ds["p"])


def test_shared_uniform_draws_afresh_in_each_draw():
    ds = table()
    shared = cs.SharedUniform()
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c0", shared, paths=cs.through("n0")),
        cs.InterpNode("c1", shared, paths=cs.through("n1"))])
    corr = cs.check(fan_graph(6), root)
    ctx = ctx_for(ds)
    first = cs.draw(corr, ds, torch.arange(64), torch.Generator().manual_seed(0), ctx=ctx)
    second = cs.draw(corr, ds, torch.arange(64), torch.Generator().manual_seed(1), ctx=ctx)
    assert torch.equal(second.ds["c0"], second.ds["c1"])
    assert not torch.equal(first.ds["c0"], second.ds["c0"])


def test_shared_uniform_stays_in_the_source_range():
    ds = table(100)
    drawn = cs.SharedUniform()(torch.zeros(2000, dtype=torch.long),
                               ctx_for(ds, source_start=40, source_stop=60))
    assert sorted(torch.unique(drawn).tolist()) == list(range(40, 60))


# ---- Pooled ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3])
def test_pooled_uniform_caps_distinct_draws_across_nodes(size):
    ds = table()
    pooled = cs.Pooled(cs.Uniform(), size=size)
    root = cs.InterpNode("root", children=[
        cs.InterpNode(f"c{i}", pooled, paths=cs.through(f"n{i}")) for i in range(6)])
    s = draw(root, ds, torch.arange(64))
    # the first `size` nodes fill the pool with fresh draws; the rest reuse them
    assert distinct(s.ds[f"c{i}"] for i in range(6)) == size


def test_pooled_bigger_than_the_number_of_nodes_draws_independently():
    ds = table()
    pooled = cs.Pooled(cs.Uniform(), size=10)
    root = cs.InterpNode("root", children=[
        cs.InterpNode(f"c{i}", pooled, paths=cs.through(f"n{i}")) for i in range(6)])
    s = draw(root, ds, torch.arange(64))
    assert distinct(s.ds[f"c{i}"] for i in range(6)) == 6


def test_separate_pooled_instances_have_separate_pools():
    ds = table()
    p1, p2 = cs.Pooled(cs.Uniform(), size=1), cs.Pooled(cs.Uniform(), size=1)
    root = cs.InterpNode("root", children=[
        cs.InterpNode(f"c{i}", p1 if i < 3 else p2, paths=cs.through(f"n{i}"))
        for i in range(6)])
    s = draw(root, ds, torch.arange(64))
    assert distinct(s.ds[f"c{i}"] for i in range(3)) == 1
    assert distinct(s.ds[f"c{i}"] for i in range(3, 6)) == 1
    assert not torch.equal(s.ds["c0"], s.ds["c3"])


def test_pooled_same_feature_respects_the_feature_in_a_hypothesis():
    ds = table()
    pooled = cs.Pooled(cs.SameFeature("f"), size=2)
    # c0..c3 are conditioned on the reference; p and q on u's (uniform) draw.
    root = cs.InterpNode("root", children=[
        *[cs.InterpNode(f"c{i}", pooled, paths=cs.through(f"n{i}")) for i in range(4)],
        cs.InterpNode("u", cs.Uniform(), paths=cs.through("m"), children=[
            cs.InterpNode("p", pooled, paths=cs.through("m", port="p")),
            cs.InterpNode("q", pooled, paths=cs.through("m", port="q"))]),
    ])
    ref = torch.arange(100)
    s = draw(root, ds, ref)
    f = ds["f"]
    for i in range(4):
        assert torch.equal(f[s.ds[f"c{i}"]], f[ref])
    assert torch.equal(f[s.ds["p"]], f[s.ds["u"]])
    assert torch.equal(f[s.ds["q"]], f[s.ds["u"]])
    assert distinct(s.ds[f"c{i}"] for i in range(4)) <= 2
    assert (f[s.ds["u"]] != f[ref]).float().mean() > 0.5  # the two pools really differ


def test_pooled_same_feature_reuses_draws_only_where_the_feature_allows():
    ds = table()
    f = ds["f"]
    members = [torch.nonzero(f == c).flatten() for c in range(4)]
    pattern = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0] * 4)  # one class pattern, many ref batches
    gen = torch.Generator().manual_seed(21)
    pooled = cs.Pooled(cs.SameFeature("f"), size=2)
    ctx = ctx_for(ds)
    outs = []
    for _ in range(10):
        ref = torch.stack([m[torch.randint(len(m), (), generator=gen)]
                           for m in (members[int(c)] for c in pattern)])
        out = pooled(ref, ctx)
        assert torch.equal(f[out], f[ref])
        outs.append(out)
    assert distinct(outs) == 2
    # a batch with another class pattern gets its own pool, still matching its feature
    other_ref = members[0][:32]
    out = pooled(other_ref, ctx)
    assert (f[out] == 0).all()


# ---- determinism -------------------------------------------------------------------------


def every_sampler_hypothesis() -> cs.InterpNode:
    shared = cs.SharedUniform()
    pooled = cs.Pooled(cs.SameFeature("f"), size=2)
    return cs.InterpNode("root", other=cs.Uniform(), children=[
        cs.InterpNode("c0", cs.SameFeature("f"), paths=cs.through("n0")),
        cs.InterpNode("c1", shared, paths=cs.through("n1")),
        cs.InterpNode("c2", shared, paths=cs.through("n2")),
        # three nodes share a pool of two, so the third reuses a draw (picked at random)
        cs.InterpNode("c3", pooled, paths=cs.through("n3")),
        cs.InterpNode("c4", pooled, paths=cs.through("n4")),
        cs.InterpNode("c5", pooled, paths=cs.through("n5")),
        cs.InterpNode("u", cs.Uniform(), paths=cs.through("m"),
                      other=cs.SameFeature("pair"), children=[
                          cs.InterpNode("p", cs.SameFeature("g"),
                                        paths=cs.through("m", port="p"))]),
    ])


def test_same_seed_gives_identical_draws():
    ds = table()
    ref = torch.arange(100)
    a = draw(every_sampler_hypothesis(), ds, ref, seed=4)
    b = draw(every_sampler_hypothesis(), ds, ref, seed=4)
    assert a.ds.keys() == b.ds.keys() and a.other.keys() == b.other.keys()
    assert all(torch.equal(a.ds[k], b.ds[k]) for k in a.ds)
    assert all(torch.equal(a.other[k], b.other[k]) for k in a.other)


def test_different_seeds_give_different_draws():
    ds = table()
    ref = torch.arange(100)
    a = draw(every_sampler_hypothesis(), ds, ref, seed=4)
    b = draw(every_sampler_hypothesis(), ds, ref, seed=5)
    assert torch.equal(a.ds["root"], b.ds["root"])  # Exact: the reference both times
    for k in ["c0", "c1", "c3", "c4", "u", "p"]:
        assert not torch.equal(a.ds[k], b.ds[k]), k
    for k in ["root", "u"]:
        assert not torch.equal(a.other[k], b.other[k]), k


@pytest.mark.parametrize("sampler", [cs.SameFeature("f"), cs.Uniform(), cs.SharedUniform(),
                                     cs.Pooled(cs.SameFeature("pair"), size=3)],
                         ids=lambda s: s.describe())
def test_sampler_seed_determinism(sampler):
    ds = table()
    ref = torch.arange(len(ds))
    assert torch.equal(sampler(ref, ctx_for(ds, seed=9)), sampler(ref, ctx_for(ds, seed=9)))
    assert not torch.equal(sampler(ref, ctx_for(ds, seed=9)), sampler(ref, ctx_for(ds, seed=10)))


def test_draw_does_not_touch_the_global_rng():
    ds = table()
    before = torch.get_rng_state()
    draw(every_sampler_hypothesis(), ds, torch.arange(100), seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def test_draws_do_not_depend_on_the_global_rng():
    ds = table()
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(1)
        a = draw(every_sampler_hypothesis(), ds, torch.arange(100), seed=0)
        torch.manual_seed(2)
        b = draw(every_sampler_hypothesis(), ds, torch.arange(100), seed=0)
    finally:
        torch.set_rng_state(saved)
    assert all(torch.equal(a.ds[k], b.ds[k]) for k in a.ds)
    assert all(torch.equal(a.other[k], b.other[k]) for k in a.other)


def test_scrub_does_not_touch_the_global_rng():
    ds = table()
    before = torch.get_rng_state()
    r = cs.scrub(fan_graph(6), every_sampler_hypothesis(), ds,
                 lambda out, ref: (out - ref["x"]) ** 2, n=200, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert r.n == 200


# ---- recursion: conditioned on the parent's draw -----------------------------------------


def test_child_is_conditioned_on_its_parents_draw_not_the_reference():
    ds = table()
    f = ds["f"]
    root = cs.InterpNode("root", cs.Uniform(), children=[
        cs.InterpNode("c", cs.SameFeature("f"), paths=cs.through("n0"))])
    ref = torch.arange(len(ds))
    s = draw(root, ds, ref)
    assert torch.equal(s.ref, ref)
    assert torch.equal(f[s.ds["c"]], f[s.ds["root"]])
    # the parent's draw differs from the reference in feature on most rows (4 classes), so
    # matching the reference instead would fail
    assert (f[s.ds["root"]] != f[ref]).float().mean() > 0.5
    assert (f[s.ds["c"]] != f[ref]).float().mean() > 0.5


def test_grandchild_is_conditioned_on_its_parent_not_the_root():
    ds = table()
    f = ds["f"]
    root = cs.InterpNode("root", cs.Exact(), children=[
        cs.InterpNode("mid", cs.Uniform(), paths=cs.through("n0"), children=[
            cs.InterpNode("leaf", cs.SameFeature("f"), paths=cs.through("n0").then("x"))])])
    ref = torch.arange(len(ds))
    s = draw(root, ds, ref)
    assert torch.equal(s.ds["root"], ref)
    assert torch.equal(f[s.ds["leaf"]], f[s.ds["mid"]])
    assert (f[s.ds["leaf"]] != f[ref]).float().mean() > 0.5


def test_chain_of_features_conditions_step_by_step():
    # root keeps g, mid keeps f given root's draw, leaf keeps pair given mid's draw.
    ds = table()
    root = cs.InterpNode("root", cs.SameFeature("g"), children=[
        cs.InterpNode("mid", cs.SameFeature("f"), paths=cs.through("n0"), children=[
            cs.InterpNode("leaf", cs.SameFeature("pair"), paths=cs.through("n0").then("x"))])])
    ref = torch.arange(len(ds))
    s = draw(root, ds, ref)
    assert torch.equal(ds["g"][s.ds["root"]], ds["g"][ref])
    assert torch.equal(ds["f"][s.ds["mid"]], ds["f"][s.ds["root"]])
    assert (ds["pair"][s.ds["leaf"]] == ds["pair"][s.ds["mid"]]).all()
    assert (ds["f"][s.ds["mid"]] != ds["f"][ref]).float().mean() > 0.3


def test_other_inputs_are_conditioned_on_the_nodes_own_draw():
    ds = table()
    f = ds["f"]
    root = cs.InterpNode("root", cs.Exact(), children=[
        cs.InterpNode("u", cs.Uniform(), paths=cs.through("m"), other=cs.SameFeature("f"),
                      children=[cs.InterpNode("p", paths=cs.through("m", port="p"))])])
    ref = torch.arange(len(ds))
    s = draw(root, ds, ref)
    assert torch.equal(f[s.other["u"]], f[s.ds["u"]])
    assert (f[s.other["u"]] != f[ref]).float().mean() > 0.5
    assert torch.equal(s.ds["p"], s.ds["u"])  # Exact (the default) keeps the parent's rows
