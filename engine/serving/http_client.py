"""The HTTP plumbing every out-of-process backend shares: the engine daemon's client
(engine/serving/daemon_client.py) and the remote APIs (engine/serving/remote.py).

One HTTP request per FIM request, on a small thread pool; newest per document wins (engine/serving/backend.py)
and a cancelled request closes its connection at once. Transport rules kept here, once: connect and
read timeouts plus a total deadline per request (`total_timeout`), answers read up to a size limit,
$HTTPS_PROXY / $HTTP_PROXY / $NO_PROXY honoured (loopback always direct), TLS with the system's CAs
($SSL_CERT_FILE) or `ca_bundle`, and a secret (an API key) scrubbed from every message.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.models.counting import ApproxCounter, TokenCounter
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult
from codestral_ls.engine.serving.backend import Job, NewestPerDocument, settle
from codestral_ls.engine.serving.urls import is_loopback, origin_of

log = logging.getLogger(__name__)

MAX_RESPONSE = 4 * 2**20  # a FIM answer is a few KiB; anything this big is refused unread
MAX_TOKENIZER = 64 * 2**20  # the daemon's tokenizer JSON (Qwen's is ~7 MiB)



class HttpSettings(Protocol):
    """What the plumbing reads from the options (server/options.py's `Options` has these fields)."""

    connect_timeout_ms: int
    read_timeout_ms: int
    ca_bundle: str


# -- the HTTP plumbing shared by every remote backend -----------------------------------------------


class HttpBackend:
    label = "remote backend"  # names the backend in every message

    def __init__(self, options: HttpSettings, workers: int = 4) -> None:
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

    device = ""  # not known here
    context_tokens: int | None = None
    spines = 0  # no cache of ours to warm

    def counter(self) -> TokenCounter:
        return ApproxCounter()

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

    def plan(self, reqs: list[FimRequest]) -> None:
        """Nor spines: ignored (a daemon's engine warms its own windows' spines from its requests)."""

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
        origin = origin_of(url)
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




def _proxy_for(scheme: str, host: str) -> urllib.parse.SplitResult | None:
    """The proxy $HTTPS_PROXY / $HTTP_PROXY names for `host`, unless $NO_PROXY exempts it; loopback
    is always reached directly."""
    if is_loopback(host):
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


