"""One engine thread: loads the model, runs requests one at a time, newest per document wins.

Callers get a `concurrent.futures.Future` and never block. A newer request for a document cancels
the older one (queued or running, between tokens; engine/backend.py holds the rule). When no
request is queued the thread warms the newest `prefetch` prompt, then spends its time on
`Engine.background_step` (decoding past the last answer). A prefetch is newer intent than the
last answer's continuation, so it goes first; a real request cancels both at once, so neither
ever delays it by more than one forward chunk.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future

from codestral_ls.engine.backend import Job, NewestPerDocument, settle
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, FimResult

log = logging.getLogger(__name__)


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
        self.prefetches = {"started": 0, "completed": 0, "cancelled": 0, "failed": 0}
        self._newest = NewestPerDocument()  # queued and running jobs
        self._queue: list[Job] = []  # in arrival order
        self._running: Job | None = None
        self._prefetch: FimRequest | None = None  # the newest prefetch, not started yet
        self._prefetching: FimRequest | None = None  # the one the engine is warming now
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="codestral-engine", daemon=True)

    def start(self) -> EngineWorker:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            for job in self._queue:
                job.req.cancel.cancel()
            if self._running:
                self._running.req.cancel.cancel()
            self._drop_prefetch()
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
            self._drop_prefetch()  # a real request never waits for a warm-up
            job = Job(req, fut)
            old = self._newest.add(job)
            if old is not None and old in self._queue:
                self._queue.remove(old)
            self._queue.append(job)
            self._cv.notify_all()
        return fut

    def prefetch(self, req: FimRequest) -> None:
        """Warm `req`'s prompt when nothing real is queued; its result is discarded. A newer
        prefetch replaces it, any `submit` cancels it (`req.cancel`)."""
        if self.load_error is not None or self._stop:
            return
        with self._cv:
            self._drop_prefetch()
            self._prefetch = req
            self._cv.notify_all()

    def _drop_prefetch(self) -> None:  # under self._cv
        for req in (self._prefetch, self._prefetching):
            if req is not None:
                req.cancel.cancel()
        self._prefetch = None

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` for the loaded model (the context window's budget unit)."""
        engine = self.engine
        if engine is None:
            raise EngineError(self.load_error or "the model is not loaded")
        return engine.count_tokens(text)

    def busy(self) -> bool:
        with self._cv:
            return bool(self._queue) or self._running is not None

    def _next(self) -> Job | FimRequest | None:
        """The next job, else the prefetch to warm, else None: a background step is due (or stop)."""
        with self._cv:
            while not self._stop:
                while self._queue:
                    job = self._queue.pop(0)
                    # Under the lock: a newer request can then only supersede a running future.
                    if job.future.set_running_or_notify_cancel():
                        self._running = job
                        return job
                    self._newest.done(job)  # cancelled by its caller while queued
                if self._prefetch is not None:
                    req, self._prefetch = self._prefetch, None
                    if not req.cancel.cancelled:
                        self._prefetching = req
                        return req
                    continue
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
                work = self._next()
                if isinstance(work, Job):
                    self._execute(work)
                elif isinstance(work, FimRequest):
                    self._warm(work)
                elif not self._stop:
                    self._background_step()
            except Exception:  # the engine thread never dies: every later request would hang
                log.exception("engine worker error")
                self._finish()
        self._fail_all()

    def _execute(self, job: Job) -> None:
        try:
            if job.req.cancel.cancelled:
                raise Cancelled("cancelled before it started")
            settle(job.future, result=self.engine.complete(job.req))  # type: ignore[union-attr]
        except Cancelled as exc:
            settle(job.future, exc=exc)
        except Exception as exc:  # engine faults (OOM included) fail this request only
            log.exception("engine error")
            if out_of_memory(exc):
                self._free_memory()
            settle(job.future, exc=exc)
        finally:
            self._finish()

    def _warm(self, req: FimRequest) -> None:
        self.prefetches["started"] += 1
        try:
            self.engine.complete(req)  # type: ignore[union-attr]
            self.prefetches["completed"] += 1
        except Cancelled:
            self.prefetches["cancelled"] += 1
        except Exception as exc:  # a failed warm-up costs nothing but a log line
            self.prefetches["failed"] += 1
            log.warning("prefetch failed: %s: %s", type(exc).__name__, exc)
            if out_of_memory(exc):
                self._free_memory()
        finally:
            self._finish()

    def _free_memory(self) -> None:
        """After an out-of-memory: drop the KV cache and prefetch so the next request has room."""
        engine = self.engine
        if engine is not None:
            engine.store.clear()  # type: ignore[attr-defined]
            engine._background = None  # type: ignore[attr-defined]
        torch = sys.modules.get("torch")  # only a torch runner has CUDA memory to free; never import it here
        if torch is None:
            return
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing memory must not fail the worker
            log.exception("could not release CUDA memory")

    def _finish(self) -> None:
        with self._cv:
            if self._running is not None:
                self._newest.done(self._running)
            self._running = None
            self._prefetching = None

    def _background_step(self) -> None:
        try:
            self.engine.background_step()  # type: ignore[union-attr]
        except Exception:
            log.exception("background decoding failed; dropping it")
            self.engine._background = None  # type: ignore[union-attr]

    def _fail_all(self) -> None:
        with self._cv:
            jobs = list(self._queue)
            self._queue.clear()
            self._newest.jobs.clear()
            self._drop_prefetch()
        for job in jobs:
            settle(job.future, exc=EngineError(self.load_error or "engine stopped"))
