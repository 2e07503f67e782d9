"""One engine thread: loads the model, runs requests one at a time, newest per document wins.

Callers get a `concurrent.futures.Future` and never block. A newer request for a document cancels
the older one (queued or running, between tokens; engine/serving/backend.py holds the rule). When no
request is queued the thread warms, in this order: the newest `prefetch` prompt (a place the user is
about to type at), the `plan` (spines of the open file around the cursor, nearest first), then
`Engine.background_step` (decoding past the last answer). A real request cancels the warm-up it finds
running, so none ever delays it by more than one forward chunk; a spine it interrupted keeps what it
prefilled and goes back to the front of the plan.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.models.counting import ApproxCounter, TokenCounter
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult
from codestral_ls.engine.serving.backend import Job, NewestPerDocument, settle

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
        self.prefetches = {"started": 0, "completed": 0, "cancelled": 0, "failed": 0}  # warm-ups at a place
        self.spine_warms = {"started": 0, "completed": 0, "cancelled": 0, "failed": 0}  # the plan's spines
        self._newest = NewestPerDocument()  # queued and running jobs
        self._queue: list[Job] = []  # in arrival order
        self._running: Job | None = None
        self._prefetch: FimRequest | None = None  # the newest prefetch, not started yet
        self._prefetching: FimRequest | None = None  # the one the engine is warming now
        self._plan: list[FimRequest] = []  # spines to warm when nothing else is waiting, first first
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

    def plan(self, reqs: list[FimRequest]) -> None:
        """Warm these spines, in order, whenever nothing else is waiting (replaces the previous plan)."""
        if self.load_error is not None or self._stop:
            return
        with self._cv:
            running = self._prefetching
            if running is not None and running.spine and (running.doc, running.prefix) not in {
                    (r.doc, r.prefix) for r in reqs}:
                running.cancel.cancel()  # a spine nobody plans for any more
            self._plan = list(reqs)
            self._cv.notify_all()

    def _drop_prefetch(self) -> None:  # under self._cv
        for req in (self._prefetch, self._prefetching):
            if req is not None:
                req.cancel.cancel()
        self._prefetch = None

    @property
    def device(self) -> str:
        return self.engine.loaded.device.split(":")[0] if self.engine is not None else ""

    @property
    def context_tokens(self) -> int | None:
        return self.engine.context_tokens if self.engine is not None else None

    @property
    def spines(self) -> int:
        return self.engine.spine_capacity if self.engine is not None else 0

    def counter(self) -> TokenCounter:
        return self.engine.counter if self.engine is not None else ApproxCounter()

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
                if self._plan:
                    req = self._plan.pop(0)
                    if req.cancel.cancelled:
                        req = dataclasses.replace(req, cancel=CancelToken())
                    self._prefetching = req
                    return req
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
            job.req_started = time.perf_counter()
            result = self.engine.complete(job.req)  # type: ignore[union-attr]
            result.queued_ms = (job.req_started - job.submitted) * 1000
            settle(job.future, result=result)
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
        counts = self.spine_warms if req.spine else self.prefetches
        counts["started"] += 1
        try:
            self.engine.complete(req)  # type: ignore[union-attr]
            counts["completed"] += 1
        except Cancelled:
            counts["cancelled"] += 1
            if req.spine:
                with self._cv:  # what it prefilled is kept: it goes on from there when the engine is free
                    if req.prefix not in (r.prefix for r in self._plan):
                        self._plan.insert(0, dataclasses.replace(req, cancel=CancelToken()))
        except Exception as exc:  # a failed warm-up costs nothing but a log line
            counts["failed"] += 1
            log.warning("warm-up failed: %s: %s", type(exc).__name__, exc)
            if out_of_memory(exc):
                self._free_memory()
        finally:
            self._finish()

    def _free_memory(self) -> None:
        """After an out-of-memory: drop the KV cache and prefetch so the next request has room."""
        engine = self.engine
        if engine is not None:
            engine.store.clear()
            engine.drop_background()
        try:
            import torch

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
            self.engine.drop_background()  # type: ignore[union-attr]

    def _fail_all(self) -> None:
        with self._cv:
            jobs = list(self._queue)
            self._queue.clear()
            self._newest.jobs.clear()
            self._drop_prefetch()
        for job in jobs:
            settle(job.future, exc=EngineError(self.load_error or "engine stopped"))
