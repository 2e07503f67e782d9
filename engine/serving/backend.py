"""The one seam between the server and whatever answers FIM requests: `FimRequest → FimResult`.

`Backend` is what the pipeline holds: the in-process `EngineWorker` (engine/serving/worker.py), the engine
daemon's client (engine/serving/daemon_client.py) and the remote APIs (engine/serving/remote.py) all satisfy it.
`Job`/`settle` and the newest-per-document rule are written here once and shared by them.

Rules every backend keeps:
- `submit` never blocks; a newer request for the same `doc` cancels the older one (its future fails
  with `Cancelled`, its `req.cancel` is set), queued or running.
- `prefetch` and `plan` never block and never delay a real request: they warm prompts only when
  nothing real is pending, and the running warm-up is cancelled the moment a real request is
  submitted (backends that cannot warm anything ignore them).
- A future is settled once: whoever comes second (a cancelled caller, a stop) is ignored.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Protocol

from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.models.counting import TokenCounter
from codestral_ls.engine.request import FimRequest, FimResult


class Backend(Protocol):
    """What the pipeline needs from whatever answers FIM requests."""

    loaded: threading.Event  # set once `submit` and `counter` can be used (or load_error is set)
    load_error: str | None  # why this backend can never answer (bad model, bad configuration)
    steerable: bool  # honours FimRequest.avoid (a remote API answers the same again)
    engine: Any  # the in-process engine.decoding.engine.Engine, or None (daemon, remote)

    @property
    def device(self) -> str:
        """Where the model computes: "cpu", "cuda", or "" where that is not known here (remote)."""

    @property
    def context_tokens(self) -> int | None:
        """Most tokens one engine sequence holds (prompt and suggestion); None where not known."""

    @property
    def spines(self) -> int:
        """How many spines of open files this backend keeps warm (0: it warms none)."""

    def counter(self) -> TokenCounter:
        """Counts tokens of the model's vocabulary, from any thread, without engine work."""

    def submit(self, req: FimRequest) -> Future[FimResult]: ...

    def prefetch(self, req: FimRequest) -> None: ...

    def plan(self, reqs: list[FimRequest]) -> None:
        """Spines to warm while nothing else waits (backends without a cache of their own ignore it)."""

    def stop(self) -> None: ...


@dataclass
class Job:
    req: FimRequest
    future: Future[FimResult]
    submitted: float = field(default_factory=time.perf_counter)
    req_started: float = 0.0


def settle(fut: Future[FimResult], result: FimResult | None = None, exc: BaseException | None = None) -> None:
    """Resolve `fut` unless it already is (superseded, cancelled by its caller, stopped): first answer wins."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


class NewestPerDocument:
    """The newest job per document; not thread-safe (callers hold their own lock).

    `add` returns the job it superseded (already failed with `Cancelled` and its token set) so the
    caller can drop it from its own queue.
    """

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def add(self, job: Job) -> Job | None:
        old = self.jobs.get(job.req.doc)
        self.jobs[job.req.doc] = job
        if old is not None and old is not job:
            supersede(old)
            return old
        return None

    def done(self, job: Job) -> None:
        if self.jobs.get(job.req.doc) is job:
            del self.jobs[job.req.doc]


def supersede(job: Job) -> None:
    # Its caller may have cancelled the future already ($/cancelRequest): settle() ignores that.
    settle(job.future, exc=Cancelled("superseded by a newer request"))
    job.req.cancel.cancel()
