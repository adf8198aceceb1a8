"""Rigour audits: planted failures are flagged, true hypotheses are not.

Each planted scenario is a toy graph with a hypothesis that passes (or nearly passes) on
average for a wrong reason, known by construction: cancellation (half the rows improve what the
other half lose), a vacuous claim (a node the output ignores), a planted 5% subset on which
the hypothesis breaks, a harmful component (recovery above 100%, a negative part). The audit at
default settings must flag each one, with the right kind, on 10 seeds out of 10; and it must
flag nothing at all on the true hypotheses of the same graphs over the same 10 seeds.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import causal_scrubbing as cs
from causal_scrubbing.audit import KINDS
from causal_scrubbing.experiments import Experiment, toy

SEEDS = range(10)
N = 2000  # reference rows per scrub


def _bce(out: torch.Tensor, ref: cs.Dataset) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, ref["y"], reduction="none")


def _mse(out: torch.Tensor, ref: cs.Dataset) -> torch.Tensor:
    return (out - ref["y"]) ** 2


def _experiment(name: str, graph: cs.Graph, ds: cs.Dataset, loss_fn, hypotheses: dict,
                features: dict | None = None) -> Experiment:
    return Experiment(name=name, description=name, graph=graph, dataset=ds, loss_fn=loss_fn,
                      hypotheses=hypotheses, features=features or {})


def _audit(exp: Experiment, seed: int, **kwargs) -> tuple[dict[str, cs.ScrubResult], cs.Audit]:
    results = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=N, seed=seed,
                            n_bootstrap=200)
    return results, cs.audit(results, exp, **kwargs)


# ---- planted scenarios --------------------------------------------------------------------------


def cancelling(seed: int) -> Experiment:
    """out = A + E with A = a (the label) and E = 0.75 e, e uniform in {-1, 0, 1}: E is pure
    error. "E ignored" resamples E: rows with e = 0 lose, rows with e = +-1 gain, and in
    expectation exactly as much: 100% recovered, 25 points of it cancelling."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (4000,), generator=gen)
    e = torch.randint(-1, 2, (4000,), generator=gen)
    x = torch.stack([a, e], 1).float()
    ds = cs.Dataset({"x": x, "a": a, "e": e, "y": a.float()})
    g = cs.Graph([cs.Input("x"), cs.Node("A", lambda x: x[:, 0], x="x"),
                  cs.Node("E", lambda x: 0.75 * x[:, 1], x="x"),
                  cs.Node("out", lambda r: r, r=["A", "E"])], output="out")
    h = {"E ignored": cs.InterpNode("out", children=[
        cs.InterpNode("A", cs.SameFeature("a"), paths=cs.through("A"))])}
    return _experiment("cancelling", g, ds, _mse, h, {"a": "a", "e": "e"})


def vacuous(seed: int) -> Experiment:
    """The toy AND gate, whose node C = 0 * c is ignored by the output; "C reads c" claims it
    anyway, beside the true claims about A and B."""
    del seed
    exp = toy.build()
    claim = lambda node, f: cs.InterpNode(node, cs.SameFeature(f), paths=cs.through(node))  # noqa: E731
    h = {"C reads c": cs.InterpNode("out", children=[claim("A", "a"), claim("B", "b"), claim("C", "c")])}
    return _experiment("vacuous", exp.graph, exp.dataset, exp.loss_fn, h, dict(exp.features))


def planted_subset(seed: int) -> Experiment:
    """A = 6a - 3 (a logit for y = a); z in 0..19 labels 5% slices. "A reads f" claims A
    computes f = a, except f = 0 on the slice z = 7: right on 95% of rows, wrong on half the
    slice. "A reads a" is the true hypothesis."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (8000,), generator=gen)
    z = torch.randint(0, 20, (8000,), generator=gen)
    f = torch.where(z == 7, torch.zeros_like(a), a)
    ds = cs.Dataset({"x": torch.stack([a, z], 1).float(), "a": a, "z": z, "f": f, "y": a.float()})
    g = cs.Graph([cs.Input("x"), cs.Node("A", lambda x: 6 * x[:, 0] - 3, x="x"),
                  cs.Node("out", lambda r: r, r="A")], output="out")
    claim = lambda feat: cs.InterpNode("out", children=[  # noqa: E731
        cs.InterpNode("A", cs.SameFeature(feat), paths=cs.through("A"))])
    return _experiment("subset", g, ds, _bce, {"A reads f": claim("f"), "A reads a": claim("a")},
                       {"a": "a", "z": "z"})


def harmful(seed: int) -> Experiment:
    """out = A + H, A = 6a - 3 and H = -2 (2a - 1), which shrinks the margin: the model is
    worse than A alone. "H ignored" resamples H (recovery above 100%); "H reads a" claims it,
    truly, but weakening that claim improves the loss (a negative part)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (4000,), generator=gen)
    ds = cs.Dataset({"x": a[:, None].float(), "a": a, "y": a.float()})
    g = cs.Graph([cs.Input("x"), cs.Node("A", lambda x: 6 * x[:, 0] - 3, x="x"),
                  cs.Node("H", lambda x: -2 * (2 * x[:, 0] - 1), x="x"),
                  cs.Node("out", lambda r: r, r=["A", "H"])], output="out")
    claim = lambda node: cs.InterpNode(node, cs.SameFeature("a"), paths=cs.through(node))  # noqa: E731
    h = {"H ignored": cs.InterpNode("out", children=[claim("A")]),
         "H reads a": cs.InterpNode("out", children=[claim("A"), claim("H")])}
    return _experiment("harmful", g, ds, _bce, h, {"a": "a"})


def kinds(a: cs.Audit, hypothesis: str) -> set[str]:
    return {f.kind for f in a.flagged(hypothesis=hypothesis)}


# ---- planted failures are flagged, at default settings, on every seed ---------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_cancellation_is_flagged(seed):
    results, a = _audit(cancelling(seed), seed)
    assert 0.9 < results["E ignored"].loss_recovered < 1.1  # it passes on average
    assert "cancellation" in kinds(a, "E ignored"), a
    c = a.flagged("cancellation")[0].evidence
    assert c["hidden"] > 0.15 and c["share_better"] > 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_vacuous_claim_is_flagged(seed):
    results, a = _audit(vacuous(seed), seed)
    assert results["C reads c"].loss_recovered == pytest.approx(1.0)  # it passes
    flags = a.flagged("vacuous_claim")
    assert [f.evidence["node"] for f in flags] == ["C"], a  # C, and not the claims about A and B
    assert a.checks["C reads c"]["specificity"]["A"]["weakened"]["cost"] > 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_subset_is_flagged(seed):
    results, a = _audit(planted_subset(seed), seed)
    assert results["A reads f"].loss_recovered > 0.85  # it passes on average
    flags = a.flagged("adversarial_subset", "A reads f")
    assert len(flags) == 1, a
    ev = flags[0].evidence
    assert ev["definition"].get("z") == "z = 7", ev  # the planted slice, alone or with a value of a
    assert ev["ci_high"] < results["A reads f"].loss_recovered - 0.1
    assert ev["size"] >= ev["min_size"] and ev["subsets_tried"] > 20
    for key in ("model_loss", "baseline_loss", "ci_low", "correction"):
        assert key in ev


@pytest.mark.parametrize("seed", SEEDS)
def test_harmful_component_is_flagged(seed):
    results, a = _audit(harmful(seed), seed, negative_parts=True)
    assert results["H ignored"].loss_recovered > 1.0
    assert "over_recovery" in kinds(a, "H ignored"), a
    negative = a.flagged("negative_part", "H reads a")
    assert [f.evidence["node"] for f in negative] == ["H"], a
    # claims weakened and strengthened (A in both, H in one), and the two roots' resampled parts
    assert a.settings["variants_tried"] == {"weaken": 3, "strengthen": 3, "restore": 2}
    assert negative[0].evidence["parts_tried"] == 3


# ---- true hypotheses: nothing flagged ---------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_true_hypotheses_flag_nothing(seed):
    exp = toy.build()
    truths = [
        _experiment("toy", exp.graph, exp.dataset, exp.loss_fn,
                    {"correct": exp.hypotheses["correct"]}, dict(exp.features)),
        _experiment("subset", planted_subset(seed).graph, planted_subset(seed).dataset, _bce,
                    {"A reads a": planted_subset(seed).hypotheses["A reads a"]}, {"a": "a", "z": "z"}),
    ]
    for truth in truths:
        results, a = _audit(truth, seed, negative_parts=True)
        assert all(r.loss_recovered == pytest.approx(1.0) for r in results.values())
        assert a.findings == [], a
        assert a.scrubs > 0  # the specificity and negative-part scrubs ran


# ---- the API around it ----------------------------------------------------------------------------


def test_audit_json_shape_and_counts():
    exp = planted_subset(0)
    _, a = _audit(exp, 0)
    data = json.loads(json.dumps(a.to_dict()))
    assert set(data) == {"findings", "checks", "settings", "scrubs"}
    assert a.to_dict(timing=True)["seconds"] == a.seconds > 0
    for f in data["findings"]:
        assert set(f) == {"hypothesis", "kind", "severity", "evidence"}
        assert f["kind"] in KINDS and f["severity"] in ("warning", "high")
    # one claim per hypothesis: weakened and strengthened
    assert a.scrubs == 4 and a.checks["A reads a"]["variants_tried"] == 2


def test_budget_and_loss_only_audit():
    exp = vacuous(0)
    results = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=500)
    a = cs.audit(results, exp, max_scrubs=2)
    assert a.scrubs == 2 and any("left out for the budget" in s for s in a.settings["skipped"])
    bare = cs.audit(results["C reads c"])  # no experiment: only the checks on losses run
    assert bare.scrubs == 0 and "cancellation" in bare.checks["C reads c"]
    assert any("specificity" in s for s in bare.settings["skipped"])


def test_compare_is_paired():
    exp = toy.build()
    rs = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=1000, seed=3)
    c = cs.compare(rs["correct"], rs["y_separately"])
    assert c.significant and c.ci[0] < c.difference < c.ci[1]
    assert c.difference == pytest.approx(rs["correct"].loss_recovered - rs["y_separately"].loss_recovered)
    same = cs.compare(rs["correct"], rs["correct"])
    assert same.difference == 0 and not same.significant
    other = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=1000, seed=4)
    with pytest.raises(cs.ScrubError, match="same reference rows"):
        cs.compare(rs["correct"], other)


def test_bad_input():
    exp = toy.build()
    r = cs.scrub(exp.graph, exp.hypotheses["correct"], exp.dataset, exp.loss_fn, n=100)
    with pytest.raises(cs.ScrubError, match="alpha"):
        cs.audit(r, alpha=2)
    with pytest.raises(cs.ScrubError, match="max_scrubs"):
        cs.audit(r, max_scrubs=-1)
    with pytest.raises(cs.ScrubError, match="ScrubResult"):
        cs.audit([r])  # type: ignore[arg-type]
    with pytest.raises(cs.ScrubError, match="kinds are"):
        cs.audit(r).flagged("cancelation")


# ---- the command line and the report --------------------------------------------------------------


def test_cli_run_audits_and_audit_dir_reproduces(tmp_path):
    from typer.testing import CliRunner

    from causal_scrubbing.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "toy", "--n", "600", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "audit: 2 findings" in result.output  # only_a and only_b fail on a subset
    first = json.loads((out / "audit.json").read_text())
    assert {f["kind"] for f in first["findings"]} == {"adversarial_subset"}
    assert json.loads((out / "results.json").read_text())["audit"]["findings"] == first["findings"]
    assert '<section id="audit">' in (out / "report.html").read_text()
    # from the saved losses, then by scrubbing again: the same findings
    for _ in range(2):
        result = runner.invoke(app, ["audit", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads((out / "audit.json").read_text())["findings"] == first["findings"]
        (out / "audit_losses.safetensors").unlink(missing_ok=True)
    result = runner.invoke(app, ["audit", str(out), "--negative-parts"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "audit.json").read_text())["scrubs"] == 19  # 7 claims x 2, and 5 resampled parts
    quiet = runner.invoke(app, ["run", "toy", "--n", "200", "--out", str(tmp_path / "q"), "--quiet",
                                "--no-audit"])
    assert quiet.exit_code == 0 and not (tmp_path / "q" / "audit.json").exists()
    missing = runner.invoke(app, ["audit", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "results.json does not exist" in missing.output
