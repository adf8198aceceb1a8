"""Finding the circuit in our paren model: which heads do what Redwood's 1.0, 2.0 and 2.1 do.

Three kinds of evidence, all computed on the Redwood-like distribution:

- **Path scrubbing** (`path_table`): for every head and MLP, resample only some of its paths
  to the output -- all paths through it, its direct path, or its path into the last MLP --
  uniformly or conditioned on a candidate feature (count test; count test and first paren;
  horizon test; balanced), keeping everything else. A node whose paths can be resampled
  within a feature class without hurting the loss computes (at most) that feature, as far
  as those paths are concerned.
- **Direct effect on the logit difference** (`direct_logit_table`): each node's direct
  contribution to logit(balanced) - logit(unbalanced) through the final LayerNorm (its scale
  taken from the full residual), averaged per category of string.
- **Attention** (`attention_table`): where each head attends from position 0 (the classifier
  position) and from position 1.

`python -m causal_scrubbing.experiments.paren.analysis` prints all three as Markdown (the
source of docs/paren_circuit.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...core.data import Dataset
from ...core.hypothesis import InterpNode
from ...core.names import head_name, mlp_name
from ...core.paths import Matcher, direct, through
from ...core.samplers import Exact, SameFeature, Uniform
from ...models import LayerNorm, RMSNorm, Transformer
from ...scrubbing import scrub_many
from . import data as paren_data
from . import features as f

FEATURES = {
    "uniform": None,
    "count": f.count_test,
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
            names.append(mlp_name(layer))
    return names


def path_table(model: Transformer, ds: Dataset, loss_fn, matcher_for: Callable[[str], Matcher],
               nodes: list[str], n: int = 4000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Scrubbed loss when only the paths `matcher_for(node)` are resampled (per feature),
    everything else kept exactly."""
    hyps = {}
    for node in nodes:
        for fname, feat in FEATURES.items():
            sampler = Uniform() if feat is None else SameFeature(feat, name=fname)
            hyps[f"{node}|{fname}"] = InterpNode("out", Exact(), other=Exact(), children=[
                InterpNode(node, sampler, paths=matcher_for(node))])
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
    assert isinstance(ln, (LayerNorm, RMSNorm))  # the final norm has a scale w and an eps
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
    ds, nodes = exp.dataset, writers(model)
    last_mlp = mlp_name(model.cfg.n_layers - 1)
    ref = ds.rows(torch.arange(4000))
    with torch.inference_mode():
        model_loss = float(exp.loss_fn(model(ref["tokens"]), ref).mean())
    print(f"Model loss {model_loss:.2e}; losses below are means over 4000 reference rows, seed 0."
          "\n\n## Scrubbed loss when every path through the node is resampled\n")
    print(markdown(path_table(model, ds, exp.loss_fn, lambda x: through(x), nodes)))
    print("\n## Scrubbed loss when only the node's direct path to the output is resampled\n")
    print(markdown(path_table(model, ds, exp.loss_fn, lambda x: direct(x), nodes)))
    print(f"\n## Scrubbed loss when only the node's direct path into {last_mlp} is resampled\n")
    print(markdown(path_table(model, ds, exp.loss_fn,
                              lambda x: direct(last_mlp).then(x, direct=True), nodes[:-1])))
    print("\n## Direct effect on logit(balanced) - logit(unbalanced), mean per category\n")
    print(markdown(direct_logit_table(model, ds.rows(torch.arange(8000))), "{:+.2f}"))
    print("\n## Attention (mean pattern mass, from query position to key positions)\n")
    print(markdown(attention_table(model, ds.rows(torch.arange(8000)))))


if __name__ == "__main__":
    main()
