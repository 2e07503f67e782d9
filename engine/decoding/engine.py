"""The decode path, top to bottom: take cache → replay → prefill → decode (speculating) → keep cache.

Read it like gpt-fast's generate.py: `_replay` / `_prefill` / `_decode` / `_verify` are the phases,
their state is explicit (`_Decode`), and the model is one hop away (`self.runner.forward`, see
`engine/decoding/runner.py`: torch or llama.cpp, logits as numpy rows). Which token may come next (owed heal
text, avoided starts, a replay re-making a constrained pick) is one object, `Constraint`.

Greedy decoding only: a completion must be the same every time for the same text, and that
determinism is what lets a cached continuation stand in for decoding (`_replay`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from codestral_ls.engine.config import EngineOptions
from codestral_ls.engine.decoding.constraint import Constraint, Lookup
from codestral_ls.engine.decoding.draft import DraftModel
from codestral_ls.engine.decoding.heal import HealIndex
from codestral_ls.engine.decoding.kvcache import Entry, PrefixStore, Ranking, Sequence
from codestral_ls.engine.decoding.runner import prefill
from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.models.counting import TokenCounter, counter_for
from codestral_ls.engine.models.fim import FimPrompt
from codestral_ls.engine.models.loading import LoadedModel
from codestral_ls.engine.request import FimRequest, FimResult

log = logging.getLogger(__name__)

WORKING_SEQUENCES = 3  # slots kept for requests' own sequences (this document, another, a grown block)
DEFAULT_SPINES = 6  # spines on a runner whose sequences are bounded by bytes, not slots


@dataclass
class _Decode:
    """One request's decode state; `gen` holds chosen tokens (the last may not be fed yet)."""

    req: FimRequest
    prompt: FimPrompt
    entry: Entry
    rule: Constraint
    result: FimResult
    gen: list[int] = field(default_factory=list)
    decoded: str = ""  # the text of gen[:clean]
    clean: int = 0  # gen[:clean] decodes to whole characters
    text: str = ""
    finish: str = ""

    @property
    def seq(self) -> Sequence:
        return self.entry.seq


class Engine:
    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None,
                 draft: DraftModel | None = None) -> None:
        self.loaded = loaded
        self.draft = draft
        self.runner = loaded.runner
        self.encoder = loaded.encoder
        self.options = options or EngineOptions()
        self.store = PrefixStore(budget_bytes=self.options.kv_budget_bytes, enabled=self.options.kv_reuse)
        self.runner.attach(self.store)
        self.heal = HealIndex.build(loaded.tokenizer, self.runner.vocab_size)
        # Counting for the server's window sizing: the vocabulary's own offsets, or its pieces.
        self.counter = counter_for(loaded.tokenizer, self.encoder.encode_text, self.heal.strings.__getitem__)
        self.lookup = Lookup()
        self._background: _Decode | None = None
        self.forward_calls = 0
        # Prompt tokens prefilled while a request waited vs ahead of one (warm-ups), and their time.
        self.prefilled = {"request_tokens": 0, "request_ms": 0.0, "warm_tokens": 0, "warm_ms": 0.0}

    # -- public -----------------------------------------------------------------------------

    @property
    def context_tokens(self) -> int | None:
        """Most tokens one sequence holds, less what background decoding adds past an answer."""
        seq_ctx = getattr(self.runner, "seq_ctx", None)
        return None if seq_ctx is None else seq_ctx - self.options.background_tokens

    @property
    def spine_capacity(self) -> int:
        """How many spines the cache can hold besides the sequences requests work in (0: none: a
        suffix-first family shares no prompt start between cursors, or the cache is off)."""
        if self.encoder.profile.order != "psm" or not self.options.kv_reuse:
            return 0
        slots = getattr(self.runner, "slots", None)
        return max(0, slots - WORKING_SEQUENCES) if slots else DEFAULT_SPINES

    def drop_background(self) -> None:
        """Forget the continuation being decoded past the last answer (after a fault, or to free memory)."""
        self._background = None

    def complete(self, req: FimRequest) -> FimResult:
        """The suggestion for `req`; raises `Cancelled` if its cancel token is set meanwhile."""
        t0 = time.perf_counter()
        self._background = None  # a new request always wins over prefetch work
        if req.spine:
            return self._warm_spine(req, t0)
        prompt, window = self._prompt(req)
        entry, shared = self.store.take(req.doc, prompt.ids, self.runner.fork, warm=req.warm)
        st = _Decode(req, prompt, entry, Constraint(self.heal, prompt.heal, req.avoid),
                     FimResult(text="", finish="", prompt_tokens=len(prompt.ids), window=window))
        try:
            logits = self._replay(st, shared)
            st.result.prefill_ms = (time.perf_counter() - t0) * 1000
            if not st.finish:
                self._decode(st, logits)
        except Cancelled:
            # Cancellation lands between forwards: the sequence is a valid cache of its ids.
            entry.next_logits = None
            del entry.choices[max(0, len(entry.ids) - entry.prompt_len):]
            self.store.put(entry)
            raise
        except BaseException:
            entry.seq.release()  # may be a half-updated cache: dropped, never put back
            raise
        self.store.put(entry)
        st.result.text, st.result.finish = st.text, st.finish
        st.result.elapsed_ms = (time.perf_counter() - t0) * 1000
        if req.background and st.finish in ("budget", "stop") and entry.next_logits is not None:
            self._background = st
        return st.result

    def has_background_work(self) -> bool:
        return self._background is not None

    def background_step(self) -> bool:
        """Decode one more token past the last answer (prefetch); False when there is no more."""
        st = self._background
        if st is None or st.entry.next_logits is None or st.rule.rest:
            self._background = None
            return False
        decoded = len(st.seq.ids) - st.entry.prompt_len
        if decoded >= st.req.max_tokens + self.options.background_tokens:
            self._background = None
            return False
        token, choice = st.rule.choose(st.entry.next_logits)
        if token in st.prompt.stop_ids:
            self._background = None
            return False
        try:
            logits = self._forward(st.seq, [token])[-1]
        except BaseException:
            # A failed forward (out of memory mid-layer) may leave a half-updated cache in the store.
            self._background = None
            self.store.discard(st.entry)
            raise
        st.entry.choices.append(choice)
        st.entry.next_logits = logits
        self.store.evict()  # the entry grew after `put`: its bytes count against the budget too
        return True

    # -- phases -----------------------------------------------------------------------------

    def _prompt(self, req: FimRequest) -> tuple[FimPrompt, str]:
        """The prompt's ids, with the whole `prefix` or, when that costs more prefill, the shorter window
        from `short_start` (a place whose long window's start nobody prefilled yet)."""
        def build(prefix: str) -> FimPrompt:
            return self.encoder.build(prefix, req.suffix, req.forced_middle, req.extra_files, heal=req.heal,
                                      path=req.path, repo=req.repo)

        def cost(prompt: FimPrompt) -> int:
            return len(prompt.ids) - self.store.peek(prompt.ids)

        best, window = build(req.prefix), ""
        best_cost = cost(best)
        if req.short_start:
            short = build(req.prefix[req.short_start:])
            if (short_cost := cost(short)) < best_cost:
                best, window, best_cost = short, "short", short_cost
            else:
                window = "long"
        if req.quick_tokens and best_cost > max(req.quick_tokens, req.quick_above):
            before, after = quick_window(self.counter, req.prefix, req.suffix, req.quick_tokens)
            quick = self.encoder.build(before, after, req.forced_middle, heal=req.heal)
            if cost(quick) < best_cost:
                return quick, "quick"
        return best, window

    def _warm_spine(self, req: FimRequest, t0: float) -> FimResult:
        """Prefill the start shared by every prompt whose prefix starts with `req.prefix`, and keep it
        as a spine (engine/decoding/kvcache.py); nothing is decoded."""
        ids = self.encoder.spine(req.prefix, req.extra_files, req.path, req.repo)
        if ids is None:
            return FimResult(text="", finish="stop")
        entry, shared = self.store.take(req.doc, ids, self.runner.fork, spine=True)
        keep = min(shared, len(ids))
        entry.truncate(keep)
        entry.prompt_len, entry.choices, entry.next_logits, entry.shared = keep, [], None, True
        try:
            if keep < len(ids):
                self._prefill(entry.seq, ids[keep:], req)
        except Cancelled:  # between chunks: a valid cache of what it holds, continued next time
            entry.prompt_len = len(entry.ids)
            self.store.put(entry)
            raise
        except BaseException:
            entry.seq.release()
            raise
        entry.prompt_len = len(entry.ids)
        self.store.put(entry)
        elapsed = (time.perf_counter() - t0) * 1000
        return FimResult(text="", finish="stop", prompt_tokens=len(ids), reused_tokens=keep,
                         prefilled_tokens=len(ids) - keep, elapsed_ms=elapsed, prefill_ms=elapsed)

    def _replay(self, st: _Decode, shared: int) -> np.ndarray | None:
        """Bring `st.entry` to the prompt; replay cached decoded tokens that are still valid.

        Returns the logits after the last fed token, or None when `st.finish` is already set.
        """
        entry, ids, res = st.entry, st.prompt.ids, st.result
        n = len(ids)
        if shared >= n and n >= entry.prompt_len:
            # The whole prompt is cached and what follows it was decoded greedily: replay it.
            res.reused_tokens = n
            old_prompt_len, old_choices = entry.prompt_len, entry.choices
            entry.prompt_len, entry.choices = n, []
            pos = n
            while pos < len(entry.ids):
                token = entry.ids[pos]
                old = old_choices[pos - old_prompt_len] if pos - old_prompt_len < len(old_choices) else ()
                if not st.rule.still_chosen(token, old):
                    break
                entry.choices.append(old)  # how it ranked does not depend on the constraint
                res.replayed_tokens += 1
                if self._accept(st, token, replaying=True) or self._at_length(st):
                    # Stopped inside the cached continuation: keep its tail (with its own
                    # choices) for the next keystroke, no model call at all.
                    entry.choices += old_choices[pos + 1 - old_prompt_len:]
                    return None
                pos += 1
            if pos == len(entry.ids) and entry.next_logits is not None:
                return entry.next_logits
            # Diverged (or no logits kept): re-feed the last valid token to get fresh logits.
            choices = entry.choices[: pos - n]
            last = self._token_at(st, pos - 1)
            entry.truncate(pos - 1)
            res.prefilled_tokens = 1
            logits = self._prefill(entry.seq, [last], st.req)
            entry.prompt_len, entry.choices = n, choices
            return logits
        keep = min(shared, n - 1)
        entry.truncate(keep)
        entry.prompt_len, entry.choices = 0, []
        res.reused_tokens = keep
        res.prefilled_tokens = n - keep
        logits = self._prefill(entry.seq, ids[keep:], st.req)
        entry.prompt_len = n
        return logits

    def _token_at(self, st: _Decode, pos: int) -> int:
        n = len(st.prompt.ids)
        return st.prompt.ids[pos] if pos < n else st.gen[pos - n]

    def _prefill(self, seq: Sequence, ids: list[int], req: FimRequest) -> np.ndarray:
        chunk = self.options.prefill_chunk or (self.runner.warm_chunk if req.warm else self.runner.prefill_chunk)
        kind = "warm" if req.warm else "request"

        def step(seq: Sequence, part: list[int]) -> Any:  # counted chunk by chunk: a cancelled prefill counts too
            t = time.perf_counter()
            out = self._forward(seq, part)
            self.prefilled[f"{kind}_tokens"] += len(part)
            self.prefilled[f"{kind}_ms"] += (time.perf_counter() - t) * 1000
            return out

        return prefill(step, seq, ids, chunk, req.cancel)

    def _decode(self, st: _Decode, logits: np.ndarray) -> None:
        entry, req = st.entry, st.req
        while True:
            token, choice = st.rule.choose(logits)
            entry.next_logits = logits  # kept wherever the loop ends: `token` is not fed yet
            if token in st.prompt.stop_ids:
                st.finish = "stop"
                return
            if self._accept(st, token) or self._at_length(st):
                return
            if req.cancel.cancelled:
                raise Cancelled("request superseded")
            draft = self._draft(st, token) if self.options.speculation and not st.rule.active() else []
            entry.next_logits = None
            if draft:
                logits = self._verify(st, token, choice, draft)
                if st.finish:
                    return
            else:
                logits = self._forward(entry.seq, [token])[-1]
                entry.choices.append(choice)
                st.result.decoded_tokens += 1

    def _at_length(self, st: _Decode) -> bool:
        if len(st.gen) >= st.req.max_tokens:
            st.finish = st.finish or "length"
            return True
        return False

    def _accept(self, st: _Decode, token: int, replaying: bool = False) -> bool:
        """Add a chosen token to the suggestion; True when the stop rule ends it here.

        The latency budget (`StopRule.line_deadline`) never cuts tokens replayed from the cache: they
        cost nothing, and a client asking again after a grown block must get all of it (cutting
        there answered the first line again, and the block grew again, over and over).
        """
        st.gen.append(token)
        st.rule.advance(token)
        if st.rule.rest:
            return False
        # Decode only what is new: the tokens since the last whole character (a byte-level token
        # may end inside one).
        tail = self.encoder.decode(st.gen[st.clean:])
        full = st.decoded + tail
        if not tail.endswith("\ufffd"):
            st.decoded, st.clean = full, len(st.gen)
        heal = st.prompt.heal
        middle = full[len(heal):] if full.startswith(heal) else full
        stop = st.req.stop.unbudgeted() if replaying else st.req.stop
        st.text, why = stop.cut(middle)
        st.rule.text = st.text
        if why is not None:
            st.finish = why
        return why is not None

    # -- speculation (prompt lookup, draft model) -------------------------------------------

    def _draft(self, st: _Decode, token: int) -> list[int]:
        """Tokens likely to follow `token`: copied from the prompt, else from the draft model."""
        if not self.lookup.worth_trying():
            return []
        ids = st.seq.ids + [token]
        return self._lookup_draft(ids) or (
            self.draft.propose(st.req.doc, ids, self.options.draft_model_tokens, st.prompt.stop_ids, st.req.cancel)
            if self.draft is not None else [])

    def _lookup_draft(self, ids: list[int]) -> list[int]:
        """Tokens that followed the latest earlier occurrence of the last 3 (or 2) tokens."""
        k = self.options.draft_max
        for n in (3, 2):
            if len(ids) <= n:
                continue
            tail = ids[-n:]
            # Search backwards: the nearest earlier copy is the likeliest to continue the same way.
            for start in range(len(ids) - n - 1, -1, -1):
                if ids[start:start + n] == tail:
                    draft = ids[start + n:start + n + k]
                    if draft:
                        return draft
        return []

    def _verify(self, st: _Decode, token: int, choice: Ranking | None, draft: list[int]) -> np.ndarray:
        """Feed `token` + draft in one forward; keep the prefix of the draft greedy agrees with."""
        entry, res = st.entry, st.result
        logits = self._forward(entry.seq, [token, *draft], n_logits=len(draft) + 1)
        entry.choices.append(choice)
        res.decoded_tokens += 1
        accepted = 0
        for j, d in enumerate(draft):
            if int(np.argmax(logits[j])) != d or d in st.prompt.stop_ids:
                break
            accepted += 1
            entry.choices.append(None)
            if self._accept(st, d) or self._at_length(st):
                break
        rejected = len(draft) - accepted
        if rejected:
            entry.truncate(len(entry.ids) - rejected)
        self.lookup.record(len(draft), accepted)
        res.draft_proposed += len(draft)
        res.draft_accepted += accepted
        nxt = logits[accepted]
        if st.finish:
            entry.next_logits = nxt  # the last accepted token is fed; its successor's logits are known
        return nxt

    # -- the model --------------------------------------------------------------------------

    def _forward(self, seq: Sequence, ids: list[int], n_logits: int = 1) -> Any:
        self.forward_calls += 1
        return self.runner.forward(seq, ids, n_logits)


QUICK_PREFIX_SHARE = 0.75  # of a quick window, before the cursor


def quick_window(counter: TokenCounter, prefix: str, suffix: str, tokens: int) -> tuple[str, str]:
    """About `tokens` tokens around the cursor, in whole lines where the lines allow: the end of
    `prefix` and the start of `suffix`."""
    keep_before = int(tokens * QUICK_PREFIX_SHARE)
    starts = counter.starts(prefix)
    if len(starts) > keep_before:
        cut = starts[-keep_before]
        line = prefix.find("\n", cut)
        prefix = prefix[line + 1:] if 0 <= line < len(prefix) - 1 else prefix[cut:]
    starts = counter.starts(suffix)
    keep_after = tokens - keep_before
    if len(starts) > keep_after:
        end = starts[keep_after]
        line = suffix.rfind("\n", 0, end)
        suffix = suffix[:line + 1] if line > 0 else suffix[:end]
    return prefix, suffix
