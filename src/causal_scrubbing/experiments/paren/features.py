"""Features of a paren string, each a function of the `Dataset` (field `tokens` [n, 42]).

These are the interpretation-node features of Redwood's paren experiments:

- `count_test`: as many "(" as ")".
- `horizon_test`: no suffix has more "(" than ")" (the nesting depth, read right to left,
  never goes negative).
- `starts_open`: the first paren is "(".
- `count_and_open`: the pair (count test, starts with "(") -- what heads 1.0 and 2.0 compute.
- `p_open_after`: [n, 42], at each position i the fraction of "(" among the parens at
  positions >= i (0 where no paren follows).
- `horizon_classes`: [n, 42] per-position classes: 0 PAD; -1/+1 END preceded by "(" / ")";
  -2/+2 any other token with `p_open_after` > 0.5 / <= 0.5.
- `horizon_all`: every horizon class >= 0 (equivalent to the horizon test).
- `p1_if_starts_open`: the overall open proportion if the string starts with "(", else -1.
- `length`: the number of parens (what the padding mask depends on).
- `adjusted_p_open_after` / `adjusted_horizon_classes`: the same with the proportion replaced
  by a weighted mix of the proportions before and after each position, the weights taken
  from how a layer-0 head actually spreads its attention (see `adjusted_p_open_after`).

Example:
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments.paren import data, features as f
    >>> ds = cs.Dataset({"tokens": data.tokenize(["(())", "())(", ")()("])})
    >>> f.count_test(ds).tolist(), f.horizon_test(ds).tolist(), f.starts_open(ds).tolist()
    ([True, True, True], [True, False, False], [True, True, False])
    >>> f.horizon_classes(ds)[0, :7].tolist()   # START ( ( ) ) END PAD
    [2, 2, 2, 2, 2, 1, 0]
    >>> f.horizon_classes(ds)[1, :7].tolist()   # START ( ) ) ( END PAD: the last "(" fails
    [2, 2, 2, 2, -2, -1, 0]
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import Tensor

from ...core.data import Dataset
from . import data as paren_data
from .data import CLOSE, END, OPEN, PAD


def _tokens(ds: Dataset) -> Tensor:
    return ds["tokens"]


def count_test(ds: Dataset) -> Tensor:
    return paren_data.count_test(_tokens(ds))


def horizon_test(ds: Dataset) -> Tensor:
    return paren_data.horizon_test(_tokens(ds))


def is_balanced(ds: Dataset) -> Tensor:
    return paren_data.is_balanced(_tokens(ds))


def starts_open(ds: Dataset) -> Tensor:
    return _tokens(ds)[:, 1] == OPEN


def count_and_open(ds: Dataset) -> Tensor:
    """[n, 2]: (count test, starts with "(")."""
    return torch.stack([count_test(ds), starts_open(ds)], dim=1)


def length(ds: Dataset) -> Tensor:
    t = _tokens(ds)
    return ((t == OPEN) | (t == CLOSE)).sum(1)


def p_open_after(ds: Dataset) -> Tensor:
    """[n, 42] fraction of "(" among parens at positions >= i (0 where none follow)."""
    t = _tokens(ds)
    opens = (t == OPEN).flip(1).cumsum(1).flip(1).double()
    total = ((t == OPEN) | (t == CLOSE)).flip(1).cumsum(1).flip(1).double()
    return torch.where(total > 0, opens / total.clamp_min(1), torch.zeros_like(opens))


def p1_if_starts_open(ds: Dataset) -> Tensor:
    """The overall open proportion if the string starts with "(", else the class -1."""
    return torch.where(starts_open(ds), p_open_after(ds)[:, 1], torch.full_like(
        p_open_after(ds)[:, 1], -1.0))


def _classes(t: Tensor, p: Tensor) -> Tensor:
    prev = torch.cat([torch.full_like(t[:, :1], PAD), t[:, :-1]], dim=1)
    other = torch.where(p > 0.5, -2, 2)
    end = torch.where(prev == OPEN, -1, 1)
    return torch.where(t == PAD, 0, torch.where(t == END, end, other))


def horizon_classes(ds: Dataset) -> Tensor:
    """[n, 42] per-position horizon classes (see the module docstring)."""
    return _classes(_tokens(ds), p_open_after(ds))


def horizon_all(ds: Dataset) -> Tensor:
    return (horizon_classes(ds) >= 0).all(1)


_CLASSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_classes(ds: Dataset, weights: Tensor | None) -> Tensor:
    """Horizon classes of `ds`, computed once per dataset (the 42 per-position features
    share them)."""
    per_ds = _CLASSES.setdefault(ds, {})
    key = None if weights is None else id(weights)
    if key not in per_ds:
        per_ds[key] = (weights, horizon_classes(ds) if weights is None
                       else adjusted_horizon_classes(ds, weights))
    return per_ds[key][1]


@functools.cache
def horizon_at(i: int, adjusted_weights: Tensor | None = None):
    """The feature "horizon class at position i" (plain, or adjusted with the given weights)."""

    def feature(ds: Dataset) -> Tensor:
        return _cached_classes(ds, adjusted_weights)[:, i]

    feature.__name__ = f"horizon_{i}" if adjusted_weights is None else f"adjusted_horizon_{i}"
    return feature


def p_open_before(ds: Dataset) -> Tensor:
    """[n, 42] fraction of "(" among the parens at positions < i (0 where none precede)."""
    t = _tokens(ds)
    opens = torch.cat([torch.zeros_like(t[:, :1]), (t == OPEN).cumsum(1)[:, :-1]], 1).double()
    total = torch.cat([torch.zeros_like(t[:, :1]),
                       ((t == OPEN) | (t == CLOSE)).cumsum(1)[:, :-1]], 1).double()
    return torch.where(total > 0, opens / total.clamp_min(1), torch.zeros_like(opens))


def adjusted_p_open_after(ds: Dataset, weights: Tensor) -> Tensor:
    """[n, 42] the open proportion a layer-0 head actually reports at each position.

    A head that attends to parens both before and after position i mixes the two
    proportions: `w * p_before + (1 - w) * p_after`, where `weights[length, i]` is the
    head's average attention mass on parens before position i for strings of that length
    (estimated from the model by `paren.analysis.adjusted_weights`). Redwood's adjusted p
    is built the same way from their head 0.0.
    """
    n_parens = length(ds)
    w = weights.to(device=n_parens.device, dtype=torch.float64)[n_parens]  # [n, 42]
    return w * p_open_before(ds) + (1 - w) * p_open_after(ds)


def adjusted_horizon_classes(ds: Dataset, weights: Tensor) -> Tensor:
    return _classes(_tokens(ds), adjusted_p_open_after(ds, weights))
