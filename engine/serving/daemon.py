"""`codestral-ls engine serve`: one engine for every LSP server on the machine.

Editors start one language server per window; with the daemon they all send their FIM requests to
one process that holds the model, so the newest-per-document rule, the KV cache and the background
prefetch of its single `EngineWorker` serve every window. The client is engine/serving/daemon_client.py.
Standard library only, no torch at import.

Wire protocol (HTTP/1.0, JSON, loopback by default). Every request carries
`Authorization: Bearer <token>`; a missing or wrong token is answered 401 and nothing else.

    GET  /v1/health     {"ok": true, "loaded": bool, "load_error": str|null, "pid": int, "model": {...}}
    GET  /v1/stats      counters (requests, clients, cancelled, ...)
    GET  /v1/tokenizer  the model's tokenizer as `tokenizers` JSON (clients count tokens exactly); 503 while loading
    POST /v1/prefetch   {"client": str, "request": {FimRequest fields}} → 202 {}: warmed when the worker is idle
    POST /v1/fim        {"client": str, "request": {FimRequest fields}}   (engine/serving/wire.py)
        → 200, application/x-ndjson, one JSON object per line, ended by the daemon closing the connection:
          {"event": "wait"}  every HEARTBEAT_S while the request is queued or running
          then one of {"result": {FimResult fields}} or {"error": {"kind": "cancelled"|"engine"|"internal",
          "message": str}}

One HTTP request per FIM request; cancelling is closing it. While a request runs, its handler
watches the socket and sets the daemon-side `CancelToken` as soon as the client goes away (the
client closes the connection when its request is superseded or `$/cancelRequest`ed, or when the
editor window quits). Document keys are namespaced per client (`<client>:<uri>`), so two windows
never supersede each other; the KV cache still shares prompt prefixes across them.

Discovery: the daemon writes {host, port, url, token, pid} to `daemon_file()` (mode 0600 in a 0700
folder of the user's cache dir); `--engine auto` reads it before every request, so servers follow a
daemon that restarts with a new token or port.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import socketserver
import threading
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, FimResult
from codestral_ls.engine.serving.backend import Backend
from codestral_ls.engine.serving.discovery import (
    TOKEN_ENV,
    DaemonInfo,
    daemon_file,
    pid_alive,
    read_daemon_file,
    write_daemon_file,
)
from codestral_ls.engine.serving.urls import format_host, is_loopback
from codestral_ls.engine.serving.wire import request_from_wire, to_wire

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
MAX_BODY = 16 * 2**20
# A local process must not be able to hold the daemon: at most MAX_HANDLERS connections at once
# (more are closed at once), and each must have sent a request with the right token within
# AUTH_DEADLINE_S of connecting, or it is closed. Reads and writes time out after IO_TIMEOUT_S.
MAX_HANDLERS = 64
AUTH_DEADLINE_S = 5.0
IO_TIMEOUT_S = 30.0


class DaemonError(EngineError):
    """The daemon cannot start (address in use, another daemon running, unwritable file)."""


# -- the daemon -----------------------------------------------------------------------------------


class EngineDaemon(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], worker: Backend, token: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.worker = worker
        self.token = token
        self.heartbeat_s = HEARTBEAT_S
        self.lock = threading.Lock()
        self.counters = {"requests": 0, "completed": 0, "cancelled": 0, "client_gone": 0, "errors": 0,
                         "refused": 0, "prefetches": 0}
        self.clients: set[str] = set()
        self._tokenizer_json: str | None = None
        self.auth_deadline_s = AUTH_DEADLINE_S
        self.handlers = threading.BoundedSemaphore(MAX_HANDLERS)
        self.counters["turned_away"] = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.handlers.acquire(blocking=False):  # every handler busy: no thread for this one
            self.count("turned_away")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.handlers.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.handlers.release()

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would resolve our own name (slow DNS)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{format_host(str(host))}:{port}"

    def count(self, key: str) -> None:
        with self.lock:
            self.counters[key] += 1

    def tokenizer_json(self) -> str | None:
        if self._tokenizer_json is None:
            tok = getattr(getattr(getattr(self.worker, "engine", None), "loaded", None), "tokenizer", None)
            backend = getattr(tok, "backend_tokenizer", None)
            if backend is not None:
                self._tokenizer_json = backend.to_str()
        return self._tokenizer_json

    def model_info(self) -> dict[str, Any]:
        engine = getattr(self.worker, "engine", None)
        loaded = getattr(engine, "loaded", None)
        if loaded is None:
            return {}
        return {"source": loaded.source, "device": loaded.device, "dtype": loaded.dtype,
                "fim": engine.encoder.profile.name}  # type: ignore[union-attr]


class _Handler(BaseHTTPRequestHandler):
    server: EngineDaemon
    server_version = "codestral-ls-engine"
    timeout = IO_TIMEOUT_S  # socket timeout (StreamRequestHandler.setup)

    def handle(self) -> None:
        # Hang up on a connection that has not authenticated in time (one that sends nothing,
        # or a byte now and then, would hold this thread for ever).
        self._authenticated = False
        watchdog = threading.Timer(self.server.auth_deadline_s, self._hang_up_unless_authenticated)
        watchdog.daemon = True
        watchdog.start()
        try:
            super().handle()
        except OSError:  # hung up on, or the client went away
            self.close_connection = True
        finally:
            watchdog.cancel()

    def _hang_up_unless_authenticated(self) -> None:
        if not self._authenticated:
            self.server.count("refused")
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)  # request line and status, never headers

    # -- plumbing --

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.server.token}"
        if hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode()):
            self._authenticated = True
            return True
        self.server.count("refused")
        self._json(401, {"error": "missing or wrong token"})
        return False

    def _body(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ValueError("Content-Length is required") from None
        if not 0 <= length <= MAX_BODY:
            raise ValueError(f"body too large ({length} bytes)")
        try:
            return json.loads(self.rfile.read(length))
        except RecursionError:  # a body nested thousands deep: a client error, never a dropped connection
            raise ValueError("body is nested too deeply") from None

    # -- routes --

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if not self._authorized():
            return
        s = self.server
        if self.path == "/v1/health":
            self._json(200, {"ok": True, "loaded": s.worker.loaded.is_set(), "load_error": s.worker.load_error,
                             "pid": os.getpid(), "model": s.model_info()})
        elif self.path == "/v1/stats":
            with s.lock:
                self._json(200, {**s.counters, "clients": len(s.clients)})
        elif self.path == "/v1/tokenizer":
            tok = s.tokenizer_json() if s.worker.loaded.is_set() else None
            if tok is None:
                self._json(503, {"error": "the model is still loading" if not s.worker.loaded.is_set()
                                 else "no tokenizer to share"})
                return
            body = tok.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path not in ("/v1/fim", "/v1/prefetch"):
            self._json(404, {"error": f"no such endpoint {self.path}"})
            return
        try:
            body = self._body()
            client = body.get("client") if isinstance(body, dict) else None
            if not isinstance(client, str) or not 0 < len(client) <= 100:
                raise ValueError("field 'client' must be a short string")
            req = request_from_wire(body.get("request"))
        except RecursionError:
            self._json(400, {"error": "request is nested too deeply"})
            return
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        req.doc = f"{client}:{req.doc}"  # per-client namespace: windows never supersede each other
        s = self.server
        if self.path == "/v1/prefetch":
            s.count("prefetches")
            s.worker.prefetch(req)
            self._json(202, {})
            return
        with s.lock:
            s.counters["requests"] += 1
            s.clients.add(client)
        fut = s.worker.submit(req)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        if not self._await(fut, req):
            return
        exc = fut.exception()
        if exc is None:
            s.count("completed")
            self._line({"result": to_wire(fut.result())})
        elif isinstance(exc, Cancelled):
            s.count("cancelled")
            self._line({"error": {"kind": "cancelled", "message": str(exc)}})
        else:
            s.count("errors")
            kind = "engine" if isinstance(exc, EngineError) else "internal"
            message = str(exc) if kind == "engine" else f"{type(exc).__name__}: {exc}"
            self._line({"error": {"kind": kind, "message": message}})

    def _await(self, fut: Future[FimResult], req: FimRequest) -> bool:
        """Wait for `fut`, sending heartbeats; False (and the request cancelled) if the client left."""
        wake_r, wake_w = socket.socketpair()
        fut.add_done_callback(lambda _: _poke(wake_w))
        sel = selectors.DefaultSelector()
        try:
            sel.register(wake_r, selectors.EVENT_READ)
            sel.register(self.connection, selectors.EVENT_READ)
            while not fut.done():
                ready = [key.fileobj for key, _ in sel.select(self.server.heartbeat_s)]
                if fut.done():
                    break
                if self.connection in ready:
                    if _peer_closed(self.connection):
                        return self._client_gone(req)
                    sel.unregister(self.connection)  # unexpected bytes: stop watching, keep waiting
                if not ready and not self._line({"event": "wait"}):
                    return self._client_gone(req)
            return True
        finally:
            sel.close()
            wake_r.close()
            wake_w.close()

    def _client_gone(self, req: FimRequest) -> bool:
        req.cancel.cancel()
        self.server.count("client_gone")
        self.close_connection = True
        return False

    def _line(self, obj: Any) -> bool:
        try:
            self.wfile.write(json.dumps(obj).encode() + b"\n")
            self.wfile.flush()
            return True
        except OSError:
            return False


def _poke(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.send(b"x")


def _peer_closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def ensure_not_running(file: Path | None = None) -> None:
    """Raise DaemonError when the discovery file names a live daemon (one model per user is the point)."""
    file = file or daemon_file()
    try:
        existing = read_daemon_file(file)
    except ValueError:
        existing = None
    if existing is not None and existing.pid != os.getpid() and pid_alive(existing.pid) and _answers(existing):
        raise DaemonError(f"an engine daemon is already running (pid {existing.pid}, {existing.url}); "
                          f"stop it first, or point CODESTRAL_LS_CACHE elsewhere for a second one")


def serve(worker: Backend, host: str = "127.0.0.1", port: int = 0, file: Path | None = None,
          token: str | None = None) -> int:
    """Serve `worker` until SIGINT/SIGTERM; writes (and at exit removes) the discovery file."""
    file = file or daemon_file()
    ensure_not_running(file)
    if not is_loopback(host):
        log.warning("engine daemon listening on %s: reachable from other machines, over plain HTTP "
                    "(the token is still required)", host)
    try:
        httpd = EngineDaemon((host, port), worker, token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32))
    except OSError as exc:
        raise DaemonError(f"cannot listen on {format_host(host)}:{port}: {exc.strerror or exc}") from None
    info = DaemonInfo(host=host, port=int(httpd.server_address[1]), token=httpd.token, pid=os.getpid())
    try:
        write_daemon_file(file, info)
    except OSError as exc:
        httpd.server_close()
        raise DaemonError(f"cannot write {file}: {exc.strerror or exc}") from None
    log.info("engine daemon listening on %s (pid %d; URL and token in %s)", info.url, info.pid, file)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    def stop_if_load_fails() -> None:
        worker.loaded.wait()
        if worker.load_error is not None:
            log.error("the model did not load: %s", worker.load_error)
            httpd.shutdown()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    threading.Thread(target=stop_if_load_fails, name="codestral-daemon-load", daemon=True).start()
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        httpd.server_close()
        stopper = getattr(worker, "stop", None)
        if stopper is not None:
            stopper()
        with contextlib.suppress(OSError, ValueError):
            current = read_daemon_file(file)
            if current is not None and current.pid == os.getpid():
                file.unlink()
        log.info("engine daemon stopped")
    return 1 if worker.load_error is not None else 0


def _answers(info: DaemonInfo) -> bool:
    try:
        with socket.create_connection((info.host, info.port), timeout=1):
            return True
    except OSError:
        return False
