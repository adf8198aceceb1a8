"""Which of our heads are previous-token and induction heads.

On sequences of 64 uniformly random tokens repeated twice ([r, r]):

- **previous-token score**: mean attention from each position to the position before it;
- **induction score**: in the second copy, mean attention from position i to position
  i - 63 (the token just after the earlier copy of the current token);
- the **loss gap**: mean loss on the first copy minus on the second copy.

`python -m causal_scrubbing.experiments.induction.analysis` prints them as Markdown.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data import Dataset
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
            name = f"a{layer}.h{h}"
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


def main() -> None:
    model = load("induction")
    s = head_scores(model)
    print(f"Loss on 64 random tokens: first copy {s['first_copy']:.2f}, second copy "
          f"{s['second_copy']:.2f} (gap {s['gap']:.2f} nats)\n")
    print("| head | previous-token | induction |\n|---|---|---|")
    for name, row in s["heads"].items():
        print(f"| {name} | {row['previous-token']:.3f} | {row['induction']:.3f} |")


if __name__ == "__main__":
    main()


def training_svg(history: list[dict], width: int = 640, height: int = 300) -> str:
    """A self-contained SVG of validation loss and the induction gap against training step."""
    steps = [r["step"] for r in history]
    series = {"validation loss (nats)": ([r["val_loss"] for r in history], "#1f77b4"),
              "induction gap (nats)": ([r["gap"] for r in history], "#d62728")}
    top = max(max(v) for v, _ in series.values()) * 1.05
    x0, y0, w, h = 50, 20, width - 70, height - 60

    def xy(step: float, value: float) -> str:
        return f"{x0 + w * step / max(steps):.1f},{y0 + h * (1 - value / top):.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    for tick in range(0, int(top) + 1, 2):
        y = y0 + h * (1 - tick / top)
        parts.append(f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for step in (0, max(steps) // 2, max(steps)):
        parts.append(f'<text x="{x0 + w * step / max(steps):.1f}" y="{y0 + h + 16}" '
                     f'text-anchor="middle">{step}</text>')
    parts.append(f'<text x="{x0 + w / 2}" y="{height - 8}" text-anchor="middle">training step'
                 '</text>')
    for i, (label, (values, colour)) in enumerate(series.items()):
        points = " ".join(xy(s, v) for s, v in zip(steps, values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts.append(f'<text x="{x0 + 10}" y="{y0 + 16 + 16 * i}" fill="{colour}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
