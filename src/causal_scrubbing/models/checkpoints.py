"""Checkpoints: a safetensors file of weights plus a JSON config; loading never executes code.

Example:
    >>> from causal_scrubbing.models import load
    >>> load("paren").cfg.n_layers
    3
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import CheckpointError, unknown_name
from .transformer import Config, Transformer, to_tl


def load_file(path: str | Path) -> Transformer:
    """Load `path.safetensors` + `path.json`; errors say what is missing or mismatched."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as st_load

    path = Path(path)
    weights, config = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (weights, config):
        if not f.exists():
            raise CheckpointError(f"Checkpoint file {f} is missing.")
    try:
        cfg = Config.from_dict(json.loads(config.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"Checkpoint config {config} is not a valid config: {err}") from err
    try:
        tensors = st_load(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"Checkpoint weights {weights} are corrupted or not a safetensors "
                              f"file: {err}") from err
    model = Transformer(cfg)
    expected = model.state_dict_tl()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"Checkpoint {weights} does not match its config: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}.")
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise CheckpointError(f"Checkpoint {weights}: {k} has shape {tuple(tensors[k].shape)} "
                                  f"but the config needs {tuple(v.shape)}.")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[to_tl(name)])
    model.eval()
    return model


#: Bundled checkpoints, by name, relative to this package's `checkpoints/` folder.
BUNDLED = {"paren": "checkpoints/paren", "induction": "checkpoints/induction",
           "ioi": "checkpoints/ioi"}


def load(name: str) -> Transformer:
    """Load a bundled checkpoint by name (e.g. `"paren"`) or a checkpoint path."""
    if name in BUNDLED:
        return load_file(Path(__file__).parent.parent / BUNDLED[name])
    if Path(name).with_suffix(".json").exists():
        return load_file(name)
    raise unknown_name("checkpoint", name, BUNDLED, " (give a bundled name or a path)")


