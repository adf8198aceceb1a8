"""Faithfulness curves (`cs.faithfulness_curve`, `causal-scrub search --curve`): the areas'
arithmetic by hand, each size's number against a direct scrub, the ablations, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.experiments import toy
from causal_scrubbing.searching import compact_hypothesis, graph_edges
from causal_scrubbing.searching.curve import (
    SIZES,
    PairedRows,
    areas,
    edge_counts,
    pairs_by_feature,
    search_ranking,
)


def test_areas_by_hand_on_a_linear_axis():
    # x = 0.1, 0.2, 0.5, 1 (range 0.9); f = 0, 0.5, 0.8, 1
    # CPR: 0.1 * (0 + 0.5) / 2 + 0.3 * (0.5 + 0.8) / 2 + 0.5 * (0.8 + 1) / 2 = 0.67, / 0.9
    # CMD: |1 - f| = 1, 0.5, 0.2, 0: 0.1 * 1.5 / 2 + 0.3 * 0.7 / 2 + 0.5 * 0.2 / 2 = 0.23, / 0.9
    cpr, cmd = areas([0.1, 0.2, 0.5, 1.0], [0.0, 0.5, 0.8, 1.0])
    assert cpr == pytest.approx(0.67 / 0.9, abs=1e-12)
    assert cmd == pytest.approx(0.23 / 0.9, abs=1e-12)


def test_areas_by_hand_above_one_and_on_a_log_axis():
    # f above 1 raises CPR above 1 - CMD: f = 1.2, 0.6 on x = 0.5, 1 (range 0.5):
    # CPR = 0.5 * 1.8 / 2 / 0.5 = 0.9; CMD = 0.5 * (0.2 + 0.4) / 2 / 0.5 = 0.3
    assert areas([0.5, 1.0], [1.2, 0.6]) == pytest.approx((0.9, 0.3), abs=1e-12)
    # log axis: x = -2, -1, 0 (range 2); f = 0, 1, 1: CPR = (0.5 + 1) / 2 = 0.75, CMD = 0.25
    assert areas([0.01, 0.1, 1.0], [0.0, 1.0, 1.0], axis="log") == pytest.approx((0.75, 0.25),
                                                                                abs=1e-12)
    # the same points on the linear axis weigh the last interval 0.9 / 0.99
    cpr, cmd = areas([0.01, 0.1, 1.0], [0.0, 1.0, 1.0])
    assert cpr == pytest.approx((0.09 * 0.5 + 0.9) / 0.99, abs=1e-12)
    assert cmd == pytest.approx(0.09 * 0.5 / 0.99, abs=1e-12)
    with pytest.raises(cs.ScrubError, match="axis must be"):
        areas([0.1, 1.0], [0.0, 1.0], axis="loglog")  # type: ignore[arg-type]


def test_edge_counts_are_ceilings():
    assert edge_counts(404, SIZES) == [1, 1, 3, 5, 9, 21, 41, 81, 202, 404]
    assert edge_counts(6, (0.5, 1.0)) == [3, 6]
    assert edge_counts(10, (0.3, 0.7)) == [3, 7]  # (0.3 * 10 is 3.0000000000000004 in floats)


def test_each_size_is_the_scrub_of_its_top_edges_and_the_areas_follow():
    exp = toy.build()
    edges = graph_edges(exp.graph)
    ranking = [("x", "A", "x"), ("A", "out", "resid"), ("x", "B", "x"), ("B", "out", "resid")]
    sizes = (1 / 6, 0.5, 4 / 6, 1.0)
    c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, ranking=ranking, method="mine",
                              sizes=sizes, n=300, seed=2, n_bootstrap=100)
    assert c.edges == [1, 3, 4, 6] and c.n_edges == len(edges) and c.method == "mine"
    assert c.ranking[:4] == ranking and sorted(c.ranking) == sorted(edges)
    for k, f, lo, hi in zip(c.edges, c.loss_recovered, c.ci_low, c.ci_high):
        r = cs.scrub(exp.graph, compact_hypothesis(exp.graph, set(ranking[:k]) if k < 6 else edges),
                     exp.dataset, exp.loss_fn, n=300, seed=2,
                     baseline=compact_hypothesis(exp.graph, set()), n_bootstrap=100)
        assert f == pytest.approx(r.loss_recovered, abs=1e-9)
        assert (lo, hi) == pytest.approx(r.ci, abs=1e-9)
    assert c.loss_recovered[0] == pytest.approx(0.0, abs=0.02)  # x -> A alone: no path kept
    assert c.loss_recovered[2] == pytest.approx(1.0, abs=1e-9)  # the planted circuit: A and B
    assert c.loss_recovered[3] == 1.0
    assert (c.cpr, c.cmd) == pytest.approx(areas(sizes, c.loss_recovered), abs=1e-12)
    assert c.cpr_ci[0] <= c.cpr <= c.cpr_ci[1] and c.cmd_ci[0] <= c.cmd <= c.cmd_ci[1]


def test_attribution_curves_find_the_planted_circuit():
    exp = toy.build()
    for method in ("eap", "eap-ig"):
        c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method=method,
                                  sizes=(4 / 6, 1.0), n=300, n_bootstrap=20)
        assert set(c.ranking[:4]) == {("x", "A", "x"), ("A", "out", "resid"), ("x", "B", "x"),
                                      ("B", "out", "resid")}, method
        assert c.loss_recovered[0] == pytest.approx(1.0, abs=1e-9)


def test_search_ranking_puts_the_kept_edges_first():
    exp = toy.build()
    found = cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=200, n_bootstrap=20)
    ranking = search_ranking(found, exp.graph)
    kept = {(e.sender, e.receiver, e.port) for e in found.kept}
    assert set(ranking[:len(kept)]) == kept and sorted(ranking) == sorted(graph_edges(exp.graph))
    c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="search", threshold=0.95,
                              sizes=(len(kept) / 6, 1.0), n=200, n_bootstrap=20)
    assert c.ranking == ranking and c.loss_recovered[0] == pytest.approx(1.0, abs=1e-9)
    assert c.settings["schedule"] == "ranked"  # "search" is the default search
    g = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="greedy",
                              threshold=0.95, sizes=(len(kept) / 6, 1.0), n=200, n_bootstrap=20)
    assert g.settings["schedule"] == "greedy" and g.settings["tolerances"] == []
    assert g.loss_recovered[0] == pytest.approx(1.0, abs=1e-9)


def test_counterfactual_ablation_reads_each_rows_pair():
    exp = toy.build()
    pairs = torch.roll(torch.arange(len(exp.dataset)), 1)  # row i is paired with row i - 1
    ranking = [("x", "A", "x"), ("A", "out", "resid")]
    c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, ranking=ranking,
                              sizes=(2 / 6, 1.0), n=200, ablation="counterfactual", pairs=pairs,
                              n_bootstrap=20)
    other = PairedRows(pairs)
    r = cs.scrub(exp.graph, compact_hypothesis(exp.graph, set(ranking), other), exp.dataset,
                 exp.loss_fn, n=200, baseline=compact_hypothesis(exp.graph, set(), other),
                 n_bootstrap=20)
    assert c.loss_recovered[0] == pytest.approx(r.loss_recovered, abs=1e-9)
    assert c.ablation == "paired counterfactual"
    with pytest.raises(cs.ScrubError, match="needs pairs"):
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, ablation="counterfactual")
    with pytest.raises(cs.ScrubError, match="no field 'cf'"):
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, ablation="counterfactual",
                              pairs="cf")


def test_pairs_by_feature_pairs_within_a_class():
    ds = cs.Dataset({"t": torch.tensor([3, 1, 3, 3, 1, 7])})
    p = pairs_by_feature(ds, "t", seed=4)
    assert torch.equal(ds["t"][p], ds["t"])
    assert (p[:5] != torch.arange(5)).all() and int(p[5]) == 5


def test_bad_input_is_a_clear_error():
    exp = toy.build()
    with pytest.raises(cs.ScrubError, match="increasing fractions"):
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, sizes=(0.5, 0.1))
    with pytest.raises(cs.ScrubError, match="Unknown method 'acdcx'"):
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="acdcx")
    with pytest.raises(cs.ScrubError, match="taus must be"):  # ACDC's sweep (built in)
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="acdc", taus=(-1.0,))
    with pytest.raises(cs.ScrubError, match="does not have"):
        cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, ranking=[("x", "out", "resid")])


def test_cli_writes_curve_json_and_html(tmp_path):
    out = tmp_path / "curve"
    res = CliRunner().invoke(app, ["search", "toy", "--curve", "--method", "eap", "--n", "200",
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "curve.json").read_text())
    for key in ("method", "sizes", "edges", "loss_recovered", "ci_low", "ci_high", "cpr", "cmd",
                "ablation", "seconds"):
        assert key in data, key
    assert data["method"] == "eap" and data["sizes"] == list(SIZES)
    assert data["edges"] == edge_counts(6, SIZES) and data["loss_recovered"][-1] == 1.0
    assert math.isclose(data["cpr"], areas(SIZES, data["loss_recovered"])[0])
    assert "none" in data["counterfactual"]["ablation"]
    assert "<svg" in (out / "curve.html").read_text()
    assert "CPR" in res.output
    bad = CliRunner().invoke(app, ["search", "toy", "--curve", "--method", "magic",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--method must be one of" in bad.output
    missing = CliRunner().invoke(app, ["search", "toy", "--out", str(tmp_path / "y")])
    assert missing.exit_code == 2 and "--threshold is required" in missing.output


def test_ranked_search_curve_ranks_its_kept_edges_first_then_by_attribution():
    exp = toy.build()
    c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="ranked", threshold=0.95,
                              sizes=(4 / 6, 1.0), n=200, n_bootstrap=20)
    assert set(c.ranking[:4]) == {("x", "A", "x"), ("A", "out", "resid"), ("x", "B", "x"),
                                  ("B", "out", "resid")}
    assert c.loss_recovered[0] == pytest.approx(1.0, abs=1e-9) and c.settings["search_kept"] == 4
