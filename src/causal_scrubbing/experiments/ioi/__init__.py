"""Indirect-object identification (Wang et al., 2022) on GPT-2 small, as causal-scrubbing hypotheses.

In "When Mary and John went to the store, John gave a drink to", GPT-2 small predicts the
indirect object (IO), " Mary", and not the repeated subject (S), " John". "Interpretability in
the Wild" explains this with a circuit of attention-head classes: *duplicate-token* and
*induction* heads (fed by *previous-token* heads) notice at S2 that S is repeated;
*S-inhibition* heads move that to the last position (END), where they steer the queries of the
*name mover* heads away from S; the name movers attend to the IO and copy it to the logits.
*Backup* name movers take over when name movers are ablated and *negative* name movers write
against the answer.

This module writes that account as hypotheses at increasing detail (`hypotheses`), each an
interpretation tree whose claims are paths of GPT-2's residual-decomposed graph and whose
samplers say what each head class computes:

- `name movers`: the name movers' direct effect on the logits depends only on the IO token
  (`SameFeature("io")`); every other path reads an unrelated prompt.
- `+ S-inhibition`: inside the name movers, their queries read the S-inhibition heads' direct
  output on a prompt with the same subject and name order (`S & order`), their keys and values
  read their own prompt, and the rest of their queries an unrelated prompt.
- `+ induction & duplicate`: the S-inhibition heads' values read the induction and the
  duplicate-token heads' direct output on prompts with the same subject at the same positions
  (`S & positions`); their queries and keys read their own prompt.
- `+ previous token`: the induction heads' keys read the previous-token heads' direct output
  on a prompt with the same subject at the same positions.
- `all name movers`, `full circuit`: `name movers` and `+ previous token` with the backup and
  negative name movers' direct effects claimed too (`SameFeature("io")`).
- `nothing scrubbed` (100%) and `everything scrubbed` (0%: every input resampled).

The loss is the negative logit difference, -(logit(IO) - logit(S)) at END, the paper's
metric; loss recovered is then the fraction of the logit difference (above the all-resampled
baseline) that the hypothesis keeps. `ce_loss_fn` (cross-entropy of IO) is the alternative.
Claims are position-agnostic: a claimed head's output at every position is computed on the
drawn prompt. Only END is read at the output, and `S & positions` pins the positions the
lower heads are read at. See docs/ioi.md.

The weights are not bundled: `build(weights=DIR)` loads GPT-2 small and its tokenizer from a
local Hugging Face directory (`causal-scrub run ioi --weights DIR`). `random_workload` is the
benchmark's GPT-2-sized random-weight workload (`ioi.workload`), kept unchanged.

Example (a random-weight model of GPT-2 small's depth and width in heads, and a word-level
tokenizer, so that it runs anywhere; the numbers mean nothing about GPT-2):
    >>> import causal_scrubbing as cs
    >>> from causal_scrubbing.experiments import ioi
    >>> tok = ioi.WordTokenizer.for_ioi()
    >>> model = cs.models.Transformer(cs.models.Config(n_layers=12, d_model=48, n_heads=12,
    ...     d_head=4, d_mlp=192, d_vocab=len(tok), n_ctx=32, act_fn="gelu_new"))
    >>> exp = ioi.experiment(model, tok, n_dataset=2000)
    >>> list(exp.hypotheses)[:4]
    ['nothing scrubbed', 'everything scrubbed', 'name movers', '+ S-inhibition']
    >>> [n.name for n in exp.hypotheses["+ previous token"].walk()][1:4]
    ['name movers', 'name mover keys & values', 'S-inhibition']
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import ScrubError, missing_extra
from ...core.hypothesis import InterpNode
from ...core.names import head_name
from ...core.paths import chains
from ...core.samplers import Exact, SameFeature, Uniform
from ...models import Transformer
from .. import Experiment
from . import data, trained, workload
from .data import (
    ABBA,
    BABA,
    NAMES,
    OBJECTS,
    PLACES,
    TEMPLATES,
    Tokenizer,
    WordTokenizer,
    dataset,
    prompt,
    s_and_order,
    s_and_positions,
)
from .workload import random_workload

__all__ = ["ABBA", "BABA", "HEADS", "NAMES", "OBJECTS", "PLACES", "ROLES", "TEMPLATES",
           "MissingWeightsError", "Tokenizer", "WordTokenizer", "build", "ce_loss_fn", "data",
           "dataset", "experiment", "hypotheses", "load_gpt2", "logit_diff", "loss_fn", "prompt",
           "random_workload", "read_at_end", "s_and_order", "s_and_positions", "trained",
           "workload"]

#: GPT-2 small's head classes in the IOI circuit (Wang et al., 2022), as (layer, head).
HEADS: dict[str, list[tuple[int, int]]] = {
    "name mover": [(9, 9), (9, 6), (10, 0)],
    "backup name mover": [(9, 0), (9, 7), (10, 1), (10, 2), (10, 6), (10, 10), (11, 2), (11, 9)],
    "negative name mover": [(10, 7), (11, 10)],
    "s-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
    "induction": [(5, 5), (5, 8), (5, 9), (6, 9)],
    "duplicate token": [(0, 1), (0, 10), (3, 0)],
    "previous token": [(2, 2), (4, 11)],
}

#: The same, as graph node names (`a9.h9`, ...).
ROLES: dict[str, list[str]] = {role: [head_name(layer, h) for layer, h in heads]
                               for role, heads in HEADS.items()}

DESCRIPTIONS = {
    "nothing scrubbed": "the model as it is (100%)",
    "everything scrubbed": "every input resampled (the 0% point)",
    "name movers": "(a) name movers' direct effect depends only on the IO",
    "+ S-inhibition": "(b) + name movers' queries read S-inhibition (same S and order)",
    "+ induction & duplicate": "(c) + S-inhibition values read induction and duplicate-token heads",
    "+ previous token": "(d) + induction keys read the previous-token heads",
    "all name movers": "(a) with the backup and negative name movers' direct effects",
    "full circuit": "(d) with the backup and negative name movers' direct effects",
}

PUBLISHED: dict[str, float | None] = {"nothing scrubbed": 1.0, "everything scrubbed": 0.0}

SUBSETS = {
    "ABBA": lambda ref: ref["order"] == ABBA,
    "BABA": lambda ref: ref["order"] == BABA,
}

#: Environment variable read when `build()` is given no weights directory.
WEIGHTS_ENV = "CAUSAL_SCRUBBING_GPT2"

WEIGHTS_HINT = ("The ioi experiment runs on GPT-2 small, whose weights are not bundled: on a machine "
                "with internet run `hf download openai-community/gpt2 config.json model.safetensors "
                "tokenizer.json vocab.json merges.txt --local-dir gpt2` (older huggingface_hub: "
                "`huggingface-cli download gpt2 --local-dir gpt2`), copy the folder here, then "
                "`causal-scrub run ioi --weights gpt2`.")


class MissingWeightsError(ScrubError):
    """The GPT-2 weights the IOI experiment needs were not given or could not be loaded."""


# ---- the behaviour ---------------------------------------------------------------------------


def logit_diff(logits: Tensor, ref: Dataset) -> Tensor:
    """logit(IO) - logit(S) at END [n], from the logits at END [n, d_vocab]."""
    io = logits.gather(1, ref["io"][:, None].to(logits.device))[:, 0]  # [n]
    s = logits.gather(1, ref["s"][:, None].to(logits.device))[:, 0]  # [n]
    return io - s


def loss_fn(logits: Tensor, ref: Dataset) -> Tensor:
    """The table's loss: the negative logit difference at END [n] (lower is better)."""
    return -logit_diff(logits, ref)


def ce_loss_fn(logits: Tensor, ref: Dataset) -> Tensor:
    """Cross-entropy of the IO token at END [n] (an alternative loss; `build(loss="ce")`)."""
    return F.cross_entropy(logits, ref["io"].to(logits.device), reduction="none")


LOSSES = {"logit_diff": loss_fn, "ce": ce_loss_fn}


# ---- the hypotheses --------------------------------------------------------------------------


def hypotheses(roles: dict[str, list[str]] = ROLES) -> dict[str, InterpNode]:
    """The IOI hypotheses in the order of the results table (see the module docstring)."""
    nm, si, ind = roles["name mover"], roles["s-inhibition"], roles["induction"]
    dup, prev = roles["duplicate token"], roles["previous token"]
    same_s_order = SameFeature(s_and_order, name="S & order")
    same_s_pos = SameFeature(s_and_positions, name="S & positions")

    def name_movers(depth: int) -> InterpNode:
        """Depth 0: (a); 1: + S-inhibition; 2: + induction & duplicate; 3: + previous token."""
        node = InterpNode("name movers", SameFeature("io"), paths=chains((nm, None)))
        if depth < 1:
            return node
        node.add(InterpNode("name mover keys & values", Exact(),
                            paths=chains((nm, "k")) | chains((nm, "v"))))
        sinh = node.add(InterpNode("S-inhibition", same_s_order,
                                   paths=chains((nm, "q"), (si, None))))
        if depth < 2:
            return node
        sinh.add(InterpNode("S-inhibition queries & keys", Exact(),
                            paths=chains((nm, "q"), (si, "q")) | chains((nm, "q"), (si, "k"))))
        induction = sinh.add(InterpNode("induction", same_s_pos,
                                        paths=chains((nm, "q"), (si, "v"), (ind, None))))
        sinh.add(InterpNode("duplicate token", same_s_pos,
                            paths=chains((nm, "q"), (si, "v"), (dup, None))))
        if depth < 3:
            return node
        induction.add(InterpNode("induction queries & values", Exact(),
                                 paths=chains((nm, "q"), (si, "v"), (ind, "q"))
                                 | chains((nm, "q"), (si, "v"), (ind, "v"))))
        induction.add(InterpNode("previous token", same_s_pos,
                                 paths=chains((nm, "q"), (si, "v"), (ind, "k"), (prev, None))))
        return node

    def others() -> list[InterpNode]:
        return [InterpNode("backup name movers", SameFeature("io"),
                           paths=chains((roles["backup name mover"], None))),
                InterpNode("negative name movers", SameFeature("io"),
                           paths=chains((roles["negative name mover"], None)))]

    def root(*children: InterpNode) -> InterpNode:
        return InterpNode("logits", Exact(), children=children)

    return {
        "nothing scrubbed": InterpNode("logits", Exact()),
        "everything scrubbed": InterpNode("logits", Uniform()),
        "name movers": root(name_movers(0)),
        "+ S-inhibition": root(name_movers(1)),
        "+ induction & duplicate": root(name_movers(2)),
        "+ previous token": root(name_movers(3)),
        "all name movers": root(name_movers(0), *others()),
        "full circuit": root(name_movers(3), *others()),
    }


# ---- the model and the experiment ------------------------------------------------------------


#: circuit name -> (what the experiment is, the hypotheses from roles, their descriptions)
CIRCUITS: dict[str, tuple[str, Callable[[dict[str, list[str]]], dict[str, InterpNode]],
                          dict[str, str]]] = {
    "gpt2": ("Wang et al.'s indirect-object circuit in GPT-2 small", hypotheses, DESCRIPTIONS),
    "trained": ("indirect-object identification on our 4-layer model trained on IOI prompts",
                trained.hypotheses, trained.DESCRIPTIONS),
}


def read_at_end(model: Transformer, length: int) -> Transformer:
    """Make `model` output only the logits at the last position, END, of `length`-token
    prompts: [batch, d_vocab] (its unembedding becomes a classifier read there). In place."""
    if length > model.cfg.n_ctx:
        raise ScrubError(f"IOI prompts are {length} tokens long but the model's context is "
                         f"{model.cfg.n_ctx}; use fewer or shorter templates.")
    model.cfg = dataclasses.replace(model.cfg, head="classifier", classifier_pos=length - 1)
    return model


def experiment(model: Transformer, tokenizer: Tokenizer, *, n_dataset: int = 20_000, seed: int = 0,
               roles: dict[str, list[str]] = ROLES, loss: str = "logit_diff",
               default_n: int = 256, circuit: str = "gpt2") -> Experiment:
    """The IOI experiment on `model` (changed in place to read END) with prompts tokenised by
    `tokenizer`: `n_dataset` source prompts, of which `default_n` are reference rows.
    `circuit` is `"gpt2"` (Wang et al.'s head classes, `hypotheses(roles)`) or `"trained"`
    (the bundled model's, `trained.hypotheses(roles)`)."""
    if loss not in LOSSES:
        raise ScrubError(f"Unknown IOI loss {loss!r}; use one of {sorted(LOSSES)}.")
    if circuit not in CIRCUITS:
        raise ScrubError(f"Unknown IOI circuit {circuit!r}; use one of {sorted(CIRCUITS)}.")
    ds = dataset(tokenizer, n_dataset, seed)
    top = int(ds["tokens"].max())
    if top >= model.cfg.d_vocab:
        raise ScrubError(f"The tokenizer gives token id {top} but the model's vocabulary has "
                         f"{model.cfg.d_vocab} tokens; use the tokenizer that came with the model.")
    read_at_end(model, ds["tokens"].shape[1])
    what, make, descriptions = CIRCUITS[circuit]
    hyps = make(roles)
    metric = "-logit diff at END" if loss == "logit_diff" else "cross-entropy of IO"
    return Experiment(
        name="ioi", description=f"{what} (loss: {metric})",
        graph=model.graph(), dataset=ds, loss_fn=LOSSES[loss], hypotheses=hyps,
        baseline=hyps["everything scrubbed"], published=dict(PUBLISHED),
        descriptions=dict(descriptions), subsets=dict(SUBSETS), default_n=default_n,
        format_inputs=lambda rows, i: repr(prompt(tokenizer, rows, i)),
    )


def load_gpt2(weights: str | os.PathLike) -> tuple[Transformer, Tokenizer]:
    """GPT-2 (as our `Transformer`) and its tokenizer from a local Hugging Face directory,
    without touching the network."""
    path = Path(weights).expanduser()
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise MissingWeightsError(f"GPT-2 weights directory {str(path)!r} {what}. {WEIGHTS_HINT}")
    try:
        import transformers
    except ImportError as err:
        raise missing_extra("transformers", "hf", "The ioi experiment") from err
    from ...models import from_hf

    try:
        hf = transformers.GPT2LMHeadModel.from_pretrained(str(path), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise MissingWeightsError(f"Could not load GPT-2 from {str(path)!r} "
                                  f"({type(err).__name__}: {err}). {WEIGHTS_HINT}") from err
    model = from_hf(hf)
    del hf  # from_hf copied the weights
    return model, tokenizer


def build(weights: str | os.PathLike | None = None, seed: int = 0, loss: str = "logit_diff",
          n_dataset: int = 20_000) -> Experiment:
    """The IOI experiment: on GPT-2 small loaded from the local directory `weights` (default:
    the `CAUSAL_SCRUBBING_GPT2` environment variable) with Wang et al.'s circuit, or, with no
    weights, on the bundled model trained here with the circuit it uses (`ioi.trained`)."""
    weights = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if weights is None:
        model, tokenizer = trained.load()
        return experiment(model, tokenizer, n_dataset=n_dataset, seed=seed, loss=loss,
                          roles=trained.ROLES, circuit="trained", default_n=2048)
    gpt2, gpt2_tokenizer = load_gpt2(weights)
    return experiment(gpt2, gpt2_tokenizer, n_dataset=n_dataset, seed=seed, loss=loss)
