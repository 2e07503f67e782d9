"""The backend seam (engine/serving/backend.py): prefetch on the in-process worker with the tiny model, and
the same newest-per-document rule for every backend."""

from __future__ import annotations

import time

import pytest
from codestral_ls.engine import EngineOptions
from codestral_ls.engine.decoding.engine import Engine
from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.engine.serving.worker import EngineWorker

LONG = "def add(a, b):\n    return a + b\n\n" * 300  # some thousands of tokens for the tiny tokenizer


def real(doc: str = "file:///a.py") -> FimRequest:
    return FimRequest(doc=doc, prefix="def fib(n):\n    ret", suffix="\n", max_tokens=4, background=False,
                      stop=StopRule(single_line=True))


def wait_for(cond, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.005)


@pytest.fixture
def slow_prefill_worker(tiny_engine):
    # One token per forward: a long prompt's prefill takes seconds, and cancellation is checked
    # between chunks, so a cancelled prefetch must give way within one forward.
    engine = Engine(tiny_engine.loaded, EngineOptions(prefill_chunk=1))
    worker = EngineWorker(lambda: engine).start()
    assert worker.loaded.wait(30)
    yield worker
    worker.stop()


def test_a_prefetch_is_cancelled_by_a_real_request_and_never_delays_it(slow_prefill_worker):
    w = slow_prefill_worker
    t0 = time.perf_counter()
    w.submit(real("file:///solo.py")).result(30)
    solo_s = time.perf_counter() - t0

    warm = FimRequest(doc="file:///big.py", prefix=LONG, suffix="\n", max_tokens=1, background=False)
    t0 = time.perf_counter()
    w.prefetch(warm)
    wait_for(lambda: w.prefetches["started"] == 1)
    time.sleep(0.2)  # well into its prefill
    assert not warm.cancel.cancelled
    t1 = time.perf_counter()
    fut = w.submit(real())
    assert warm.cancel.cancelled  # the moment a real request is submitted
    assert fut.result(30).finish
    waited_s = time.perf_counter() - t1
    wait_for(lambda: w.prefetches["cancelled"] == 1)
    assert w.prefetches["completed"] == 0
    # The real request waited about as long as alone, not for the prefetch's seconds of prefill.
    assert waited_s < solo_s + 0.5, (waited_s, solo_s)
    assert time.perf_counter() - t0 < 10


def test_a_prefetch_waits_for_queued_requests_and_the_newest_prefetch_wins(slow_prefill_worker):
    w = slow_prefill_worker
    fut = w.submit(real())
    first = FimRequest(doc="file:///b.py", prefix="x = 1\n", suffix="", max_tokens=1, background=False)
    second = FimRequest(doc="file:///b.py", prefix="x = 2\n", suffix="", max_tokens=1, background=False)
    w.prefetch(first)
    w.prefetch(second)
    assert first.cancel.cancelled and not second.cancel.cancelled
    fut.result(30)
    wait_for(lambda: w.prefetches["completed"] == 1)
    assert w.prefetches["started"] == 1  # only the newest ran, after the real request


def test_a_superseded_running_request_fails_at_once(slow_prefill_worker):
    w = slow_prefill_worker
    first = w.submit(FimRequest(doc="d", prefix=LONG, suffix="", max_tokens=1, background=False))
    wait_for(lambda: first.running())
    second = w.submit(real("d"))
    with pytest.raises(Cancelled):
        first.result(1)
    assert second.result(30).finish
