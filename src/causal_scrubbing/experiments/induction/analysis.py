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
from ...names import head_name


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
