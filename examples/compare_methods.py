"""Circuit discovery side by side, every method in causal-scrubbing semantics, in one run:
our default search, the greedy schedule, ACDC and EAP-IG, on a bundled experiment.

On the experiment's `search_graph` (the model's own graph), with N search rows and the N
held-out rows `cs.scrub` draws for the seed (the same rows for every method), shared draws,
the random baseline as 0%, one torch thread, one process:

- **default**: `cs.search(threshold=T)` with its default schedule (ranked: EAP-IG ranks the
  edges, bisection finds the smallest passing top-k, pruning with tolerances 0.002, 0.01);
- **greedy**: `cs.search(threshold=T, schedule="greedy")` (one pass in ACDC's order);
- **ACDC**: `faithfulness_curve(method="acdc")`: `AcdcRemoval` (ACDC's rule, with the task's
  loss as its metric) once per tau of TAUS (fractions of the loss gap on the search rows);
  its circuit at T is the smallest of the sweep that reaches T on the search rows; its
  seconds are the whole sweep's (and that tau's run's);
- **EAP-IG**: `cs.search(threshold=T, schedule=RankedRemoval(prune="none"))`: our EAP-IG (5
  intervals, the other input the search's shared draw) ranks the edges and bisection finds
  the smallest top-k that reaches T on the search rows (no pruning).

Each method's circuit at T is re-scored on the held-out rows with a 95% bootstrap interval;
its faithfulness curve (MIB's sizes, `cs.faithfulness_curve` on the held-out rows: the
search's ranking `search_ranking`, ACDC's `acdc_ranking`, EAP-IG's scores) gives CPR and CMD
(linear axis) with their intervals. "seconds" is the method's own time to its circuit(s),
held-out re-scoring included, curve scoring excluded.

    python examples/compare_methods.py paren --n 300 --out runs/compare_paren.json
    python examples/compare_methods.py induction --n 100 --methods default eap-ig greedy acdc \\
        --taus 0.003 0.01 0.03 --out runs/compare_induction.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import causal_scrubbing as cs
from causal_scrubbing import experiments
from causal_scrubbing.searching import RankedRemoval
from causal_scrubbing.searching.curve import ACDC_TAUS, search_ranking

N_BOOTSTRAP = 1000


def heldout(found: cs.SearchResult) -> dict:
    h = found.heldout
    return {"recovered": h.loss_recovered, "ci": list(h.ci), "n": h.n}


def curve_row(c) -> dict:
    return {"cpr": c.cpr, "cpr_ci": list(c.cpr_ci), "cmd": c.cmd, "cmd_ci": list(c.cmd_ci),
            "sizes": c.sizes, "edges": c.edges, "loss_recovered": c.loss_recovered,
            "curve_seconds": c.seconds}


METHODS = ("default", "greedy", "acdc", "eap-ig")


def run(name: str, n: int, threshold: float, taus: tuple[float, ...], seed: int = 0,
        methods: tuple[str, ...] = METHODS, out: Path | None = None) -> dict:
    t_start = time.perf_counter()
    exp = experiments.load(name)
    graph = exp.search_graph or exp.graph
    ds, loss = exp.dataset, exp.loss_fn
    n_edges = len(cs.searching.graph_edges(graph))
    kw = dict(n=n, n_heldout=n, seed=seed, n_bootstrap=N_BOOTSTRAP)
    ckw = dict(n=n, seed=seed, n_bootstrap=N_BOOTSTRAP)
    rows: list[dict] = []
    result = {"experiment": name, "n": n, "seed": seed, "threshold": threshold,
              "n_edges": n_edges, "taus": list(taus), "rows": rows,
              "torch_threads": torch.get_num_threads()}

    def save() -> None:  # after every method, so that a run stopped early keeps what it did
        result["total_seconds"] = time.perf_counter() - t_start
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))

    def search_row(method: str, setting: str, **search_kw) -> cs.SearchResult:
        t0 = time.perf_counter()
        found = cs.search(graph, ds, loss, threshold=threshold, **kw, **search_kw)
        seconds = time.perf_counter() - t0
        print(f"{name} {method}: {len(found.kept)} kept, {found.candidates} candidates, "
              f"{seconds:.1f} s", flush=True)
        if method == "EAP-IG":
            rank = next(t for t in found.trace if t["step"] == "rank")
            by_name = {f"{u} -> {v}.{p}": (u, v, p) for u, v, p in cs.searching.graph_edges(graph)}
            ranking = [by_name[e] for e in rank["ranking"]]
        else:
            ranking = search_ranking(found, graph)
        c = cs.faithfulness_curve(graph, ds, loss, method=method, ranking=ranking, **ckw)
        rows.append({"method": method, "setting": setting, "kept": len(found.kept),
                     "search_rows": found.loss_recovered, **heldout(found), "seconds": seconds,
                     "candidates": found.candidates, "schedule": found.schedule,
                     **curve_row(c)})
        save()
        return found

    for method in methods:  # in the order given
        if method == "default":
            search_row("default", f"ranked (default), T = {threshold}")
        elif method == "greedy":
            search_row("greedy", f"greedy, one pass, T = {threshold}", schedule="greedy")
        elif method == "acdc":
            acdc_row(name, graph, ds, loss, threshold, taus, ckw, n, rows)
            save()
        else:
            found = search_row("EAP-IG", f"top-k by EAP-IG, smallest reaching T = {threshold}",
                               schedule=RankedRemoval(prune="none"))
            start = next(t for t in found.trace if t["step"] == "start")
            rows[-1]["setting"] += f" ({start['what']})"
            save()
    return result


def acdc_row(name, graph, ds, loss, threshold, taus, ckw, n, rows) -> None:
    c = cs.faithfulness_curve(graph, ds, loss, method="acdc", taus=taus, **ckw)
    sweep = c.settings["acdc"]
    passing = [r for r in sweep if r["search_rows_recovered"] >= threshold]
    at = min(passing, key=lambda r: (r["kept"], -r["tau_fraction"])) if passing else None
    print(f"{name} ACDC: " + ", ".join(f"tau {r['tau_fraction']:g}: {r['kept']} kept, "
                                        f"{100 * r['search_rows_recovered']:.1f}%"
                                        for r in sweep), flush=True)
    rows.append({"method": "ACDC", "setting": (f"tau = {at['tau_fraction']:g} of the gap (the "
                                               f"smallest of {len(sweep)} taus reaching T)"
                                               if at else f"no tau of {len(sweep)} reaches T"),
                 "kept": at["kept"] if at else None,
                 "search_rows": at["search_rows_recovered"] if at else None,
                 "recovered": at["heldout"] if at else None, "ci": at["ci"] if at else None,
                 "n": n, "seconds": c.method_seconds,
                 "seconds_at_tau": at["seconds"] if at else None,
                 "candidates": sum(r["candidates"] for r in sweep), "sweep": sweep,
                 **curve_row(c)})


def table(result: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def ci(v):
        return "" if v is None else f" [{100 * v[0]:.1f}, {100 * v[1]:.1f}]"

    lines = ["| method | setting | edges kept at T | search rows | held out [95% CI] | CPR [95% CI] | "
             "CMD [95% CI] | seconds | candidates |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        secs = f"{r['seconds']:.0f}"
        if r.get("seconds_at_tau") is not None:
            secs += f" (sweep; {r['seconds_at_tau']:.0f} at its tau)"
        kept = "-" if r["kept"] is None else f"{r['kept']} of {result['n_edges']}"
        lines.append(
            f"| {r['method']} | {r['setting']} | {kept} | {pct(r['search_rows'])} | "
            f"{pct(r['recovered'])}{ci(r['ci'])} | {r['cpr']:.3f} [{r['cpr_ci'][0]:.3f}, "
            f"{r['cpr_ci'][1]:.3f}] | {r['cmd']:.3f} [{r['cmd_ci'][0]:.3f}, {r['cmd_ci'][1]:.3f}] "
            f"| {secs} | {r['candidates']} |")
    lines.append(f"\n{result['experiment']}: n = {result['n']} search rows and {result['n']} held-out "
                 f"rows, seed {result['seed']}, T = {result['threshold']}; whole run "
                 f"{result['total_seconds']:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--taus", type=float, nargs="+", default=ACDC_TAUS,
                        help="ACDC's sweep, fractions of the loss gap")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS,
                        help="which, in this order (default: all)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the rows as JSON (written after every method)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(args.experiment, args.n, args.threshold, tuple(args.taus), args.seed,
                 tuple(args.methods), args.out)
    print(table(result))
    if args.out is not None:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
