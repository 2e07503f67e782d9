"""The engine daemon's client: sends FIM requests to `codestral-ls engine serve` (engine/serving/daemon.py,
whose docstring holds the wire protocol; engine/serving/wire.py the format). No model in this process.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import urllib.parse
from typing import Any, Protocol

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.models.counting import ApproxCounter, FastCounter, TokenCounter
from codestral_ls.engine.request import FimRequest, FimResult
from codestral_ls.engine.serving.discovery import TOKEN_ENV, daemon_file, pid_alive, read_daemon_file
from codestral_ls.engine.serving.http_client import MAX_TOKENIZER, HttpBackend, HttpSettings
from codestral_ls.engine.serving.urls import is_loopback, origin_of, url_problem
from codestral_ls.engine.serving.wire import result_from_wire, to_wire

log = logging.getLogger(__name__)


class DaemonSettings(HttpSettings, Protocol):
    endpoint: str  # the daemon's URL, or "auto"/"": the discovery file's


class DaemonBackend(HttpBackend):
    """Sends requests to `codestral-ls engine serve` (engine/serving/daemon.py); no model in this process.

    `endpoint` is the daemon's URL, or "auto" (or empty): the URL in the daemon's discovery file.
    The token comes from the discovery file (re-read before every request, so a restarted daemon
    with a new token is picked up), or from $CODESTRAL_LS_ENGINE_TOKEN for an explicit URL.
    """

    steerable = True

    label = "engine daemon"

    def __init__(self, options: DaemonSettings) -> None:
        super().__init__(options)
        endpoint = options.endpoint.strip()
        self.url: str | None = None if endpoint in ("", "auto") else endpoint.rstrip("/")
        self.file = daemon_file()
        self.client_id = f"{os.getpid()}-{secrets.token_hex(4)}"  # namespaces this window's documents
        self._tokenizer: Any = None  # tokenizers.Tokenizer once the daemon shared it
        self._tokenizer_next = 0.0  # when to ask again
        if self.url is not None and (problem := url_problem(self.url)):
            self.load_error = f"engine daemon: --engine {problem}"
            self.loaded.set()
            return
        threading.Thread(target=self._first_contact, name="codestral-daemon-hello", daemon=True).start()

    def prefetch(self, req: FimRequest) -> None:
        """Passed to the daemon's worker (POST /v1/prefetch), which warms it when idle."""
        if self.load_error is not None or self._stopped:
            return
        try:
            self._pool.submit(self._send_prefetch, req)
        except RuntimeError:  # stopped meanwhile: the pool refuses work
            pass

    def _send_prefetch(self, req: FimRequest) -> None:
        try:
            url, token = self._locate()
            body = json.dumps({"client": self.client_id, "request": to_wire(req)}).encode()
            conn, resp = self._open(req, "POST", url + "/v1/prefetch", body,
                                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                self._read(req, conn, resp, origin_of(url))
            finally:
                resp.close()
                conn.close()
        except EngineError as exc:  # a warm-up that cannot be sent costs nothing
            log.debug("engine daemon: prefetch not sent: %s", exc)

    def counter(self) -> TokenCounter:
        tok = self._tokenizer
        return ApproxCounter() if tok is None else FastCounter(tok)

    def _first_contact(self) -> None:
        # Nothing loads in this process: usable at once, counting tokens approximately until the
        # daemon's tokenizer arrives (a pipeline answers nothing while a backend is loading).
        self.loaded.set()
        try:
            url, token = self._locate()
            self._fetch_tokenizer(url, token)
        except Exception as exc:  # unreachable now: per-request errors will say why
            log.info("engine daemon: %s", exc)

    def _locate(self) -> tuple[str, str]:
        """(url, token) of the daemon to ask now."""
        try:
            info = read_daemon_file(self.file)
        except ValueError as exc:
            if self.url is None:
                raise EngineError(f"engine daemon: {exc}") from None
            info = None
        if self.url is None:
            if info is None:
                raise EngineError(f"engine daemon: none is running ({self.file} does not exist); "
                                  f"start one with `codestral-ls engine serve`")
            if not pid_alive(info.pid):
                raise EngineError(f"engine daemon: not running (pid {info.pid} in {self.file} has exited); "
                                  f"start it again with `codestral-ls engine serve`")
            return info.url, info.token
        token = os.environ.get(TOKEN_ENV) or (info.token if info is not None and _same_place(info.url, self.url)
                                              else None)
        if not token:
            raise EngineError(f"engine daemon at {self.url}: no token; set {TOKEN_ENV} (or run the daemon on this "
                              f"machine, which writes it to {self.file})")
        return self.url, token

    def _failure(self, exc: BaseException, req: FimRequest, origin: str, connecting: bool) -> EngineError:
        err = super()._failure(exc, req, origin, connecting)
        if isinstance(exc, ConnectionRefusedError) and not isinstance(err, Cancelled):
            return EngineError(f"{err} (is `codestral-ls engine serve` running?)")
        return err

    def _fetch_tokenizer(self, url: str, token: str) -> None:
        if self._tokenizer is not None or time.monotonic() < self._tokenizer_next:
            return
        self._tokenizer_next = time.monotonic() + 30
        req = FimRequest(doc="", prefix="", suffix="")
        conn, resp = self._open(req, "GET", url + "/v1/tokenizer", None, {"Authorization": f"Bearer {token}"})
        try:
            body = self._read(req, conn, resp, origin_of(url), limit=MAX_TOKENIZER)
        finally:
            resp.close()
            conn.close()
        if resp.status != 200:
            return
        try:
            from tokenizers import Tokenizer
        except ImportError:
            return
        self._tokenizer = Tokenizer.from_str(body.decode("utf-8"))
        log.info("engine daemon: counting tokens with the daemon's tokenizer")

    def _call(self, req: FimRequest) -> FimResult:
        url, token = self._locate()
        origin = origin_of(url)
        body = json.dumps({"client": self.client_id, "request": to_wire(req)}).encode()
        conn, resp = self._open(req, "POST", url + "/v1/fim", body,
                                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            if resp.status == 401:
                raise EngineError(f"engine daemon at {origin} refused the token (HTTP 401): "
                                  f"{'it may have restarted; ' if self.url is None else ''}check "
                                  f"{TOKEN_ENV if self.url is not None else self.file}")
            if resp.status != 200:
                raise self._http_error(resp.status, resp.reason, self._read(req, conn, resp, origin), origin)
            while True:
                line = self._read(req, conn, resp, origin, line=True)
                if not line:
                    if req.cancel.cancelled:
                        raise Cancelled("request cancelled")
                    raise EngineError(f"engine daemon at {origin} closed the connection before answering "
                                      f"(did it stop?)")
                msg = json.loads(line)
                if "result" in msg:
                    result = result_from_wire(msg["result"])
                    break
                if "error" in msg:
                    err = msg["error"]
                    if err.get("kind") == "cancelled":
                        raise Cancelled(str(err.get("message") or "cancelled by the daemon"))
                    raise EngineError(f"engine daemon: {err.get('message')}")
        finally:
            resp.close()
            conn.close()
        if self._tokenizer is None:
            try:
                self._fetch_tokenizer(url, token)
            except EngineError:
                pass
        return result


def _same_place(a: str, b: str) -> bool:
    ua, ub = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    same_host = ua.hostname == ub.hostname or (is_loopback(ua.hostname or "") and is_loopback(ub.hostname or ""))
    return same_host and ua.port == ub.port
