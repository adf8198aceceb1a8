# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 1: scrub a model of your own, from scratch
#
# This tutorial takes a PyTorch model that knows nothing about causal scrubbing, writes it as
# a graph, states hypotheses about what one of its parts computes, and tests each hypothesis.
# Everything runs on a CPU in a few seconds.
#
# Open it as a notebook with `jupytext --to notebook 01_your_own_model.py`, or run it as a
# script with `python 01_your_own_model.py`.
#
# **The task.** The input is four bits x = (a, b, c, d). The label is
# y = (a XOR b) OR (c AND d).
#
# **The model.** A tiny residual network. An embedding writes into a residual stream, an MLP
# reads the stream and adds its output to it, and an unembedding reads the sum and produces a
# logit.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import causal_scrubbing as cs
from causal_scrubbing.show import explain

torch.manual_seed(0)


class ResidualNet(nn.Module):
    def __init__(self, d_model: int = 8, d_hidden: int = 16):
        super().__init__()
        self.embed = nn.Linear(4, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_model))
        self.unembed = nn.Linear(d_model, 1)

    def forward(self, x):
        resid = self.embed(x)  # [n, d_model]
        resid = resid + self.mlp(resid)  # [n, d_model]
        return self.unembed(resid).squeeze(-1)  # [n] logits


def label(x):
    return ((x[:, 0] != x[:, 1]) | ((x[:, 2] == 1) & (x[:, 3] == 1))).float()


patterns = torch.tensor([[(i >> k) & 1 for k in range(4)] for i in range(16)], dtype=torch.float32)
model = ResidualNet()
opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
for _ in range(500):  # full batch: all 16 patterns
    loss = F.binary_cross_entropy_with_logits(model(patterns), label(patterns))
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval().requires_grad_(False)
print(f"training loss {loss.item():.2e}")
assert ((model(patterns) > 0).float() == label(patterns)).all()  # every pattern right

# %% [markdown]
# ## 1. Write the model as a graph
#
# Causal scrubbing reasons about **paths**: routes from the output back to an input. So the
# model is written as a DAG of named nodes. An `Input` reads a dataset field. A `Node` has
# named **ports**, and a port receives the *sum* of the nodes wired into it. Here the
# unembedding's port `resid` sums the embedding and the MLP output, which is exactly the
# residual stream.
#
# Passing `module=model` lets `scrub(..., device="cuda")` move the weights.

# %%
graph = cs.Graph([
    cs.Input("x"),
    cs.Node("embed", lambda x: model.embed(x), x="x"),
    cs.Node("mlp", lambda resid: model.mlp(resid), resid="embed"),
    cs.Node("out", lambda resid: model.unembed(resid).squeeze(-1), resid=["embed", "mlp"]),
], output="out", module=model)

print(graph)
for path in graph.paths():
    print(" ", path)

# %% [markdown]
# There are two paths: the **direct** path `out.resid <- embed.x <- x`, and the path through
# the MLP, `out.resid <- mlp.resid <- embed.x <- x`. After treeifying, each path has its own
# copy of the input, so a hypothesis can feed different inputs to different paths.
#
# Check that the graph computes exactly what the model computes:

# %%
x = patterns.repeat(250, 1)  # [4000, 4]: every pattern 250 times, so expectations are exact
assert torch.equal(graph.forward(cs.Dataset({"x": x})), model(x))

# %% [markdown]
# ## 2. The dataset: inputs, labels and features
#
# A `Dataset` holds named tensors with one row per example: the model's input, the label the
# loss reads, and the **features** that hypotheses talk about. A feature is a field, or a
# function of the dataset, with one value per example.

# %%
bits = x.long()
xor = bits[:, 0] ^ bits[:, 1]
cd = bits[:, 2] & bits[:, 3]
data = cs.Dataset({
    "x": x, "y": label(x),
    "xor": xor,                              # a XOR b
    "cd": cd,                                # c AND d
    "xor_and_cd": torch.stack([xor, cd], 1),  # both: a class is a pair of values
    "ab": bits[:, :2],                       # the bits a and b themselves
})


def loss_fn(logit, ref):
    """Per-example loss, against the *reference* row's label."""
    return F.binary_cross_entropy_with_logits(logit, ref["y"], reduction="none")


# %% [markdown]
# ## 3. A first hypothesis: "the MLP computes a XOR b"
#
# A hypothesis is a tree of `InterpNode`s. The root claims the output. Each child claims
# some paths and says which feature they compute: `SameFeature("xor")` means *the value along
# these paths depends only on a XOR b*. Paths that no node claims are claimed to not matter.
#
# Causal scrubbing takes that claim literally. For each reference example, the MLP path gets
# an input drawn at random among the examples with the same a XOR b. The direct path, which
# nobody claimed, gets a uniformly random input. Then the score is how much of the model's
# loss survives:
#
#     loss recovered = (L_baseline - L_scrubbed) / (L_baseline - L_model)
#
# where the baseline is the model on random inputs.

# %%
mlp_xor = cs.InterpNode("out", children=[
    cs.InterpNode("mlp", cs.SameFeature("xor"), paths=cs.through("mlp")),
])
print(mlp_xor)
subsets = {"c AND d": lambda ref: ref["cd"] == 1, "not c AND d": lambda ref: ref["cd"] == 0}
r_xor = cs.scrub(graph, mlp_xor, data, loss_fn, seed=0, subsets=subsets, name="mlp computes xor")
print(r_xor)
for name, s in r_xor.subsets.items():
    print(f"  {name:12s} n={s['n']:4d}  recovered {s['loss_recovered']:.1%}")

# %% [markdown]
# About two thirds. The slices show where it fails. On rows with c AND d = 1, almost nothing
# is recovered. The hypothesis lets the MLP's input be swapped for any row with the same
# a XOR b, and that row usually has c AND d = 0, so the MLP stops reporting it.
#
# `explain` replays the draws for one reference row: which row each interpretation node drew,
# which feature value conditioned it, and which row every path of the model read. The rows
# are the same ones `scrub` used for that reference row (same `seed`).

# %%
row = int(torch.nonzero((data["cd"] == 1) & (data["xor"] == 0))[0])  # c AND d, a == b
e = explain(graph, mlp_xor, data, row=row, seed=0, name="mlp computes xor")
print(e)
mlp_row = e.draw("mlp").row
print("\nthe MLP read", data["x"][mlp_row].tolist(), "instead of", data["x"][row].tolist())

# %%
assert r_xor.loss_recovered < 0.8 and r_xor.subsets["c AND d"]["loss_recovered"] < 0.2

# %% [markdown]
# ## 4. A better hypothesis, stated in detail
#
# The MLP must compute the whole label. One way to say that is `SameFeature("y")` on the MLP.
# That is a weak claim, though. One node that claims every path that matters with
# `SameFeature(label)` recovers 100% for *any* model, in expectation (see
# [concepts.md](../concepts.md), section 8).
#
# A sharper hypothesis also says **how** the MLP gets there. It reads only a XOR b and
# c AND d from its input. A child node claims the MLP's input path, `through("mlp")` followed
# by `then("embed")`, and resamples it among rows with the same pair of values. A child's
# paths always extend its parent's.

# %%
def mlp_computes_y(reads: str) -> cs.InterpNode:
    return cs.InterpNode("out", children=[
        cs.InterpNode("mlp", cs.SameFeature("y"), paths=cs.through("mlp"), children=[
            cs.InterpNode("mlp_in", cs.SameFeature(reads), paths=cs.through("mlp").then("embed")),
        ]),
    ])


results = cs.scrub_many(graph, {
    "mlp computes xor": mlp_xor,
    "mlp reads xor and cd": mlp_computes_y("xor_and_cd"),
    "mlp reads a and b": mlp_computes_y("ab"),
}, data, loss_fn, seed=0, subsets=subsets)
for name, r in results.items():
    print(f"{name:22s} recovered {r.loss_recovered:7.1%}  "
          f"[{r.ci[0]:.1%}, {r.ci[1]:.1%}]  "
          + "  ".join(f"{k}: {s['loss_recovered']:.1%}" for k, s in r.subsets.items()))

# %% [markdown]
# - **"mlp reads xor and cd"** recovers essentially all of the loss. Swapping the MLP's input
#   for any row with the same (a XOR b, c AND d), and the direct path for a random row, leaves
#   the model's behaviour intact.
# - **"mlp reads a and b"** is wrong, and the score says so. Its input keeps a and b but
#   not c and d. Whenever a == b and the draw changes c AND d, the MLP gives the wrong
#   answer, on both slices.
#
# You may see a `SmallClassWarning` here: some (a XOR b, c AND d) classes hold fewer rows
# than are drawn from them, so some rows are drawn twice. That is harmless here, because each
# class is a few bit patterns repeated many times. On real data it warns that a class is too
# small to resample from well.
#
# The numbers come with a 95% bootstrap interval over reference rows. `r.per_example` keeps
# one loss per row (scrubbed, model, baseline) for any slicing you like, and `r.save(dir)`
# writes them to disk.

# %%
good, wrong = results["mlp reads xor and cd"], results["mlp reads a and b"]
assert good.loss_recovered > 0.99 and wrong.loss_recovered < 0.8
pe = good.per_example
print("rows where the scrubbed loss is worse than the model's by > 0.01:",
      int((pe["scrubbed"] - pe["model"] > 0.01).sum()), "of", len(pe["scrubbed"]))

# %% [markdown]
# ## 5. From here
#
# - Package all of this as an **experiment file**, a `.py` file with a `build()` function,
#   and the command line runs it like a bundled experiment. It prints the table, and writes
#   `results.json` and an HTML report:
#   `causal-scrub run examples/my_experiment.py`. The file
#   [examples/my_experiment.py](../../examples/my_experiment.py) is this tutorial's model and
#   hypotheses in that form ([format](../experiment_files.md)).
# - `causal-scrub show examples/my_experiment.py --row 0` prints what `explain` printed above,
#   for every hypothesis.
# - For a transformer, `cs.models.Transformer(...).graph()` writes the residual-decomposed
#   graph for you. Tutorial 2 walks through a published experiment on one.
