"""The bundled IOI model and the circuit it uses, as causal-scrubbing hypotheses.

The model (`train.py`: 4 layers x 4 attention heads, d_model 64, attention only, trained only
on IOI prompts) solves the task perfectly, but not the way GPT-2 small does. Its circuit,
found with `ioi.analysis` (docs/ioi.md has the tables), has two head classes and one step
fewer than the published one:

- **IO finders** (`a0.h0`, `a0.h1`, `a0.h3`): at S2, attend to the *other* name of the first
  clause, the IO (0.98 of their attention), and copy it into S2's residual stream. They are
  the published duplicate-token heads turned around: instead of finding the earlier copy of
  the current name, they find the name that is not a copy.
- **Movers** (`a1.h0` to `a1.h3`): at END, attend to S2 (0.95-0.99) and move the IO that the
  finders left there to the logits: the published name movers, except that they read the IO
  from S2's position rather than from the IO's own. **Late movers** (every head of layers 2
  and 3) do the same with less focused attention (S2 and the positions after it).

Nothing plays the S-inhibition, induction or previous-token roles: the finders select the IO
directly, so no signal about S has to reach END.

The hypotheses, at increasing detail (the tables' ids):

- `movers`: the layer-1 movers' direct effect depends only on the IO (`SameFeature("io")`);
  every other path reads an unrelated prompt.
- `all movers`: the late movers' direct effect too.
- `+ IO finders`: inside the layer-1 movers, their queries and keys read their own prompt and
  their values read the IO finders' direct output on a prompt with the same IO and S2
  position (`IO & S2 position`); the rest of their values an unrelated prompt.
- `+ finder queries`: inside the finders, their keys and values read their own prompt and
  their queries a prompt with the same S at the same positions (`S & positions`).

Example:
    >>> from causal_scrubbing.experiments.ioi import trained
    >>> model, tok = trained.load()
    >>> model.cfg.n_layers, len(tok) == model.cfg.d_vocab
    (4, True)
    >>> list(trained.hypotheses())[2:]
    ['movers', 'all movers', '+ IO finders', '+ finder queries']
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ...core.data import Dataset
from ...core.errors import CheckpointError
from ...core.hypothesis import InterpNode
from ...core.names import head_name
from ...core.paths import chains
from ...core.samplers import Exact, SameFeature, Uniform
from ...models import Transformer
from ...models import load as load_checkpoint
from ...models.checkpoints import BUNDLED
from .data import WordTokenizer, s_and_positions

#: The bundled model's head classes (graph node names), from `ioi.analysis`.
ROLES: dict[str, list[str]] = {
    "mover": [head_name(1, h) for h in range(4)],
    "late mover": [head_name(layer, h) for layer in (2, 3) for h in range(4)],
    "IO finder": [head_name(0, h) for h in (0, 1, 3)],
}

#: Each class beside the published class of GPT-2 small it resembles.
PUBLISHED_CLASS = {
    "mover": "name movers (9.9, 9.6, 10.0), reading the IO at S2 instead of at the IO",
    "late mover": "backup name movers (9.0, 9.7, 10.1, ...), the same role in later layers",
    "IO finder": "duplicate-token heads (0.1, 0.10, 3.0), inverted: at S2 they find the name "
                 "that is not repeated",
}

DESCRIPTIONS = {
    "nothing scrubbed": "the model as it is (100%)",
    "everything scrubbed": "every input resampled (the 0% point)",
    "movers": "(a) layer-1 movers' direct effect depends only on the IO",
    "all movers": "(a') + the late movers' (layers 2-3) direct effect, IO only",
    "+ IO finders": "(b) + layer-1 movers' values read the IO finders (same IO and S2 position)",
    "+ finder queries": "(c) + the finders' queries read S at the same positions",
}


def io_and_s2_position(ds: Dataset) -> Tensor:
    """The IO's token and the position of S2, [n, 2]: what the IO finders write, and where."""
    return torch.stack([ds["io"], ds["s2_pos"]], 1)


def hypotheses(roles: dict[str, list[str]] = ROLES) -> dict[str, InterpNode]:
    """The hypotheses for the bundled model, in the order of the results table."""
    movers, late, finders = roles["mover"], roles["late mover"], roles["IO finder"]
    same_io_s2 = SameFeature(io_and_s2_position, name="IO & S2 position")
    same_s_pos = SameFeature(s_and_positions, name="S & positions")

    def layer1_movers(depth: int) -> InterpNode:
        node = InterpNode("movers", SameFeature("io"), paths=chains((movers, None)))
        if depth < 1:
            return node
        node.add(InterpNode("mover queries & keys", Exact(),
                            paths=chains((movers, "q")) | chains((movers, "k"))))
        found = node.add(InterpNode("IO finders", same_io_s2,
                                    paths=chains((movers, "v"), (finders, None))))
        if depth < 2:
            return node
        found.add(InterpNode("finder keys & values", Exact(),
                             paths=chains((movers, "v"), (finders, "k"))
                             | chains((movers, "v"), (finders, "v"))))
        found.add(InterpNode("finder queries", same_s_pos,
                             paths=chains((movers, "v"), (finders, "q"))))
        return node

    def root(*children: InterpNode) -> InterpNode:
        return InterpNode("logits", Exact(), children=children)

    def late_movers() -> InterpNode:
        return InterpNode("late movers", SameFeature("io"), paths=chains((late, None)))

    return {
        "nothing scrubbed": InterpNode("logits", Exact()),
        "everything scrubbed": InterpNode("logits", Uniform()),
        "movers": root(layer1_movers(0)),
        "all movers": root(layer1_movers(0), late_movers()),
        "+ IO finders": root(layer1_movers(1), late_movers()),
        "+ finder queries": root(layer1_movers(2), late_movers()),
    }


def load(checkpoint: str = "ioi") -> tuple[Transformer, WordTokenizer]:
    """The bundled IOI model (or a checkpoint trained by `ioi.train`) and its tokenizer,
    after checking that the tokenizer is the one the model was trained with."""
    model = load_checkpoint(checkpoint)
    tokenizer = WordTokenizer.for_ioi()
    path = Path(checkpoint) if checkpoint not in BUNDLED else (
        Path(__file__).parents[2] / BUNDLED[checkpoint])
    log = path.with_name(path.name + "_train_log.json")
    trained_on = json.loads(log.read_text()).get("vocabulary") if log.exists() else None
    if trained_on is None:  # a checkpoint without its log: the sizes must agree at least
        trained_on = tokenizer.words if len(tokenizer) == model.cfg.d_vocab else []
    if trained_on != tokenizer.words:
        differ = [i for i, (a, b) in enumerate(zip(trained_on, tokenizer.words)) if a != b]
        where = f"first difference at id {differ[0]}" if differ else "lengths differ"
        raise CheckpointError(
            f"IOI checkpoint {checkpoint!r} was trained with another vocabulary than "
            f"WordTokenizer.for_ioi() gives now ({model.cfg.d_vocab} vs {len(tokenizer)} tokens, "
            f"{where}): the IOI word lists or templates changed since it was trained. Retrain "
            "it (python -m causal_scrubbing.experiments.ioi.train --out PATH) or restore them.")
    return model, tokenizer
