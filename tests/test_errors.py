"""Every invalid input raises its named error, with a message that says what and how to fix it.

Each test asserts the exception class, the key parts of the message (the names involved, the
path in ``a.port <- b`` form where relevant, and the suggested fix), and that the error is a
`cs.ScrubError`, so ``except cs.ScrubError`` catches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import causal_scrubbing as cs

# ---- helpers -----------------------------------------------------------------------------


@contextmanager
def raises(cls: type[BaseException], *parts: str) -> Iterator[pytest.ExceptionInfo]:
    """Expect exactly `cls` (not a parent or a sibling) with every literal `parts` in its text.

    Also checks that the error is a `cs.ScrubError`, i.e. `except cs.ScrubError` catches it.
    """
    pattern = re.escape(parts[0]) if parts else None
    with pytest.raises(cls, match=pattern) as info:
        yield info
    assert type(info.value) is cls, f"expected exactly {cls.__name__}, got {info.type.__name__}"
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in error message {message!r}"
    assert isinstance(info.value, cs.ScrubError)


def graph() -> cs.Graph:
    """x feeds a and b; out = a + b. Paths: out.left <- a.i <- x and out.right <- b.i <- x."""
    return cs.Graph([
        cs.Input("x"),
        cs.Node("a", lambda i: 2 * i, i="x"),
        cs.Node("b", lambda i: i + 1, i="x"),
        cs.Node("out", lambda left, right: left + right, left="a", right="b"),
    ], output="out")


def dataset(n: int = 12) -> cs.Dataset:
    return cs.Dataset({"x": torch.arange(n, dtype=torch.float32), "f": torch.arange(n) % 3})


def mse(out: torch.Tensor, ref: cs.Dataset) -> torch.Tensor:
    return (out - ref["x"]) ** 2


def root_with(*children: cs.InterpNode, name: str = "root") -> cs.InterpNode:
    return cs.InterpNode(name, children=list(children))


class SpySampler(cs.Sampler):
    """Exact, but counts its calls (to show an error came before any drawing)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ref: torch.Tensor, ctx: cs.SamplingContext) -> torch.Tensor:
        self.calls += 1
        return ref


# ---- the error hierarchy -----------------------------------------------------------------

ERROR_NAMES = [
    "ScrubError", "GraphError", "HypothesisError", "TreeStructureError", "RootClaimError",
    "EmptyClaimError", "NotExtendingParentError", "InjectivityError", "FeatureError",
    "EmptyClassError", "NaNLossError", "DatasetError", "UnknownNameError",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_error_classes_are_exported_and_derive_from_scrub_error(name):
    cls = getattr(cs, name)
    assert name in cs.__all__
    assert issubclass(cls, cs.ScrubError)
    assert issubclass(cls, ValueError)


def test_hypothesis_error_family():
    for name in ["TreeStructureError", "RootClaimError", "EmptyClaimError",
                 "NotExtendingParentError", "InjectivityError"]:
        assert issubclass(getattr(cs, name), cs.HypothesisError)


def test_unknown_name_error_is_a_readable_key_error():
    with pytest.raises(KeyError) as info:
        dataset()["ff"]
    assert isinstance(info.value, cs.UnknownNameError)
    assert str(info.value).startswith("Unknown dataset field 'ff'")  # not quoted like KeyError


# ---- graph errors ------------------------------------------------------------------------


def test_duplicate_node_names():
    with raises(cs.GraphError, "'a'", "unique"):
        cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i="x"),
                  cs.Node("a", lambda i: -i, i="x")], output="a")


def test_unknown_upstream_name_suggests_the_nearest():
    with raises(cs.UnknownNameError, "Unknown node 'dubble'", "out.i",
                "Did you mean 'double'?", "'x'"):
        cs.Graph([cs.Input("x"), cs.Node("double", lambda i: 2 * i, i="x"),
                  cs.Node("out", lambda i: i, i="dubble")], output="out")


def test_cycle_is_reported_with_the_cycle():
    with raises(cs.GraphError, "cycle", "a -> b -> a", "DAG"):
        cs.Graph([
            cs.Input("x"),
            cs.Node("a", lambda i, j: i + j, i="x", j="b"),
            cs.Node("b", lambda i: i, i="a"),
            cs.Node("out", lambda i: i, i="a"),
        ], output="out")


def test_self_loop_is_a_cycle():
    with raises(cs.GraphError, "cycle", "a -> a"):
        cs.Graph([cs.Input("x"), cs.Node("a", lambda i, j: i + j, i="x", j="a"),
                  cs.Node("out", lambda i: i, i="a")], output="out")


def test_cycle_not_reachable_from_the_output_is_still_an_error():
    # A graph with a cycle is not a DAG whether or not the output reaches the cycle; the
    # library validates unreachable nodes' wiring (unknown names) too, so it should catch this.
    with raises(cs.GraphError, "cycle"):
        cs.Graph([
            cs.Input("x"),
            cs.Node("p", lambda i: i, i="q"),
            cs.Node("q", lambda i: i, i="p"),
            cs.Node("out", lambda i: i, i="x"),
        ], output="out")


def test_node_without_ports():
    with raises(cs.GraphError, "'a'", "no input ports", "cs.Input"):
        cs.Graph([cs.Input("x"), cs.Node("a", lambda: torch.zeros(1)),
                  cs.Node("out", lambda i: i, i="a")], output="out")


def test_port_without_upstream_nodes():
    with raises(cs.GraphError, "a.i", "no upstream"):
        cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i=[]),
                  cs.Node("out", lambda i: i, i="a")], output="out")


def test_port_listing_an_upstream_twice():
    with raises(cs.GraphError, "out.i", "twice"):
        cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i=["x", "x"])], output="out")


def test_graph_entry_that_is_not_a_node():
    with raises(cs.GraphError, "cs.Input or cs.Node", "str"):
        cs.Graph([cs.Input("x"), "out"], output="x")  # type: ignore[list-item]


def test_unknown_output_name_suggests_the_nearest():
    with raises(cs.UnknownNameError, "Unknown node 'outt'", "graph output",
                "Did you mean 'out'?"):
        cs.Graph([cs.Input("x"), cs.Node("out", lambda i: i, i="x")], output="outt")


# ---- matcher errors at check -------------------------------------------------------------


def test_unknown_node_in_through():
    root = root_with(cs.InterpNode("c", paths=cs.through("aa")))
    with raises(cs.UnknownNameError, "Unknown node 'aa'", "through('aa')",
                "Did you mean 'a'?", "Valid nodes"):
        cs.check(graph(), root)


def test_unknown_node_later_in_a_chain():
    root = root_with(cs.InterpNode("c", paths=cs.through("a").then("xx")))
    with raises(cs.UnknownNameError, "Unknown node 'xx'", "Did you mean 'x'?"):
        cs.check(graph(), root)


def test_unknown_node_in_excluding():
    root = root_with(cs.InterpNode("c", paths=cs.through("x", excluding=["bb"])))
    with raises(cs.UnknownNameError, "Unknown node 'bb'", "Did you mean 'b'?"):
        cs.check(graph(), root)


def test_unknown_name_without_close_match_lists_valid_names():
    root = root_with(cs.InterpNode("c", paths=cs.through("zzzzzz")))
    with raises(cs.UnknownNameError, "Unknown node 'zzzzzz'", "Valid nodes", "'a'", "'out'") as e:
        cs.check(graph(), root)
    assert "Did you mean" not in str(e.value)


def test_unknown_port_name():
    root = root_with(cs.InterpNode("c", paths=cs.through("a", port="q")))
    with raises(cs.UnknownNameError, "Unknown port 'q'", "of node 'a'", "Valid ports: 'i'"):
        cs.check(graph(), root)


def test_unknown_port_name_suggests_the_nearest():
    root = root_with(cs.InterpNode("c", paths=cs.through("out", port="lef")))
    with raises(cs.UnknownNameError, "Unknown port 'lef'", "Did you mean 'left'?"):
        cs.check(graph(), root)


# ---- invalid correspondences -------------------------------------------------------------


def test_root_that_does_not_claim_the_output():
    root = cs.InterpNode("root", paths=cs.through("a"))
    with raises(cs.RootClaimError, "'root'", "'out'", "through('a')",
                "Leave the root's paths out"):
        cs.check(graph(), root)


def test_chain_in_the_wrong_order_claims_nothing():
    root = root_with(cs.InterpNode("c", paths=cs.through("a").then("out")))
    with raises(cs.EmptyClaimError, "'c'", "claims no path", "through('a').then('out')",
                "'out' is not upstream of 'a'", "order of the chain"):
        cs.check(graph(), root)


def test_direct_to_a_node_not_directly_under_the_output_claims_nothing():
    root = root_with(cs.InterpNode("c", paths=cs.direct("x")))
    with raises(cs.EmptyClaimError, "'c'", "claims no path", "direct('x')", "direct="):
        cs.check(graph(), root)


def test_direct_to_a_node_under_the_output_is_fine():
    # The positive control for the test above: a and b do feed the output directly.
    corr = cs.check(graph(), root_with(cs.InterpNode("c", paths=cs.direct("a"))))
    assert [n.name for n in corr.nodes] == ["root", "c"]


def test_excluding_every_route_claims_nothing():
    root = root_with(cs.InterpNode("c", paths=cs.through("x", excluding=["a", "b"])))
    with raises(cs.EmptyClaimError, "'c'", "excluding="):
        cs.check(graph(), root)


def test_child_outside_its_parent():
    root = root_with(cs.InterpNode("p", paths=cs.through("a"), children=[
        cs.InterpNode("c", paths=cs.through("b"))]))
    with raises(cs.NotExtendingParentError, "'c'", "parent 'p'", "out.right <- b",
                "through('b')", "through('a')", ".then("):
        cs.check(graph(), root)


def test_child_partly_outside_its_parent():
    # x is reached under a (inside the parent's claim) and under b (outside it).
    root = root_with(cs.InterpNode("p", paths=cs.through("a"), children=[
        cs.InterpNode("c", paths=cs.through("x"))]))
    with raises(cs.NotExtendingParentError, "'c'", "'p'", "out.right <- b.i <- x"):
        cs.check(graph(), root)


def test_siblings_claiming_the_same_path():
    root = root_with(cs.InterpNode("c1", paths=cs.through("a")),
                     cs.InterpNode("c2", paths=cs.through("x")))
    with raises(cs.InjectivityError, "'c1'", "'c2'", "out.left <- a.i <- x", "excluding"):
        cs.check(graph(), root)


def test_siblings_with_identical_claims():
    root = root_with(cs.InterpNode("c1", paths=cs.through("b")),
                     cs.InterpNode("c2", paths=cs.through("b")))
    with raises(cs.InjectivityError, "'c1'", "'c2'", "out.right <- b"):
        cs.check(graph(), root)


def test_siblings_overlapping_through_a_port():
    root = root_with(cs.InterpNode("c1", paths=cs.through("a", port="i")),
                     cs.InterpNode("c2", paths=cs.through("a")))
    with raises(cs.InjectivityError, "'c1'", "'c2'", "out.left <- a"):
        cs.check(graph(), root)


def test_disjoint_siblings_are_fine():
    root = root_with(cs.InterpNode("c1", paths=cs.through("a")),
                     cs.InterpNode("c2", paths=cs.through("x", excluding=["a"])))
    assert [n.name for n in cs.check(graph(), root).nodes] == ["root", "c1", "c2"]


def test_child_claiming_its_parents_treeified_node():
    root = root_with(cs.InterpNode("p", paths=cs.through("a"), children=[
        cs.InterpNode("c", paths=cs.through("a"))]))
    with raises(cs.InjectivityError, "'c'", "parent 'p'", "same treeified node",
                "out.left <- a", ".then("):
        cs.check(graph(), root)


def test_duplicate_interp_node_names():
    root = root_with(cs.InterpNode("c", paths=cs.through("a")),
                     cs.InterpNode("c", paths=cs.through("b")))
    with raises(cs.TreeStructureError, "'c'", "unique"):
        cs.check(graph(), root)


def test_child_named_like_the_root():
    root = root_with(cs.InterpNode("root", paths=cs.through("a")))
    with raises(cs.TreeStructureError, "'root'", "unique"):
        cs.check(graph(), root)


def test_same_interp_node_object_used_twice():
    c = cs.InterpNode("c", paths=cs.through("a"))
    root = root_with(c, cs.InterpNode("d", paths=cs.through("b"), children=[c]))
    with raises(cs.TreeStructureError, "'c'", "appears twice", "new node"):
        cs.check(graph(), root)


def test_same_interp_node_object_twice_under_one_parent():
    c = cs.InterpNode("c", paths=cs.through("a"))
    with raises(cs.TreeStructureError, "'c'", "appears twice"):
        cs.check(graph(), root_with(c, c))


def test_interp_node_that_is_its_own_descendant():
    c = cs.InterpNode("c", paths=cs.through("a"))
    c.add(c)
    with raises(cs.TreeStructureError, "'c'", "own descendant", "tree"):
        cs.check(graph(), root_with(c))


def test_non_root_without_paths():
    root = root_with(cs.InterpNode("c", cs.SameFeature("f")))
    with raises(cs.HypothesisError, "'c'", "claims no paths", "paths=", "Only the root"):
        cs.check(graph(), root)


@pytest.mark.parametrize("kwargs, what", [
    ({"sampler": "f"}, "sampler"),
    ({"sampler": cs.Uniform}, "sampler"),  # the class, not an instance
    ({"other": lambda ref, ctx: ref}, "other"),
])
def test_non_sampler_is_a_type_error(kwargs, what):
    with pytest.raises(TypeError, match=re.escape(f"InterpNode 'c': {what} must be a cs.Sampler")):
        cs.InterpNode("c", paths=cs.through("a"), **kwargs)


def test_non_matcher_paths_is_a_type_error():
    with pytest.raises(TypeError, match=r"InterpNode 'c': paths must be a path matcher"):
        cs.InterpNode("c", paths="a")  # type: ignore[arg-type]


def test_hypothesis_that_is_not_an_interp_node():
    with pytest.raises(TypeError, match="root cs.InterpNode"):
        cs.check(graph(), "root")  # type: ignore[arg-type]


# ---- feature errors ----------------------------------------------------------------------

def bad_f_list(d):
    return [0] * len(d)


def bad_f_length(d):
    return torch.zeros(len(d) - 1)


def bad_f_scalar(d):
    return torch.tensor(1)


def bad_f_complex(d):
    return torch.zeros(len(d), dtype=torch.complex64)


def bad_f_nan(d):
    return torch.where(d["f"] == 1, float("nan"), 0.0)


def bad_f_inf(d):
    return torch.where(d["f"] == 1, float("inf"), 0.0)


BAD_FEATURES = {
    "list": (bad_f_list, ["returned a list", "torch.Tensor", "[12, ...]"]),
    "wrong length": (bad_f_length, ["shape (11,)", "12 examples", "[12]"]),
    "0-d": (bad_f_scalar, ["shape ()", "[12]"]),
    "complex": (bad_f_complex, ["complex64", "bool, integer or float"]),
    "nan": (bad_f_nan, ["NaN or infinite", "finite class label"]),
    "inf": (bad_f_inf, ["NaN or infinite"]),
}


def bad_feature_hypothesis(feature, spy: SpySampler) -> cs.InterpNode:
    # The bad feature sits below a node whose sampler would run first if drawing had begun.
    return cs.InterpNode("root", spy, children=[
        cs.InterpNode("c", cs.SameFeature(feature), paths=cs.through("a"))])


@pytest.mark.parametrize("case", list(BAD_FEATURES))
def test_bad_feature_raises_at_draw_before_any_sampling(case):
    feature, parts = BAD_FEATURES[case]
    spy = SpySampler()
    corr = cs.check(graph(), bad_feature_hypothesis(feature, spy))
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with raises(cs.FeatureError, f"Feature {feature.__name__!r}", *parts) as e:
        cs.draw(corr, dataset(), torch.arange(4), gen)
    assert str(e.value).startswith("interpretation node 'c': Feature")
    assert spy.calls == 0
    assert torch.equal(gen.get_state(), state)


@pytest.mark.parametrize("case", list(BAD_FEATURES))
def test_bad_feature_raises_at_scrub(case):
    feature, parts = BAD_FEATURES[case]
    with raises(cs.FeatureError, f"Feature {feature.__name__!r}", *parts) as e:
        cs.scrub(graph(), bad_feature_hypothesis(feature, SpySampler()), dataset(), mse, seed=0)
    assert str(e.value).startswith("hypothesis 'root', interpretation node 'c': Feature")


def test_scrub_checks_features_before_any_compute():
    # A bad feature must be reported before scrub runs the model (or the baseline): on a real
    # model those forward passes are the expensive part.
    calls = []

    def spy_fn(i):
        calls.append("computed")
        return 2 * i

    g = cs.Graph([cs.Input("x"), cs.Node("a", spy_fn, i="x"), cs.Node("b", spy_fn, i="x"),
                  cs.Node("out", lambda left, right: left + right, left="a", right="b")],
                 output="out")
    spy = SpySampler()
    with raises(cs.FeatureError, "Feature 'bad_f_nan'"):
        cs.scrub(g, bad_feature_hypothesis(bad_f_nan, spy), dataset(), mse, seed=0)
    assert calls == [], f"the graph was evaluated {len(calls)} times before the feature check"
    assert spy.calls == 0


def test_feature_error_uses_the_name_given_to_same_feature():
    # SameFeature(f, name=...) names the feature in describe() and in EmptyClassError; a
    # FeatureError about it should use that name too, not '<lambda>'.
    root = cs.InterpNode("root", children=[cs.InterpNode(
        "c", cs.SameFeature(lambda d: torch.tensor(1), name="parity"), paths=cs.through("a"))])
    with raises(cs.FeatureError, "Feature 'parity'", "shape ()"):
        cs.draw(cs.check(graph(), root), dataset(), torch.arange(4),
                torch.Generator().manual_seed(0))


def test_bad_feature_inside_pooled_is_checked_too():
    root = cs.InterpNode("root", children=[cs.InterpNode(
        "c", cs.Pooled(cs.SameFeature(bad_f_list)), paths=cs.through("a"))])
    with raises(cs.FeatureError, "Feature 'bad_f_list'", "list"):
        cs.draw(cs.check(graph(), root), dataset(), torch.arange(4),
                torch.Generator().manual_seed(0))


def test_bad_feature_in_other_sampler_is_checked():
    root = cs.InterpNode("root", other=cs.SameFeature(bad_f_scalar),
                         children=[cs.InterpNode("c", paths=cs.through("a"))])
    with raises(cs.FeatureError, "Feature 'bad_f_scalar'", "shape ()",
                "interpretation node 'root' (its other= sampler)"):
        cs.draw(cs.check(graph(), root), dataset(), torch.arange(4),
                torch.Generator().manual_seed(0))


def test_feature_that_is_neither_a_name_nor_a_function():
    with raises(cs.FeatureError, "field name or a function", "int"):
        cs.SameFeature(3)  # type: ignore[arg-type]


def test_feature_naming_a_missing_field():
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c", cs.SameFeature("ff"), paths=cs.through("a"))])
    with raises(cs.UnknownNameError, "Unknown dataset field 'ff'", "Did you mean 'f'?",
                "interpretation node 'c'"):
        cs.draw(cs.check(graph(), root), dataset(), torch.arange(4),
                torch.Generator().manual_seed(0))


# ---- empty feature classes ---------------------------------------------------------------


def test_reference_value_missing_from_the_source():
    ref = cs.Dataset({"x": torch.tensor([0.0, 1.0, 2.0]), "f": torch.tensor([0, 7, 1])})
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c", cs.SameFeature("f"), paths=cs.through("a"))])
    with raises(cs.EmptyClassError, "SameFeature('f')", "f = 7", "table row 1",
                "Source class sizes", "'0': 4", "'1': 4", "'2': 4", "'7': 0",
                "larger", "generative", "hypothesis 'root', interpretation node 'c'"):
        cs.scrub(graph(), root, dataset(), mse, ref=ref, seed=0)


def test_reference_values_all_in_the_source_is_fine():
    # The positive control for the test above.
    ref = cs.Dataset({"x": torch.tensor([0.0, 1.0, 2.0]), "f": torch.tensor([0, 2, 1])})
    root = cs.InterpNode("root", children=[
        cs.InterpNode("c", cs.SameFeature("f"), paths=cs.through("a"))])
    r = cs.scrub(graph(), root, dataset(), mse, ref=ref, seed=0)
    assert r.n == 3


def test_empty_class_at_the_sampler():
    table = cs.Dataset({"f": torch.tensor([5, 0, 0, 1, 1])})
    ctx = cs.SamplingContext(table, torch.Generator().manual_seed(0), source_start=1)
    with raises(cs.EmptyClassError, "f = 5", "table row 0", "'5': 0"):
        cs.SameFeature("f")(torch.tensor([1, 0]), ctx)


# ---- loss errors -------------------------------------------------------------------------


def test_nan_loss():
    # evaluation stops at the first chunk with a bad loss: the 8-row probe chunk here
    with raises(cs.NaNLossError, "NaN or infinite", "8 of reference rows 0..7",
                "loss function") as e:
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), lambda o, r: o * float("nan"))
    # it names the run whose loss was NaN (whichever of the three is scored first)
    assert re.search(r"for (hypothesis 'id'|baseline 'random baseline'|the unscrubbed model)",
                     str(e.value))


def test_nan_loss_of_the_scrubbed_hypothesis_names_it():
    # out = sqrt(a - b) with a = b = x: finite whenever both read the same row (the model and
    # the random baseline), NaN where the hypothesis gives them different rows with a < b.
    g = cs.Graph([cs.Input("x"), cs.Node("a", lambda i: i, i="x"),
                  cs.Node("b", lambda i: i, i="x"),
                  cs.Node("out", lambda left, right: torch.sqrt(left - right),
                          left="a", right="b")], output="out")
    h = cs.InterpNode("h", children=[cs.InterpNode("c", cs.Uniform(), paths=cs.through("a"))])
    with raises(cs.NaNLossError, "NaN or infinite", "hypothesis 'h'"):
        cs.scrub(g, h, dataset(), lambda o, r: o ** 2, seed=0)


def test_partly_infinite_loss_names_the_rows():
    def loss(out, ref):
        return torch.where(ref["x"] >= 10, float("inf"), 0.0)

    with raises(cs.NaNLossError, "on 2 of reference rows 8..11", "first: [10, 11]"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), loss)


# Losses are computed chunk by chunk (the first chunk is an 8-row probe); the message says
# what the whole run needs (the run's 12 reference rows) and what this chunk got.
@pytest.mark.parametrize("loss, shape", [
    (lambda o, r: o[:, None], "(8, 1)"),
    (lambda o, r: o.mean(), "()"),
    (lambda o, r: o[:5], "(5,)"),
])
def test_loss_with_the_wrong_shape(loss, shape):
    with raises(cs.ScrubError, f"returned shape {shape}", "shape [12] for the run's 12 reference rows",
                "reference rows 0..7, a chunk of 8", "so shape [8] for these 8", "no reduction"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), loss)


def test_loss_shape_error_reports_the_runs_n():
    with raises(cs.ScrubError, "returned shape ()", "shape [30] for the run's 30 reference rows"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), lambda o, r: o.mean(), n=30)


def test_loss_shape_error_on_a_run_of_one_chunk():
    from causal_scrubbing.scrubbing import per_example_loss

    rows = dataset(5)
    with raises(cs.ScrubError, "returned shape ()", "on all 5 reference rows", "shape [5]"):
        per_example_loss(lambda o, r: o.mean(), rows["x"], rows, "hypothesis 'h'")


def test_loss_that_is_not_a_tensor():
    with raises(cs.ScrubError, "returned a list", "shape [12]", "shape [8] for these 8"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), lambda o, r: o.tolist())


# ---- dataset errors ----------------------------------------------------------------------


def test_fields_with_different_lengths():
    with raises(cs.DatasetError, "different numbers of examples", "'x': 3", "'y': 4",
                "leading"):
        cs.Dataset({"x": torch.zeros(3), "y": torch.zeros(4)})


@pytest.mark.parametrize("value, kind", [([1, 2, 3], "list"), (torch.zeros(3).numpy(), "ndarray")])
def test_non_tensor_field(value, kind):
    with raises(cs.DatasetError, "'x'", f"is a {kind}", "torch.as_tensor"):
        cs.Dataset({"x": value})


def test_scalar_field():
    with raises(cs.DatasetError, "'x'", "scalar", "leading example axis"):
        cs.Dataset({"x": torch.tensor(1.0)})


def test_empty_dataset():
    with raises(cs.DatasetError, "at least one field"):
        cs.Dataset({})


def test_missing_field():
    with raises(cs.UnknownNameError, "Unknown dataset field 'ff'", "Did you mean 'f'?",
                "'x'", "'f'"):
        dataset()["ff"]


def test_graph_input_reading_a_missing_field():
    g = cs.Graph([cs.Input("x", field="xs"), cs.Node("out", lambda i: i, i="x")], output="out")
    with raises(cs.UnknownNameError, "Unknown dataset field 'xs'", "Did you mean 'x'?"):
        g.forward(dataset())


def test_reference_dataset_with_different_fields():
    ref = cs.Dataset({"x": torch.zeros(2)})
    with raises(cs.DatasetError, "['x', 'f']", "['x']"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, ref=ref)


def test_reference_dataset_with_the_same_fields_in_another_order_is_accepted():
    # `ref` needs "the same fields as dataset"; the order they were listed in is irrelevant.
    ref = cs.Dataset({"f": torch.tensor([0, 1]), "x": torch.tensor([0.0, 1.0])})
    r = cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, ref=ref)
    assert r.n == 2


# ---- loading results ---------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, seed=0).save(tmp_path / "r")


def test_load_round_trip(saved: Path):
    # The positive control for the load errors below.
    assert cs.ScrubResult.load(saved).name == "id"


def test_load_empty_directory(tmp_path: Path):
    with raises(cs.ScrubError, "not a saved ScrubResult", "result.json"):
        cs.ScrubResult.load(tmp_path)


def test_load_missing_directory(tmp_path: Path):
    with raises(cs.ScrubError, "not a saved ScrubResult", "result.json"):
        cs.ScrubResult.load(tmp_path / "nope")


def test_load_without_the_json(saved: Path):
    (saved / "result.json").unlink()
    with raises(cs.ScrubError, "not a saved ScrubResult", "result.json"):
        cs.ScrubResult.load(saved)


def test_load_without_the_tensors(saved: Path):
    (saved / "per_example.safetensors").unlink()
    with raises(cs.ScrubError, "not a saved ScrubResult", "per_example.safetensors"):
        cs.ScrubResult.load(saved)


def test_load_corrupt_json(saved: Path):
    (saved / "result.json").write_text("{not json")
    with raises(cs.ScrubError, "Could not read the ScrubResult", str(saved)):
        cs.ScrubResult.load(saved)


# ---- except cs.ScrubError catches every one of them --------------------------------------


def _raise_graph_error():
    cs.Graph([cs.Input("x"), cs.Input("x")], output="x")


def _raise_unknown_name():
    dataset()["nope"]


def _raise_tree_structure():
    cs.check(graph(), root_with(cs.InterpNode("root", paths=cs.through("a"))))


def _raise_root_claim():
    cs.check(graph(), cs.InterpNode("root", paths=cs.through("b")))


def _raise_empty_claim():
    cs.check(graph(), root_with(cs.InterpNode("c", paths=cs.through("a").then("out"))))


def _raise_not_extending():
    cs.check(graph(), root_with(cs.InterpNode("p", paths=cs.through("a"), children=[
        cs.InterpNode("c", paths=cs.through("b"))])))


def _raise_injectivity():
    cs.check(graph(), root_with(cs.InterpNode("c1", paths=cs.through("a")),
                                cs.InterpNode("c2", paths=cs.through("a"))))


def _raise_hypothesis():
    cs.check(graph(), root_with(cs.InterpNode("c")))


def _raise_feature():
    root = root_with(cs.InterpNode("c", cs.SameFeature(lambda d: torch.tensor(0)),
                                   paths=cs.through("a")))
    cs.draw(cs.check(graph(), root), dataset(), torch.arange(3),
            torch.Generator().manual_seed(0))


def _raise_empty_class():
    ref = cs.Dataset({"x": torch.zeros(1), "f": torch.tensor([9])})
    root = root_with(cs.InterpNode("c", cs.SameFeature("f"), paths=cs.through("a")))
    cs.scrub(graph(), root, dataset(), mse, ref=ref)


def _raise_nan_loss():
    cs.scrub(graph(), cs.InterpNode("id"), dataset(), lambda o, r: o / 0 * 0)


def _raise_loss_shape():
    cs.scrub(graph(), cs.InterpNode("id"), dataset(), lambda o, r: o.sum())


def _raise_dataset():
    cs.Dataset({"x": torch.zeros(2), "y": torch.zeros(3)})


def _raise_load(tmp_path: Path):
    cs.ScrubResult.load(tmp_path)


CATCH_CASES: dict[str, tuple[Callable, type]] = {
    "graph": (_raise_graph_error, cs.GraphError),
    "unknown name": (_raise_unknown_name, cs.UnknownNameError),
    "tree structure": (_raise_tree_structure, cs.TreeStructureError),
    "root claim": (_raise_root_claim, cs.RootClaimError),
    "empty claim": (_raise_empty_claim, cs.EmptyClaimError),
    "not extending": (_raise_not_extending, cs.NotExtendingParentError),
    "injectivity": (_raise_injectivity, cs.InjectivityError),
    "hypothesis": (_raise_hypothesis, cs.HypothesisError),
    "feature": (_raise_feature, cs.FeatureError),
    "empty class": (_raise_empty_class, cs.EmptyClassError),
    "nan loss": (_raise_nan_loss, cs.NaNLossError),
    "loss shape": (_raise_loss_shape, cs.ScrubError),
    "dataset": (_raise_dataset, cs.DatasetError),
}


@pytest.mark.parametrize("case", list(CATCH_CASES))
def test_except_scrub_error_catches(case):
    trigger, expected = CATCH_CASES[case]
    try:
        trigger()
    except cs.ScrubError as err:
        caught = err
    else:
        pytest.fail(f"{case}: no error raised")
    assert type(caught) is expected
    assert str(caught)


def test_except_scrub_error_catches_load_errors(tmp_path: Path):
    with pytest.raises(cs.ScrubError) as info:
        _raise_load(tmp_path)
    assert type(info.value) is cs.ScrubError


def test_every_error_class_is_exercised_by_the_catch_cases():
    exercised = {cls for _, cls in CATCH_CASES.values()}
    assert exercised == {getattr(cs, name) for name in ERROR_NAMES}


# ---- errors name the hypothesis and interpretation node, before any compute ---------------


def counting_graph(calls: list[str]) -> cs.Graph:
    """graph(), but every node function records a call (to show nothing was computed)."""
    def spy(fn):
        def wrapped(**kw):
            calls.append("computed")
            return fn(**kw)
        return wrapped

    return cs.Graph([
        cs.Input("x"),
        cs.Node("a", spy(lambda i: 2 * i), i="x"),
        cs.Node("b", spy(lambda i: i + 1), i="x"),
        cs.Node("out", spy(lambda left, right: left + right), left="a", right="b"),
    ], output="out")


def good_hypothesis(name: str = "good") -> cs.InterpNode:
    return cs.InterpNode(name, children=[
        cs.InterpNode("c", cs.SameFeature("f"), paths=cs.through("a"))])


def test_scrub_many_names_the_hypothesis_with_the_bad_feature():
    calls: list[str] = []
    hyps = {"Ex1": good_hypothesis(), "Ex1b": cs.InterpNode("root", children=[
        cs.InterpNode("count", cs.SameFeature(bad_f_length), paths=cs.through("a"))])}
    with raises(cs.FeatureError, "hypothesis 'Ex1b', interpretation node 'count': "
                "Feature 'bad_f_length'", "shape (11,)"):
        cs.scrub_many(counting_graph(calls), hyps, dataset(), mse, seed=0)
    assert calls == []


def test_empty_class_is_found_before_any_compute():
    # The reference value 7 is missing from the source: found when drawing, and every draw
    # (the baseline's and each hypothesis') now comes before the first forward pass.
    calls: list[str] = []
    ref = cs.Dataset({"x": torch.tensor([0.0, 1.0, 2.0]), "f": torch.tensor([0, 7, 1])})
    hyps = {"fine": cs.InterpNode("fine"), "Ex2": good_hypothesis()}
    with raises(cs.EmptyClassError, "hypothesis 'Ex2', interpretation node 'c': Sampler "
                "SameFeature('f')", "f = 7"):
        cs.scrub_many(counting_graph(calls), hyps, dataset(), mse, ref=ref, seed=0)
    assert calls == [], f"the graph was evaluated {len(calls)} times before the empty class"


def test_empty_class_in_the_baseline_names_the_baseline():
    calls: list[str] = []
    ref = cs.Dataset({"x": torch.tensor([0.0, 1.0]), "f": torch.tensor([0, 7])})
    with raises(cs.EmptyClassError, "baseline 'base', interpretation node 'base'", "f = 7"):
        cs.scrub(counting_graph(calls), cs.InterpNode("id"), dataset(), mse, ref=ref,
                 baseline=cs.InterpNode("base", cs.SameFeature("f")))
    assert calls == []


def test_unknown_field_read_by_a_sampler_names_hypothesis_and_node():
    calls: list[str] = []
    hyps = {"ok": good_hypothesis(), "typo": cs.InterpNode("root", children=[
        cs.InterpNode("count", cs.SameFeature("ff"), paths=cs.through("a"))])}
    with raises(cs.UnknownNameError, "hypothesis 'typo', interpretation node 'count': "
                "Unknown dataset field 'ff'", "Did you mean 'f'?"):
        cs.scrub_many(counting_graph(calls), hyps, dataset(), mse)
    assert calls == []


def test_invalid_hypothesis_among_several_is_named():
    hyps = {"ok": good_hypothesis(), "Ex3": root_with(cs.InterpNode("c", paths=cs.through("aa")))}
    with raises(cs.UnknownNameError, "hypothesis 'Ex3': Unknown node 'aa'", "Did you mean 'a'?"):
        cs.scrub_many(graph(), hyps, dataset(), mse)


def test_graph_input_reading_a_missing_field_is_found_before_compute():
    calls: list[str] = []
    g = cs.Graph([cs.Input("x", field="xs"),
                  cs.Node("out", lambda i: calls.append("computed") or i, i="x")], output="out")
    with raises(cs.UnknownNameError, "Unknown dataset field 'xs'",
                "read by the graph's cs.Input('x', field='xs')", "Did you mean 'x'?",
                "Valid dataset fields: 'x', 'f'"):
        cs.scrub(g, cs.InterpNode("id"), dataset(), mse)
    assert calls == []


def test_graph_input_named_like_a_missing_field():
    g = cs.Graph([cs.Input("X"), cs.Node("out", lambda i: i, i="X")], output="out")
    with raises(cs.UnknownNameError, "Unknown dataset field 'X'", "cs.Input('X')",
                "Did you mean 'x'?"):
        cs.scrub(g, cs.InterpNode("id"), dataset(), mse, ref=dataset(3))


def test_unreachable_input_with_a_missing_field_is_not_an_error():
    # Only the inputs the output reads matter, as in the forward pass.
    g = cs.Graph([cs.Input("x"), cs.Input("unused"), cs.Node("out", lambda i: i, i="x")],
                 output="out")
    assert cs.scrub(g, cs.InterpNode("id"), dataset(), mse).n == 12


# ---- suggestions ignore case -------------------------------------------------------------


@pytest.mark.parametrize("name, options, expected", [
    ("Count", ["count", "horizon"], "count"),
    ("COUNT", ["count", "cont"], "count"),  # no letter in common with 'count' but its case
    ("a1.H0", ["a0.h0", "a1.h0", "a1.h1", "a10.h0"], "a1.h0"),
    ("A1.H1", ["a0.h0", "a1.h0", "a1.h1"], "a1.h1"),
])
def test_did_you_mean_ignores_case(name, options, expected):
    from causal_scrubbing.core.errors import did_you_mean

    assert did_you_mean(name, options) == f" Did you mean {expected!r}?"


def test_case_only_typo_in_a_field_and_a_node_gets_a_suggestion():
    with raises(cs.UnknownNameError, "Unknown dataset field 'F'", "Did you mean 'f'?"):
        dataset()["F"]
    with raises(cs.UnknownNameError, "Unknown node 'OUT'", "Did you mean 'out'?"):
        cs.check(graph(), root_with(cs.InterpNode("c", paths=cs.through("OUT"))))


# ---- devices and n -------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["gpu", "gpu:0", "tpu"])
def test_unknown_device(device):
    calls: list[str] = []
    with raises(cs.ScrubError, f"Unknown device {device!r}", "'cpu', 'cuda'") as e:
        cs.scrub(counting_graph(calls), cs.InterpNode("id"), dataset(), mse, device=device)
    assert ("Did you mean 'cuda'?" in str(e.value)) == device.startswith("gpu")
    assert calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda")])
def test_cuda_without_cuda(device):
    with raises(cs.ScrubError, "'cuda", "CUDA is not available", "device='cpu'"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, device=device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_index_out_of_range():
    bad = f"cuda:{torch.cuda.device_count()}"
    with raises(cs.ScrubError, repr(bad), "CUDA device(s)", "'cuda:0'"):
        cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, device=bad)


@pytest.mark.parametrize("n", [0, -5, 2.5, True, "10"])
def test_n_that_is_not_a_positive_number_of_rows(n):
    calls: list[str] = []
    with raises(cs.ScrubError, "n must be a positive number of reference rows", f"got {n!r}",
                "n=None"):
        cs.scrub(counting_graph(calls), cs.InterpNode("id"), dataset(), mse, n=n)
    assert calls == []


def test_n_as_a_numpy_or_torch_integer_is_accepted():
    assert cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, n=torch.tensor(5)).n == 5


# ---- drawing everything first changes no number --------------------------------------------


def test_scrub_many_gives_the_same_numbers_as_one_draw_at_a_time():
    from causal_scrubbing import engine
    from causal_scrubbing.core.draws import draw_hypothesis, reference_rows
    from causal_scrubbing.experiments import toy

    exp = toy.build()
    results = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=300, seed=3)
    ref_idx = reference_rows(len(exp.dataset), 300, 3)
    for key, hypothesis in exp.hypotheses.items():
        # as scrub did before: draw one hypothesis on a fresh stream, then evaluate it
        corr = cs.check(exp.graph, hypothesis)
        sample = draw_hypothesis(corr, exp.dataset, ref_idx, 3)
        out = engine.evaluate(corr, exp.dataset, sample)
        expected = exp.loss_fn(out, exp.dataset.rows(ref_idx))
        assert torch.equal(results[key].per_example["scrubbed"], expected.float()), key
        alone = cs.scrub(exp.graph, hypothesis, exp.dataset, exp.loss_fn, n=300, seed=3)
        assert alone.summary() | {"name": key} == results[key].summary(), key


# ---- loss recovered undefined when baseline and model losses coincide ----------------------


def test_baseline_equal_to_the_model_warns_and_marks_recovery_undefined(tmp_path: Path):
    # The baseline resamples nothing, so its loss is the model's: recovery divides by zero.
    h = cs.InterpNode("h", children=[cs.InterpNode("c", cs.Uniform(), paths=cs.through("a"))])
    with pytest.warns(cs.UndefinedRecoveryWarning, match="Loss recovered is undefined") as w:
        r = cs.scrub(graph(), h, dataset(), mse, baseline=cs.InterpNode("same", cs.Exact()))
    assert len(w) == 1 and "baseline 'same'" in str(w[0].message)
    assert r.recovery_defined is False
    assert "loss recovered undefined" in repr(r) and "undefined" in r._repr_html_()
    assert cs.ScrubResult.load(r.save(tmp_path / "r")).recovery_defined is False


def test_table_and_report_say_the_percentage_is_undefined():
    from causal_scrubbing import report

    hyps = {"h1": cs.InterpNode("h1"), "h2": cs.InterpNode("h2", cs.Uniform())}
    with pytest.warns(cs.UndefinedRecoveryWarning):
        results = cs.scrub_many(graph(), hyps, dataset(), mse,
                                baseline=cs.InterpNode("same", cs.Exact()))
    table = report.format_table(cs.Run("demo", results))
    rows = [line for line in table.splitlines() if line.startswith(("h1", "h2"))]
    assert len(rows) == 2 and all("undefined" in line and "%" not in line for line in rows)
    assert "baseline and model losses coincide" in table
    page = report.render_html(report.results_dict(cs.Run("demo", results)))
    assert "undefined" in page and "baseline and model losses coincide" in page


def test_a_clearly_worse_baseline_keeps_recovery_defined():
    r = cs.scrub(graph(), cs.InterpNode("id"), dataset(), mse, seed=0)
    assert r.recovery_defined is True and "undefined" not in repr(r)


@pytest.mark.parametrize("baseline, model, defined", [
    ([2.0, 2.1, 1.9], [0.1, 0.0, 0.2], True),  # clearly apart
    ([1.0, 1.0], [1.0, 1.0], False),  # equal
    ([1.0], [1.0 + 1e-9], False),  # equal up to float noise, n = 1
    ([1.0], [0.5], True),  # n = 1, apart
    ([1.0, 3.0, 2.1], [2.5, 1.5, 2.0], False),  # 2% apart, well within the noise
    ([50.0, 300.0, 220.0], [10.0, 20.0, 5.0], True),  # far apart, but only 3 noisy rows
    ([0.0, 0.0], [0.0, 0.0], False),  # nothing to recover
])
def test_recovery_defined_criterion(baseline, model, defined):
    from causal_scrubbing.core.statistics import recovery_defined

    assert recovery_defined(torch.tensor(baseline), torch.tensor(model)) is defined


def test_recovery_within_noise_over_many_rows_is_undefined():
    from causal_scrubbing.core.statistics import recovery_defined

    gen = torch.Generator().manual_seed(0)
    model = torch.rand(4000, generator=gen) * 2
    assert not recovery_defined(model[torch.randperm(4000, generator=gen)], model)
    assert recovery_defined(model + 0.05, model)  # tiny but certain: every row is worse


# ---- every public error and warning class is exported ------------------------------------

PUBLIC_CLASSES = ERROR_NAMES + [
    "CheckpointError", "UnsupportedModelError", "ExtraNotInstalled", "RewriteError",
    "ExperimentFileError",
]
WARNING_NAMES = ["SmallClassWarning", "FeatureWarning", "UndefinedRecoveryWarning"]


@pytest.mark.parametrize("name", PUBLIC_CLASSES)
def test_every_error_class_is_exported(name):
    assert name in cs.__all__ and issubclass(getattr(cs, name), cs.ScrubError)


@pytest.mark.parametrize("name", WARNING_NAMES)
def test_every_warning_class_is_exported(name):
    assert name in cs.__all__ and issubclass(getattr(cs, name), UserWarning)


def test_no_public_error_or_warning_class_is_left_unexported():
    import inspect

    from causal_scrubbing import experiments
    from causal_scrubbing.core import errors, rewrites, samplers

    defined = {name for module in (errors, samplers, rewrites, experiments)
               for name, obj in vars(module).items()
               if inspect.isclass(obj) and issubclass(obj, Exception | Warning)
               and obj.__module__.startswith("causal_scrubbing") and not name.startswith("_")}
    assert defined <= set(cs.__all__), sorted(defined - set(cs.__all__))
    assert set(PUBLIC_CLASSES + WARNING_NAMES) == defined
