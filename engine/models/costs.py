"""What a model costs on this machine: prefill tokens/s, decode ms/token, resident memory, load time.

`measure(name)` runs `python -m codestral_ls.engine.models.costs NAME` in a child process (so the peak RSS is
that model's alone, and nothing stays loaded in the caller): it loads the model as the server does
(`load_model`, default options), prefills a 512-token prompt of real code in the runner's own chunks,
then decodes 32 tokens one at a time, greedy, and prints one JSON line. `codestral-ls models
--measure` stores the results in the user cache (catalog.MEASURED_FILE); `python -m
benchmarks.models` adds HumanEval pass@1 and writes the shipped table (engine/models/data/models.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from codestral_ls.engine.errors import ModelLoadError

PROMPT_TOKENS = 512
DECODE_TOKENS = 32
# Real code to prefill: this project's own sources, repeated to length (any code will do).
_TEXT_MODULES = ("codestral_ls.engine.decoding.engine", "codestral_ls.engine.models.fim")


def _code_text() -> str:
    import importlib.util

    out = []
    for mod in _TEXT_MODULES:
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin:
            with open(spec.origin, encoding="utf-8") as f:
                out.append(f.read())
    return "\n".join(out)


def run_here(model: str | None, threads: int | None = None, n_gpu_layers: int = 0) -> dict[str, Any]:
    """Measure in this process (the child of `measure`)."""
    import resource

    import numpy as np
    from codestral_ls.engine.decoding.kvcache import Sequence
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    t0 = time.perf_counter()
    loaded = load_model(ModelSpec(model=model, threads=threads, n_gpu_layers=n_gpu_layers))
    load_s = time.perf_counter() - t0
    runner = loaded.runner
    ids = loaded.encoder.encode_text(_code_text())
    while len(ids) < PROMPT_TOKENS:
        ids = ids + ids
    ids = ids[:PROMPT_TOKENS]
    # One short forward first: the very first one allocates.
    warm = Sequence()
    runner.forward(warm, ids[:8])
    if warm.kv is not None:
        warm.kv.release()
    seq = Sequence()
    t0 = time.perf_counter()
    logits = None
    for i in range(0, len(ids), runner.prefill_chunk):
        logits = runner.forward(seq, ids[i:i + runner.prefill_chunk])
    prefill_s = time.perf_counter() - t0
    token = int(np.argmax(logits[-1]))
    t0 = time.perf_counter()
    for _ in range(DECODE_TOKENS):
        token = int(np.argmax(runner.forward(seq, [token])[-1]))
    decode_s = time.perf_counter() - t0
    if seq.kv is not None:
        seq.kv.release()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"prefill_tok_s": round(PROMPT_TOKENS / prefill_s, 1),
            "ms_per_token": round(decode_s * 1000 / DECODE_TOKENS, 1),
            "rss_mib": round(rss_kib / 1024), "load_s": round(load_s, 2), "runner": runner.name,
            "threads": getattr(runner, "threads", None), "weights_mib": round(loaded.weight_bytes / 2**20),
            "source": loaded.source}


def measure(model: str | None, threads: int | None = None, n_gpu_layers: int = 0,
            timeout: float = 900) -> dict[str, Any]:
    """`run_here` in a child process; a failure is a ModelLoadError with its last line."""
    cmd = [sys.executable, "-m", "codestral_ls.engine.models.costs", model or "", str(threads or 0), str(n_gpu_layers)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"measuring {model or 'the default model'} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    name, threads, layers = sys.argv[1] or None, int(sys.argv[2]) or None, int(sys.argv[3])
    try:
        print(json.dumps(run_here(name, threads, layers)))
    except ModelLoadError as exc:
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(1) from None
