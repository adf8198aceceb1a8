"""Finding the IOI circuit of a model: which heads move names, inhibit S, and detect duplicates.

The head classes of Wang et al. (2022) are defined by where a head attends and what it
writes. For a model that does IOI (the bundled one, or GPT-2 small), on the experiment's
prompts:

- **Attention** (`attention_table`): mean attention from END to the IO, to S1 and to S2
  (name movers attend to IO, S-inhibition heads to S2), from S2 to the IO, to S1
  (duplicate-token heads) and to the token after S1 (induction heads), and from every
  position to the one before it (previous-token heads).
- **Direct effect** (`direct_logit_table`): each head's direct contribution at END to the
  logit difference logit(IO) - logit(S), through the final LayerNorm (its scale taken from
  the full residual): positive for name movers, negative for negative name movers.
- **Path scrubbing** (`path_table`): the loss (-logit difference) when only the head's paths
  are resampled (all of them, or only its direct path to the logits), everything else kept:
  how much of the behaviour runs through the head at all.

`python -m causal_scrubbing.experiments.ioi.analysis` prints the three tables as Markdown for
the bundled model (the source of the circuit section of docs/ioi.md).
"""

from __future__ import annotations

import torch

from ...core.data import Dataset
from ...core.hypothesis import InterpNode
from ...core.names import head_name
from ...core.paths import direct, through
from ...core.samplers import Exact, Uniform
from ...models import LayerNorm, RMSNorm, Transformer
from ...scrubbing import scrub_many


def heads(model: Transformer) -> list[str]:
    return [head_name(layer, h) for layer in range(model.cfg.n_layers)
            for h in range(model.cfg.n_heads)]


@torch.inference_mode()
def attention_table(model: Transformer, ds: Dataset) -> dict[str, dict[str, float]]:
    """Mean attention of each head between the IOI positions (see the module docstring)."""
    acts = model.graph().run(ds)
    rows = torch.arange(len(ds))
    end, io, s1, s2 = ds["end_pos"], ds["io_pos"], ds["s1_pos"], ds["s2_pos"]  # [n] each
    table = {}
    for layer, block in enumerate(model.blocks):
        for h in range(model.cfg.n_heads):
            name = head_name(layer, h)
            pat = block.attn.pattern(block.ln1(acts.port_inputs[(name, "q")]),
                                     block.ln1(acts.port_inputs[(name, "k")]),
                                     model.key_mask(ds["tokens"]),
                                     heads=slice(h, h + 1))[:, 0]  # [n, q, k]
            table[name] = {
                "END->IO": float(pat[rows, end, io].mean()),
                "END->S1": float(pat[rows, end, s1].mean()),
                "END->S2": float(pat[rows, end, s2].mean()),
                "S2->IO": float(pat[rows, s2, io].mean()),
                "S2->S1": float(pat[rows, s2, s1].mean()),
                "S2->S1+1": float(pat[rows, s2, s1 + 1].mean()),
                "prev": float(pat.diagonal(offset=-1, dim1=1, dim2=2).mean()),
            }
    return table


@torch.inference_mode()
def direct_logit_table(model: Transformer, ds: Dataset) -> dict[str, dict[str, float]]:
    """Mean direct contribution of each head at END to logit(IO) - logit(S), per name order."""
    acts = model.graph().run(ds)
    rows = torch.arange(len(ds))
    end = ds["end_pos"]
    resid = acts.port_inputs[("out", "resid")]
    resid = resid[rows, end] if resid.dim() == 3 else resid  # [n, d] at END
    ln = model.ln_final
    assert isinstance(ln, (LayerNorm, RMSNorm))  # the final norm has a scale w and an eps
    if isinstance(ln, LayerNorm):
        scale = (resid.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()  # [n, 1]
    else:
        scale = (resid.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    direction = (model.W_U[:, ds["io"]] - model.W_U[:, ds["s"]]).T * ln.w  # [n, d]
    table = {}
    for name in heads(model):
        x = acts.outputs[name][rows, end]  # [n, d]
        if isinstance(ln, LayerNorm):
            x = x - x.mean(-1, keepdim=True)
        contrib = ((x / scale) * direction).sum(-1)  # [n]
        table[name] = {"ABBA": float(contrib[ds["order"] == 0].mean()),
                       "BABA": float(contrib[ds["order"] == 1].mean()),
                       "all": float(contrib.mean())}
    return table


def path_table(model: Transformer, ds: Dataset, loss_fn, n: int = 2000,
               seed: int = 0) -> dict[str, dict[str, float]]:
    """Mean loss when every path through the head (`through`), or only its direct path to
    the logits (`direct`), reads another prompt; everything else exact."""
    hyps = {"none": InterpNode("out", Exact())}
    for name in heads(model):
        for kind, matcher in (("through", through(name)), ("direct", direct(name))):
            hyps[f"{name}|{kind}"] = InterpNode("out", Exact(), other=Exact(), children=[
                InterpNode(name, Uniform(), paths=matcher)])
    res = scrub_many(model.graph(), hyps, ds, loss_fn, n=n, seed=seed)
    table: dict[str, dict[str, float]] = {}
    for key, r in res.items():
        if key == "none":
            continue
        name, kind = key.split("|")
        table.setdefault(name, {})[kind] = r.loss
    return table


def markdown(table: dict[str, dict[str, float]], fmt: str = "{:.3f}") -> str:
    cols = list(next(iter(table.values())))
    lines = ["| head | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for node, row in table.items():
        lines.append(f"| {node} | " + " | ".join(fmt.format(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    from . import build

    exp = build()
    model = exp.graph.module
    ref = exp.dataset.rows(torch.arange(4000))
    with torch.inference_mode():
        diff = -exp.loss_fn(model(ref["tokens"]), ref)
    print(f"Bundled IOI model: mean logit difference {float(diff.mean()):.2f} on 4000 prompts "
          f"(IO above S on {float((diff > 0).float().mean()):.1%}).\n")
    print("## Attention (mean probability, query -> key)\n")
    print(markdown(attention_table(model, ref)))
    print("\n## Direct effect on logit(IO) - logit(S) at END\n")
    print(markdown(direct_logit_table(model, ref), "{:+.2f}"))
    print("\n## Loss (-logit difference) when the head's paths read another prompt\n")
    print(f"(nothing resampled: {-float(diff.mean()):.3f})\n")
    print(markdown(path_table(model, exp.dataset, exp.loss_fn, n=2000), "{:+.3f}"))


if __name__ == "__main__":
    main()
