"""The invariants of SPEC.md that every change keeps, on the bundled toy experiment."""

from __future__ import annotations

import json
import math

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments import toy


@pytest.fixture(scope="module")
def exp():
    return toy.build()


def test_identity_hypothesis_reproduces_model_loss_exactly(exp):
    ref = torch.randint(0, len(exp.dataset), (3000,), generator=torch.Generator().manual_seed(1))
    corr = cs.check(exp.graph, cs.InterpNode("identity"))
    sample = cs.draw(corr, exp.dataset, ref, torch.Generator().manual_seed(2))
    out = cs.engine.evaluate(corr, exp.dataset, sample, chunk_size=len(ref))
    ref_rows = exp.dataset.rows(ref)
    assert torch.equal(exp.loss_fn(out, ref_rows), exp.loss_fn(exp.graph(ref_rows), ref_rows))

    r = cs.scrub(exp.graph, cs.InterpNode("identity"), exp.dataset, exp.loss_fn, n=3000, seed=4)
    assert torch.equal(r.per_example["scrubbed"], r.per_example["model"])
    assert r.loss == r.model_loss and r.loss_recovered == 1.0


def test_every_path_claimed_with_exact_samplers_is_identity(exp):
    """Claiming every path, all the way down, with exact samplers changes nothing."""
    root = cs.InterpNode("out", other=cs.Exact(), children=[
        cs.InterpNode(n, cs.Exact(), paths=cs.through(n), other=cs.Exact(), children=[
            cs.InterpNode(f"{n}.x", cs.Exact(), paths=cs.through(n).then("x"))])
        for n in ("A", "B", "C")])
    r = cs.scrub(exp.graph, root, exp.dataset, exp.loss_fn, n=2000, seed=0)
    assert torch.equal(r.per_example["scrubbed"], r.per_example["model"])


def test_all_unclaimed_equals_independent_random_baseline(exp):
    ref = torch.arange(len(exp.dataset))
    corr = cs.check(exp.graph, cs.random_baseline())
    sample = cs.draw(corr, exp.dataset, ref, torch.Generator().manual_seed(3))
    random_rows = sample.ds["random baseline"]
    assert not torch.equal(random_rows, ref)
    # Independently: the plain model on the random rows, scored on the reference labels.
    expected = exp.loss_fn(exp.graph(exp.dataset.rows(random_rows)), exp.dataset.rows(ref))
    got = exp.loss_fn(cs.engine.evaluate(corr, exp.dataset, sample), exp.dataset.rows(ref))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)

    r = cs.scrub(exp.graph, cs.random_baseline(), exp.dataset, exp.loss_fn, seed=0)
    assert r.loss_recovered == pytest.approx(0.0, abs=0.05)


def test_same_seed_same_numbers(exp):
    a = cs.scrub(exp.graph, exp.hypotheses["only_a"], exp.dataset, exp.loss_fn, n=1000, seed=7)
    b = cs.scrub(exp.graph, exp.hypotheses["only_a"], exp.dataset, exp.loss_fn, n=1000, seed=7)
    for k in a.per_example:
        assert torch.equal(a.per_example[k], b.per_example[k])
    assert (a.loss, a.loss_recovered, a.ci, a.recovered_se) == (
        b.loss, b.loss_recovered, b.ci, b.recovered_se)


def test_different_seeds_vary_within_the_reported_interval(exp):
    spread = cs.scrub_seeds(exp.graph, exp.hypotheses["only_a"], exp.dataset, exp.loss_fn,
                            n=2000, seeds=range(5))
    values = [r.loss_recovered for r in spread.results]
    assert len(set(values)) == 5  # the seeds really differ
    for r in spread.results:
        assert r.ci[0] < r.loss_recovered < r.ci[1]
        assert r.ci[0] < 0.5 < r.ci[1] or abs(r.loss_recovered - 0.5) < 4 * r.recovered_se
    for i, ri in enumerate(spread.results):
        for rj in spread.results[i + 1:]:
            bound = 4 * math.hypot(ri.recovered_se, rj.recovered_se)
            assert abs(ri.loss_recovered - rj.loss_recovered) < bound
    assert 0 < spread.std < 4 * max(r.recovered_se for r in spread.results)


def test_chunking_does_not_change_results(exp):
    h = exp.hypotheses["y_separately"]
    a = cs.scrub(exp.graph, h, exp.dataset, exp.loss_fn, n=999, seed=1, chunk_size=64)
    b = cs.scrub(exp.graph, h, exp.dataset, exp.loss_fn, n=999, seed=1, chunk_size=4096)
    torch.testing.assert_close(a.per_example["scrubbed"], b.per_example["scrubbed"])


@pytest.mark.parametrize("name", list(toy.EXPECTED))
def test_toy_matches_hand_computed_expectation(exp, name):
    """docs/concepts.md works these out by hand; the estimate must agree within 4 SE."""
    r = cs.scrub(exp.graph, exp.hypotheses[name], exp.dataset, exp.loss_fn, n=8000, seed=0)
    assert abs(r.loss_recovered - toy.EXPECTED[name]) < max(4 * r.recovered_se, 1e-6)


def test_result_save_load_roundtrip(exp, tmp_path):
    r = cs.scrub(exp.graph, exp.hypotheses["only_b"], exp.dataset, exp.loss_fn, n=500, seed=2,
                 subsets=exp.subsets)
    path = r.save(tmp_path / "res")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary left behind
    meta = json.loads((path / "result.json").read_text())
    assert meta["seed"] == 2 and meta["n"] == 500 and "torch" in meta["settings"]["versions"]
    assert "SameFeature('b')" in meta["settings"]["hypothesis"]
    back = cs.ScrubResult.load(path)
    assert back.summary() == json.loads(json.dumps(r.summary()))
    for k, v in r.per_example.items():
        assert torch.equal(back.per_example[k], v)
    r.save(path)  # overwriting an existing result also works
    assert cs.ScrubResult.load(path).loss == r.loss
    assert "loss recovered" in repr(back) and "<table>" in back._repr_html_()


def test_html_repr_escapes_names(exp):
    r = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=100,
                 name="<script>alert(1)</script>")
    assert "<script>" not in r._repr_html_()
