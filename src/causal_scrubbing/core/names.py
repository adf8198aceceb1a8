"""Names users know for transformer components, and the canonical ones we print.

Heads are `a{layer}.h{head}` (also accepted: `L1H5`, `1.5`, `(1, 5)`), MLPs `m{layer}`.

Example:
    >>> from causal_scrubbing.core.names import parse_head
    >>> [parse_head(x) for x in ("a1.h5", "L1H5", "1.5", "(1, 5)", (1, 5))]
    ['a1.h5', 'a1.h5', 'a1.h5', 'a1.h5', 'a1.h5']
"""

from __future__ import annotations

import re

from .errors import ScrubError

_HEAD_PATTERNS = [
    re.compile(r"^a(\d+)\.h(\d+)$"),
    re.compile(r"^[Ll](\d+)[Hh](\d+)$"),
    re.compile(r"^(\d+)\.(\d+)$"),
    re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*\)$"),
]


def head_name(layer: int, head: int) -> str:
    """The canonical name of a head: `a{layer}.h{head}`."""
    return f"a{int(layer)}.h{int(head)}"


def mlp_name(layer: int) -> str:
    return f"m{int(layer)}"


def head_index(name: str | tuple[int, int]) -> tuple[int, int]:
    """(layer, head) of a head name in any form `parse_head` accepts.

    >>> head_index("a12.h3"), head_index("L1H5")
    ((12, 3), (1, 5))
    """
    canonical = parse_head(name)
    assert canonical is not None
    layer, head = canonical[1:].split(".h")
    return int(layer), int(head)


def parse_head(name: str | tuple[int, int], strict: bool = True) -> str | None:
    """Canonical head name from `a1.h5`, `L1H5`, `1.5`, `(1, 5)` or the tuple (1, 5).

    With `strict=False`, returns None instead of raising for something that is not a head.
    """
    if isinstance(name, tuple) and len(name) == 2:
        return head_name(*name)
    for pat in _HEAD_PATTERNS:
        m = pat.match(str(name).strip())
        if m:
            return head_name(int(m.group(1)), int(m.group(2)))
    if not strict:
        return None
    raise ScrubError(f"{name!r} is not a head name; write it as 'a1.h5', 'L1H5', '1.5' or (1, 5).")
