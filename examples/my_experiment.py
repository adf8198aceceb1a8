"""An experiment file: a model of your own, its graph, a dataset, a loss and hypotheses.

Run it like a bundled experiment (it trains its model in about two seconds):

    causal-scrub run examples/my_experiment.py --out runs/mine
    causal-scrub show examples/my_experiment.py --hypothesis mlp_reads_xor_and_cd --row 0

The task: four input bits x = (a, b, c, d), label y = (a XOR b) OR (c AND d). The model is a
tiny residual network, embed -> MLP -> unembed, where the unembedding reads the sum of the
embedding and the MLP's output. The hypotheses say what the MLP computes:

- `mlp_computes_xor`: the MLP's output only depends on a XOR b (it misses c AND d: partial);
- `mlp_computes_y`: it depends only on the label (true here, but a label feature says little:
  see docs/concepts.md, section 8);
- `mlp_reads_xor_and_cd`: it computes y, reading only a XOR b and c AND d from its input;
- `mlp_reads_a_b`: it computes y, reading only a and b (wrong: it needs c and d too).

The format is documented in docs/experiment_files.md: the file defines `build()`, which
returns a `causal_scrubbing.experiments.Experiment`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import causal_scrubbing as cs
from causal_scrubbing.experiments import Experiment


class ResidualNet(nn.Module):
    """x [n, 4] -> logit [n]: resid = embed(x); resid += mlp(resid); logit = unembed(resid)."""

    def __init__(self, d_model: int = 8, d_hidden: int = 16):
        super().__init__()
        self.embed = nn.Linear(4, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_model))
        self.unembed = nn.Linear(d_model, 1)

    def forward(self, x: Tensor) -> Tensor:
        resid = self.embed(x)  # [n, d_model]
        resid = resid + self.mlp(resid)  # [n, d_model]
        return self.unembed(resid).squeeze(-1)  # [n]


def label(x: Tensor) -> Tensor:
    """y = (a XOR b) OR (c AND d) for bits x [n, 4]; float [n]."""
    return ((x[:, 0] != x[:, 1]) | ((x[:, 2] == 1) & (x[:, 3] == 1))).float()


def all_inputs() -> Tensor:
    """The 16 bit patterns [16, 4]."""
    return torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=torch.float32)


def train(seed: int = 0, steps: int = 500) -> ResidualNet:
    """Full-batch AdamW on the 16 patterns (about two seconds on one CPU thread)."""
    torch.manual_seed(seed)
    model = ResidualNet()
    x = all_inputs()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(x), label(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model


def graph(model: ResidualNet) -> cs.Graph:
    """The model as a graph: the unembedding's port sums the embedding and the MLP output."""
    return cs.Graph([
        cs.Input("x"),
        cs.Node("embed", lambda x: model.embed(x), x="x"),
        cs.Node("mlp", lambda resid: model.mlp(resid), resid="embed"),
        cs.Node("out", lambda resid: model.unembed(resid).squeeze(-1), resid=["embed", "mlp"]),
    ], output="out", module=model)


def dataset(repeats: int = 250) -> cs.Dataset:
    """Every pattern `repeats` times, with the label and the features the hypotheses use."""
    x = all_inputs().repeat(repeats, 1)  # [16 * repeats, 4]
    bits = x.long()
    xor = bits[:, 0] ^ bits[:, 1]
    cd = bits[:, 2] & bits[:, 3]
    return cs.Dataset({"x": x, "y": label(x), "xor": xor, "cd": cd,
                       "xor_and_cd": torch.stack([xor, cd], 1), "ab": bits[:, :2]})


def loss_fn(logit: Tensor, ref: cs.Dataset) -> Tensor:
    """Binary cross-entropy against the reference row's label, per row [n]."""
    return F.binary_cross_entropy_with_logits(logit, ref["y"], reduction="none")


def hypotheses() -> dict[str, cs.InterpNode]:
    def mlp(feature: str, reads: str | None = None) -> cs.InterpNode:
        node = cs.InterpNode("mlp", cs.SameFeature(feature), paths=cs.through("mlp"))
        if reads is not None:  # the MLP's input: the embedding, conditioned on `reads`
            node.add(cs.InterpNode("mlp_in", cs.SameFeature(reads),
                                   paths=cs.through("mlp").then("embed")))
        return node

    return {
        "mlp_computes_xor": cs.InterpNode("out", children=[mlp("xor")]),
        "mlp_computes_y": cs.InterpNode("out", children=[mlp("y")]),
        "mlp_reads_xor_and_cd": cs.InterpNode("out", children=[mlp("y", reads="xor_and_cd")]),
        "mlp_reads_a_b": cs.InterpNode("out", children=[mlp("y", reads="ab")]),
    }


def build() -> Experiment:
    return Experiment(
        name="my_experiment",
        description="y = (a XOR b) OR (c AND d) on a tiny residual MLP trained here",
        graph=graph(train()), dataset=dataset(), loss_fn=loss_fn, hypotheses=hypotheses(),
        descriptions={
            "mlp_computes_xor": "the MLP computes a XOR b; the direct path is resampled",
            "mlp_computes_y": "the MLP computes the label",
            "mlp_reads_xor_and_cd": "the MLP computes y from a XOR b and c AND d",
            "mlp_reads_a_b": "the MLP computes y from a and b alone",
        },
        subsets={"c AND d": lambda ref: ref["cd"] == 1, "not c AND d": lambda ref: ref["cd"] == 0},
    )
