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


# ---- bad input at the edges: one line, exit status 2, checked before any compute -------------


def _one_error_line(result) -> str:
    """The single `error: ...` line the command printed (and no traceback)."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _no_compute(monkeypatch):
    """Make any scrub fail loudly: the checks under test must come before it."""
    import causal_scrubbing.cli as cli

    def boom(*args, **kwargs):
        raise AssertionError("the run was computed before its bad input was refused")
    monkeypatch.setattr(cli, "run_experiment", boom)


def test_out_that_is_a_file_is_refused_before_compute(tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    path = tmp_path / "existing_file"
    path.write_text("keep me")
    line = _one_error_line(runner.invoke(app, ["run", "toy", "--n", "50", "--out", str(path)]))
    assert str(path) in line and "is a file, not a directory" in line
    assert path.read_text() == "keep me"


def test_out_that_cannot_be_written_is_refused_before_compute(tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in ("/proc/x", str(blocker / "below_a_file")):
        line = _one_error_line(runner.invoke(app, ["run", "toy", "--n", "50", "--out", out]))
        assert f"Cannot write to --out {out}" in line and "choose a directory" in line


def test_existing_run_is_kept_unless_force(tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(app, ["run", "toy", "--n", "50", "--out", str(out), "--quiet"])
    assert first.exit_code == 0, first.output
    before = (out / "results.json").read_text()
    line = _one_error_line(runner.invoke(app, ["run", "toy", "--n", "50", "--seed", "1",
                                               "--out", str(out), "--quiet"]))
    assert str(out) in line and "already holds a run" in line and "--force" in line
    assert (out / "results.json").read_text() == before
    forced = runner.invoke(app, ["run", "toy", "--n", "50", "--seed", "1", "--out", str(out),
                                 "--quiet", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "results.json").read_text())["seed"] == 1
    assert "--force" in runner.invoke(app, ["run", "--help"]).output


def test_failed_run_leaves_no_empty_directory(tmp_path):
    out = tmp_path / "new"
    result = runner.invoke(app, ["run", "toyy", "--n", "50", "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()


def test_write_failure_after_compute_is_one_line(tmp_path, monkeypatch):
    import causal_scrubbing.cli as cli

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cli, "write_results", full_disk)
    result = runner.invoke(app, ["run", "toy", "--n", "50", "--out", str(tmp_path / "o"),
                                 "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "correct" in result.output  # the table was printed before the write failed
    assert "error: Cannot write to" in result.output and "No space left" in result.output


def test_bad_device_is_one_line_before_compute(tmp_path, monkeypatch):
    import torch

    _no_compute(monkeypatch)
    line = _one_error_line(runner.invoke(app, ["run", "toy", "--n", "50", "--device", "gpu",
                                               "--out", str(tmp_path / "a")]))
    assert "'gpu' is not a device" in line and "cuda:N" in line
    assert not (tmp_path / "a").exists()
    line = _one_error_line(runner.invoke(app, ["bench", "--quick", "--device", "gpu"]))
    assert "'gpu' is not a device" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["run", "toy", "--n", "50", "--out", str(tmp_path / "b")],
                    ["bench", "--quick"]):
        line = _one_error_line(runner.invoke(app, [*command, "--device", "cuda"]))
        assert "--device cuda: CUDA is not available" in line and "--device cpu" in line


def test_cuda_index_out_of_range_is_one_line(tmp_path, monkeypatch):
    import torch

    _no_compute(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    line = _one_error_line(runner.invoke(app, ["run", "toy", "--n", "50", "--device", "cuda:3",
                                               "--out", str(tmp_path)]))
    assert "--device cuda:3: this machine has 1 CUDA device (cuda:0); pick one" in line


def test_bench_out_that_cannot_be_written_is_refused(tmp_path):
    line = _one_error_line(runner.invoke(app, ["bench", "--quick", "--out", str(tmp_path)]))
    assert "is a directory" in line
