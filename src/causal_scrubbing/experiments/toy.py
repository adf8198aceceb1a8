"""A toy you can check by hand: an AND gate that also reads a distractor bit.

Each example is three fair, independent bits x = (a, b, c); the label is y = a AND b. The
model graph writes three terms into one residual port of the output, which is a logit:

    out = A + B + C,   A = 6a - 4.5,   B = 6b - 4.5,   C = 0 * c

so the logit is 6a + 6b - 9 (+3 when y = 1, -3 or -9 otherwise) and the loss is binary
cross-entropy against the *reference* label. Hypotheses:

- `correct`: A depends only on a, B only on b; C is unclaimed (resampled, harmlessly): 100%.
- `only_a`: only A is claimed; B and C read one random other input: exactly 50% in
  expectation (worked through in docs/concepts.md).
- `only_b`: the mirror image: 50%.
- `y_jointly`: one node claims A and B together and says they compute y = a AND b: 100% on
  average, yet rows with a = b = 0 get worse and rows with one bit set get better. The mean
  hides this cancellation; the per-example losses show it (docs/concepts.md).
- `y_separately`: A and B each claimed to compute y, drawn independently: 83.6%, because
  two independent draws with y = 0 can give a = b = 1.

Example:
    >>> from causal_scrubbing.experiments import toy
    >>> exp = toy.build()
    >>> list(exp.hypotheses)
    ['correct', 'only_a', 'only_b', 'y_jointly', 'y_separately']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.data import Dataset
from ..core.graph import Graph, Input, Node
from ..core.hypothesis import InterpNode
from ..core.paths import through
from ..core.samplers import SameFeature
from . import Experiment


def dataset(repeats: int = 500) -> Dataset:
    """All 8 bit patterns, each `repeats` times: exactly uniform, so expectations are exact."""
    bits = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float32)
    x = bits.repeat(repeats, 1)  # [8 * repeats, 3]
    return Dataset({"x": x, "a": x[:, 0].long(), "b": x[:, 1].long(), "c": x[:, 2].long(),
                    "y": x[:, 0] * x[:, 1]})


def graph() -> Graph:
    return Graph([
        Input("x"),
        Node("A", lambda x: 6 * x[:, 0] - 4.5, x="x"),
        Node("B", lambda x: 6 * x[:, 1] - 4.5, x="x"),
        Node("C", lambda x: 0 * x[:, 2], x="x"),
        Node("out", lambda resid: resid, resid=["A", "B", "C"]),
    ], output="out")


def loss_fn(out: Tensor, ref: Dataset) -> Tensor:
    """Binary cross-entropy of the logit against the reference label, per example."""
    return F.binary_cross_entropy_with_logits(out, ref["y"], reduction="none")


def hypotheses() -> dict[str, InterpNode]:
    def a_node(feature: str = "a") -> InterpNode:
        return InterpNode("A", SameFeature(feature), paths=through("A"))

    def b_node(feature: str = "b") -> InterpNode:
        return InterpNode("B", SameFeature(feature), paths=through("B"))

    return {
        "correct": InterpNode("out", children=[a_node(), b_node()]),
        "only_a": InterpNode("out", children=[a_node()]),
        "only_b": InterpNode("out", children=[b_node()]),
        "y_jointly": InterpNode("out", children=[
            InterpNode("AB", SameFeature("y"), paths=through("A") | through("B"))]),
        "y_separately": InterpNode("out", children=[a_node("y"), b_node("y")]),
    }


#: Loss recovered in expectation, worked out by hand in docs/concepts.md.
EXPECTED = {"correct": 1.0, "only_a": 0.5, "only_b": 0.5, "y_jointly": 1.0, "y_separately": 0.836}


def build() -> Experiment:
    return Experiment(
        name="toy",
        description="AND gate y = a AND b with a distractor bit c (hand-checkable)",
        graph=graph(), dataset=dataset(), loss_fn=loss_fn, hypotheses=hypotheses(),
        published=dict(EXPECTED),
        published_label="by hand",
        descriptions={
            "correct": "A reads a, B reads b; C unclaimed",
            "only_a": "A reads a; B and C resampled",
            "only_b": "B reads b; A and C resampled",
            "y_jointly": "A and B together read y = a AND b",
            "y_separately": "A and B each read y, drawn independently",
        },
        # Slices that separate inputs y_jointly treats as equivalent, so cancellation shows.
        subsets={"a=b=1": lambda ref: (ref["a"] == 1) & (ref["b"] == 1),
                 "one bit": lambda ref: ref["a"] + ref["b"] == 1,
                 "a=b=0": lambda ref: (ref["a"] == 0) & (ref["b"] == 0)},
        # The candidates `causal-scrub search` tries for what each kept node computes.
        features={"x": "x", "y": "y", "a": "a", "b": "b", "c": "c"},
    )
