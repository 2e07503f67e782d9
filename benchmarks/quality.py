"""Suggestion quality: HumanEval infilling pass@1 of what an editor shows, the server with default options.

Each task's hole is one whole line (single-line set) or several (multi-line set). An editor shows it
as an empty line the user just opened, so the document is

    prompt + INDENT + <cursor> + "\\n" + suffix

where INDENT is the leading whitespace of the canonical solution's first line: what an editor's
auto-indent puts there before the user types anything. Both cursor placements run in one run:
`indent` (after the auto-indent) and `col0` (column 0 of the opened line, INDENT empty: the
suggestion must bring its own indentation). The suggestion is accepted at the cursor (an LSP item's
range, if any, is replaced) and the task passes when the document + test + check(entry_point) runs
without error in a fresh Python subprocess (timeout 10 s).

Configurations, on the same model and the same tasks, in one run, phase after phase (one model in
memory at a time, so no phase takes CPU from another):

  headline    lsp          the `codestral-ls` process with default options (no flags, no
                           initializationOptions) over stdio, a generic LSP client: didOpen of the
                           task's document, ONE textDocument/inlineCompletion at the cursor, the
                           first answer is the suggestion, didClose. What an editor shows.
  peer        llama        llama.cpp (llama-cpp-python) on the same GGUF as the embedded model:
                           Qwen's FIM prompt of the whole prefix / suffix, greedy, first line (what a
                           llama.vim user gets). Multi-line set: also `llama_full`, its whole output.
  ablation    pipeline_budget0     `server.pipeline.Completer` in this process, default options but
                           budget_ms=0 (the whole suggestion, as `codestral-ls complete` shows it);
                           background prefetch off (it never changes a greedy answer).
              no_second_opinions   the same with second_opinions=0 (cursor indent only).
              multiline_never      the same with multiline=never (single-line set, cursor indent only).
              no_<filter>          the same with one post-processing filter off (cursor indent only).
              raw                  the raw model: a plain FimRequest of the full prefix / suffix (no
                                   healing, no windows, no post-processing), first line; multi-line
                                   set: also `raw_full`, up to the end token or max_tokens.
  check       canonical    the reference middle (checks the harness: must be 100 %).
              empty        an empty line (the floor: tasks whose hole does not matter to the tests).

Names in the JSON and the table are `<config>@<cursor>`. Only `lsp@*` are headline figures.

    python -m benchmarks.quality --limit 60 --out benchmarks/results/quality_single_defaults.json
    python -m benchmarks.quality --multi-line --limit 40 --out benchmarks/results/quality_multi_defaults.json
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.device_args import DEFAULT_MAX_TOKENS, add_device_args, refuse_if_unusable, server_flags
from benchmarks.llama_peer import llama_gguf, llama_problem, llama_threads_wait_passively, qwen_fim_prompt
from benchmarks.lsp_driver import LspServer, apply_item, peak_rss_mib, utf16_position
from benchmarks.measure import (
    RESULTS_DIR,
    fmt,
    latency_summary,
    load_average,
    machine,
    pyplot,
    save_figure,
    stride_indices,
    table,
    write_json,
)

DATA_DIR = Path(__file__).resolve().parent / "data" / "human-eval-infilling"
SETS = {False: "HumanEval-SingleLineInfilling.jsonl.gz", True: "HumanEval-MultiLineInfilling.jsonl.gz"}
CURSORS = {"indent": "after the auto-indent", "col0": "at column 0"}


def data_dir() -> Path:
    """HumanEval infilling: $CODESTRAL_LS_HUMANEVAL_DIR, else the copy vendored in benchmarks/data/."""
    env = os.environ.get("CODESTRAL_LS_HUMANEVAL_DIR")
    if env:
        return Path(env)
    return DATA_DIR


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
        return self.document(middle) + "\n" + task["test"] + f"\ncheck({task['entry_point']})\n"

    def document(self, middle: str) -> str:
        return self.head + middle + self.tail


def program_of(document: str, task: dict[str, Any]) -> str:
    return document + "\n" + task["test"] + f"\ncheck({task['entry_point']})\n"


def make_hole(task: dict[str, Any], cursor: str = "indent") -> Hole:
    """`cursor` "indent": after the auto-indent (the default); "col0" (or "line-start"): at column 0."""
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


def same_code(a: str, b: str) -> bool:
    """Equal line for line, ignoring indentation, trailing spaces and blank lines (the `exact` column)."""
    def norm(s: str) -> list[str]:
        return [line.strip() for line in s.split("\n") if line.strip()]
    return norm(a) == norm(b)


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


# -- configurations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str  # "<config>@<cursor>"
    kind: str  # headline | peer | ablation | check
    label: str


def config_list(args: argparse.Namespace, filters: list[str]) -> list[Config]:
    multi = args.multi_line
    out: list[Config] = []
    for c in args.cursors:
        where = CURSORS[c]
        if args.lsp:
            first = "first answer (first line or block)" if multi else "first answer"
            out.append(Config(f"lsp@{c}", "headline", f"LSP server, default options, {first}, cursor {where}"))
            out += [Config(f"{ablation_name(flag)}@{c}", "ablation", f"ablation: LSP server {flag}, {first}, "
                           f"cursor {where}") for flag in args.lsp_ablation]
        if args.llama:
            out.append(Config(f"llama@{c}", "peer", f"llama.cpp, same GGUF, FIM, greedy, first line, cursor {where}"))
            if multi:
                out.append(Config(f"llama_full@{c}", "peer", f"llama.cpp, whole output, cursor {where}"))
        if args.inprocess:
            out.append(Config(f"pipeline_budget0@{c}", "ablation", f"ablation: pipeline, budgetMs 0, cursor {where}"))
            if c == "indent":
                out.append(Config("no_second_opinions@indent", "ablation",
                                  "ablation: pipeline, budgetMs 0, secondOpinions 0"))
                if not multi:
                    out.append(Config("multiline_never@indent", "ablation",
                                      "ablation: pipeline, budgetMs 0, multiline never"))
                if args.ablations:
                    out += [Config(f"no_{f}@indent", "ablation", f"ablation: pipeline, budgetMs 0, without {f}")
                            for f in filters]
            out.append(Config(f"raw@{c}", "ablation", f"ablation: raw model, plain FIM, first line, cursor {where}"))
            if multi:
                out.append(Config(f"raw_full@{c}", "ablation", f"ablation: raw model, whole output, cursor {where}"))
        out.append(Config(f"canonical@{c}", "check", "the reference solution (harness check: 100 %)"))
    out.append(Config("empty@indent", "check", "an empty line (the floor)"))
    order = ("headline", "peer", "ablation", "check")
    return sorted(out, key=lambda cfg: order.index(cfg.kind))  # stable: cursors stay in order within a kind


# -- phases: each returns {(task index, config name): (document after accepting, latency ms | None, extra)} --

Answers = dict[tuple[int, str], dict[str, Any]]


def ablation_name(flag: str) -> str:
    """The config name of an LSP run with one more server flag: `--no-quick-first` -> `lsp_no_quick_first`."""
    return "lsp_" + flag.lstrip("-").replace("-", "_").replace("=", "_")


async def lsp_phase(args: argparse.Namespace, tasks: list[dict[str, Any]], indices: list[int],
                    extra: tuple[str, ...] = ()) -> tuple[Answers, dict[str, Any]]:
    """The server with its defaults (`extra`: an ablation's flags), a generic client, one request per
    task and cursor, the first answer."""
    name = ablation_name(extra[0]) if extra else "lsp"
    server = LspServer(server_flags(args) + list(extra))
    load_s = await server.start()
    print(f"lsp: server up (flags {server.flags or 'none'}), model loaded in {load_s:.1f} s", flush=True)
    out: Answers = {}
    try:
        # One throwaway request elsewhere: the very first forward pass allocates (slow once per process).
        server.open("file:///humaneval/warmup.py", "def add(a, b):\n    \n\nprint(add(1, 2))\n")
        await server.inline("file:///humaneval/warmup.py", 1, 4)
        server.close("file:///humaneval/warmup.py")
        for n, i in enumerate(indices, start=1):
            task = tasks[i]
            # Alternate which cursor goes first: the second one may find the shared prefix in the KV cache.
            order = args.cursors if n % 2 else list(reversed(args.cursors))
            marks = []
            for c in order:
                hole = make_hole(task, c)
                uri = f"file:///humaneval/{task['task_id'].replace('/', '_')}_{c}.py"
                line, char = utf16_position(hole.text, hole.offset)
                server.open(uri, hole.text)
                t0 = time.perf_counter()
                try:
                    item = await server.inline(uri, line, char)
                    error = None
                except Exception as exc:  # an error answer shows nothing
                    item, error = None, str(exc)[:200]
                ms = (time.perf_counter() - t0) * 1000
                timings = (await server.stats()).get("timings")  # where this request's time went
                server.close(uri)
                out[(i, f"{name}@{c}")] = {"document": apply_item(hole.text, hole.offset, item),
                                        "latency_ms": round(ms, 1), "item": item, "error": error,
                                        "first": c == order[0], "timings": timings,
                                        "load1": load_average()}
                marks.append(f"{c} {ms:.0f} ms {(item or {}).get('text', '')!r:.40}")
            print(f"[{name} {n}/{len(indices)}] {task['task_id']}: " + "; ".join(marks), flush=True)
        stats = await server.stats()
        rss = peak_rss_mib(server.pid())
    finally:
        await server.stop()
    return out, {"flags": server.flags, "load_s": round(load_s, 1), "peak_rss_mib": rss, "server_stats": stats}


async def inprocess_phase(args: argparse.Namespace, tasks: list[dict[str, Any]], indices: list[int],
                          names: set[str]) -> tuple[Answers, dict[str, Any]]:
    from codestral_ls.engine import load_engine
    from codestral_ls.engine.request import FimRequest, StopRule
    from codestral_ls.engine.serving.worker import EngineWorker
    from codestral_ls.server.options import Options, engine_config
    from codestral_ls.server.pipeline import Completer, Document
    from codestral_ls.server.postprocess import FILTERS

    options = Options(model=args.model, budget_ms=0, device=args.device, dtype=args.dtype, quantize=args.quantize,
                      max_tokens=args.max_tokens)
    t_load = time.perf_counter()
    worker = EngineWorker(lambda: load_engine(*engine_config(options))).start()
    await asyncio.get_running_loop().run_in_executor(None, worker.loaded.wait)
    if worker.engine is None:
        raise SystemExit(f"benchmark: error: the model did not load: {worker.load_error}")
    load_s = time.perf_counter() - t_load
    engine = worker.engine
    proxy = _NoPrefetch(worker)
    out: Answers = {}

    errors: list[str] = []

    async def pipe(doc: Any, offset: int, opts: Options, disabled: frozenset[str] = frozenset()) -> tuple[str, float]:
        t0 = time.perf_counter()
        try:
            s = await Completer(proxy, opts, disabled_filters=disabled).complete(doc, offset)  # type: ignore[arg-type]
        except Exception as exc:  # a pipeline fault is that task's empty answer, counted, as the server does
            errors.append(f"{doc.uri}: {type(exc).__name__}: {exc}"[:300])
            print(f"  pipeline error: {errors[-1]}", flush=True)
            s = None
        return (s.text if s is not None else ""), (time.perf_counter() - t0) * 1000

    async def raw(uri: str, hole: Hole, single: bool) -> tuple[str, float]:
        stop = StopRule(single_line=True) if single else StopRule(max_lines=10**6)
        # The naive integration: the plain FIM prompt (no token healing), greedy.
        req = FimRequest(doc=uri + "#raw", prefix=hole.head, suffix=hole.tail, stop=stop,
                         max_tokens=options.max_tokens, background=False, heal=False)
        result = await asyncio.wrap_future(worker.submit(req))
        return result.text, result.elapsed_ms

    try:
        for n, i in enumerate(indices, start=1):
            task = tasks[i]
            marks = []
            for c in args.cursors:
                hole = make_hole(task, c)
                uri = f"file:///humaneval/{task['task_id'].replace('/', '_')}_{c}.py"
                doc = Document(uri, hole.text, "python")
                variants: list[tuple[str, Options, frozenset[str]]] = [("pipeline_budget0", options, frozenset())]
                variants += [("no_second_opinions", options.replace(second_opinions=0), frozenset()),
                             ("multiline_never", options.replace(multiline="never"), frozenset())]
                variants += [(f"no_{f}", options, frozenset({f})) for f in FILTERS]
                for name, opts, disabled in variants:
                    if f"{name}@{c}" in names:
                        middle, ms = await pipe(doc, hole.offset, opts, disabled)
                        out[(i, f"{name}@{c}")] = {"document": hole.document(middle), "latency_ms": round(ms, 1),
                                                   "middle": middle}
                if f"raw@{c}" in names:
                    text, ms = await raw(uri, hole, single=not args.multi_line)
                    first = text.split("\n", 1)[0].rstrip()
                    out[(i, f"raw@{c}")] = {"document": hole.document(first), "latency_ms": round(ms, 1),
                                            "middle": first}
                    if args.multi_line:
                        out[(i, f"raw_full@{c}")] = {"document": hole.document(text), "latency_ms": round(ms, 1),
                                                     "middle": text}
                marks.append(f"{c} {out[(i, f'pipeline_budget0@{c}')]['latency_ms']:.0f} ms")
            print(f"[pipeline {n}/{len(indices)}] {task['task_id']}: " + "; ".join(marks), flush=True)
    finally:
        worker.stop()
    model = {"source": engine.loaded.source, "device": engine.loaded.device, "dtype": engine.loaded.dtype,
             "quantize": engine.loaded.quantize, "fim": engine.encoder.profile.name}
    return out, {"options": dataclasses.asdict(options), "load_s": round(load_s, 1), "model": model,
                 "peak_rss_mib": peak_rss_mib(), "errors": errors}


def llama_main(gguf: str, prompts: list[tuple[str, str]], max_tokens: int, first_line: bool, device: str,
               n_ctx: int = 4096) -> dict[str, Any]:
    """Runs in a child process: llama.cpp on each (prefix, suffix); its own peak RSS is reported."""
    llama_threads_wait_passively()
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=gguf, n_threads=2, n_ctx=n_ctx, n_gpu_layers=-1 if device == "cuda" else 0,
                verbose=False, seed=0)
    load_s = time.perf_counter() - t0
    print(f"llama: loaded {Path(gguf).name} in {load_s:.1f} s", flush=True)
    answers = []
    for k, (prefix, suffix) in enumerate(prompts, start=1):
        t = time.perf_counter()
        res = llm.create_completion(qwen_fim_prompt(prefix, suffix), max_tokens=max_tokens, temperature=0.0,
                                    top_k=1, top_p=1.0, repeat_penalty=1.0, stop=["\n"] if first_line else None)
        ms = (time.perf_counter() - t) * 1000
        answers.append({"text": res["choices"][0]["text"], "latency_ms": round(ms, 1)})
        if k % 10 == 0 or k == len(prompts):
            print(f"[llama {k}/{len(prompts)}] {ms:.0f} ms", flush=True)
    return {"answers": answers, "load_s": round(load_s, 1), "peak_rss_mib": peak_rss_mib(), "gguf": gguf,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def llama_phase(args: argparse.Namespace, tasks: list[dict[str, Any]],
                indices: list[int]) -> tuple[Answers, dict[str, Any]]:
    keys = [(i, c) for i in indices for c in args.cursors]
    holes = {(i, c): make_hole(tasks[i], c) for i, c in keys}
    prompts = [(holes[k].head, holes[k].tail) for k in keys]
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        res = pool.submit(llama_main, llama_gguf(args.model), prompts, args.max_tokens, not args.multi_line,
                          args.device).result()
    out: Answers = {}
    for (i, c), a in zip(keys, res.pop("answers"), strict=True):
        hole = holes[(i, c)]
        first = a["text"].split("\n", 1)[0].rstrip()
        out[(i, f"llama@{c}")] = {"document": hole.document(first), "latency_ms": a["latency_ms"], "middle": first}
        if args.multi_line:
            out[(i, f"llama_full@{c}")] = {"document": hole.document(a["text"]), "latency_ms": a["latency_ms"],
                                           "middle": a["text"]}
    return out, res


# -- the run -------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from codestral_ls.server.postprocess import FILTERS

    path = Path(args.data or data_dir()) / SETS[args.multi_line]
    if not path.is_file():
        raise SystemExit(f"benchmark: error: HumanEval infilling data not found at {path} (use --data DIR)")
    tasks = load_tasks(path)
    indices = [int(i) for i in args.tasks.split(",")] if args.tasks else stride_indices(len(tasks), args.limit)
    configs = config_list(args, list(FILTERS))
    names = {c.name for c in configs}
    print(f"quality: {path.name}, {len(indices)} of {len(tasks)} tasks (stride), cursors {', '.join(args.cursors)}, "
          f"configs: {', '.join(c.name for c in configs)}", flush=True)
    if args.skipped:
        print(f"skipped: {'; '.join(args.skipped)}", flush=True)

    answers: Answers = {}
    phases: dict[str, Any] = {}
    t_run = time.perf_counter()
    if args.lsp:
        if args.cold_cost and not args.model:
            phases["runner"] = runner_rates(args)
            print(f"runner alone: {phases['runner']}", flush=True)
        t = time.perf_counter()
        got, phases["lsp"] = await lsp_phase(args, tasks, indices)
        phases["lsp"]["run_s"] = round(time.perf_counter() - t, 1)
        answers.update(got)
        for flag in args.lsp_ablation:
            t = time.perf_counter()
            got, phases[ablation_name(flag)] = await lsp_phase(args, tasks, indices, (flag,))
            phases[ablation_name(flag)]["run_s"] = round(time.perf_counter() - t, 1)
            answers.update(got)
    if args.inprocess:
        t = time.perf_counter()
        got, phases["inprocess"] = await inprocess_phase(args, tasks, indices, names)
        phases["inprocess"]["run_s"] = round(time.perf_counter() - t, 1)
        answers.update(got)
    if args.llama:
        t = time.perf_counter()
        got, phases["llama"] = await asyncio.get_running_loop().run_in_executor(None, llama_phase, args, tasks,
                                                                                 indices)
        phases["llama"]["run_s"] = round(time.perf_counter() - t, 1)
        answers.update(got)

    runner = TestRunner(args.timeout)
    records: list[dict[str, Any]] = []
    try:
        for i in indices:
            task = tasks[i]
            for c in args.cursors:
                hole = make_hole(task, c)
                answers[(i, f"canonical@{c}")] = {"document": hole.document(canonical_middle(task, hole))}
            answers[(i, "empty@indent")] = {"document": make_hole(task, "indent").document("")}
            reference = answers[(i, f"canonical@{args.cursors[0]}")]["document"]
            rec: dict[str, Any] = {"index": i, "task_id": task["task_id"], "passed": {}, "exact": {},
                                   "answers": {}}
            for cfg in configs:
                a = answers[(i, cfg.name)]
                rec["passed"][cfg.name] = runner.passes(program_of(a["document"], task))
                rec["exact"][cfg.name] = same_code(a["document"], reference)
                if cfg.kind != "check":
                    rec["answers"][cfg.name] = {k: v for k, v in a.items() if k != "document"}
            records.append(rec)
            if args.verbose:
                print(f"{task['task_id']}: " + " ".join(f"{n}{'+' if p else '.'}" for n, p in rec["passed"].items()))
    finally:
        runner.close()

    summary: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        n = len(records)
        k = sum(r["passed"][cfg.name] for r in records)
        ex = sum(r["exact"][cfg.name] for r in records)
        lat = [r["answers"][cfg.name]["latency_ms"] for r in records
               if r["answers"].get(cfg.name, {}).get("latency_ms") is not None]
        summary[cfg.name] = {"kind": cfg.kind, "label": cfg.label, "passed": k, "n": n,
                             "pass@1": round(100 * k / n, 1) if n else None,
                             "exact": round(100 * ex / n, 1) if n else None,
                             "latency_ms": latency_summary(lat) if lat else None}
    model = phases.get("inprocess", {}).get("model") or {"source": args.model or "embedded Qwen2.5-Coder-0.5B",
                                                         "device": args.device}
    return {
        "benchmark": "quality",
        "version": 2,
        "set": "multi-line" if args.multi_line else "single-line",
        "cursors": args.cursors,
        "data": path.name,
        "limit": args.limit,
        "indices": indices,
        "n_tasks_total": len(tasks),
        "max_tokens": args.max_tokens,
        "model": model,
        "machine": machine(),
        "skipped": args.skipped,
        "phases": phases,
        "run_s": round(time.perf_counter() - t_run, 1),
        "summary": summary,
        "target": target_verdict(summary, args.cursors),
        "cold_cost": cold_cost(records, args.cursors, phases["runner"]) if "runner" in phases else None,
        "tasks": records,
    }


def runner_rates(args: argparse.Namespace) -> dict[str, float]:
    """The default runner alone on this machine, now: prefill tokens/s (256-token chunks, a request's)
    and ms per decoded token, in a process of its own (its memory goes with it)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_runner_rates).result()


def _runner_rates() -> dict[str, float]:
    from codestral_ls.engine.models import embedded
    from codestral_ls.engine.models.gguf_tokenizer import GgufTokenizer, tokenizer_folder
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner

    from benchmarks.runners import prompt_ids, time_runner

    runner = LlamaCppRunner(embedded.gguf_path())
    tok = GgufTokenizer(tokenizer_folder(embedded.gguf_path()))
    r = time_runner(runner, prompt_ids(tok, 384), decode=16, rounds=3, chunk=runner.prefill_chunk)
    return {"prefill_tok_s": round(r["prefill_tok_s"], 1), "decode_ms": round(r["decode_ms"], 1)}


def cold_cost(records: list[dict[str, Any]], cursors: list[str], rates: dict[str, float]) -> dict[str, Any]:
    """A cold first answer (every file new, the first cursor of each task) against what its tokens cost
    the runner alone: its prefilled tokens at the runner's prefill rate plus its decoded tokens at the
    runner's ms/token (every engine call counted)."""
    rows = []
    for r in records:
        for c in cursors:
            a = r["answers"].get(f"lsp@{c}", {})
            t = a.get("timings") or {}
            if not a.get("first") or not t.get("engine_calls"):
                continue
            cost = t["prefill_tokens"] / rates["prefill_tok_s"] * 1000 + t["decoded_tokens"] * rates["decode_ms"]
            rows.append({"latency_ms": a["latency_ms"], "tokens_ms": round(cost, 1),
                         "ratio": round(a["latency_ms"] / cost, 3) if cost else None,
                         "over_ms": round(a["latency_ms"] - cost, 1), "engine_calls": t["engine_calls"],
                         "queued_ms": t.get("queued_ms"), "prefill_tokens": t["prefill_tokens"]})
    ratios = [x["ratio"] for x in rows if x["ratio"] is not None]
    return {"n": len(rows),
            "latency_ms": latency_summary([x["latency_ms"] for x in rows]),
            "tokens_ms": latency_summary([x["tokens_ms"] for x in rows]),
            "ratio": latency_summary(ratios), "over_ms": latency_summary([x["over_ms"] for x in rows]),
            "second_opinions": sum(x["engine_calls"] - 1 for x in rows), "rates": rates, "rows": rows}


def target_verdict(summary: dict[str, dict[str, Any]], cursors: list[str]) -> dict[str, Any]:
    """Issue #13's target: the LSP's first answer within 2 points of the unbudgeted pipeline, per cursor."""
    out: dict[str, Any] = {"goal": "lsp (defaults, first answer) >= pipeline_budget0 - 2 points, each cursor"}
    for c in cursors:
        lsp, pipe = summary.get(f"lsp@{c}"), summary.get(f"pipeline_budget0@{c}")
        if lsp is None or pipe is None or lsp["pass@1"] is None or pipe["pass@1"] is None:
            continue
        delta = round(lsp["pass@1"] - pipe["pass@1"], 1)
        out[c] = {"lsp_minus_pipeline_points": delta, "met": delta >= -2}
    return out


def report(result: dict[str, Any]) -> str:
    summary = result["summary"]
    if result.get("version", 1) < 2:  # a result of the older layout (pipeline/raw, one cursor)
        return _report_v1(result)
    rows = []
    for name, s in summary.items():
        lat = s.get("latency_ms") or {}
        rows.append([name, s["kind"], fmt(s["pass@1"], 1), f"{s['passed']}/{s['n']}", fmt(s["exact"], 1),
                     fmt(lat.get("p50")), fmt(lat.get("p95")), s["label"]])
    n = next(iter(summary.values()))["n"] if summary else 0
    lines = [f"HumanEval {result['set']} infilling, {n} tasks (stride subset of {result['n_tasks_total']}), "
             f"cursors {', '.join(result['cursors'])}, "
             f"model {result['model']['source']} on {result['model']['device']}",
             table(rows, ["config", "kind", "pass@1 %", "passed", "exact %", "p50 ms", "p95 ms", "what"])]
    for c, v in result["target"].items():
        if isinstance(v, dict):
            lines.append(f"target @{c} (lsp >= pipeline_budget0 - 2): {'MET' if v['met'] else 'NOT met'} "
                         f"({v['lsp_minus_pipeline_points']:+.1f} points)")
    for c in result["cursors"]:
        lsp, llama = summary.get(f"lsp@{c}"), summary.get(f"llama@{c}")
        if lsp and llama:
            lines.append(f"@{c}: lsp {fmt(lsp['pass@1'], 1)} % vs llama.cpp {fmt(llama['pass@1'], 1)} % "
                         f"({lsp['pass@1'] - llama['pass@1']:+.1f} points)")
    cc = result.get("cold_cost")
    if cc and cc.get("n"):
        rates = cc["rates"]
        lines.append(f"cold first answers (n={cc['n']}, first cursor of each task): p50 "
                     f"{fmt(cc['latency_ms']['p50'])} ms vs their tokens alone p50 {fmt(cc['tokens_ms']['p50'])} ms "
                     f"(runner {rates['prefill_tok_s']} tok/s prefill, {rates['decode_ms']} ms/token); ratio p50 "
                     f"{cc['ratio']['p50']} p95 {cc['ratio']['p95']}, over p50 {fmt(cc['over_ms']['p50'])} ms; "
                     f"{cc['second_opinions']} second-opinion calls")
    if result.get("skipped"):
        lines.append("skipped: " + "; ".join(result["skipped"]))
    phases = ", ".join(f"{k} {v.get('run_s')} s" for k, v in result.get("phases", {}).items() if "run_s" in v)
    lines.append(f"run {result['run_s']} s ({phases})")
    return "\n".join(lines)


def _report_v1(result: dict[str, Any]) -> str:
    summary = result["summary"]
    rows = [[name, fmt(s["pass@1"], 1), f"{s['passed']}/{s['n']}", fmt(s["exact"], 1)] for name, s in summary.items()]
    return "\n".join([f"HumanEval {result['set']} infilling (older layout: in-process pipeline, budget_ms=0), "
                      f"cursor {result.get('cursor', 'indent')}",
                      table(rows, ["config", "pass@1 %", "passed", "exact %"])])


KIND_COLORS = {"headline": "tab:blue", "peer": "tab:orange", "ablation": "tab:green", "check": "tab:gray"}


def plot(result: dict[str, Any], png: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    summary = result["summary"]
    names = list(summary)
    values = [summary[n]["pass@1"] or 0 for n in names]
    kinds = [summary[n].get("kind", "ablation") for n in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(names)), 4))
    bars = ax.bar(range(len(names)), values, color=[KIND_COLORS.get(k, "tab:green") for k in kinds])
    for b, v in zip(bars, values, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("pass@1 (%)")
    ax.set_ylim(0, 110)
    n = summary[names[0]]["n"] if names else 0
    ax.set_title(f"HumanEval {result['set']} infilling, {n} tasks - blue: LSP defaults (headline), orange: "
                 f"llama.cpp, green: ablations", fontsize=9)
    return save_figure(plt, fig, png)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=60,
                   help="tasks, sampled with a fixed stride over the set (default 60; 0: all)")
    p.add_argument("--tasks", help="comma-separated task indices instead of the stride subset (debugging)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each task's pass/fail per configuration")
    p.add_argument("--multi-line", action="store_true", help="the multi-line infilling set (default single-line)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/quality_{single,multi}.json)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--data", help="folder with the HumanEval-*LineInfilling.jsonl.gz files")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test program (default 10)")
    p.add_argument("--cursor", choices=("both", "indent", "col0", "line-start"), default="both",
                   help="cursor on the empty hole line: after the auto-indent, at column 0 (line-start), or both "
                        "(default)")
    p.add_argument("--no-lsp", dest="lsp", action="store_false", help="skip the headline (the LSP server)")
    p.add_argument("--lsp-ablation", action="append", default=[], metavar="FLAG",
                   help="also the LSP server with this one flag, e.g. --lsp-ablation=--no-quick-first (repeatable)")
    p.add_argument("--no-cold-cost", dest="cold_cost", action="store_false",
                   help="skip measuring the runner alone (the cold-cost check of the first answers)")
    p.add_argument("--no-llama", dest="llama", action="store_false", help="skip the llama.cpp peer")
    p.add_argument("--no-inprocess", dest="inprocess", action="store_false",
                   help="skip the in-process ablations (pipeline with budget_ms=0, raw model)")
    p.add_argument("--no-ablations", dest="ablations", action="store_false",
                   help="skip the per-filter ablations (keep pipeline_budget0, no_second_opinions, raw)")
    p.add_argument("--model", help="a model other than the embedded one (server --model; tests use a tiny one); "
                                   "llama.cpp runs only when it is a .gguf")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"max decoded tokens (the server's default: {DEFAULT_MAX_TOKENS}; another value is passed "
                        "to the server as a flag)")
    add_device_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_if_unusable(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.cursors = ["indent", "col0"] if args.cursor == "both" else ["col0" if args.cursor == "line-start"
                                                                     else args.cursor]
    args.skipped = []
    if args.llama and (problem := llama_problem(args.model)):
        args.llama = False
        args.skipped.append(f"llama.cpp peer: {problem}")
    result = asyncio.run(run(args))
    out = args.out or RESULTS_DIR / f"quality_{'multi' if args.multi_line else 'single'}.json"
    write_json(out, result)
    text = report(result)
    out.with_suffix(".txt").write_text(text + "\n")  # the table as printed, next to its JSON
    print()
    print(text)
    print(f"results: {out} (table: {out.with_suffix('.txt').name})")
    if not args.no_plot:
        png = plot(result, out.with_suffix(".png"))
        if png:
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
