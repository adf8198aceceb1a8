"""The `causal-scrub` command end to end, on the toy experiment."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from causal_scrubbing import report
from causal_scrubbing.cli import app

runner = CliRunner()


def test_experiments_lists_toy():
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 0
    assert result.output.startswith("toy")


def test_run_toy_writes_table_json_and_report(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "toy", "--n", "600", "--seed", "3", "--out", str(out),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("correct", "only_a", "y_separately", "by hand", "95% CI"):
        assert name in result.output
    data = json.loads((out / "results.json").read_text())
    assert set(data) >= {"model_loss", "baseline_loss", "experiments"}
    names = [x["name"] for x in data["experiments"]]
    assert names == ["correct", "only_a", "only_b", "y_jointly", "y_separately"]
    for x in data["experiments"]:
        assert {"name", "scrubbed_loss", "loss_recovered", "ci_low", "ci_high", "n", "seed"} <= set(x)
        assert x["n"] == 600 and x["seed"] == 3
        assert x["ci_low"] <= x["loss_recovered"] <= x["ci_high"] or x["ci_low"] == x["ci_high"]
        assert sum(x["loss_histogram"]["counts"]) == 600
        assert set(x["subsets"]) == {"a=b=1", "one bit", "a=b=0"}
    correct = data["experiments"][0]
    assert correct["loss_recovered"] == 1.0
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "only_a" in html and "</html>" in html


def test_unknown_experiment_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", "toyy", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "Unknown experiment 'toyy'" in result.output and "Did you mean 'toy'" in result.output


def test_bad_n_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", "toy", "--n", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--n must be a positive" in result.output


def test_report_escapes_all_text():
    data = {
        "experiment": "<b>x</b>", "description": "<script>alert(1)</script>", "model_loss": 0.1,
        "baseline_loss": 1.0, "n": 5, "seed": 0, "versions": {"v": "<i>"},
        "published_label": "<u>pub</u>",
        "experiments": [{
            "name": "<img src=x onerror=alert(1)>", "description": "&", "scrubbed_loss": 0.5,
            "loss_recovered": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 5, "published": None,
            "subsets": {"<s>": {"n": 2, "scrubbed_loss": 0.1, "model_loss": 0.1,
                                "loss_recovered": 1.0}},
            "hypothesis": "<root>",
        }],
    }
    page = report.render_html(data)
    for raw in ("<b>x", "<script>", "<img", "<i>", "<u>", "<s>", "<root>"):
        assert raw not in page
    assert "&lt;script&gt;" in page


def test_run_paren_end_to_end(tmp_path):
    """The bundled paren experiment: Ex0a recovers 100% and Ex0b 0% by construction."""
    out = tmp_path / "paren"
    result = runner.invoke(app, ["run", "paren", "--n", "200", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    names = [x["name"] for x in data["experiments"]]
    assert names == ["Ex0a", "Ex0b", "Ex1a", "Ex1b", "Ex2a", "Ex2b", "Ex3a", "Ex3b", "Ex4"]
    by_name = {x["name"]: x for x in data["experiments"]}
    assert by_name["Ex0a"]["loss_recovered"] == 1.0
    assert by_name["Ex0b"]["loss_recovered"] == 0.0
    assert data["baseline_loss"] > 1.0 > 0.01 > data["model_loss"]
    for x in data["experiments"]:
        assert set(x["subsets"]) == {"balanced", "count only", "horizon only", "both"}
        assert sum(s["n"] for s in x["subsets"].values()) == 200
        assert x["published"] is not None
    assert 0.3 < by_name["Ex1b"]["loss_recovered"] < 1.0
    assert "Ex4" in (out / "report.html").read_text()
