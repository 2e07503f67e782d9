"""Counters and latency percentiles, served by the `codestral/stats` request."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_SHOWN = 1000  # suggestion ids kept for acceptance feedback


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


@dataclass
class Timings:
    """Where one request's time went (ms), from the handler's call to the answer."""

    cursor_ms: float = 0.0  # reading the cursor (its parse included when the request needed it)
    prompt_ms: float = 0.0  # the windows (token counting) and context from other files
    queued_ms: float = 0.0  # waiting behind other engine work
    prefill_tokens: int = 0
    prefill_ms: float = 0.0
    decoded_tokens: int = 0
    decode_ms: float = 0.0
    engine_calls: int = 0  # the first answer plus second opinions
    post_ms: float = 0.0  # post-processing and the fit check
    total_ms: float = 0.0
    source: str = ""  # engine, typed-through, declined

    def add_engine(self, r: Any) -> None:
        self.engine_calls += 1
        self.queued_ms += r.queued_ms
        self.prefill_tokens += r.prefilled_tokens
        self.prefill_ms += r.prefill_ms
        self.decoded_tokens += r.decoded_tokens
        self.decode_ms += max(0.0, r.elapsed_ms - r.prefill_ms)

    def rounded(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in self.__dict__.items()}


@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    requests: int = 0
    suggestions: int = 0
    empty: int = 0
    cancelled: int = 0
    overtaken: int = 0  # requests a newer one for their document overtook before they started
    errors: int = 0
    typed_through_hits: int = 0
    second_opinions_found: int = 0  # answers a second opinion found after the first did not fit
    rejected: int = 0  # suggestions that could not fit the code around the cursor (postprocess.misfit)
    grown: int = 0  # budget-cut blocks decoded further after the first answer
    quick_answers: int = 0  # cold places answered first from their nearest lines (quickFirst)
    quick_replaced: int = 0  # of those, where the whole prompt's answer said something else
    quick_missed: int = 0  # quick answers with nothing to show: the whole prompt answered at once
    warm_ups: int = 0  # prompts prefilled ahead of a request (didOpen, pauses, didFocus)
    warm_prompts: int = 0  # engine requests that found their whole prompt already cached
    engine_calls: int = 0
    accepted: int = 0
    partially_accepted: int = 0
    accepted_chars: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    replayed_tokens: int = 0
    decoded_tokens: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))
    shown: dict[str, int] = field(default_factory=dict)  # suggestion id -> length, for acceptance
    last: Timings = field(default_factory=Timings)  # the latest request's
    timings_ms: dict[str, float] = field(default_factory=dict)  # every request's, summed by phase

    def timed(self, t: Timings) -> None:
        self.last = t
        for k, v in t.rounded().items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.timings_ms[k] = round(self.timings_ms.get(k, 0) + v, 1)

    def remember_shown(self, suggestion_id: str, length: int) -> None:
        """For acceptance feedback; the oldest go first (a client may never accept anything)."""
        self.shown[suggestion_id] = length
        while len(self.shown) > MAX_SHOWN:
            self.shown.pop(next(iter(self.shown)))

    def add_engine(self, result: Any) -> None:
        self.engine_calls += 1
        for name in ("prompt_tokens", "reused_tokens", "replayed_tokens", "decoded_tokens",
                     "draft_proposed", "draft_accepted"):
            setattr(self, name, getattr(self, name) + getattr(result, name))

    def snapshot(self) -> dict[str, Any]:
        lat = list(self.latencies_ms)
        out = {k: v for k, v in self.__dict__.items() if isinstance(v, int)}
        out["uptime_s"] = round(time.monotonic() - self.started, 1)
        out["latency_ms"] = {f"p{q}": percentile(lat, q) for q in (50, 90, 95, 99)} | {"count": len(lat)}
        out["kv_reuse_ratio"] = round(self.reused_tokens / self.prompt_tokens, 3) if self.prompt_tokens else None
        out["acceptance_rate"] = round(self.accepted / self.suggestions, 3) if self.suggestions else None
        out["timings"] = self.last.rounded()
        out["timings_total"] = dict(self.timings_ms)
        return out
