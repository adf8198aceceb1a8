"""Auditing a finished run on disk: `causal-scrub audit DIR`.

The audit itself (`causal_scrubbing.audit`) needs the run's per-example losses and the
experiment's graph, hypotheses and features. A run directory holds the losses (when `run` kept
them) and names its experiment, which is rebuilt here from the registry; the audit is then
written beside the results and the report redrawn with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..audit import AUDIT_JSON, LOSSES_FILE, Audit, audit, load_losses
from ..core.errors import ScrubError
from ..core.results import atomic_write, jsonable
from ..experiment import Experiment
from ..report import RESULTS_JSON, rebuild_report
from . import load, run_experiment

__all__ = ["audit_directory"]


def audit_directory(directory: str | os.PathLike, *, experiment: str | None = None,
                    options: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[Audit, Path]:
    """Audit the run in `directory` (written by `causal-scrub run`): write `audit.json`, add the
    audit to `results.json` and redraw `report.html`. Returns the audit and the JSON's path.

    The experiment is rebuilt from the name `results.json` records (or `experiment`, a name or
    a .py path, with `options` for its `build()`); the per-example losses come from
    `audit_losses.safetensors` when the run left one, else the run's scrubs are repeated with
    its n and seed and checked against `results.json`. `kwargs` go to `audit`.
    """
    root = Path(directory)
    path = root / RESULTS_JSON
    if not path.is_file():
        raise ScrubError(f"{path} does not exist: `causal-scrub audit DIR` audits a finished run "
                         "(`causal-scrub run NAME --out DIR` writes one).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScrubError(f"{path} is not valid JSON ({err}); run the experiment again.") from None
    if not isinstance(data, dict) or not isinstance(data.get("experiments"), list):
        raise ScrubError(f"{path} is not the results of a run (no list 'experiments').")
    name = experiment or data.get("experiment")
    if not name:
        raise ScrubError(f"{path} names no experiment; pass --experiment NAME_OR_PATH.")
    exp = load(name, **dict(options or {}))
    settings = data.get("settings") or {}
    seed = int(data.get("seed", 0))
    n = settings.get("n_requested", data.get("n"))
    wanted = [str(x.get("name")) for x in data["experiments"]]
    losses = root / LOSSES_FILE
    res = load_losses(losses, seed) if losses.is_file() else None
    if res is None or list(res) != wanted:
        unknown = [w for w in wanted if w not in exp.hypotheses]
        if unknown:
            raise ScrubError(f"Experiment {name!r} has no hypothesis {unknown[0]!r}, which {path} "
                             "holds; pass --experiment with the experiment that made this run.")
        rebuilt = _only(exp, wanted)
        res = dict(run_experiment(rebuilt, n=n, seed=seed).results)
    for x in data["experiments"]:
        got, want = res[str(x["name"])].loss, x.get("scrubbed_loss")
        if isinstance(want, int | float) and abs(got - want) > 1e-4 * max(1.0, abs(want)):
            raise ScrubError(
                f"The rebuilt experiment {name!r} does not reproduce {path}: hypothesis "
                f"{x['name']!r} has scrubbed loss {got:.6g} here against {want:.6g} there. Audit "
                "with the same code and experiment that made the run (or run it again).")
    result = audit(res, exp, **kwargs)
    out = result.save(root / AUDIT_JSON)
    data["audit"] = result.to_dict()
    atomic_write(path, json.dumps(jsonable(data), indent=2))
    rebuild_report(root)
    return result, out


def _only(exp: Experiment, keys: Sequence[str]) -> Experiment:
    """`exp` with only the hypotheses `keys`, in that order."""
    from dataclasses import replace

    return replace(exp, hypotheses={k: exp.hypotheses[k] for k in keys})
