"""The test tiers: `make test` runs everything (as CI does); `make check` is the fast tier.

The fast tier (`pytest -m "not slow and not ray and not training and not browser and not
extras"` with CAUSAL_SCRUB_FAST=1) deselects what takes minutes or needs an optional extra, and
runs every property test with a fifth of its examples (`examples`). It still runs every
module's doctests, the engine-vs-reference property test, the SPEC's invariants, the samplers,
the search on toy graphs, the errors and the command line.

Whole files are marked here (`FILE_MARKS`); a single test elsewhere carries its own marker.
"""

from __future__ import annotations

import os

import pytest

#: True under `make check`: property tests run fewer examples.
FAST = os.environ.get("CAUSAL_SCRUB_FAST", "") not in ("", "0")

#: test file -> the markers of every test in it
FILE_MARKS: dict[str, tuple[str, ...]] = {
    "test_paren.py": ("slow",),
    "test_induction.py": ("slow",),
    "test_ioi.py": ("slow",),
    "test_tutorials.py": ("slow",),
    "test_memory.py": ("slow",),
    "test_performance.py": ("slow",),
    "test_distributed.py": ("ray",),
    "test_importers.py": ("extras",),
    "test_importers_families.py": ("extras",),
    "test_tracr.py": ("extras",),
    "test_draw.py": ("slow",),  # real paren and IOI searches, drawn in Chromium
}

#: (file, words in the test's name) -> markers, for single tests of otherwise fast files
NAME_MARKS: list[tuple[str, str, tuple[str, ...]]] = [
    ("test_cli.py", "paren", ("slow",)),  # loads and scrubs the paren model
    ("test_show.py", "paren", ("slow",)),
    ("test_report.py", "browser", ("browser",)),
    ("test_report.py", "chromium", ("browser",)),
    ("test_paren.py", "training", ("training",)),
    ("test_induction.py", "training", ("training",)),
    ("test_ioi.py", "training", ("training",)),
    ("test_performance.py", "tl_peer", ("extras",)),  # the TransformerLens peer: transformer_lens
]


def examples(n: int) -> int:
    """A property test's example count: `n`, or a fifth of it (at least 10) in the fast tier."""
    return max(10, n // 5) if FAST else n


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        file = item.path.name
        for mark in FILE_MARKS.get(file, ()):
            item.add_marker(getattr(pytest.mark, mark))
        for where, word, marks in NAME_MARKS:
            if file == where and word in item.name:
                for mark in marks:
                    item.add_marker(getattr(pytest.mark, mark))
