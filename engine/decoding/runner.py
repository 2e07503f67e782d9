"""The runner seam: the one interface between the decode logic and a forward pass.

A runner feeds tokens to a `Sequence` at its next positions and returns logits as a numpy float32
array, one row per position asked for; a sequence's `KV` crops to n tokens, says its bytes and
frees itself. The engine, the draft model and the prefix store know nothing else of the model, so
the same decode loop runs on transformers/torch (`runner_torch`: HF folders, CUDA, bitsandbytes)
and on llama.cpp (`runner_llamacpp`: GGUF files on CPU). Nothing here imports torch or llama.cpp.

Runner choice (`choose_runner`): `auto` takes llama.cpp for a GGUF on CPU (or with `--n-gpu-layers`,
llama.cpp's GPU offload) when llama-cpp-python is installed, torch otherwise; the reason is kept for
`doctor`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from codestral_ls.engine.config import CHOICES
from codestral_ls.engine.decoding.kvcache import PrefixStore, Sequence
from codestral_ls.engine.errors import Cancelled, ModelLoadError
from codestral_ls.engine.request import CancelToken


class Runner(Protocol):
    name: str  # "torch" or "llamacpp"
    vocab_size: int  # logits' width
    # Tokens per prefill forward: cancellation (a newer keystroke, a real request over a warm-up)
    # lands between chunks, so a chunk is the longest a request can wait behind superseded work.
    # A real request's prefill is mostly useful to the request that supersedes it (the same
    # document, the cursor a key further): it takes `prefill_chunk`; a warm-up (`FimRequest.warm`),
    # which a real request preempts, takes `warm_chunk`.
    prefill_chunk: int
    warm_chunk: int

    def forward(self, seq: Sequence, ids: list[int], n_logits: int = 1) -> Any:
        """Feed `ids` after `seq.ids` (extending it); logits [n_logits, vocab] of the last positions."""

    def attach(self, store: PrefixStore) -> None:
        """A store whose oldest entries may be freed when the runner runs out of room."""

    def fork(self, seq: Sequence) -> Sequence:
        """A new sequence holding a copy of `seq`'s ids and keys/values (`seq` is left as it is)."""


def prefill(step: Callable[[Sequence, list[int]], Any], seq: Sequence, ids: list[int], chunk: int,
            cancel: CancelToken) -> Any:
    """Feed non-empty `ids` in chunks through `step`, checking `cancel` between them; last position's logits."""
    logits = None
    for i in range(0, len(ids), chunk):
        if cancel.cancelled:
            raise Cancelled("request cancelled during prefill")
        logits = step(seq, ids[i:i + chunk])
    assert logits is not None
    return logits[-1]


def llamacpp_available() -> bool:
    from codestral_ls.engine.models.extras import installed

    return installed("llama_cpp")


def choose_runner(runner: str, gguf: Path | None, device: str, quantize: str = "none",
                  dtype: str = "auto", n_gpu_layers: int = 0) -> tuple[str, str]:
    """(runner, why) for a model that is a GGUF file (`gguf`) or not, on `device` ("auto"/"cpu"/"cuda").

    --quantize and --dtype are torch's: a GGUF on llama.cpp computes with its own quantization.
    """
    if runner not in CHOICES["runner"]:
        raise ModelLoadError(f"runner {runner!r} is not one of {', '.join(CHOICES['runner'])}")
    torch_only = [f"--{k} {v}" for k, v in (("quantize", quantize), ("dtype", dtype)) if v not in ("auto", "none")]
    if n_gpu_layers:
        if gguf is None or runner == "torch":
            raise ModelLoadError(f"--n-gpu-layers {n_gpu_layers} is llama.cpp's GPU offload: it needs a GGUF model "
                                 "on the llama.cpp runner (for a Hugging Face folder use --device cuda)")
        if torch_only:
            raise ModelLoadError(f"{torch_only[0]} is a torch option; --n-gpu-layers runs the GGUF on llama.cpp")
        if not llamacpp_available():
            raise ModelLoadError("--n-gpu-layers needs llama-cpp-python (part of the base install): "
                                 "pip install 'codestral-ls'")
        return "llamacpp", f"--n-gpu-layers {n_gpu_layers}: llama.cpp offloads the GGUF to the GPU"
    if runner == "llamacpp":
        if gguf is None:
            raise ModelLoadError("--runner llamacpp needs a GGUF model file (the embedded model or a .gguf)")
        if device == "cuda":
            raise ModelLoadError("--runner llamacpp runs on the CPU unless --n-gpu-layers offloads it; "
                                 "use --runner torch for --device cuda")
        if torch_only:
            raise ModelLoadError(f"{torch_only[0]} is a torch option; llama.cpp computes with the GGUF's own "
                                 "quantization (use --runner torch)")
        if not llamacpp_available():
            raise ModelLoadError("--runner llamacpp needs llama-cpp-python (part of the base install): "
                                 "pip install 'codestral-ls'")
        return "llamacpp", "asked for (--runner llamacpp)"
    if runner == "torch":
        return "torch", "asked for (--runner torch)"
    if gguf is None:
        return "torch", "auto: the model is a Hugging Face folder, not a GGUF"
    if device == "cuda" or (device == "auto" and cuda_available()):
        return "torch", "auto: a CUDA device is in use"
    if torch_only:
        return "torch", f"auto: {torch_only[0]} is a torch option"
    if not llamacpp_available():
        return "torch", "auto: llama-cpp-python is not installed"
    return "llamacpp", "auto: a GGUF model on the CPU"


def cuda_available() -> bool:
    # Importing torch costs ~300 MB of resident memory: ask it only where an NVIDIA driver is present.
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        return False
    from codestral_ls.engine.models.extras import installed

    if not installed("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())
