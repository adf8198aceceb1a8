"""`show`: the hypothesis tree and one reference row's draws, exactly as `scrub` made them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from typer.testing import CliRunner

import causal_scrubbing as cs
from causal_scrubbing.cli import app
from causal_scrubbing.core.draws import generator, reference_rows
from causal_scrubbing.experiments import toy
from causal_scrubbing.show import explain, explain_experiment
from conftest import examples
from test_engine_vs_reference import cases, dataset

runner = CliRunner()


def test_draws_keep_the_claimed_features():
    exp = toy.build()
    data = exp.dataset
    for row in range(0, 40, 7):
        e = explain(exp.graph, exp.hypotheses["correct"], data, row=row, n=300, seed=4)
        root, a, b, other = (e.draw(k) for k in ("out", "A", "B", "other[out]"))
        assert root.parent == "reference" and root.row == root.parent_row == e.ref_row
        assert a.parent == b.parent == "out" and a.parent_row == b.parent_row == e.ref_row
        assert data["a"][a.row] == data["a"][e.ref_row] and a.condition == f"a = {int(data['a'][e.ref_row])}"
        assert data["b"][b.row] == data["b"][e.ref_row] and b.condition == f"b = {int(data['b'][e.ref_row])}"
        assert other.condition == "nothing" and other.parent_row == root.row
        lanes = {ln.label: ln for ln in e.lanes}
        assert lanes["ds[A]"].row == a.row and lanes["ds[B]"].row == b.row
        assert lanes["other[out]"].row == other.row
        assert [str(p) for p in lanes["other[out]"].prefixes] == ["out.resid <- C"]


def test_rows_shown_are_the_rows_scrub_used():
    """Recompute each reference row's scrubbed loss by hand from the lanes shown: it is scrub's."""
    exp = toy.build()
    data, n, seed = exp.dataset, 200, 7
    for key in ("correct", "only_a", "y_jointly"):
        result = cs.scrub(exp.graph, exp.hypotheses[key], data, exp.loss_fn, n=n, seed=seed)
        for row in (0, 1, 57, 199):
            e = explain(exp.graph, exp.hypotheses[key], data, row=row, n=n, seed=seed)
            assert e.ref_row == int(result.per_example["ref_index"][row])
            x_of = {p.nodes[1]: data["x"][ln.row] for ln in e.lanes for p in ln.prefixes}  # A, B, C
            logit = 6 * x_of["A"][0] - 4.5 + 6 * x_of["B"][1] - 4.5 + 0 * x_of["C"][2]
            loss = F.binary_cross_entropy_with_logits(logit, data["y"][e.ref_row])
            assert torch.isclose(loss, result.per_example["scrubbed"][row], rtol=1e-5, atol=1e-7)


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_every_path_reads_the_row_of_the_lane_whose_prefix_it_starts_with(case):
    """On random graphs and hypotheses, against the literal path-by-path assignment."""
    graph, root, seed, _ = case
    ds = dataset(seed)
    corr = cs.check(graph, root)
    n, row = 12, seed % 12
    e = explain(graph, root, ds, row=row, n=n, seed=seed, max_prefixes=10**9)
    sample = cs.draw(corr, ds, reference_rows(len(ds), n, seed), generator(seed, "hypothesis"))
    paths = list(graph.paths())
    assert sum(ln.n_paths for ln in e.lanes) == len(paths) == graph.count_paths()
    covered = {ln.label: 0 for ln in e.lanes}
    for path in paths:
        owners = [ln for ln in e.lanes if any(p.covers(path) for p in ln.prefixes)]
        assert len(owners) == 1, (str(path), [ln.label for ln in owners])
        assert owners[0].row == int(cs.reference.dataset_for_path(corr, sample, path)[row])
        covered[owners[0].label] += 1
    assert covered == {ln.label: ln.n_paths for ln in e.lanes}
    assert not any(ln.more_prefixes for ln in e.lanes)
    for d in e.draws:  # SameFeature draws keep the conditioning value
        if d.condition.startswith(("f0 = ", "f1 = ")):
            f = d.condition[:2]
            assert ds[f][d.row] == ds[f][d.parent_row]
        if d.condition == "the same row":
            assert d.row == d.parent_row


def test_prefixes_are_capped_and_counted_on_a_transformer():
    from causal_scrubbing.models import Config, Transformer

    model = Transformer(Config(n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=8, d_vocab=5,
                               n_ctx=6, head="lm"))
    graph = model.graph()
    tokens = torch.randint(0, 5, (50, 6), generator=torch.Generator().manual_seed(0))
    ds = cs.Dataset({"tokens": tokens, "first": tokens[:, 0]})
    root = cs.InterpNode("out", children=[
        cs.InterpNode("head", cs.SameFeature("first"), paths=cs.through("a1.h0"))])
    e = explain(graph, root, ds, row=3, max_prefixes=2)
    assert sorted(ln.label for ln in e.lanes) == ["ds[head]", "other[out]"]
    assert sum(ln.n_paths for ln in e.lanes) == graph.count_paths()
    for ln in e.lanes:
        assert 1 <= len(ln.prefixes) <= 2
    head = next(ln for ln in e.lanes if ln.label == "ds[head]")
    assert all("a1.h0" in p.nodes for p in head.prefixes)
    assert head.row == e.draw("head").row and e.ref_row == 3  # n=None: row i is dataset row i
    text = str(e)
    assert "ds[head]" in text and "first = " in text and "tokens = [" in text


def test_explain_experiment_defaults_to_the_experiments_n():
    exp = toy.build()
    (e,) = explain_experiment(exp, "only_a", row=9, seed=2)
    assert e.n == len(exp.dataset) and e.ref_row == 9 and e.description == exp.descriptions["only_a"]


def test_show_command_prints_trees_draws_and_lanes():
    result = runner.invoke(app, ["show", "toy", "--hypothesis", "y_jointly", "--row", "5",
                                 "--seed", "1", "--n", "300"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("toy: ")
    assert "AB  SameFeature('y')  paths: through('A') | through('B')" in out
    assert "reference row 5 of 300 (seed 1)" in out
    assert "ds[AB]" in out and "out.resid <- A | out.resid <- B" in out and "y = " in out
    assert "hypothesis 'correct'" not in out


def test_show_all_hypotheses():
    result = runner.invoke(app, ["show", "toy"])
    assert result.exit_code == 0, result.output
    for key in toy.hypotheses():
        assert f"hypothesis {key!r}" in result.output


def test_show_errors_are_clear():
    bad_id = runner.invoke(app, ["show", "toy", "--hypothesis", "only-a"])
    assert bad_id.exit_code == 2 and "Did you mean 'only_a'" in bad_id.output
    bad_row = runner.invoke(app, ["show", "toy", "--row", "10", "--n", "10"])
    assert bad_row.exit_code == 2 and "Reference row 10 does not exist" in bad_row.output
    bad_n = runner.invoke(app, ["show", "toy", "--n", "0"])
    assert bad_n.exit_code == 2 and "--n must be a positive" in bad_n.output


def test_format_inputs_renders_each_row_used():
    exp = toy.build()
    bits = lambda ds, r: "bits " + "".join(str(int(v)) for v in ds["x"][r].tolist())  # noqa: E731
    e = explain(exp.graph, exp.hypotheses["only_a"], exp.dataset, row=3, n=100, seed=0,
                format_inputs=bits)
    for r, text in e.rows.items():
        assert text == bits(exp.dataset, r)
    # the reference line: the formatted inputs, then the fields no input reads
    assert e.ref_fields.startswith(bits(exp.dataset, e.ref_row) + ", ")
    assert "x = " not in e.ref_fields and "y = " in e.ref_fields
    assert "x = [" in explain(exp.graph, exp.hypotheses["only_a"], exp.dataset, row=3, n=100,
                              seed=0).ref_fields  # without it, the raw values


def test_show_paren_prints_parentheses():
    from causal_scrubbing.experiments import paren
    from causal_scrubbing.experiments.paren import data as paren_data

    result = runner.invoke(app, ["show", "paren", "--hypothesis", "Ex1a", "--n", "20",
                                 "--row", "3"])
    assert result.exit_code == 0, result.output
    assert "tokens = [" not in result.output
    ds = paren.build().dataset
    (e,) = explain_experiment(paren.build(), "Ex1a", row=3, n=20)
    ref_line = next(line for line in result.output.splitlines() if "is dataset row" in line)
    assert ref_line.endswith(f"is dataset row {e.ref_row}: {paren_data.to_string(ds['tokens'][e.ref_row])}")
    table = result.output.split("inputs on each row used")[1]
    for r in e.rows:
        text = paren_data.to_string(ds["tokens"][r])
        assert set(text) <= set("()") and f"{r}" in table and text in table


def test_induction_rows_show_decoded_text():
    pytest.importorskip("tokenizers")
    from causal_scrubbing.experiments.induction import data as ind_data
    from causal_scrubbing.experiments.induction import format_inputs

    verse = "And God said, Let there be light: and there was light."
    tokens = ind_data.tokenizer().encode(verse).ids
    ds = cs.Dataset({"tokens": torch.tensor([tokens])})
    assert format_inputs(ds, 0) == f'"{verse}" ({len(tokens)} tokens)'
    long = cs.Dataset({"tokens": torch.tensor([tokens * 6])})
    text = format_inputs(long, 0)
    assert " ... " in text and len(text) < 100 and text.startswith('"And God said')
