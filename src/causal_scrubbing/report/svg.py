"""Drawing for the reports: SVG charts and trees, with their small formatting helpers.

Every function returns an SVG (or text) string with every piece of text escaped; nothing here
reads files or runs anything. `recovered_chart_svg` draws loss recovered with intervals beside
published numbers, `histogram_svg` per-example loss distributions, `tree_svg` an interpretation
tree. The search report and the run report both draw with these.

Example:
    >>> text(1, 2.5, "a < b")
    '<text x="1" y="2.5">a &lt; b</text>'
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MONO_CHAR_WIDTH", "OURS", "PUBLISHED", "count_nodes", "diamond", "esc", "finite", "fmt_loss",
    "fmt_pct", "fmt_recovered", "histogram_svg", "histograms_of", "nice_step", "num",
    "recovered_chart_svg", "text", "tree_svg", "undefined", "wrap_paths"
]

esc = html.escape  # escapes & < > " ' : safe in text and in quoted attributes alike

OURS, PUBLISHED = "#2b6cb0", "#dd6b20"  # the colours of our estimates and of published numbers
MONO_CHAR_WIDTH = 7.3  # px per character of the 12 px monospace font in the tree diagrams


def finite(x: Any) -> float | None:
    """A JSON number as a float, or None for null, NaN, "inf" strings and anything else."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def fmt_pct(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{100 * v:.1f}%"


def undefined(x: Mapping[str, Any]) -> bool:
    """Whether a results.json entry (a hypothesis or a subset) marks its recovery undefined."""
    return x.get("recovery_defined") is False


def fmt_recovered(x: Mapping[str, Any], key: str = "loss_recovered") -> str:
    return "undefined" if undefined(x) else fmt_pct(x.get(key))


def fmt_loss(x: Any) -> str:
    v = finite(x)
    return "n/a" if v is None else f"{v:.4f}"


def num(x: float) -> str:
    """A coordinate, short."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def text(x: float, y: float, s: str, cls: str = "", anchor: str = "start") -> str:
    c = f' class="{cls}"' if cls else ""
    a = "" if anchor == "start" else f' text-anchor="{anchor}"'
    return f'<text x="{num(x)}" y="{num(y)}"{c}{a}>{esc(s)}</text>'


def nice_step(span: float, max_ticks: int = 10) -> float:
    for step in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if span / step <= max_ticks:
            return step
    return span / max_ticks


# ---- the loss-recovered chart -------------------------------------------------------------------

def recovered_chart_svg(experiments: Sequence[dict[str, Any]], published_label: str = "published") -> str:
    """Loss recovered per hypothesis as an inline SVG dot plot.

    One row per hypothesis: a dot at our estimate, a bar across its 95% bootstrap interval and a
    hollow diamond at the published number where there is one; 0% and 100% are marked.

    >>> svg = recovered_chart_svg([{"name": "h1", "loss_recovered": 0.8, "ci_low": 0.7,
    ...                             "ci_high": 0.9, "published": 0.88}])
    >>> svg.count("<circle"), svg.count('class="published"'), "80.0%" in svg
    (2, 2, True)
    """
    rows = [(x, None, None, None, finite(x.get("published"))) if undefined(x) else
            (x, finite(x.get("loss_recovered")), finite(x.get("ci_low")), finite(x.get("ci_high")),
             finite(x.get("published"))) for x in experiments]
    values = [v for row in rows for v in row[1:] if v is not None]
    lo, hi = min([0.0, *values]), max([1.0, *values])
    lo = 0.0 if lo >= 0 else math.floor((lo - 0.02) * 20) / 20  # a margin past 0% and 100%, if crossed
    hi = 1.0 if hi <= 1 else math.ceil((hi + 0.02) * 20) / 20
    step = nice_step(hi - lo)
    label_chars = min(max(len(str(x.get("name", ""))) for x in experiments), 27)
    label_width = label_chars * 8 + 20
    width, value_width, row_height, top = 1040, 210, 26, 44
    x0, x1 = label_width, width - value_width
    height = top + row_height * len(rows) + 30
    sx = lambda v: x0 + (v - lo) / (hi - lo) * (x1 - x0)  # noqa: E731
    any_published = any(row[4] is not None for row in rows)
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="loss recovered per hypothesis with 95% bootstrap intervals">',
           "<title>Loss recovered per hypothesis, with 95% bootstrap intervals</title>"]
    # legend
    out.append(f'<circle cx="{num(x0 + 6)}" cy="14" r="4.5" fill="{OURS}"/>')
    out.append(f'<line x1="{num(x0 - 6)}" x2="{num(x0 + 18)}" y1="14" y2="14" stroke="{OURS}" '
               'stroke-width="2"/>')
    out.append(text(x0 + 26, 18, "ours, with 95% bootstrap interval", "legend"))
    if any_published:
        lx = x0 + 270
        out.append(diamond(lx, 14, 6))
        out.append(text(lx + 12, 18, str(published_label), "legend"))
    for i in range(0, len(rows), 2):
        out.append(f'<rect class="stripe" x="0" y="{top + row_height * i}" width="{width}" '
                   f'height="{row_height}"/>')
    # grid and axis
    for i in range(math.ceil(lo / step - 1e-6), math.floor(hi / step + 1e-6) + 1):
        tick = i * step
        cls = "grid strong" if abs(tick) < 1e-9 or abs(tick - 1) < 1e-9 else "grid"
        out.append(f'<line class="{cls}" x1="{num(sx(tick))}" x2="{num(sx(tick))}" y1="{top - 8}" '
                   f'y2="{top + row_height * len(rows)}"/>')
        out.append(text(sx(tick), top + row_height * len(rows) + 16, f"{100 * tick:.0f}%", "tick",
                         "middle"))
    out.append(text(x1 + 12, top - 12, "recovered [95% CI]", "tick"))
    for i, (x, v, ci_lo, ci_hi, pub) in enumerate(rows):
        y = top + row_height * i + row_height / 2
        name = str(x.get("name", ""))
        shown = name if len(name) <= label_chars else name[:label_chars - 1] + "…"
        desc = str(x.get("description", "") or "")
        out.append(f'<g><title>{esc(name + (": " + desc if desc else ""))}</title>'
                   + text(x0 - 10, y + 4, shown, "label", "end") + "</g>")
        if ci_lo is not None and ci_hi is not None:
            out.append(f'<line x1="{num(sx(ci_lo))}" x2="{num(sx(ci_hi))}" y1="{num(y)}" y2="{num(y)}" '
                       f'stroke="{OURS}" stroke-width="2.5"/>')
            for c in (ci_lo, ci_hi):
                out.append(f'<line x1="{num(sx(c))}" x2="{num(sx(c))}" y1="{num(y - 5)}" y2="{num(y + 5)}" '
                           f'stroke="{OURS}" stroke-width="1.5"/>')
        if v is not None:
            out.append(f'<circle cx="{num(sx(v))}" cy="{num(y)}" r="4.5" fill="{OURS}"/>')
        if pub is not None:
            out.append(diamond(sx(pub), y, 7))
        ci = f"  [{fmt_pct(ci_lo)}, {fmt_pct(ci_hi)}]" if ci_lo is not None and ci_hi is not None else ""
        out.append(text(x1 + 12, y + 4, "undefined" if undefined(x) else fmt_pct(v) + ci, "value"))
    out.append("</svg>")
    return "\n".join(out)


def diamond(x: float, y: float, r: float) -> str:
    points = f"{num(x)},{num(y - r)} {num(x + r)},{num(y)} {num(x)},{num(y + r)} {num(x - r)},{num(y)}"
    return f'<polygon class="published" points="{points}" fill="none" stroke="{PUBLISHED}" stroke-width="2"/>'


# ---- per-example loss histograms -----------------------------------------------------------------

def histogram_svg(histograms: dict[str, dict[str, list[float]]], title: str = "") -> str:
    """Per-example losses as a small inline SVG bar chart on log-spaced bins.

    `histograms` maps `scrubbed`, `model` and `baseline` (any of them) to `{edges, counts}` with
    the same edges. Heights are fractions of the examples on a square-root scale (so a tail of a
    few percent of much worse rows stays visible); the scrubbed losses are filled bars, the
    model's and the baseline's are outlines, so a scrubbed distribution that splits into two
    humps (cancellation) shows even when its mean matches the model's.

    >>> h = {"scrubbed": {"edges": [1e-4, 1e-2, 1.0], "counts": [3, 1]},
    ...      "model": {"edges": [1e-4, 1e-2, 1.0], "counts": [4, 0]}}
    >>> svg = histogram_svg(h, "only_a")
    >>> svg.count('class="bar"'), svg.count('class="outline model"')
    (2, 1)
    """
    kinds = [k for k in ("baseline", "scrubbed", "model") if k in histograms]
    edges = [e for e in histograms[kinds[0]]["edges"] if finite(e) is not None and e > 0]
    width, height, left, right, top, bottom = 320, 150, 40, 10, 10, 34
    logs = [math.log10(e) for e in edges]
    span = (logs[-1] - logs[0]) or 1.0
    sx = lambda lg: left + (lg - logs[0]) / span * (width - left - right)  # noqa: E731
    fractions = {}
    for k in kinds:
        counts = [float(c) for c in histograms[k]["counts"]]
        total = sum(counts) or 1.0
        fractions[k] = [c / total for c in counts]
    peak = max(max(f, default=0.0) for f in fractions.values()) or 1.0
    base = height - bottom
    sy = lambda f: base - math.sqrt(f / peak) * (base - top)  # noqa: E731
    label = esc(f"per-example loss histogram{': ' + title if title else ''}")
    out = [f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="{label}">', f"<title>{label}</title>"]
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base}" y2="{base}"/>')
    for f in [v for v in (0.01, 0.1, 0.5) if v < 0.7 * peak] + [peak]:
        out.append(f'<line class="grid" x1="{left - 3}" x2="{width - right}" y1="{num(sy(f))}" '
                   f'y2="{num(sy(f))}"/>')
        out.append(text(left - 5, sy(f) + 4, f"{100 * f:.0f}%", "tick", "end"))
    for d in range(math.ceil(logs[0] - 1e-9), math.floor(logs[-1] + 1e-9) + 1):
        out.append(f'<line class="grid" x1="{num(sx(d))}" x2="{num(sx(d))}" y1="{top}" y2="{base + 4}"/>')
        out.append(text(sx(d), base + 15, f"{10.0 ** d:g}", "tick", "middle"))
    out.append(text(left + (width - left - right) / 2, height - 4, "per-example loss (log scale)",
                     "tick", "middle"))
    for k in kinds:
        shares = fractions[k][:len(edges) - 1]
        if k == "scrubbed":
            for i, v in enumerate(shares):
                if v > 0:
                    out.append(f'<rect class="bar" x="{num(sx(logs[i]) + 0.5)}" y="{num(sy(v))}" '
                               f'width="{num(max(sx(logs[i + 1]) - sx(logs[i]) - 1, 0.5))}" '
                               f'height="{num(base - sy(v))}"/>')
        else:
            outline = f"M{num(sx(logs[0]))},{base}"
            for i, v in enumerate(shares):
                outline += f" V{num(sy(v))} H{num(sx(logs[i + 1]))}"
            out.append(f'<path class="outline {k}" d="{outline} V{base}"/>')
    out.append("</svg>")
    return "\n".join(out)


def histograms_of(x: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    keys = {"scrubbed": "loss_histogram", "model": "model_loss_histogram",
            "baseline": "baseline_loss_histogram"}
    found = {k: x[key] for k, key in keys.items() if isinstance(x.get(key), dict)}
    return {k: h for k, h in found.items() if h.get("edges") and h.get("counts")}


# ---- hypothesis trees ---------------------------------------------------------------------------

def tree_svg(tree: dict[str, Any], wrap: int = 96, max_path_lines: int = 8) -> str:
    """An interpretation tree (as made by `InterpNode.to_dict`) as an inline SVG diagram.

    One box per node, indented under its parent with an edge parent -> child: the node's name
    and sampler, the paths it claims (the matcher's text, wrapped at `wrap` characters and cut
    after `max_path_lines` lines; hover a box for all of it) and, for a node with children, the
    sampler of the inputs no child claims.

    >>> t = {"name": "out", "sampler": "Exact()", "paths": "everything()", "other": "Uniform()",
    ...      "children": [{"name": "A", "sampler": "SameFeature('a')", "paths": "through('A')",
    ...                    "other": "Uniform()", "children": []}]}
    >>> svg = tree_svg(t)
    >>> svg.count('class="node'), svg.count('class="edge"')
    (2, 1)
    """
    flat: list[tuple[dict[str, Any], int, int]] = []  # node, depth, parent index

    def visit(node: dict[str, Any], depth: int, parent: int) -> None:
        flat.append((node, depth, parent))
        me = len(flat) - 1
        for child in node.get("children", []):
            visit(child, depth + 1, me)

    visit(tree, 0, -1)
    indent, gap, line_height, pad = 30, 10, 15, 7
    boxes = []  # x, y, w, h
    y = 8.0
    body = []
    for node, depth, _parent in flat:
        name, sampler = str(node.get("name", "")), str(node.get("sampler", ""))
        path_lines = wrap_paths(str(node.get("paths", "")), wrap)
        if len(path_lines) > max_path_lines:
            more = len(path_lines) - max_path_lines + 1
            path_lines = path_lines[:max_path_lines - 1] + [f"  … {more} more lines"]
        lines = [("name", name + "  " + sampler)] + [("paths", s) for s in path_lines]
        if node.get("children"):
            lines.append(("other", f"others: {node.get('other', '')}"))
        chars = max(len(s) for _, s in lines)
        x = 8 + depth * indent
        w, h = chars * MONO_CHAR_WIDTH + 2 * pad, len(lines) * line_height + 2 * pad - 3
        boxes.append((x, y, w, h))
        kind = "root" if depth == 0 else ("inner" if node.get("children") else "leaf")
        full = f"{name}  {sampler}\npaths: {node.get('paths', '')}"
        part = [f'<g class="node {kind}"><title>{esc(full)}</title>',
                f'<rect x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}" rx="4"/>']
        for i, (cls, s) in enumerate(lines):
            ty = y + pad + 9 + i * line_height
            if cls == "name":
                part.append(f'<text x="{num(x + pad)}" y="{num(ty)}"><tspan class="name">{esc(name)}</tspan>'
                            f'<tspan class="sampler">  {esc(sampler)}</tspan></text>')
            else:
                part.append(text(x + pad, ty, s, cls))
        body.append("".join(part) + "</g>")
        y += h + gap
    edges = []
    for i, (_node, _depth, parent) in enumerate(flat):
        if parent < 0:
            continue
        px, py, _pw, ph = boxes[parent]
        cx, cy, _cw, _ch = boxes[i]
        mid = cy + pad + 5
        edges.append(f'<path class="edge" d="M{num(px + 14)},{num(py + ph)} V{num(mid)} H{num(cx - 6)}"/>'
                     f'<polygon class="arrow" points="{num(cx)},{num(mid)} {num(cx - 7)},{num(mid - 4)} '
                     f'{num(cx - 7)},{num(mid + 4)}"/>')
    width = max(x + w for x, _, w, _ in boxes) + 8
    label = esc(f"interpretation tree rooted at {tree.get('name', '')}: {len(flat)} nodes")
    return "\n".join([f'<svg class="tree" viewBox="0 0 {num(width)} {num(y)}" width="{num(width)}" '
                      f'height="{num(y)}" role="img" aria-label="{label}">', f"<title>{label}</title>",
                      *edges, *body, "</svg>"])


def wrap_paths(paths: str, width: int) -> list[str]:
    """`paths: <matcher>` in lines of at most `width` characters, one union member per line."""
    lines: list[str] = []
    for i, part in enumerate(paths.split(" | ")):
        first = "paths: " if i == 0 else "     | "
        lines += textwrap.wrap(part, width, initial_indent=first, subsequent_indent=" " * 9,
                               break_on_hyphens=False) or [first]
    return lines


def count_nodes(tree: dict[str, Any]) -> int:
    return 1 + sum(count_nodes(c) for c in tree.get("children", []))
