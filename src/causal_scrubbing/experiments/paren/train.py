"""Train the parentheses-balance classifier deterministically from a seed (CPU, ~30 minutes).

The model matches Redwood's: 3 layers, 2 heads (d_head 28), d_model 56, MLP 56 with ReLU,
bidirectional attention with padding masked out, learned positional embedding, classifier
read at position 0 (class 1 = balanced). Training data: the Redwood-like distribution plus
extra balanced strings and the two kinds of near misses (see `data`), drawn once from the
seed. The checkpoint is written to `--out` (`.safetensors` + `.json`) with a JSON log.

    python -m causal_scrubbing.experiments.paren.train --out src/causal_scrubbing/checkpoints/paren
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

from ...models import Config, Transformer
from ..training import Shuffled, finish, fit, parser, setup_logging
from . import data

log = logging.getLogger(__name__)

CONFIG = Config(n_layers=3, d_model=56, n_heads=2, d_head=28, d_mlp=56, d_vocab=5,
                d_vocab_out=2, n_ctx=data.N_CTX, act_fn="relu", attention_dir="bidirectional",
                pad_token=data.PAD, head="classifier", classifier_pos=0)


def training_set(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [n, 42] and labels [n]: 55% Redwood-like, 15% balanced, 15% swap, 15% extra."""
    k = [int(n * 0.55), int(n * 0.15), int(n * 0.15)]
    k.append(n - sum(k))
    rng = torch.Generator().manual_seed(seed)
    balanced = []
    import numpy as np

    np_rng = np.random.default_rng(seed + 11)
    for length in np_rng.choice(data.LENGTHS, size=k[1]):
        balanced.append(data.sample_category(np_rng, "balanced", int(length), 1)[0])
    rows = (data.redwood_like(k[0], seed) + balanced + data.near_misses(k[2], seed + 1, "swap")
            + data.near_misses(k[3], seed + 2, "extra"))
    tokens = data.encode(rows)
    perm = torch.randperm(len(tokens), generator=rng)
    tokens = tokens[perm]
    return tokens, data.is_balanced(tokens).long()


def evaluation_sets(seed: int = 12345, n: int = 20000) -> dict[str, torch.Tensor]:
    """Held-out token sets: the Redwood-like distribution and each near-miss kind."""
    return {"redwood_like": data.encode(data.redwood_like(n, seed)),
            "swap": data.encode(data.near_misses(n // 4, seed + 1, "swap")),
            "extra": data.encode(data.near_misses(n // 4, seed + 2, "extra"))}


@torch.inference_mode()
def evaluate(model: Transformer, sets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per category (and mean loss on the Redwood-like set)."""
    model.eval()
    out: dict[str, float] = {}
    for name, tokens in sets.items():
        labels = data.is_balanced(tokens).long()
        logits = torch.cat([model(tokens[i:i + 4096]) for i in range(0, len(tokens), 4096)])
        correct = logits.argmax(-1) == labels
        out[f"{name}/acc"] = float(correct.float().mean())
        out[f"{name}/loss"] = float(F.cross_entropy(logits, labels))
        if name == "redwood_like":
            cats = data.category(tokens)
            for c, cname in enumerate(data.CATEGORIES):
                out[f"redwood_like/{cname}/acc"] = float(correct[cats == c].float().mean())
    model.train()
    return out


def train(out: Path, seed: int = 0, steps: int = 20000, batch: int = 256, lr: float = 3e-3,
          n_train: int = 1_000_000, eval_every: int = 1000, progress: bool = False) -> dict:
    torch.manual_seed(seed)
    model = Transformer(CONFIG)
    tokens, labels = training_set(seed, n_train)
    sets = evaluation_sets()
    batches = Shuffled(len(tokens), batch, seed + 1)

    def loss_at(step: int) -> torch.Tensor:
        idx = batches.next()
        return F.cross_entropy(model(tokens[idx]), labels[idx])

    history = fit(model, steps, lr, loss_at, lambda: evaluate(model, sets), eval_every=eval_every,
                  progress=progress, show=["redwood_like/acc"])
    return finish(model, out, {"seed": seed, "steps": steps, "batch": batch, "lr": lr,
                               "n_train": n_train}, history)


def main() -> None:
    cli = parser(__doc__, steps=14000, batch=256, lr=3e-3)
    cli.add_argument("--n-train", type=int, default=1_000_000)
    args = cli.parse_args()
    setup_logging()
    with logging_redirect_tqdm():
        final = train(args.out, args.seed, args.steps, args.batch, args.lr, args.n_train,
                      args.eval_every, progress=not args.quiet)
    print(json.dumps(final, indent=1))


if __name__ == "__main__":
    main()
