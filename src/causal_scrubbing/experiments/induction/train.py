"""Train the 2-layer attention-only Shortformer LM (Redwood's shape: 8 heads, d_model 256,
context 256) on the prepared corpus until induction heads form (deterministic from a seed, CPU).

Training uses a curriculum that rewards copying and hands over to natural text: batches hold
sequences of uniformly random tokens repeated (a 16-64 token block, then copies of it;
`--synthetic`, default 40%), natural 256-token windows of the training split with 1-3 spans of
8-40 tokens copied from earlier in the same window (`--copy`, 30%), and plain natural windows
(the rest). The shares hold until `--curriculum-hold` of the steps (default 0.5) and fall
linearly to zero at `--curriculum` (0.8); the last steps see natural text only. A gentler
curriculum (20% and 50% falling to zero at 60% of 6,000 steps) formed no induction heads
(docs/induction.md). The log records, every `--eval-every` steps, the validation loss on
natural text and the *induction gap*: the loss on the first and on the second copy of 64
random tokens.

    python -m causal_scrubbing.experiments.induction.train --out src/causal_scrubbing/checkpoints/induction
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

from ...models import Config, Transformer
from ..training import finish, fit, parser, setup_logging
from .data import load_tokens

log = logging.getLogger(__name__)

CTX = 256
CONFIG = Config(n_layers=2, d_model=256, n_heads=8, d_head=32, d_mlp=None, d_vocab=2048,
                n_ctx=CTX, positional_embedding_type="shortformer", attention_dir="causal",
                attn_bias=False, head="lm")


def batch(tokens: torch.Tensor, n: int, g: torch.Generator, p_synthetic: float,
          p_copy: float) -> torch.Tensor:
    """[n, CTX + 1] training sequences (see the module docstring)."""
    starts = torch.randint(0, len(tokens) - CTX - 1, (n,), generator=g)
    x = torch.stack([tokens[s:s + CTX + 1] for s in starts.tolist()])
    kind = torch.rand(n, generator=g)
    for i in range(n):
        if kind[i] < p_synthetic:
            length = int(torch.randint(16, 65, (1,), generator=g))
            block = torch.randint(0, CONFIG.d_vocab, (length,), generator=g)
            x[i] = block.repeat(CTX // length + 2)[:CTX + 1]
        elif kind[i] < p_synthetic + p_copy:
            for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
                length = int(torch.randint(8, 41, (1,), generator=g))
                src = int(torch.randint(0, CTX + 1 - 2 * length, (1,), generator=g))
                dst = int(torch.randint(src + length, CTX + 2 - length, (1,), generator=g))
                x[i, dst:dst + length] = x[i, src:src + length].clone()
    return x


@torch.inference_mode()
def induction_gap(model: Transformer, n: int = 64, half: int = 64, seed: int = 1) -> dict:
    """Mean loss on the first and second copy of `half` uniformly random tokens."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(0, CONFIG.d_vocab, (n, half), generator=g)
    x = torch.cat([r, r], dim=1)
    losses = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:], reduction="none")
    first, second = losses[:, : half - 1].mean(), losses[:, half:].mean()
    return {"first_copy": float(first), "second_copy": float(second),
            "gap": float(first - second)}


@torch.inference_mode()
def val_loss(model: Transformer, val: torch.Tensor, n: int = 128) -> float:
    starts = torch.linspace(0, len(val) - CTX - 2, n).long()
    x = torch.stack([val[s:s + CTX + 1] for s in starts.tolist()])
    return float(F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:]))


def curriculum(step: int, steps: int, until: float, hold: float = 0.0,
               shares: tuple[float, float] = (0.2, 0.5)) -> tuple[float, float]:
    """(share of repeated random sequences, share of windows with copied spans) at `step`:
    `shares` until `hold` of the steps, then falling linearly to zero at `until`.

    >>> curriculum(1, 100, 0.5), curriculum(50, 100, 0.5), curriculum(80, 100, 0.5)
    ((0.2, 0.5), (0.0, 0.0), (0.0, 0.0))
    >>> curriculum(40, 100, 0.8, hold=0.4), curriculum(60, 100, 0.8, 0.4, (0.3, 0.4))
    ((0.2, 0.5), (0.15, 0.2))
    """
    first = max(1.0, hold * steps)
    left = min(1.0, max(0.0, 1 - (step - first) / max(1.0, until * steps - first)))
    return round(shares[0] * left, 6), round(shares[1] * left, 6)


def train(out: Path, seed: int = 0, steps: int = 10000, batch_size: int = 16, lr: float = 2e-3,
          eval_every: int = 250, progress: bool = False, until: float = 0.8,
          train_tokens: Path | None = None, hold: float = 0.5,
          shares: tuple[float, float] = (0.4, 0.3)) -> dict:
    torch.manual_seed(seed)
    model = Transformer(CONFIG)
    val = load_tokens("val")
    tokens = (load_tokens("train") if train_tokens is None
              else torch.from_numpy(np.load(train_tokens).astype(np.int64)))
    g = torch.Generator().manual_seed(seed + 1)

    def loss_at(step: int) -> torch.Tensor:
        x = batch(tokens, batch_size, g, *curriculum(step, steps, until, hold, shares))
        return F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:])

    def metrics() -> dict:
        model.eval()
        row = {"val_loss": val_loss(model, val), **induction_gap(model)}
        model.train()
        return row

    history = fit(model, steps, lr, loss_at, metrics, eval_every=eval_every, pct_start=0.05,
                  progress=progress, show=["val_loss", "gap"])
    return finish(model, out, {"seed": seed, "steps": steps, "batch": batch_size, "lr": lr,
                                   "curriculum": until, "curriculum_hold": hold,
                                   "curriculum_shares": list(shares)},
                  history)


def main() -> None:
    p = parser(__doc__, steps=10000, batch=16, lr=2e-3)
    p.add_argument("--curriculum", type=float, default=0.8,
                   help="fraction of the steps after which batches are natural text only")
    p.add_argument("--curriculum-hold", type=float, default=0.5,
                   help="fraction of the steps during which the curriculum's shares stay at "
                        "their start (they fall to zero between this and --curriculum)")
    p.add_argument("--synthetic", type=float, default=0.4,
                   help="starting share of repeated random sequences in a batch")
    p.add_argument("--copy", type=float, default=0.3,
                   help="starting share of natural windows with spans copied within them")
    p.add_argument("--train-tokens", type=Path, default=None,
                   help="a .npy token stream to train on (default: the prepared training split)")
    args = p.parse_args()
    setup_logging()
    with logging_redirect_tqdm():
        final = train(args.out, args.seed, args.steps, args.batch, args.lr, args.eval_every,
                      progress=not args.quiet, until=args.curriculum,
                      train_tokens=args.train_tokens, hold=args.curriculum_hold,
                      shares=(args.synthetic, args.copy))
    print(json.dumps(final, indent=1))


if __name__ == "__main__":
    main()
