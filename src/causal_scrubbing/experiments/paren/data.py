"""Parenthesis strings for the balance checker, shaped like Redwood's distribution.

A string of 2-40 parens is tokenised as [START] + parens + [END] + [PAD]... to 42 positions
(vocabulary START=0, PAD=1, END=2, "("=3, ")"=4). It is *balanced* when it passes both

- the **count test**: as many opens as closes, and
- the **horizon test**: read right to left, no suffix has more opens than closes
  (equivalently, with equal counts, the nesting depth never goes negative).

`redwood_like` matches the shape of Redwood's dataset (their REMIX copy, 100k rows): even
lengths only, length 2 most common (11.7%), then falling to about 4.3% per length from 16 on;
about 26% balanced, with the balanced share falling with length (75% at length 2, 5% at 40);
unbalanced rows failing only the count test, only the horizon test, or both in the ratio
12.9 : 13.05 : 47.6. Within a (length, category) cell strings are uniform. On top of that,
*near misses* make a model check both conditions exactly: `swap` (a balanced string with one
reversed pair ")(" at depth 0: equal counts, depth dips to -1 exactly once) and `extra` (a balanced
string plus one inserted paren: odd length, counts off by one).

Example:
    >>> import numpy as np
    >>> from causal_scrubbing.experiments.paren import data
    >>> data.to_string(data.tokenize(["(())", ")("])[0])
    '(())'
    >>> data.is_balanced(data.tokenize(["(())", ")(", "(()"])).tolist()
    [True, False, False]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

START, PAD, END, OPEN, CLOSE = 0, 1, 2, 3, 4
N_CTX = 42
MAX_PARENS = 40
LENGTHS = np.arange(2, MAX_PARENS + 1, 2)
_LENGTH_WEIGHTS = np.array([11.7, 7.6, 6.0, 5.2, 4.7, 4.4, 4.2] + [56.2 / 13] * 13)
_BAL_POINTS = ([2, 4, 10, 20, 40], [0.747, 0.57, 0.286, 0.124, 0.048])
#: unbalanced categories and their shares of all rows in Redwood's data
UNBALANCED_SHARES = {"count_only": 0.129, "horizon_only": 0.1305, "both": 0.476}
CATEGORIES = ("balanced", "count_only", "horizon_only", "both")


def balanced_share(length: np.ndarray) -> np.ndarray:
    """Balanced fraction by length, interpolated (log-linearly) from Redwood's data."""
    x, y = _BAL_POINTS
    return np.exp(np.interp(length, x, np.log(y)))


def depths(parens: np.ndarray) -> np.ndarray:
    """Running nesting depth [n, L] for +1/-1 paren arrays [n, L]."""
    return np.cumsum(parens, axis=1)


def _uniform(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    return rng.choice(np.array([1, -1], dtype=np.int8), size=(n, length))


def _equal_counts(rng: np.random.Generator, n: int, length: int) -> np.ndarray:
    base = np.array([1] * (length // 2) + [-1] * (length // 2), dtype=np.int8)
    return rng.permuted(np.tile(base, (n, 1)), axis=1)


def _classify(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(passes count test, passes horizon test) for +1/-1 arrays [n, L]."""
    count_ok = p.sum(1) == 0
    suffix = np.cumsum(p[:, ::-1], axis=1)  # opens minus closes of each suffix
    horizon_ok = np.asarray((suffix <= 0).all(1))
    return count_ok, horizon_ok


def sample_category(rng: np.random.Generator, category: str, length: int, n: int) -> np.ndarray:
    """`n` uniform strings of `length` parens in `category`, as +1/-1 arrays [n, length]."""
    out: list[np.ndarray] = []
    have = 0
    while have < n:
        batch = max(64, 2 * (n - have))
        if category in ("balanced", "horizon_only"):
            cand = _equal_counts(rng, batch * (4 if category == "balanced" else 1), length)
        else:
            cand = _uniform(rng, batch * 4, length)
        count_ok, horizon_ok = _classify(cand)
        keep = {"balanced": count_ok & horizon_ok, "count_only": ~count_ok & horizon_ok,
                "horizon_only": count_ok & ~horizon_ok, "both": ~count_ok & ~horizon_ok}[category]
        out.append(cand[keep])
        have += int(keep.sum())
    return np.concatenate(out)[:n]


def redwood_like(n: int, seed: int) -> list[np.ndarray]:
    """`n` strings (as +1/-1 arrays) from the Redwood-like distribution."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice(LENGTHS, size=n, p=_LENGTH_WEIGHTS / _LENGTH_WEIGHTS.sum())
    unbal = np.array(list(UNBALANCED_SHARES.values()))
    rows: list[np.ndarray] = [np.empty(0)] * n
    for length in LENGTHS:
        idx = np.nonzero(lengths == length)[0]
        if len(idx) == 0:
            continue
        pb = balanced_share(np.array(length))
        probs = np.concatenate([[pb], (1 - pb) * unbal / unbal.sum()])
        cats = rng.choice(len(CATEGORIES), size=len(idx), p=probs)
        for c, name in enumerate(CATEGORIES):
            where = idx[cats == c]
            if len(where):
                for i, s in zip(where, sample_category(rng, name, int(length), len(where))):
                    rows[i] = s
    return rows


def near_misses(n: int, seed: int, kind: str) -> list[np.ndarray]:
    """`n` hard unbalanced strings: `swap` (one "()" -> ")(") or `extra` (one paren added)."""
    rng = np.random.default_rng(seed)
    rows = []
    if kind == "swap":
        # A balanced string with a reversed pair ")(" inserted where the depth is 0: equal
        # counts, and the depth dips to -1 exactly once.
        lengths = rng.choice(LENGTHS, size=n)
        for length in np.unique(lengths):
            k = int((lengths == length).sum())
            for s in sample_category(rng, "balanced", int(length) - 2, k) if length > 2 else (
                    np.zeros((k, 0), dtype=np.int8)):
                at_zero = np.concatenate([[0], np.nonzero(np.cumsum(s) == 0)[0] + 1])
                j = rng.choice(at_zero)
                rows.append(np.concatenate([s[:j], [-1, 1], s[j:]]).astype(np.int8))
    elif kind == "extra":
        lengths = rng.choice(LENGTHS[:-1], size=n)  # balanced part 2..38, then one more paren
        for length in np.unique(lengths):
            k = int((lengths == length).sum())
            for s in sample_category(rng, "balanced", int(length), k):
                j = rng.integers(0, len(s) + 1)
                rows.append(np.insert(s, j, rng.choice([1, -1])).astype(np.int8))
    else:
        raise ValueError(f"near-miss kind must be 'swap' or 'extra', got {kind!r}")
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def encode(rows: list[np.ndarray]) -> Tensor:
    """+1/-1 paren arrays -> token tensor [n, 42]."""
    tokens = np.full((len(rows), N_CTX), PAD, dtype=np.int64)
    tokens[:, 0] = START
    for i, s in enumerate(rows):
        tokens[i, 1:1 + len(s)] = np.where(s > 0, OPEN, CLOSE)
        tokens[i, 1 + len(s)] = END
    return torch.from_numpy(tokens)


def tokenize(strings: list[str]) -> Tensor:
    """Paren strings such as "(())" -> token tensor [n, 42]."""
    for s in strings:
        if set(s) - {"(", ")"} or not 1 <= len(s) <= MAX_PARENS:
            raise ValueError(f"{s!r}: use 1-{MAX_PARENS} characters, each '(' or ')'.")
    return encode([np.array([1 if c == "(" else -1 for c in s], dtype=np.int8) for s in strings])


def to_string(tokens: Tensor) -> str:
    return "".join("(" if t == OPEN else ")" for t in tokens.tolist() if t in (OPEN, CLOSE))


def parens(tokens: Tensor) -> Tensor:
    """+1 for "(", -1 for ")", 0 elsewhere: [n, 42]."""
    return (tokens == OPEN).long() - (tokens == CLOSE).long()


def count_test(tokens: Tensor) -> Tensor:
    return parens(tokens).sum(1) == 0


def horizon_test(tokens: Tensor) -> Tensor:
    suffix = parens(tokens).flip(1).cumsum(1)
    return (suffix <= 0).all(1)


def is_balanced(tokens: Tensor) -> Tensor:
    return count_test(tokens) & horizon_test(tokens)


def category(tokens: Tensor) -> Tensor:
    """0 balanced, 1 count-only failure, 2 horizon-only failure, 3 both (index of CATEGORIES)."""
    c, h = count_test(tokens), horizon_test(tokens)
    return torch.where(c & h, 0, torch.where(h, 1, torch.where(c, 2, 3)))
