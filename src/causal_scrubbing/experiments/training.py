"""What the bundled models' training scripts share: the training loop itself (`fit`: AdamW with
a one-cycle schedule, gradients clipped to norm 1, an evaluation every few steps), shuffled
batches (`Shuffled`), their command line, a progress bar over steps, and how a finished run is
written (checkpoint + JSON log of the evaluation history).

Evaluations are logged with `logging` (INFO), never printed, and while a bar is shown the log
lines are written above it.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..models import Transformer


def parser(doc: str, steps: int, batch: int, lr: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (no suffix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def progress_steps(n: int, progress: bool) -> tqdm:
    """Steps 1..n, with a progress bar unless `progress` is false.

    >>> list(progress_steps(3, progress=False))
    [1, 2, 3]
    """
    return tqdm(range(1, n + 1), desc="training", unit="step", disable=not progress,
                dynamic_ncols=True)


log = logging.getLogger(__name__)


class Shuffled:
    """Batches of row indices [batch] of `n` rows, in an order reshuffled whenever a pass
    through the rows cannot fill the next batch.

    >>> b = Shuffled(5, 2, seed=0)
    >>> first, second = b.next(), b.next()
    >>> len(set(first.tolist()) | set(second.tolist()))  # one pass: no row twice
    4
    """

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch = n, batch
        self.order = torch.Generator().manual_seed(seed)
        self.perm, self.pos = torch.randperm(n, generator=self.order), 0

    def next(self) -> Tensor:
        if self.pos + self.batch > len(self.perm):
            self.perm, self.pos = torch.randperm(self.n, generator=self.order), 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


def fit(model: torch.nn.Module, steps: int, lr: float, loss_at: Callable[[int], Tensor],
        evaluate: Callable[[], dict], *, eval_every: int, pct_start: float = 0.1,
        progress: bool = False, show: Sequence[str] = ()) -> list[dict]:
    """Train `model` for `steps` steps; the evaluation history.

    Each step minimises `loss_at(step)` with AdamW (weight decay 0.01, betas (0.9, 0.98)) under
    a one-cycle learning-rate schedule peaking at `lr` after `pct_start` of the steps, with
    gradients clipped to norm 1. Every `eval_every` steps and at the last, `evaluate()` gives
    metrics, logged as JSON with the step, the seconds so far and the training loss; `show`
    names the metrics the progress bar displays.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=pct_start)
    history: list[dict] = []
    start = time.time()
    bar = progress_steps(steps, progress)
    for step in bar:
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            metrics = {"step": step, "seconds": round(time.time() - start, 1),
                       "train_loss": float(loss.detach()), **evaluate()}
            history.append(metrics)
            log.info(json.dumps(metrics))
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("train_loss", *show)})
    return history


def finish(model: Transformer, out: Path, settings: dict, history: list[dict]) -> dict:
    """Save the model and `out_train_log.json`; return the last evaluation."""
    model.eval()
    model.save(out)
    out.with_name(out.name + "_train_log.json").write_text(
        json.dumps({**settings, "history": history}, indent=1))
    return history[-1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
