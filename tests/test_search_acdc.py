"""ACDC in causal-scrubbing semantics (`AcdcRemoval`, `faithfulness_curve(method="acdc")`), on a
graph whose answer can be worked out by hand, and its edge order under other hash seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.searching import AcdcRemoval
from causal_scrubbing.searching.curve import acdc_ranking
from causal_scrubbing.searching.steps import removal_units
from test_search import _weighted_sum, mse

ROOT = Path(__file__).resolve().parents[1]

#: out = sum_i c_i h_i, h_i = x_i (independent standard normal), y = out, squared error: the
#: model's loss is 0; with every edge resampled (one shared other row) the loss is
#: E[(out(x') - out(x))^2] = 2 sum c_i^2 = 2, and resampling h_i alone costs 2 c_i^2 of it
#: (c_i^2 = the shares): 0.08, 0.08, 0.16 and 1.68, additively.
SHARES = [0.04, 0.04, 0.08, 0.84]


def acdc(tau: float, **kw):
    graph, ds = _weighted_sum(SHARES)
    return cs.search(graph, ds, mse, threshold=0.0, n=1000, schedule=AcdcRemoval(tau), **kw)


def into_out(found) -> set[str]:
    return {e.sender for e in found.kept if e.receiver == "out"}


def test_acdc_keeps_what_each_tau_allows_by_hand():
    """ACDC visits h3, h2, h1, h0 (the output's senders, latest first), then each kept h's
    input. tau = 0.1: h3 (a rise of 1.68) and h2 (0.16) stay, h1 and h0 (0.08 each) go.
    tau = 0.2: h2 goes too. tau = 0.05: nothing goes. tau = 2: everything goes (the loss
    rises by 2 in all, but by at most 1.68 in one step)."""
    assert into_out(acdc(0.1)) == {"h2", "h3"}
    found = acdc(0.2)
    assert into_out(found) == {"h3"}
    assert {str(e) for e in found.kept} == {"h3 -> out.resid", "x -> h3.x"}
    assert found.schedule == "acdc" and found.loss_recovered == pytest.approx(0.84, abs=0.02)
    assert found.heldout.loss_recovered == pytest.approx(0.84, abs=0.03)
    assert into_out(acdc(0.05)) == {"h0", "h1", "h2", "h3"}
    assert acdc(2.0).kept == []
    # the trace: the four output edges in ACDC's order, each with the rise it measured
    steps = [t for t in acdc(0.1).trace if t["step"] == "resample"]
    assert [t["what"] for t in steps[:4]] == [f"h{i} -> out.resid" for i in (3, 2, 1, 0)]
    assert [t["accepted"] for t in steps[:4]] == [False, False, True, True]
    assert [t["loss_rise"] for t in steps[:4]] == pytest.approx([1.68, 0.16, 0.08, 0.08],
                                                                 abs=0.02)


def test_tau_fraction_is_a_fraction_of_the_loss_gap():
    """The gap is 2 here, so tau_fraction 0.05 is tau 0.1; the threshold plays no part."""
    graph, ds = _weighted_sum(SHARES)
    by_fraction = cs.search(graph, ds, mse, threshold=0.99, n=1000,
                            schedule=AcdcRemoval(tau_fraction=0.05))
    assert by_fraction.kept == acdc(0.1).kept
    note = [t for t in by_fraction.trace if t["step"] == "note"][0]
    assert note["tau"] == pytest.approx(0.1, abs=0.005)
    with pytest.raises(cs.ScrubError, match="one of tau"):
        AcdcRemoval()
    with pytest.raises(cs.ScrubError, match="one of tau"):
        AcdcRemoval(0.1, tau_fraction=0.1)
    with pytest.raises(cs.ScrubError, match="finite number >= 0"):
        AcdcRemoval(-1.0)


def test_acdc_curve_ranks_by_the_largest_tau_that_keeps_an_edge():
    graph, ds = _weighted_sum(SHARES)
    c = cs.faithfulness_curve(graph, ds, mse, method="acdc", taus=(0.01, 0.06, 0.5), n=1000,
                              sizes=(0.25, 0.5, 0.75, 1.0), n_bootstrap=50)
    # in fractions of the gap of 2: 0.5 keeps h3; 0.06 keeps h3, h2; 0.01 keeps everything
    assert [r["kept"] for r in c.settings["acdc"]] == [8, 4, 2]
    assert set(c.ranking[:2]) == {("h3", "out", "resid"), ("x", "h3", "x")}
    assert set(c.ranking[2:4]) == {("h2", "out", "resid"), ("x", "h2", "x")}
    assert c.edges == [2, 4, 6, 8]
    assert c.loss_recovered[0] == pytest.approx(0.84, abs=0.03)  # the tau = 0.5 circuit
    assert c.loss_recovered[1] == pytest.approx(0.92, abs=0.03)  # the tau = 0.06 circuit
    assert c.loss_recovered[-1] == pytest.approx(1.0)
    assert c.method == "acdc" and c.settings["taus"] == [0.01, 0.06, 0.5]
    with pytest.raises(cs.ScrubError, match="taus"):
        cs.faithfulness_curve(graph, ds, mse, method="acdc", taus=(), n=100)


def test_acdc_ranking_without_nesting_puts_the_largest_tau_first():
    from types import SimpleNamespace as NS

    from causal_scrubbing.searching.edges import Edge

    graph, _ = _weighted_sum([0.5, 0.5])
    a, b = Edge("h0", "out", "resid"), Edge("h1", "out", "resid")
    order = acdc_ranking([(0.1, NS(kept=[a])), (0.01, NS(kept=[b]))], graph)
    assert order[:2] == [("h0", "out", "resid"), ("h1", "out", "resid")]


_ORDER = """
import json
from causal_scrubbing.experiments import paren
from causal_scrubbing.searching.steps import removal_units
exp = paren.build()
print(json.dumps([w for w, _ in removal_units(exp.search_graph, "edges")]))
"""


@pytest.mark.slow
def test_acdc_order_does_not_depend_on_the_hash_seed():
    """ACDC from auto-circuit visits edges in a set's order, which changed its result between
    processes; ours is a function of the graph's lists, the same under any PYTHONHASHSEED."""
    orders = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(ROOT / "src")}
        out = subprocess.run([sys.executable, "-c", _ORDER], env=env, capture_output=True,
                             text=True, check=True)
        orders.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert orders[0] == orders[1] and len(orders[0]) == 131


def test_acdc_order_is_the_graphs_and_the_cli_curve(tmp_path):
    graph, _ = _weighted_sum(SHARES)
    units = [w for w, _ in removal_units(graph, "edges")]
    assert units[:4] == [f"h{i} -> out.resid" for i in (3, 2, 1, 0)]
    assert units[4:] == [f"x -> h{i}.x" for i in (3, 2, 1, 0)]
    out = tmp_path / "acdc"
    res = CliRunner().invoke(app, ["search", "toy", "--curve", "--method", "acdc", "--taus",
                                   "0.001,0.3", "--n", "200", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "curve.json").read_text())
    assert data["method"] == "acdc" and [r["tau_fraction"] for r in data["settings"]["acdc"]] == [
        0.001, 0.3]
    bad = CliRunner().invoke(app, ["search", "toy", "--curve", "--method", "eap", "--taus", "0.1",
                                   "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--method acdc" in bad.output
    torch.set_num_threads(1)
