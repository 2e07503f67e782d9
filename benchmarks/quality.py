"""Suggestion quality: HumanEval infilling pass@1 through the whole keystroke pipeline vs the raw model.

Each task's hole is one whole line (single-line set) or several (multi-line set). An editor shows it
as an empty line the user just opened, so the document is

    prompt + INDENT + <cursor> + "\\n" + suffix

where INDENT is the leading whitespace of the canonical solution's first line: what an editor's
auto-indent puts there before the user types anything (`--cursor line-start` puts the cursor at
column 0 instead, INDENT empty: the suggestion must then bring its own indentation). The
suggestion goes at the cursor and the task passes when
`prompt + INDENT + suggestion + "\\n" + suffix + test + check(entry_point)` runs without error in a
fresh Python subprocess (timeout 10 s).

Configurations, all on the same model, the same tasks, in one run:

  pipeline      `server.pipeline.Completer` with default options except budget_ms=0 (the whole
                suggestion, as `codestral-ls complete` shows it): typed-through cache, tree-sitter
                context windows, anchored prompt, healing, stop rules, post-processing.
  no_<filter>   the pipeline with one post-processing filter switched off (ablation).
  no_second_opinions   the pipeline with second_opinions=0: a suggestion that cannot fit the code
                below it (server/fit.py) is dropped instead of replaced by the model's next-best.
  pipeline_multiline_never   (single-line set) the pipeline with multiline=never.
  raw           the raw model: a plain FimRequest of the full prefix / suffix (no token healing, no
                windows, no post-processing), first line of the output ("naive first-line cut").
                On the multi-line set `raw_full` is the raw output up to the model's end token
                (or max_tokens) and `raw` its first line.
  canonical     the reference middle (checks the harness: must be 100%).
  empty         an empty line (the floor: tasks whose hole does not matter to the tests).

Ablations and multiline=never cost almost nothing: the engine's KV cache replays the pipeline's
cached greedy continuation for the identical prompt. Background prefetch is switched off here
(it never changes a greedy suggestion; it would only steal CPU from the next task).

    python -m benchmarks.quality --limit 100 --out benchmarks/results/quality_single.json
    python -m benchmarks.quality --multi-line --limit 40 --out benchmarks/results/quality_multi.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    add_device_args,
    fmt,
    machine,
    pyplot,
    refuse_if_unusable,
    save_figure,
    stride_indices,
    table,
    write_json,
)

SETS = {False: "HumanEval-SingleLineInfilling.jsonl.gz", True: "HumanEval-MultiLineInfilling.jsonl.gz"}


def data_dir() -> Path:
    env = os.environ.get("CODESTRAL_LS_HUMANEVAL_DIR")
    if env:
        return Path(env)
    for cand in (ROOT.parent / "shared" / "data" / "human-eval-infilling",
                 ROOT / "shared" / "data" / "human-eval-infilling",
                 Path("/work/shared/data/human-eval-infilling")):
        if cand.is_dir():
            return cand
    return ROOT.parent / "shared" / "data" / "human-eval-infilling"


def load_tasks(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class Hole:
    """The editor's view of a task: document text and cursor offset, and how to rebuild the program."""

    text: str
    offset: int
    head: str  # prompt + indent: everything before the cursor
    tail: str  # "\n" + suffix: everything after it

    def program(self, middle: str, task: dict[str, Any]) -> str:
        return self.head + middle + self.tail + "\n" + task["test"] + f"\ncheck({task['entry_point']})\n"


def make_hole(task: dict[str, Any], cursor: str = "indent") -> Hole:
    """`cursor` "indent": after the auto-indent (the default); "line-start": at column 0 of the empty line."""
    solution = task["canonical_solution"]
    first = solution.split("\n", 1)[0]
    indent = first[: len(first) - len(first.lstrip(" \t"))] if cursor == "indent" else ""
    head = task["prompt"] + indent
    tail = "\n" + task["suffix"]
    return Hole(head + tail, len(head), head, tail)


def canonical_middle(task: dict[str, Any], hole: Hole) -> str:
    """The canonical solution as a suggestion at the cursor: without the indent, without the last newline."""
    solution = task["canonical_solution"]
    indent = len(hole.head) - len(task["prompt"])
    return solution[indent:].removesuffix("\n")


class TestRunner:
    """Runs task programs in subprocesses; identical programs run once."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._dir = tempfile.TemporaryDirectory(prefix="codestral-quality-")
        self._cache: dict[str, bool] = {}

    def passes(self, program: str) -> bool:
        key = hashlib.sha256(program.encode()).hexdigest()
        if key not in self._cache:
            path = Path(self._dir.name) / f"{key[:16]}.py"
            path.write_text(program)
            try:
                proc = subprocess.run([sys.executable, "-I", str(path)], cwd=self._dir.name, capture_output=True,
                                      timeout=self.timeout, stdin=subprocess.DEVNULL)
                self._cache[key] = proc.returncode == 0
            except subprocess.TimeoutExpired:
                self._cache[key] = False
        return self._cache[key]

    def close(self) -> None:
        self._dir.cleanup()


class _NoPrefetch:
    """The engine worker as the Completer sees it, but with background prefetch off."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._worker, name)

    def submit(self, req: Any) -> Any:
        return self._worker.submit(dataclasses.replace(req, background=False))


def config_names(multi: bool, filters: list[str], ablations: bool) -> list[str]:
    names = ["pipeline", "no_second_opinions"]
    if not multi:
        names.append("pipeline_multiline_never")
    if ablations:
        names += [f"no_{f}" for f in filters]
    names += ["raw", "raw_full"] if multi else ["raw"]
    return [*names, "canonical", "empty"]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from codestral_ls.engine import load_engine
    from codestral_ls.engine.request import FimRequest, StopRule
    from codestral_ls.engine.worker import EngineWorker
    from codestral_ls.server.options import Options, engine_config
    from codestral_ls.server.pipeline import Completer, Document
    from codestral_ls.server.postprocess import FILTERS

    path = Path(args.data or data_dir()) / SETS[args.multi_line]
    if not path.is_file():
        raise SystemExit(f"benchmark: error: HumanEval infilling data not found at {path} (use --data DIR)")
    tasks = load_tasks(path)
    indices = [int(i) for i in args.tasks.split(",")] if args.tasks else stride_indices(len(tasks), args.limit)
    options = Options(budget_ms=0, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      max_tokens=args.max_tokens)
    filters = list(FILTERS)
    names = config_names(args.multi_line, filters, not args.no_ablations)
    print(f"quality: {path.name}, {len(indices)} of {len(tasks)} tasks (stride), configs: {', '.join(names)}",
          flush=True)

    t_load = time.perf_counter()
    worker = EngineWorker(lambda: load_engine(*engine_config(options))).start()
    await asyncio.get_running_loop().run_in_executor(None, worker.loaded.wait)
    if worker.engine is None:
        raise SystemExit(f"benchmark: error: the model did not load: {worker.load_error}")
    load_s = time.perf_counter() - t_load
    engine = worker.engine
    proxy = _NoPrefetch(worker)
    runner = TestRunner(args.timeout)

    async def raw(doc: str, hole: Hole, single: bool) -> tuple[str, Any]:
        stop = StopRule(single_line=True) if single else StopRule(max_lines=10**6)
        # The naive integration: the plain FIM prompt (no token healing), greedy, first line.
        req = FimRequest(doc=doc, prefix=hole.head, suffix=hole.tail, stop=stop, max_tokens=options.max_tokens,
                         background=False, heal=False)
        result = await asyncio.wrap_future(worker.submit(req))
        return result.text, result

    records: list[dict[str, Any]] = []
    t_run = time.perf_counter()
    try:
        for n, i in enumerate(indices, start=1):
            task = tasks[i]
            hole = make_hole(task, args.cursor)
            uri = f"file:///humaneval/{task['task_id'].replace('/', '_')}.py"
            doc = Document(uri, hole.text, "python")
            middles: dict[str, str] = {}
            timing: dict[str, Any] = {}
            t0 = time.perf_counter()
            s = await Completer(proxy, options).complete(doc, hole.offset)  # type: ignore[arg-type]
            middles["pipeline"] = s.text if s is not None else ""
            timing["latency_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            if s is not None and s.result is not None:
                r = s.result
                timing.update(prompt_tokens=r.prompt_tokens, decoded_tokens=r.decoded_tokens, engine_text=r.text)

            async def pipe(opts: Options, disabled: frozenset[str] = frozenset(), doc: Document = doc,
                           offset: int = hole.offset) -> str:
                s = await Completer(proxy, opts, disabled_filters=disabled).complete(doc, offset)  # type: ignore[arg-type]
                return s.text if s is not None else ""

            middles["no_second_opinions"] = await pipe(options.replace(second_opinions=0))
            if "pipeline_multiline_never" in names:
                middles["pipeline_multiline_never"] = await pipe(options.replace(multiline="never"))
            for f in filters:
                if f"no_{f}" in names:
                    middles[f"no_{f}"] = await pipe(options, frozenset({f}))
            raw_doc = uri + "#raw"
            if args.multi_line:
                full, res = await raw(raw_doc, hole, single=False)
                middles["raw_full"] = full
                middles["raw"] = full.split("\n", 1)[0].rstrip()
            else:
                first, res = await raw(raw_doc, hole, single=True)
                middles["raw"] = first
            timing["raw_ms"] = round(res.elapsed_ms, 1)
            middles["canonical"] = canonical_middle(task, hole)
            middles["empty"] = ""
            passed = {name: runner.passes(hole.program(middles[name], task)) for name in names}
            want = middles["canonical"].strip()
            records.append({"index": i, "task_id": task["task_id"], "passed": passed,
                            "exact": {name: middles[name].strip() == want for name in names},
                            "middles": {k: v for k, v in middles.items() if k in names}, **timing})
            mark = "".join("+" if passed[k] else "." for k in ("pipeline", "raw"))
            print(f"[{n}/{len(indices)}] {task['task_id']}: pipeline/raw {mark}  "
                  f"({timing['latency_ms']:.0f} ms, raw {timing['raw_ms']:.0f} ms)", flush=True)
            if args.verbose:
                for name in ("pipeline", "raw", "canonical"):
                    print(f"    {name:9} {middles[name]!r}", flush=True)
    finally:
        worker.stop()
        runner.close()

    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        k = sum(r["passed"][name] for r in records)
        ex = sum(r["exact"][name] for r in records)
        n = len(records)
        summary[name] = {"passed": k, "n": n, "pass@1": round(100 * k / n, 1) if n else None,
                         "exact": round(100 * ex / n, 1) if n else None}
    lat = [r["latency_ms"] for r in records]
    return {
        "benchmark": "quality",
        "set": "multi-line" if args.multi_line else "single-line",
        "cursor": args.cursor,
        "data": path.name,
        "limit": args.limit,
        "indices": indices,
        "n_tasks_total": len(tasks),
        "options": dataclasses.asdict(options),
        "model": {"source": engine.loaded.source, "device": engine.loaded.device, "dtype": engine.loaded.dtype,
                  "quantize": engine.loaded.quantize, "fim": engine.encoder.profile.name},
        "machine": machine(),
        "load_s": round(load_s, 1),
        "run_s": round(time.perf_counter() - t_run, 1),
        "pipeline_latency_ms_mean": round(sum(lat) / len(lat), 1) if lat else None,
        "summary": summary,
        "target": target_verdict(summary, args.multi_line),
        "tasks": records,
    }


def target_verdict(summary: dict[str, dict[str, Any]], multi: bool) -> dict[str, Any]:
    pipe, raw = summary["pipeline"]["pass@1"], summary["raw"]["pass@1"]
    delta = None if pipe is None or raw is None else round(pipe - raw, 1)
    out: dict[str, Any] = {"pipeline_minus_raw_points": delta}
    if not multi:
        out["goal"] = "pipeline >= raw + 10 points (single-line)"
        out["met"] = delta is not None and delta >= 10
    return out


def report(result: dict[str, Any]) -> str:
    summary = result["summary"]
    raw = summary["raw"]["pass@1"]
    rows = []
    for name, s in summary.items():
        delta = None if s["pass@1"] is None or raw is None else s["pass@1"] - raw
        rows.append([name, fmt(s["pass@1"], 1), f"{s['passed']}/{s['n']}", fmt(s["exact"], 1),
                     "" if name == "raw" or delta is None else f"{delta:+.1f}"])
    lines = [f"HumanEval {result['set']} infilling, {summary['pipeline']['n']} tasks, "
             f"cursor {result.get('cursor', 'indent')} (stride subset of {result['n_tasks_total']}), "
             f"model {result['model']['source']} on {result['model']['device']}",
             table(rows, ["config", "pass@1 %", "passed", "exact %", "vs raw (points)"])]
    t = result["target"]
    if "goal" in t:
        lines.append(f"target {t['goal']}: {'MET' if t['met'] else 'NOT met'} "
                     f"({t['pipeline_minus_raw_points']:+.1f} points)")
    lines.append(f"pipeline latency mean {fmt(result['pipeline_latency_ms_mean'])} ms (budget_ms=0); "
                 f"model load {result['load_s']} s; run {result['run_s']} s")
    return "\n".join(lines)


def plot(result: dict[str, Any], png: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    summary = result["summary"]
    names = list(summary)
    values = [summary[n]["pass@1"] or 0 for n in names]
    colors = ["tab:blue" if n.startswith("pipeline") else "tab:orange" if n.startswith("raw")
              else "tab:gray" if n in ("canonical", "empty") else "tab:green" for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(names)), 4))
    bars = ax.bar(range(len(names)), values, color=colors)
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 110)
    n = summary["pipeline"]["n"]
    ax.set_title(f"HumanEval {result['set']} infilling, {n} tasks - {result['model']['source']} "
                 f"on {result['model']['device']}", fontsize=9)
    return save_figure(plt, fig, png)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=60,
                   help="tasks, sampled with a fixed stride over the set (default 60; 0: all)")
    p.add_argument("--tasks", help="comma-separated task indices instead of the stride subset (debugging)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each configuration's middle")
    p.add_argument("--multi-line", action="store_true", help="the multi-line infilling set (default single-line)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/quality_{single,multi}.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-ablations", action="store_true", help="skip the per-filter ablations")
    p.add_argument("--data", help="folder with the HumanEval-*LineInfilling.jsonl.gz files")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test program (default 10)")
    p.add_argument("--cursor", choices=("indent", "line-start"), default="indent",
                   help="where the cursor sits on the empty hole line: after the auto-indent (default) or at column 0")
    p.add_argument("--max-tokens", type=int, default=64, help="max decoded tokens (the server's default: 64)")
    add_device_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_if_unusable(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(run(args))
    out = args.out or RESULTS_DIR / f"quality_{'multi' if args.multi_line else 'single'}.json"
    write_json(out, result)
    print()
    print(report(result))
    print(f"results: {out}")
    if not args.no_plot:
        png = plot(result, out.with_suffix(".png"))
        if png:
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
