"""Which of our heads are previous-token and induction heads.

On sequences of 64 uniformly random tokens repeated twice ([r, r]):

- **previous-token score**: mean attention from each position to the position before it;
- **induction score**: in the second copy, mean attention from position i to position
  i - 63 (the token just after the earlier copy of the current token);
- the **loss gap**: mean loss on the first copy minus on the second copy.

On natural text (validation windows), for each layer-0 head (`same_token_attention`):

- **self**: mean attention from each position to itself;
- **earlier copies**: at positions whose token occurred earlier in the window, the mean
  attention to those earlier occurrences. A head with much of both is one Redwood's refined
  hypothesis treats as "attention is the identity".

`python -m causal_scrubbing.experiments.induction.analysis` prints them as Markdown;
`--curve FILE.svg` also draws the training log (validation loss and induction gap by step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...core.data import Dataset
from ...core.names import head_name
from ...models import Transformer, load


@torch.inference_mode()
def head_scores(model: Transformer, n: int = 64, half: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, model.cfg.d_vocab, (n, half), generator=g)
    tokens = torch.cat([r, r], dim=1)
    graph = model.graph()
    acts = graph.run(Dataset({"tokens": tokens}))
    scores = {}
    for layer, block in enumerate(model.blocks):
        for h in range(model.cfg.n_heads):
            name = head_name(layer, h)
            pat = block.attn.pattern(block.ln1(acts.port_inputs[(name, "q")]),
                                     block.ln1(acts.port_inputs[(name, "k")]), None,
                                     heads=slice(h, h + 1))[:, 0]  # [n, q, k]
            prev = pat.diagonal(offset=-1, dim1=1, dim2=2).mean()
            ind = pat[:, half:, :].diagonal(offset=1, dim1=1, dim2=2).mean()  # query half+t -> key t+1
            scores[name] = {"previous-token": float(prev), "induction": float(ind)}
    logits = model(tokens[:, :-1])
    losses = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    gap = float(losses[:, : half - 1].mean() - losses[:, half:].mean())
    return {"heads": scores, "first_copy": float(losses[:, : half - 1].mean()),
            "second_copy": float(losses[:, half:].mean()), "gap": gap}


@torch.inference_mode()
def same_token_attention(model: Transformer, tokens: torch.Tensor, layer: int = 0) -> dict:
    """{head: {"self", "earlier copies"}} on `tokens` [n, seq] (see the module docstring)."""
    graph = model.graph()
    acts = graph.run(Dataset({"tokens": tokens}))
    same = tokens[:, :, None] == tokens[:, None, :]  # [n, q, k]
    earlier = same & torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril(-1)
    has = earlier.any(-1)  # [n, q]: the token occurred earlier
    block, out = model.blocks[layer], {}
    for h in range(model.cfg.n_heads):
        name = head_name(layer, h)
        pat = block.attn.pattern(block.ln1(acts.port_inputs[(name, "q")]),
                                 block.ln1(acts.port_inputs[(name, "k")]), None,
                                 heads=slice(h, h + 1))[:, 0]  # [n, q, k]
        copies = (pat * earlier).sum(-1)[has].mean()
        out[name] = {"self": float(pat.diagonal(dim1=1, dim2=2).mean()),
                     "earlier copies": float(copies)}
    return out


def training_curve_svg(history: list[dict], width: int = 640, height: int = 300) -> str:
    """Validation loss and induction gap (nats) against the step, as a small SVG.

    >>> svg = training_curve_svg([{"step": 0, "val_loss": 7.0, "gap": 0.0},
    ...                           {"step": 100, "val_loss": 4.0, "gap": 3.0}])
    >>> svg.count("<polyline"), svg.startswith("<svg")
    (2, True)
    """
    x0, y0, w, h = 50, 20, width - 70, height - 60
    steps = [r["step"] for r in history]
    top = max(max(r["val_loss"] for r in history), max(r["gap"] for r in history), 1.0)
    top = float(int(top) + 1)
    sx = lambda s: x0 + w * (s - steps[0]) / max(1, steps[-1] - steps[0])
    sy = lambda v: y0 + h * (1 - v / top)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for v in range(0, int(top) + 1, max(1, int(top) // 5)):
        out.append(f'<text x="{x0 - 8}" y="{sy(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for s in (steps[0], steps[len(steps) // 2], steps[-1]):
        out.append(f'<text x="{sx(s):.1f}" y="{y0 + h + 16}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{x0 + w / 2}" y="{height - 8}" text-anchor="middle">step</text>')
    for key, color, label in (("val_loss", "#1f77b4", "validation loss (nats)"),
                              ("gap", "#d62728", "induction gap (nats)")):
        pts = " ".join(f"{sx(r['step']):.1f},{sy(r[key]):.1f}" for r in history)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        dy = 16 if key == "gap" else 0
        out.append(f'<text x="{x0 + w - 8}" y="{y0 + 16 + dy}" text-anchor="end" '
                   f'fill="{color}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> None:
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--curve", default=None, help="write the training curve to this SVG file")
    args = p.parse_args()
    if args.curve:
        log = Path(__file__).parents[2] / "checkpoints" / "induction_train_log.json"
        with open(args.curve, "w") as f:
            f.write(training_curve_svg(json.loads(log.read_text())["history"]))
    model = load("induction")
    s = head_scores(model)
    print(f"Loss on 64 random tokens: first copy {s['first_copy']:.2f}, second copy "
          f"{s['second_copy']:.2f} (gap {s['gap']:.2f} nats)\n")
    print("| head | previous-token | induction |\n|---|---|---|")
    for name, row in s["heads"].items():
        print(f"| {name} | {row['previous-token']:.3f} | {row['induction']:.3f} |")
    from . import dataset
    same = same_token_attention(model, dataset()["tokens"][:256])
    print("\nLayer 0 on validation text (256 windows):\n\n| head | self | earlier copies |\n|---|---|---|")
    for name, row in same.items():
        print(f"| {name} | {row['self']:.3f} | {row['earlier copies']:.3f} |")


if __name__ == "__main__":
    main()
