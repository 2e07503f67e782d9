"""What each optional part of codestral-ls needs installed, and the one-line error when it is not.

The base install runs the default path (a GGUF on the llama.cpp runner) and never imports torch,
transformers, accelerate, safetensors or gguf. Everything that needs them imports them where it is
used, through `require`: a missing module becomes a `MissingExtra` (a `ModelLoadError`, shown as one
sentence by the CLI and the LSP) naming the exact `pip install` line, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from codestral_ls.engine.errors import ModelLoadError

# extra -> what it is for (said in the message)
EXTRAS = {
    "torch": "Hugging Face folders, Mistral-format folders and the torch runner",
    "cuda": "CUDA with bitsandbytes int8/nf4",
    "model": "the embedded Qwen2.5-Coder-0.5B",
    "model-1.5b": "Qwen2.5-Coder-1.5B",
}


class MissingExtra(ModelLoadError):
    """A module of an optional extra is not installed; the message names the pip line."""


def installed(module: str) -> bool:
    """Is `module` importable, without importing it? (A finder that refuses it counts as absent.)"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_line(extra: str) -> str:
    return f"pip install 'codestral-ls[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise MissingExtra: "`what` needs <module> ...: pip install 'codestral-ls[extra]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = (exc.name or module).split(".")[0]
        raise MissingExtra(f"{what} needs {top}, which is not installed (the `{extra}` extra: "
                           f"{EXTRAS.get(extra, extra)}); install it with: {install_line(extra)}") from None


def require_torch(what: str) -> ModuleType:
    """torch and transformers, both from the `torch` extra; returns torch."""
    torch = require("torch", "torch", what)
    require("transformers", "torch", what)
    return torch
