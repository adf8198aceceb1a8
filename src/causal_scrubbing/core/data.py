"""Datasets: named tensors that share a leading example axis.

A `Dataset` holds the model's inputs (e.g. `tokens`), the labels the loss is scored against,
and any precomputed features. Samplers never copy data: a sampled dataset is a vector of row
indices into the source `Dataset`, and `Dataset.rows(idx)` gathers those rows when a forward
pass needs them.

Example:
    >>> import torch, causal_scrubbing as cs
    >>> ds = cs.Dataset({"x": torch.arange(6).reshape(3, 2), "y": torch.tensor([0, 1, 1])})
    >>> len(ds), ds.rows(torch.tensor([2, 0]))["y"].tolist()
    (3, [1, 0])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from .errors import DatasetError, unknown_name


class Dataset:
    """Named tensors with a common leading example axis of length `len(dataset)`."""

    def __init__(self, fields: Mapping[str, Tensor]):
        if not fields:
            raise DatasetError("A Dataset needs at least one field, e.g. Dataset({'tokens': t}).")
        sizes = {}
        for name, value in fields.items():
            if not isinstance(value, Tensor):
                raise DatasetError(
                    f"Dataset field {name!r} is a {type(value).__name__}, not a torch.Tensor; "
                    "convert it with torch.as_tensor(...)."
                )
            if value.dim() == 0:
                raise DatasetError(
                    f"Dataset field {name!r} is a scalar; every field needs a leading example axis."
                )
            sizes[name] = value.shape[0]
        if len(set(sizes.values())) != 1:
            raise DatasetError(
                f"Dataset fields have different numbers of examples: {sizes}. "
                "Every field must have the same leading (example) dimension."
            )
        self._fields = dict(fields)
        self._n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._fields:
            raise unknown_name("dataset field", name, self._fields)
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def keys(self) -> list[str]:
        return list(self._fields)

    def items(self):
        return self._fields.items()

    @property
    def device(self) -> torch.device:
        return next(iter(self._fields.values())).device

    def rows(self, idx: Tensor) -> Dataset:
        """The examples at row indices `idx` (a 1-D LongTensor), in that order."""
        idx = idx.to(self.device)
        return Dataset({k: v.index_select(0, idx) for k, v in self._fields.items()})

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset({k: v.to(device) for k, v in self._fields.items()})

    @staticmethod
    def cat(datasets: list[Dataset]) -> Dataset:
        """Concatenate datasets with the same fields along the example axis."""
        names = datasets[0].keys()
        for d in datasets[1:]:
            if sorted(d.keys()) != sorted(names):
                raise DatasetError(f"Cannot concatenate datasets with fields {names} and {d.keys()}.")
        return Dataset({k: torch.cat([d[k] for d in datasets]) for k in names})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}"
                           for k, v in self._fields.items())
        return f"Dataset(n={self._n}; {shapes})"
