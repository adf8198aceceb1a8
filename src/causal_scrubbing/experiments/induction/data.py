"""Induction data: token windows of the corpus (`prepare`), the tokenizer, and induction candidates.

A position i of a sequence is an **induction candidate** when its token occurred earlier in
the sequence: then "A B ... A -> B" copying can help predict the next token. We also
compute, from the training split, which tokens are **good candidates**: tokens A for which
copying helps beyond bigram statistics -- over training windows, at positions where A recurs,
the token that followed A's earlier occurrence is the true next token more often than the
most likely bigram continuation of A is (`good_candidates`). The behaviour is next-token loss
at candidate positions whose token is a good candidate.

Example:
    >>> import torch
    >>> from causal_scrubbing.experiments.induction import data
    >>> data.candidates(torch.tensor([[5, 6, 5, 7, 6, 5]])).tolist()
    [[False, False, True, False, True, True]]
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...core.errors import missing_extra

HERE = Path(__file__).parent
SEQ = 256


def load_tokens(split: str) -> Tensor:
    """The `split` ("train" or "val") token stream [n_tokens]. Only validation tokens ship;
    `prepare` rebuilds the training tokens."""
    path = HERE / f"tokens_{split}.npy"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build it with "
                                "python -m causal_scrubbing.experiments.induction.prepare")
    return torch.from_numpy(np.load(path).astype(np.int64))


def tokenizer():
    """The committed byte-level BPE tokenizer (needs the `tokenizers` package)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise missing_extra("tokenizers", "induction", "The induction tokenizer") from err
    return Tokenizer.from_file(str(HERE / "tokenizer.json"))


def windows(tokens: Tensor, length: int = SEQ + 1, stride: int = 16) -> Tensor:
    """Overlapping windows [n, length] of a token stream."""
    return tokens.unfold(0, length, stride).contiguous()


def candidates(tokens: Tensor) -> Tensor:
    """[n, seq] True where the token at i occurred at some j < i in the same row."""
    earlier = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril(-1)
    return torch.cat([((rows[:, :, None] == rows[:, None, :]) & earlier).any(-1)  # [rows, i, j]
                      for rows in tokens.split(512)]) if len(tokens) else tokens.bool()


@cache
def good_candidates(vocab: int = 2048) -> Tensor:
    """[vocab] bool: tokens for which copying beats the best bigram guess on training data
    (computed by `prepare` with `good_candidates_from` and committed)."""
    good = torch.from_numpy(np.load(HERE / "good_candidates.npy"))
    if good.shape != (vocab,):
        raise ValueError(f"good_candidates.npy holds {tuple(good.shape)} entries, not ({vocab},):"
                         " rebuild it with python -m causal_scrubbing.experiments.induction.prepare")
    return good


def good_candidates_from(tokens: np.ndarray, vocab: int) -> Tensor:
    """[vocab] bool from a training token stream: A is good when, over SEQ-token windows, at
    positions where A recurs, the token after A's most recent earlier occurrence is the true
    next token more often than A's most likely bigram continuation is (and A recurs at least
    5 times)."""
    stream = torch.from_numpy(tokens)
    # bigram: the most likely next token's probability, per token
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    counts.index_put_((stream[:-1], stream[1:]), torch.ones(len(stream) - 1, dtype=torch.float64),
                      accumulate=True)
    bigram_top = counts.max(1).values / counts.sum(1).clamp_min(1)
    hits = torch.zeros(vocab, dtype=torch.float64)
    seen = torch.zeros(vocab, dtype=torch.float64)
    earlier = torch.ones(SEQ, SEQ, dtype=torch.bool).tril(-1)
    for rows in windows(stream, SEQ + 1, SEQ).split(256):
        x, nxt = rows[:, :-1], rows[:, 1:]
        match = (x[:, :, None] == x[:, None, :]) & earlier  # [n, i, j]
        has = match.any(-1)
        last_j = (match * torch.arange(SEQ)).argmax(-1)  # most recent earlier occurrence
        ok = (torch.gather(nxt, 1, last_j) == nxt) & has
        seen.index_add_(0, x[has], torch.ones(int(has.sum()), dtype=torch.float64))
        hits.index_add_(0, x[has], ok[has].double())
    copy_rate = hits / seen.clamp_min(1)
    return (copy_rate > bigram_top) & (seen >= 5)
