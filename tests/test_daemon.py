"""The shared engine daemon: its wire protocol in-process (a stand-in worker), then for real: the daemon
with the tiny model and two LSP servers that send it their requests and hold no model themselves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, FimResult, StopRule
from codestral_ls.engine.serving.daemon import EngineDaemon
from codestral_ls.engine.serving.daemon_client import DaemonBackend
from codestral_ls.engine.serving.discovery import DaemonInfo, daemon_file, read_daemon_file, write_daemon_file
from codestral_ls.engine.serving.wire import request_from_wire, to_wire
from codestral_ls.server.options import Options
from pygls.exceptions import JsonRpcException

from benchmarks.lsp_client import ROOT, inline, insert, open_doc, start, stop

TOKEN = "test-token-abc"


class FakeWorker:
    """Answers "<doc>|<prefix><forced middle>" at once, or holds requests whose prefix says "hold" until cancelled.

    Supersedes per document like EngineWorker.
    """

    def __init__(self) -> None:
        self.loaded = threading.Event()
        self.loaded.set()
        self.load_error: str | None = None
        self.seen: list[FimRequest] = []
        self.prefetched: list[FimRequest] = []
        self.answer_after = 0.0
        self._lock = threading.Lock()
        self._held: dict[str, tuple[FimRequest, Future[FimResult]]] = {}

    def prefetch(self, req: FimRequest) -> None:
        self.prefetched.append(req)

    def submit(self, req: FimRequest) -> Future[FimResult]:
        fut: Future[FimResult] = Future()
        self.seen.append(req)
        with self._lock:
            old = self._held.pop(req.doc, None)
        if old is not None:
            old[0].cancel.cancel()
        if "hold" in req.prefix:
            with self._lock:
                self._held[req.doc] = (req, fut)
            req.cancel.on_cancel(lambda: fut.set_exception(Cancelled("cancelled")) if not fut.done() else None)
            return fut

        def answer() -> None:
            time.sleep(self.answer_after)
            fut.set_result(FimResult(text=f"{req.doc}|{req.prefix}{req.forced_middle}", finish="stop",
                                     prompt_tokens=7))

        threading.Thread(target=answer, daemon=True).start()
        return fut


@pytest.fixture
def daemon(tmp_path, monkeypatch) -> Iterator[tuple[EngineDaemon, FakeWorker]]:
    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CODESTRAL_LS_ENGINE_TOKEN", raising=False)
    worker = FakeWorker()
    httpd = EngineDaemon(("127.0.0.1", 0), worker, TOKEN)
    write_daemon_file(daemon_file(), DaemonInfo("127.0.0.1", httpd.server_address[1], TOKEN, os.getpid()))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd, worker
    httpd.shutdown()
    httpd.server_close()


def client(endpoint: str = "auto", **kw: Any) -> DaemonBackend:
    b = DaemonBackend(Options(backend="daemon", endpoint=endpoint, **kw))
    assert b.loaded.wait(10)
    return b


def req(doc: str = "file:///w/a.py", prefix: str = "x = ", **kw: Any) -> FimRequest:
    return FimRequest(doc=doc, prefix=prefix, suffix="\n", stop=StopRule(single_line=True), **kw)


def wait_for(cond: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


# -- in-process: the wire protocol ----------------------------------------------------------------


def test_wire_format_round_trip_and_validation():
    r = FimRequest(doc="d", prefix="p", suffix="s", forced_middle="f", extra_files=(("a.py", "x"),), max_tokens=9,
                   stop=StopRule(single_line=False, max_lines=3, block_indent=4, stop_strings=("#",),
                                 line_comment="//"),
                   background=False, heal=False, avoid=("return x",))
    back = request_from_wire(json.loads(json.dumps(to_wire(r))))
    assert (back.doc, back.prefix, back.suffix, back.forced_middle, back.extra_files, back.max_tokens, back.stop,
            back.background, back.heal, back.avoid) == (
        "d", "p", "s", "f", (("a.py", "x"),), 9, r.stop, False, False, ("return x",))
    # Derived from the dataclasses: every field but the local cancel token crosses, new ones included.
    from dataclasses import fields

    assert set(to_wire(r)) == {f.name for f in fields(FimRequest)} - {"cancel"}
    assert set(to_wire(r)["stop"]) == {f.name for f in fields(StopRule)}
    deadline = time.monotonic() + 0.25  # a monotonic instant goes as "seconds from now"
    wired = to_wire(FimRequest(doc="d", prefix="", suffix="", stop=StopRule(line_deadline=deadline)))
    assert 0 < wired["stop"]["line_deadline"] <= 0.25
    assert abs(request_from_wire(wired).stop.line_deadline - deadline) < 0.05
    for bad in ({"doc": 1, "prefix": "", "suffix": ""}, {"prefix": "", "suffix": ""},
                {"doc": "", "prefix": "", "suffix": "", "stop": {"max_lines": "3"}},
                {"doc": "", "prefix": "", "suffix": "", "extra_files": [["a.py"]]},
                {"doc": "", "prefix": "", "suffix": "", "cancel": True},
                {"doc": "", "prefix": "", "suffix": "", "avoid": [1]},
                {"doc": "", "prefix": "", "suffix": "", "max_tokens": True},
                {"doc": "", "prefix": "", "suffix": "", "max_tokens": 10**6}):
        with pytest.raises(ValueError):
            request_from_wire(bad)


def test_discovery_file_is_private(daemon):
    httpd, _ = daemon
    path = daemon_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    info = read_daemon_file(path)
    assert info is not None and info.token == TOKEN and info.url == httpd.url


def test_a_planted_discovery_file_is_not_trusted(daemon, monkeypatch):
    """Another local user (or a careless chmod) must not be able to point our requests (the user's
    code) at their own server: the file and its folder must be ours and private, not a symlink."""
    path = daemon_file()
    good = read_daemon_file(path)
    planted = DaemonInfo("127.0.0.1", 9, "their-token", os.getpid())

    def refused(match: str) -> None:
        with pytest.raises(ValueError, match=match):
            read_daemon_file(path)
        b = client()
        try:
            with pytest.raises(EngineError, match=match):
                b.submit(req()).result(10)
        finally:
            b.stop()

    write_daemon_file(path, planted)
    os.chmod(path, 0o644)
    refused("open to other users")
    os.chmod(path, 0o600)
    os.chmod(path.parent, 0o777)
    refused("open to other users")
    os.chmod(path.parent, 0o700)
    elsewhere = path.with_name("elsewhere.json")
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    refused("symlink")
    path.unlink()
    elsewhere.rename(path)
    if os.getuid() == 0:  # as root the owner check can be tried for real
        os.chown(path, 65534, 65534)
        refused("belongs to uid 65534")
        os.chown(path, 0, 0)
    write_daemon_file(path, good)
    assert read_daemon_file(path) == good


def test_another_users_process_is_not_our_daemon(monkeypatch):
    from codestral_ls.engine.serving.discovery import pid_alive

    def kill(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")  # what os.kill says for another user's pid

    assert pid_alive(os.getpid())
    monkeypatch.setattr(os, "kill", kill)
    assert not pid_alive(os.getpid())


def test_connections_that_never_authenticate_cannot_hold_the_daemon(daemon):
    httpd, worker = daemon
    httpd.auth_deadline_s = 0.5
    idle = [socket.create_connection(httpd.server_address[:2], timeout=5) for _ in range(3)]
    idle[0].sendall(b"POST /v1/fim HTTP/1.0\r\n")  # a request line, then nothing
    t0 = time.monotonic()
    for sock in idle:
        assert sock.recv(1) == b""  # hung up on
    assert time.monotonic() - t0 < 3
    b = client()
    try:
        assert b.submit(req()).result(10).text.endswith("|x = ")
    finally:
        b.stop()
    for sock in idle:
        sock.close()


def test_handler_threads_are_bounded(daemon):
    httpd, worker = daemon
    httpd.handlers = threading.BoundedSemaphore(2)
    held = [socket.create_connection(httpd.server_address[:2], timeout=5) for _ in range(2)]
    wait_for(lambda: httpd.handlers._value == 0)  # both handlers taken
    extra = socket.create_connection(httpd.server_address[:2], timeout=5)
    assert extra.recv(1) == b""  # no thread for it: closed at once
    assert httpd.counters["turned_away"] == 1
    for sock in held + [extra]:
        sock.close()
    wait_for(lambda: httpd.handlers._value == 2)


def test_a_wrong_or_missing_token_is_refused(daemon, monkeypatch):
    httpd, worker = daemon
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = urllib.request.Request(httpd.url + "/v1/fim", data=b"{}", headers=headers, method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(r, timeout=10)
        assert err.value.code == 401
    assert not worker.seen
    monkeypatch.setenv("CODESTRAL_LS_ENGINE_TOKEN", "wrong")
    b = client(httpd.url)
    try:
        with pytest.raises(EngineError, match="refused the token .HTTP 401") as err:
            b.submit(req()).result(10)
        assert "wrong" not in str(err.value)
    finally:
        b.stop()
    # An explicit URL with no token in the environment takes the discovery file's token.
    monkeypatch.delenv("CODESTRAL_LS_ENGINE_TOKEN")
    b = client(httpd.url.replace("127.0.0.1", "localhost"))
    try:
        assert b.submit(req(forced_middle="1")).result(10).text.endswith("|x = 1")
    finally:
        b.stop()


def test_documents_are_namespaced_per_client(daemon):
    httpd, worker = daemon
    a, b = client(), client()
    try:
        fa, fb = a.submit(req(prefix="hold")), b.submit(req(prefix="hold"))  # the same document in two windows
        wait_for(lambda: len(worker.seen) == 2)
        assert {r.doc for r in worker.seen} == {f"{a.client_id}:file:///w/a.py", f"{b.client_id}:file:///w/a.py"}
        assert not any(r.cancel.cancelled for r in worker.seen)  # neither superseded the other
        assert not fa.done() and not fb.done()
    finally:
        a.stop()
        b.stop()


def test_cancel_and_supersede_cross_the_boundary(daemon):
    httpd, worker = daemon
    b = client()
    try:
        first = b.submit(req(prefix="hold"))
        wait_for(lambda: len(worker.seen) == 1)
        second_req = req(prefix="hold")
        second = b.submit(second_req)  # same document: supersedes the first, here and in the daemon
        with pytest.raises(Cancelled):
            first.result(5)
        wait_for(lambda: worker.seen[0].cancel.cancelled)
        wait_for(lambda: len(worker.seen) == 2)
        second_req.cancel.cancel()  # $/cancelRequest: the connection closes, the daemon cancels
        with pytest.raises(Cancelled):
            second.result(5)
        wait_for(lambda: worker.seen[1].cancel.cancelled)
        wait_for(lambda: httpd.counters["client_gone"] + httpd.counters["cancelled"] >= 2)
        assert b.submit(req(doc="file:///w/b.py", forced_middle="7")).result(10).text.endswith("|x = 7")
    finally:
        b.stop()


def test_prefetch_passes_through_to_the_daemons_worker(daemon):
    httpd, worker = daemon
    b = client()
    try:
        b.prefetch(req(prefix="warm me"))
        wait_for(lambda: len(worker.prefetched) == 1)
        assert worker.prefetched[0].prefix == "warm me"
        assert worker.prefetched[0].doc == f"{b.client_id}:file:///w/a.py"
        assert worker.seen == []  # a warm-up is no request: nothing answered, nothing superseded
        assert httpd.counters["prefetches"] == 1
    finally:
        b.stop()


def test_heartbeats_keep_a_slow_answer_alive(daemon):
    httpd, worker = daemon
    httpd.heartbeat_s = 0.05
    worker.answer_after = 1.0
    b = client(read_timeout_ms=400)  # silence longer than 0.4 s would fail; the wait is 1 s
    try:
        assert b.submit(req(forced_middle="z")).result(10).text.endswith("|x = z")
    finally:
        b.stop()


def test_no_daemon_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path / "empty"))
    b = client()
    try:
        with pytest.raises(EngineError, match="engine daemon: none is running .*`codestral-ls engine serve`"):
            b.submit(req()).result(10)
    finally:
        b.stop()


# -- for real: the daemon process with the tiny model, two LSP servers --------------------------------------


def start_daemon(model: Path, cache: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], DaemonInfo]:
    file = cache / "engine.serve" / "daemon.json"
    proc = subprocess.Popen([sys.executable, "-m", "codestral_ls.server", "engine", "serve", "--model", str(model),
                             "--device", "cpu", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env={**os.environ, "CODESTRAL_LS_CACHE": str(cache), "PYTHONPATH": str(ROOT)})
    end = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the daemon exited"
        assert time.monotonic() < end, "the daemon did not write its discovery file"
        try:
            info = read_daemon_file(file)
        except ValueError:
            info = None
        if info is not None and info.pid == proc.pid:
            return proc, info
        time.sleep(0.1)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def has_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.asyncio(loop_scope="session")
async def test_two_windows_one_model_and_recovery(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    proc, info = start_daemon(tiny_model_dir, cache)
    env = {"CODESTRAL_LS_CACHE": str(cache)}
    clients = []
    try:
        a, _ = await start(["--engine", info.url], init_options={"budgetMs": 0}, env=env)
        clients.append(a)
        b, _ = await start(["--engine", "auto"], init_options={"budgetMs": 0}, env=env)
        clients.append(b)
        text = "def add(a, b):\n    return \n"
        for c in (a, b):
            open_doc(c, "file:///w/add.py", text)
        results = await asyncio.wait_for(asyncio.gather(inline(a, "file:///w/add.py", 1, 11),
                                                        inline(b, "file:///w/add.py", 1, 11)), 120)
        assert all(r is not None for r in results)
        health = _get(info, "/v1/health")
        assert health["loaded"] and health["model"]["source"] == str(tiny_model_dir)
        stats = _get(info, "/v1/stats")
        assert stats["clients"] == 2 and stats["completed"] >= 2
        # The next keystroke in a window reuses the daemon's KV cache.
        shown = results[0].items[0].insert_text if results[0].items else ""
        typed = "q" if shown.startswith("z") else "z"  # not what was shown: no typed-through answer
        insert(a, "file:///w/add.py", 2, 1, 11, typed)
        await asyncio.wait_for(inline(a, "file:///w/add.py", 1, 12), 120)
        lsp_stats = await a.protocol.send_request_async("codestral/stats", {})
        reused = lsp_stats["reused_tokens"] if isinstance(lsp_stats, dict) else lsp_stats.reused_tokens
        assert reused > 0
        # Only the daemon holds the model: the servers never loaded torch and stay small.
        for c in (a, b):
            pid = c._server.pid
            assert not has_torch(pid)
            # README: about 47 MB (measured here); torch alone would add hundreds.
            assert rss_mb(pid) < 75
        assert has_torch(proc.pid)

        # The daemon dies: the next request is a clear error, and the servers keep running.
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for c, uri in ((a, "file:///w/k1.py"), (b, "file:///w/k2.py")):
            open_doc(c, uri, "x = 1\ny = \n")
            with pytest.raises(JsonRpcException, match="engine daemon") as err:
                await asyncio.wait_for(inline(c, uri, 1, 4), 60)
            assert "connection refused" in str(err.value) or "not running" in str(err.value)

        # It comes back on the same port, with a new token in the same file: both servers recover.
        proc, info2 = start_daemon(tiny_model_dir, cache, port=info.port)
        assert info2.port == info.port and info2.token != info.token
        for c, uri in ((a, "file:///w/r1.py"), (b, "file:///w/r2.py")):
            open_doc(c, uri, "def sub(a, b):\n    return \n")
            assert await asyncio.wait_for(inline(c, uri, 1, 11), 120) is not None
        assert _get(info2, "/v1/stats")["completed"] >= 2
    finally:
        for c in clients:
            await stop(c)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert not (cache / "engine.serve" / "daemon.json").exists()  # removed on a clean stop


def _get(info: DaemonInfo, path: str) -> dict[str, Any]:
    r = urllib.request.Request(info.url + path, headers={"Authorization": f"Bearer {info.token}"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        return json.loads(resp.read())


def test_a_second_daemon_is_refused_before_loading_anything(daemon):
    from codestral_ls.engine.serving.daemon import DaemonError, ensure_not_running

    httpd, _ = daemon
    ensure_not_running()  # the file names this very process: not "another" daemon
    # Another live process at the same address: refused.
    write_daemon_file(daemon_file(), DaemonInfo("127.0.0.1", httpd.server_address[1], TOKEN, os.getppid()))
    with pytest.raises(DaemonError, match="already running"):
        ensure_not_running()
