"""One engine thread: loads the model, runs requests one at a time, newest per document wins.

Callers get a `concurrent.futures.Future` and never block. A newer request for a document cancels
the older one (queued or running, between tokens). When the queue is empty the thread spends its
time on `Engine.background_step` (prefetching past the last answer), preempted by any new request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, FimResult

log = logging.getLogger(__name__)


@dataclass
class _Job:
    req: FimRequest
    future: Future[FimResult]


def _settle(fut: Future[FimResult], exc: BaseException) -> None:
    """Fail `fut` unless it is done or cancelled already (its caller may cancel it any time)."""
    try:
        if not fut.done():
            fut.set_exception(exc)
    except InvalidStateError:
        pass


def out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, a host MemoryError, or a backend's "out of memory" error."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "out of memory" in str(exc).lower())


class EngineWorker:
    steerable = True  # the engine honours FimRequest.avoid

    def __init__(self, load: Callable[[], object], on_loaded: Callable[[], None] | None = None) -> None:
        self._load = load
        self._on_loaded = on_loaded
        self.engine = None  # engine.engine.Engine once loaded
        self.load_error: str | None = None
        self.loaded = threading.Event()
        self._pending: dict[str, _Job] = {}  # newest job per document
        self._order: list[str] = []
        self._running: _Job | None = None
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="codestral-engine", daemon=True)

    def start(self) -> EngineWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            for job in self._pending.values():
                job.req.cancel.cancel()
            if self._running:
                self._running.req.cancel.cancel()
            self._cv.notify_all()
        # Let the thread leave torch before the interpreter goes away (abort otherwise).
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def submit(self, req: FimRequest) -> Future[FimResult]:
        fut: Future[FimResult] = Future()
        if self.load_error is not None or self._stop:
            fut.set_exception(EngineError(self.load_error or "engine stopped"))
            return fut
        with self._cv:
            old = self._pending.pop(req.doc, None)
            if old is not None:
                self._order.remove(req.doc)
                # Its caller may have cancelled it already ($/cancelRequest): settling it again
                # raised here, and left the queue without its job (the engine thread then died).
                _settle(old.future, Cancelled("superseded by a newer request"))
            if self._running is not None and self._running.req.doc == req.doc:
                self._running.req.cancel.cancel()
            self._pending[req.doc] = _Job(req, fut)
            self._order.append(req.doc)
            self._cv.notify_all()
        return fut

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` for the loaded model (the context window's budget unit)."""
        engine = self.engine
        if engine is None:
            raise EngineError(self.load_error or "the model is not loaded")
        return engine.count_tokens(text)

    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or self._running is not None

    def _next(self) -> _Job | None:
        with self._cv:
            while not self._stop:
                if self._order:
                    doc = self._order.pop(0)
                    self._running = self._pending.pop(doc)
                    return self._running
                engine = self.engine
                if engine is not None and engine.has_background_work():
                    return None
                self._cv.wait()
            return None

    def _run(self) -> None:
        try:
            self.engine = self._load()
        except EngineError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # a load must never kill the thread silently
            log.exception("model load failed")
            self.load_error = f"model load failed: {type(exc).__name__}: {exc}"
        finally:
            self.loaded.set()
            if self._on_loaded is not None:
                self._on_loaded()
        if self.engine is None:
            self._fail_all()
            return
        while not self._stop:
            try:
                job = self._next()
                if job is None:
                    if self._stop:
                        break
                    self._background_step()
                    continue
                self._execute(job)
            except Exception:  # the engine thread never dies: every later request would hang
                log.exception("engine worker error")
                self._finish()
        self._fail_all()

    def _execute(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            self._finish()
            return
        try:
            if job.req.cancel.cancelled:
                raise Cancelled("cancelled before it started")
            job.future.set_result(self.engine.complete(job.req))  # type: ignore[union-attr]
        except Cancelled as exc:
            job.future.set_exception(exc)
        except Exception as exc:  # engine faults (OOM included) fail this request only
            log.exception("engine error")
            if out_of_memory(exc):
                self._free_memory()
            job.future.set_exception(exc)
        finally:
            self._finish()

    def _free_memory(self) -> None:
        """After an out-of-memory: drop the KV cache and prefetch so the next request has room."""
        engine = self.engine
        if engine is not None:
            engine.store.clear()  # type: ignore[attr-defined]
            engine._background = None  # type: ignore[attr-defined]
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing memory must not fail the worker
            log.exception("could not release CUDA memory")

    def _finish(self) -> None:
        with self._cv:
            self._running = None

    def _background_step(self) -> None:
        try:
            self.engine.background_step()  # type: ignore[union-attr]
        except Exception:
            log.exception("background decoding failed; dropping it")
            self.engine._background = None  # type: ignore[union-attr]

    def _fail_all(self) -> None:
        with self._cv:
            jobs = list(self._pending.values())
            self._pending.clear()
            self._order.clear()
        for job in jobs:
            _settle(job.future, EngineError(self.load_error or "engine stopped"))
