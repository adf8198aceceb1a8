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
# # Tutorial 3: an IOI-style hypothesis on a GPT-2-shaped model
#
# **Indirect-object identification** (IOI; Wang et al., 2022): given "When Mary and John went
# to the store, John gave a drink to", GPT-2 small predicts the indirect object (IO), *Mary*,
# and not the repeated subject (S), *John*. The published circuit has several classes of
# heads:
#
# - **name movers** copy the IO name to the output;
# - **S-inhibition** heads steer the name movers' queries away from the subject;
# - **induction** and **duplicate-token** heads notice that S appears twice;
# - **previous-token** heads feed the induction heads;
# - **negative** and **backup** name movers also write to the output.
#
# This tutorial writes that hypothesis as an interpretation tree on a transformer with
# GPT-2's architecture, and scrubs it.
#
# **A caveat.** So that the tutorial runs in seconds with no download, the model is a
# scaled-down GPT-2 (4 layers, 8 heads, d_model 64, a 500-token vocabulary, 24 positions) with **random
# weights**. It cannot do IOI, so the percentages below say nothing about GPT-2. Section 5
# shows how to spot that from the numbers. The code is the same for real GPT-2 small weights
# (`models.from_hf`, see [docs/gpt2.md](../gpt2.md)); only the model and the vocabulary
# change. The dataset, model and hypothesis come from
# `causal_scrubbing.experiments.ioi.workload`, the workload the benchmark uses at full GPT-2
# small size (`ioi.random_workload`). The real IOI experiment, with GPT-2's weights, real
# prompts and the published heads, is `causal-scrub run ioi --weights DIR`
# ([docs/ioi.md](../ioi.md)).

# %%
import torch

import causal_scrubbing as cs
from causal_scrubbing.experiments.ioi import workload as ioi  # the random-weight workload
from causal_scrubbing.show import explain

N_LAYERS, N_HEADS, D_MODEL, D_VOCAB, N_CTX = 4, 8, 64, 500, 24

# %% [markdown]
# ## 1. The dataset
#
# Each sequence is a fixed template of filler tokens with three name slots. In ABBA order
# the IO comes first, in BABA order the S comes first, and the third slot repeats S. The
# model is scored on predicting IO at the last position. The features the hypothesis will
# use are `io`, `s`, `order` (0 = ABBA) and `template`.

# %%
data = ioi.dataset(2000, n_ctx=N_CTX, d_vocab=D_VOCAB, seed=0)
print(data)
first = data.rows(torch.arange(3))
for i in range(3):
    is_name = first["tokens"][i] >= D_VOCAB - ioi.N_NAMES  # [N_CTX]: name tokens come last
    names = [(pos, int(first["tokens"][i, pos])) for pos in torch.nonzero(is_name).flatten().tolist()]
    print(f"row {i}: io={int(first['io'][i])} s={int(first['s'][i])} "
          f"order={'ABBA' if first['order'][i] == 0 else 'BABA'}  names at (position, token): {names}")

# %% [markdown]
# ## 2. The model and its graph
#
# `model.graph()` is the residual-decomposed DAG. The nodes are `embed`, `pos_embed`, one
# node per head `a{layer}.h{head}` with ports `q`, `k` and `v`, one per MLP `m{layer}`, and
# `out`. Every port sums the outputs of everything upstream of it, so the number of paths
# grows exponentially with depth. Nothing here enumerates them: the engine works with
# *lanes*, the distinct datasets the hypothesis assigns.

# %%
model = ioi.model(n_layers=N_LAYERS, n_heads=N_HEADS, d_model=D_MODEL, d_vocab=D_VOCAB, n_ctx=N_CTX)
graph = model.graph()
print(graph)
tokens = data["tokens"][:8]
assert torch.allclose(graph.forward(data.rows(torch.arange(8))), model(tokens), atol=1e-5)

# %% [markdown]
# ## 3. Which heads play which role
#
# In GPT-2 small the roles belong to specific heads (`ioi.ROLES_12`, layer and head). Here
# they are mapped onto our smaller model by scaling the layer. On random weights the choice
# is arbitrary. With real weights you would use the published heads, or heads you found
# yourself.

# %%
roles = ioi.roles(N_LAYERS, N_HEADS)
for role, heads in roles.items():
    print(f"  {role:20s} {heads}")

# %% [markdown]
# ## 4. Writing the hypothesis
#
# Start at the output. The name movers' **direct** paths to the output, `direct(head)`,
# compute the IO name: `SameFeature("io")`. One level down, the name movers' *queries* read
# the S-inhibition heads' direct output. That is `direct(nm, "q").then(sinh, direct=True)`,
# a path that extends the parent's, and it computes which name is S:
# `SameFeature("s")`. The name movers' *values* read the IO token's embedding. Every
# child's matcher starts with its parent's, because a child claims a subset of its parent's
# paths.
#
# Here is the top of the tree, written by hand:

# %%
nm, sinh = roles["name mover"], roles["s-inhibition"]
name_movers = cs.union([cs.direct(h) for h in nm])
s_inhibition = cs.union([cs.direct(h, "q").then(s, direct=True) for h in nm for s in sinh])
io_embedding = cs.union([cs.direct(h, "v").then("embed", direct=True) for h in nm])

top = cs.InterpNode("logits", cs.Exact(), children=[
    cs.InterpNode("name movers", cs.SameFeature("io"), paths=name_movers, children=[
        cs.InterpNode("s-inhibition", cs.SameFeature("s"), paths=s_inhibition),
        cs.InterpNode("io embedding", cs.SameFeature("io"), paths=io_embedding),
    ]),
])
corr = cs.check(graph, top)  # every claim validated before any compute
print(f"{len(corr.nodes)} interpretation nodes; name movers: {nm}")

# %% [markdown]
# Mistakes are caught before any compute, and the error says what to fix. Here a child
# claims the S-inhibition heads' paths *without* going through the name movers' queries, so
# it does not extend its parent's claim:

# %%
bad = cs.InterpNode("logits", children=[
    cs.InterpNode("name movers", cs.SameFeature("io"), paths=name_movers, children=[
        cs.InterpNode("s-inhibition", cs.SameFeature("s"), paths=cs.union([cs.through(s) for s in sinh])),
    ]),
])
try:
    cs.check(graph, bad)
except cs.NotExtendingParentError as err:
    print(type(err).__name__, "-", str(err)[:300], "...")

# %% [markdown]
# The full circuit in `ioi.hypotheses` continues the same way. Below S-inhibition come the
# induction heads (through the S-inhibition heads' values), then the previous-token heads
# (through the induction heads' keys), and the duplicate-token heads. Beside the name
# movers sit the negative and backup name movers. That makes 9 interpretation nodes:

# %%
hypotheses = ioi.hypotheses(roles)
hypotheses["top of the circuit"] = top
print([n.name for n in hypotheses["circuit"].walk()])

# %% [markdown]
# ## 5. Scrub, and read the numbers critically

# %%
import warnings

with warnings.catch_warnings(record=True) as caught:  # show the library's warnings as text
    warnings.simplefilter("always")
    results = cs.scrub_many(graph, hypotheses, data, ioi.loss_fn, n=100, seed=0)
for w in caught:
    print(f"{type(w.message).__name__}: {w.message}")
r0 = next(iter(results.values()))
print(f"model loss {r0.model_loss:.3f}, baseline (random inputs) loss {r0.baseline_loss:.3f}")
for name, r in results.items():
    print(f"  {name:20s} scrubbed loss {r.loss:.3f}  recovered {r.loss_recovered:8.1%}  "
          f"95% CI [{r.ci[0]:.0%}, {r.ci[1]:.0%}]")

# %% [markdown]
# Loss recovered is (L_baseline − L_scrubbed) / (L_baseline − L_model). Here the model's
# loss and the baseline's are almost equal, both near 6.7 nats, where a uniform guess over
# 500 tokens would give ln 500 ≈ 6.2. A random-weight model does no better on the real
# input than on a random one. The denominator is then nearly zero, and
# the percentages and their enormous intervals are noise; `scrub` says so with an
# `UndefinedRecoveryWarning` (printed above), and tables and reports print "undefined"
# instead of a percentage. **Always look at the gap between
# the model and the baseline before reading a percentage.** `ScrubResult` prints both losses
# for this reason. With GPT-2's real weights the model's IO loss is far below the baseline,
# and the same code gives meaningful numbers.

# %%
gap = r0.baseline_loss - r0.model_loss
print(f"baseline - model = {gap:.4f} nats")
assert abs(gap) < 0.5  # the random model cannot do the task

# %% [markdown]
# ## 6. What the engine computes, and one row's draws
#
# Treeified, even this small graph has over ten million paths, and GPT-2 small's has
# astronomically more. A hypothesis, though, assigns only a handful of distinct datasets
# (lanes). The engine runs one batched forward pass per lane and recomputes only the nodes
# where lanes mix:

# %%
for name in ("name movers only", "circuit"):
    plan = cs.engine.compile_plan(cs.check(graph, hypotheses[name]))
    print(f"{name:18s} {graph.count_paths():.2e} paths, {len(plan.lanes)} lanes, "
          f"{len(plan.ops)} nodes recomputed")

# %%
e = explain(graph, hypotheses["top of the circuit"], data, row=0, n=100, seed=0, name="top of the circuit")
for d in e.draws:
    print(f"{d.label:18s} {d.sampler:18s} kept {d.condition:10s} -> row {d.row}")
for lane in e.lanes:
    print(f"{lane.label:20s} row {lane.row:5d}  {lane.n_paths:14,d} paths, e.g. {lane.prefixes[0]}")

# %% [markdown]
# The name movers' own draw keeps the reference's IO name. That draw is what their children
# are conditioned on. A name mover's output is computed from its inputs, and these are
# assigned as follows:
#
# - its queries from the S-inhibition heads read a sequence with the same S as that draw;
# - its values from the embedding read a sequence with the same IO;
# - every other input (its keys, and the rest of its queries and values) reads one random
#   sequence, `other[name movers]`.
#
# All the paths that avoid the name movers' direct outputs, almost all of them, read
# another random sequence, `other[logits]`. From the shell, `causal-scrub show` prints the
# same for any experiment (for the real IOI task, once GPT-2's weights are at hand).
#
# ## With GPT-2's real weights
#
# `causal_scrubbing.experiments.ioi` is the real task: prompts from 18 templates in both name
# orders, tokenised by GPT-2's own tokenizer, the features `io`, `s`, the positions of IO, S1,
# S2 and END, `template` and `order`, and hypotheses at increasing detail on the published
# heads. With GPT-2 small downloaded to a local folder (see [docs/ioi.md](../ioi.md)):
#
# ```python
# from causal_scrubbing.experiments import ioi as real_ioi
# exp = real_ioi.build(weights="/path/to/local/gpt2")  # or: causal-scrub run ioi --weights DIR
# results = cs.scrub_many(exp.graph, exp.hypotheses, exp.dataset, exp.loss_fn, n=256,
#                         baseline=exp.baseline)
# ```
