"""Train the bundled IOI model deterministically from a seed (CPU, a few minutes).

A small attention-only transformer (4 layers, 4 heads of d_head 16, d_model 64, LayerNorm,
learned positions, causal attention) over the word-level IOI vocabulary
(`WordTokenizer.for_ioi()`), trained on templated IOI prompts (`data.dataset`) with one
objective: cross-entropy of the indirect object at the last position, END. It has never seen
anything but these prompts, so whatever it computes is an IOI mechanism of its own; the
circuit it uses is found in `docs/ioi.md` with the analysis tools (`ioi.analysis`).

The training prompts are drawn from seeds the experiment never uses (the experiment's dataset
is drawn from seed 0, the evaluation set here from seed 12345), and the same names, places,
objects and templates as the experiment. The checkpoint is written to `--out`
(`.safetensors` + `.json`) with a JSON log of the evaluations.

    python -m causal_scrubbing.experiments.ioi.train --out src/causal_scrubbing/checkpoints/ioi
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.contrib.logging import logging_redirect_tqdm

from ...core.data import Dataset
from ...models import Config, Transformer
from ..training import Shuffled, finish, fit, parser, setup_logging
from . import data

log = logging.getLogger(__name__)

#: Seeds of the training prompts (one block of prompts per seed) start here; the experiment
#: draws its dataset from small seeds (0 by default).
TRAIN_SEED = 1_000_000
EVAL_SEED = 12345


def config(tokenizer: data.WordTokenizer, n_ctx: int) -> Config:
    """The bundled IOI model's shape."""
    return Config(n_layers=4, d_model=64, n_heads=4, d_head=16, d_mlp=None,
                  d_vocab=len(tokenizer), n_ctx=n_ctx, act_fn="relu")


@torch.inference_mode()
def evaluate(model: Transformer, ds: Dataset) -> dict[str, float]:
    """Cross-entropy of IO at END, the mean logit difference IO - S, and how often IO beats
    S (`acc`) and every other token (`top1`)."""
    model.eval()
    logits = torch.cat([model(ds["tokens"][i:i + 2048])[:, -1]
                        for i in range(0, len(ds), 2048)])  # [n, d_vocab]
    io, s = logits.gather(1, ds["io"][:, None])[:, 0], logits.gather(1, ds["s"][:, None])[:, 0]
    model.train()
    return {"loss": float(F.cross_entropy(logits, ds["io"])),
            "logit_diff": float((io - s).mean()),
            "acc": float((io > s).float().mean()),
            "top1": float((logits.argmax(-1) == ds["io"]).float().mean())}


def train(out: Path, seed: int = 0, steps: int = 6000, batch: int = 256, lr: float = 2e-3,
          n_train: int = 400_000, eval_every: int = 500, progress: bool = False) -> dict:
    tokenizer = data.WordTokenizer.for_ioi()
    ds = data.dataset(tokenizer, n_train, seed=TRAIN_SEED + seed)
    held_out = data.dataset(tokenizer, 8192, seed=EVAL_SEED)
    torch.manual_seed(seed)
    model = Transformer(config(tokenizer, ds["tokens"].shape[1]))
    batches = Shuffled(len(ds), batch, seed + 1)

    def loss_at(step: int) -> torch.Tensor:
        idx = batches.next()
        logits = model(ds["tokens"][idx])[:, -1]  # [batch, d_vocab] at END
        return F.cross_entropy(logits, ds["io"][idx])

    def held_out_metrics() -> dict:
        return {f"held_out/{k}": v for k, v in evaluate(model, held_out).items()}

    history = fit(model, steps, lr, loss_at, held_out_metrics, eval_every=eval_every,
                  progress=progress, show=["held_out/logit_diff"])
    return finish(model, out, {"seed": seed, "steps": steps, "batch": batch, "lr": lr,
                               "n_train": n_train, "vocabulary": tokenizer.words}, history)


def main() -> None:
    cli = parser(__doc__, steps=6000, batch=256, lr=2e-3)
    cli.add_argument("--n-train", type=int, default=400_000)
    args = cli.parse_args()
    setup_logging()
    with logging_redirect_tqdm():
        final = train(args.out, args.seed, args.steps, args.batch, args.lr, args.n_train,
                      args.eval_every, progress=not args.quiet)
    print(json.dumps(final, indent=1))


if __name__ == "__main__":
    main()
