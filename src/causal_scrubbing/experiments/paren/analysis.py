"""Finding the circuit in our paren model: which heads do what Redwood's 1.0, 2.0 and 2.1 do.

Three kinds of evidence, all computed on the Redwood-like distribution:

- **Direct-path scrubbing** (`direct_path_table`): for every head and MLP, resample only its
  direct path to the output -- uniformly, or conditioned on a candidate feature (count test
  and first paren; horizon test; balanced) -- keeping everything else. A node whose direct
  path can be resampled within a feature class without hurting the loss computes (at most)
  that feature, as far as the output is concerned.
- **Direct effect on the logit difference** (`direct_logit_table`): each node's direct
  contribution to logit(balanced) - logit(unbalanced) through the final LayerNorm (its scale
  taken from the full residual), averaged per category of string.
- **Attention** (`attention_table`): where each head attends from position 0 (the classifier
  position) and from position 1.

`python -m causal_scrubbing.experiments.paren.analysis` prints all three as Markdown (the
source of docs/paren_circuit.md).
"""

from __future__ import annotations

import torch

from ...data import Dataset
from ...hypothesis import InterpNode
from ...metrics import scrub_many
from ...models import Transformer, head_name
from ...paths import direct
from ...samplers import Exact, SameFeature, Uniform
from . import data as paren_data
from . import features as f

FEATURES = {
    "uniform": None,
    "count & open": f.count_and_open,
    "horizon": f.horizon_test,
    "balanced": f.is_balanced,
}


def writers(model: Transformer) -> list[str]:
    cfg = model.cfg
    names = []
    for layer in range(cfg.n_layers):
        names += [head_name(layer, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            names.append(f"m{layer}")
    return names


def direct_path_table(model: Transformer, ds: Dataset, loss_fn, n: int = 4000,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Loss recovered when only node X's direct path is resampled (per feature)."""
    hyps = {}
    for node in writers(model):
        for fname, feat in FEATURES.items():
            sampler = Uniform() if feat is None else SameFeature(feat, name=fname)
            hyps[f"{node}|{fname}"] = InterpNode("out", Exact(), other=Exact(), children=[
                InterpNode(node, sampler, paths=direct(node))])
    res = scrub_many(model.graph(), hyps, ds, loss_fn, n=n, seed=seed)
    table: dict[str, dict[str, float]] = {}
    for key, r in res.items():
        node, fname = key.split("|")
        table.setdefault(node, {})[fname] = r.loss
    return table


@torch.inference_mode()
def direct_logit_table(model: Transformer, ds: Dataset) -> dict[str, dict[str, float]]:
    """Mean direct contribution of each node to the logit difference, per category."""
    g = model.graph()
    acts = g.run(ds)
    resid = acts.port_inputs[("out", "resid")][:, model.cfg.classifier_pos]  # [n, d]
    ln = model.ln_final
    scale = (resid.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    direction = (model.W_U[:, 1] - model.W_U[:, 0]) * ln.w  # [d]
    cats = paren_data.category(ds["tokens"])
    table = {}
    for node in writers(model):
        x = acts.outputs[node][:, model.cfg.classifier_pos]
        contrib = ((x - x.mean(-1, keepdim=True)) / scale) @ direction  # [n]
        table[node] = {name: float(contrib[cats == c].mean())
                       for c, name in enumerate(paren_data.CATEGORIES)}
    return table


@torch.inference_mode()
def attention_table(model: Transformer, ds: Dataset) -> dict[str, dict[str, float]]:
    """Mean attention from position 0 and from position 1 to START, position 1, the rest."""
    g = model.graph()
    acts = g.run(ds)
    out = {}
    for layer, block in enumerate(model.blocks):
        for h in range(model.cfg.n_heads):
            name = head_name(layer, h)
            q = acts.port_inputs[(name, "q")]
            k = acts.port_inputs[(name, "k")]
            pat = block.attn.pattern(block.ln1(q), block.ln1(k), model.key_mask(ds["tokens"]),
                                     heads=slice(h, h + 1))[:, 0]  # [n, q, k]
            out[name] = {
                "0->0": float(pat[:, 0, 0].mean()), "0->1": float(pat[:, 0, 1].mean()),
                "0->2+": float(pat[:, 0, 2:].sum(-1).mean()),
                "1->0": float(pat[:, 1, 0].mean()), "1->1+": float(pat[:, 1, 1:].sum(-1).mean()),
            }
    return out


def markdown(table: dict[str, dict[str, float]], fmt: str = "{:.3f}") -> str:
    cols = list(next(iter(table.values())))
    lines = ["| node | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for node, row in table.items():
        lines.append(f"| {node} | " + " | ".join(fmt.format(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    from . import build

    exp = build()
    model = exp.graph.module
    ds = exp.dataset
    print("## Direct-path scrubbing: scrubbed loss (model loss "
          f"{float(exp.loss_fn(model(ds['tokens'][:4000]), ds.rows(torch.arange(4000))).mean()):.4f})\n")
    print(markdown(direct_path_table(model, ds, exp.loss_fn)))
    print("\n## Direct effect on logit(balanced) - logit(unbalanced), mean per category\n")
    print(markdown(direct_logit_table(model, ds.rows(torch.arange(8000))), "{:+.2f}"))
    print("\n## Attention (mean pattern mass)\n")
    print(markdown(attention_table(model, ds.rows(torch.arange(8000)))))


if __name__ == "__main__":
    main()
