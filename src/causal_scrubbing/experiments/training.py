"""What the bundled models' training scripts share: their command line and how a finished
run is written (checkpoint + JSON log of the evaluation history)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..models import Transformer


def parser(doc: str, steps: int, batch: int, lr: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="checkpoint path (no suffix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--eval-every", type=int, default=1000)
    return p


def finish(model: Transformer, out: Path, settings: dict, history: list[dict]) -> dict:
    """Save the model and `out_train_log.json`; return the last evaluation."""
    model.eval()
    model.save(out)
    out.with_name(out.name + "_train_log.json").write_text(
        json.dumps({**settings, "history": history}, indent=1))
    return history[-1]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
