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
# # Tutorial 2: Redwood's parentheses-balance checker
#
# Redwood Research's causal-scrubbing post tests a hypothesis about how a 3-layer transformer
# decides whether a string of parentheses is balanced. This tutorial runs that experiment on
# the bundled model. It is a model of the same shape that we trained from a seed, because
# Redwood's weights are not public.
#
# We look at the model, the data and the features, read one hypothesis tree, scrub a few
# hypotheses on a small sample, and follow one reference row through the draws. The tutorial
# uses few reference rows so that it runs in seconds. `causal-scrub run paren` runs every
# hypothesis on 4,000 rows, and [docs/paren.md](../paren.md) discusses the full results.

# %%
import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments import load
from causal_scrubbing.experiments.paren import ROLES
from causal_scrubbing.experiments.paren import data as paren_data
from causal_scrubbing.experiments.paren import features as f
from causal_scrubbing.show import explain

exp = load("paren")  # loads the checkpoint, draws 100,000 strings, checks every rewrite
model = exp.graph.module
print(exp.description)
print(model.cfg)

# %% [markdown]
# ## The data
#
# A string of 2-40 parens is tokenised as `[START] parens [END] [PAD]...` to 42 positions.
# It is **balanced** if it passes two tests:
#
# - the **count test**: as many "(" as ")";
# - the **horizon test**: reading from the right, no suffix has more "(" than ")". In other
#   words, the nesting depth never goes negative.
#
# The dataset holds only the tokens. Labels and features are functions of them.

# %%
ds = exp.dataset
rows = ds.rows(torch.arange(6))
for tokens, cat in zip(rows["tokens"], paren_data.category(rows["tokens"])):
    print(f"{paren_data.to_string(tokens):42s} {paren_data.CATEGORIES[int(cat)]}")
print("count test:  ", f.count_test(rows).tolist())
print("horizon test:", f.horizon_test(rows).tolist())

# %% [markdown]
# ## The model as a graph
#
# `model.graph()` writes the transformer as a residual-decomposed DAG. Every head, MLP and
# embedding is a node, and each input port (a head's `q`, `k` and `v`, an MLP's `in`) sums
# the outputs of everything upstream. The experiment's graph adds three **rewrites**, each
# checked numerically against the original when it is built:
#
# - the count head's inputs are split by position;
# - the horizon head's inputs are split by position;
# - the open-proportion head is written as φ(p) + (head − φ(p)).

# %%
g = exp.graph
print(g)
print("the count head's position-split inputs:", [n for n in g.nodes if n.startswith("a1.h0.")])

# %% [markdown]
# ## The hypothesis
#
# Redwood's claim 1 says that three heads carry the answer. Heads 1.0 and 2.0 compute
# "equal counts, and starts with (". Head 2.1 computes the horizon test. In our model these
# roles are played by these components (the evidence is in
# [paren_circuit.md](../paren_circuit.md)):

# %%
for role, node in ROLES.items():
    print(f"  {role:20s} {node}")
print()
print(exp.hypotheses["Ex1b"])

# %% [markdown]
# Read the tree from the top. The root `logits` keeps the reference row (`Exact()`), and
# every path that no child claims reads one random row (`others: Uniform()`). Node `10`
# claims every path through the count head `a1.h0` that avoids the later roles' nodes. Its
# input is resampled among strings with the same (count test, starts with "(") pair. Nodes
# `20` and `21` do the same for `m1` and the horizon head.
#
# ## Scrub
#
# `scrub_many` runs several hypotheses on the same reference rows and shares the model and
# baseline runs. The baseline (0%) is Redwood's Ex0b, where everything is scrubbed. The
# subsets report loss recovered separately for balanced strings and each kind of failure.

# %%
keys = ["Ex1a", "Ex1b", "Ex2b"]
results = cs.scrub_many(exp.graph, {k: exp.hypotheses[k] for k in keys}, exp.dataset,
                        exp.loss_fn, n=300, seed=0, baseline=exp.baseline, subsets=exp.subsets)
print(f"model loss {results['Ex1a'].model_loss:.4f}, baseline loss {results['Ex1a'].baseline_loss:.4f}")
for k, r in results.items():
    print(f"{k:5s} {exp.descriptions[k]:70s} recovered {r.loss_recovered:6.1%} "
          f"[{r.ci[0]:.1%}, {r.ci[1]:.1%}]  Redwood: {exp.published[k]:.0%}")

# %%
for k, r in results.items():
    print(k, "  ".join(f"{s}: {v['loss_recovered']:.0%}" for s, v in r.subsets.items()))

# %% [markdown]
# With only 300 reference rows the intervals are wide, but the ordering is already visible.
# A finer feature for the count heads (Ex1b: count test *and* starts with "(") explains more
# than the count test alone (Ex1a). Adding claim 2 (Ex2b) says where the count head reads
# its input. The model uses position 1, through the φ estimate of the proportion head and the
# embedding, and that costs little. The per-subset numbers show where each hypothesis loses
# loss.
#
# ## Follow one reference row
#
# `explain` replays `scrub`'s draws for one reference row. It shows the row every
# interpretation node drew and the feature value that conditioned it. It also shows every
# *lane*: a distinct dataset the treeified model reads, with the path prefixes that lead
# into it. With the same `n` and `seed`, these are exactly the rows the scrub above used.

# %%
e = explain(exp.graph, exp.hypotheses["Ex2b"], exp.dataset, row=0, n=300, seed=0, name="Ex2b")
print(e)

# %%
ref = e.ref_row
print(f"{'reference':13s} row {ref:6d}  {paren_data.to_string(ds['tokens'][ref])}")
for d in e.draws:
    string = paren_data.to_string(ds["tokens"][d.row])
    print(f"{d.label:13s} row {d.row:6d}  {string:42s} kept {d.condition}")

# %% [markdown]
# Every node's string shares its claimed feature with its parent's string. The count heads'
# strings have the reference's (count test, starts open) pair, and the position-1 nodes keep
# the proportion of "(" or whether the string starts open. Everything else is free to
# differ.
#
# ## Next
#
# - `causal-scrub run paren` runs all nine experiments (Ex0a-Ex4) on 4,000 rows, with the
#   per-subset table, `results.json` and an HTML report.
# - `causal-scrub show paren --hypothesis Ex4 --row 0` prints the draws above for the largest
#   hypothesis, which has 50 interpretation nodes and 49 lanes.
# - [docs/paren.md](../paren.md) compares our numbers with Redwood's and explains the
#   differences.

# %%
r1a, r1b = results["Ex1a"], results["Ex1b"]
assert 0.3 < r1a.loss_recovered < 1.0 and 0.3 < r1b.loss_recovered < 1.0
assert all(r.n == 300 for r in results.values())
