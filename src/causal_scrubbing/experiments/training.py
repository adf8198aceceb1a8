"""What the bundled models' training scripts share: their command line, a progress bar over
steps, and how a finished run is written (checkpoint + JSON log of the evaluation history).

Evaluations are logged with `logging` (INFO), never printed, and while a bar is shown the log
lines are written above it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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


def steps(n: int, progress: bool) -> tqdm:
    """Steps 1..n, with a progress bar unless `progress` is false.

    >>> list(steps(3, progress=False))
    [1, 2, 3]
    """
    return tqdm(range(1, n + 1), desc="training", unit="step", disable=not progress,
                dynamic_ncols=True)


def finish(model: Transformer, out: Path, settings: dict, history: list[dict]) -> dict:
    """Save the model and `out_train_log.json`; return the last evaluation."""
    model.eval()
    model.save(out)
    out.with_name(out.name + "_train_log.json").write_text(
        json.dumps({**settings, "history": history}, indent=1))
    return history[-1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
