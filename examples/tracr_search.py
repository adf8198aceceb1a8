"""Circuit discovery against ground truth: our search, ACDC and EAP on the tracr models.

For each tracr model of auto-circuit (`reverse`, `xproportion`; `experiments.tracr`) this
runs, in one process, on one torch thread:

- `cs.search` (edges, shared draws, the greedy schedule: the one docs/search.md's table was
  measured with) at each threshold in THRESHOLDS, on the experiment's
  `search_graph` (the model's own graph);
- ACDC from auto-circuit (`acdc_prune_scores`), once per tau in TAUS, each run on its own so
  that each tau's kept set is exactly what ACDC keeps at that tau (faithfulness: KL divergence
  for reverse, MSE for xproportion, whose output is one number);
- edge attribution patching from auto-circuit (`mask_gradient_prune_scores` with
  `grad_function="logit"`, `mask_val=0`: auto-circuit's fast form of EAP, equal to its
  reference implementation; answer function: logit difference for reverse, MSE for
  xproportion), whose scores rank every edge; the kept set of size k is the top k.

The auto-circuit methods see every task input once as the clean prompt, each paired with
another input drawn at random as the corrupt one (as auto-circuit's dataset generators do),
in one batch, with edges at every position together (component circuits). Every kept set is
compared, in auto-circuit's edge names, with the official circuit (precision, recall, and the
ROC curve's area: true against false positive rate over all thresholds), and scored by causal
scrubbing (`searching.build_hypothesis`, shared draws) on the experiment's rows. Last, the
official token circuit is patched by auto-circuit itself (`run_circuits`, edges per position),
and the loss at each output position printed.

    python examples/tracr_search.py [--out runs/tracr_search.json]

Prints a markdown table per model (docs/search.md has the one measured here).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from pathlib import Path

import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments import tracr
from causal_scrubbing.searching import build_hypothesis

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0, 1.0001)
TAUS = tuple(sorted(b * 10.0 ** e for b in (1, 3) for e in range(-6, 1)))


def scores(found: set[str], official: set[str], universe: list[str]) -> dict:
    tp = len(found & official)
    return {"kept": len(found), "precision": tp / len(found) if found else 1.0,
            "recall": tp / len(official),
            "fpr": len(found - official) / (len(universe) - len(official))}


def auc(points: list[tuple[float, float]]) -> float:
    """Area under the ROC curve through (0, 0), `points` (fpr, tpr) and (1, 1), taking at
    each false-positive rate the best true-positive rate reached (step interpolation)."""
    pts = sorted({(0.0, 0.0), (1.0, 1.0), *points})
    best, area, prev_x, prev_y = 0.0, 0.0, 0.0, 0.0
    for x, y in pts:
        area += (x - prev_x) * prev_y
        best = max(best, y)
        prev_x, prev_y = x, best
    return area


def recovered(exp: cs.experiments.Experiment, names: set[str]) -> float:
    """Loss recovered by the kept auto-circuit edges, under causal scrubbing (shared draws)."""
    graph = exp.search_graph
    assert graph is not None
    kept = set(tracr.INPUT_EDGES) | {t for n in names for t in tracr.triples(n)}
    hyp = build_hypothesis(graph, kept)
    return cs.scrub(graph, hyp, exp.dataset, exp.loss_fn, n=None, seed=0,
                    n_bootstrap=10).loss_recovered


def auto_circuit_setup(task: str, exp, seed: int = 0, seq_len: int | None = None):
    """A fresh patchable model (edges at every position together, or per position with
    `seq_len`) and one batch of every task input, each with a random other input as its
    corrupt prompt."""
    import copy

    data = tracr.auto_circuit("auto_circuit.data")
    graph_utils = tracr.auto_circuit("auto_circuit.utils.graph_utils")
    tl_model = copy.deepcopy(tracr.compile_task(task).tl_model)
    cfg = tl_model.cfg
    cfg.use_attn_result = cfg.use_split_qkv_input = cfg.use_hook_mlp_in = True
    for p in tl_model.parameters():
        p.requires_grad = False
    ds = tracr.dataset(task, repeats=1)
    n = len(ds)
    rng = random.Random(seed)
    other = [rng.choice([j for j in range(n) if j != i]) for i in range(n)]
    tokens, target = ds["tokens"], ds["target"]  # [n, 6], [n, 5]
    answers = [target[i][:, None] for i in range(n)]  # [5, 1] each
    wrong = [target[j][:, None] for j in other]
    prompts = data.PromptDataset(list(tokens), [tokens[j] for j in other], answers, wrong)
    loader = data.PromptDataLoader(prompts, seq_len=seq_len, diverge_idx=0, batch_size=n,
                                   shuffle=False)
    model = graph_utils.patchable_model(tl_model, factorized=True, slice_output="not_first_seq",
                                        seq_len=seq_len, separate_qkv=True,
                                        device=torch.device("cpu"))
    # `model.edges` is a set: ACDC's order within a layer, and with it what ACDC keeps, would
    # follow Python's string hashing from process to process; a sorted list repeats
    model.edges = sorted(model.edges, key=lambda e: (e.name, e.seq_idx))
    return model, loader


def per_position_loss(task: str, exp) -> dict[str, list[float]]:
    """auto-circuit's own resample patching (`run_circuits`, edges per position) of its
    official token circuit: the task's loss at each output position 1-5, for the clean model,
    the official circuit (every other edge from the corrupt input) and the corrupt input."""
    prune, types_ = tracr.auto_circuit("auto_circuit.prune"), tracr.auto_circuit("auto_circuit.types")
    circuits = tracr.auto_circuit(f"auto_circuit.metrics.official_circuits.circuits.tracr.{task}_official")
    true_edges = getattr(circuits, tracr.CIRCUITS["official"][1][task])
    model, loader = auto_circuit_setup(task, exp, seq_len=tracr.LENGTH + 1)
    official = true_edges(model, token_positions=True)
    ps = model.new_prune_scores()
    for edge in official:
        ps[edge.dest.module_name][edge.patch_idx] = 1.0
    outs = prune.run_circuits(model, loader, [0, len(official), len(model.edges)], ps,
                              patch_type=types_.PatchType.TREE_PATCH,
                              ablation_type=types_.AblationType.RESAMPLE)
    batch = next(iter(loader))
    target = torch.stack([a[:, 0] for a in batch.answers])  # [n, 5]
    result = {}
    for label, k in (("corrupt", 0), ("official", len(official)), ("clean", len(model.edges))):
        out = outs[k][batch.key]  # [n, 5, d_vocab_out]
        if task == "reverse":
            loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1),
                                                     reduction="none").view(target.shape)
        else:
            loss = (out[..., 0] - target) ** 2
        result[label] = [round(float(x), 4) for x in loss.mean(0)]  # [5]
    return result


def kept_names(prune_scores: dict, model, k: int | None = None, inf: bool = False) -> set[str]:
    """Edges whose score is infinite (ACDC: never removed), or the top k by |score| (EAP)."""
    vals = {e.name: float(e.prune_score(prune_scores)) for e in model.edges}
    if inf:
        return {n for n, v in vals.items() if v == float("inf")}
    assert k is not None
    return set(sorted(vals, key=lambda n: (-abs(vals[n]), n))[:k])


def run_task(task: str) -> dict:
    exp = tracr.build(task)
    graph = exp.search_graph
    assert graph is not None
    universe = tracr.edge_names(graph)
    official = set(tracr.official_edges(task))
    rows: list[dict] = []

    for threshold in THRESHOLDS:
        t0 = time.perf_counter()
        found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=threshold, n=500,
                          schedule="greedy")
        seconds = time.perf_counter() - t0
        names = {tracr.edge_name((e.sender, e.receiver, e.port)) for e in found.kept} - {None}
        rows.append({"method": "search", "setting": f"T = {threshold}", "seconds": seconds,
                     "recovered": found.heldout.loss_recovered, "edges": sorted(names),
                     **scores(names, official, universe)})

    acdc = tracr.auto_circuit("auto_circuit.prune_algos.ACDC")
    target = "kl_div" if task == "reverse" else "mse"
    for tau in TAUS:
        model, loader = auto_circuit_setup(task, exp)
        base, exponent = f"{tau:.0e}".split("e")
        t0 = time.perf_counter()
        ps = acdc.acdc_prune_scores(model, loader, None, tao_exps=[int(exponent)],
                                    tao_bases=[int(base)], faithfulness_target=target)
        seconds = time.perf_counter() - t0
        names = kept_names(ps, model, inf=True)
        rows.append({"method": "ACDC", "setting": f"tau = {tau:g}", "seconds": seconds,
                     "recovered": recovered(exp, names), "edges": sorted(names),
                     **scores(names, official, universe)})

    mask_gradient = tracr.auto_circuit("auto_circuit.prune_algos.mask_gradient")
    model, loader = auto_circuit_setup(task, exp)
    t0 = time.perf_counter()
    ps = mask_gradient.mask_gradient_prune_scores(
        model, loader, None, grad_function="logit",
        answer_function="avg_diff" if task == "reverse" else "mse", mask_val=0.0)
    seconds = time.perf_counter() - t0
    for k in range(len(universe) + 1):
        names = kept_names(ps, model, k=k)
        rows.append({"method": "EAP", "setting": f"top {k}", "seconds": seconds if k == 0 else 0.0,
                     "recovered": recovered(exp, names) if k <= 2 * len(official) else None,
                     "edges": sorted(names), **scores(names, official, universe)})

    aucs = {m: auc([(r["fpr"], r["recall"]) for r in rows if r["method"] == m])
            for m in ("search", "ACDC", "EAP")}
    total = {m: sum(r["seconds"] for r in rows if r["method"] == m) for m in aucs}
    return {"task": task, "official": sorted(official), "n_edges": len(universe), "rows": rows,
            "auc": aucs, "seconds": total, "per_position": per_position_loss(task, exp)}


TOKEN_THRESHOLDS = (0.5, 0.9, 0.99, 1.0)
TOKEN_TAUS = (1e-4, 1e-2)


def token_graph(exp, task: str) -> cs.Graph:
    """The model's graph with every receiver port split into one node per position, so that
    an edge at one position is an edge of the graph (auto-circuit's token edges)."""
    model = tracr.load_model(task)
    g = model.graph()
    ports = {(v, p): [[i] for i in range(tracr.LENGTH + 1)] for v in g.order for p in g.ports(v)
             if v not in ("embed", "pos_embed") and not g.is_input(v)}
    return tracr.circuit_graph(model, ports, exp.dataset.rows(torch.arange(4)))


def token_edges(kept: set[tuple[str, str, str]]) -> set[tuple[str, int]]:
    """Kept triples of `token_graph` as (auto-circuit edge name, position)."""
    out = set()
    for sender, part, port in kept:
        if port != "in" or "@" not in part:
            continue
        node_port, position = part.rsplit("@", 1)
        node, receiver_port = node_port.rsplit(".", 1)
        name = tracr.edge_name((sender, node, receiver_port))
        if name is not None and (part, node, receiver_port) in kept:
            out.add((name, int(position)))
    return out


def run_tokens(task: str) -> dict:
    """The same comparison with edges per position, against the official token circuit."""
    exp = tracr.build(task)
    graph = token_graph(exp, task)
    universe = [(n, i) for n in tracr.edge_names(exp.search_graph) for i in range(tracr.LENGTH + 1)]
    official = {(n, i) for n, ps in tracr.official_edges(task).items() for i in ps}
    rows: list[dict] = []

    def row(method: str, setting: str, seconds: float, found: set) -> dict:
        extra = sorted(f"{n}@{i}" for n, i in found - official)
        missing = sorted(f"{n}@{i}" for n, i in official - found)
        return {"method": method, "setting": setting, "seconds": seconds, "recovered": None,
                "edges": sorted(f"{n}@{i}" for n, i in found), "extra": extra,
                "missing": missing, **scores(found, official, universe)}

    for threshold in TOKEN_THRESHOLDS:
        t0 = time.perf_counter()
        found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=threshold, n=500,
                          schedule="greedy")
        r = row("search", f"T = {threshold}", time.perf_counter() - t0,
                token_edges({(e.sender, e.receiver, e.port) for e in found.kept}))
        r["recovered"] = found.heldout.loss_recovered
        rows.append(r)
    acdc = tracr.auto_circuit("auto_circuit.prune_algos.ACDC")
    for tau in TOKEN_TAUS:
        model, loader = auto_circuit_setup(task, exp, seq_len=tracr.LENGTH + 1)
        base, exponent = f"{tau:.0e}".split("e")
        t0 = time.perf_counter()
        ps = acdc.acdc_prune_scores(model, loader, None, tao_exps=[int(exponent)],
                                    tao_bases=[int(base)],
                                    faithfulness_target="kl_div" if task == "reverse" else "mse")
        seconds = time.perf_counter() - t0
        found = {(e.name, e.seq_idx) for e in model.edges if float(e.prune_score(ps)) == float("inf")}
        rows.append(row("ACDC", f"tau = {tau:g}", seconds, found))
    mask_gradient = tracr.auto_circuit("auto_circuit.prune_algos.mask_gradient")
    model, loader = auto_circuit_setup(task, exp, seq_len=tracr.LENGTH + 1)
    t0 = time.perf_counter()
    ps = mask_gradient.mask_gradient_prune_scores(
        model, loader, None, grad_function="logit",
        answer_function="avg_diff" if task == "reverse" else "mse", mask_val=0.0)
    seconds = time.perf_counter() - t0
    # ties (edges scored 0) in a fixed order: model.edges is a set, whose order varies by process
    ranked = sorted(model.edges, key=lambda e: (-abs(float(e.prune_score(ps))), e.name, e.seq_idx))
    for k in (len(official), len(official) + 2):
        rows.append(row("EAP", f"top {k}", seconds if k == len(official) else 0.0,
                        {(e.name, e.seq_idx) for e in ranked[:k]}))
    return {"task": task, "official": sorted(f"{n}@{i}" for n, i in official),
            "n_edges": len(universe), "n_graph_edges": len(cs.searching.graph_edges(graph)),
            "rows": rows}


def token_table(result: dict) -> str:
    lines = [f"{result['task']}, edges per position: official token circuit "
             f"{len(result['official'])} of {result['n_edges']} edges (our split graph: "
             f"{result['n_graph_edges']} edges)", "",
             "| method | setting | kept | precision | recall | not in the official circuit | "
             "missing | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        secs = f"{r['seconds']:.1f}" if r["seconds"] else ""
        lines.append(f"| {r['method']} | {r['setting']} | {r['kept']} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {', '.join(r['extra']) or '-'} | "
                     f"{', '.join(r['missing']) or '-'} | {secs} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = [f"{result['task']}: official circuit {', '.join(result['official'])} "
             f"({len(result['official'])} of {result['n_edges']} edges)", "",
             "| method | setting | kept | precision | recall | loss recovered | seconds |",
             "|---|---|---|---|---|---|---|"]
    n_official = len(result["official"])
    for r in result["rows"]:
        if r["method"] == "EAP" and r["kept"] > 2 * n_official:
            continue
        rec = "-" if r["recovered"] is None else f"{100 * r['recovered']:.1f}%"
        secs = f"{r['seconds']:.2f}" if r["seconds"] else ""
        lines.append(f"| {r['method']} | {r['setting']} | {r['kept']} | {r['precision']:.2f} | "
                     f"{r['recall']:.2f} | {rec} | {secs} |")
    lines += ["", "ROC area (true vs false positive rate over all settings): " + ", ".join(
        f"{m} {v:.3f}" for m, v in result["auc"].items()),
        "wall time, all settings: " + ", ".join(f"{m} {v:.1f} s" for m, v in result["seconds"].items()),
        "", "auto-circuit's resample patching of its official token circuit, loss at positions 1-5:"]
    lines += [f"  {label}: {losses}" for label, losses in result["per_position"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    parser.add_argument("--tokens", action="store_true",
                        help="also compare edges per position with the official token circuits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # auto-circuit's and jax's deprecation notices
    results = [run_task(task) for task in tracr.TASKS]
    for result in results:
        print(table(result) + "\n")
    if args.tokens:
        tokens = [run_tokens(task) for task in tracr.TASKS]
        for result in tokens:
            print(token_table(result) + "\n")
        results += tokens
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
