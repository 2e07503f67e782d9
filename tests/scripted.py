"""A stand-in backend for tests of the pipeline and the LSP layer: it answers each `FimRequest` with
the next text of a script (or a function of the request), records what it was asked, and keeps the
`Backend` rules a real one keeps (never blocks, newest per document wins, a settled future stays
settled). It is not a model: tests that need the model's behaviour use the real engine."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

from codestral_ls.engine.models.counting import ApproxCounter, TokenCounter
from codestral_ls.engine.request import FimRequest, FimResult
from codestral_ls.engine.serving.backend import Job, NewestPerDocument, settle


class ScriptedBackend:
    steerable = True
    engine = None
    device = "cpu"
    spines = 0

    def __init__(self, answer: Callable[[FimRequest], str] | list[str] | str = "",
                 context_tokens: int | None = None, finish: str = "stop",
                 window: Callable[[FimRequest], str] | None = None) -> None:
        self.answer = answer
        self.window = window  # the window an engine would say it took (FimResult.window)
        self.context_tokens = context_tokens
        self.finish = finish
        self.loaded = threading.Event()
        self.loaded.set()
        self.load_error: str | None = None
        self.asked: list[FimRequest] = []
        self.prefetched: list[FimRequest] = []
        self._newest = NewestPerDocument()

    def counter(self) -> TokenCounter:
        return ApproxCounter()

    def submit(self, req: FimRequest) -> Future[FimResult]:
        fut: Future[FimResult] = Future()
        self.asked.append(req)
        job = Job(req, fut)
        self._newest.add(job)
        if callable(self.answer):
            text = self.answer(req)
        elif isinstance(self.answer, list):
            text = self.answer.pop(0) if self.answer else ""
        else:
            text = self.answer
        cut, why = req.stop.cut(text)
        settle(fut, result=FimResult(text=cut, finish=why or self.finish, prompt_tokens=len(req.prefix) // 4 + 1,
                                     window=self.window(req) if self.window else ""))
        self._newest.done(job)
        return fut

    def prefetch(self, req: FimRequest) -> None:
        self.prefetched.append(req)

    def plan(self, reqs: list[FimRequest]) -> None:
        self.planned = list(reqs)

    def stop(self) -> None:
        pass
