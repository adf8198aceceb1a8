"""Circuits drawn (`circuit_drawing`): the layout, a search's circuit, a hypothesis over its graph,
the figures `found.draw()` and `result.plot()` return, and the search report in a real browser.

The browser test loads the search reports of real paren and IOI searches in headless Chromium
(as `test_report.py` does) and checks, in the rendered page, that the circuit is there, that
every kept edge is drawn, and that no two node labels overlap.
"""

from __future__ import annotations

import html
import itertools
import re

import pytest
import torch

import causal_scrubbing as cs
from causal_scrubbing import experiments, report
from causal_scrubbing.core.results import jsonable
from causal_scrubbing.experiments import toy
from causal_scrubbing.report import circuit as cd
from causal_scrubbing.report.search import render_search_html
from causal_scrubbing.searching import build_hypothesis, effective, graph_edges
from test_report import browser, ink  # noqa: F401  (the browser fixture, shared)

torch.set_num_threads(1)

HOSTILE = "<script>alert('x')</script>"


def transformer_edges(n_layers: int, n_heads: int, mlp: bool = True) -> list[cd.Triple]:
    """The edges of a transformer graph as `Transformer.graph` wires it (without weights)."""
    edges: list[cd.Triple] = [("tokens", "embed", "tokens"), ("tokens", "pos_embed", "tokens")]
    writers = ["embed", "pos_embed"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        edges += [(w, head, p) for head in heads for p in "qkv" for w in writers]
        writers += heads
        if mlp:
            edges += [(w, f"m{layer}", "in") for w in writers]
            writers.append(f"m{layer}")
    edges += [(w, "out", "resid") for w in writers]
    return edges


def boxes_overlap(a: cd.Box, b: cd.Box) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


# ---- layout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_layers, n_heads", [(3, 2), (4, 4), (12, 12)])
def test_layout_rows_by_layer_inputs_at_the_bottom_and_no_box_overlaps(n_layers, n_heads):
    edges = transformer_edges(n_layers, n_heads)
    lay = cd.layout(edges)
    y = {v: b.y for v, b in lay.boxes.items()}
    assert y["out"] == min(y.values()) and y["tokens"] == max(y.values())
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        assert y[f"m{layer}"] < min(y[h] for h in heads)  # the MLP above its layer's heads
        if layer:
            assert max(y[h] for h in heads) < y[f"m{layer - 1}"]
        if n_heads <= 4:
            assert len({y[h] for h in heads}) == 1  # one line
    for s, r, _ in edges:
        assert lay.boxes[s].y > lay.boxes[r].y  # every edge goes up
    for (u, a), (v, b) in itertools.combinations(lay.boxes.items(), 2):
        assert not boxes_overlap(a, b), (u, v)
    for b in lay.boxes.values():
        assert 0 <= b.x and b.x + b.w <= lay.width and 0 <= b.y and b.y + b.h <= lay.height
    assert lay.width <= 1100


def test_depth_follows_the_longest_path_not_the_names():
    edges = [("x", "late", "i"), ("x", "a", "i"), ("a", "b", "i"), ("b", "out", "i"),
             ("late", "out", "j")]
    assert cd.node_depths(edges) == {"x": 0, "late": 1, "a": 1, "b": 2, "out": 3}


# ---- a search's circuit ---------------------------------------------------------------------------

def test_search_circuit_draws_kept_edges_by_cost_and_features_on_nodes():
    edges = transformer_edges(2, 2)
    kept = [("embed", "a0.h0", "q"), ("embed", "a0.h0", "k"), ("a0.h0", "m0", "in"),
            ("m0", "out", "resid"), ("tokens", "embed", "tokens")]
    trace = [{"step": "start", "what": "everything kept", "loss_recovered": 1.0, "accepted": True},
             {"step": "resample", "what": "m0 -> out.resid", "loss_recovered": 0.1, "accepted": False},
             {"step": "resample", "what": "a1.h1 -> out.resid", "loss_recovered": 0.99,
              "accepted": True},
             {"step": "resample", "what": "embed -> a0.h0.q", "loss_recovered": 0.95,
              "accepted": False}]
    svg = cd.search_svg(edges, kept, {"m0": "balanced"}, trace)
    assert svg.count('class="edge kept"') == len(kept)
    assert svg.count('class="edge removed"') == len(edges) - len(kept)
    widths = {}
    for m in re.finditer(r'stroke-width="([\d.]+)" stroke-opacity="0.85"><title>([^<]*)</title>', svg):
        widths[html.unescape(m.group(2)).split(":")[0]] = float(m.group(1))
    # 90 points for m0's edge, 4 for embed -> a0.h0.q (0.99 was current then), none known for k
    assert widths["m0 -> out.resid"] > widths["embed -> a0.h0.q"] > 1.2
    assert "would have cost 90.0 points" in svg and "would have cost 4.0 points" in svg
    assert "= balanced" in svg and 'stroke="#d53f8c"' in svg  # q's colour
    # the kept nodes are bold, the others faint
    on = set(re.findall(r'<g class="circuit-node on"><title>([^<:]*)', svg))
    assert on == {"embed", "a0.h0", "m0", "out", "tokens"}
    # without the removed edges
    assert cd.search_svg(edges, kept, show_removed=False).count('class="edge removed"') == 0


def test_node_search_expands_a_kept_node_to_each_port_it_feeds():
    edges = transformer_edges(1, 2, mlp=False)
    kept = [("embed", "a0.h1", None), ("a0.h1", "out", None), ("tokens", "embed", None)]
    trace = [{"step": "start", "what": "everything kept", "loss_recovered": 1.0, "accepted": True},
             {"step": "resample", "what": "a0.h1", "loss_recovered": 0.3, "accepted": False}]
    svg = cd.search_svg(edges, kept, trace=trace)
    assert svg.count('class="edge kept"') == 3 + 1 + 1  # embed feeds a0.h1's q, k and v
    assert "resampling it would cost 70.0 points" in svg and "node alone" in svg


def test_every_label_is_escaped():
    edges = [(HOSTILE, "out", HOSTILE), ("x", HOSTILE, "p")]
    svg = cd.search_svg(edges, edges, {HOSTILE: HOSTILE},
                        [{"step": "resample", "what": HOSTILE, "loss_recovered": 0.5}],
                        title=HOSTILE)
    assert "<script" not in svg and html.escape(HOSTILE) in svg
    data = {"kept": [{"sender": HOSTILE, "receiver": "out", "port": None}],
            "graph_edges": [[HOSTILE, "out", "resid"]], "features": {HOSTILE: HOSTILE}}
    assert "<script" not in (cd.search_json_svg(data) or "<script")


def test_resample_costs_take_the_last_rejection_against_the_recovery_then():
    trace = [{"step": "start", "loss_recovered": 1.0, "accepted": True},
             {"step": "resample", "what": "e", "loss_recovered": 0.98, "accepted": False, "pass": 0},
             {"step": "resample", "what": "f", "loss_recovered": 0.97, "accepted": True, "pass": 0},
             {"step": "resample", "what": "e", "loss_recovered": 0.90, "accepted": False, "pass": 1},
             {"step": "resample", "what": "g", "loss_recovered": None, "accepted": False}]
    assert cd.resample_costs(trace) == {"e": (pytest.approx(0.07), 0.90)}


@pytest.fixture(scope="module")
def toy_found():
    exp = toy.build()
    return exp, cs.search(exp.graph, exp.dataset, exp.loss_fn, threshold=0.95, n=200,
                          features=exp.features)


def test_found_draw_is_an_inline_svg_figure_of_the_search(toy_found):
    exp, found = toy_found
    fig = found.draw()
    assert isinstance(fig, cd.Figure) and fig._repr_svg_() == fig.svg
    assert fig.svg.startswith("<svg") and fig.svg.endswith("</svg>")
    assert fig.svg.count('class="edge kept"') == len(found.kept) == 4
    assert fig.svg.count('class="edge removed"') == len(graph_edges(exp.graph)) - 4
    assert "= a" in fig.svg and "= b" in fig.svg  # A and B compute features a and b
    assert "A: computes a (SameFeature), loss recovered 100.0% with this claim" in fig.svg
    assert found.to_dict()["graph_edges"] == [list(e) for e in graph_edges(exp.graph)]


def test_result_plot_is_the_reports_chart_and_histograms(toy_found, tmp_path):
    exp, _ = toy_found
    r = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=200)
    fig = r.plot(published=0.9)
    svg = fig._repr_svg_()
    assert svg.count('class="chart"') == 1 and svg.count('class="hist"') == 1
    assert "<style>" in svg and f"{100 * r.loss_recovered:.1f}%" in svg
    assert fig.save(tmp_path / "r.svg").read_text() == svg


def test_found_plot_curve_draws_the_search_path_with_the_curves_drawing(toy_found):
    """`found.plot_curve()`: loss recovered by kept edges along the trace, the rejected
    candidates, the threshold and the held-out point, drawn by the code that draws curve.html."""
    import dataclasses

    from causal_scrubbing.searching import curve as cv

    exp, found = toy_found
    pts = found.curve_points()
    assert pts["path"][0] == (len(graph_edges(exp.graph)), 1.0)  # everything kept: 100%
    assert pts["path"][-1][0] == len(found.kept) == 4
    counts = [k for k, _ in pts["path"]]
    assert counts == sorted(counts, reverse=True)  # kept edges only ever go
    assert all(r >= found.threshold for _, r in pts["path"])  # every accepted step passes
    scored = [t for t in found.trace if t["step"] in ("resample", "feature", "top-k")]
    assert len(pts["rejected"]) == sum(not t["accepted"] for t in scored) > 0
    fig = found.plot_curve()
    assert isinstance(fig, cd.Figure) and fig._repr_svg_() == fig.svg
    assert fig.svg.startswith("<svg") and fig.svg.endswith("</svg>")
    assert fig.svg.count("<polyline") == 1  # the path; the rest are points
    assert fig.svg.count("<circle") == len(pts["rejected"]) + 1 + 2  # + held out, + 2 in the legend
    assert "threshold 95%" in fig.svg and "kept edges" in fig.svg
    h = found.heldout
    assert f"held out (n = {h.n}): {100 * h.loss_recovered:.1f}%" in fig.svg
    # with a faithfulness curve: its line and band on the same axes, at its edge counts
    c = cs.faithfulness_curve(exp.graph, exp.dataset, exp.loss_fn, method="search", n=200,
                              threshold=0.95, sizes=(0.2, 0.5, 1.0), n_bootstrap=50)
    both = found.plot_curve(c).svg
    assert both.count("<polyline") == 2 and both.count("<polygon") == 1
    assert f"CPR {c.cpr:.3f}" in both
    assert found.plot_curve(c.to_dict()).svg == both
    # one drawing: curve.html embeds exactly the figure `CurveResult.plot()` returns
    assert c.plot().svg in cv.curve_html([c.to_dict()])
    # steps without a score (a ranked search's ranking) are left out; top-k tries count
    ranked = dataclasses.replace(found, trace=[
        {"step": "rank", "loss_recovered": float("nan"), "accepted": True, "kept": 6},
        {"step": "top-k", "loss_recovered": 1.0, "accepted": True, "kept": 6},
        {"step": "top-k", "loss_recovered": 0.5, "accepted": False, "kept": 2},
        {"step": "start", "loss_recovered": 1.0, "accepted": True, "kept": 4},
        {"step": "note", "loss_recovered": 1.0, "accepted": False, "kept": 4}])
    assert ranked.curve_points() == {"path": [(6, 1.0), (4, 1.0)], "rejected": [(2, 0.5)]}


# ---- a hypothesis over its graph ----------------------------------------------------------------

def test_a_kept_set_claims_exactly_its_effective_edges(toy_found):
    """The tree `build_hypothesis` writes for a kept set claims (reads the reference through)
    exactly the effective kept edges; every other edge reads an other-inputs draw."""
    exp, found = toy_found
    graph = exp.graph
    all_edges = set(graph_edges(graph))
    for kept in ({(e.sender, e.receiver, e.port) for e in found.kept}, all_edges,
                 {("x", "A", "x"), ("A", "out", "resid"), ("C", "out", "resid")}):
        claims = cd.hypothesis_claims(graph, build_hypothesis(graph, kept))
        claimed = {e for e, lanes in claims.edges.items() if any(k == "ds" for _, k in lanes)}
        unclaimed = {e for e, lanes in claims.edges.items() if any(k == "other" for _, k in lanes)}
        assert claimed == effective(graph, kept)
        assert unclaimed == all_edges - claimed and set(claims.edges) == all_edges


def test_hypothesis_drawing_colours_claims_and_names_samplers():
    exp = toy.build()
    svg = cd.hypothesis_svg(exp.graph, exp.hypotheses["correct"])
    assert "A: SameFeature(&#x27;a&#x27;)" in svg and "B: SameFeature(&#x27;b&#x27;)" in svg
    assert svg.count('class="edge kept"') == 4  # x -> A -> out and x -> B -> out
    assert "unclaimed: reads out&#x27;s other inputs" in svg


@pytest.fixture(scope="module")
def loaded():
    """The paren and IOI experiments, built once for the tests below (paren's takes seconds)."""
    return {name: experiments.load(name) for name in ("paren", "ioi")}


def test_paren_hypotheses_draw_over_the_rewritten_graph_one_box_per_component(loaded):
    exp = loaded["paren"]
    for name in ("Ex1b", "Ex4"):
        data = cd.claims_dict(exp.graph, exp.hypotheses[name])
        nodes = {v for e in data["edges"] for v in e[:2]}
        assert nodes == {v for v in exp.search_graph.nodes}  # the split-off parts folded in
        claimed = [e for e in data["edges"] if any(k == "ds" for _, k in e[3])]
        assert len({i for e in claimed for i, k in e[3] if k == "ds"}) >= 3
        svg = cd.claims_svg(data, title=name)
        assert svg is not None and svg.count('class="edge kept"') == len(claimed)
        assert svg.count('class="edge removed"') == len(data["edges"]) - len(claimed)
        raw = cd.hypothesis_claims(exp.graph, exp.hypotheses[name])  # the same claims, unfolded
        assert {i for lanes in raw.edges.values() for i, k in lanes if k == "ds"} == {
            i for e in claimed for i, k in e[3] if k == "ds"}
    # an edge into a per-position part of a2.h1's query takes a2.h1's port q
    assert ["m1", "a2.h1", "q"] in [e[:3] for e in data["edges"]]


def test_a_runs_report_draws_each_hypothesis_over_the_graph():
    run = experiments.run_experiment(toy.build(), n=100)
    data = report.results_dict(run)
    assert all(set(x["circuit"]) == {"names", "samplers", "others", "depths", "edges", "starts"}
               for x in data["experiments"])
    page = report.render_html(jsonable(data))
    assert page.count('class="circuit"') == len(data["experiments"])
    only_a = next(x for x in data["experiments"] if x["name"] == "only_a")["circuit"]
    assert only_a["starts"] == {"out": [0], "A": [1]}


# ---- the search report in a real browser ---------------------------------------------------------

@pytest.fixture(scope="module")
def real_searches(loaded):
    """A cheap edge search (one pass, no features) on the paren and IOI models' own graphs."""
    out = {}
    for name, n in (("paren", 100), ("ioi", 60)):
        exp = loaded[name]
        graph = exp.search_graph or exp.graph
        found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=0.9, n=n, n_bootstrap=100)
        data = found.to_dict()
        data["experiment"] = name
        out[name] = (found, data)
    return out


@pytest.mark.parametrize("name, n_edges", [("paren", 131), ("ioi", 404)])
def test_search_report_draws_the_circuit_in_chromium(browser, real_searches, tmp_path, name, n_edges):  # noqa: F811
    found, data = real_searches[name]
    assert len(data["graph_edges"]) == n_edges
    path = tmp_path / "report.html"
    path.write_text(render_search_html(data), encoding="utf-8")
    errors, shot, page = browser(path)
    assert errors == []
    circuit = page.locator("svg.circuit")
    assert circuit.count() == 1
    png = circuit.screenshot(path=str(tmp_path / f"{name}-circuit.png"))
    fraction, spread = ink(png)
    assert fraction > 0.05 and spread > 20, (fraction, spread)
    assert page.evaluate("document.querySelectorAll('svg.circuit path.edge.kept').length") == len(found.kept)
    assert page.evaluate("document.querySelectorAll('svg.circuit path.edge.removed').length") == \
        n_edges - len(found.kept)
    kept_nodes = sorted({v for e in found.kept for v in (e.sender, e.receiver)})
    labels = label_boxes(page, "svg.circuit g.circuit-node.on text.label")
    assert sorted(t[0] for t in labels) == kept_nodes
    assert overlapping(label_boxes(page, "svg.circuit text")) == []  # no two labels overlap
    assert all(t[3] > 10 and t[4] > 6 for t in labels)  # rendered at a readable size
    page.close()


def test_search_report_shows_the_found_features_on_the_nodes_in_chromium(browser, toy_found, tmp_path):  # noqa: F811
    _, found = toy_found
    path = tmp_path / "report.html"
    path.write_text(render_search_html({**found.to_dict(), "experiment": "toy"}), encoding="utf-8")
    errors, _, page = browser(path)
    assert errors == []
    notes = page.evaluate(
        "Array.from(document.querySelectorAll('svg.circuit text.note')).map(t => {"
        "const r = t.getBoundingClientRect(); return [t.textContent, r.width, r.height]; })")
    assert sorted(t[0] for t in notes) == ["= a", "= b"] and all(t[1] > 10 for t in notes)
    page.close()


def label_boxes(page, selector: str) -> list[list]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('{selector}')).map(t => {{"
        "const r = t.getBoundingClientRect(); return [t.textContent, r.x, r.y, r.width, r.height]; })")


def overlapping(boxes: list[list]) -> list[tuple]:
    return [(a[0], b[0]) for a, b in itertools.combinations(boxes, 2)
            if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]]


@pytest.mark.parametrize("name, hypothesis", [("paren", "Ex4"), ("ioi", "+ finder queries")])
def test_hypotheses_draw_readably_in_chromium(browser, loaded, tmp_path, name, hypothesis):  # noqa: F811
    exp = loaded[name]
    data = cd.claims_dict(exp.graph, exp.hypotheses[hypothesis])
    path = tmp_path / "h.html"
    path.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>'
                    + (cd.claims_svg(data, title=hypothesis) or "") + "</body></html>", encoding="utf-8")
    errors, _, page = browser(path)
    assert errors == []
    texts = label_boxes(page, "svg.circuit g.circuit-node text")  # names and claim notes
    assert overlapping(texts) == []
    notes = [t[0] for t in texts if t[0] not in exp.graph.nodes]
    claims = [f"{n}: {s}" for n, s in zip(data["names"], data["samplers"])]
    assert len(notes) >= 5  # "claim: sampler" (cut short) where claims begin
    assert all(any(c.startswith(t[:12]) for c in claims) for t in notes), notes
    kept = page.evaluate("document.querySelectorAll('svg.circuit path.edge.kept').length")
    assert kept == sum(any(k == "ds" for _, k in e[3]) for e in data["edges"]) > 10
    page.close()


def test_an_older_search_json_draws_its_kept_edges_alone():
    data = {"kept": [{"sender": "x", "receiver": "A", "port": "i"},
                     {"sender": "A", "receiver": "out", "port": "resid"}], "features": {"A": "a"}}
    svg = cd.search_json_svg(data)
    assert svg is not None and svg.count('class="edge kept"') == 2
    assert svg.count('class="edge removed"') == 0 and "= a" in svg
