"""Train the 2-layer attention-only Shortformer LM on the King James Bible until induction
heads form (deterministic from a seed, CPU, about an hour).

Natural text alone did not form induction heads in the time available here, so the training
mix is a curriculum that rewards copying: every batch holds natural 128-token windows of the
training split, half of them with 1-3 spans of 8-40 tokens copied from earlier in the same
window, plus 20% sequences of uniformly random tokens repeated (a 16-64 token block, then
copies of it). The log records, every `--eval-every` steps, the validation loss on natural
text and the *induction gap*: the loss on the first and on the second copy of 64 random tokens.

    python -m causal_scrubbing.experiments.induction.train --out src/causal_scrubbing/checkpoints/induction
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

from ...models import Config, Transformer
from ..training import finish, parser, setup_logging
from ..training import steps as progress_steps
from .data import load_tokens

log = logging.getLogger(__name__)

CTX = 128
CONFIG = Config(n_layers=2, d_model=128, n_heads=8, d_head=16, d_mlp=None, d_vocab=2048,
                n_ctx=CTX, positional_embedding_type="shortformer", attention_dir="causal",
                attn_bias=False, head="lm")


def batch(tokens: torch.Tensor, n: int, g: torch.Generator, p_synthetic: float = 0.2,
          p_copy: float = 0.5) -> torch.Tensor:
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


def train(out: Path, seed: int = 0, steps: int = 16000, batch_size: int = 32, lr: float = 1e-3,
          eval_every: int = 1000, progress: bool = False) -> dict:
    torch.manual_seed(seed)
    model = Transformer(CONFIG)
    tokens, val = load_tokens("train"), load_tokens("val")
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    history, start = [], time.time()
    bar = progress_steps(steps, progress)
    for step in bar:
        x = batch(tokens, batch_size, g)
        loss = F.cross_entropy(model(x[:, :-1]).transpose(1, 2), x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            row = {"step": step, "seconds": round(time.time() - start, 1),
                   "train_loss": float(loss.detach()), "val_loss": val_loss(model, val),
                   **induction_gap(model)}
            model.train()
            history.append(row)
            log.info(json.dumps(row))
            bar.set_postfix(val_loss=f"{row['val_loss']:.3f}", gap=f"{row['gap']:.2f}")
    return finish(model, out, {"seed": seed, "steps": steps, "batch": batch_size, "lr": lr},
                  history)


def main() -> None:
    args = parser(__doc__, steps=16000, batch=32, lr=1.5e-3).parse_args()
    setup_logging()
    with logging_redirect_tqdm():
        final = train(args.out, args.seed, args.steps, args.batch, args.lr, args.eval_every,
                      progress=not args.quiet)
    print(json.dumps(final, indent=1))


if __name__ == "__main__":
    main()
