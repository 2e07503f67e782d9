"""Stress: bad input, big input, a keystroke burst and a long soak against the real server process.

    python -m benchmarks.stress                      # tiny random model, 10 000-keystroke soak
    python -m benchmarks.stress --keystrokes 2000    # a shorter soak
    python -m benchmarks.stress --model DIR --json benchmarks/results/stress.json
    python -m benchmarks.stress --phases secret,patho  # what feeds the prompt (issue 24)

The default model is the tiny random Mistral of the tests (`benchmarks/tiny_model.py`, built in a temporary
folder in seconds): the figures are about the server (protocol, documents, caches, memory), not
about suggestion quality. Phases:

  bad inputs  malformed requests (bad positions, unknown/closed documents, wrong types, unknown
              methods), malformed frames (bad JSON, bad UTF-8, not an object) and notifications
              with bad params: how many were answered (requests and frames must all be), and
              whether the server still answers afterwards.
  big inputs  one suggestion each in a 2 MB document, a 100 000-character line, NUL bytes, CRLF,
              emoji and CJK: all answered, and how long each took.
  hostile     workspace-level settings that try to run code or send the document elsewhere
              (backend/endpoint/trustRemoteCode/model/allowDownload/apiKeyEnv over
              didChangeConfiguration), and a second server with `--engine auto` whose discovery
              file was planted (readable by others, pointing at a listener): how many connections
              the listener got (must be 0), the refusals shown, and the server still answering.
  burst       200 keystrokes (didChange + inlineCompletion) fired without waiting, every tenth
              one cancelled by the client: the time until every request is answered (drain), how
              many were superseded, and the latency of the next normal request.
  secret      a second server with a remote backend (`--backend openai`) pointed at a tiny HTTP
              endpoint started here that records every request body: a `.env` holding a key is
              opened, focused, typed into and asked about, so is a symlink to it (`settings.py`)
              and an `untitled:` buffer holding the key; then an ordinary file that imports from
              the link is asked about (the control: it reaches the endpoint). Bytes of the key
              at the endpoint: must be 0 (no piece of 8 characters or more, anywhere).
  patho       pathological documents open (20 000 nested brackets, a 1.3 MB minified line, a
              10 MB document, 100 kB of `{`), each asked about while an ordinary document is
              asked about too: that document's answer latency (must stay under 1 s) and the
              pathological one's.
  soak        N keystrokes typing real source (this repository's server/*.py) into documents at
              the end of the text, a request after every key (awaited every 8th), a new document
              every 2 000 keystrokes and only every other one closed (an editor never closes them
              all): server RSS sampled along the way, and the server's cache sizes at the end.

Scenarios of issue 24 (round 3), each with its flag (`--phases ""` runs only them):

  --shadowed-model          the server started (as eglot, Neovim and LSP4IJ do) in a repository holding
                            a folder named like the configured hub model, with remote code: neither
                            loaded nor run, with or without --allow-download (offline).
  --workspace-settings      each widening workspace setting (retrieval back on, disabledLanguages or
                            secretFiles cleared, logDocumentText on, timeouts 0, sizes huge) against a
                            private user config: what codestral/stats says is in force (none may widen).
  --concurrent-first-start  two servers started at once on a fresh model cache: both load, the GGUF is
                            whole (sha256), no temporary file is left.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
from lsprotocol import types

from benchmarks.lsp_client import Client, inline, insert, open_doc, plain, send_json, send_raw, start, stop
from benchmarks.measure import ROOT

IC = "textDocument/inlineCompletion"
HANG_GUARD = 60.0  # seconds without an answer counts as "not answered"
_ids = itertools.count(1)


def ic(uri: Any, line: Any, character: Any) -> dict[str, Any]:
    """Raw params (malformed on purpose, if wanted): sent with `send_raw`."""
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}


def typed_ic(uri: str, line: int, character: int) -> types.InlineCompletionParams:
    """The same, typed: what the pygls client's send_request_async needs."""
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))


async def answered(c: Client, message: dict[str, Any] | bytes, null_id: bool = False) -> bool:
    """Send one request or frame; True when an answer (result or error) comes back."""
    fut: Future[Any] = Future()
    if null_id:
        c.protocol._request_futures[None] = fut
        await send_raw(c, message)
    else:
        assert isinstance(message, dict)
        msg_id = f"s{next(_ids)}"
        c.protocol._request_futures[msg_id] = fut
        await send_raw(c, {**message, "id": msg_id})
    try:
        await asyncio.wait_for(asyncio.wrap_future(fut), HANG_GUARD)
    except TimeoutError:
        return False
    except Exception:  # an error answer is an answer
        pass
    return True


async def wait_loaded(c: Client, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while getattr(await c.protocol.send_request_async("codestral/stats", {}), "model", None) is None:
        if time.monotonic() > end:
            raise TimeoutError("the model did not load")
        await asyncio.sleep(0.2)


async def alive(c: Client) -> bool:
    return await answered(c, {"jsonrpc": "2.0", "method": "codestral/stats"})


async def bad_inputs(c: Client) -> dict[str, Any]:
    uri = "file:///stress/bad.py"
    open_doc(c, uri, "abc\ndef f():\n    return ")
    open_doc(c, "file:///stress/closed.py", "x = 1\n")
    await send_raw(c, {"jsonrpc": "2.0", "method": "textDocument/didClose",
                       "params": {"textDocument": {"uri": "file:///stress/closed.py"}}})
    requests: list[tuple[Any, Any]] = [
        (IC, ic(uri, -1, 0)), (IC, ic(uri, 0, -1)), (IC, ic(uri, 3, 0)), (IC, ic(uri, 2**31 - 1, 0)),
        (IC, ic(uri, 2**40, 0)), (IC, ic(uri, 0, 10**6)), (IC, ic(uri, 2, 10**6)),
        (IC, ic("file:///stress/nowhere.py", 0, 0)), (IC, ic("file:///stress/closed.py", 0, 0)),
        (IC, ic(uri, "1", 0)), (IC, ic(uri, 1, 2.5)), (IC, ic(uri, True, 0)), (IC, ic(7, 0, 0)),
        (IC, ic(None, 0, 0)), (IC, {"textDocument": {"uri": uri}}), (IC, [uri, 0, 0]), (IC, None), (IC, "x"),
        ("textDocument/completion", ic(uri, -1, 0)), ("textDocument/completion", ic(uri, 99, 0)),
        ("textDocument/completion", ic(uri, 0, 99)), ("codestral/noSuchMethod", {}), ("$/noSuchMethod", None),
        (5, {}), (["m"], {}), (None, {}),
        ("workspace/executeCommand", {"command": "nope"}),
        ("workspace/executeCommand", {"command": "codestral.accept"}),
        ("workspace/executeCommand", {"command": "codestral.accept", "arguments": [{"odd": 1}, 2]}),
        ("workspace/executeCommand", None), ("codestral/stats", [1, 2]), ("initialize", {"bad": True}),
    ]
    frames: list[bytes] = [
        b"{not json", b"", b"[]", b"[1, 2]", b'"a string"', b"42", b"null", b'{"jsonrpc": "2.0"}',
        b'{"jsonrpc": "2.0", "id": "u", "method": "codestral/stats", "params": "\xff\xfe"}',
        b'{"jsonrpc": "2.0", "id": {"an": "object"}, "method": "codestral/stats"}',
        b'{"jsonrpc": "2.0", "id": null, "method": "codestral/stats"}',
        b'{"jsonrpc": "2.0", "id": 1.5, "method": "codestral/stats"}',
    ]
    notifications: list[tuple[str, Any]] = [
        ("textDocument/didOpen", None), ("textDocument/didOpen", {"textDocument": {"uri": uri, "version": "v"}}),
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"range": 5}]}),
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": "text"}),
        ("textDocument/didChange", {"textDocument": {"uri": "file:///stress/never.py", "version": 2},
                                    "contentChanges": [{"text": "x"}]}),
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3}, "contentChanges": [{
            "range": {"start": {"line": 99, "character": 0}, "end": {"line": 120, "character": 9}}, "text": "#"}]}),
        ("textDocument/didClose", {"textDocument": {"uri": "file:///stress/never.py"}}),
        ("textDocument/didClose", {"textDocument": 5}), ("codestral/didPartiallyAccept", {"acceptedLength": "x"}),
        ("codestral/didPartiallyAccept", [1]), ("workspace/didChangeConfiguration", {"settings": {"maxTokens": -1}}),
        ("$/cancelRequest", {"id": "nothing"}), ("$/cancelRequest", {"id": [1]}), ("noSuch/notification", {"a": 1}),
        ("$/setTrace", {"value": "loud"}),
    ]
    ok_requests = 0
    for method, params in requests:
        ok_requests += await answered(c, {"jsonrpc": "2.0", "method": method, "params": params})
    ok_frames = 0
    for frame in frames:
        if frame == b"":
            await send_raw(c, frame)  # an empty body: nothing to answer, must not break the stream
            ok_frames += await alive(c)
            continue
        ok_frames += await answered(c, frame, null_id=True)  # no readable id: the answer's id is null
    for method, params in notifications:
        await send_raw(c, {"jsonrpc": "2.0", "method": method, "params": params})
    still = await alive(c) and c._server is not None and c._server.returncode is None
    return {"tried": len(requests) + len(frames) + len(notifications), "requests": len(requests),
            "requests_answered": ok_requests, "frames": len(frames), "frames_answered": ok_frames,
            "notifications": len(notifications), "alive_after": bool(still)}


async def big_inputs(c: Client) -> dict[str, Any]:
    line = "    total = compute(alpha, beta) + 😀 + '中文'  # note\n"
    big = "def f():\n" + line * (2_000_000 // len(line))
    long_line = "x = [" + ", ".join(str(i) for i in range(30_000)) + "]"
    cases = {
        "2 MB document, last line": ("big.py", big, big.count("\n"), 0),
        "2 MB document, middle": ("big.py", None, big.count("\n") // 2, 999),  # past the end: the line's end
        "100k-character line, at its end": ("long.py", f"a = 1\n{long_line}\nb = ", 1, len(long_line)),
        "100k-character line, middle": ("long.py", None, 1, 50_000),
        "NUL bytes": ("nul.py", "x = '\x00\x00'\ny = \x00", 1, 5),
        "CRLF": ("crlf.py", "def f(x):\r\n    return \r\n", 1, 11),
        "CRLF, empty line in a block (multi-line)": ("crlf_block.py", "def f(x):\r\n    if x:\r\n        \r\n", 2, 8),
        "emoji and CJK": ("uni.py", "s = '😀😀中文'\nt = s + ", 1, 8),
    }
    out: dict[str, Any] = {}
    for name, (file, text, line_no, character) in cases.items():
        uri = f"file:///stress/{file}"
        if text is not None:
            open_doc(c, uri, text)
        t0 = time.perf_counter()
        ok = await answered(c, {"jsonrpc": "2.0", "method": IC, "params": ic(uri, line_no, character)})
        out[name] = {"answered": ok, "ms": round((time.perf_counter() - t0) * 1000, 1)}
    # Keystrokes into the 2 MB document: each one a didChange and a request.
    last = big.count("\n")
    times = []
    for i, ch in enumerate("value = compute(x)"):
        insert(c, "file:///stress/big.py", 2 + i, last, i, ch)
        t0 = time.perf_counter()
        await inline(c, "file:///stress/big.py", last, i + 1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    out["2 MB document, typing (p50 per key)"] = {"answered": True, "ms": round(times[len(times) // 2], 1)}
    return out


class Listener:
    """A loopback socket standing for an attacker's endpoint: counts the connections it gets."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


async def hostile(c: Client) -> dict[str, Any]:
    from codestral_ls.engine.serving.discovery import DaemonInfo, write_daemon_file

    listener = Listener()
    try:
        settings = {"backend": "openai", "endpoint": listener.url, "remoteModel": "m", "trustRemoteCode": True,
                    "model": "evil/model", "allowDownload": True, "apiKeyEnv": "HOME", "maxTokens": 16}
        shown = len(c.messages)
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"codestral": settings}))
        uri = "file:///stress/hostile.py"
        open_doc(c, uri, "def add(a, b):\n    return ")
        answered_locally = True
        try:
            await asyncio.wait_for(inline(c, uri, 1, 11), HANG_GUARD)
        except Exception:
            answered_locally = False
        await asyncio.sleep(0.2)
        refused = sum("never from editor or workspace settings" in m.message for m in c.messages[shown:])
        # A planted discovery file: right owner but readable and writable by others, naming the listener.
        with tempfile.TemporaryDirectory(prefix="codestral-stress-planted-") as cache:
            file = Path(cache) / "engine.serve" / "daemon.json"
            write_daemon_file(file, DaemonInfo("127.0.0.1", int(listener.url.rsplit(":", 1)[1]), "t", os.getpid()))
            file.chmod(0o666)
            d, _ = await start(["--engine", "auto", "--log-level", "warning"], env={"CODESTRAL_LS_CACHE": cache})
            try:
                open_doc(d, uri, "def add(a, b):\n    return ")
                try:
                    await asyncio.wait_for(inline(d, uri, 1, 11), HANG_GUARD)
                    planted_error = ""
                except Exception as exc:
                    planted_error = str(exc)
            finally:
                await stop(d)
        return {"settings_tried": len(settings) - 1, "refused_with_message": refused,
                "answered_by_the_local_model": answered_locally,
                "planted_discovery_file_error": planted_error[:300],
                "listener_connections": listener.connections, "alive_after": await alive(c)}
    finally:
        listener.close()


async def burst(c: Client, n: int = 200) -> dict[str, Any]:
    uri = "file:///stress/burst.py"
    open_doc(c, uri, "def f(x):\n    return \n")
    await inline(c, uri, 1, 11)
    futures = []
    t0 = time.perf_counter()
    for i in range(n):
        insert(c, uri, 2 + i, 1, 11 + i, "x+"[i % 2])
        futures.append(c.protocol.send_request_async(IC, typed_ic(uri, 1, 12 + i), msg_id=f"burst-{i}"))
        if i % 10 == 5:
            c.protocol.notify("$/cancelRequest", types.CancelParams(id=f"burst-{i - 1}"))
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), HANG_GUARD * 5)
    drain_s = time.perf_counter() - t0
    cancelled = sum(isinstance(r, BaseException) for r in results)
    empty = sum(not isinstance(r, BaseException) and not r.items for r in results)
    t1 = time.perf_counter()
    after = await inline(c, uri, 1, 11 + n)
    return {"keystrokes": n, "answered": len(results), "drain_s": round(drain_s, 2),
            "cancelled_by_client": cancelled, "superseded_or_empty": empty,
            "last_has_suggestion": bool(not isinstance(results[-1], BaseException) and results[-1].items),
            "next_request_ms": round((time.perf_counter() - t1) * 1000, 1), "next_answered": after is not None}


def corpus() -> str:
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "server").glob("*.py")))
    return text.replace("\r", "")


async def soak(c: Client, keystrokes: int, per_doc: int = 2000, await_every: int = 8) -> dict[str, Any]:
    source = corpus()
    proc = psutil.Process(c._server.pid)  # type: ignore[union-attr]
    samples: list[tuple[int, float]] = []
    pending: list[asyncio.Future[Any]] = []
    uri, line, col, version, doc_no, pos = "", 0, 0, 1, 0, 0
    errors = 0
    t0 = time.perf_counter()
    for k in range(keystrokes):
        if k % per_doc == 0:
            if uri and doc_no % 2 == 0:
                c.text_document_did_close(types.DidCloseTextDocumentParams(
                    text_document=types.TextDocumentIdentifier(uri=uri)))
            doc_no += 1
            uri = f"file:///stress/soak{doc_no}.py"
            open_doc(c, uri, "")
            line, col, version = 0, 0, 1
        ch = source[pos % len(source)]
        pos += 1
        version += 1
        insert(c, uri, version, line, col, ch)
        if ch == "\n":
            line, col = line + 1, 0
        else:
            col += 2 if ord(ch) > 0xFFFF else 1
        pending.append(asyncio.ensure_future(c.protocol.send_request_async(IC, typed_ic(uri, line, col))))
        if k % await_every == await_every - 1:
            results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), HANG_GUARD)
            errors += sum(isinstance(r, BaseException) for r in results)
            pending.clear()
        if k % 500 == 0 or k == keystrokes - 1:
            samples.append((k, proc.memory_info().rss / 2**20))
    results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), HANG_GUARD)
    errors += sum(isinstance(r, BaseException) for r in results)
    elapsed = time.perf_counter() - t0
    stats = await c.protocol.send_request_async("codestral/stats", None)
    rss = [mb for _, mb in samples]
    warm = next((mb for k, mb in samples if k >= min(1000, keystrokes // 5)), rss[0])
    half = next((mb for k, mb in samples if k >= keystrokes // 2), rss[-1])
    return {"keystrokes": keystrokes, "documents": doc_no, "seconds": round(elapsed, 1),
            "errors": errors, "rss_mb_start": round(rss[0], 1), "rss_mb_after_warmup": round(warm, 1),
            "rss_mb_half": round(half, 1), "rss_mb_end": round(rss[-1], 1), "rss_mb_max": round(max(rss), 1),
            "rss_samples": [(k, round(mb, 1)) for k, mb in samples],
            "requests": stats.requests, "typed_through_entries": stats.typed_through_entries,
            "kv_entries": stats.kv_cache.entries, "kv_bytes": stats.kv_cache.bytes,
            "latency_samples_kept": stats.latency_ms.count}


# -- issue 24, round 3: where options and models come from --------------------------------------------


async def shadowed_model(model: Path) -> dict[str, Any]:
    """A cloned repository holding a folder named like the user's hub model (a loadable model, with a
    `trust_remote_code` module that leaves a marker when imported), the server started in it (as eglot,
    Neovim and LSP4IJ do) with `--model <that hub id> --trust-remote-code`, offline: the folder must not
    load, nor its code run, with or without --allow-download."""
    import shutil

    hub_id = "mistralai/Codestral-22B-v0.1"
    out: dict[str, Any] = {"hub_id": hub_id}
    with tempfile.TemporaryDirectory(prefix="codestral-stress-shadow-") as tmp:
        repo = Path(tmp) / "repo"
        shadow = repo / hub_id
        shutil.copytree(model, shadow)
        marker = Path(tmp) / "remote-code-ran"
        config = json.loads((shadow / "config.json").read_text())
        config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
        (shadow / "config.json").write_text(json.dumps(config))
        (shadow / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(Path(tmp) / "hf"), "CODESTRAL_LS_CONFIG": str(Path(tmp) / "none")}
        for label, extra in (("no_download", []), ("allow_download", ["--allow-download"])):
            c, _ = await start(["--model", hub_id, "--trust-remote-code", "--runner", "torch", "--device", "cpu",
                                "--log-level", "warning", *extra], env=env, cwd=repo)
            try:
                stats = await wait_model(c)
                source = (stats.get("model") or {}).get("source") or ""
                out[label] = {"loaded": source, "error": ((stats.get("model") or {}).get("error") or "")[:160],
                              "loaded_the_shadow": str(shadow) in source or source == hub_id}
            finally:
                await stop(c)
        out["remote_code_ran"] = marker.exists()
    return out


async def wait_model(c: Client, timeout: float = 600) -> dict[str, Any]:
    """codestral/stats once the model loaded or failed (`model` has `source` or `error`)."""
    end = time.monotonic() + timeout
    while True:
        stats = plain(await c.protocol.send_request_async("codestral/stats", {}))
        if (stats.get("model") or {}).get("source") or (stats.get("model") or {}).get("error"):
            return stats
        if time.monotonic() > end:
            raise TimeoutError("the model neither loaded nor failed")
        await asyncio.sleep(0.1)


# What a workspace's settings try (eglot .dir-locals.el, LSP4IJ project settings), against a user config
# that is private and bounded.
USER_CONFIG = ('retrieval = ["none"]\ndisabledLanguages = ["plaintext"]\nlogDocumentText = false\n'
               "readTimeoutMs = 2000\nrequestTimeoutMs = 5000\nconnectTimeoutMs = 1000\n")
WIDENING: list[tuple[str, Any]] = [
    ("retrieval", ["chunks", "definitions", "edits"]), ("disabledLanguages", []), ("secretFiles", []),
    ("logDocumentText", True), ("requestTimeoutMs", 0), ("readTimeoutMs", 0), ("connectTimeoutMs", 0),
    ("extraContextTokens", 100000), ("candidates", 1000), ("kvBudgetMb", 10**6), ("typedCacheEntries", 10**8),
    ("maxLines", 0), ("maxTokens", 10**6), ("prefixTokens", 10**7), ("threads", 4096),
]


async def workspace_settings(model: Path) -> dict[str, Any]:
    """Each widening workspace setting of issue 24 item 5, over initializationOptions and over
    didChangeConfiguration: what `codestral/stats` says is in force afterwards (none may widen)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="codestral-stress-settings-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(USER_CONFIG)
        config.chmod(0o600)
        env = {"CODESTRAL_LS_CONFIG": str(config)}
        c, _ = await start(["--model", str(model), "--device", "cpu", "--log-level", "warning"],
                           init_options=dict(WIDENING[:4]), env=env)
        try:
            first = plain(await c.protocol.send_request_async("codestral/stats", {}))["options"]
            user = dict(first)
            for key, value in WIDENING:
                shown = len(c.messages)
                c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
                    settings={"codestral": {key: value}}))
                await asyncio.sleep(0.05)
                now = plain(await c.protocol.send_request_async("codestral/stats", {}))["options"]
                out[key] = {"tried": value, "in_force": now[key], "took_effect": now[key] == value,
                            "said": any(key in m.message for m in c.messages[shown:])}
            out["_init_options"] = {k: user[k] for k, _ in WIDENING[:4]}
            out["_alive"] = await alive(c)
        finally:
            await stop(c)
    return out


async def concurrent_first_start() -> dict[str, Any]:
    """Two servers started at once on a fresh model cache (the embedded model assembled and converted
    for the first time by both): both must load, and the cached GGUF must be whole (size and sha256)."""
    import hashlib

    from codestral_ls.engine.models import catalog

    packaged = catalog.lookup(None)
    with tempfile.TemporaryDirectory(prefix="codestral-stress-cache-") as cache:
        env = {"CODESTRAL_LS_CACHE": cache, "CODESTRAL_LS_CONFIG": str(Path(cache) / "none")}
        t0 = time.perf_counter()
        started = await asyncio.gather(*(start(["--device", "cpu", "--log-level", "warning"], env=env)
                                         for _ in range(2)))
        clients = [c for c, _ in started]
        try:
            stats = await asyncio.gather(*(wait_model(c) for c in clients))
            load_s = round(time.perf_counter() - t0, 1)
            answers = []
            for i, c in enumerate(clients):
                uri = f"file:///stress/first-start-{i}.py"
                open_doc(c, uri, "def add(a, b):\n    return ")
                answers.append(await asyncio.wait_for(inline(c, uri, 1, 11), HANG_GUARD))
        finally:
            for c in clients:
                await stop(c)
        gguf = Path(cache) / packaged.gguf_name
        digest = hashlib.sha256(gguf.read_bytes()).hexdigest() if gguf.is_file() else ""
        leftovers = [p.name for p in Path(cache).iterdir() if p.name.endswith((".partial", ".tmp"))]
        return {"loaded": [bool((s.get("model") or {}).get("source")) for s in stats],
                "errors": [(s.get("model") or {}).get("error") for s in stats], "both_loaded_s": load_s,
                "answered": [bool(a and a.items) for a in answers], "gguf_size_ok": gguf.is_file()
                and gguf.stat().st_size == packaged.size, "gguf_sha256_ok": digest == packaged.sha256,
                "leftover_temp_files": leftovers}


def print_round3(r: dict[str, Any]) -> None:
    if "shadowed_model" in r:
        s = r["shadowed_model"]
        for label in ("no_download", "allow_download"):
            v = s[label]
            print(f"shadowed hub id {s['hub_id']} ({label}): loaded {v['loaded'] or 'nothing'}; loaded the "
                  f"repository's folder: {v['loaded_the_shadow']}; error: {v['error']}")
        print(f"  the repository's remote code ran: {s['remote_code_ran']}")
    if "workspace_settings" in r:
        w = r["workspace_settings"]
        print(f"workspace settings (user config private; initializationOptions then didChangeConfiguration); "
              f"in force after initializationOptions: {w['_init_options']}")
        for key, v in w.items():
            if not key.startswith("_"):
                print(f"  {key:<20} tried {str(v['tried']):<34} in force {str(v['in_force'])[:40]:<40} "
                      f"took effect: {v['took_effect']}  said: {v['said']}")
    if "concurrent_first_start" in r:
        f = r["concurrent_first_start"]
        print(f"concurrent first start on a fresh cache: loaded {f['loaded']} in {f['both_loaded_s']} s "
              f"(errors {f['errors']}), answered {f['answered']}; GGUF size ok {f['gguf_size_ok']}, sha256 ok "
              f"{f['gguf_sha256_ok']}; temp files left: {f['leftover_temp_files']}")


def round3_ok(r: dict[str, Any]) -> bool:
    s, w, f = r.get("shadowed_model"), r.get("workspace_settings"), r.get("concurrent_first_start")
    return ((s is None or (not s["remote_code_ran"]
                           and not any(s[k]["loaded_the_shadow"] for k in ("no_download", "allow_download"))))
            and (w is None or not any(v["took_effect"] for k, v in w.items() if not k.startswith("_")))
            and (f is None or (all(f["loaded"]) and f["gguf_sha256_ok"] and not f["leftover_temp_files"])))
class RecordingApi:
    """A tiny OpenAI-style completions endpoint on loopback that records every request body."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                send_json(self, {"choices": [{"text": " 1", "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def leaked_bytes(secret: str, bodies: list[bytes], piece: int = 8) -> int:
    """The longest piece of `secret` (at least `piece` characters) found in any body, 0 if none."""
    text = b"\n".join(bodies).decode("utf-8", "replace")
    text += json.dumps(text)  # escaped forms too
    longest = 0
    for i in range(len(secret) - piece + 1):
        n = piece
        while i + n <= len(secret) and secret[i:i + n] in text:
            longest = max(longest, n)
            n += 1
    return longest


async def secret(folder: Path) -> dict[str, Any]:
    """A secret document with a remote backend the user configured: nothing of it leaves."""
    key = "sk-proj-" + os.urandom(18).hex()
    env_text = f"OPENAI_API_KEY={key}\nAWS_SECRET_ACCESS_KEY={key[::-1]}\n"
    project = folder / "secret-project"
    project.mkdir()
    (project / ".env").write_text(env_text)
    (project / "settings.py").symlink_to(project / ".env")
    api = RecordingApi()
    c, _ = await start(["--backend", "openai", "--endpoint", api.url, "--remote-model", "codestral-22b",
                        "--log-level", "warning"],
                       experimental={"codestral": {"status": True, "suggestionUpdates": True}})
    try:
        asked = 0
        for uri, text in (((project / ".env").as_uri(), env_text), ((project / "settings.py").as_uri(), env_text)):
            open_doc(c, uri, text, "plaintext")
            c.protocol.notify("codestral/didFocus", {"textDocument": {"uri": uri},
                                                     "position": {"line": 1, "character": 3}})
            for k, ch in enumerate("XY"):  # typed into, asked after each key
                insert(c, uri, 2 + k, 2, k, ch)
                await inline(c, uri, 2, k + 1)
                asked += 1
            await inline(c, uri, 0, 15)
            asked += 1
        open_doc(c, "untitled:Untitled-1", f"client = OpenAI(api_key='{key}')\n", "python")
        await asyncio.sleep(1.0)  # the pauses after didOpen and the edits: warm-ups would go now
        main = (project / "main.py").as_uri()
        open_doc(c, main, "from settings import OPENAI_API_KEY\n\nclient = OpenAI(api_key=\n")
        control = await inline(c, main, 2, 24)
        await asyncio.sleep(0.5)
    finally:
        await stop(c)
        api.close()
    statuses = [n["message"] for n in c.notifications.get("codestral/status", [])]
    return {"secret_requests": asked, "endpoint_requests": len(api.bodies),
            "control_answered": bool(control and control.items),
            "key_bytes_at_endpoint": leaked_bytes(key, api.bodies) + leaked_bytes(key[::-1], api.bodies),
            "status_says_secret": sum("secret" in m for m in statuses)}


async def timed(c: Client, places: list[tuple[str, int, int]], pause: float = 0.0) -> list[float]:
    """Ask at each place in turn: each answer's latency in ms."""
    out = []
    for uri, line, character in places:
        t = time.perf_counter()
        await inline(c, uri, line, character)
        out.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(pause)
    return out


async def pathological(c: Client) -> dict[str, Any]:
    """Pathological documents open and asked about while an ordinary one is asked about too."""
    ordinary = "file:///stress/ordinary.py"
    open_doc(c, ordinary, "def area(width, height):\n    return \n")
    nest = 20_000
    minified = "var a=" + ",".join(f"f{i}(x)" for i in range(200_000)) + ";"  # 1.3 MB on one line
    ten = "\n".join(f"def function_{i}(value):\n    return value + {i}" for i in range(250_000))  # ~10 MB
    cases = {
        f"{nest} nested brackets": ("nested.py", "x = " + "[" * nest + "1, " + "]" * nest + "\n", 0, 4 + nest + 3),
        "1.3 MB minified line": ("min.js", minified + "\n", 0, len(minified) // 2),
        "10 MB document": ("ten.py", ten + "\n\ndef run(value):\n    return \n", ten.count("\n") + 3, 11),
        "100 kB of {": ("braces.py", "import os\n" + "{" * 100_000 + "\n", 1, 50_000),
    }
    out: dict[str, Any] = {}
    for name, (file, text, line, character) in cases.items():
        uri = f"file:///stress/{file}"
        t0 = time.perf_counter()
        open_doc(c, uri, text, "javascript" if file.endswith(".js") else "python")
        own_ms, ordinary_ms = await asyncio.gather(
            timed(c, [(uri, line, max(0, character - k)) for k in range(3)]),
            timed(c, [(ordinary, 1, 11)] * 6, pause=0.05))
        out[name] = {"ordinary_max_ms": round(max(ordinary_ms), 1),
                     "ordinary_p50_ms": round(sorted(ordinary_ms)[len(ordinary_ms) // 2], 1),
                     "own_max_ms": round(max(own_ms), 1), "seconds": round(time.perf_counter() - t0, 1)}
        c.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    out["rss_mb"] = round(psutil.Process(c._server.pid).memory_info().rss / 2**20, 1) if c._server else None
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    wanted = args.phases.split(",")
    report: dict[str, Any] = {"model": str(args.model), "first_answer_s": None}
    if "secret" in wanted:
        with tempfile.TemporaryDirectory(prefix="codestral-stress-secret-") as tmp:
            report["secret"] = await secret(Path(tmp))
        wanted.remove("secret")
    if not wanted:
        return report
    server_args = ["--model", str(args.model), "--device", "cpu", "--log-level", "warning"]
    c, _ = await start(server_args)
    try:
        open_doc(c, "file:///stress/warm.py", "def f(x):\n    return ")
        t0 = time.perf_counter()
        await wait_loaded(c)  # a loading model answers empty at once: wait for it, not for an answer
        await asyncio.wait_for(inline(c, "file:///stress/warm.py", 1, 11), 600)
        load_s = time.perf_counter() - t0
        report["first_answer_s"] = round(load_s, 1)
        phases = {"patho": ("pathological", lambda: pathological(c)),
                  "bad": ("bad_inputs", lambda: bad_inputs(c)), "big": ("big_inputs", lambda: big_inputs(c)),
                  "hostile": ("hostile", lambda: hostile(c)), "burst": ("burst", lambda: burst(c, args.burst)),
                  "soak": ("soak", lambda: soak(c, args.keystrokes))}
        for phase in wanted:
            key, step = phases[phase]
            report[key] = await step()
        if args.shadowed_model:
            report["shadowed_model"] = await shadowed_model(args.model)
        if args.workspace_settings:
            report["workspace_settings"] = await workspace_settings(args.model)
        if args.concurrent_first_start:
            report["concurrent_first_start"] = await concurrent_first_start()
        report["alive_at_end"] = await alive(c)
    finally:
        await stop(c)
    return report


def print_report(r: dict[str, Any]) -> None:
    if "secret" in r:
        s = r["secret"]
        print(f"secret: {s['secret_requests']} requests on a .env and a symlink to it, remote backend; requests at "
              f"the endpoint: {s['endpoint_requests']} (the control answered: {s['control_answered']}); bytes of "
              f"the key at the endpoint: {s['key_bytes_at_endpoint']}; status said secret: {s['status_says_secret']}")
    if r["first_answer_s"] is None:
        return
    print(f"model: {r['model']} (first answer after {r['first_answer_s']} s)")
    if "pathological" in r:
        print("pathological documents open (an ordinary document asked meanwhile):")
        for name, v in r["pathological"].items():
            if isinstance(v, dict):
                print(f"  {name:<24} ordinary doc: max {v['ordinary_max_ms']} ms, p50 {v['ordinary_p50_ms']} ms; "
                      f"its own request: max {v['own_max_ms']} ms; {v['seconds']} s in all")
        print(f"  server RSS after: {r['pathological']['rss_mb']} MB")
    if "bad_inputs" in r:
        _print_bad_and_big(r)
    if "hostile" in r:
        h = r["hostile"]
        print(f"hostile: {h['settings_tried']} dangerous workspace settings, {h['refused_with_message']} refused "
              f"with a message, answered by the local model: {h['answered_by_the_local_model']}; planted discovery "
              f"file: {h['planted_discovery_file_error'] or 'NOT REFUSED'}; connections to the attacker's "
              f"endpoint: {h['listener_connections']}")
    if "burst" in r:
        _print_burst_and_soak(r)
    print_round3(r)
    print(f"alive at the end: {r['alive_at_end']}")


def _print_bad_and_big(r: dict[str, Any]) -> None:
    b = r["bad_inputs"]
    print(f"bad inputs tried: {b['tried']} ({b['requests']} requests, {b['frames']} frames, "
          f"{b['notifications']} notifications); answered: {b['requests_answered']}/{b['requests']} requests, "
          f"{b['frames_answered']}/{b['frames']} frames; server alive after: {b['alive_after']}")
    print("big inputs:")
    for name, v in r.get("big_inputs", {}).items():
        print(f"  {name:<38} answered: {v['answered']}  {v['ms']} ms")


def _print_burst_and_soak(r: dict[str, Any]) -> None:
    u = r["burst"]
    print(f"burst: {u['keystrokes']} keystrokes, {u['answered']} answered, drained in {u['drain_s']} s "
          f"({u['cancelled_by_client']} cancelled by the client, {u['superseded_or_empty']} superseded or empty, "
          f"newest has a suggestion: {u['last_has_suggestion']}); next request {u['next_request_ms']} ms")
    s = r["soak"]
    print(f"soak: {s['keystrokes']} keystrokes in {s['seconds']} s over {s['documents']} documents, "
          f"{s['errors']} errors; server RSS {s['rss_mb_start']} MB at start, {s['rss_mb_after_warmup']} MB after "
          f"warm-up, {s['rss_mb_half']} MB at half, {s['rss_mb_end']} MB at the end (max {s['rss_mb_max']} MB)")
    print(f"      caches at the end: typed-through {s['typed_through_entries']} entries, KV {s['kv_entries']} "
          f"entries ({s['kv_bytes'] / 2**20:.1f} MiB), latency samples {s['latency_samples_kept']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model folder (default: the tests' tiny random model, built now)")
    p.add_argument("--keystrokes", type=int, default=10_000, help="soak length (default 10000)")
    p.add_argument("--burst", type=int, default=200, help="burst size (default 200)")
    p.add_argument("--phases", default="bad,big,hostile,burst,soak,secret,patho",
                   help="which phases, in order (default: all): bad, big, hostile, burst, soak, secret, patho")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--shadowed-model", action="store_true", help="also: a hub id shadowed by a folder in the "
                   "server's working directory must not load (issue 24 item 2)")
    p.add_argument("--workspace-settings", action="store_true", help="also: each widening workspace setting "
                   "(issue 24 item 5), and what is in force after it")
    p.add_argument("--concurrent-first-start", action="store_true", help="also: two servers started at once on "
                   "a fresh model cache (the embedded model, ~0.5 GB written)")
    args = p.parse_args(argv)
    os.environ.setdefault("CODESTRAL_TEST_QUIET_SERVER", "1")  # the server's log is kept, not echoed
    with tempfile.TemporaryDirectory(prefix="codestral-stress-") as tmp:
        if args.model is None and args.phases != "secret":  # the secret phase has a remote backend
            from benchmarks.tiny_model import build_tiny_model

            args.model = build_tiny_model(Path(tmp) / "tiny")
        report = asyncio.run(run(args))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    secret_, patho = report.get("secret"), report.get("pathological")
    if (secret_ is not None and (secret_["key_bytes_at_endpoint"] or not secret_["control_answered"])) or \
            (patho is not None and any(v["ordinary_max_ms"] >= 1000 for v in patho.values() if isinstance(v, dict))):
        return 1
    bad, hostile_ = report.get("bad_inputs"), report.get("hostile")
    ok = ((bad is None or (bad["requests_answered"] == bad["requests"] and bad["frames_answered"] == bad["frames"]))
          and (hostile_ is None or (hostile_["listener_connections"] == 0
                                    and hostile_["refused_with_message"] == hostile_["settings_tried"]
                                    and bool(hostile_["planted_discovery_file_error"])))
          and round3_ok(report) and report.get("alive_at_end", True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
