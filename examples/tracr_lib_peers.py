"""The tracr library suite, other methods: ACDC and edge attribution patching against the true circuit.

For every program of `experiments.tracr.programs.PROGRAMS` (or those named on the command
line) this runs auto-circuit's ACDC (`acdc_prune_scores`, once per tau in TAUS; faithfulness:
KL divergence for a categorical output, MSE for a numerical one) and edge attribution patching
(`mask_gradient_prune_scores`, `grad_function="logit"`, `mask_val=0`; answer function
`avg_diff` or `mse`), as examples/tracr_search.py does for auto-circuit's own two models, and
scores each kept set against the program's true circuit in auto-circuit's edge names
(component level: `Resid Start` is `embed` and `pos_embed`): precision and recall at ACDC's
tau = 1e-3 (its default order of magnitude) and at EAP's top k for k the size of the true
circuit, and each method's ROC area over all its settings.

auto-circuit patches a TransformerLens model: `hooked_transformer` builds one with the
compiled model's weights, with examples/peers.py's hook that masks padding keys (which
TransformerLens does not), and checks that its logits are ours. Every distinct input of the
program is a clean prompt, paired with another drawn at random as its corrupt prompt (seeded).

    python examples/tracr_lib_peers.py [names...]
"""

from __future__ import annotations

import argparse
import random
import time
import warnings

import torch
from peers import mask_pad_keys  # examples/peers.py: the padding-key mask for TransformerLens
from tracr_lib import auc

import causal_scrubbing as cs
from causal_scrubbing.experiments import tracr
from causal_scrubbing.experiments.tracr import programs
from causal_scrubbing.experiments.tracr.compile import component_edges

TAUS = tuple(sorted(b * 10.0 ** e for b in (1, 3) for e in range(-6, 1)))
TAU_REPORTED = 1e-3


def hooked_transformer(model: cs.models.Transformer):
    """A TransformerLens model with `model`'s weights (no normalisation, logits at every
    position), set up for auto-circuit, masking padding keys."""
    tracr.auto_circuit("auto_circuit")  # TransformerLens 3's key-value cache alias first
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    c = model.cfg
    cfg = HookedTransformerConfig(
        n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads, d_head=c.d_head, d_mlp=c.d_mlp,
        d_vocab=c.d_vocab, d_vocab_out=c.d_vocab_out, n_ctx=c.n_ctx, act_fn=c.act_fn,
        normalization_type=None, attention_dir=c.attention_dir, positional_embedding_type="standard",
        default_prepend_bos=False, use_attn_result=True, use_split_qkv_input=True,
        use_hook_mlp_in=True, device="cpu", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tl_model = HookedTransformer(cfg)
    weights = model.state_dict_tl()
    assert set(weights) == {n for n, _ in tl_model.named_parameters()}, "parameter names differ"
    tl_model.load_state_dict(weights, strict=False)
    for p in tl_model.parameters():
        p.requires_grad = False
    assert c.pad_token is not None
    mask_pad_keys(tl_model, c.pad_token)
    return tl_model.eval()


def setup(exp: programs.ProgramExperiment, seed: int = 0):
    """A fresh patchable model and one batch: every distinct input, each with a random other
    one as its corrupt prompt."""
    data = tracr.auto_circuit("auto_circuit.data")
    graph_utils = tracr.auto_circuit("auto_circuit.utils.graph_utils")
    assert exp.compiled is not None
    tl_model = hooked_transformer(exp.compiled.model)
    tokens, index = torch.unique(exp.dataset["tokens"], dim=0, return_inverse=True)
    first = torch.zeros(len(tokens), dtype=torch.long)
    first[index.flip(0)] = torch.arange(len(index)).flip(0)  # a row of each distinct input
    target = exp.dataset["target"][first]  # [n, L]
    with torch.no_grad():
        torch.testing.assert_close(tl_model(tokens), exp.compiled.model(tokens), atol=1e-4, rtol=1e-4)
    n = len(tokens)
    rng = random.Random(seed)
    other = [rng.choice([j for j in range(n) if j != i]) for i in range(n)]
    prompts = data.PromptDataset(list(tokens), [tokens[j] for j in other],
                                 [target[i][:, None] for i in range(n)],
                                 [target[j][:, None] for j in other])
    loader = data.PromptDataLoader(prompts, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)
    model = graph_utils.patchable_model(tl_model, factorized=True, slice_output="not_first_seq",
                                        separate_qkv=True, device=torch.device("cpu"))
    # `model.edges` is a set: ACDC's order within a layer, and with it what ACDC keeps, would
    # follow Python's string hashing from process to process; a sorted list repeats
    model.edges = sorted(model.edges, key=lambda e: (e.name, e.seq_idx))
    return model, loader


def run(name: str) -> dict:
    exp = programs.build(name)
    assert exp.compiled is not None and exp.search_graph is not None
    categorical = exp.compiled.categorical
    true = {tracr.edge_name(t) for t in component_edges(exp.true_edges)}
    model, loader = setup(exp)
    universe = {e.name for e in model.edges}
    assert true <= universe, sorted(true - universe)
    negatives = max(1, len(universe - true))

    def point(found: set) -> tuple[float, float, float]:  # precision, recall, fpr
        tp = len(found & true)
        return (tp / len(found) if found else 1.0, tp / len(true), len(found - true) / negatives)

    acdc = tracr.auto_circuit("auto_circuit.prune_algos.ACDC")
    acdc_points, acdc_at, acdc_s = [], None, 0.0
    for tau in TAUS:
        model, loader = setup(exp)
        base, exponent = f"{tau:.0e}".split("e")
        t0 = time.perf_counter()
        ps = acdc.acdc_prune_scores(model, loader, None, tao_exps=[int(exponent)], tao_bases=[int(base)],
                                    faithfulness_target="kl_div" if categorical else "mse")
        acdc_s += time.perf_counter() - t0
        found = {e.name for e in model.edges if float(e.prune_score(ps)) == float("inf")}
        p = point(found)
        acdc_points.append((p[2], p[1]))
        if tau == TAU_REPORTED:
            acdc_at = p

    mask_gradient = tracr.auto_circuit("auto_circuit.prune_algos.mask_gradient")
    model, loader = setup(exp)
    t0 = time.perf_counter()
    ps = mask_gradient.mask_gradient_prune_scores(model, loader, None, grad_function="logit",
                                                  answer_function="avg_diff" if categorical else "mse",
                                                  mask_val=0.0)
    eap_s = time.perf_counter() - t0
    ranked = sorted(model.edges, key=lambda e: (-abs(float(e.prune_score(ps))), e.name))
    eap_points = [point({e.name for e in ranked[:k]}) for k in range(len(ranked) + 1)]
    return {"name": name, "true": len(true), "universe": len(universe), "acdc": acdc_at,
            "acdc_auc": auc(acdc_points), "acdc_s": acdc_s, "eap": eap_points[len(true)],
            "eap_auc": auc([(p[2], p[1]) for p in eap_points]), "eap_s": eap_s}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # auto-circuit's and jax's deprecation notices
    print(f"| program | true edges | edges | ACDC P (tau {TAU_REPORTED:g}) | ACDC R | ACDC ROC area | "
          "ACDC s (all taus) | EAP P (top true) | EAP R | EAP ROC area | EAP s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names or list(programs.PROGRAMS):
        r = run(name)
        a, e = r["acdc"], r["eap"]
        print(f"| {name} | {r['true']} | {r['universe']} | {a[0]:.2f} | {a[1]:.2f} | {r['acdc_auc']:.3f} | "
              f"{r['acdc_s']:.1f} | {e[0]:.2f} | {e[1]:.2f} | {r['eap_auc']:.3f} | {r['eap_s']:.1f} |",
              flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="programs of the suite (default: all)")
    main(parser.parse_args().names)
