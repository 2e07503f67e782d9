"""Where FIM requests go: the in-process engine, a shared engine daemon, or a remote serving engine.

Every backend satisfies `engine.backend.Backend` (submit, prefetch, count_tokens, stop), so the
context window, anchoring and post-processing are the same whichever one answers; `open_backend`
is the one way to open any of them from options:

    local     EngineWorker: the model in this process (server/lsp.py builds it, with load progress)
    daemon    DaemonBackend: `codestral-ls engine serve` on this machine (engine/daemon.py)
    mistral   Mistral's FIM API          POST /v1/fim/completions  → choices[0].message.content
    openai    OpenAI-compatible (vLLM)   POST /v1/completions + suffix → choices[0].text
    llamacpp  llama.cpp's llama-server   POST /infill              → content
    ollama    Ollama                     POST /api/generate + suffix → response

Remote backends (everything but local) run requests on a small thread pool, one HTTP request
each. Newest per document wins: a newer request for a document cancels the older one, and a
cancelled request (superseded, or `$/cancelRequest` via the pipeline) closes its connection at
once. Prompts are `prefix + forced_middle` (what was typed since the anchor) and the middle comes
back after it; the request's `StopRule` is applied to the returned text (single-line requests also
send stop ["\\n"]). `budget_ms`/background prefetch are the serving engine's business there.

Token counting (the context window's budget): the daemon shares its tokenizer (exact counts, with
the `tokenizers` library, no torch); the APIs are counted approximately, 3.5 characters a token.

API keys come from environment variables (`apiKeyEnv`, else the backend's default) and never
appear in logs or error messages.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from codestral_ls.engine.backend import Backend, Job, NewestPerDocument, settle
from codestral_ls.engine.daemon import (
    LOOPBACK,
    TOKEN_ENV,
    daemon_file,
    pid_alive,
    read_daemon_file,
    request_to_wire,
    result_from_wire,
)
from codestral_ls.engine.embedded import Progress
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult
from codestral_ls.server.options import Options

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5
MAX_RESPONSE = 4 * 2**20  # a FIM answer is a few KiB; anything this big is refused unread
MAX_TOKENIZER = 64 * 2**20  # the daemon's tokenizer JSON (Qwen's is ~7 MiB)


def approx_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def open_backend(options: Options, progress: Progress | None = None,
                 on_loaded: Callable[[], None] | None = None) -> Backend:
    """The backend `options.backend` names, started: the one way to open any backend.

    Never raises: a bad setup is its `load_error`. `progress(message, percent)` hears the model
    load (local only, on the engine thread); `on_loaded` runs once the backend can answer (or not).
    """
    if options.backend == "local":
        from codestral_ls.engine import load_engine
        from codestral_ls.engine.worker import EngineWorker
        from codestral_ls.server.options import engine_config

        return EngineWorker(lambda: load_engine(*engine_config(options), progress=progress),
                            on_loaded=on_loaded).start()
    backend: _HttpBackend
    if options.backend == "daemon":
        backend = DaemonBackend(options)
    elif (api := APIS.get(options.backend)) is not None:
        backend = RemoteBackend(api, options)
    else:
        raise ValueError(f"no backend named {options.backend!r}")
    if on_loaded is not None:
        threading.Thread(target=lambda: (backend.loaded.wait(), on_loaded()), daemon=True,
                         name="codestral-backend-loaded").start()
    return backend


# -- the HTTP plumbing shared by every remote backend -----------------------------------------------


class _HttpBackend:
    label = "remote backend"  # names the backend in every message

    def __init__(self, options: Options, workers: int = 4) -> None:
        self.options = options
        self.loaded = threading.Event()
        self.load_error: str | None = None
        self.engine = None  # no model in this process
        self.connect_timeout = options.connect_timeout_ms / 1000 or None
        self.read_timeout = options.read_timeout_ms / 1000 or None
        self.total_timeout: float | None = None  # a whole request (remote APIs: requestTimeoutMs)
        self.max_response = MAX_RESPONSE
        self._secret = ""  # scrubbed from every message
        self._local = threading.local()  # the running request's deadline, per pool thread
        self._tls: ssl.SSLContext | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="codestral-remote")
        self._lock = threading.Lock()
        self._newest = NewestPerDocument()
        self._live: dict[int, Job] = {}
        self._stopped = False

    # -- Backend --

    def count_tokens(self, text: str) -> int:
        return approx_tokens(text)

    def submit(self, req: FimRequest) -> Future[FimResult]:
        fut: Future[FimResult] = Future()
        if self.load_error is not None or self._stopped:
            fut.set_exception(EngineError(self.load_error or f"{self.label}: stopped"))
            return fut
        job = Job(req, fut)
        # A caller cancelling the future (asyncio cancellation) cancels the request: closes its socket.
        fut.add_done_callback(lambda f: req.cancel.cancel() if f.cancelled() else None)
        with self._lock:
            if self._stopped:
                fut.set_exception(EngineError(f"{self.label}: stopped"))
                return fut
            self._newest.add(job)  # fails and hangs up the older request for this document
            self._live[id(job)] = job
            self._pool.submit(self._run, job)  # under the lock: never after stop() shut the pool
        return fut

    def prefetch(self, req: FimRequest) -> None:
        """Remote APIs have no prompt cache we can warm without paying for a completion: ignored."""

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            jobs = list(self._live.values())
        for job in jobs:
            settle(job.future, exc=EngineError(f"{self.label}: stopped"))
            job.req.cancel.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- running one request --

    def _run(self, job: Job) -> None:
        req = job.req
        deadline = _Deadline(req, self.total_timeout)
        self._local.deadline = deadline
        try:
            if req.cancel.cancelled or job.future.done():
                raise Cancelled("superseded by a newer request")
            settle(job.future, result=self._call(req))
        except Cancelled as exc:
            settle(job.future, exc=exc)
        except EngineError as exc:
            settle(job.future, exc=type(exc)(self._scrub(str(exc))))
        except Exception as exc:  # a fault fails this request, never the backend
            log.error("%s: %s", self.label, self._scrub(f"{type(exc).__name__}: {exc}"))
            settle(job.future, exc=EngineError(self._scrub(f"{self.label}: {type(exc).__name__}: {exc}")))
        finally:
            deadline.close()
            self._local.deadline = None
            with self._lock:
                self._live.pop(id(job), None)
                self._newest.done(job)

    def _call(self, req: FimRequest) -> FimResult:
        raise NotImplementedError

    def _tls_context(self) -> ssl.SSLContext:
        """The system's CAs ($SSL_CERT_FILE / $SSL_CERT_DIR honoured by OpenSSL), or caBundle's."""
        if self._tls is None:
            self._tls = ssl.create_default_context(cafile=os.path.expanduser(self.options.ca_bundle) or None)
        return self._tls

    def _open(self, req: FimRequest, method: str, url: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request (through $HTTPS_PROXY / $HTTP_PROXY unless $NO_PROXY or loopback says
        not); the connection closes as soon as `req` is cancelled or its deadline passes."""
        u = urllib.parse.urlsplit(url)
        origin = _origin(url)
        host, port = u.hostname or "", u.port or (443 if u.scheme == "https" else 80)
        proxy = _proxy_for(u.scheme, host)
        headers = {"User-Agent": "codestral-ls", **headers}
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn: http.client.HTTPConnection
        try:
            if u.scheme == "https":
                if proxy is not None:  # CONNECT through the proxy, TLS with the real host inside
                    conn = http.client.HTTPSConnection(proxy.hostname or "", proxy.port or 80,
                                                       timeout=self.connect_timeout, context=self._tls_context())
                    conn.set_tunnel(host, port, headers=_proxy_auth(proxy))
                else:
                    conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                                       context=self._tls_context())
            elif proxy is not None:  # plain http through a proxy: the absolute URL goes to the proxy
                conn = http.client.HTTPConnection(proxy.hostname or "", proxy.port or 80, timeout=self.connect_timeout)
                path = url
                headers |= _proxy_auth(proxy)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        except (OSError, ValueError) as exc:  # an unreadable caBundle
            raise EngineError(f"{self.label}: cannot set up TLS: {exc}") from None

        sockets: list[socket.socket] = []  # conn.sock goes None once a response owns the socket

        def hang_up() -> None:
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        line = deadline.line if deadline is not None else req.cancel
        line.on_cancel(hang_up)
        try:
            conn.connect()
        except Exception as exc:
            conn.close()
            raise self._failure(exc, req, origin, connecting=True) from None
        assert conn.sock is not None
        sockets.append(conn.sock)
        try:
            if line.cancelled:  # cancelled while connecting: hang_up found no socket
                raise self._failure(TimeoutError(), req, origin, connecting=False)
            conn.sock.settimeout(self.read_timeout)
            conn.request(method, path, body=body, headers=headers)
            return conn, conn.getresponse()
        except EngineError:
            conn.close()
            raise
        except Exception as exc:
            conn.close()
            raise self._failure(exc, req, origin, connecting=False) from None

    def _read(self, req: FimRequest, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
              origin: str, line: bool = False, limit: int | None = None) -> bytes:
        """The body (or one line of it), at most `limit` bytes (else `max_response`): a bigger
        answer is an error, never read into memory whole."""
        limit = limit or self.max_response
        try:
            if line:
                data = resp.readline(limit + 1)
            else:  # read(n) may return less than n before the end (a body without Content-Length)
                chunks, size = [], 0
                while size <= limit and (chunk := resp.read(min(65536, limit + 1 - size))):
                    chunks.append(chunk)
                    size += len(chunk)
                data = b"".join(chunks)
        except Exception as exc:
            conn.close()
            raise self._failure(exc, req, origin, connecting=False) from None
        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        if req.cancel.cancelled or (deadline is not None and deadline.line.cancelled):
            conn.close()  # we hung up: what was read is cut short, whatever it looks like
            raise self._failure(ConnectionError(), req, origin, connecting=False)
        if len(data) > limit:
            conn.close()
            raise EngineError(f"{self.label}: the answer from {origin} is larger than {limit // 1024} KiB: refused")
        return data

    def _failure(self, exc: BaseException, req: FimRequest, origin: str, connecting: bool) -> EngineError:
        """One clear sentence for a transport failure (or Cancelled when we hung up ourselves)."""
        if req.cancel.cancelled:
            return Cancelled("request cancelled")
        deadline: _Deadline | None = getattr(self._local, "deadline", None)
        if deadline is not None and deadline.passed:
            return EngineError(f"{self.label}: {origin} did not finish answering within "
                               f"{_seconds(self.total_timeout)} (requestTimeoutMs)")
        if isinstance(exc, TimeoutError):
            if connecting:
                return EngineError(f"{self.label}: {origin} did not accept a connection within "
                                   f"{_seconds(self.connect_timeout)} (connectTimeoutMs)")
            return EngineError(f"{self.label}: no answer from {origin} within {_seconds(self.read_timeout)} "
                               f"(readTimeoutMs)")
        if isinstance(exc, ConnectionRefusedError):
            return EngineError(f"{self.label}: cannot connect to {origin}: connection refused")
        if isinstance(exc, ssl.SSLError):
            return EngineError(f"{self.label}: TLS error with {origin}: {exc.reason or exc} (a private CA: caBundle "
                               f"or $SSL_CERT_FILE)")
        if isinstance(exc, http.client.HTTPException | ConnectionError):
            return EngineError(f"{self.label}: {origin} closed the connection before answering")
        if isinstance(exc, OSError):
            return EngineError(f"{self.label}: cannot reach {origin}: {exc.strerror or exc}")
        return EngineError(f"{self.label}: {type(exc).__name__}: {exc}")

    def _http_error(self, status: int, reason: str, body: bytes, origin: str, hint: str = "") -> EngineError:
        detail = _error_detail(body)
        message = f"{self.label}: HTTP {status} {reason} from {origin}"
        if hint:
            message += f" ({hint})"
        if detail:
            message += f": {detail}"
        return EngineError(self._scrub(message))

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def _origin(url: str) -> str:
    """scheme://host:port, without credentials, path or query: safe to show."""
    u = urllib.parse.urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{u.scheme}://{host}" + (f":{u.port}" if u.port else "")


class _Deadline:
    """The running request's line: cut when the request is cancelled or its total time is up."""

    def __init__(self, req: FimRequest, total_s: float | None) -> None:
        self.line = CancelToken()
        self.passed = False
        req.cancel.on_cancel(self.line.cancel)
        self._timer: threading.Timer | None = None
        if total_s:
            self._timer = threading.Timer(total_s, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self.passed = True
        self.line.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def _proxy_for(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The proxy $HTTPS_PROXY / $HTTP_PROXY names for `host`, unless $NO_PROXY exempts it; loopback
    is always reached directly."""
    if _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme)
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    if "://" not in url:
        url = "http://" + url
    return urllib.parse.urlsplit(url)


def _proxy_auth(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _seconds(timeout: float | None) -> str:
    return "ever" if timeout is None else f"{timeout:g} s"


def _error_detail(body: bytes) -> str:
    """A short, single-line reason from an error body (JSON `message`/`error`/`detail`, or text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value.get("type")
            if isinstance(value, list) and value and isinstance(value[0], dict):
                value = value[0].get("msg")
            if isinstance(value, str) and value:
                text = value
                break
    text = " ".join(text.split())
    return text[:200] + ("…" if len(text) > 200 else "")


def _valid_url(url: str) -> str | None:
    """Why `url` is not a usable http(s) URL, or None."""
    try:
        u = urllib.parse.urlsplit(url)
        u.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"{url!r} is not a URL: {exc}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return f"expected an http:// or https:// URL, got {url!r}"
    return None


# -- the engine daemon ----------------------------------------------------------------------------


class DaemonBackend(_HttpBackend):
    """Sends requests to `codestral-ls engine serve` (engine/daemon.py); no model in this process.

    `endpoint` is the daemon's URL, or "auto" (or empty): the URL in the daemon's discovery file.
    The token comes from the discovery file (re-read before every request, so a restarted daemon
    with a new token is picked up), or from $CODESTRAL_LS_ENGINE_TOKEN for an explicit URL.
    """

    steerable = True

    label = "engine daemon"

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        endpoint = options.endpoint.strip()
        self.url: str | None = None if endpoint in ("", "auto") else endpoint.rstrip("/")
        self.file = daemon_file()
        self.client_id = f"{os.getpid()}-{secrets.token_hex(4)}"  # namespaces this window's documents
        self._tokenizer: Any = None  # tokenizers.Tokenizer once the daemon shared it
        self._tokenizer_next = 0.0  # when to ask again
        if self.url is not None and (problem := _valid_url(self.url)):
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
            body = json.dumps({"client": self.client_id, "request": request_to_wire(req)}).encode()
            conn, resp = self._open(req, "POST", url + "/v1/prefetch", body,
                                    {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            try:
                self._read(req, conn, resp, _origin(url))
            finally:
                resp.close()
                conn.close()
        except EngineError as exc:  # a warm-up that cannot be sent costs nothing
            log.debug("engine daemon: prefetch not sent: %s", exc)

    def count_tokens(self, text: str) -> int:
        tok = self._tokenizer
        if tok is None:
            return approx_tokens(text)
        return len(tok.encode(text, add_special_tokens=False).ids)

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
            body = self._read(req, conn, resp, _origin(url), limit=MAX_TOKENIZER)
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
        origin = _origin(url)
        body = json.dumps({"client": self.client_id, "request": request_to_wire(req)}).encode()
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
    same_host = ua.hostname == ub.hostname or (ua.hostname in LOOPBACK and ub.hostname in LOOPBACK)
    return same_host and ua.port == ub.port


# -- remote serving engines -----------------------------------------------------------------------


def _stops(req: FimRequest) -> list[str]:
    return (["\n"] if req.stop.single_line else []) + list(req.stop.stop_strings)


def _with_stop(body: dict[str, Any], stops: list[str]) -> dict[str, Any]:
    if stops:
        body["stop"] = stops
    return body


def _mistral_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return _with_stop({"model": model, "prompt": prompt, "suffix": req.suffix, "max_tokens": req.max_tokens,
                       "temperature": 0}, _stops(req))


def _openai_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return _with_stop({"model": model, "prompt": prompt, "suffix": req.suffix, "max_tokens": req.max_tokens,
                       "temperature": 0}, _stops(req))


def _llamacpp_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"input_prefix": prompt, "input_suffix": req.suffix, "n_predict": req.max_tokens,
                            "temperature": 0, "stop": _stops(req), "cache_prompt": True}
    if req.extra_files:
        body["input_extra"] = [{"filename": name, "text": text} for name, text in req.extra_files]
    return body


def _ollama_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "suffix": req.suffix, "stream": False,
            "options": _with_stop({"num_predict": req.max_tokens, "temperature": 0}, _stops(req))}


@dataclass(frozen=True)
class _Answer:
    text: str
    length_cut: bool  # the API stopped at max_tokens
    prompt_tokens: int = 0
    decoded_tokens: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _choice(data: Any) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices[0]")
    return choices[0]


def _usage(data: dict[str, Any]) -> tuple[int, int]:
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def _mistral_answer(data: Any) -> _Answer:
    choice = _choice(data)
    content = (choice.get("message") or {}).get("content")
    if isinstance(content, list):  # content chunks: [{"type": "text", "text": ...}]
        content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
    if not isinstance(content, str):
        raise ValueError("no choices[0].message.content")
    return _Answer(content, choice.get("finish_reason") == "length", *_usage(data))


def _openai_answer(data: Any) -> _Answer:
    choice = _choice(data)
    if not isinstance(choice.get("text"), str):
        raise ValueError("no choices[0].text")
    return _Answer(choice["text"], choice.get("finish_reason") == "length", *_usage(data))


def _llamacpp_answer(data: Any) -> _Answer:
    if not isinstance(data, dict) or not isinstance(data.get("content"), str):
        raise ValueError("no content")
    return _Answer(data["content"], data.get("stop_type") == "limit", _int(data.get("tokens_evaluated")),
                   _int(data.get("tokens_predicted")))


def _ollama_answer(data: Any) -> _Answer:
    if not isinstance(data, dict) or not isinstance(data.get("response"), str):
        raise ValueError("no response")
    return _Answer(data["response"], data.get("done_reason") == "length", _int(data.get("prompt_eval_count")),
                   _int(data.get("eval_count")))


@dataclass(frozen=True)
class RemoteApi:
    name: str
    path: str  # appended to the endpoint unless it already ends with it
    default_endpoint: str
    key_env: str  # default environment variable for the key
    key_required: bool
    default_model: str  # "" = remoteModel must be set
    body: Callable[[FimRequest, str, str], dict[str, Any]]  # (request, model, prompt) → JSON body
    answer: Callable[[Any], _Answer]  # JSON answer → text (ValueError when it is not the expected shape)


APIS: dict[str, RemoteApi] = {api.name: api for api in (
    RemoteApi("mistral", "/v1/fim/completions", "https://api.mistral.ai", "MISTRAL_API_KEY", True,
              "codestral-latest", _mistral_body, _mistral_answer),
    RemoteApi("openai", "/v1/completions", "http://127.0.0.1:8000", "OPENAI_API_KEY", False, "",
              _openai_body, _openai_answer),
    RemoteApi("llamacpp", "/infill", "http://127.0.0.1:8080", "LLAMA_API_KEY", False, "", _llamacpp_body,
              _llamacpp_answer),
    RemoteApi("ollama", "/api/generate", "http://127.0.0.1:11434", "OLLAMA_API_KEY", False, "codestral",
              _ollama_body, _ollama_answer),
)}


def _api_url(endpoint: str, path: str) -> str:
    base = endpoint.rstrip("/")
    if base.endswith(path):
        return base
    if path.startswith("/v1/") and base.endswith("/v1"):  # "http://host:8000/v1" as OpenAI clients write it
        return base + path[3:]
    return base + path


class RemoteBackend(_HttpBackend):
    """One of `APIS` over HTTP(S); configuration problems become `load_error` (said on every request)."""

    steerable = False

    def __init__(self, api: RemoteApi, options: Options) -> None:
        super().__init__(options)
        self.api = api
        self.label = f"{api.name} backend"
        self.url = _api_url(options.endpoint.strip() or api.default_endpoint, api.path)
        self.model = options.remote_model or api.default_model
        key_env = options.api_key_env or api.key_env
        self._secret = os.environ.get(key_env, "")
        self.total_timeout = options.request_timeout_ms / 1000 or None
        self.load_error = self._problem(key_env)
        self.loaded.set()

    def _problem(self, key_env: str) -> str | None:
        if problem := _valid_url(self.url):
            return f"{self.label}: endpoint {problem}"
        if not self.model and self.api.name != "llamacpp":
            return f"{self.label} needs the served model's name: set remoteModel"
        if not self._secret and (self.api.key_required or self.options.api_key_env):
            return (f"{self.label} needs an API key: set the environment variable {key_env}"
                    + ("" if self.options.api_key_env else " (or name another one with apiKeyEnv)"))
        u = urllib.parse.urlsplit(self.url)
        if self._secret and u.scheme == "http" and not _loopback(u.hostname or "") \
                and not self.options.allow_plain_http_key:
            return (f"{self.label}: refusing to send the API key in {key_env} over plain http to {_origin(self.url)} "
                    f"(anyone on the way can read it): use https, or --allow-plain-http-key")
        if self.options.ca_bundle and not os.path.isfile(os.path.expanduser(self.options.ca_bundle)):
            return f"{self.label}: caBundle {self.options.ca_bundle} is not a file"
        return None

    def _call(self, req: FimRequest) -> FimResult:
        t0 = time.perf_counter()
        origin = _origin(self.url)
        body = self.api.body(req, self.model, req.prefix + req.forced_middle)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        conn, resp = self._open(req, "POST", self.url, json.dumps(body).encode(), headers)
        try:
            raw = self._read(req, conn, resp, origin)
        finally:
            resp.close()
            conn.close()
        if resp.status != 200:
            hint = {401: "check the API key", 403: "check the API key",
                    429: "rate limited: try again later"}.get(resp.status, "")
            raise self._http_error(resp.status, resp.reason, raw, origin, hint)
        try:
            answer = self.api.answer(json.loads(raw))
        except ValueError as exc:
            raise EngineError(f"{self.label}: unexpected answer from {origin}: {exc}") from None
        text, stopped = req.stop.cut(answer.text)
        return FimResult(text=text, finish="length" if answer.length_cut and not stopped else "stop",
                         prompt_tokens=answer.prompt_tokens, decoded_tokens=answer.decoded_tokens,
                         elapsed_ms=(time.perf_counter() - t0) * 1000)
