"""The audit section of a report, drawn from an audit's JSON dictionary (`audit.Audit.to_dict`).

>>> audit_html(None)
''
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["audit_html"]


def audit_html(data: Mapping[str, Any] | None) -> str:
    """The audit section of a report, from an audit's JSON dictionary ("" when there is none).
    Every piece of text is escaped.

    >>> audit_html({"findings": [{"hypothesis": "<h>", "kind": "cancellation", "severity": "high",
    ...             "evidence": {"summary": "x"}}], "checks": {}, "scrubs": 0, "seconds": 0.1})[:40]
    '<p class="note">Checks for hypotheses th'
    """
    import html

    if not isinstance(data, Mapping):
        return ""
    esc = html.escape
    findings = data.get("findings") or []
    checks = data.get("checks") or {}
    intro = ('<p class="note">Checks for hypotheses that pass for the wrong reasons: cancellation, '
             "recovery above 100% and negative parts, claims whose weakening costs nothing, and "
             "feature-defined subsets where the hypothesis fails (definitions in docs/audit.md). "
             f"{len(findings)} finding{'s' * (len(findings) != 1)}; "
             f"{esc(str(data.get('scrubs', 0)))} extra scrubs.</p>")
    rows = "".join(
        f"<tr><td><b>{esc(str(f.get('hypothesis', '')))}</b></td><td>{esc(str(f.get('kind', '')))}</td>"
        f"<td>{esc(str(f.get('severity', '')))}</td>"
        f"<td>{esc(str((f.get('evidence') or {}).get('summary', '')))}</td></tr>" for f in findings)
    table = ("<table><tr><th>hypothesis</th><th>kind</th><th>severity</th><th>evidence</th></tr>"
             f"{rows}</table>" if rows else "<p>No finding: nothing flagged.</p>")

    def num(x: Any, scale: float = 100, unit: str = "%") -> str:
        return f"{scale * x:.1f}{unit}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"

    per = []
    for k, c in checks.items():
        can = c.get("cancellation") or {}
        sub = (c.get("adversarial_subset") or {}).get("lowest") or {}
        per.append(f"<tr><td><b>{esc(str(k))}</b></td><td>{num(can.get('share_better'))}</td>"
                   f"<td>{num(can.get('hidden'), unit=' pts')}</td>"
                   f"<td>{esc(str(sub.get('text', '-')))}</td><td>{num(sub.get('loss_recovered'))}</td>"
                   f"<td>{esc(str(c.get('variants_tried', 0)))}</td></tr>")
    stats = ("<h3>Statistics</h3><div class=\"scroll\"><table><tr><th>hypothesis</th><th>rows better "
             "than the model</th><th>cancelling</th><th>lowest subset</th><th>its recovery</th>"
             "<th>variant scrubs</th></tr>" + "".join(per) + "</table></div>") if per else ""
    skipped = data.get("settings", {}).get("skipped") if isinstance(data.get("settings"), Mapping) else None
    notes = ("<p class=\"note\">Not run: " + esc("; ".join(map(str, skipped))) + "</p>") if skipped else ""
    return intro + "\n" + table + "\n" + stats + notes
