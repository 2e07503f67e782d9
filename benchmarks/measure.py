"""What every benchmark does with its figures: fixed subsets, percentiles, the machine's state, JSON
results files, plots, plain-text tables."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codestral_ls.server.stats import percentile as stats_percentile

ROOT = Path(__file__).resolve().parent.parent


RESULTS_DIR = ROOT / "benchmarks" / "results"


def stride_indices(total: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(total): the same subset on every run, no seed."""
    if limit is None or limit <= 0 or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100), to 0.1 (server/stats.py's, rounded for tables)."""
    p = stats_percentile(list(values), q)
    return None if p is None else round(p, 1)


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": round(sum(values) / len(values), 1) if values else None,
            "max": round(max(values), 1) if values else None}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "git": git_state(), "code": code_location()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def code_location() -> str | None:
    """Where `codestral_ls.server` is imported from (a run may measure a snapshot via PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("codestral_ls.server")
    return str(Path(spec.origin).parent) if spec is not None and spec.origin else None


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
