"""`causal-scrub bench --scale N`: a whole run at N rows beside one at a few thousand.

The engine runs reference rows in chunks sized to a memory budget, so a run should hold about
the same memory, and spend about the same time per row, at 100,000 rows as at 4,000. This
measures that on the whole command, where allocator growth, feature tables, per-row losses
and the bootstrap all count: `causal-scrub run EXPERIMENT --n N` runs in a child process, once
at `base_n` rows and once at `n`, one after the other, and each child's wall time, CPU time
(user + system) and peak resident set (the kernel's `ru_maxrss` of that child, what
`/usr/bin/time -v` reports as "Maximum resident set size") are recorded with the machine.

Example (seconds: the toy experiment at 200 and 400 rows):
    >>> from causal_scrubbing.bench import scale
    >>> data = scale.run("toy", n=400, base_n=200)
    >>> [r["n"] for r in data["runs"]], data["per_row_ratio"] > 0
    ([200, 400], True)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..core.errors import ScrubError
from ..core.results import versions
from . import machine


def child_run(experiment: str, n: int, seed: int = 0, memory_budget_mb: float | None = None
              ) -> dict:
    """`causal-scrub run experiment --n n` in a child process: its wall and CPU seconds, peak
    resident MB (None where the platform does not report it) and loss recovered per hypothesis."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "causal_scrubbing.cli", "run", experiment, "--n", str(n),
               "--seed", str(seed), "--out", str(Path(tmp) / "run"), "--quiet"]
        if memory_budget_mb is not None:
            cmd += ["--memory-budget", str(memory_budget_mb)]
        log = Path(tmp) / "log"
        start = time.perf_counter()
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(proc.pid, 0)
                code = os.waitstatus_to_exitcode(status)
                proc.returncode = code
                cpu = usage.ru_utime + usage.ru_stime
                scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
                peak: float | None = usage.ru_maxrss * scale / 2**20
            else:  # pragma: no cover (Windows)
                code, cpu, peak = proc.wait(), float("nan"), None
        wall = time.perf_counter() - start
        if code != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise ScrubError(f"`{' '.join(cmd[2:])}` failed (exit {code}):\n{tail}")
        results = json.loads((Path(tmp) / "run" / "results.json").read_text())
    return {"n": n, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak,
            "wall_ms_per_row": 1000 * wall / n, "cpu_ms_per_row": 1000 * cpu / n,
            "loss_recovered": {e["name"]: e["loss_recovered"] for e in results["experiments"]}}


def run(experiment: str = "paren", n: int = 100_000, base_n: int = 4_000, seed: int = 0,
        memory_budget_mb: float | None = None, out: str | os.PathLike | None = None) -> dict:
    """The two runs (base_n rows, then n rows) and their time-per-row ratio; written to `out`
    (JSON) when given."""
    if not 0 < base_n < n:
        raise ScrubError(f"--scale {n} needs more rows than the base run's {base_n}.")
    runs = [child_run(experiment, m, seed, memory_budget_mb) for m in (base_n, n)]
    data = {"experiment": experiment, "seed": seed, "memory_budget_mb": memory_budget_mb,
            "machine": machine(torch.device("cpu")), "versions": versions(), "runs": runs,
            "per_row_ratio": runs[1]["wall_ms_per_row"] / runs[0]["wall_ms_per_row"],
            "cpu_per_row_ratio": runs[1]["cpu_ms_per_row"] / runs[0]["cpu_ms_per_row"]}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
    return data


def format_table(data: dict) -> str:
    lines = [f"{data['experiment']} end to end, each run in its own process",
             f"{'n':>8} {'wall s':>9} {'CPU s':>9} {'wall ms/row':>12} {'CPU ms/row':>11} "
             f"{'peak MB':>8}"]
    for r in data["runs"]:
        peak = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"{r['n']:>8} {r['wall_s']:>9.1f} {r['cpu_s']:>9.1f} "
                     f"{r['wall_ms_per_row']:>12.2f} {r['cpu_ms_per_row']:>11.2f} {peak:>8}")
    lines.append(f"time per row at {data['runs'][1]['n']} rows: {data['per_row_ratio']:.2f}x the "
                 f"{data['runs'][0]['n']}-row run's (wall), {data['cpu_per_row_ratio']:.2f}x (CPU)")
    return "\n".join(lines)
