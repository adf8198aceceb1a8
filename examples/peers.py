"""Circuit discovery on paren and IOI: our search, ACDC and EAP, each scored by causal scrubbing.

On a bundled model (`--experiment paren`: the balance classifier, 3 layers of 2 heads and
MLPs, bidirectional attention with padding keys masked, logits read at position 0;
`--experiment ioi`: the IOI model, 4 layers of 4 attention-only heads, causal, every prompt 18
tokens, logits read at END) this runs, in one process, on one torch thread:

- `cs.search` (edges, shared draws, no features, the greedy schedule: the one docs/search.md's
  tables were measured with; examples/compare_methods.py compares the default ranked one) at
  each threshold in THRESHOLDS, on the
  experiment's `search_graph` (the model's own graph), with N search rows: in one pass, and
  again with the per-step tolerances TOLERANCES (passes that remove cheap edges first);
- ACDC from auto-circuit (`acdc_prune_scores`), once per tau in TAUS, each run on its own so
  that each tau's kept set is exactly what ACDC keeps at that tau, visiting the edges in the
  search's order (`in_search_order`; auto-circuit's own order varies by process).
  Faithfulness: KL divergence of the patched from the clean output distribution at the read
  position (paren: its two classes, whose cross-entropy is the model's loss; IOI: the whole
  vocabulary at END, ACDC's setting for IOI);
- edge attribution patching from auto-circuit (`mask_gradient_prune_scores` with
  `grad_function="logit"`, `mask_val=0`: auto-circuit's fast form of EAP; answer function
  `avg_diff`, the logit difference of the answer and the wrong answer: paren's class and the
  other class, IOI's IO and S), whose scores rank every edge; the kept set of size k is the
  top k by |score|, for every k that search or ACDC kept (and a few more).

auto-circuit needs a TransformerLens `HookedTransformer`: `hooked_transformer` builds one with
our model's sizes and weights (`Transformer.state_dict_tl`), which computes exactly our
model's logits at the read position (asserted on N_PARITY rows). For paren it needs two
additions: a hook on every layer's `hook_attn_scores` (scaled scores, before the softmax) sets
the scores of padding keys to -inf, as `Transformer` does after scaling (TransformerLens
applies no padding mask to bidirectional attention), reading the tokens that a forward
pre-hook recorded (the input, or the `tokens=` that ACDC passes when it starts at a later
layer); and the patchable model's `out_slice` reads position 0 only (auto-circuit's
`slice_output` offers the last position or all but the first, not the first).

The auto-circuit methods see N_AC rows drawn (seeded) from the rows that the scoring does not
use, each the clean prompt, paired with another of those rows drawn at random as its corrupt
prompt (as auto-circuit's dataset generators do; our resampling draws unrelated rows too), in
one batch, with edges at every position together (component circuits). Every kept set is
scored by causal scrubbing (`searching.build_hypothesis`, shared draws) on the same N
reference rows (those `cs.scrub` draws for seed 0 and n = N, which are also the rows
`cs.search` reports as held out).

Edges: auto-circuit's component edges ('Resid Start->A1.0.Q', 'A0.1->MLP 2', 'MLP 2->Resid
End') map onto our graph's triples with `experiments.tracr.triples` / `edge_name`. Our graph
has edges auto-circuit's lacks: `Resid Start` is our `embed` and `pos_embed` (so one
auto-circuit edge is two triples; the positional embedding is the same for every row, so
resampling it changes nothing), the input edges from `tokens`, and paren's padding mask
(`tokens -> pad_mask`, `pad_mask -> a{l}.h{h}.mask`). auto-circuit never patches the mask
(the hooks compute it from the input being run), so its kept sets are scored with the input
and mask edges kept; our search may remove mask edges, which the table notes. The table's
`kept` counts auto-circuit edges (for search, the names of its kept triples; its note gives
the number of triples, input and mask edges included).

    python examples/peers.py --experiment paren [--out runs/peers_paren.json]
    python examples/peers.py --experiment ioi [--out runs/peers_ioi.json]

Each prints a markdown table (paren: about 7 minutes on one thread, most of it ACDC).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import causal_scrubbing as cs
from causal_scrubbing.core.draws import reference_rows
from causal_scrubbing.experiments import Experiment, ioi, paren, tracr
from causal_scrubbing.experiments.paren import features
from causal_scrubbing.searching import Triple, build_hypothesis, compact_hypothesis, graph_edges

THRESHOLDS = (0.8, 0.9, 0.95)
TAUS = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
TOLERANCES = (0.002, 0.01)  # the search's passes (`cs.search(tolerances=...)`), a second row set
EXTRA_K = (5, 10, 20)  # EAP sizes tried besides those search and ACDC found
N = 1000  # search rows, and the reference rows every kept set is scored on
N_AC = 500  # rows auto-circuit's methods see (one batch of clean/corrupt pairs; ACDC's cost
#   grows with it: about 40 s per tau on paren)
N_PARITY = 64  # rows on which the TransformerLens model's logits are checked
SEED = 0


# ---- the two experiments ------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A bundled experiment as the comparison needs it: the experiment, and the answer and
    wrong answer [n, 1] of the dataset rows `rows` [n] (EAP's logit difference)."""

    exp: Experiment
    answers: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    @property
    def graph(self) -> cs.Graph:
        return self.exp.search_graph or self.exp.graph


def paren_task() -> Task:
    """paren: the answer is the row's class (1: balanced), the wrong answer the other."""
    exp = paren.build()

    def answers(rows):
        label = features.is_balanced(exp.dataset.rows(rows)).long()[:, None]  # [n, 1]
        return label, 1 - label

    return Task(exp, answers)


def ioi_task() -> Task:
    """IOI (the bundled model): the answer is the IO token, the wrong answer S."""
    exp = ioi.build()

    def answers(rows):
        return exp.dataset["io"][rows][:, None], exp.dataset["s"][rows][:, None]  # [n, 1] each

    return Task(exp, answers)


TASKS = {"paren": paren_task, "ioi": ioi_task}


# ---- the TransformerLens model ---------------------------------------------------------------------


def mask_pad_keys(tl_model, pad: int) -> None:
    """Make `tl_model` mask padding keys as `Transformer` does: scaled scores of keys at the
    `pad` token set to -inf before the softmax (permanent hooks: auto-circuit's
    `reset_hooks` keeps them)."""
    seen: dict[str, torch.Tensor] = {}

    def record(module, args, kwargs):
        tokens = kwargs.get("tokens")  # ACDC: forward(resid, start_at_layer=l, tokens=...)
        if tokens is None:
            tokens = args[0] if args else kwargs["input"]
        assert not tokens.is_floating_point(), "the pad mask needs the input tokens"
        seen["tokens"] = tokens  # [batch, pos]

    def mask(scores, hook):  # [batch, head, query, key]
        tokens = seen["tokens"]
        assert tokens.shape[0] == scores.shape[0] and tokens.shape[1] == scores.shape[-1]
        return scores.masked_fill((tokens == pad)[:, None, None, :].to(scores.device),
                                  float("-inf"))

    tl_model.register_forward_pre_hook(record, with_kwargs=True)
    for layer in range(tl_model.cfg.n_layers):
        tl_model.add_hook(f"blocks.{layer}.attn.hook_attn_scores", mask, is_permanent=True)


def hooked_transformer(model: cs.models.Transformer, mask_pad: bool = True):
    """A TransformerLens `HookedTransformer` with `model`'s sizes and weights, set up for
    auto-circuit (split q/k/v inputs, per-head results, MLP inputs hooked); logits at every
    position [batch, pos, d_vocab_out], position `classifier_pos` being `model`'s."""
    tracr.auto_circuit("auto_circuit")  # (TransformerLens 3's key-value cache alias first)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = model.cfg
    plain = dict(normalization_type="LN", positional_embedding_type="standard", head="classifier",
                 n_key_value_heads=None, gated_mlp=False, parallel_attn_mlp=False,
                 post_norms=False, attn_scale=None, attn_scores_soft_cap=None,
                 output_logits_soft_cap=None, attn_windows=None)
    assert all(getattr(c, k) == v for k, v in plain.items()), "only the bundled models' options"
    cfg = HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_head=c.d_head,
        d_mlp=c.d_mlp, attn_only=c.d_mlp is None, d_vocab=c.d_vocab, d_vocab_out=c.d_vocab_out,
        n_ctx=c.n_ctx,
        act_fn=c.act_fn, normalization_type="LN", eps=c.ln_eps,
        attention_dir=c.attention_dir, positional_embedding_type="standard",
        default_prepend_bos=False, use_attn_result=True, use_split_qkv_input=True,
        use_hook_mlp_in=True, device="cpu", seed=SEED)
    with warnings.catch_warnings():  # transformer_lens 3 deprecates HookedTransformer
        warnings.simplefilter("ignore", DeprecationWarning)
        tl_model = HookedTransformer(cfg)
    weights = model.state_dict_tl()
    assert set(weights) == {n for n, _ in tl_model.named_parameters()}, "parameter names differ"
    tl_model.load_state_dict(weights, strict=False)  # (the rest are TransformerLens's buffers)
    for p in tl_model.parameters():
        p.requires_grad = False
    if mask_pad and c.pad_token is not None:
        mask_pad_keys(tl_model, c.pad_token)
    return tl_model.eval()


@torch.inference_mode()
def parity(model: cs.models.Transformer, tl_model, tokens: torch.Tensor) -> float:
    """Max |difference| of the logits at `classifier_pos` [n, vocab] on `tokens` [n, pos]."""
    ours = model(tokens)  # [n, vocab]
    theirs = tl_model(tokens)[:, model.cfg.classifier_pos]  # [n, vocab]
    return float((ours - theirs).abs().max())


# ---- auto-circuit's edges on our graph ---------------------------------------------------------


def always_kept(graph: cs.Graph) -> set[Triple]:
    """Our edges outside auto-circuit's graph: from `tokens` (inside `Resid Start`, or into the
    padding mask) and from `pad_mask` (never patched by auto-circuit)."""
    return {t for t in graph_edges(graph) if t[0] in ("tokens", "pad_mask")}


def ac_name(triple: Triple) -> str | None:
    """auto-circuit's name of a triple of our graph; None for the edges of `always_kept`."""
    return None if triple[0] in ("tokens", "pad_mask") else tracr.edge_name(triple)


def ac_universe(graph: cs.Graph) -> list[str]:
    """Every auto-circuit edge name of our graph, in our graph's order."""
    return list(dict.fromkeys(n for t in graph_edges(graph) if (n := ac_name(t)) is not None))


def scored(task: Task, names: set[str]) -> dict:
    """Loss recovered (and its 95% interval) by the kept auto-circuit edges, under causal
    scrubbing (shared draws) on the N reference rows of seed SEED: as a tree, or, when the
    tree would be too large, as the same assignment in two nodes (as `cs.search` does)."""
    graph, exp = task.graph, task.exp
    kept = always_kept(graph) | {t for n in names for t in tracr.triples(n)}
    try:
        root = build_hypothesis(graph, kept)
    except cs.ScrubError:
        root = compact_hypothesis(graph, kept)
    r = cs.scrub(graph, root, exp.dataset, exp.loss_fn, n=N, seed=SEED)
    return {"recovered": r.loss_recovered, "ci": list(r.ci)}


# ---- auto-circuit -------------------------------------------------------------------------------


def ac_rows(n_rows: int) -> torch.Tensor:
    """N_AC rows [N_AC] drawn (seeded) from those the N reference rows of the scoring leave."""
    free = torch.ones(n_rows, dtype=torch.bool)
    free[reference_rows(n_rows, N, SEED)] = False
    pool = torch.nonzero(free).flatten()
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(SEED))[:N_AC]]


def auto_circuit_setup(task: Task, rows: torch.Tensor):
    """A fresh patchable TransformerLens copy of the model (edges at every position together,
    output read at the model's read position) and one batch of the rows, each with a random
    other row as its corrupt prompt."""
    data = tracr.auto_circuit("auto_circuit.data")
    graph_utils = tracr.auto_circuit("auto_circuit.utils.graph_utils")
    model = task.graph.module
    tl_model = hooked_transformer(model)
    tokens = task.exp.dataset["tokens"][rows]  # [n, pos]
    answer, wrong = task.answers(rows)  # [n, 1] each
    n = len(rows)
    rng = random.Random(SEED)
    other = [(j := rng.randrange(n - 1)) + (j >= i) for i in range(n)]  # a row other than i
    prompts = data.PromptDataset(list(tokens), [tokens[j] for j in other],
                                 list(answer), list(wrong))  # [1] each
    loader = data.PromptDataLoader(prompts, seq_len=None, diverge_idx=0, batch_size=n,
                                   shuffle=False)
    patchable = graph_utils.patchable_model(tl_model, factorized=True, slice_output=None,
                                            separate_qkv=True, device=torch.device("cpu"))
    patchable.out_slice = (slice(None), model.cfg.classifier_pos)  # logits [n, vocab]
    return patchable, loader


def in_search_order(model, graph: cs.Graph) -> None:
    """Hand ACDC the edges in our search's order. ACDC visits `sorted(model.edges, key=receiver
    layer, reverse=True)`, and `model.edges` is a set, whose order within a layer changes from
    process to process (Python's string hashing), and with it what ACDC keeps. As a list in the
    order `cs.search` tries them (receivers from the output backwards, each port's senders
    latest first), ACDC's run repeats, and both methods visit the edges in the same order."""
    order = [(u, v, p) for v in reversed(graph.order) for p, ups in graph.ports(v).items()
             for u in reversed(ups)]
    rank = {t: i for i, t in enumerate(order)}
    model.edges = sorted(model.edges, key=lambda e: min(rank[t] for t in tracr.triples(e.name)))


def kept_names(prune_scores: dict, model, k: int | None = None, inf: bool = False) -> set[str]:
    """Edges whose score is infinite (ACDC: never removed), or the top k by |score| (EAP)."""
    vals = {e.name: float(e.prune_score(prune_scores)) for e in model.edges}
    if inf:
        return {n for n, v in vals.items() if v == float("inf")}
    assert k is not None
    return set(sorted(vals, key=lambda n: (-abs(vals[n]), n))[:k])


# ---- the comparison -------------------------------------------------------------------------------


def run(name: str, thresholds=THRESHOLDS, taus=TAUS, tolerances=()) -> dict:
    t_start = time.perf_counter()
    task = TASKS[name]()
    exp, graph = task.exp, task.graph
    model = graph.module
    universe = ac_universe(graph)
    always = always_kept(graph)
    rows_ac = ac_rows(len(exp.dataset))

    tl_model = hooked_transformer(model)
    check = exp.dataset["tokens"][rows_ac[:N_PARITY]]  # [64, pos]
    diff = parity(model, tl_model, check)
    diff_unmasked = parity(model, hooked_transformer(model, mask_pad=False), check)
    assert diff < 1e-4, f"TransformerLens logits differ from ours by {diff:.2e}"
    probe, _ = auto_circuit_setup(task, rows_ac[:N_PARITY])
    with torch.inference_mode():
        diff_patchable = float((probe(check)[probe.out_slice] - model(check)).abs().max())
    assert diff_patchable < 1e-4, f"the patchable model's logits differ by {diff_patchable:.2e}"
    theirs = sorted(e.name for e in probe.edges)
    same_universe = sorted(universe) == theirs
    rows: list[dict] = []

    for threshold, steps in [(t, s) for s in ((), *([tolerances] if tolerances else []))
                             for t in thresholds]:
        t0 = time.perf_counter()
        found = cs.search(graph, exp.dataset, exp.loss_fn, threshold=threshold, n=N, seed=SEED,
                          tolerances=steps, schedule="greedy")
        seconds = time.perf_counter() - t0
        kept = {(e.sender, e.receiver, e.port) for e in found.kept}
        names = {ac_name(t) for t in kept} - {None}
        heads = {v for u, v, p in kept if p in ("q", "k", "v")}
        mask_removed = sorted(f"{u} -> {v}.{p}" for u, v, p in always - kept
                              if u == "pad_mask" and v in heads)
        h = found.heldout
        setting = f"T = {threshold}" + (f", tolerances {', '.join(map(str, steps))}" if steps else "")
        rows.append({"method": "search", "setting": setting, "seconds": seconds,
                     "kept": len(names), "kept_triples": len(kept), "recovered": h.loss_recovered,
                     "ci": list(h.ci), "search_rows_recovered": found.loss_recovered,
                     "mask_removed": mask_removed, "edges": sorted(names)})

    acdc = tracr.auto_circuit("auto_circuit.prune_algos.ACDC")
    for tau in taus:
        ac_model, loader = auto_circuit_setup(task, rows_ac)
        in_search_order(ac_model, graph)
        base, exponent = f"{tau:.0e}".split("e")
        t0 = time.perf_counter()
        ps = acdc.acdc_prune_scores(ac_model, loader, None, tao_exps=[int(exponent)],
                                    tao_bases=[int(base)], faithfulness_target="kl_div")
        seconds = time.perf_counter() - t0
        names = kept_names(ps, ac_model, inf=True)
        rows.append({"method": "ACDC", "setting": f"tau = {tau:g}", "seconds": seconds,
                     "kept": len(names), **scored(task, names), "edges": sorted(names)})

    mask_gradient = tracr.auto_circuit("auto_circuit.prune_algos.mask_gradient")
    ac_model, loader = auto_circuit_setup(task, rows_ac)
    t0 = time.perf_counter()
    ps = mask_gradient.mask_gradient_prune_scores(ac_model, loader, None, grad_function="logit",
                                                  answer_function="avg_diff", mask_val=0.0)
    seconds = time.perf_counter() - t0
    sizes = sorted({r["kept"] for r in rows} | set(EXTRA_K))
    for i, k in enumerate(sizes):
        names = kept_names(ps, ac_model, k=k)
        rows.append({"method": "EAP", "setting": f"top {k}", "seconds": seconds if i == 0 else 0.0,
                     "kept": len(names), **scored(task, names), "edges": sorted(names)})

    total = {m: sum(r["seconds"] for r in rows if r["method"] == m) for m in ("search", "ACDC", "EAP")}
    return {"experiment": name, "n_edges": len(universe), "n_graph_edges": len(graph_edges(graph)),
            "same_universe": same_universe, "only_ours": sorted(set(universe) - set(theirs)),
            "only_theirs": sorted(set(theirs) - set(universe)), "always_kept": sorted(map(str, always)),
            "parity": {"masked": diff, "unmasked": diff_unmasked, "patchable": diff_patchable,
                       "rows": N_PARITY},
            "settings": {"N": N, "N_AC": N_AC, "thresholds": list(thresholds), "taus": list(taus),
                         "tolerances": list(tolerances), "seed": SEED},
            "rows": rows, "seconds": total, "total_seconds": time.perf_counter() - t_start}


def table(result: dict) -> str:
    p = result["parity"]
    universe = ("the same" if result["same_universe"] else
                f"NOT the same (only ours: {result['only_ours']}, only auto-circuit's: "
                f"{result['only_theirs']})")
    lines = [
        f"{result['experiment']}: {result['n_edges']} auto-circuit component edges; edge "
        f"universes {universe}. Our graph has {result['n_graph_edges']} edges: `Resid Start` is "
        f"`embed` + `pos_embed`, and {len(result['always_kept'])} input (and padding-mask) "
        "edges, always kept for ACDC and EAP.",
        f"TransformerLens logits at the read position vs ours on {p['rows']} rows: max |diff| "
        f"{p['masked']:.1e} (patchable model {p['patchable']:.1e}; without a pad-key mask "
        f"{p['unmasked']:.1e}).",
        f"search: n = {result['settings']['N']} search rows; ACDC and EAP: one batch of "
        f"{result['settings']['N_AC']} clean/corrupt pairs; every kept set scored on the same "
        f"{result['settings']['N']} reference rows (seed {result['settings']['seed']}).", "",
        "| method | setting | kept | loss recovered [95% CI] | seconds | note |",
        "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        rec = f"{100 * r['recovered']:.1f}% [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"
        secs = f"{r['seconds']:.1f}" if r["seconds"] else ""
        note = ""
        if r["method"] == "search":
            note = f"{r['kept_triples']} triples"
            if r["mask_removed"]:
                note += "; removed " + ", ".join(r["mask_removed"])
        lines.append(f"| {r['method']} | {r['setting']} | {r['kept']} / {result['n_edges']} | "
                     f"{rec} | {secs} | {note} |")
    lines += ["", "wall time, all settings: " + ", ".join(
        f"{m} {v:.1f} s" for m, v in result["seconds"].items())
        + f"; whole script {result['total_seconds']:.0f} s",
        "(search's time includes scoring its result on the reference rows; EAP's is one "
        "gradient pass for every k)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=sorted(TASKS), default="paren")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--taus", type=float, nargs="*", default=TAUS, help="none: no ACDC")
    parser.add_argument("--tolerances", type=float, nargs="*", default=TOLERANCES,
                        help="the search at each threshold again with these per-step tolerances "
                             "(none: not)")
    parser.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # auto-circuit's and TransformerLens's deprecation notices
    result = run(args.experiment, args.thresholds, args.taus, tuple(args.tolerances))
    print(table(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
