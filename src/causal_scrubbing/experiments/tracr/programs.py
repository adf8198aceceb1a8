"""A suite of programs from tracr's own library, each compiled into an experiment with its true circuit.

Ten programs of `tracr.compiler.lib`, one to six layers deep, categorical and numerical, each
compiled by `compile.from_program` with a small vocabulary and every input of each length up
to `max_seq_len` (a few repeats, so the search and the held-out rows both have rows to spare).
Each is a bundled experiment `tracr-lib-<name>` whose hypothesis `true circuit` is the
compiler's circuit; `causal-scrub run tracr-lib` runs them all, and `causal-scrub search
tracr-lib-<name>` searches one. `score_search` runs the search on one and scores what it finds
against the true circuit (component-level precision and recall). docs/tracr.md has the table.

Example:
    >>> from causal_scrubbing.experiments.tracr import programs
    >>> programs.PROGRAMS["reverse"].vocab, programs.PROGRAMS["reverse"].max_seq_len
    (('a', 'b', 'c'), 5)
    >>> programs.experiment_name("sort_freq")
    'tracr-lib-sort_freq'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...core.errors import ScrubError, unknown_name
from ...searching import Triple, effective
from .compile import ProgramExperiment, component_edges, from_program, precision_recall, tracr_module


@dataclass(frozen=True)
class LibProgram:
    """A program of tracr's library with the vocabulary and length it is compiled for."""

    make: Callable[[Any, Any], Any]  # (lib, rasp) -> the program
    vocab: tuple[Any, ...]
    max_seq_len: int
    description: str


PROGRAMS: dict[str, LibProgram] = {
    "length": LibProgram(lambda lib, rasp: lib.make_length(), ("a", "b", "c"), 5,
                         "the length of the input (SelectorWidth)"),
    "hist": LibProgram(lambda lib, rasp: lib.make_hist(), ("a", "b", "c"), 5,
                       "how often each position's token occurs (SelectorWidth)"),
    "frac_prevs": LibProgram(lambda lib, rasp: lib.make_frac_prevs(rasp.tokens == "x"), ("x", "y"), 5,
                             "the fraction of x so far (numerical Map, numerical Aggregate)"),
    "pair_balance": LibProgram(lambda lib, rasp: lib.make_pair_balance(rasp.tokens, "(", ")"),
                               ("(", ")"), 5, "fraction of ( minus fraction of ) so far (numerical, "
                                              "two heads, a LinearSequenceMap)"),
    "count_less_freq": LibProgram(lambda lib, rasp: lib.make_count_less_freq(2), ("a", "b", "c"), 5,
                                  "how many tokens occur at most twice (two SelectorWidths)"),
    "sort_unique": LibProgram(lambda lib, rasp: lib.make_sort_unique(rasp.tokens, rasp.tokens),
                              (1, 2, 3, 4), 4, "sort unique tokens (SelectorWidth, Aggregate); "
                                               "positions a repeated token leaves empty are not scored"),
    "sort": LibProgram(lambda lib, rasp: lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=4, min_key=1),
                       (1, 2, 3), 4, "sort tokens, repeats allowed (SequenceMap, SelectorWidth, Aggregate)"),
    "reverse": LibProgram(lambda lib, rasp: lib.make_reverse(rasp.tokens), ("a", "b", "c"), 5,
                          "reverse the input (length, two MLPs, Aggregate)"),
    "sort_freq": LibProgram(lambda lib, rasp: lib.make_sort_freq(4), ("a", "b", "c"), 4,
                            "sort tokens by how often they occur (hist, Map, SequenceMap, sort)"),
    "shuffle_dyck": LibProgram(lambda lib, rasp: lib.make_shuffle_dyck(["()"]), ("(", ")"), 5,
                               "1 if the parentheses are balanced (length, pair balance, two "
                               "aggregates; 6 layers)"),
}

#: The search threshold the suite is scored at.
THRESHOLD = 0.95


def experiment_name(name: str) -> str:
    return f"tracr-lib-{name}"


def build(name: str) -> ProgramExperiment:
    """The bundled experiment `tracr-lib-<name>` of the suite's program `name`."""
    if name not in PROGRAMS:
        raise unknown_name("tracr library program", name, PROGRAMS)
    spec = PROGRAMS[name]
    lib, rasp = tracr_module("tracr.compiler.lib"), tracr_module("tracr.rasp.rasp")
    exp = from_program(spec.make(lib, rasp), vocab=set(spec.vocab), max_seq_len=spec.max_seq_len,
                       name=experiment_name(name))
    exp.description = f"tracr library program {name}: {spec.description}; " + exp.description
    return exp


@dataclass(frozen=True)
class SearchScore:
    """What the search found on one program, against its true circuit (component level)."""

    name: str
    layers: int
    kind: str  # "categorical" or "numerical"
    true_edges: int  # edges between components in the true circuit
    found_edges: int
    precision: float
    recall: float
    heldout_recovered: float
    seconds: float  # the search alone
    kept: frozenset[Triple] = frozenset()  # the kept edges between components


def score_search(exp: ProgramExperiment, threshold: float = THRESHOLD, n: int = 300, seed: int = 0,
                 **options: Any) -> SearchScore:
    """Run `search` on `exp`'s graph and score its kept edges against `exp.true_edges`."""
    from ...searching import search

    if exp.compiled is None or exp.search_graph is None:
        raise ScrubError(f"{exp.name} is not a compiled-program experiment (from_program).")
    start = time.perf_counter()
    found = search(exp.search_graph, exp.dataset, exp.loss_fn, threshold=threshold, n=n, seed=seed,
                   **options)
    seconds = time.perf_counter() - start
    graph = exp.search_graph
    kept = effective(graph, {(e.sender, e.receiver, port) for e in found.kept  # nodes: every port
                             for port in ([e.port] if e.port is not None else
                                          [q for q, ups in graph.ports(e.receiver).items()
                                           if e.sender in ups])})
    p, r = precision_recall(kept, exp.true_edges)

    return SearchScore(exp.name, exp.compiled.n_layers,
                       "categorical" if exp.compiled.categorical else "numerical",
                       len(component_edges(exp.true_edges)), len(component_edges(kept)), p, r,
                       found.heldout.loss_recovered, seconds, frozenset(component_edges(kept)))


def _builder(name: str) -> Callable[[], ProgramExperiment]:
    def build_one() -> ProgramExperiment:
        return build(name)

    build_one.__name__ = build_one.__qualname__ = f"build_{name}"
    build_one.__doc__ = f"`build({name!r})`: the `{experiment_name(name)}` experiment."
    return build_one


build_length = _builder("length")
build_hist = _builder("hist")
build_frac_prevs = _builder("frac_prevs")
build_pair_balance = _builder("pair_balance")
build_count_less_freq = _builder("count_less_freq")
build_sort_unique = _builder("sort_unique")
build_sort = _builder("sort")
build_reverse = _builder("reverse")
build_sort_freq = _builder("sort_freq")
build_shuffle_dyck = _builder("shuffle_dyck")
