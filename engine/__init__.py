"""The model side of codestral-ls: loading, FIM formats, KV cache, decoding. Knows nothing of LSP.

Importing this package does not import torch; `load_engine` does only for the torch runner (the
llama.cpp runner never does, see engine/decoding/runner.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from codestral_ls.engine.config import EngineOptions, ModelSpec

if TYPE_CHECKING:
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.models.embedded import Progress


def load_engine(spec: ModelSpec, options: EngineOptions | None = None, progress: Progress | None = None) -> Engine:
    """Load the model `spec` names and wrap it in an `Engine` (blocking: call it off the event loop)."""
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.models.loading import load_draft, load_model

    loaded = load_model(spec, progress)
    options = options or EngineOptions()
    draft = load_draft(spec, loaded, options) if options.draft_model else None
    return Engine(loaded, options, draft)


__all__ = ["EngineOptions", "ModelSpec", "load_engine"]
