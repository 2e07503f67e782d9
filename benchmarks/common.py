"""Helpers shared by the benchmarks: sampling, device flags, memory, percentiles, JSON and plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"


def stride_indices(total: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(total): the same subset on every run, no seed."""
    if limit is None or limit <= 0 or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device (GPU mode)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; cuda needs a CUDA torch and a GPU)")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--quantize", choices=("none", "int8", "nf4"), default="none",
                   help="weight quantization: int8 (CPU/CUDA), nf4 (CUDA, bitsandbytes)")


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


def peak_rss_mib(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of a process, in MiB; None where /proc is not readable."""
    path = f"/proc/{pid or 'self'}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[i], 1)


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": round(sum(values) / len(values), 1) if values else None,
            "max": round(max(values), 1) if values else None}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "git": git_state()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def git_state() -> str | None:
    """The commit measured, with "+dirty" when the work tree had changes (None outside a checkout)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plots; pip install 'codestral-ls[bench]')")
        return None
    return plt


def save_figure(plt: Any, fig: Any, png: Path) -> Path:
    """Lay out `fig`, write it to `png` (folders made) and close it."""
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def fmt(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)
