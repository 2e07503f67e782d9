"""Typing replay: arrive at a line, read, retype it key by key, and measure what a user would feel.

Sites are whole lines of real source files (stdlib `textwrap.py`, `shlex.py`; a JavaScript file from
an npm package when one is on the machine), picked with a fixed stride among lines of moderate
length that are code (not comments, not docstrings). At a site the line is blanked to its
indentation (an editor's auto-indent on a new line) and the cursor put after it.

The simulated user **arrives** at the site: the editor asks for a suggestion there (and our own
clients send `codestral/didFocus` with the cursor), then the user **reads** for `--read-ms` (default
2000 ms) before the first key (`--read-ms 0`: back to back, the old mode: only the 400 ms pause of a
word boundary). Then the line is typed one key at a time, ~80 ms per character and a pause (default
400 ms) after a word boundary (any character that is not a letter, digit or `_`). A suggestion is
requested

  --every-key        at arrival and after every key, or
  --debounce-ms 150  only when the typist pauses at least that long (editors debounce like this):
                     at arrival and after word boundaries, 150 ms after the key.

Time is real: the gaps are slept (a server's background work gets the idle time it would get), and
each request is awaited before the next key unless the key is due later (closed loop: no request is
ever superseded). A client that opted in (client capability
`experimental.codestral.suggestionUpdates`) asks again whenever the server sends
`codestral/suggestionUpdated` for the document, as our editor clients do. When the first line of a
suggestion equals the rest of the line the typist accepts it: the rest counts as characters saved
and the site ends.

The other replayed files are open as whole files (editor tabs) while a site is typed, never the
file being typed in, and each site's document is closed when the site ends: retrieval has real
neighbours to rank and no copy of the blanked line to find.

Systems, one after another on the same sites and schedule:

  default   headline: the real server over stdio with **default options** (no flags), driven like our
            editor clients (suggestion updates opted in, didFocus sent).
  generic   the same server and options, a generic LSP client (no opt-in, no didFocus).
  plain     ablation: the server with `--no-kv-reuse --no-speculation --budget-ms 0`, our client.
  torch     ablation: the server with `--runner torch` (the transformers runner instead of llama.cpp's
            on a GGUF on CPU), our client: the same replay per runner.
  noretrieval  ablation: `--retrieval none`, our client: what retrieval costs per keystroke (the other
            sites' documents stay open, so the default server has other files to rank).
  llama     llama.cpp (llama-cpp-python) on the same GGUF, n_threads=2, n_ctx=2048, the FIM prompt text
            in Qwen PSM format, greedy, its built-in prompt-prefix reuse, stop at \n (what llama.vim shows).
  hf        plain `transformers` `model.generate` per request: same prompt ids
            (`encoder.build(prefix, suffix, heal=False)`), greedy, same max_new_tokens, stop at \n.

The peers get fixed context windows (prefix 512 / suffix 128 tokens, cut by
`server.context.build_context`) and run in their own process so that each one's peak RSS (VmHWM) is
its own; the servers' peak RSS is read from /proc/<server pid>/status.

Per system: keystroke latency p50/p95, characters saved, and the time from arriving at a site to the
first suggestion on screen (median over sites; a site that never showed one counts as never), with
whether that suggestion was the rest of the real line.

    python -m benchmarks.typing_replay --out benchmarks/results/replay_read2000.json
    python -m benchmarks.typing_replay --read-ms 0 --out benchmarks/results/replay_backtoback.json
"""

from __future__ import annotations

import argparse
import asyncio
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

from codestral_ls.engine.models.counting import PieceCounter, TokenCounter, counter_for

from benchmarks.device_args import DEFAULT_MAX_TOKENS, add_device_args, refuse_if_unusable, server_flags
from benchmarks.llama_peer import (
    llama_gguf,
    llama_problem,
    llama_threads_wait_passively,
    qwen_fim_prompt,
    runnable_systems,
)
from benchmarks.lsp_driver import LspServer, peak_rss_mib, plain
from benchmarks.measure import (
    RESULTS_DIR,
    fmt,
    latency_summary,
    load_average,
    machine,
    pyplot,
    save_figure,
    table,
    write_json,
)

SYSTEMS = ("default", "generic", "plain", "torch", "noretrieval", "llama", "hf")
SERVER_ARGS = {"default": [], "generic": [], "plain": ["--no-kv-reuse", "--no-speculation", "--budget-ms", "0"],
               "torch": ["--runner", "torch"], "noretrieval": ["--retrieval", "none"]}
LABELS = {
    "default": "headline: server defaults, our client (updates, didFocus)",
    "generic": "server defaults, generic LSP client",
    "plain": "ablation: --no-kv-reuse --no-speculation --budget-ms 0",
    "torch": "ablation: --runner torch (transformers fp32), our client",
    "noretrieval": "ablation: --retrieval none (no context from other files), our client",
    "llama": "peer: llama.cpp, same GGUF, first line",
    "hf": "peer: transformers generate, first line",
}
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
    read_ms: float = 2000.0  # at a new site, before the first key (0: back to back, `pause_ms` as after a word)

    def gap_after(self, ch: str) -> float:
        """Milliseconds between this key and the next."""
        return self.char_ms if (ch.isalnum() or ch == "_") else self.pause_ms

    def requests_at(self, gap_before: float) -> bool:
        return self.every_key or gap_before > self.debounce_ms

    @property
    def first_gap(self) -> float:
        """Milliseconds from arriving at a site to the first key."""
        return self.read_ms if self.read_ms > 0 else self.pause_ms

    @property
    def mode(self) -> str:
        asks = "every-key" if self.every_key else f"debounce-{self.debounce_ms:g}ms"
        return f"read-{self.read_ms:g}ms, {asks}" if self.read_ms > 0 else f"back-to-back, {asks}"


class System:
    """What the replay drives: a document, key inserts, suggestion requests."""

    name = ""

    async def open(self, uri: str, text: str, language: str) -> None:
        raise NotImplementedError

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        raise NotImplementedError

    async def close(self, uri: str) -> None:
        raise NotImplementedError

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        raise NotImplementedError

    async def focus(self, uri: str, line: int, col: int) -> None:
        """The cursor landed at a new site (only our own clients tell the server)."""

    async def idle(self, until: float, uri: str) -> bool:
        """Wait until loop time `until`; True when it ended early because the suggestion at `uri` grew."""
        await asyncio.sleep(max(0.0, until - asyncio.get_running_loop().time()))
        return False


def first_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0].rstrip()


async def replay_site(system: System, site: Site, typist: Typist, index: int) -> dict[str, Any]:
    """Arrive at the site (the editor asks there), read, then type the line key by key.

    A suggestion whose first line is the rest of the real line is accepted (Tab, or accept-line for a
    block): the rest counts as characters saved and the site ends.
    """
    uri = f"file:///replay/{index}/{Path(site.file).name}"
    await system.open(uri, site.text, site.language)
    loop = asyncio.get_running_loop()
    col0 = len(site.indent)
    target = site.target
    requests: list[dict[str, Any]] = []
    saved = 0
    arrived = loop.time()
    await system.focus(uri, site.line, col0)
    key_time = arrived
    gap = typist.first_gap
    pos = 0
    first: dict[str, Any] | None = None  # the first non-empty suggestion at the site
    correct_ms: float | None = None  # arrival → a suggestion that is the rest of the line

    async def ask(trigger: str) -> bool:
        """One request at the cursor; True when the typist accepts it."""
        nonlocal first, correct_ms, saved
        t0 = time.perf_counter()
        suggestion, info = await system.suggest(uri, site.line, col0 + pos)
        latency = (time.perf_counter() - t0) * 1000
        since = (loop.time() - arrived) * 1000
        rest = target[pos:]
        line = first_line(suggestion)
        exact = bool(line) and line == rest.rstrip()
        requests.append({"pos": pos, "trigger": trigger, "latency_ms": round(latency, 1), "since_arrival_ms":
                         round(since, 1), "suggestion": suggestion, "exact": exact,
                         "multi_line": "\n" in (suggestion or "").rstrip("\n"),
                         "prefix_ok": bool(line) and rest.startswith(line),
                         "in_time": latency <= max(gap - (0 if typist.every_key else typist.debounce_ms), 0),
                         "load1": load_average(), **info})
        if line and first is None:
            first = {"ms": round(since, 1), "pos": pos, "exact": exact, "text": suggestion}
        if exact and correct_ms is None:
            correct_ms = round(since, 1)
        if exact:
            await system.insert(uri, site.line, col0 + pos, rest)
            saved = len(rest)
        return exact

    while pos < len(target):
        if typist.requests_at(gap):
            if not typist.every_key:
                await asyncio.sleep(max(0.0, key_time + typist.debounce_ms / 1000 - loop.time()))
            if await ask("arrival" if pos == 0 else "key"):
                break
        # Until the next key: our clients ask again whenever the server says the suggestion grew.
        accepted = False
        while await system.idle(key_time + gap / 1000, uri):
            if accepted := await ask("update"):
                break
        if accepted:
            break
        await system.insert(uri, site.line, col0 + pos, target[pos])
        key_time = loop.time()
        gap = typist.gap_after(target[pos])
        pos += 1
    await system.close(uri)  # the site's copy of the file is done with (it would be a neighbour that leaks)
    return {"file": Path(site.file).name, "line": site.line + 1, "target": target, "chars": len(target),
            "saved": saved, "accepted": saved > 0, "first_suggestion": first, "correct_ms": correct_ms,
            "requests": requests}


WARMUP_TEXT = "def add(a, b):\n    \n\n\nprint(add(1, 2))\n"


async def warm_up(system: System) -> None:
    """One throwaway request on another document: the first forward pass is slow (allocations)."""
    uri = "file:///replay/warmup.py"
    await system.open(uri, WARMUP_TEXT, "python")
    await system.suggest(uri, 1, 4)


def open_neighbours(system: System, sites: list[Site]) -> Callable[[Site], Any]:
    """The other replayed files, whole, as open editor tabs: what retrieval may rank. The file being
    typed in is never among them (its whole text holds the blanked line), so `neighbours(site)` opens
    every other file and closes the one the site is in."""
    files = {s.file: s.language for s in sites}
    opened: set[str] = set()

    def uri_of(path: str) -> str:
        return f"file:///replay/open/{Path(path).name}"

    async def neighbours(site: Site) -> None:
        for path, language in files.items():
            if path == site.file and path in opened:
                await system.close(uri_of(path))
                opened.discard(path)
            elif path != site.file and path not in opened:
                await system.open(uri_of(path), Path(path).read_text(encoding="utf-8"), language)
                opened.add(path)

    return neighbours


async def replay_all(system: System, sites: list[Site], typist: Typist,
                     progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    neighbours = open_neighbours(system, sites)
    out = []
    for k, site in enumerate(sites):
        await neighbours(site)
        r = await replay_site(system, site, typist, k)
        lat = [q["latency_ms"] for q in r["requests"]]
        f = r["first_suggestion"]
        seen = "none" if f is None else f"{f['ms']:.0f} ms ({'right' if f['exact'] else 'wrong'})"
        progress(f"  [{system.name}] {r['file']}:{r['line']} {len(r['requests'])} requests, "
                 f"p50 {fmt(latency_summary(lat)['p50'])} ms, first suggestion {seen}, "
                 f"saved {r['saved']}/{r['chars']} chars")
        out.append(r)
    return out


# -- the server over stdio -----------------------------------------------------------------------------


STAT_KEYS = ("requests", "typed_through_hits", "engine_calls", "prompt_tokens", "reused_tokens",
             "replayed_tokens", "decoded_tokens", "empty", "cancelled", "errors", "warm_prompts")


class ServerSystem(System):
    """The real server over stdio. `ours`: the client opts in to suggestion updates and sends didFocus,
    as our editor clients do; otherwise a generic LSP client."""

    def __init__(self, name: str, flags: list[str], ours: bool) -> None:
        self.name = name
        self.server = LspServer(flags, suggestion_updates=ours)
        self.ours = ours
        self.last: dict[str, Any] = {}
        self.load_s = 0.0

    @property
    def args(self) -> list[str]:
        return self.server.flags

    async def start(self) -> None:
        self.load_s = await self.server.start()
        await warm_up(self)
        self.last = await self.stats()

    async def stats(self) -> dict[str, Any]:
        return await self.server.stats()

    async def open(self, uri: str, text: str, language: str) -> None:
        self.server.open(uri, text, language)

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        self.server.insert(uri, line, col, text)

    async def close(self, uri: str) -> None:
        self.server.close(uri)

    async def focus(self, uri: str, line: int, col: int) -> None:
        if self.ours:
            self.server.focus(uri, line, col)

    async def idle(self, until: float, uri: str) -> bool:
        if not self.ours:
            return await super().idle(until, uri)
        loop = asyncio.get_running_loop()
        while (left := until - loop.time()) > 0:
            try:
                await asyncio.wait_for(self.server.updated.wait(), left)
            except TimeoutError:
                return False
            self.server.updated.clear()
            if any(_update_uri(u) in (uri, None) for u in self.server.updates[-8:]):
                return True
        return False

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        try:
            item = await self.server.inline(uri, line, col)
        except Exception as exc:  # an error answer is a result too: no suggestion, counted
            self.last = await self.stats()
            return None, {"source": "error", "error": str(exc)[:200]}
        text = item["text"] if item is not None else None
        snap = await self.stats()
        delta = {k: (snap.get(k) or 0) - (self.last.get(k) or 0) for k in STAT_KEYS}
        self.last = snap
        source = ("typed-through" if delta["typed_through_hits"] else "engine" if delta["engine_calls"]
                  else "cancelled" if delta["cancelled"] else "none")
        info = {k: delta[k] for k in ("prompt_tokens", "reused_tokens", "replayed_tokens", "decoded_tokens",
                                      "warm_prompts")}  # warm_prompts: the whole prompt was prefilled already
        return text, {"source": source, **info}

    def pid(self) -> int | None:
        return self.server.pid()

    async def stop(self) -> None:
        await self.server.stop()


def _update_uri(params: dict[str, Any]) -> str | None:
    doc = params.get("textDocument") or params.get("text_document") or {}
    return doc.get("uri") if isinstance(doc, dict) else None


async def run_server(name: str, sites: list[Site], typist: Typist, flags: list[str]) -> dict[str, Any]:
    system = ServerSystem(name, [*SERVER_ARGS[name], *flags], ours=name != "generic")
    t0 = time.perf_counter()
    await system.start()
    print(f"{name}: server up (flags {system.args or 'none'}), model loaded in {system.load_s:.1f} s", flush=True)
    try:
        records = await replay_all(system, sites, typist)
        stats = await system.stats()
        rss = peak_rss_mib(system.pid())
    finally:
        await system.stop()
    caps = getattr(system.server.init_result, "capabilities", None)
    experimental = plain(getattr(caps, "experimental", None))  # does the server advertise its updates?
    return {"system": name, "label": LABELS[name], "args": system.args, "client": "ours" if system.ours else "generic",
            "load_s": round(system.load_s, 1), "peak_rss_mib": rss, "server_stats": stats,
            "updates_received": len(system.server.updates), "server_experimental": experimental,
            "sites": records, "wall_s": round(time.perf_counter() - t0, 1)}


# -- peers (each in its own process) ------------------------------------------------------------------


class PeerSystem(System):
    """A document kept here and a `complete(prefix, suffix) -> str` per request."""

    def __init__(self, name: str, complete: Callable[[str, str], str], counter: TokenCounter,
                 prefix_tokens: int = 512, suffix_tokens: int = 128) -> None:
        self.name = name
        self.complete = complete
        self.counter = counter
        self.prefix_tokens = prefix_tokens
        self.suffix_tokens = suffix_tokens
        self.docs: dict[str, tuple[str, str]] = {}

    async def open(self, uri: str, text: str, language: str) -> None:
        self.docs[uri] = (text, language)

    async def insert(self, uri: str, line: int, col: int, text: str) -> None:
        doc, language = self.docs[uri]
        off = _offset(doc, line, col)
        self.docs[uri] = (doc[:off] + text + doc[off:], language)

    async def close(self, uri: str) -> None:
        self.docs.pop(uri, None)

    async def suggest(self, uri: str, line: int, col: int) -> tuple[str | None, dict[str, Any]]:
        from codestral_ls.server.context import build_context
        from codestral_ls.server.cursor import read_cursor

        doc, language = self.docs[uri]
        off = _offset(doc, line, col)
        ctx = build_context(read_cursor(doc, off, language, "never"), self.counter, self.prefix_tokens,
                            self.suffix_tokens)
        text = self.complete(ctx.prefix, ctx.suffix).split("\n", 1)[0].rstrip()
        return (text or None), {"source": "engine"}


def _offset(text: str, line: int, col: int) -> int:
    start = 0
    for _ in range(line):
        start = text.index("\n", start) + 1
    return start + col


def _llama_peer(device: str, max_tokens: int, model: str | None) -> PeerSystem:
    llama_threads_wait_passively()
    from llama_cpp import Llama

    llm = Llama(model_path=llama_gguf(model), n_threads=2, n_ctx=2048, n_gpu_layers=-1 if device == "cuda" else 0,
                verbose=False, seed=0)

    def complete(prefix: str, suffix: str) -> str:
        out = llm.create_completion(qwen_fim_prompt(prefix, suffix), max_tokens=max_tokens, temperature=0.0,
                                    top_k=1, top_p=1.0, repeat_penalty=1.0, stop=["\n"])
        return out["choices"][0]["text"]

    counter = PieceCounter(lambda text: llm.tokenize(text.encode("utf-8"), add_bos=False, special=False),
                           lambda token: llm.detokenize([token]).decode("utf-8", "replace"))
    return PeerSystem("llama", complete, counter)


def _hf_peer(device: str, dtype: str, quantize: str, max_tokens: int, model: str | None) -> PeerSystem:
    import torch
    from codestral_ls.engine.models.loading import ModelSpec, load_model
    from transformers import StoppingCriteria, StoppingCriteriaList

    lm = load_model(ModelSpec(model=model, device=device, dtype=dtype, quantize=quantize))
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

    return PeerSystem("hf", complete, counter_for(lm.tokenizer, encoder.encode_text))


def peer_main(name: str, sites: list[Site], typist: Typist, device: str, dtype: str, quantize: str,
              max_tokens: int, model: str | None = None) -> dict[str, Any]:
    """Runs in a child process: load the peer, replay every site, report its own peak RSS."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    system = (_llama_peer(device, max_tokens, model) if name == "llama"
              else _hf_peer(device, dtype, quantize, max_tokens, model))
    load_s = time.perf_counter() - t0
    print(f"{name}: loaded in {load_s:.1f} s", flush=True)

    async def go() -> list[dict[str, Any]]:
        await warm_up(system)
        return await replay_all(system, sites, typist, progress=lambda s: print(s, flush=True))

    records = asyncio.run(go())
    return {"system": name, "label": LABELS[name], "load_s": round(load_s, 1), "peak_rss_mib": peak_rss_mib(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "sites": records,
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_peer(name: str, sites: list[Site], typist: Typist, args: argparse.Namespace) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        fut = pool.submit(peer_main, name, sites, typist, args.device, args.dtype, args.quantize, args.max_tokens,
                          args.model)
        return fut.result()


def llama_available(model: str | None = None) -> bool:
    return llama_problem(model) is None


# -- summary ---------------------------------------------------------------------------------------------


def _median_ms(values: list[float]) -> float | None:
    """Median of per-site times, a site that never got there counting as never (inf)."""
    if not values:
        return None
    s = sorted(values)
    return s[(len(s) - 1) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    sites = run["sites"]
    reqs = [q for s in sites for q in s["requests"]]
    asked = [q for q in reqs if q.get("trigger", "key") != "update"]  # arrival and keystroke requests
    lat = [q["latency_ms"] for q in asked]
    engine_lat = [q["latency_ms"] for q in asked if q.get("source") == "engine"]
    loads = [q["load1"] for q in reqs if q.get("load1") is not None]
    chars = sum(s["chars"] for s in sites)
    saved = sum(s["saved"] for s in sites)
    firsts = [s.get("first_suggestion") for s in sites]
    inf = float("inf")
    out: dict[str, Any] = {
        "requests": len(asked),
        "update_requests": len(reqs) - len(asked),
        "updates_received": run.get("updates_received"),
        "latency_ms": latency_summary(lat),
        "engine_latency_ms": latency_summary(engine_lat),
        "exact_line_rate": round(sum(q["exact"] for q in reqs) / len(reqs), 3) if reqs else None,
        "useful_rate": round(sum(q["prefix_ok"] for q in reqs) / len(reqs), 3) if reqs else None,
        "in_time_rate": round(sum(q["in_time"] for q in asked) / len(asked), 3) if asked else None,
        "load1_mean": round(sum(loads) / len(loads), 2) if loads else None,
        "chars": chars,
        "chars_saved": saved,
        "chars_saved_rate": round(saved / chars, 3) if chars else None,
        "lines_accepted": sum(s["accepted"] for s in sites),
        "sites": len(sites),
        # Arrival at a site → the first non-empty suggestion on screen (median; never = inf).
        "site_first_suggestion_ms": _median_ms([f["ms"] if f else inf for f in firsts]),
        "site_first_suggestion_right_rate": round(sum(bool(f and f["exact"]) for f in firsts) / len(sites), 3)
        if sites else None,
        "site_first_suggestion_at_arrival_rate": round(sum(bool(f and f["pos"] == 0) for f in firsts) / len(sites), 3)
        if sites else None,
        # Arrival → a suggestion that is the rest of the real line (median; never = inf).
        "site_right_line_ms": _median_ms([s["correct_ms"] if s.get("correct_ms") is not None else inf
                                          for s in sites]),
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
        engine = [q for q in reqs if q.get("source") == "engine"]
        out["warm_prompt_rate"] = round(sum(bool(q.get("warm_prompts")) for q in engine) / len(engine), 3) \
            if engine else None
    return out


def _ms(value: float | None) -> str:
    return "never" if value == float("inf") else fmt(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def report(result: dict[str, Any]) -> str:
    runs = result["systems"]
    rows = []
    for name, run in runs.items():
        s = run["summary"]
        lat = s["latency_ms"]
        updates = "-" if s.get("updates_received") is None else f"{s['updates_received']}/{s.get('update_requests', 0)}"
        rows.append([name, str(s["requests"]), fmt(lat["p50"]), fmt(lat["p95"]),
                     f"{s['chars_saved']}/{s['chars']} ({fmt(100 * (s['chars_saved_rate'] or 0), 0)}%)",
                     _ms(s.get("site_first_suggestion_ms")), _pct(s.get("site_first_suggestion_right_rate")),
                     _ms(s.get("site_right_line_ms")), updates, fmt(s["engine_latency_ms"]["p50"]),
                     _pct(s.get("typed_through_hit_rate")), _pct(s.get("kv_reuse_ratio")),
                     _pct(s.get("warm_prompt_rate")),
                     fmt(s["peak_rss_mib"]), fmt(s.get("load1_mean"), 1), run.get("label", name)])
    header = ["system", "reqs", "p50 ms", "p95 ms", "chars saved", "site->1st sugg. ms", "1st right",
              "site->right line ms", "updates recv/asked", "engine p50", "typed-thru", "kv reuse", "warm",
              "peak RSS MiB", "load", "what"]
    files = ", ".join(sorted({s["file"] for r in runs.values() for s in r["sites"]}))
    lines = [f"typing replay, {result['typist']['mode']}, {result['n_sites']} sites ({files}), "
             f"device {result['device']}", table(rows, header),
             "p50/p95: arrival and keystroke requests (re-requests on suggestionUpdated not counted); "
             "site->...: median over sites from arriving at the site, 'never' when most sites never got one"]
    if result.get("skipped"):
        lines.append("skipped: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


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
    p.add_argument("--read-ms", type=float, default=2000.0,
                   help="the user reads this long at a new site before the first key (default 2000; "
                        "0: back to back, only the word-boundary pause)")
    p.add_argument("--char-ms", type=float, default=80.0, help="typing speed, ms per character (default 80)")
    p.add_argument("--pause-ms", type=float, default=400.0, help="pause after a word boundary (default 400)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated, in order (default {','.join(SYSTEMS)}); llama is skipped if "
                        "llama_cpp is not installed")
    p.add_argument("--model", help="a model other than the embedded one (server --model, hf peer; tests use a tiny "
                                   "one); llama.cpp runs only when it is a .gguf")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"max decoded tokens, all systems (default {DEFAULT_MAX_TOKENS}, the server's; another value "
                        "is passed to the servers as a flag)")
    p.add_argument("--min-chars", type=int, default=16, help="shortest line picked as a site (default 16)")
    p.add_argument("--max-chars", type=int, default=48, help="longest line picked as a site (default 48)")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/replay_<mode>.json)")
    p.add_argument("--no-plot", action="store_true")
    add_device_args(p)
    return p


async def run(args: argparse.Namespace, sites: list[Site], typist: Typist, systems: list[str],
              save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for name in systems:
        print(f"== {name}: {LABELS[name]} ({typist.mode}, {len(sites)} sites)", flush=True)
        if name in SERVER_ARGS:
            run_ = await run_server(name, sites, typist, server_flags(args))
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
    systems, skipped = runnable_systems(args.systems, SYSTEMS, args.model)
    files = args.files or default_files()
    sites = [s for f in files for s in pick_sites(Path(f), args.sites, args.min_chars, args.max_chars)]
    if not sites:
        raise SystemExit("benchmark: error: no sites found in the given files")
    typist = Typist(args.every_key, 0.0 if args.every_key else args.debounce_ms, args.char_ms, args.pause_ms,
                    args.read_ms)
    mode = ("everykey" if args.every_key else f"debounce{args.debounce_ms:g}") + (
        f"_read{args.read_ms:g}" if args.read_ms > 0 else "_backtoback")
    out = args.out or RESULTS_DIR / f"replay_{mode}.json"
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "typing_replay", "version": 2, "typist": {**asdict(typist), "mode": typist.mode},
        "device": args.device, "dtype": args.dtype, "quantize": args.quantize, "max_tokens": args.max_tokens,
        "model": args.model, "files": [str(f) for f in files], "n_sites": len(sites),
        "sites": [{"file": s.file, "line": s.line + 1, "target": s.target} for s in sites],
        "skipped": skipped, "machine": machine()}

    def save(runs: dict[str, Any], complete: bool = False) -> None:
        write_json(out, {**result, "complete": complete, "wall_s": round(time.perf_counter() - t0, 1),
                         "systems": runs})

    runs = asyncio.run(run(args, sites, typist, systems, save))
    save(runs, complete=True)
    result.update(wall_s=round(time.perf_counter() - t0, 1), systems=runs)
    text = report(result)
    out.with_suffix(".txt").write_text(text + "\n")  # the table as printed, next to its JSON
    print()
    print(text)
    print(f"results: {out} (table: {out.with_suffix('.txt').name})")
    if not args.no_plot:
        for png in plot(result, out.with_suffix("")):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
