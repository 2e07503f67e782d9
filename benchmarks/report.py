"""The tables of benchmarks/README.md (and the README's headline table), generated from the results
files: never typed.

A table is a region of a document between `<!-- report: NAME -->` and `<!-- end report -->`. `TABLES`
says which results file each NAME renders (under benchmarks/results/ unless the path names a folder of
the repository) and which of its rows; the file's own `benchmark` field (or its shape) picks the
renderer, one per kind of results file. `HEADLINE` lists the README's headline figures, each read
from a results file.

    python -m benchmarks.report            # rewrite every region from the results files
    python -m benchmarks.report --check    # exit 1 naming each region that differs (a test runs this)
    python -m benchmarks.report --list     # the tables and their files

Adding a table: one line in `TABLES`, the two markers where it goes, then `python -m benchmarks.report`.
Standard library only; nothing is run, no model is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.measure import RESULTS_DIR, ROOT
from benchmarks.runners import BANDWIDTH_GBS

DOCUMENTS = (ROOT / "benchmarks" / "README.md", ROOT / "README.md")
REGION = re.compile(r"(<!-- report: (?P<name>[\w.@-]+) -->\n)(?P<body>.*?)(<!-- end report -->)", re.DOTALL)


@dataclass(frozen=True)
class Table:
    """One generated table: a results file and the rows of it shown (all of them, in the file's order,
    when `rows` is empty); `kind` names the renderer where the file's shape would not."""

    file: str
    rows: tuple[str, ...] = ()
    kind: str = ""


def rows(*names: str) -> tuple[str, ...]:
    return names


TABLES: dict[str, Table] = {
    # HumanEval infilling through the LSP, default options (benchmarks.quality, version 2)
    "quality-single-60": Table("quality_single_defaults_60_quickabove.json"),
    "quality-single-60-quick-always": Table("quality_single_quick_60.json"),
    "quality-single-60-quick-above": Table("quality_single_quick_above_60.json"),
    "quality-single-60-before-quick": Table("quality_single_defaults_60_streams.json"),
    "quality-single-60-previous": Table("quality_single_defaults_60_final.json"),
    "quality-single-60-ablations": Table("quality_single_defaults_60.json"),
    "quality-single-120": Table("quality_single_defaults_120.json", rows("lsp@indent", "canonical@indent")),
    "quality-single-120-llamacpp": Table("quality_single_llamacpp_120_final.json", rows("lsp@indent")),
    "quality-single-120-torch": Table("quality_single_torch_120_final.json", rows("lsp@indent")),
    "quality-single-120-llamacpp-floor384": Table("quality_single_llamacpp_120_floor384.json", rows("lsp@indent")),
    "quality-single-120-torch-floor384": Table("quality_single_torch_120_floor384.json", rows("lsp@indent")),
    "quality-single-60-torch": Table("quality_single_torch_60.json", rows("lsp@indent")),
    "quality-multi-40": Table("quality_multi_defaults_40_streams.json"),
    "quality-multi-40-ablations": Table("quality_multi_defaults_40.json"),
    "quality-single-small6b": Table("quality_single_defaults_small6b.json"),
    "quality-single-small6": Table("quality_single_defaults_small6.json"),
    "quality-multi-small3": Table("quality_multi_defaults_small3.json"),
    # the old harness (in-process pipeline, budget_ms=0, one cursor)
    "quality-old-cpu-120": Table("quality_single_cpu_120.json"),
    "quality-old-cpu-60-int8": Table("quality_single_cpu_60_int8.json"),
    "quality-old-h100-single": Table("quality_single_h100_fp32_344.json"),
    "quality-old-h100-multi": Table("quality_multi_h100_fp32_250.json"),
    # typing replay (benchmarks.typing_replay)
    "replay-read2000-24": Table("replay_read2000_24_pause.json"),
    "replay-read2000-24-previous": Table("replay_read2000_24_final.json"),
    "replay-backtoback-24": Table("replay_backtoback_24_final.json"),
    "replay-read2000-24-ablations": Table("replay_read2000_24.json"),
    "replay-read2000-6": Table("replay_read2000.json"),
    "replay-backtoback-6": Table("replay_backtoback.json"),
    "replay-read2000-small3": Table("replay_read2000_small3.json"),
    "replay-backtoback-small3": Table("replay_backtoback_small3.json"),
    "replay-old-debounce150": Table("replay_debounce150.json"),
    "replay-old-everykey": Table("replay_everykey.json"),
    "replay-old-h100-debounce150": Table("replay_debounce150_h100_bf16.json"),
    "replay-old-h100-everykey": Table("replay_everykey_h100_bf16.json"),
    # a person in a file (benchmarks.session)
    "session-baseline": Table("session_baseline.json"),
    "session-defaults": Table("session_defaults.json"),
    "session-quick-always": Table("session_quick.json"),
    "session-quick-above": Table("session_quick_above.json"),
    "session-quick-off": Table("session_quick_ablation.json"),
    # the runners, context from other files, quantization, packaged models, GPU latency, robustness
    "runners": Table("runners_streams.json"),
    "runners-before-streams": Table("runners.json"),
    "crossfile-heldout-0.5b": Table("crossfile_heldout_0.5b_30.json"),
    "crossfile-heldout-1.5b": Table("crossfile_heldout_1.5b_call_method.json"),
    "crossfile-24": Table("crossfile_24.json"),
    "crossfile-24-qwen1.5b": Table("crossfile_24_qwen1.5b.json"),
    "crossfile-24-pydantic-qwen1.5b": Table("crossfile_24_pydantic_settings_qwen1.5b.json"),
    "quantization-cpu": Table("quantization_cpu.json"),
    "models": Table("engine/models/data/models.json"),
    "gpu-h100": Table("gpu_h100.jsonl"),
    "stress-llamacpp-soak": Table("stress_llamacpp_soak_10k.json"),
    "stress-tiny": Table("stress_tiny_2000.json"),
    "stress-torch-real-model": Table("stress_real_model_10k.json"),
}


# -- reading -----------------------------------------------------------------------------------------


def path_of(file: str) -> Path:
    return ROOT / file if "/" in file else RESULTS_DIR / file


def load(file: str) -> Any:
    path = path_of(file)
    if path.suffix == ".jsonl":  # one JSON object a line; a line that is not one is kept as text
        out: list[Any] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    out.append(line.strip())
        return out
    return json.loads(path.read_text(encoding="utf-8"))


def kind_of(data: Any) -> str:
    """Which renderer reads this results file."""
    if isinstance(data, list):
        return "gpu_keystrokes"
    bench = data.get("benchmark")
    if bench in ("quality", "typing_replay"):
        return bench if data.get("version", 1) >= 2 else f"{bench}_v1"
    if bench in ("session", "crossfile", "quantization"):
        return bench
    if "paired_ratio" in data:
        return "runners"
    if "soak" in data or "bad_inputs" in data:
        return "stress"
    if isinstance(data.get("models"), dict):
        return "models"
    raise ValueError("not a results file this script knows")


# -- formatting ---------------------------------------------------------------------------------------


def num(v: Any, digits: int = 0) -> str:
    """A number as the tables show it: "–" for none, "never" for an infinite time, text as it is."""
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return f"{v:,.{digits}f}".replace(",", " ")


def rate(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f} %"


def secs(ms: Any) -> str:
    return num(ms) if not isinstance(ms, int | float) or math.isinf(ms) else f"{ms / 1000:.2f} s"


def ratio(a: float | None, b: float | None) -> str:
    """a / b in two significant figures (whole numbers from 10 on)."""
    if a is None or not b:
        return "–"
    r = a / b
    return f"{r:.0f}" if r >= 10 else f"{r:.2g}"


def md(header: list[str], body: list[list[str]]) -> list[str]:
    def cell(c: str) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in r) + " |" for r in body)]


def pick(items: dict[str, Any], wanted: tuple[str, ...]) -> list[tuple[str, Any]]:
    if not wanted:
        return list(items.items())
    missing = [w for w in wanted if w not in items]
    if missing:
        raise KeyError(f"no row {', '.join(missing)} in the results file")
    return [(w, items[w]) for w in wanted]


def provenance(file: str, data: Any) -> str:
    """Where a table's figures come from, with what the file records of the tree, the machine and its load."""
    facts = [f"`{path_of(file).relative_to(ROOT)}`"]
    d = data if isinstance(data, dict) else {}
    m = d.get("machine") or {}
    if m.get("git"):
        facts.append(f"tree {m['git']}")
    model = d.get("model")
    source = model.get("source") if isinstance(model, dict) else model
    if source:
        facts.append(f"model {Path(source).name if '/' in str(source) else source}")
    where = [f"{m['cpus']} CPUs" if m.get("cpus") else "", m.get("cpu") or "", m.get("cuda") or ""]
    if any(where):
        facts.append(", ".join(w for w in where if w))
    load = d.get("load_average", m.get("load1_start"))
    if load is not None:
        facts.append(f"1-minute load {load} at the start")
    return "From " + "; ".join(facts) + "."


# -- one renderer per kind of results file --------------------------------------------------------------


def render_quality(d: dict[str, Any], t: Table) -> list[str]:
    body = []
    for name, s in pick(d["summary"], t.rows):
        lat = s.get("latency_ms") or {}
        body.append([f"`{name}`", s["kind"], f"{num(s['pass@1'], 1)} ({s['passed']}/{s['n']})",
                     num(s["exact"], 1), f"{num(lat.get('p50'))} / {num(lat.get('p95'))}", s["label"]])
    out = [f"HumanEval {d['set']} infilling, {d['limit']} tasks (stride subset of {d['n_tasks_total']}):", "",
           *md(["config", "kind", "pass@1 % (passed)", "exact %", "latency p50 / p95 ms", "what"], body)]
    verdicts = [f"@{c}: lsp − pipeline_budget0 = {v['lsp_minus_pipeline_points']:+.1f} points, "
                f"{'met' if v['met'] else 'NOT met'}" for c, v in d.get("target", {}).items() if isinstance(v, dict)]
    if verdicts:
        out += ["", f"Target ({d['target']['goal']}): " + "; ".join(verdicts) + "."]
    lsp = (d.get("phases") or {}).get("lsp") or {}
    model = (lsp.get("server_stats") or {}).get("model") or {}
    if lsp:
        flags = " ".join(lsp.get("flags") or []) or "(none)"
        out += ["", f"The headline server: flags `{flags}`, model weights {model.get('dtype', '?')} on "
                    f"{model.get('device', '?')}, peak RSS {num(lsp.get('peak_rss_mib'))} MiB."]
    return out


def render_quality_v1(d: dict[str, Any], t: Table) -> list[str]:
    raw = d["summary"].get("raw", {}).get("pass@1")
    body = [[f"`{name}`", num(s["pass@1"], 1), f"{s['passed']}/{s['n']}", num(s["exact"], 1),
             f"{s['pass@1'] - raw:+.1f}" if raw is not None and name not in ("raw", "canonical", "empty") else ""]
            for name, s in pick(d["summary"], t.rows)]
    o = d.get("options") or {}
    return [f"HumanEval {d['set']} infilling, {d['limit']} tasks (stride subset of {d['n_tasks_total']}), "
            f"cursor {d.get('cursor', 'indent')}, in-process pipeline with budget_ms={o.get('budget_ms')}, "
            f"{o.get('device')} {o.get('dtype')}, quantize {o.get('quantize')}; pipeline mean latency "
            f"{num(d.get('pipeline_latency_ms_mean'))} ms:", "",
            *md(["config", "pass@1 %", "passed", "exact %", "vs raw"], body)]


def render_typing_replay(d: dict[str, Any], t: Table) -> list[str]:
    body, legend = [], []
    for name, run in pick(d["systems"], t.rows):
        s = run["summary"]
        lat, eng = s.get("latency_ms") or {}, s.get("engine_latency_ms") or {}
        body.append([f"`{name}`", num(s["requests"]), f"{num(lat.get('p50'))} / {num(lat.get('p95'))}",
                     f"{s['chars_saved']}/{s['chars']} ({rate(s['chars_saved_rate'])})",
                     secs(s.get("site_first_suggestion_ms")), rate(s.get("site_first_suggestion_right_rate")),
                     secs(s.get("site_right_line_ms")), num(s.get("updates_received")), num(eng.get("p50")),
                     rate(s.get("typed_through_hit_rate")),
                     rate(s.get("kv_reuse_ratio")), rate(s.get("warm_prompt_rate")), num(s.get("peak_rss_mib")),
                     num(s.get("load1_mean"), 2)])
        legend.append(f"`{name}`: {run.get('label') or name}")
    ty = d["typist"]
    return [f"{d['n_sites']} sites, typist {ty['mode']}, {num(ty['char_ms'])} ms a character, "
            f"{num(ty['pause_ms'])} ms at word boundaries; wall {num(d.get('wall_s'))} s:", "",
            *md(["system", "requests", "keystroke p50 / p95 ms", "chars saved", "arrival → 1st suggestion",
                 "1st right", "arrival → right line", "updates", "engine p50 ms", "typed-through", "KV reuse", "warm",
                 "peak RSS MiB", "load"], body), "", "; ".join(legend) + "."]


def render_typing_replay_v1(d: dict[str, Any], t: Table) -> list[str]:
    items = pick(d["systems"], t.rows)
    base = d["systems"].get("default", {}).get("summary", {})
    b_lat, b_eng = base.get("latency_ms") or {}, base.get("engine_latency_ms") or {}
    body = []
    for name, run in items:
        s = run["summary"]
        lat, eng = s.get("latency_ms") or {}, s.get("engine_latency_ms") or {}
        times = " / ".join(ratio(a, b) for a, b in ((lat.get("p50"), b_lat.get("p50")),
                                                     (eng.get("p50"), b_eng.get("p50")),
                                                     (lat.get("mean"), b_lat.get("mean"))))
        body.append([f"`{name}`", num(s["requests"]), num(lat.get("p50")), num(lat.get("p95")), num(lat.get("mean")),
                     num(eng.get("p50")), times, rate(s.get("typed_through_hit_rate")), rate(s.get("kv_reuse_ratio")),
                     rate(s.get("exact_line_rate")), f"{s['chars_saved']}/{s['chars']} ({rate(s['chars_saved_rate'])})",
                     num(s.get("peak_rss_mib")), num(s.get("load1_mean"), 2)])
    args = "; ".join(f"`{n}`: `{' '.join(r['args'])}`" for n, r in items if r.get("args"))
    return [f"{d['n_sites']} sites, typist {d['typist']['mode']}, device {d.get('device')} {d.get('dtype')}; "
            f"wall {num(d.get('wall_s'))} s:", "",
            *md(["system", "reqs", "p50 ms", "p95 ms", "mean ms", "engine p50 ms",
                 "× default (p50 / engine p50 / mean)", "typed-through", "KV reuse", "exact line", "chars saved",
                 "peak RSS MiB", "load"], body), "", f"Server flags: {args}."]


SESSION_ROWS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("arrival → 1st suggestion p50 / p95 ms", lambda s: _pcts(s.get("arrival_ms"))),
    ("  cold arrivals", lambda s: _pcts(s.get("arrival_cold_ms"))),
    ("  warm arrivals", lambda s: _pcts(s.get("arrival_warm_ms"))),
    ("arrival answered within the read", lambda s: f"{s.get('arrival_in_read')}/{s.get('places')}"),
    ("arrival right line", lambda s: f"{s.get('arrival_right')}/{s.get('places')}"),
    ("every key p50 / p95 ms (answered / sent)",
     lambda s: f"{num((s.get('key_ms') or {}).get('p50'))} / {num((s.get('key_ms') or {}).get('p95'))} "
               f"({s.get('key_answered')}/{s.get('key_requests')})"),
    ("  superseded key requests", lambda s: f"{s.get('key_superseded')}/{s.get('key_requests')}"),
    ("  answered typed-through", lambda s: _source(s, "typed-through")),
    ("  answered by the engine", lambda s: _source(s, "engine")),
    ("  declined without the engine", lambda s: _source(s, "none")),
    ("Enter after an accept → next line p50 / p95 ms", lambda s: _pcts(s.get("enter_after_accept_ms"))),
    ("characters saved", lambda s: f"{s.get('chars_saved')}/{s.get('chars')} ({rate(s.get('chars_saved_rate'), 1)}), "
                                   f"{s.get('lines_accepted')}/{s.get('lines')} lines accepted"),
    ("prefill at request time: tokens / ms",
     lambda s: f"{num(s.get('prefill_request_tokens'))} / {num(s.get('prefill_request_ms'))}"),
    ("  engine prompt − reused tokens", lambda s: num(s.get("prompt_minus_reused_tokens"))),
    ("prefill while idle: tokens / ms",
     lambda s: f"{num(s.get('prefill_warm_tokens'))} / {num(s.get('prefill_warm_ms'))}"),
    ("CPU s while reading and moving / at places",
     lambda s: f"{num(s.get('cpu_s_idle'), 1)} / {num(s.get('cpu_s_places'), 1)} (idle {num(s.get('idle_s'))} s)"),
    ("peak RSS MiB", lambda s: num(s.get("peak_rss_mib"))),
    ("requests never answered", lambda s: num(s.get("never_answered"))),
    ("burst: one ordinary request ms", lambda s: num(s.get("burst_ordinary_ms"))),
    ("burst: newest of N answered ms", lambda s: f"{num(s.get('burst_newest_ms'))} (N={num(s.get('burst_n'))})"),
    ("  with $/cancelRequest", lambda s: num(s.get("burst_cancel_newest_ms"))),
]


def _pcts(p: dict[str, Any] | None) -> str:
    return f"{num(p['p50'])} / {num(p['p95'])} (n={p['n']})" if p and p.get("n") else "–"


def _source(s: dict[str, Any], key: str) -> str:
    v = (s.get("key_ms_by_source") or {}).get(key)
    return f"{num(v['p50'])} / {num(v['p95'])} (n={v['n']})" if v else "–"


def render_session(d: dict[str, Any], t: Table) -> list[str]:
    systems = pick(d["systems"], t.rows)
    p = d["person"]
    files = ", ".join(Path(f).name for f in d["files"])
    body = [[label.replace("  ", "↳ ", 1) if label.startswith("  ") else label, *(f(r["summary"]) for _, r in systems)]
            for label, f in SESSION_ROWS]
    return [f"{files}: {d['n_places']} places, read the file {num(p['idle_s'])} s, read {num(p['read_ms'])} ms at a "
            f"place, {num(p['char_ms'])} ms a character, superseded requests cancelled: {p['cancel']}; cold: more "
            f"than {d.get('cold_tokens')} tokens prefilled at request time:", "",
            *md(["", *(f"`{n}`" for n, _ in systems)], body), "",
            "; ".join(f"`{n}`: {r.get('label') or n}" for n, r in systems) + "."]


def render_runners(d: dict[str, Any], t: Table) -> list[str]:
    ours, llama, torch_, gemm = d["ours"], d["llama"], d.get("torch") or {}, d.get("gemm") or {}

    def best(x: dict[str, Any], key: str, pick_best: Callable[[list[float]], float]) -> str:
        """The median of the rounds (the best round): `decode` in ms/token, `prefill` in tokens/s."""
        rounds = x.get(f"{key}_all")
        b = x.get(f"{key}_best", pick_best(rounds) if rounds else None)
        return f"{num(x['decode_ms' if key == 'decode' else 'prefill_tok_s'], 1)} ({num(b, 1)})"

    body = []
    for label, x in (("our llama.cpp runner (the default)", ours), ("llama-cpp-python's own `Llama.generate`", llama),
                     ("torch fp32 runner (`--runner torch`)", torch_)):
        if x.get("decode_ms") is not None:
            body.append([label, best(x, "decode", min), best(x, "prefill", max), x.get("config", "")])
    for layout, label in (("streams", f"our runner, {ours.get('resident_n')} other prompts resident"),
                          ("unified", "ablation: the same, one unified cache (the old layout)")):
        x = (ours.get("resident") or {}).get(layout)
        if x:
            body.append([label, best(x, "decode", min), best(x, "prefill", max), x.get("config", "")])
    gb = BANDWIDTH_GBS * 1e9
    for label, x in (("GGUF", ours), ("fp32", torch_)):
        if "weight_bytes" in x:
            body.append([f"floor: {label} weights ({x['weight_bytes'] / 2**20:.0f} MiB) read once a token at "
                         f"{BANDWIDTH_GBS:g} GB/s", num(x["weight_bytes"] / gb * 1000, 1), "", ""])
    if "n_params" in ours and gemm.get("gflops"):
        flops = 2 * ours["n_params"]
        body.append([f"floor: 2 × {ours['n_params'] / 1e6:.0f} M params at the measured {gemm['gflops']:.0f} "
                     "GFLOP/s (fp32 GEMM)", num(flops / (gemm["gflops"] * 1e9) * 1000, 1),
                     num(gemm["gflops"] * 1e9 / flops), ""])
    out = [f"{d['prompt']}-token prompt, {d['decode']} greedy tokens, median (best) of {d['rounds']} rounds, "
           f"{d['threads']} threads, OpenMP wait {d.get('omp_wait')}:", "",
           *md(["", "decode ms/token", "prefill tok/s", "configuration"], body)]
    pr, s = d.get("paired_ratio") or {}, d.get("server") or {}
    if pr:
        out += ["", f"Paired ratios, ours / llama.cpp's own: decode {pr['decode']:.2f}, prefill {pr['prefill']:.2f}; "
                    f"the same greedy tokens: {'yes' if d.get('same_tokens') else 'no'}."]
    if s:
        out += ["", f"The server with default options: RSS {num(s.get('rss_mib'))} MiB after 20 suggestions, ready in "
                    f"{num(s.get('load_s'), 1)} s."]
    if ours.get("system_info"):
        out += ["", f"llama.cpp build: `{ours['system_info'].strip(' |')}`."]
    return out


def render_crossfile(d: dict[str, Any], t: Table) -> list[str]:
    results = {r["config"]: r for r in d["results"]}
    if any("by_kind" in r for r in results.values()):
        return render_crossfile_kinds(d, t)
    body = []
    for name, r in pick(results, t.rows):
        n = r["n"]
        uses = r.get("uses_name")
        if uses is None:  # files from before the field: the same rule as benchmarks.crossfile
            uses = 100 * sum(row["site"]["name"] in row["got"] for row in r["rows"]) / n if n else None
        errors = sum(bool(row.get("error")) for row in r["rows"])
        body.append([f"`{name}`", " ".join(r.get("flags") or []) or "(none)", "yes" if r.get("opens_related") else "no",
                     f"{round(r['exact'] * n / 100)}/{n} ({num(r['exact'], 1)} %)", num(r["similarity"], 3),
                     f"{round(uses * n / 100)}/{n}" if uses is not None else "–", secs(r.get("p50_ms")), str(errors)])
    cost = d.get("retrieval_cost") or {}
    cold, key = cost.get("cold_ms") or {}, cost.get("keystroke_ms") or {}
    return [f"{d['sites']} sites in {', '.join(d['packages'])}:", "",
            *md(["config", "server flags", "sibling open", "exact line", "edit similarity", "names the imported name",
                 "p50 latency (cold)", "errors"], body), "",
            f"Selecting context (in the benchmark's process): entering a block p50 {cold.get('p50')} ms, p95 "
            f"{cold.get('p95')} ms, max {cold.get('max')} ms; a keystroke in it p50 {key.get('p50')} ms, max "
            f"{key.get('max')} ms."]


def render_crossfile_kinds(d: dict[str, Any], t: Table) -> list[str]:
    """Issue 27's files: per configuration, every kind of site, then per package."""
    results = {r["config"]: r for r in d["results"]}
    body, packages = [], []
    for name, r in pick(results, t.rows):
        for kind, s in [("all", r), *r["by_kind"].items()]:
            n = s.get("n")
            if not n:
                continue
            body.append([f"`{name}`" if kind == "all" else "", kind, f"{round(s['exact'] * n / 100)}/{n} "
                         f"({num(s['exact'], 1)} %)", num(s["similarity"], 3), f"{round(s['used'] * n / 100)}/{n}",
                         f"{round(s['in_prompt'] * n / 100)}/{n}", secs(s.get("p50_ms"))])
        packages.append([f"`{name}`", *(f"{num(s['exact'], 1)} % / {num(s['similarity'], 3)}"
                                        for s in r["by_package"].values())])
    flags = "; ".join(f"`{name}`: {' '.join(r.get('flags') or []) or '(none)'}" for name, r in pick(results, t.rows))
    first = next(iter(results.values()))
    cost = d.get("retrieval_cost") or {}
    cold, key = cost.get("cold_ms") or {}, cost.get("keystroke_ms") or {}
    return [f"{d['sites']} sites in {', '.join(d['packages'])}; server flags: {flags}.", "",
            *md(["config", "kind", "exact line", "edit similarity", "used the definition", "definition in the prompt",
                 "p50 latency (cold)"], body), "",
            "Per package (exact line / edit similarity):", "",
            *md(["config", *first["by_package"]], packages), "",
            f"Selecting context (in the benchmark's process): entering a block p50 {cold.get('p50')} ms, p95 "
            f"{cold.get('p95')} ms, max {cold.get('max')} ms; a keystroke in it p50 {key.get('p50')} ms, max "
            f"{key.get('max')} ms."]


def render_quantization(d: dict[str, Any], t: Table) -> list[str]:
    results = {r["recipe"]: r for r in d["results"]}
    fp32 = results.get("fp32", {}).get("decode_ms_per_token")
    body = [[f"`{name}`", ", ".join(r["keep_fp32"]) if r.get("keep_fp32") else ("everything" if name == "fp32" else
                                                                              "nothing"),
             num(r["decode_ms_per_token"], 1), f"{fp32 / r['decode_ms_per_token']:.2f}×" if fp32 else "–",
             f"{r['same_as_fp32']}/{d['holes']}"] for name, r in pick(results, t.rows)]
    return [f"{d['holes']} HumanEval holes:", "",
            *md(["recipe", "kept fp32", "decode ms/token", "speed vs fp32", "first line = fp32's"], body)]


def render_models(d: dict[str, Any], t: Table) -> list[str]:
    body = [[f"`{name}`", num(m.get("weights_mib")), num(m.get("prefill_tok_s"), 1), num(m.get("ms_per_token"), 1),
             num(m.get("rss_mib")), num(m.get("load_s"), 2),
             f"{num(m.get('pass1_single'), 1)} % ({m.get('pass1_tasks')})", num(m.get("exact_single"), 1),
             num(m.get("latency_p50_ms"))] for name, m in pick(d["models"], t.rows)]
    return [f"`{d.get('command', '').strip()}`, {d.get('limit')} tasks a model:", "",
            *md(["model", "weights MiB", "prefill tok/s", "decode ms/token", "peak RSS MiB", "load s",
                 "pass@1 single-line (tasks)", "exact %", "first answer p50 ms"], body)]


def render_gpu_keystrokes(d: list[Any], t: Table) -> list[str]:
    body, failed = [], []
    for r in d:
        if not isinstance(r, dict):
            failed.append(r)
            continue
        if t.rows and r["arch"] not in t.rows:
            continue
        body.append([f"`{r['arch']}`", f"{r['gpu']}, {r['dtype']}", num(r["weight_gb"], 2),
                     num(r["decode_ms_per_token_p50"], 1), num(r["bandwidth_floor_ms_per_token"], 1),
                     *(f"{num(r[k]['p50_ms'])} / {num(r[k]['p95_ms'])}" for k in ("engine", "plain", "generate")),
                     str(r["keystrokes"])])
    out = md(["architecture (random weights)", "GPU, dtype", "weights GB", "decode ms/token p50",
              "bandwidth floor ms/token", "keystroke p50 / p95 ms: engine", "plain", "`generate`", "keystrokes"], body)
    return out + [f"\nA run that failed: `{f}`" for f in failed]


def render_stress(d: dict[str, Any], t: Table) -> list[str]:
    body = [["model", f"`{Path(d['model']).name}`"], ["first answer", f"{num(d.get('first_answer_s'), 1)} s"]]
    if b := d.get("bad_inputs"):
        body.append(["bad inputs", f"{b['tried']} tried ({b['requests']} requests, {b['frames']} frames, "
                                   f"{b['notifications']} notifications): {b['requests_answered']}/{b['requests']} "
                                   f"requests and {b['frames_answered']}/{b['frames']} frames answered, alive after: "
                                   f"{_yes(b['alive_after'])}"])
    for name, r in (d.get("big_inputs") or {}).items():
        body.append([name, f"{num(r['ms'], 1)} ms" + ("" if r["answered"] else " (not answered)")])
    if h := d.get("hostile"):
        body.append(["hostile workspace settings",
                     f"{h['refused_with_message']}/{h['settings_tried']} refused with a message, "
                     f"{h['listener_connections']} connections to the attacker's endpoint, answered by the local "
                     f"model: {_yes(h['answered_by_the_local_model'])}"])
        body.append(["planted discovery file", h.get("planted_discovery_file_error") or "accepted"])
    if b := d.get("burst"):
        body.append(["burst", f"{b['keystrokes']} keystrokes without waiting, {b['answered']} answered, drained in "
                              f"{b['drain_s']} s; the newest has a suggestion: {_yes(b['last_has_suggestion'])}; "
                              f"the next request {num(b['next_request_ms'], 1)} ms"])
    if s := d.get("soak"):
        docs = f"{s['documents']} document" + ("s" if s["documents"] != 1 else "")
        took = f"{num(s['seconds'] / 60, 1)} min" if s["seconds"] >= 120 else f"{num(s['seconds'], 1)} s"
        body.append(["soak", f"{num(s['keystrokes'])} keystrokes over {docs} in {took}, {s['errors']} errors"])
        body.append(["server RSS MB: start / after warm-up / half / end / max",
                     " / ".join(num(s[k], 1) for k in ("rss_mb_start", "rss_mb_after_warmup", "rss_mb_half",
                                                       "rss_mb_end", "rss_mb_max"))])
        body.append(["caches at the end", f"typed-through {s['typed_through_entries']} entries, KV {s['kv_entries']} "
                                          f"entries / {num(s['kv_bytes'] / 2**20, 1)} MiB"])
    body.append(["alive at the end", _yes(d.get("alive_at_end"))])
    return md(["", ""], body)


def _yes(v: Any) -> str:
    return "yes" if v else "no"


RENDERERS: dict[str, Callable[[Any, Table], list[str]]] = {
    "quality": render_quality, "quality_v1": render_quality_v1, "typing_replay": render_typing_replay,
    "typing_replay_v1": render_typing_replay_v1, "session": render_session, "runners": render_runners,
    "crossfile": render_crossfile, "quantization": render_quantization, "models": render_models,
    "gpu_keystrokes": render_gpu_keystrokes, "stress": render_stress,
}


# -- the README's headline figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One headline row: what, the results file, and our figure and the peer's read from it."""

    what: str
    file: str
    ours: Callable[[Any], str]
    peer: Callable[[Any], str] | None = None


def at(show: Callable[[Any], str], *keys: str) -> Callable[[Any], str]:
    """Reads `keys` down the results file's JSON and shows the value."""
    def read(d: Any) -> str:
        for k in keys:
            d = d[k]
        return show(d)
    return read


def pct(v: float) -> str:
    return f"{v:.1f} %"


def p50_p95(lat: dict[str, Any]) -> str:
    return f"{num(lat['p50'])} ms / {secs(lat['p95'])}"


def soak_rss(s: dict[str, Any]) -> str:
    return f"{num(s['rss_mb_start'])} → {num(s['rss_mb_end'])} MB, {s['errors']} errors"


def arrival(s: dict[str, Any]) -> str:
    a = s["arrival_ms"]
    return f"{secs(a['p50'])} p50, {s['arrival_in_read']}/{s['places']} within the 2 s read"


HEADLINE: list[Figure] = [
    Figure("HumanEval single-line pass@1, first answer, cursor after the auto-indent",
           "quality_single_defaults_60_quickabove.json", at(pct, "summary", "lsp@indent", "pass@1"),
           at(pct, "summary", "llama@indent", "pass@1")),
    Figure("the same, cursor at column 0", "quality_single_defaults_60_quickabove.json",
           at(pct, "summary", "lsp@col0", "pass@1"), at(pct, "summary", "llama@col0", "pass@1")),
    Figure("a person in a file (20 new places): arriving → first suggestion", "session_defaults.json",
           at(arrival, "systems", "ours", "summary"), at(arrival, "systems", "llama", "summary")),
    Figure("the same: characters saved", "session_defaults.json",
           at(rate, "systems", "ours", "summary", "chars_saved_rate"),
           at(rate, "systems", "llama", "summary", "chars_saved_rate")),
    Figure("HumanEval multi-line pass@1, first answer, after the auto-indent", "quality_multi_defaults_40_streams.json",
           at(pct, "summary", "lsp@indent", "pass@1"), at(pct, "summary", "llama@indent", "pass@1")),
    Figure("typing replay, 24 real lines: characters saved", "replay_read2000_24_pause.json",
           at(rate, "systems", "default", "summary", "chars_saved_rate"),
           at(rate, "systems", "llama", "summary", "chars_saved_rate")),
    Figure("typing replay: keystroke latency p50 / p95", "replay_read2000_24_pause.json",
           at(p50_p95, "systems", "default", "summary", "latency_ms"),
           at(p50_p95, "systems", "llama", "summary", "latency_ms")),
    Figure("typing replay: arriving at a line → first suggestion (median)", "replay_read2000_24_pause.json",
           at(secs, "systems", "default", "summary", "site_first_suggestion_ms"),
           at(secs, "systems", "llama", "summary", "site_first_suggestion_ms")),
    Figure("decode ms/token, 2 CPU threads", "runners_streams.json", at(lambda v: num(v, 1), "ours", "decode_ms"),
           at(lambda v: num(v, 1), "llama", "decode_ms")),
    Figure("prefill tokens/s, 2 CPU threads", "runners_streams.json", at(num, "ours", "prefill_tok_s"),
           at(num, "llama", "prefill_tok_s")),
    Figure("10 000-keystroke soak: server RSS", "stress_llamacpp_soak_10k.json", at(soak_rss, "soak")),
]


def render_headline(doc_dir: Path = ROOT) -> list[str]:
    """The headline table, its links relative to the document in `doc_dir`."""
    body = []
    for f in HEADLINE:
        d = load(f.file)
        path = path_of(f.file)
        git = ((d.get("machine") or {}).get("git") if isinstance(d, dict) else None)
        body.append([f.what, f.ours(d), f.peer(d) if f.peer else "–",
                     f"[{path.name}]({os.path.relpath(path, doc_dir)})" + (f", tree {git}" if git else "")])
    return md(["", "codestral-ls, default options", "llama.cpp, same GGUF", "results file"], body)


# -- regions -----------------------------------------------------------------------------------------------------


def render(name: str, doc_dir: Path = ROOT) -> str:
    """The text of region `name`, from its results file(s), for a document in `doc_dir`."""
    if name == "headline":
        return "\n".join(render_headline(doc_dir)) + "\n"
    t = TABLES[name]
    data = load(t.file)
    lines = RENDERERS[t.kind or kind_of(data)](data, t)
    return "\n".join([*lines, "", provenance(t.file, data)]) + "\n"


def regenerate(text: str, problems: list[str], where: str = "", doc_dir: Path = ROOT) -> str:
    """`text` with every region rewritten; what cannot be rendered goes to `problems`."""
    def sub(m: re.Match[str]) -> str:
        name = m["name"]
        if name != "headline" and name not in TABLES:
            problems.append(f"{where}: region {name!r} is not in benchmarks/report.py's TABLES")
            return m[0]
        try:
            body = render(name, doc_dir)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            problems.append(f"{where}: region {name!r}: {type(exc).__name__}: {exc}")
            return m[0]
        return m[1] + body + m[4]

    return REGION.sub(sub, text)


def run(check: bool, documents: tuple[Path, ...] = DOCUMENTS) -> list[str]:
    """Rewrite (or, with `check`, compare) every region of `documents`; the problems found."""
    problems: list[str] = []
    seen: set[str] = set()
    for doc in documents:
        text = doc.read_text(encoding="utf-8")
        rel = doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc
        seen |= {m["name"] for m in REGION.finditer(text)}
        new = regenerate(text, problems, str(rel), doc.parent)
        if new == text:
            continue
        if check:
            old = {m["name"]: m["body"] for m in REGION.finditer(text)}
            stale = [m["name"] for m in REGION.finditer(new) if old.get(m["name"]) != m["body"]]
            problems.append(f"{rel}: regions differ from the results files: {', '.join(stale)} "
                            "(python -m benchmarks.report)")
        else:
            doc.write_text(new, encoding="utf-8")
            print(f"rewrote {rel}", file=sys.stderr)
    unused = sorted(set(TABLES) - seen)
    if unused and documents == DOCUMENTS:
        problems.append(f"tables registered but shown nowhere: {', '.join(unused)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a region differs")
    p.add_argument("--list", action="store_true", help="the registered tables and their results files")
    args = p.parse_args(argv)
    if args.list:
        for name, t in TABLES.items():
            print(f"{name:40} {path_of(t.file).relative_to(ROOT)}")
        print(f"{'headline':40} " + ", ".join(sorted({f.file for f in HEADLINE})))
        return 0
    problems = run(args.check)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
