"""The HTML report: every section, its SVG drawings, escaping, `causal-scrub report`, and a real browser.

The browser tests load the page in headless Chromium (Debian's `chromium`, driven through the
`playwright` package, which never downloads a browser of its own here) and fail on any console
error or uncaught exception, and on a blank screenshot. Without a browser they are skipped with
the reason; with CAUSAL_SCRUB_REQUIRE_BROWSER=1 (set by `.ci/run`) a missing browser fails them.
"""

from __future__ import annotations

import copy
import html
import io
import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from causal_scrubbing import experiments, report
from causal_scrubbing.cli import app
from causal_scrubbing.core.results import jsonable

CHROMIUM = Path(os.environ.get("CAUSAL_SCRUB_CHROMIUM", "/usr/bin/chromium"))
REQUIRE_BROWSER = os.environ.get("CAUSAL_SCRUB_REQUIRE_BROWSER") == "1"
CHROMIUM_FLAGS = [  # without the networking ones it waits on the network it does not have
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = "<script>alert('x')</script>"

runner = CliRunner()


@pytest.fixture(scope="module")
def run():
    return experiments.run_experiment(experiments.load("toy"), n=300, seed=1)


@pytest.fixture(scope="module")
def data(run):
    return jsonable(report.results_dict(run))


@pytest.fixture
def hostile(data):
    """The toy results with markup in every piece of text a user or an experiment controls."""
    bad = copy.deepcopy(data)
    bad["experiment"] = bad["description"] = bad["published_label"] = HOSTILE
    bad["settings"]["device"] = HOSTILE
    bad["versions"]["causal_scrubbing"] = HOSTILE
    x = bad["experiments"][0]
    x["name"], x["description"], x["hypothesis"] = HOSTILE, '" onmouseover="alert(1)', HOSTILE
    x["subsets"] = {HOSTILE: next(iter(x["subsets"].values()))}
    x["tree"]["name"] = "<img src=x onerror=alert(1)>"
    x["tree"]["sampler"] = x["tree"]["children"][0]["paths"] = HOSTILE
    return bad


def count_nodes(tree: dict) -> int:
    return 1 + sum(count_nodes(c) for c in tree["children"])


# ---- results.json ------------------------------------------------------------------------------

def test_results_json_carries_trees_histograms_and_settings(run, data):
    assert {"experiment", "model_loss", "baseline_loss", "n", "seed", "versions", "settings",
            "experiments"} <= set(data)
    assert data["settings"]["device"] == "cpu" and data["settings"]["dataset_size"] == 4000
    edges = data["experiments"][0]["loss_histogram"]["edges"]
    for x in data["experiments"]:
        assert {"name", "scrubbed_loss", "loss_recovered", "ci_low", "ci_high", "n", "seed",
                "published", "subsets", "loss_histogram", "hypothesis"} <= set(x)  # the old keys
        for key in ("loss_histogram", "model_loss_histogram", "baseline_loss_histogram"):
            assert x[key]["edges"] == edges  # one set of bins, so the three compare directly
            assert sum(x[key]["counts"]) == 300
        root = experiments.load("toy").hypotheses[x["name"]]
        assert x["tree"]["name"] == root.name and x["tree"]["paths"] == "everything()"
        assert count_nodes(x["tree"]) == len(root.walk())
        for child, node in zip(x["tree"]["children"], root.children, strict=True):
            assert child == {"name": node.name, "sampler": node.sampler.describe(),
                             "paths": str(node.paths), "other": node.other.describe(), "children": []}
    assert data["experiments"][0]["model_loss_histogram"] != data["experiments"][0]["baseline_loss_histogram"]


# ---- the page ----------------------------------------------------------------------------------

def test_every_section_is_present(data):
    page = report.render_html(data)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for section in ("results", "subsets", "distributions", "hypotheses", "settings"):
        assert page.count(f'<section id="{section}">') == 1
        assert f'<a href="#{section}">' in page
    assert page.count("<table") == 4  # results, subsets: recovered and losses, settings
    for x in data["experiments"]:
        assert f"<b>{x['name']}</b>" in page
    for text in ("model loss", "baseline loss", "reference rows", "seed", "device", "by hand",
                 "version of torch", "memory_mb", "Loss recovered by subset"):
        assert text in page
    for subset in data["experiments"][0]["subsets"]:
        assert f"<th>{subset}<br>" in page


def test_svg_drawings_one_chart_then_a_histogram_and_a_tree_per_hypothesis(data):
    page = report.render_html(data)
    n = len(data["experiments"])
    assert page.count("<svg") == page.count("</svg>") == 1 + 3 * n
    assert page.count('class="circuit"') == n  # each hypothesis' claims over the graph
    assert page.count('<svg class="chart"') == 1
    assert page.count('<svg class="hist"') == page.count('<svg class="tree"') == n
    chart = re.search(r'<svg class="chart".*?</svg>', page, flags=re.S).group(0)
    assert chart.count("<circle") == n + 1  # one per hypothesis and one in the legend
    assert chart.count('class="published"') == n + 1  # the toy's by-hand numbers, and the legend
    assert page.count('class="outline model"') == page.count('class="outline baseline"') == n
    nodes = sum(count_nodes(x["tree"]) for x in data["experiments"])
    assert page.count('<g class="node ') == nodes
    assert page.count('class="edge"') == nodes - n


def test_all_text_is_escaped(hostile):
    page = report.render_html(hostile)
    assert "<script" not in page and "<img" not in page and 'onmouseover="' not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&quot; onmouseover=&quot;alert(1)" in page


def test_results_written_by_an_older_version_still_render(data):
    old = copy.deepcopy(data)
    del old["settings"]
    for x in old["experiments"]:
        for key in ("tree", "model_loss_histogram", "baseline_loss_histogram"):
            del x[key]
    page = report.render_html(old)
    n = len(old["experiments"])
    assert page.count('<svg class="hist"') == n and page.count('<svg class="tree"') == 0
    assert page.count("<pre>") == n and "paths: through(&#x27;A&#x27;)" in page
    assert page.count('class="outline ') == 0


def test_chart_axis_covers_values_past_0_and_100_percent():
    rows = [{"name": "worse", "loss_recovered": -0.3, "ci_low": -0.45, "ci_high": -0.1, "published": None},
            {"name": "better", "loss_recovered": 1.2, "ci_low": 1.1, "ci_high": 1.3, "published": 0.9},
            {"name": "nan", "loss_recovered": None, "ci_low": None, "ci_high": None, "published": None}]
    svg = report.recovered_chart_svg(rows)
    ticks = [int(t) for t in re.findall(r'class="tick" text-anchor="middle">(-?\d+)%<', svg)]
    assert min(ticks) <= -40 and max(ticks) >= 120 and 0 in ticks and 100 in ticks
    xs = [float(v) for v in re.findall(r'<circle cx="([\d.]+)"', svg)][1:]  # after the legend's
    assert len(xs) == 2 and xs[0] < xs[1]
    assert "n/a" in svg and svg.count('class="published"') == 2


def test_tree_boxes_stack_without_overlap_and_long_claims_wrap():
    long_paths = " | ".join(f"through('a1.h0', excluding=['a2.h1', 'm1']).then('a1.h0.q@{i}')"
                            for i in range(20))
    leaf = lambda name: {"name": name, "sampler": "Exact()", "paths": long_paths,  # noqa: E731
                         "other": "Uniform()", "children": []}
    tree = {"name": "root", "sampler": "Exact()", "paths": "everything()", "other": "Uniform()",
            "children": [{**leaf("mid"), "children": [leaf("a"), leaf("b")]}, leaf("c")]}
    svg = report.tree_svg(tree, wrap=60, max_path_lines=5)
    boxes = [tuple(float(v) for v in m) for m in
             re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)]
    assert len(boxes) == 5
    assert boxes[0][0] < boxes[1][0] < boxes[2][0] == boxes[3][0] and boxes[4][0] == boxes[1][0]
    for (_, y0, _, h0), (_, y1, _, _) in zip(boxes, boxes[1:]):
        assert y1 >= y0 + h0  # depth-first, one under the other
    lines = [html.unescape(t) for t in re.findall(r'<text [^>]* class="paths">(.*?)</text>', svg)]
    assert len(lines) == 1 + 4 * 5 and max(len(line) for line in lines) <= 60
    assert lines[1:6] == ["paths: through('a1.h0', excluding=['a2.h1',",
                          "         'm1']).then('a1.h0.q@0')",
                          "     | through('a1.h0', excluding=['a2.h1',",
                          "         'm1']).then('a1.h0.q@1')",
                          "  … 36 more lines"]  # 20 members of 2 lines each; all in the tooltip
    assert svg.count("<title>") == 6 and svg.count("q@19&#x27;)") == 4
    assert svg.count('class="edge"') == 4


def test_histogram_draws_the_three_distributions():
    edges = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    svg = report.histogram_svg({"scrubbed": {"edges": edges, "counts": [5, 0, 0, 5]},
                                "model": {"edges": edges, "counts": [10, 0, 0, 0]},
                                "baseline": {"edges": edges, "counts": [0, 0, 0, 10]}}, "bimodal")
    assert svg.count('class="bar"') == 2  # the two humps of a cancelling hypothesis
    assert svg.count('class="outline model"') == svg.count('class="outline baseline"') == 1
    assert [t for t in re.findall(r'text-anchor="middle">([\d.e-]+)<', svg)] == [
        "0.0001", "0.001", "0.01", "0.1", "1"]


# ---- causal-scrub report DIR -------------------------------------------------------------------

def test_report_command_rebuilds_the_page_from_results_json(run, tmp_path):
    json_path, html_path = report.write_results(run, tmp_path)
    written = html_path.read_text()
    html_path.unlink()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert str(html_path) in result.output
    assert html_path.read_text() == written == report.render_html(json.loads(json_path.read_text()))


@pytest.mark.parametrize("content, message", [
    (None, "results.json does not exist"),
    ("{not json", "is not valid JSON"),
    ('{"experiments": []}', "is JSON but not the results of a run"),
    ("[1, 2]", "is JSON but not the results of a run"),
])
def test_report_command_explains_a_missing_or_invalid_file(tmp_path, content, message):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and "causal-scrub run NAME --out DIR" in result.output
    assert not (tmp_path / "report.html").exists()


# ---- in a real browser -------------------------------------------------------------------------

def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (install Debian's `chromium` package)"
    try:
        import PIL  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile; `load(path)` -> (console errors, screenshot PNG)."""
    missing = _browser_missing()
    if missing:
        if REQUIRE_BROWSER:
            pytest.fail(f"CAUSAL_SCRUB_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser test skipped: {missing}; CAUSAL_SCRUB_REQUIRE_BROWSER=1 makes this a failure")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1200, "height": 900})
        context.set_default_timeout(30_000)

        def load(path: Path):
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}")
                    if msg.type in ("error", "assert") else None)
            page.on("pageerror", lambda err: errors.append(f"uncaught: {err}"))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto(path.resolve().as_uri(), wait_until="load")
            shot = page.screenshot()
            return errors, shot, page

        yield load
        context.close()


def ink(png: bytes) -> tuple[float, float]:
    """(fraction of pixels that are not near-white, standard deviation of the grey levels)."""
    from PIL import Image, ImageStat

    grey = Image.open(io.BytesIO(png)).convert("L")
    hist = grey.histogram()
    return 1 - sum(hist[240:]) / sum(hist), ImageStat.Stat(grey).stddev[0]


def test_report_renders_in_chromium_with_no_console_errors(browser, hostile, tmp_path):
    path = tmp_path / "report.html"
    path.write_text(report.render_html(hostile), encoding="utf-8")
    errors, shot, page = browser(path)
    assert errors == []
    fraction, spread = ink(shot)
    assert fraction > 0.05 and spread > 20, (fraction, spread)
    n = len(hostile["experiments"])
    assert page.evaluate("document.querySelectorAll('svg').length") == 1 + 3 * n
    assert page.evaluate("document.scripts.length") == 0  # the hostile names stayed text
    chart = page.evaluate("(() => { const r = document.querySelector('svg.chart')"
                          ".getBoundingClientRect(); return [r.width, r.height]; })()")
    assert chart[0] > 500 and chart[1] > 100
    page.close()


def test_the_browser_check_catches_script_errors(browser, tmp_path):
    """The harness itself: a broken page must produce errors, or the test above proves nothing."""
    path = tmp_path / "broken.html"
    path.write_text("<!DOCTYPE html><html><body><p>hello</p><script>console.error('logged');"
                    "undefinedFunction();</script></body></html>")
    errors, _, page = browser(path)
    assert any("logged" in e for e in errors) and any("undefinedFunction" in e for e in errors)
    page.close()


def test_the_browser_check_sees_a_blank_page(browser, tmp_path):
    path = tmp_path / "blank.html"
    path.write_text("<!DOCTYPE html><html><body></body></html>")
    errors, shot, page = browser(path)
    fraction, spread = ink(shot)
    assert errors == [] and fraction == 0 and spread < 1
    page.close()
