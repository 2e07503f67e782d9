"""The llama.cpp peer every latency benchmark runs beside ours: llama-cpp-python's own `Llama` on the
same GGUF, with the FIM prompt as text (what llama.vim and llama-server do)."""

from __future__ import annotations

import os
from collections.abc import Sequence


def runnable_systems(spec: str, known: Sequence[str], model: str | None) -> tuple[list[str], list[str]]:
    """The systems a benchmark compares, from the comma-separated `spec` (an unknown name ends the run),
    less the llama.cpp peer where it cannot run here; and what was skipped, with why (printed too)."""
    systems = [s.strip() for s in spec.split(",") if s.strip()]
    if unknown := [s for s in systems if s not in known]:
        raise SystemExit(f"benchmark: error: unknown system(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    skipped = []
    if "llama" in systems and (problem := llama_problem(model)):
        systems.remove("llama")
        skipped.append(f"llama.cpp peer: {problem}")
        print(f"skipping {skipped[-1]}")
    return systems, skipped


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
