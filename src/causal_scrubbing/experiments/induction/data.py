"""Induction data: KJV token windows, the tokenizer, and induction candidates.

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

from ...errors import missing_extra

HERE = Path(__file__).parent
SEQ = 128


def load_tokens(split: str) -> Tensor:
    return torch.from_numpy(np.load(HERE / f"tokens_{split}.npy").astype(np.int64))


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
    eq = tokens[:, :, None] == tokens[:, None, :]  # [n, i, j]
    earlier = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril(-1)
    return (eq & earlier).any(-1)


@cache
def good_candidates(vocab: int = 2048) -> Tensor:
    """[vocab] bool: tokens for which copying beats the best bigram guess on training data."""
    tokens = load_tokens("train")
    # bigram: the most likely next token's probability, per token
    counts = torch.zeros(vocab, vocab, dtype=torch.float64)
    counts.index_put_((tokens[:-1], tokens[1:]), torch.ones(len(tokens) - 1, dtype=torch.float64),
                      accumulate=True)
    bigram_top = counts.max(1).values / counts.sum(1).clamp_min(1)
    # copying: in 128-token windows, at each recurrence of A, does the token after A's most
    # recent earlier occurrence equal the true next token?
    hits = torch.zeros(vocab, dtype=torch.float64)
    seen = torch.zeros(vocab, dtype=torch.float64)
    w = windows(tokens, SEQ + 1, SEQ)
    for rows in w.split(1024):
        x, nxt = rows[:, :-1], rows[:, 1:]
        eq = x[:, :, None] == x[:, None, :]  # [n, i, j]
        earlier = torch.ones(SEQ, SEQ, dtype=torch.bool).tril(-1)
        match = eq & earlier
        has = match.any(-1)
        last_j = (match * torch.arange(SEQ)).argmax(-1)  # most recent earlier occurrence
        copied = torch.gather(nxt, 1, last_j)
        ok = (copied == nxt) & has
        seen.index_add_(0, x[has], torch.ones(int(has.sum()), dtype=torch.float64))
        hits.index_add_(0, x[has], ok[has].double())
    copy_rate = hits / seen.clamp_min(1)
    return (copy_rate > bigram_top) & (seen >= 5)
