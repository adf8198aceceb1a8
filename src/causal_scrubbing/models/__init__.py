"""Models: a plain-PyTorch transformer, its checkpoints, and importers from other libraries.

- `transformer`: `Config` and `Transformer`, and `Transformer.graph()`, the model written as a
  residual-decomposed `Graph` (every head `a{l}.h{h}`, every MLP `m{l}`).
- `checkpoints`: `load` a bundled checkpoint by name or `load_file` a safetensors + JSON pair.
- `importers`: `from_hf` (Hugging Face GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma-2)
  and `from_transformer_lens`, exact weight copies (docs/models.md).

Example:
    >>> import causal_scrubbing as cs
    >>> model = cs.models.load("paren")
    >>> [n for n in model.graph().nodes][:4]
    ['tokens', 'embed', 'pos_embed', 'pad_mask']
"""

from __future__ import annotations

from ..core.errors import CheckpointError, UnsupportedModelError
from ..core.names import parse_head
from .checkpoints import BUNDLED, load, load_file
from .importers import HF_FAMILIES, from_hf, from_transformer_lens
from .transformer import MLP, Attention, Block, Config, LayerNorm, NoNorm, RMSNorm, Transformer

__all__ = ["BUNDLED", "HF_FAMILIES", "MLP", "Attention", "Block", "CheckpointError", "Config",
           "LayerNorm", "NoNorm", "RMSNorm", "Transformer", "UnsupportedModelError", "from_hf",
           "from_transformer_lens", "load", "load_file", "parse_head"]
