"""Typing replay: retype real lines key by key and measure what a user would feel.

Sites are whole lines of real source files (stdlib `textwrap.py`, `shlex.py`; a JavaScript file from
an npm package when one is on the machine), picked with a fixed stride among lines of moderate
length that are code (not comments, not docstrings). At a site the line is blanked to its
indentation (an editor's auto-indent on a new line) and the cursor put after it; then the line's
text is typed one key at a time.

The simulated typist types ~80 ms per character and pauses (default 400 ms) after a word boundary
(any character that is not a letter, digit or `_`). A suggestion is requested

  --every-key        after every key (and when the line is opened), or
  --debounce-ms 150  only when the typist pauses at least that long (editors debounce like this):
                     when the line is opened and after word boundaries, 150 ms after the key.

Time is real: the gaps between keys are slept (so a server's background prefetch gets the idle
time it would get), and each request is awaited before the next key unless the key is due later
(closed loop: no request is ever superseded). When a suggestion equals the rest of the line the
typist accepts it (Tab): the rest counts as characters saved and the site ends.

Systems, one after another on the same sites and schedule:

  default   the real server over stdio (tests/lsp_client.py), everything on.
  plain     the real server with `--no-kv-reuse --no-speculation --budget-ms 0`.
  llama     llama.cpp (llama-cpp-python) on the same GGUF, n_threads=2, n_ctx=2048, the same FIM
            prompt text in Qwen PSM format, greedy, its built-in prompt-prefix reuse, stop at \\n.
  hf        plain `transformers` `model.generate` per request: same prompt ids
            (`encoder.build(prefix, suffix, heal=False)`), greedy, same max_new_tokens, stop at \\n.

Both servers run with `--multiline never` so every system answers the current line only (the
peers stop at a newline); the peers get the same context windows (prefix 512 / suffix 128 tokens,
cut by `server.context.build_context`). Peers run in their own process so that each one's peak RSS
(VmHWM) is its own; the servers' peak RSS is read from /proc/<server pid>/status.

    python -m benchmarks.typing_replay --debounce-ms 150 --out benchmarks/results/replay_debounce.json
    python -m benchmarks.typing_replay --every-key --systems default,llama --out benchmarks/results/replay_everykey.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import io
import os
import sysconfig
import time
import tokenize
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    ROOT,
    add_device_args,
    fmt,
    latency_summary,
    load_average,
    machine,
    peak_rss_mib,
    pyplot,
    refuse_if_unusable,
    save_figure,
    table,
    write_json,
)

SYSTEMS = ("default", "plain", "llama", "hf")
SERVER_ARGS = {"default": [], "plain": ["--no-kv-reuse", "--no-speculation", "--budget-ms", "0"]}
PY_FILES = ("textwrap.py", "shlex.py")
# Hand-written JavaScript shipped with npm itself (present wherever node/npm is installed).
JS_CANDIDATES = ("npm/node_modules/semver/classes/comparator.js", "npm/node_modules/ini/lib/ini.js")
JS_ROOTS = ("/usr/lib/node_modules", "/usr/local/lib/node_modules", "/opt/homebrew/lib/node_modules")
LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript"}


# -- sites ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    file: str
    language: str
    line: int  # 0-based
    indent: str
    target: str  # the line's text after the indentation (trailing spaces dropped)
    text: str  # the document with the line blanked to its indentation


def default_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in PY_FILES if (stdlib / name).is_file()]
    js = find_js_file()
    if js is not None:
        files.append(js)
    return files


def find_js_file() -> Path | None:
    for root in JS_ROOTS:
        for rel in JS_CANDIDATES:
            p = Path(root) / rel
            if p.is_file():
                return p
    return None


def _python_noncode_lines(text: str) -> set[int]:
    """0-based lines inside multi-line strings (docstrings) or holding only a comment."""
    out: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and tok.end[0] > tok.start[0]:
                out.update(range(tok.start[0] - 1, tok.end[0]))
    except (tokenize.TokenError, SyntaxError):
        pass
    return out


def candidate_lines(text: str, language: str, min_chars: int, max_chars: int) -> list[int]:
    lines = text.split("\n")
    skip = _python_noncode_lines(text) if language == "python" else set()
    comment = ("#",) if language == "python" else ("//", "/*", "*")
    out = []
    for i, line in enumerate(lines):
        content = line.strip()
        if i < 5 or i in skip or not (min_chars <= len(content) <= max_chars):
            continue
        if content.startswith(comment) or content.startswith(('"', "'", "`")):
            continue
        if sum(c.isalpha() for c in content) < 3:
            continue
        out.append(i)
    return out


def pick_sites(path: Path, n: int, min_chars: int = 16, max_chars: int = 48) -> list[Site]:
    """`n` sites spread with a fixed stride over the file's candidate lines (centred in each stride)."""
    text = path.read_text(encoding="utf-8")
    language = LANGUAGES.get(path.suffix, "plaintext")
    cands = candidate_lines(text, language, min_chars, max_chars)
    if not cands or n <= 0:
        return []
    n = min(n, len(cands))
    chosen = [cands[(2 * k + 1) * len(cands) // (2 * n)] for k in range(n)]
    lines = text.split("\n")
    sites = []
    for i in chosen:
        line = lines[i].rstrip()
        indent = line[: len(line) - len(line.lstrip())]
        blanked = "\n".join([*lines[:i], indent, *lines[i + 1:]])
        sites.append(Site(str(path), language, i, indent, line.strip(), blanked))
    return sites


# -- the typist -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Typist:
    every_key: bool
    debounce_ms: float
    char_ms: float = 80.0
    pause_ms: float = 400.0

    def gap_after(self, ch: str) -> float:
        """Milliseconds between this key and the next."""
        return self.char_ms if (ch.isalnum() or ch == "_") else self.pause_ms

    def requests_at(self, gap_before: float) -> bool:
        return self.every_key or gap_before > self.debounce_ms

    @property
    def mode(self) -> str:
        return "every-key" if self.every_key else f"debounce-{self.debounce_ms:g}ms"


class System:
    """What the replay drives: a document, key inserts, suggestion requests."""

    name = ""

    async def open(self, uri: str, text: str, language: str) -> None:
        raise NotImplementedError

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        raise NotImplementedError

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        raise NotImplementedError


async def replay_site(system: System, site: Site, typist: Typist, index: int) -> dict[str, Any]:
    uri = f"file:///replay/{index}/{Path(site.file).name}"
    await system.open(uri, site.text, site.language)
    loop = asyncio.get_running_loop()
    col0 = len(site.indent)
    target = site.target
    requests: list[dict[str, Any]] = []
    saved = 0
    key_time = loop.time()
    gap = typist.pause_ms  # the line was just opened: a natural pause
    pos = 0
    while pos < len(target):
        if typist.requests_at(gap):
            if not typist.every_key:
                await asyncio.sleep(max(0.0, key_time + typist.debounce_ms / 1000 - loop.time()))
            t0 = time.perf_counter()
            suggestion, info = await system.suggest(uri, site.line, col0 + pos)
            latency = (time.perf_counter() - t0) * 1000
            rest = target[pos:]
            exact = bool(suggestion) and suggestion.rstrip() == rest.rstrip()
            requests.append({"pos": pos, "latency_ms": round(latency, 1), "suggestion": suggestion, "exact": exact,
                             "prefix_ok": bool(suggestion) and rest.startswith(suggestion.rstrip()),
                             "in_time": latency <= max(gap - (0 if typist.every_key else typist.debounce_ms), 0),
                             "load1": load_average(), **info})
            if exact:
                await system.insert(uri, site.line, col0 + pos, rest)
                saved = len(rest)
                break
        await asyncio.sleep(max(0.0, key_time + gap / 1000 - loop.time()))
        await system.insert(uri, site.line, col0 + pos, target[pos])
        key_time = loop.time()
        gap = typist.gap_after(target[pos])
        pos += 1
    return {"file": Path(site.file).name, "line": site.line + 1, "target": target, "chars": len(target),
            "saved": saved, "accepted": saved > 0, "requests": requests}


WARMUP_TEXT = "def add(a, b):\n    \n\n\nprint(add(1, 2))\n"


async def warm_up(system: System) -> None:
    """One throwaway request on another document: the first forward pass is slow (allocations)."""
    uri = "file:///replay/warmup.py"
    await system.open(uri, WARMUP_TEXT, "python")
    await system.suggest(uri, 1, 4)


async def replay_all(system: System, sites: list[Site], typist: Typist,
                     progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    out = []
    for k, site in enumerate(sites):
        r = await replay_site(system, site, typist, k)
        lat = [q["latency_ms"] for q in r["requests"]]
        progress(f"  [{system.name}] {r['file']}:{r['line']} {len(r['requests'])} requests, "
                 f"p50 {fmt(latency_summary(lat)['p50'])} ms, saved {r['saved']}/{r['chars']} chars")
        out.append(r)
    return out


# -- the server over stdio -----------------------------------------------------------------------------


def _lsp_client() -> Any:
    spec = importlib.util.spec_from_file_location("codestral_bench_lsp_client", ROOT / "tests" / "lsp_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAT_KEYS = ("requests", "typed_through_hits", "engine_calls", "prompt_tokens", "reused_tokens",
             "replayed_tokens", "decoded_tokens", "empty", "cancelled", "errors")


def _plain(obj: Any) -> Any:
    """A JSON result as plain dicts (pygls may hand back attribute objects for unknown methods)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if hasattr(obj, "_asdict"):  # namedtuple
        return {k: _plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {k: _plain(v) for k, v in vars(obj).items()}
    return obj


class ServerSystem(System):
    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.args = args
        self.lsp = _lsp_client()
        self.client: Any = None
        self.versions: dict[str, int] = {}
        self.last: dict[str, Any] = {}
        self.load_s = 0.0

    async def start(self) -> None:
        t0 = time.perf_counter()
        self.client, _ = await self.lsp.start(self.args)
        while True:  # the model loads after `initialized`; wait so the first request is not the load
            snap = await self.stats()
            model = snap.get("model") or {}
            if "error" in model:
                raise RuntimeError(f"{self.name} server: model did not load: {model['error']}")
            if model:
                break
            await asyncio.sleep(0.5)
        self.load_s = time.perf_counter() - t0
        await warm_up(self)
        self.last = await self.stats()

    async def stats(self) -> dict[str, Any]:
        return _plain(await self.client.protocol.send_request_async("codestral/stats", {}))

    async def open(self, uri: str, text: str, language: str) -> None:
        self.versions[uri] = 1
        self.lsp.open_doc(self.client, uri, text, language)

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        self.versions[uri] += 1
        self.lsp.insert(self.client, uri, self.versions[uri], line, col, text)

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        try:
            result = await self.lsp.inline(self.client, uri, line, col)
        except Exception as exc:  # an error answer is a result too: no suggestion, counted
            self.last = await self.stats()
            return None, {"source": "error", "error": str(exc)[:200]}
        items = (result if isinstance(result, list) else result.items) if result is not None else []
        text = items[0].insert_text if items else None
        text = text if isinstance(text, str) else getattr(text, "value", None)
        snap = await self.stats()
        delta = {k: (snap.get(k) or 0) - (self.last.get(k) or 0) for k in STAT_KEYS}
        self.last = snap
        source = ("typed-through" if delta["typed_through_hits"] else "engine" if delta["engine_calls"]
                  else "cancelled" if delta["cancelled"] else "none")
        info = {k: delta[k] for k in ("prompt_tokens", "reused_tokens", "replayed_tokens", "decoded_tokens")}
        return text, {"source": source, **info}

    def pid(self) -> int | None:
        server = getattr(self.client, "_server", None)
        return getattr(server, "pid", None)

    async def stop(self) -> None:
        if self.client is not None:
            await self.lsp.stop(self.client)


async def run_server(name: str, sites: list[Site], typist: Typist, extra: list[str]) -> dict[str, Any]:
    system = ServerSystem(name, ["--log-level", "warning", "--multiline", "never", *SERVER_ARGS[name], *extra])
    t0 = time.perf_counter()
    await system.start()
    print(f"{name}: server up, model loaded in {system.load_s:.1f} s", flush=True)
    try:
        records = await replay_all(system, sites, typist)
        stats = await system.stats()
        rss = peak_rss_mib(system.pid())
    finally:
        await system.stop()
    return {"system": name, "args": system.args, "load_s": round(system.load_s, 1), "peak_rss_mib": rss,
            "server_stats": stats, "sites": records, "wall_s": round(time.perf_counter() - t0, 1)}


# -- peers (each in its own process) ------------------------------------------------------------------


class PeerSystem(System):
    """A document kept here and a `complete(prefix, suffix) -> str` per request."""

    def __init__(self, name: str, complete: Callable[[str, str], str], count_tokens: Callable[[str], int],
                 prefix_tokens: int = 512, suffix_tokens: int = 128) -> None:
        self.name = name
        self.complete = complete
        self.count_tokens = count_tokens
        self.prefix_tokens = prefix_tokens
        self.suffix_tokens = suffix_tokens
        self.docs: dict[str, tuple[str, str]] = {}

    async def open(self, uri: str, text: str, language: str) -> None:
        self.docs[uri] = (text, language)

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        doc, language = self.docs[uri]
        off = _offset(doc, line, col)
        self.docs[uri] = (doc[:off] + text + doc[off:], language)

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        from codestral_ls.server.context import build_context
        from codestral_ls.server.cursor import read_cursor

        doc, language = self.docs[uri]
        off = _offset(doc, line, col)
        ctx = build_context(read_cursor(doc, off, language, "never"), self.count_tokens, self.prefix_tokens,
                            self.suffix_tokens)
        text = self.complete(ctx.prefix, ctx.suffix).split("\n", 1)[0].rstrip()
        return (text or None), {"source": "engine"}


def _offset(text: str, line: int, col: int) -> int:
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    return start + col


def _llama_peer(device: str, max_tokens: int) -> PeerSystem:
    from codestral_ls.engine.embedded import gguf_path
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path()), n_threads=2, n_ctx=2048, n_gpu_layers=-1 if device == "cuda" else 0,
                verbose=False, seed=0)

    def complete(prefix: str, suffix: str) -> str:
        prompt = f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                    repeat_penalty=1.0, stop=["\n"])
        return out["choices"][0]["text"]

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    return PeerSystem("llama", complete, count)


def _hf_peer(device: str, dtype: str, quantize: str, max_tokens: int) -> PeerSystem:
    import torch
    from codestral_ls.engine.loading import ModelSpec, load_model
    from transformers import StoppingCriteria, StoppingCriteriaList

    lm = load_model(ModelSpec(device=device, dtype=dtype, quantize=quantize))
    model, encoder = lm.model, lm.encoder
    vocab = lm.tokenizer.get_vocab()
    newline_ids = {i for tok, i in vocab.items() if "\n" in lm.tokenizer.convert_tokens_to_string([tok])}

    class NewlineStop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.BoolTensor:
            return torch.tensor([int(input_ids[0, -1]) in newline_ids], device=input_ids.device)  # type: ignore[return-value]

    def complete(prefix: str, suffix: str) -> str:
        prompt = encoder.build(prefix, suffix, heal=False)
        ids = torch.tensor([prompt.ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                                 eos_token_id=sorted(prompt.stop_ids), pad_token_id=min(prompt.stop_ids),
                                 stopping_criteria=StoppingCriteriaList([NewlineStop()]))
        new = [int(t) for t in out[0, len(prompt.ids):] if int(t) not in prompt.stop_ids]
        return encoder.decode(new)

    return PeerSystem("hf", complete, lambda text: len(encoder.encode_text(text)))


def peer_main(name: str, sites: list[Site], typist: Typist, device: str, dtype: str, quantize: str,
              max_tokens: int) -> dict[str, Any]:
    """Runs in a child process: load the peer, replay every site, report its own peak RSS."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    system = _llama_peer(device, max_tokens) if name == "llama" else _hf_peer(device, dtype, quantize, max_tokens)
    load_s = time.perf_counter() - t0
    print(f"{name}: loaded in {load_s:.1f} s", flush=True)

    async def go() -> list[dict[str, Any]]:
        await warm_up(system)
        return await replay_all(system, sites, typist, progress=lambda s: print(s, flush=True))

    records = asyncio.run(go())
    return {"system": name, "load_s": round(load_s, 1), "peak_rss_mib": peak_rss_mib(), "sites": records,
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_peer(name: str, sites: list[Site], typist: Typist, args: argparse.Namespace) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        fut = pool.submit(peer_main, name, sites, typist, args.device, args.dtype, args.quantize, args.max_tokens)
        return fut.result()


def llama_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


# -- summary ---------------------------------------------------------------------------------------------


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    reqs = [q for s in run["sites"] for q in s["requests"]]
    lat = [q["latency_ms"] for q in reqs]
    engine_lat = [q["latency_ms"] for q in reqs if q.get("source") == "engine"]
    loads = [q["load1"] for q in reqs if q.get("load1") is not None]
    chars = sum(s["chars"] for s in run["sites"])
    saved = sum(s["saved"] for s in run["sites"])
    out: dict[str, Any] = {
        "requests": len(reqs),
        "latency_ms": latency_summary(lat),
        "engine_latency_ms": latency_summary(engine_lat),
        "exact_line_rate": round(sum(q["exact"] for q in reqs) / len(reqs), 3) if reqs else None,
        "useful_rate": round(sum(q["prefix_ok"] for q in reqs) / len(reqs), 3) if reqs else None,
        "in_time_rate": round(sum(q["in_time"] for q in reqs) / len(reqs), 3) if reqs else None,
        "load1_mean": round(sum(loads) / len(loads), 2) if loads else None,
        "chars": chars,
        "chars_saved": saved,
        "chars_saved_rate": round(saved / chars, 3) if chars else None,
        "lines_accepted": sum(s["accepted"] for s in run["sites"]),
        "sites": len(run["sites"]),
        "peak_rss_mib": run.get("peak_rss_mib"),
        "load_s": run.get("load_s"),
        "wall_s": run.get("wall_s"),
    }
    if run.get("server_stats") and reqs:  # per-request deltas of codestral/stats (warm-up excluded)
        prompt = sum(q.get("prompt_tokens", 0) for q in reqs)
        out["typed_through_hit_rate"] = round(sum(q.get("source") == "typed-through" for q in reqs) / len(reqs), 3)
        out["kv_reuse_ratio"] = round(sum(q.get("reused_tokens", 0) for q in reqs) / prompt, 3) if prompt else None
        out["replayed_tokens"] = sum(q.get("replayed_tokens", 0) for q in reqs)
        out["decoded_tokens"] = sum(q.get("decoded_tokens", 0) for q in reqs)
    return out


def report(result: dict[str, Any]) -> str:
    runs = result["systems"]
    base = runs.get("default", {}).get("summary")
    rows = []
    for name, run in runs.items():
        s = run["summary"]
        lat = s["latency_ms"]

        def ratio(key: str, group: str = "latency_ms", s: dict[str, Any] = s) -> str:
            mine, theirs = s[group].get(key), base[group].get(key) if base else None
            if not theirs or mine is None:
                return "-"
            r = mine / theirs
            return f"{r:.0f}x" if r >= 10 else f"{r:.2g}x"

        rows.append([name, str(s["requests"]), fmt(lat["p50"]), fmt(lat["p95"]), fmt(lat["mean"]),
                     fmt(s["engine_latency_ms"]["p50"]),
                     f"{ratio('p50')} / {ratio('p50', 'engine_latency_ms')} / {ratio('mean')}",
                     fmt(100 * s["typed_through_hit_rate"], 0) + "%" if s.get("typed_through_hit_rate") is not None
                     else "-",
                     fmt(100 * s["kv_reuse_ratio"], 0) + "%" if s.get("kv_reuse_ratio") is not None else "-",
                     fmt(100 * (s["exact_line_rate"] or 0), 0) + "%",
                     f"{s['chars_saved']}/{s['chars']} ({fmt(100 * (s['chars_saved_rate'] or 0), 0)}%)",
                     fmt(s["peak_rss_mib"]), fmt(s.get("load1_mean"), 1)])
    header = ["system", "reqs", "p50 ms", "p95 ms", "mean ms", "engine p50", "x default: p50/engine p50/mean",
              "typed-thru", "kv reuse", "exact line", "chars saved", "peak RSS MiB", "load"]
    files = ", ".join(sorted({s["file"] for r in runs.values() for s in r["sites"]}))
    return "\n".join([f"typing replay, {result['typist']['mode']}, {result['n_sites']} sites ({files}), "
                      f"device {result['device']}", table(rows, header)])


def plot(result: dict[str, Any], stem: Path) -> list[Path]:
    plt = pyplot()
    if plt is None:
        return []
    out = []
    runs = result["systems"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in runs.items():
        lat = sorted(q["latency_ms"] for s in run["sites"] for q in s["requests"])
        if lat:
            ax.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post", label=f"{name} (n={len(lat)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency per request (ms, log)")
    ax.set_ylabel("fraction of requests")
    out.append(_save(plt, fig, ax, f"Latency CDF - typing replay, {result['typist']['mode']}, {result['device']}",
                     stem.with_name(stem.name + "_cdf.png")))

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, run in runs.items():
        xs: list[float] = []
        ys: list[float] = []
        x = 0
        for s in run["sites"]:
            for q in s["requests"]:
                xs.append(x + q["pos"])
                ys.append(q["latency_ms"])
            xs.append(float("nan"))  # no line across sites
            ys.append(float("nan"))
            x += s["chars"] + 3  # a gap between sites
        ax.plot(xs, ys, marker=".", linewidth=0.8, label=name)
    x = 0
    for s in next(iter(runs.values()))["sites"]:
        ax.axvline(x - 1.5, color="gray", alpha=0.3, linewidth=0.8)
        x += s["chars"] + 3
    ax.set_yscale("log")
    ax.set_xlabel("keystroke (sites one after another)")
    ax.set_ylabel("latency (ms, log)")
    out.append(_save(plt, fig, ax, f"Per-keystroke latency - {result['typist']['mode']}, {result['device']}",
                     stem.with_name(stem.name + "_timeline.png")))
    return out


def _save(plt: Any, fig: Any, ax: Any, title: str, png: Path) -> Path:
    """Title, grid and legend shared by both plots, then write the PNG."""
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(plt, fig, png)


# -- main -----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.typing_replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", type=Path,
                   help="source files to replay (default: stdlib textwrap.py, shlex.py, and an npm JS file if any)")
    p.add_argument("--sites", type=int, default=2, help="sites per file (default 2)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--every-key", action="store_true", help="request after every key")
    mode.add_argument("--debounce-ms", type=float, default=150.0,
                      help="request only after the typist pauses this long (default 150)")
    p.add_argument("--char-ms", type=float, default=80.0, help="typing speed, ms per character (default 80)")
    p.add_argument("--pause-ms", type=float, default=400.0, help="pause after a word boundary (default 400)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, in order (default {','.join(SYSTEMS)}); llama is skipped if "
                        "llama_cpp is not installed")
    p.add_argument("--max-tokens", type=int, default=64, help="max decoded tokens, all systems (default 64)")
    p.add_argument("--min-chars", type=int, default=16, help="shortest line picked as a site (default 16)")
    p.add_argument("--max-chars", type=int, default=48, help="longest line picked as a site (default 48)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/replay_<mode>.json)")
    p.add_argument("--no-plot", action="store_true")
    add_device_args(p)
    return p


def device_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--quantize", args.quantize, "--max-tokens", str(args.max_tokens)]
    if args.dtype != "auto":
        flags += ["--dtype", args.dtype]
    return flags


async def run(args: argparse.Namespace, sites: list[Site], typist: Typist, systems: list[str],
              save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for name in systems:
        print(f"== {name} ({typist.mode}, {len(sites)} sites)", flush=True)
        if name in SERVER_ARGS:
            run_ = await run_server(name, sites, typist, device_flags(args))
        else:
            run_ = await asyncio.get_running_loop().run_in_executor(None, run_peer, name, sites, typist, args)
        run_["summary"] = summarize(run_)
        runs[name] = run_
        save(runs)  # after each system: a long run stopped half-way keeps what it measured
    return runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_if_unusable(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"benchmark: error: unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    skipped = []
    if "llama" in systems and not llama_available():
        systems.remove("llama")
        skipped.append("llama (llama_cpp not importable: pip install 'codestral-ls[bench]')")
        print(f"skipping {skipped[-1]}")
    files = args.files or default_files()
    sites = [s for f in files for s in pick_sites(Path(f), args.sites, args.min_chars, args.max_chars)]
    if not sites:
        raise SystemExit("benchmark: error: no sites found in the given files")
    typist = Typist(args.every_key, 0.0 if args.every_key else args.debounce_ms, args.char_ms, args.pause_ms)
    mode = "everykey" if args.every_key else f"debounce{args.debounce_ms:g}"
    out = args.out or RESULTS_DIR / f"replay_{mode}.json"
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "typing_replay", "typist": {**asdict(typist), "mode": typist.mode},
        "device": args.device, "dtype": args.dtype, "quantize": args.quantize, "max_tokens": args.max_tokens,
        "files": [str(f) for f in files], "n_sites": len(sites),
        "sites": [{"file": s.file, "line": s.line + 1, "target": s.target} for s in sites],
        "skipped": skipped, "machine": machine()}

    def save(runs: dict[str, Any], complete: bool = False) -> None:
        write_json(out, {**result, "complete": complete, "wall_s": round(time.perf_counter() - t0, 1),
                         "systems": runs})

    runs = asyncio.run(run(args, sites, typist, systems, save))
    save(runs, complete=True)
    result.update(wall_s=round(time.perf_counter() - t0, 1), systems=runs)
    print()
    print(report(result))
    print(f"results: {out}")
    if not args.no_plot:
        for png in plot(result, out.with_suffix("")):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
