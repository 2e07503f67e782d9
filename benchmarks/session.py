"""A person in a file: open it, read, visit places, type, accept, press Enter; what they wait for.

The person opens real files one after another (default: the running Python's stdlib `statistics.py`,
then `ipaddress.py`; `--files`), each kept open like an editor tab, and reads each for `--idle-s`
(default 8 s) before visiting `--places` places in it (default 10). The places are chosen by a fixed
rule among code lines (not blank, comments or docstrings; 12-80 characters): top to bottom with a
fixed stride, and every third visit a seeded jump at least a quarter of the file away (alternately
back and forward). A place is `--lines` (default 3) consecutive code lines of the real file; the
document is the file without them (the person is about to write them), in one of two modes
(alternating visit by visit):

  retype   the lines are cleared to the first one's indentation (one didChange), the cursor after it;
  newline  the cursor goes to the end of the line above, the lines are removed and Enter opens a new
           line with the auto-indent (two didChanges).

Both leave the same document; they differ in the edits the server sees. Then, as an editor and a
person do, in real time (the gaps are slept):

* the editor asks (`textDocument/inlineCompletion`) on arrival and after every key (char or Enter);
  a key due while a request is outstanding sends the next request and the old one is superseded
  (counted; with `$/cancelRequest` as VS Code sends, `--no-cancel`: without), else the answer is
  waited for (closed loop); a client that opted in (`experimental.codestral.suggestionUpdates`)
  asks again on `codestral/suggestionUpdated` at the cursor; `codestral/didFocus` is sent as our
  clients send it: when the cursor rests `--focus-ms` (200) on another line, if the server
  advertises it;
* the person reads `--read-ms` (2000) at a new place, then types ~`--char-ms` (80) per character and
  `--pause-ms` (400) after a non-word character or Enter;
* a shown suggestion whose first line is the rest of the line is ACCEPTED: its text is inserted
  (didChange); if all of its lines are the real next lines the item's `command` (codestral.accept) is
  executed (`workspace/executeCommand`, as VS Code does), else its right first lines are accepted and
  `codestral/didPartiallyAccept` is sent; `--enter-ms` (150) later the person presses Enter (newline
  + the next real line's indentation) and goes on with the next line of the file, again accepting
  when right; a line nobody suggested is typed to its end and then Enter.

Systems, one after another on the same plan: `ours`, the server with default options (no flags) over
stdio, our client (updates opted in, didFocus); `llama`, llama.cpp (llama-cpp-python) on the same
GGUF in its own process (its RSS is its own): n_threads=2, prefix 512 / suffix 128 token windows as
typing_replay's peer, greedy, first line, its own prompt-prefix reuse, the newest request per
document wins (a superseded one stops at its next token, or never starts), nothing prefilled ahead.

Reported per system: arrival -> first suggestion (p50/p95, answered within the read, right-line
rate), cold and warm arrivals apart (cold: more than `--cold-tokens` tokens prefilled at request time
from arriving to the first suggestion, from `codestral/stats` read before and after; for the peer its
own prefix-reuse count), every-key latency (typed-through apart from engine), Enter after an accept ->
next suggestion, characters saved, prefill at request time vs during idle (the server's `prefill`
stats section when it has one, else n/a), CPU seconds of the process while idle vs at places, peak RSS;
and a BURST case: `--burst` (200) requests sent without waiting, each after a 1-character didChange,
without and with `$/cancelRequest` for all but the newest, next to one ordinary request at the same
place (each case on a fresh server / an emptied llama.cpp cache).

    python -m benchmarks.session --out benchmarks/results/session_baseline.json
    python -m benchmarks.session --quick      # 1 file, 2 places, 2 s idle, burst of 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sysconfig
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from benchmarks.device_args import DEFAULT_MAX_TOKENS
from benchmarks.llama_peer import llama_gguf, llama_threads_wait_passively, qwen_fim_prompt, runnable_systems
from benchmarks.lsp_driver import LspServer, cpu_seconds, first_item, peak_rss_mib, utf16_offset, utf16_position
from benchmarks.measure import RESULTS_DIR, fmt, latency_summary, load_average, machine, percentile, table, write_json
from benchmarks.typing_replay import LANGUAGES, WARMUP_TEXT, _python_noncode_lines

SYSTEMS = ("ours", "llama")
LABELS = {"ours": "headline: server defaults (no flags), our client (updates, didFocus)",
          "llama": "peer: llama.cpp, same GGUF, 512/128-token windows, first line"}
DEFAULT_FILES = ("statistics.py", "ipaddress.py")
COLD_TOKENS = 16  # an arrival that prefilled more than this at request time was cold
STAT_KEYS = ("requests", "suggestions", "typed_through_hits", "engine_calls", "prompt_tokens", "reused_tokens",
             "replayed_tokens", "decoded_tokens", "empty", "cancelled", "errors", "warm_ups", "warm_prompts",
             "accepted", "partially_accepted", "accepted_chars")
KEY_TRIGGERS = ("key", "enter", "accept-enter")  # requests a key press sent (every-key latency)
NEVER = float("inf")


# -- places (pure) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    file: str
    visit: int  # 0-based visit number in its file
    line: int  # 0-based first line typed
    n_lines: int  # lines typed here (the first and the code lines right after it)
    mode: str  # "retype" | "newline"
    jump: bool  # reached by a jump (not the next place top to bottom)


def code_lines(text: str, language: str) -> list[bool]:
    """Per line: is it code (not blank, not only a comment, not inside a multi-line string)?"""
    lines = text.split("\n")
    skip = _python_noncode_lines(text) if language == "python" else set()
    comment = ("#",) if language == "python" else ("//", "/*", "*")
    quotes = ("'", '"', "`")  # a docstring or a string statement on one line
    return [bool(line.strip()) and i not in skip and not line.strip().startswith((*comment, *quotes))
            for i, line in enumerate(lines)]


def pick_places(path: Path, n: int, lines_per_place: int = 3, seed: int = 0, min_chars: int = 12,
                max_chars: int = 80) -> list[Place]:
    """`n` places in the file: top to bottom with a fixed stride over the candidate lines, and every
    third visit a jump (seeded) at least a quarter of the file away, alternately back and forward.
    Modes alternate retype / newline. Deterministic for a file, `n`, `lines_per_place` and `seed`."""
    text = path.read_text(encoding="utf-8")
    language = LANGUAGES.get(path.suffix, "plaintext")
    lines = text.split("\n")
    is_code = code_lines(text, language)
    cands = [i for i, line in enumerate(lines)
             if i >= 5 and is_code[i] and min_chars <= len(line.strip()) <= max_chars
             and sum(c.isalpha() for c in line) >= 3]
    if not cands or n <= 0:
        return []
    n_jumps = n // 3 if n >= 3 else 0
    n_seq = max(1, min(n - n_jumps, len(cands)))
    seq = [cands[(2 * j + 1) * len(cands) // (2 * n_seq)] for j in range(n_seq)]
    rng = random.Random(f"{seed}:{path.name}")
    far = max(1, len(lines) // 4)
    used: set[int] = set()
    places: list[Place] = []
    nxt = iter(seq)
    current = 0
    for k in range(n):
        jump = k % 3 == 2
        line: int | None = None
        if jump:
            back = (k // 3) % 2 == 0  # the first jump goes back, the next forward, ...
            pool = [c for c in cands if c not in used and abs(c - current) >= far]
            side = [c for c in pool if (c < current) == back] or pool
            line = rng.choice(side) if side else None
        if line is None:
            jump = False
            line = next(nxt, None)
            while line is not None and line in used:
                line = next(nxt, None)
            if line is None:
                break
        used.add(line)
        current = line
        count = 1
        while count < lines_per_place and line + count < len(lines) and is_code[line + count]:
            count += 1
        places.append(Place(str(path), len(places), line, count, "newline" if k % 2 else "retype", jump))
    return places


# -- the person (pure parts) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    idle_s: float = 8.0  # reading a file after opening it
    read_ms: float = 2000.0  # at a new place, before the first key
    char_ms: float = 80.0
    pause_ms: float = 400.0  # after a non-word character, and after Enter
    enter_ms: float = 150.0  # from accepting to pressing Enter
    move_ms: float = 1000.0  # from leaving a place to arriving at the next
    focus_ms: float = 200.0  # the client's didFocus debounce (the cursor rests on another line)
    cancel: bool = True  # $/cancelRequest for a superseded request (VS Code)

    def gap_after(self, ch: str) -> float:
        """Milliseconds from typing `ch` to the next key."""
        return self.char_ms if (ch.isalnum() or ch == "_") else self.pause_ms


def key_schedule(person: Person, target: str, first_gap: float) -> list[float]:
    """Milliseconds after the line's first request at which each character of `target` is typed, and
    last the moment the line is done (when Enter comes, or the place ends)."""
    out, t = [], first_gap
    for ch in target:
        out.append(t)
        t += person.gap_after(ch)
    out.append(t)
    return out


@dataclass(frozen=True)
class Accept:
    lines: int  # real lines it completes (the current one and the next lines-1)
    text: str  # what goes into the document: the real text those lines need
    whole: bool  # every line of the suggestion was right (the item is accepted whole)
    suggestion_chars: int  # how much of the suggestion was accepted (didPartiallyAccept's length)
    saved: int  # characters the person did not type (content, not auto-indents or newlines)


def accept_match(suggestion: str | None, rest: str, following: list[str]) -> Accept | None:
    """What the person accepts of `suggestion` at a line whose untyped rest is `rest` and whose next
    real lines at the place are `following` (whole lines, indented): None unless its first line is
    the rest of the line; then also each next line of it that is the next real line."""
    if not suggestion or not rest:
        return None
    lines = suggestion.split("\n")
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()
    if lines[0].rstrip() != rest.rstrip():
        return None
    m = 1
    while m < len(lines) and m - 1 < len(following) and lines[m].rstrip() == following[m - 1].rstrip():
        m += 1
    text = rest + "".join("\n" + following[j] for j in range(m - 1))
    saved = len(rest) + sum(len(following[j].strip()) for j in range(m - 1))
    return Accept(m, text, m == len(lines), len("\n".join(lines[:m])), saved)


def first_line(text: str | None) -> str:
    return (text or "").split("\n", 1)[0].rstrip()


def request_prefill(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[int | None, str]:
    """Tokens prefilled at request time between two `codestral/stats` snapshots, and where from: the
    `prefill.request_tokens` counter when both have it, else engine prompt tokens minus reused ones
    (requests that finished only). (None, "n/a") without snapshots."""
    if not before or not after:
        return None, "n/a"
    pb, pa = before.get("prefill"), after.get("prefill")
    if isinstance(pb, dict) and isinstance(pa, dict) and "request_tokens" in pa:
        return int(pa["request_tokens"] or 0) - int(pb.get("request_tokens") or 0), "prefill.request_tokens"
    d = {k: int(after.get(k) or 0) - int(before.get(k) or 0) for k in ("prompt_tokens", "reused_tokens")}
    return d["prompt_tokens"] - d["reused_tokens"], "prompt-reused"


def classify_arrival(tokens: int | None, source: str, answered: bool, threshold: int = COLD_TOKENS) -> str:
    """cold / warm: did the arrival request need more than `threshold` tokens of prefill at request time?
    `tokens` is read from the stats before the arrival and after its answer. Counted from `prompt -
    reused` (no `prefill` section), a request that did not answer (superseded or cancelled before its
    engine call finished) counts nothing though it prefilled: it is cold (it did not answer within the
    read)."""
    if source == "prompt-reused" and not answered:
        return "cold"
    if tokens is None:
        return "unknown"
    return "cold" if tokens > threshold else "warm"


def stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, int]:
    if not before or not after:
        return {}
    return {k: int(after.get(k) or 0) - int(before.get(k) or 0) for k in STAT_KEYS if k in after}


def source_of(delta: dict[str, int]) -> str:
    if delta.get("typed_through_hits"):
        return "typed-through" if not delta.get("engine_calls") else "mixed"
    if delta.get("engine_calls"):
        return "engine"
    if delta.get("cancelled"):
        return "cancelled"
    return "none" if delta else "n/a"


def compact_stats(snap: dict[str, Any]) -> dict[str, Any]:
    """The counters this benchmark reads, with the `prefill` section and `timings` when present."""
    out = {k: snap.get(k) for k in STAT_KEYS if k in snap}
    if isinstance(snap.get("prefill"), dict):
        out["prefill"] = snap["prefill"]
    if isinstance(snap.get("prefetches"), dict):
        out["prefetches"] = snap["prefetches"]
    timings = snap.get("timings")
    if timings is not None:  # per-request timings: keep the newest (the list may be long)
        out["timings"] = timings[-1] if isinstance(timings, list) and timings else timings
    return out


# -- what the person drives ---------------------------------------------------------------------------


class Side:
    """A system the person drives: documents, edits, requests that may be superseded, counters."""

    name = ""
    focus_supported = False

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []
        self.updated = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def open(self, uri: str, text: str, language: str) -> None:
        raise NotImplementedError

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        raise NotImplementedError

    def close(self, uri: str) -> None:
        raise NotImplementedError

    def focus(self, uri: str, line: int, character: int) -> None:
        pass

    def send(self, uri: str, line: int, character: int, req_id: str) -> asyncio.Future[Any]:
        """Ask at the cursor; a future of (item | None, info)."""
        raise NotImplementedError

    def cancel(self, req_id: str) -> None:
        pass

    def accepted(self, item: dict[str, Any], whole: bool, length: int) -> None:
        pass

    async def stats(self) -> dict[str, Any] | None:
        return None

    def cpu_s(self) -> float | None:
        return None

    def rss_mib(self) -> float | None:
        return None

    async def fresh(self) -> None:
        """A fresh start for a burst case (a new server process / an emptied cache)."""


class ServerSide(Side):
    """The real server over stdio with default options, our client."""

    name = "ours"

    def __init__(self, flags: list[str]) -> None:
        super().__init__()
        self.flags = flags
        self.server: LspServer | None = None
        self.load_s = 0.0
        self.pending: set[asyncio.Task[Any]] = set()
        self.command_errors: list[str] = []
        self.experimental: dict[str, Any] = {}

    async def start(self) -> None:
        self.server = LspServer(self.flags, suggestion_updates=True)
        self.server.updates = self.updates  # the notifications land in our list
        self.server.updated = self.updated
        self.load_s = await self.server.start()
        self.experimental = self.server.server_experimental()
        self.focus_supported = bool(self.experimental.get("didFocus"))
        await warm_up(self)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    async def fresh(self) -> None:
        await self.stop()
        self.updates.clear()
        await self.start()

    def open(self, uri: str, text: str, language: str) -> None:
        assert self.server is not None
        self.server.open(uri, text, language)

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        assert self.server is not None
        self.server.edit(uri, start, end, text)

    def close(self, uri: str) -> None:
        assert self.server is not None
        self.server.close(uri)

    def focus(self, uri: str, line: int, character: int) -> None:
        assert self.server is not None
        self.server.focus(uri, line, character)

    def send(self, uri: str, line: int, character: int, req_id: str) -> asyncio.Future[Any]:
        assert self.server is not None
        raw = self.server.inline_request(uri, line, character, msg_id=req_id)

        async def answer() -> tuple[dict[str, Any] | None, dict[str, Any]]:
            try:
                return first_item(await raw), {}
            except Exception as exc:  # an error answer (a cancelled request answers one too)
                kind = "cancelled" if "cancel" in f"{type(exc).__name__} {exc}".lower() else "error"
                return None, {kind: f"{type(exc).__name__}: {exc}"[:200]}

        return asyncio.ensure_future(answer())

    def cancel(self, req_id: str) -> None:
        assert self.server is not None
        self.server.cancel_request(req_id)

    def accepted(self, item: dict[str, Any], whole: bool, length: int) -> None:
        assert self.server is not None
        command = item.get("command") or {}
        if whole and command.get("command"):
            task = asyncio.ensure_future(self._execute(command["command"], command.get("arguments")))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)
        elif command.get("arguments"):  # our clients' accept-line / accept-word
            self.server.client.protocol.notify("codestral/didPartiallyAccept",
                                               {"id": command["arguments"][0], "acceptedLength": length})

    async def _execute(self, command: str, arguments: list[Any] | None) -> None:
        assert self.server is not None
        try:
            await asyncio.wait_for(self.server.execute_command(command, arguments), 30)
        except Exception as exc:
            self.command_errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async def stats(self) -> dict[str, Any] | None:
        assert self.server is not None
        return compact_stats(await self.server.stats())

    def cpu_s(self) -> float | None:
        return cpu_seconds(self.server.pid()) if self.server is not None and self.server.pid() else None

    def rss_mib(self) -> float | None:
        return peak_rss_mib(self.server.pid()) if self.server is not None and self.server.pid() else None


class LlamaSide(Side):
    """llama.cpp on the same GGUF, in this process: one request at a time on a worker thread, the
    newest per document wins, its prompt-prefix reuse counted exactly."""

    name = "llama"

    def __init__(self, model: str | None, max_tokens: int, prefix_tokens: int = 512, suffix_tokens: int = 128) -> None:
        super().__init__()
        self.model, self.max_tokens = model, max_tokens
        self.prefix_tokens, self.suffix_tokens = prefix_tokens, suffix_tokens
        self.llm: Any = None
        self.counter: Any = None
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.docs: dict[str, tuple[str, str]] = {}
        self.newest: dict[str, threading.Event] = {}
        self.cancels: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.counters: dict[str, Any] = {k: 0 for k in STAT_KEYS}
        self.counters["prefill"] = {"request_tokens": 0, "request_ms": 0.0, "warm_tokens": 0, "warm_ms": 0.0}
        self.load_s = 0.0

    async def start(self) -> None:
        llama_threads_wait_passively()
        from llama_cpp import Llama

        t0 = time.perf_counter()
        self.llm = Llama(model_path=llama_gguf(self.model), n_threads=2, n_ctx=2048, n_gpu_layers=0, verbose=False,
                         seed=0)
        self.load_s = time.perf_counter() - t0
        self.counter = self._counter()
        await warm_up(self)

    async def fresh(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.pool, self.llm.reset)  # an empty KV cache

    def open(self, uri: str, text: str, language: str) -> None:
        self.docs[uri] = (text, language)

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        doc, language = self.docs[uri]
        a, b = utf16_offset(doc, *start), utf16_offset(doc, *end)
        self.docs[uri] = (doc[:a] + text + doc[b:], language)

    def close(self, uri: str) -> None:
        self.docs.pop(uri, None)

    def send(self, uri: str, line: int, character: int, req_id: str) -> asyncio.Future[Any]:
        doc, language = self.docs[uri]
        stop = threading.Event()
        old = self.newest.get(uri)
        if old is not None:
            old.set()  # as llama.vim stops its previous job: the newest request wins
        self.newest[uri] = stop
        self.cancels[req_id] = stop
        return asyncio.wrap_future(self.pool.submit(self._run, doc, utf16_offset(doc, line, character), language,
                                                    stop))

    def cancel(self, req_id: str) -> None:
        ev = self.cancels.pop(req_id, None)
        if ev is not None:
            ev.set()

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def _counter(self) -> Any:
        """What `server.context.build_context` counts tokens with: a piece counter on the restructured
        tree (engine/models/counting.py), a plain count function on 6a23252's."""
        try:
            from codestral_ls.engine.models.counting import PieceCounter
        except ImportError:
            return lambda text: len(self._tokenize(text))
        return PieceCounter(self._tokenize, lambda token: self.llm.detokenize([token]).decode("utf-8", "replace"))

    def _run(self, doc: str, offset: int, language: str, stop: threading.Event
             ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        import numpy as np
        from llama_cpp import StoppingCriteriaList

        c = self.counters
        with self.lock:
            c["requests"] += 1
        if stop.is_set():
            with self.lock:
                c["cancelled"] += 1
            return None, {"superseded": "before it started"}
        t0 = time.perf_counter()
        prefix, suffix = peer_window(doc, offset, language, self.counter, self.prefix_tokens, self.suffix_tokens)
        tokens = self.llm.tokenize(qwen_fim_prompt(prefix, suffix).encode("utf-8"), add_bos=False, special=True)
        cached = np.asarray(self.llm._input_ids)
        n = min(len(cached), len(tokens))
        diff = np.nonzero(cached[:n] != np.asarray(tokens[:n]))[0]
        common = int(diff[0]) if len(diff) else n
        # llama-cpp-python's generate: a fully cached prompt is replayed from its last token
        reused = common if common < len(tokens) else (len(tokens) if len(cached) == len(tokens) else len(tokens) - 1)
        t1 = time.perf_counter()
        first: list[float] = []
        decoded = [0]

        def halt(ids: Any, logits: Any) -> bool:
            if not first:
                first.append(time.perf_counter())
            decoded[0] += 1
            return stop.is_set()

        out = self.llm.create_completion(tokens, max_tokens=self.max_tokens, temperature=0.0, top_k=1, top_p=1.0,
                                         repeat_penalty=1.0, stop=["\n"],
                                         stopping_criteria=StoppingCriteriaList([halt]))
        t2 = time.perf_counter()
        prefill_ms = ((first[0] if first else t2) - t1) * 1000
        info = {"prompt_tokens": len(tokens), "reused_tokens": reused, "prefilled_tokens": len(tokens) - reused,
                "prefill_ms": round(prefill_ms, 1), "decoded_tokens": decoded[0],
                "context_ms": round((t1 - t0) * 1000, 1), "engine_ms": round((t2 - t1) * 1000, 1)}
        with self.lock:
            c["prompt_tokens"] += len(tokens)
            c["reused_tokens"] += reused
            c["decoded_tokens"] += decoded[0]
            c["prefill"]["request_tokens"] += len(tokens) - reused
            c["prefill"]["request_ms"] = round(c["prefill"]["request_ms"] + prefill_ms, 1)
            if stop.is_set():
                c["cancelled"] += 1
            else:
                c["engine_calls"] += 1
        if stop.is_set():
            return None, {**info, "superseded": "while it ran"}
        text = first_line(out["choices"][0]["text"])
        if text:
            with self.lock:
                c["suggestions"] += 1
        else:
            with self.lock:
                c["empty"] += 1
        return ({"text": text, "range": None, "command": None} if text else None), info

    async def stats(self) -> dict[str, Any] | None:
        with self.lock:
            return json.loads(json.dumps(self.counters))

    def cpu_s(self) -> float | None:
        return cpu_seconds()  # this process: llama.cpp's threads and the person's loop

    def rss_mib(self) -> float | None:
        return peak_rss_mib()


def peer_window(doc: str, offset: int, language: str, counter: Any, prefix_tokens: int = 512,
                suffix_tokens: int = 128) -> tuple[str, str]:
    """The text before / after the cursor in the peer's prompt: the server's own window cutting
    (`server.context.build_context`: whole lines, stable starts) at fixed budgets, as typing_replay's
    peers."""
    from codestral_ls.server.context import build_context
    from codestral_ls.server.cursor import read_cursor

    ctx = build_context(read_cursor(doc, offset, language, "never"), counter, prefix_tokens, suffix_tokens)
    return ctx.prefix, ctx.suffix


async def warm_up(side: Side) -> None:
    """One throwaway request on another document: the first forward pass of a process allocates."""
    uri = "file:///session/warmup.py"
    side.open(uri, WARMUP_TEXT, "python")
    await asyncio.wait_for(side.send(uri, 1, 4, "warmup"), 300)
    side.close(uri)


# -- the driver ---------------------------------------------------------------------------------------------


class Driver:
    """Plays the person against one system in real time and records every request, edit and accept."""

    def __init__(self, side: Side, person: Person, progress: Callable[[str], None] = print) -> None:
        self.side = side
        self.person = person
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.rows: list[dict[str, Any]] = []  # every request
        self.events: list[dict[str, Any]] = []  # edits, focus, accepts
        self.texts: dict[str, str] = {}
        self.uri = ""
        self.cursor = 0
        self.current: dict[str, Any] | None = None
        self.wake = asyncio.Event()
        self.focus_timer: asyncio.TimerHandle | None = None
        self.focused: tuple[str, int] | None = None
        self.updates_seen = 0
        self.stats_lock = asyncio.Lock()
        self.last_stats: dict[str, Any] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.context: dict[str, Any] = {}  # place and line of the requests being sent
        self._ids = 0

    def now_ms(self) -> float:
        return round((self.loop.time() - self.t0) * 1000, 1)

    # -- the document -------------------------------------------------------------------------------

    def open(self, uri: str, text: str, language: str) -> None:
        self.texts[uri] = text
        self.side.open(uri, text, language)

    def replace(self, start: int, end: int, new: str, kind: str) -> None:
        text = self.texts[self.uri]
        p0, p1 = utf16_position(text, start), utf16_position(text, end)
        self.texts[self.uri] = text[:start] + new + text[end:]
        self.cursor = start + len(new)
        self.side.edit(self.uri, p0, p1, new)
        self.events.append({"t": self.now_ms(), "kind": kind, "chars": len(new), "removed": end - start,
                            **self.context})
        self.moved()

    def position(self) -> tuple[int, int]:
        return utf16_position(self.texts[self.uri], self.cursor)

    def moved(self) -> None:
        """The cursor moved: our clients send didFocus once it rests focus_ms on another line."""
        if self.focus_timer is not None:
            self.focus_timer.cancel()
        if self.side.focus_supported:
            self.focus_timer = self.loop.call_later(self.person.focus_ms / 1000, self._focus)

    def _focus(self) -> None:
        line, character = self.position()
        if (self.uri, line) != self.focused:
            self.focused = (self.uri, line)
            self.side.focus(self.uri, line, character)
            self.events.append({"t": self.now_ms(), "kind": "focus", "line": line, **self.context})

    # -- requests -----------------------------------------------------------------------------------

    def ask(self, trigger: str, pos: int, rest: str) -> dict[str, Any]:
        cur = self.current
        if cur is not None and not cur["_done"]:
            self.supersede(cur)
        self._ids += 1
        line, character = self.position()
        row: dict[str, Any] = {"id": self._ids, **self.context, "trigger": trigger, "pos": pos, "rest": rest,
                               "t": self.now_ms(), "cursor": [line, character], "answer_ms": None,
                               "outcome": None, "text": None, "right": None, "superseded_ms": None,
                               "load1": load_average(), "_done": False, "_handled": False, "_item": None}
        req_id = f"{self.side.name}-{self._ids}"
        row["_req_id"] = req_id
        start = self.loop.time()
        fut = self.side.send(self.uri, line, character, req_id)
        self.rows.append(row)
        self.current = row

        def done(f: asyncio.Future[Any]) -> None:
            row["_done"] = True
            row["answer_ms"] = round((self.loop.time() - start) * 1000, 1)
            try:
                item, info = f.result()
            except Exception as exc:
                item, info = None, {"error": f"{type(exc).__name__}: {exc}"[:200]}
            row["_item"] = item
            row["text"] = item["text"][:400] if item else None
            row["right"] = bool(item) and bool(rest) and first_line(item["text"]) == rest.rstrip()
            if info:
                row["info"] = info
            outcome = ("error" if "error" in info else "cancelled" if "cancelled" in info or "superseded" in info
                       else "shown" if item else "empty")
            if row["superseded_ms"] is not None:
                row["outcome"] = "superseded"
                row["late"] = outcome
            else:
                row["outcome"] = outcome
            task = asyncio.ensure_future(self.attribute(row))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self.wake.set()

        fut.add_done_callback(done)
        return row

    def supersede(self, row: dict[str, Any]) -> None:
        row["superseded_ms"] = round((self.loop.time() - self.t0) * 1000 - row["t"], 1)
        if self.person.cancel:
            self.side.cancel(row["_req_id"])

    async def read_stats(self) -> dict[str, Any] | None:
        async with self.stats_lock:
            try:
                snap = await asyncio.wait_for(self.side.stats(), 30)
            except Exception as exc:  # a stats request that fails is recorded, never fatal
                self.events.append({"t": self.now_ms(), "kind": "stats-error", "error": str(exc)[:200]})
                return None
            prev, self.last_stats = self.last_stats, snap
            if snap is not None:
                snap["_prev"] = prev
            return snap

    async def attribute(self, row: dict[str, Any]) -> None:
        """The stats just after an answer: what the server did for it (typed-through, engine, ...)."""
        snap = await self.read_stats()
        if snap is None:
            return
        prev = snap.pop("_prev", None)
        row["stats_after"] = snap
        delta = stats_delta(prev, snap)
        row["source"] = source_of(delta)
        tokens, _ = request_prefill(prev, snap)
        row["prefill_tokens"] = tokens

    async def wait(self, until: float) -> str:
        """Until loop time `until`: "answer" (the current request answered), "update" (a suggestion
        update at the cursor), or "time"."""
        while True:
            self.wake.clear()
            cur = self.current
            if cur is not None and cur["_done"] and not cur["_handled"]:
                cur["_handled"] = True
                return "answer"
            if self.take_update():
                return "update"
            left = until - self.loop.time()
            if left <= 0:
                return "time"
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except TimeoutError:
                pass

    def take_update(self) -> bool:
        """A `codestral/suggestionUpdated` for the cursor arrived since the last look."""
        fresh = self.side.updates[self.updates_seen:]
        self.updates_seen = len(self.side.updates)
        line, character = self.position()
        for u in fresh:
            doc = u.get("textDocument") or u.get("text_document") or {}
            pos = u.get("position") or {}
            if doc.get("uri") == self.uri and pos.get("line") == line and pos.get("character") == character:
                return True
        return False

    # -- a line, a place, a file ----------------------------------------------------------------------

    async def type_line(self, target: str, following: list[str], trigger: str, first_gap: float
                        ) -> tuple[dict[str, Any], Accept | None, float]:
        """The cursor is after the indentation of an empty line: the editor asks (`trigger`), the
        person waits `first_gap` ms and types `target`, accepting a suggestion that is its rest.
        Returns the line's record, the accept (or None), and the loop time the line ended."""
        start = self.loop.time()
        rec: dict[str, Any] = {**self.context, "trigger": trigger, "target": target, "t": self.now_ms(),
                               "first": None, "typed": 0, "saved": 0, "accept": None}
        pos = 0
        self.ask(trigger, pos, target)
        next_key = start + first_gap / 1000
        while True:
            ev = await self.wait(next_key)
            if ev == "answer":
                row = self.current
                assert row is not None
                item = row["_item"]
                if item is None or not item["text"].strip():
                    continue
                row["shown_at_ms"] = round((self.loop.time() - start) * 1000, 1)
                if rec["first"] is None:
                    rec["first"] = {"ms": row["shown_at_ms"], "pos": pos, "request": row["id"], "right": row["right"]}
                acc = accept_match(item["text"], target[pos:], following)
                if acc is not None:
                    self.replace(self.cursor, self.cursor, acc.text, "accept")
                    self.side.accepted(item, acc.whole, acc.suggestion_chars)
                    row["accepted"] = {"lines": acc.lines, "whole": acc.whole, "saved": acc.saved}
                    rec.update(typed=pos, saved=acc.saved, accept={"request": row["id"], "lines": acc.lines,
                                                                   "whole": acc.whole, "pos": pos})
                    return rec, acc, self.loop.time()
            elif ev == "update":
                self.ask("update", pos, target[pos:])
            else:  # the next key is due
                if pos >= len(target):
                    rec["typed"] = pos
                    return rec, None, next_key
                ch = target[pos]
                self.replace(self.cursor, self.cursor, ch, "key")
                pos += 1
                self.ask("key", pos, target[pos:])
                next_key += self.person.gap_after(ch) / 1000

    async def visit(self, place: Place, index: int) -> dict[str, Any]:
        """Arrive at the place (its lines removed, the cursor on an empty line with the indentation),
        read, type its lines one by one with Enter between them, accepting what is right."""
        p = self.person
        text = self.texts[self.uri]
        lines = text.split("\n")
        s, n = place.line, place.n_lines
        targets = [lines[s + i].rstrip() for i in range(n)]
        indents = [t[: len(t) - len(t.lstrip())] for t in targets]
        starts = [0]
        for line in lines[:-1]:
            starts.append(starts[-1] + len(line) + 1)
        end = starts[s + n - 1] + len(lines[s + n - 1])
        self.context = {"place": index, "file": Path(place.file).name, "line_i": 0}
        stats_before = await self.read_stats()
        if stats_before is not None:
            stats_before.pop("_prev", None)
        cpu_before = self.side.cpu_s()
        arrived = self.loop.time()
        rec: dict[str, Any] = {"place": index, **asdict(place), "file": Path(place.file).name,
                               "t": self.now_ms(), "stats_before": stats_before, "lines": []}
        if place.mode == "retype":
            self.replace(starts[s] + len(indents[0]), end, "", "clear")
        else:
            above = starts[s - 1] + len(lines[s - 1]) if s > 0 else 0
            self.replace(above, end, "", "remove")
            self.replace(above, above, ("\n" if s > 0 else "") + indents[0], "enter")
        li, trigger, gap = 0, "arrival", p.read_ms
        while li < n:
            self.context["line_i"] = li
            line_rec, acc, ended = await self.type_line(targets[li].lstrip(), targets[li + 1:], trigger, gap)
            line_rec["chars"] = len(targets[li].lstrip()) + (
                sum(len(t.strip()) for t in targets[li + 1: li + acc.lines]) if acc else 0)
            rec["lines"].append(line_rec)
            li += acc.lines if acc else 1
            if li >= n:
                break
            if acc is not None:
                await asyncio.sleep(max(0.0, ended + p.enter_ms / 1000 - self.loop.time()))
            self.context["line_i"] = li
            self.replace(self.cursor, self.cursor, "\n" + indents[li], "enter")
            trigger, gap = ("accept-enter" if acc else "enter"), p.pause_ms
        cur = self.current
        if cur is not None and not cur["_done"]:
            self.supersede(cur)  # the person leaves: the editor drops (cancels) the request
        rec["duration_ms"] = round((self.loop.time() - arrived) * 1000, 1)
        rec["cpu_s"] = _sub(self.side.cpu_s(), cpu_before)
        rec["restored"] = self.texts[self.uri].split("\n")[s:s + n] == targets
        return rec

    async def idle(self, seconds: float, kind: str, phases: list[dict[str, Any]]) -> None:
        stats0 = await self.read_stats()
        if stats0 is not None:
            stats0.pop("_prev", None)
        cpu0, t = self.side.cpu_s(), self.now_ms()
        await asyncio.sleep(seconds)
        stats1 = await self.read_stats()
        if stats1 is not None:
            stats1.pop("_prev", None)
        tokens = _warm(stats0, stats1)
        phases.append({"kind": kind, "file": Path(self.uri).name, "t": t, "s": seconds,
                       "cpu_s": _sub(self.side.cpu_s(), cpu0), "warm_tokens": tokens[0], "warm_ms": tokens[1],
                       "stats_delta": stats_delta(stats0, stats1)})

    async def drain(self, grace_s: float = 15.0) -> None:
        """Give requests still out `grace_s` to answer; those that never do are counted."""
        deadline = self.loop.time() + grace_s
        while self.loop.time() < deadline and any(not r["_done"] for r in self.rows):
            await asyncio.sleep(0.1)
        for r in self.rows:
            if not r["_done"]:
                r["outcome"] = "never" if r["superseded_ms"] is None else "superseded"
                r["late"] = "never"
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=30)


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def _warm(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """Tokens and ms prefilled during idle (warm-up) between two snapshots; None without a `prefill` section."""
    pb = (before or {}).get("prefill")
    pa = (after or {}).get("prefill")
    if not isinstance(pb, dict) or not isinstance(pa, dict) or "warm_tokens" not in pa:
        return None, None
    return (int(pa.get("warm_tokens") or 0) - int(pb.get("warm_tokens") or 0),
            round(float(pa.get("warm_ms") or 0) - float(pb.get("warm_ms") or 0), 1))


async def run_session(side: Side, plan: dict[str, list[Place]], person: Person,
                      progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole session against one (started) system: every file opened and read, every place visited."""
    d = Driver(side, person, progress)
    phases: list[dict[str, Any]] = []
    places: list[dict[str, Any]] = []
    start_stats = await d.read_stats()
    if start_stats is not None:
        start_stats.pop("_prev", None)
    cpu_start = side.cpu_s()
    watcher = asyncio.ensure_future(_watch_updates(side, d))
    try:
        for path, file_places in plan.items():
            d.uri = f"file:///session/{Path(path).name}"
            d.open(d.uri, Path(path).read_text(encoding="utf-8"), LANGUAGES.get(Path(path).suffix, "plaintext"))
            d.context = {"file": Path(path).name}
            await d.idle(person.idle_s, "read-file", phases)
            for k, place in enumerate(file_places):
                rec = await d.visit(place, len(places))
                places.append(rec)
                lines = rec["lines"]
                first = lines[0]["first"] if lines else None
                seen = "never" if first is None else f"{first['ms']:.0f} ms ({'right' if first['right'] else 'wrong'})"
                progress(f"  [{side.name}] {rec['file']}:{place.line + 1} {place.mode}{' (jump)' if place.jump else ''}"
                         f" x{place.n_lines}: first suggestion {seen}, saved "
                         f"{sum(x['saved'] for x in lines)}/{sum(x['chars'] for x in lines)} chars")
                if k + 1 < len(file_places):
                    d.context = {"file": Path(path).name}
                    await d.idle(person.move_ms / 1000, "move", phases)
        end_stats = await d.read_stats()
        await d.drain()
    finally:
        watcher.cancel()
    if end_stats is not None:
        end_stats.pop("_prev", None)
    for uri in list(d.texts):
        side.close(uri)
    rows = slim_rows([{k: v for k, v in r.items() if not k.startswith("_")} for r in d.rows])
    return {"places": places, "requests": rows, "events": d.events, "phases": phases,
            "stats_start": start_stats, "stats_end": end_stats, "cpu_s": _sub(side.cpu_s(), cpu_start)}


def slim_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stats snapshot after a request is kept where the summary reads it (arrival requests,
    requests whose suggestion was shown, the last request of each line); every row keeps its source
    and prefill tokens."""
    last = {(r.get("place"), r.get("line_i")): r["id"] for r in rows}
    for r in rows:
        after = r.get("stats_after")
        if isinstance(after, dict):
            after.pop("_prev", None)
            is_last = last[(r.get("place"), r.get("line_i"))] == r["id"]
            if r["trigger"] != "arrival" and r["outcome"] != "shown" and not is_last:
                del r["stats_after"]
    return rows


async def _watch_updates(side: Side, d: Driver) -> None:
    while True:
        await side.updated.wait()
        side.updated.clear()
        d.wake.set()


# -- the burst ----------------------------------------------------------------------------------------------


def burst_plan(path: Path, place: Place, n: int) -> tuple[str, int, str]:
    """The burst at a place: (the document, where the typing starts, the `n` characters typed there).
    The file's text from the place's indentation to the end of the line where the `n`th character
    falls is removed, then its first `n` characters are typed back one per didChange: the last request
    is at the end of a line being written (nothing after the cursor on its line), as in the session."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    line = lines[place.line]
    offset = len("\n".join(lines[: place.line])) + (1 if place.line else 0) + len(line) - len(line.lstrip())
    chars = text[offset:offset + n]
    eol = text.find("\n", offset + len(chars))
    eol = len(text) if eol < 0 or chars.endswith("\n") else eol
    return text[:offset] + text[eol if not chars.endswith("\n") else offset + len(chars):], offset, chars


async def burst_case(side: Side, path: Path, place: Place, n: int, case: str, timeout_s: float = 180
                     ) -> dict[str, Any]:
    """`case` "ordinary": one request at the burst's last cursor in its final document; "burst" / "burst-cancel":
    `n` requests, each right after a 1-character didChange, none awaited (and `$/cancelRequest` for each
    superseded one): how long until the newest is answered."""
    loop = asyncio.get_running_loop()
    language = LANGUAGES.get(path.suffix, "plaintext")
    before, offset, chars = burst_plan(path, place, n)
    uri = f"file:///session/burst/{case}/{path.name}"
    if case == "ordinary":
        final = before[:offset] + chars + before[offset:]
        side.open(uri, final, language)
        line, character = utf16_position(final, offset + len(chars))
        t0 = loop.time()
        try:
            item, info = await asyncio.wait_for(side.send(uri, line, character, f"{side.name}-ordinary"), timeout_s)
            ms: float | None = round((loop.time() - t0) * 1000, 1)
        except TimeoutError:
            item, info, ms = None, {}, None
        side.close(uri)
        return {"case": case, "latency_ms": ms, "text": item["text"] if item else None, "info": info}
    side.open(uri, before, language)
    text, cursor = before, offset
    futures: list[asyncio.Future[Any]] = []
    sent: list[float] = []
    done_at: dict[int, float] = {}
    t0 = loop.time()
    for i, ch in enumerate(chars):
        p = utf16_position(text, cursor)
        side.edit(uri, p, p, ch)
        text = text[:cursor] + ch + text[cursor:]
        cursor += 1
        line, character = utf16_position(text, cursor)
        if case == "burst-cancel" and futures:
            side.cancel(f"{side.name}-burst-{i - 1}")
        fut = side.send(uri, line, character, f"{side.name}-burst-{i}")
        fut.add_done_callback(lambda _f, i=i: done_at.setdefault(i, loop.time()))
        futures.append(fut)
        sent.append(loop.time())
    send_ms = round((loop.time() - t0) * 1000, 1)
    _, pending = await asyncio.wait(futures, timeout=timeout_s)
    results = []
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is None:
            results.append(f.result())
        else:
            results.append((None, {"error": "no answer"}))
    newest_item, newest_info = results[-1]
    last = len(futures) - 1
    out = {"case": case, "n": len(futures), "send_ms": send_ms,
           "newest_ms": round((done_at[last] - sent[last]) * 1000, 1) if last in done_at else None,
           "newest_from_first_ms": round((done_at[last] - t0) * 1000, 1) if last in done_at else None,
           "all_answered_ms": round((max(done_at.values()) - t0) * 1000, 1) if len(done_at) == len(futures) else None,
           "never": len(pending), "newest_text": newest_item["text"] if newest_item else None,
           "newest_info": newest_info,
           "answers": {k: sum(1 for it, inf in results if _kind(it, inf) == k)
                       for k in ("shown", "empty", "cancelled", "error")}}
    side.close(uri)
    return out


def _kind(item: dict[str, Any] | None, info: dict[str, Any]) -> str:
    if "error" in info:
        return "error"
    if "cancelled" in info or "superseded" in info:
        return "cancelled"
    return "shown" if item else "empty"


async def run_bursts(side: Side, path: Path, place: Place, n: int, progress: Callable[[str], None]
                     ) -> list[dict[str, Any]]:
    out = []
    for case in ("ordinary", "burst", "burst-cancel"):
        await side.fresh()
        r = await burst_case(side, path, place, n, case)
        progress(f"  [{side.name}] burst {case}: " + (f"{r['latency_ms']} ms" if case == "ordinary" else
                                                      f"newest answered after {r['newest_ms']} ms, {r['answers']}"))
        out.append(r)
    return out


# -- a system's whole run ---------------------------------------------------------------------------------


async def run_system(side: Side, plan: dict[str, list[Place]], person: Person, burst_n: int,
                     progress: Callable[[str], None] = print) -> dict[str, Any]:
    t0 = time.perf_counter()
    await side.start()
    progress(f"{side.name}: up, model loaded in {getattr(side, 'load_s', 0):.1f} s")
    try:
        run = await run_session(side, plan, person, progress)
        run["peak_rss_mib"] = side.rss_mib()  # before the burst cases' fresh starts
        if isinstance(side, ServerSide):
            run["server_experimental"] = side.experimental
            run["command_errors"] = side.command_errors
            run["updates_received"] = len(side.updates)
        first = next((ps[0] for ps in plan.values() if ps), None)
        if burst_n > 0 and first is not None:
            run["burst"] = await run_bursts(side, Path(first.file), first, burst_n, progress)
    finally:
        await side.stop()
    label = LABELS[side.name]
    if side.name == "ours" and getattr(side, "flags", None):
        label = f"ablation: server {' '.join(side.flags)}"
    run.update(system=side.name, label=label, load_s=round(getattr(side, "load_s", 0.0), 1),
               wall_s=round(time.perf_counter() - t0, 1))
    return run


def peer_main(plan: dict[str, list[Place]], person: Person, burst_n: int, model: str | None, max_tokens: int
              ) -> dict[str, Any]:
    """In a child process: the llama.cpp peer plays the same session (its peak RSS is its own)."""
    side = LlamaSide(model, max_tokens)
    run = asyncio.run(run_system(side, plan, person, burst_n, lambda s: print(s, flush=True)))
    run["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    return run


def run_peer(plan: dict[str, list[Place]], person: Person, burst_n: int, model: str | None, max_tokens: int
             ) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(peer_main, plan, person, burst_n, model, max_tokens).result()


# -- summary ---------------------------------------------------------------------------------------------


def _pcts(values: list[float]) -> dict[str, Any]:
    """n, p50, p95 of times where `inf` is never (reported as "never")."""
    def show(v: float | None) -> float | str | None:
        return "never" if v == NEVER else v

    return {"n": len(values), "p50": show(percentile(values, 50)), "p95": show(percentile(values, 95))}


def summarize(run: dict[str, Any], person: Person | dict[str, Any], cold_tokens: int = COLD_TOKENS
              ) -> dict[str, Any]:
    """Every figure of the table, from the run's per-event rows (so tables can be regenerated)."""
    read_ms = person["read_ms"] if isinstance(person, dict) else person.read_ms
    rows = {r["id"]: r for r in run["requests"]}
    places = run["places"]
    arrivals: list[dict[str, Any]] = []
    for pl in places:
        if not pl["lines"]:
            continue
        line0 = pl["lines"][0]
        first = line0.get("first")
        line_rows = [r for r in run["requests"] if r.get("place") == pl["place"] and r.get("line_i") == 0]
        arrival_row = next((r for r in line_rows if r["trigger"] == "arrival"), None)
        if arrival_row is None:
            continue
        # The arrival request: stats before it and after its answer (or its cancellation).
        tokens, source = request_prefill(pl.get("stats_before"), arrival_row.get("stats_after"))
        answered = arrival_row["outcome"] in ("shown", "empty")
        # From arriving to the first suggestion (maybe from a later request): all prefill on the way.
        end_row = rows.get(first["request"]) if first else (line_rows[-1] if line_rows else None)
        span_tokens, _ = request_prefill(pl.get("stats_before"), end_row.get("stats_after") if end_row else None)
        arrivals.append({"place": pl["place"], "ms": first["ms"] if first else NEVER,
                         "class": classify_arrival(tokens, source, answered, cold_tokens),
                         "prefill_tokens": tokens, "prefill_source": source, "span_prefill_tokens": span_tokens,
                         "arrival_outcome": arrival_row["outcome"], "arrival_answer_ms": arrival_row["answer_ms"],
                         "in_read": arrival_row["outcome"] == "shown"
                         and (arrival_row["answer_ms"] or NEVER) <= read_ms,
                         "right": bool(arrival_row["outcome"] == "shown" and arrival_row["right"])})
    keys = [r for r in run["requests"] if r["trigger"] in KEY_TRIGGERS]
    answered = [r for r in keys if r["outcome"] in ("shown", "empty")]
    by_source: dict[str, list[float]] = {}
    for r in answered:
        by_source.setdefault(r.get("source") or "n/a", []).append(r["answer_ms"])
    enters = [ln for pl in places for ln in pl["lines"] if ln["trigger"] == "accept-enter"]
    lines = [ln for pl in places for ln in pl["lines"]]
    chars = sum(ln.get("chars", 0) for ln in lines)
    saved = sum(ln["saved"] for ln in lines)
    idle_phases = run.get("phases", [])
    start, end = run.get("stats_start"), run.get("stats_end")
    req_tokens, req_source = request_prefill(start, end)
    warm = _warm(start, end)
    pb, pe = (start or {}).get("prefill"), (end or {}).get("prefill")
    request_ms = (round(float(pe.get("request_ms") or 0) - float(pb.get("request_ms") or 0), 1)
                  if isinstance(pb, dict) and isinstance(pe, dict) and "request_ms" in pe else None)
    cpu_idle = [ph["cpu_s"] for ph in idle_phases if ph.get("cpu_s") is not None]
    cpu_places = [pl["cpu_s"] for pl in places if pl.get("cpu_s") is not None]
    outcomes: dict[str, int] = {}
    for r in run["requests"]:
        outcomes[r["outcome"] or "none"] = outcomes.get(r["outcome"] or "none", 0) + 1
    bursts = {b["case"]: b for b in run.get("burst", [])}
    return {
        "places": len(arrivals),
        "arrival_ms": _pcts([a["ms"] for a in arrivals]),
        "arrival_cold_ms": _pcts([a["ms"] for a in arrivals if a["class"] == "cold"]),
        "arrival_warm_ms": _pcts([a["ms"] for a in arrivals if a["class"] == "warm"]),
        "arrival_in_read": sum(a["in_read"] for a in arrivals),
        "arrival_right": sum(a["right"] for a in arrivals),
        "arrivals": arrivals,
        "cold_tokens": cold_tokens,
        "key_requests": len(keys),
        "key_answered": len(answered),
        "key_superseded": sum(r["outcome"] == "superseded" for r in keys),
        "key_ms": latency_summary([r["answer_ms"] for r in answered]),
        "key_ms_by_source": {k: latency_summary(v) for k, v in sorted(by_source.items())},
        "enter_after_accept_ms": _pcts([ln["first"]["ms"] if ln["first"] else NEVER for ln in enters]),
        "lines": len(lines),
        "lines_accepted": sum(bool(ln["accept"]) for ln in lines),
        "chars": chars,
        "chars_saved": saved,
        "chars_saved_rate": round(saved / chars, 3) if chars else None,
        "prefill_request_tokens": req_tokens if req_source == "prefill.request_tokens" else None,
        "prefill_request_ms": request_ms,
        "prompt_minus_reused_tokens": request_prefill(
            {k: v for k, v in (start or {}).items() if k != "prefill"},
            {k: v for k, v in (end or {}).items() if k != "prefill"})[0],
        "prefill_warm_tokens": warm[0],
        "prefill_warm_ms": warm[1],
        "cpu_s_idle": round(sum(cpu_idle), 2) if cpu_idle else None,
        "cpu_s_places": round(sum(cpu_places), 2) if cpu_places else None,
        "idle_s": round(sum(ph["s"] for ph in idle_phases), 1),
        "outcomes": outcomes,
        "never_answered": sum(r.get("late") == "never" or r["outcome"] == "never" for r in run["requests"]),
        "peak_rss_mib": run.get("peak_rss_mib"),
        "burst_ordinary_ms": (bursts.get("ordinary") or {}).get("latency_ms"),
        "burst_newest_ms": (bursts.get("burst") or {}).get("newest_ms"),
        "burst_cancel_newest_ms": (bursts.get("burst-cancel") or {}).get("newest_ms"),
        "burst_n": (bursts.get("burst") or {}).get("n"),
    }


def _ms(v: Any) -> str:
    return v if isinstance(v, str) else fmt(v)


def _pair(p: dict[str, Any]) -> str:
    return f"{_ms(p['p50'])} / {_ms(p['p95'])} (n={p['n']})" if p["n"] else "-"


def _na(v: Any, digits: int = 0) -> str:
    return "n/a" if v is None else fmt(v, digits)


def report(result: dict[str, Any]) -> str:
    runs = result["systems"]
    names = list(runs)
    s = {n: runs[n]["summary"] for n in names}
    person = result["person"]

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *[f(s[n]) for n in names]]

    def src(x: dict[str, Any], key: str) -> str:
        v = x["key_ms_by_source"].get(key)
        return f"{fmt(v['p50'])} / {fmt(v['p95'])} (n={v['n']})" if v else "-"

    rows = [
        row("arrival -> 1st suggestion p50/p95 ms", lambda x: _pair(x["arrival_ms"])),
        row(f"  cold (> {s[names[0]]['cold_tokens']} tok prefilled)", lambda x: _pair(x["arrival_cold_ms"])),
        row("  warm", lambda x: _pair(x["arrival_warm_ms"])),
        row(f"answered within the read ({person['read_ms']:g} ms)", lambda x: f"{x['arrival_in_read']}/{x['places']}"),
        row("arrival right line", lambda x: f"{x['arrival_right']}/{x['places']}"),
        row("every key p50/p95 ms (answered)", lambda x: f"{fmt(x['key_ms']['p50'])} / {fmt(x['key_ms']['p95'])} "
                                                        f"(n={x['key_answered']}/{x['key_requests']})"),
        row("  superseded key requests", lambda x: f"{x['key_superseded']}/{x['key_requests']}"),
        row("  typed-through", lambda x: src(x, "typed-through")),
        row("  engine", lambda x: src(x, "engine")),
        row("  declined without the engine", lambda x: src(x, "none")),
        row("Enter after accept -> next p50/p95", lambda x: _pair(x["enter_after_accept_ms"])),
        row("characters saved", lambda x: f"{x['chars_saved']}/{x['chars']} "
                                          f"({fmt(100 * (x['chars_saved_rate'] or 0), 1)}%), "
                                          f"{x['lines_accepted']}/{x['lines']} lines"),
        row("prefill at request: tokens / ms", lambda x: f"{_na(x['prefill_request_tokens'])} / "
                                                         f"{_na(x['prefill_request_ms'])}"),
        row("  engine prompt - reused tokens", lambda x: _na(x["prompt_minus_reused_tokens"])),
        row("prefill while idle: tokens / ms", lambda x: f"{_na(x['prefill_warm_tokens'])} / "
                                                         f"{_na(x['prefill_warm_ms'])}"),
        row("CPU s: idle (read+move) / at places", lambda x: f"{_na(x['cpu_s_idle'], 1)} / {_na(x['cpu_s_places'], 1)}"
                                                             f" (idle {x['idle_s']:g} s)"),
        row("peak RSS MiB", lambda x: _na(x["peak_rss_mib"])),
        row("requests never answered", lambda x: str(x["never_answered"])),
        row("burst: one ordinary request ms", lambda x: _na(x["burst_ordinary_ms"])),
        row("burst: newest of N answered ms", lambda x: f"{_na(x['burst_newest_ms'])} (N={_na(x['burst_n'])})"),
        row("  with $/cancelRequest", lambda x: _na(x["burst_cancel_newest_ms"])),
    ]
    files = ", ".join(Path(f).name for f in result["files"])
    lines = [f"session: {files}, {result['n_places']} places, idle {person['idle_s']:g} s, "
             f"read {person['read_ms']:g} ms, {person['char_ms']:g} ms/char, cancel superseded: {person['cancel']}",
             table(rows, ["", *names]),
             "; ".join(f"{n}: {runs[n]['label']}" for n in names)]
    if result.get("skipped"):
        lines.append("skipped: " + "; ".join(result["skipped"]))
    return "\n".join(lines)


# -- main -------------------------------------------------------------------------------------------------


def default_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [stdlib / name for name in DEFAULT_FILES if (stdlib / name).is_file()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.session", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", type=Path, help="files, in order (default stdlib statistics.py, ipaddress.py)")
    p.add_argument("--places", type=int, help="places per file (default 10; --quick 2)")
    p.add_argument("--lines", type=int, default=3, help="lines typed at a place (default 3)")
    p.add_argument("--idle-s", type=float, help="reading a file after opening it, seconds (default 8; --quick 2)")
    p.add_argument("--read-ms", type=float, default=2000.0, help="reading at a place before typing (default 2000)")
    p.add_argument("--char-ms", type=float, default=80.0, help="ms per character (default 80)")
    p.add_argument("--pause-ms", type=float, default=400.0, help="pause after a non-word character or Enter (400)")
    p.add_argument("--enter-ms", type=float, default=150.0, help="from accepting to pressing Enter (default 150)")
    p.add_argument("--move-ms", type=float, default=1000.0, help="between places (default 1000)")
    p.add_argument("--focus-ms", type=float, default=200.0, help="the client's didFocus debounce (default 200)")
    p.add_argument("--no-cancel", action="store_true",
                   help="do not send $/cancelRequest for superseded requests (VS Code sends it)")
    p.add_argument("--seed", type=int, default=0, help="the jumps' seed (default 0)")
    p.add_argument("--cold-tokens", type=int, default=COLD_TOKENS,
                   help=f"an arrival prefilling more than this at request time is cold (default {COLD_TOKENS})")
    p.add_argument("--burst", type=int, help="requests in the burst case (default 200; --quick 20; 0: none)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated (default ours,llama)")
    p.add_argument("--model", help="a model other than the embedded one (server --model; llama.cpp if .gguf)")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                   help=f"max decoded tokens (default {DEFAULT_MAX_TOKENS}, the server's; another value is passed "
                        "to the server as a flag)")
    p.add_argument("--server-arg", action="append", default=[], metavar="FLAG",
                   help="a server flag for ours, e.g. --server-arg=--no-quick-first (an ablation: the label says so)")
    p.add_argument("--quick", action="store_true", help="1 file, 2 places, 2 s idle, burst of 20")
    p.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/session[_quick].json)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that --quick changes."""
    files = args.files or default_files()
    args.files = files[:1] if args.quick and not args.files else files
    args.places = args.places if args.places is not None else (2 if args.quick else 10)
    args.idle_s = args.idle_s if args.idle_s is not None else (2.0 if args.quick else 8.0)
    args.burst = args.burst if args.burst is not None else (20 if args.quick else 200)
    args.out = args.out or RESULTS_DIR / ("session_quick.json" if args.quick else "session.json")
    return args


def make_plan(args: argparse.Namespace) -> dict[str, list[Place]]:
    return {str(f): pick_places(Path(f), args.places, args.lines, args.seed) for f in args.files}


def make_person(args: argparse.Namespace) -> Person:
    return Person(idle_s=args.idle_s, read_ms=args.read_ms, char_ms=args.char_ms, pause_ms=args.pause_ms,
                  enter_ms=args.enter_ms, move_ms=args.move_ms, focus_ms=args.focus_ms, cancel=not args.no_cancel)


def server_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--model", args.model] if args.model else []
    if args.max_tokens != DEFAULT_MAX_TOKENS:
        flags += ["--max-tokens", str(args.max_tokens)]
    return flags + list(args.server_arg)


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    systems, skipped = runnable_systems(args.systems, SYSTEMS, args.model)
    plan = make_plan(args)
    if not any(plan.values()):
        raise SystemExit("benchmark: error: no places found in the given files")
    person = make_person(args)
    out: Path = args.out
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "session", "version": 1, "person": asdict(person), "files": [str(f) for f in args.files],
        "n_places": sum(len(v) for v in plan.values()), "lines_per_place": args.lines, "seed": args.seed,
        "burst": args.burst, "cold_tokens": args.cold_tokens, "max_tokens": args.max_tokens, "model": args.model,
        "server_flags": server_flags(args), "quick": args.quick,
        "plan": [asdict(p) for ps in plan.values() for p in ps], "skipped": skipped, "machine": machine()}
    runs: dict[str, Any] = {}

    def save(complete: bool = False) -> None:
        write_json(out, {**result, "complete": complete, "wall_s": round(time.perf_counter() - t0, 1),
                         "systems": runs})

    for name in systems:
        print(f"== {name}: {LABELS[name]}", flush=True)
        if name == "ours":
            run = asyncio.run(run_system(ServerSide(server_flags(args)), plan, person, args.burst))
            run["args"] = server_flags(args)
        else:
            run = run_peer(plan, person, args.burst, args.model, args.max_tokens)
        run["summary"] = summarize(run, person, args.cold_tokens)
        runs[name] = run
        save()  # after each system: a run stopped half-way keeps what it measured
    save(complete=True)
    result["systems"] = runs
    text = report(result)
    out.with_suffix(".txt").write_text(text + "\n")
    print()
    print(text)
    print(f"results: {out} (table: {out.with_suffix('.txt').name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
