"""The device flags of the quality and replay benchmarks (GPU mode) and the server flags they map to."""

from __future__ import annotations

import argparse
import sys

DEFAULT_MAX_TOKENS = 64  # the server's default max_tokens


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device (GPU mode)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; cuda needs a CUDA torch and a GPU)")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--quantize", choices=("none", "int8", "nf4"), default="none",
                   help="weight quantization: int8 (CPU/CUDA), nf4 (CUDA, bitsandbytes)")


def server_flags(args: argparse.Namespace) -> list[str]:
    """The flags a headline server gets: none, unless a model or device other than the defaults was asked
    for (`--model`, `--device`, `--dtype`, `--quantize`, `--max-tokens` of the benchmark's own command line)."""
    flags = []
    if getattr(args, "model", None):
        flags += ["--model", args.model]
    if args.device != "cpu":
        flags += ["--device", args.device]
    if args.dtype != "auto":
        flags += ["--dtype", args.dtype]
    if args.quantize != "none":
        flags += ["--quantize", args.quantize]
    if args.max_tokens != DEFAULT_MAX_TOKENS:
        flags += ["--max-tokens", str(args.max_tokens)]
    return flags


def device_problem(device: str, quantize: str) -> str | None:
    """Why the asked device cannot be used here (None: it can). Checked before anything loads."""
    wants_cuda = device == "cuda" or quantize == "nf4"
    if not wants_cuda:
        return None
    try:
        import torch
    except ImportError:
        return "--device cuda needs torch"
    if not torch.cuda.is_available():
        what = "--quantize nf4" if quantize == "nf4" and device != "cuda" else "--device cuda"
        return f"{what} was asked for but torch sees no CUDA device here; run without it (CPU) or on a GPU machine"
    if quantize in ("nf4", "int8") and device == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return f"--quantize {quantize} on CUDA needs bitsandbytes: pip install 'codestral-ls[cuda]'"
    return None


def refuse_if_unusable(args: argparse.Namespace) -> None:
    problem = device_problem(args.device, args.quantize)
    if problem:
        sys.stderr.write(f"benchmark: error: {problem}\n")
        raise SystemExit(2)
