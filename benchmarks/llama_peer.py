"""The llama.cpp peer every latency benchmark runs beside ours: llama-cpp-python's own `Llama` on the
same GGUF, with the FIM prompt as text (what llama.vim and llama-server do)."""

from __future__ import annotations

import os


def llama_problem(model: str | None = None) -> str | None:
    """Why the llama.cpp peer cannot run here (None: it can): llama_cpp missing, or no GGUF for `model`."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not importable (it is part of the base install: pip install -e .)"
    if model and not model.endswith(".gguf"):
        return f"--model {model} is not a .gguf file"
    return None


def llama_gguf(model: str | None = None) -> str:
    """The GGUF llama.cpp loads: `model` when it is one, else the embedded model's (the server's default)."""
    if model:
        return model
    from codestral_ls.engine.models.embedded import gguf_path

    return str(gguf_path())


def llama_threads_wait_passively() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set, before llama.cpp loads: the server runs its own llama.cpp so
    (engine/models/runner_llamacpp.py), and on busy cores spinning threads decode many times slower."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def qwen_fim_prompt(prefix: str, suffix: str) -> str:
    """Qwen2.5-Coder's FIM prompt text (PSM), as llama.vim / llama-server's /infill build it."""
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
