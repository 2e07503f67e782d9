"""The decode path, top to bottom: take cache → replay → prefill → decode (speculating) → keep cache.

Read it like gpt-fast's generate.py. All state is explicit: a `Sequence` (token ids + their
DynamicCache) taken from the `PrefixStore`, extended, and put back. Greedy decoding only: a
completion must be the same every time for the same text, and that determinism is what lets a
cached continuation stand in for decoding (`_replay`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from engine.errors import Cancelled
from engine.fim import FimPrompt
from engine.heal import HealIndex
from engine.kvcache import PrefixStore, Sequence
from engine.loading import LoadedModel
from engine.options import EngineOptions
from engine.request import CancelToken, FimRequest, FimResult

log = logging.getLogger(__name__)


@dataclass
class _Lookup:
    """Adaptive prompt-lookup state: draft only while drafts are being accepted."""

    proposed: int = 0
    accepted: int = 0
    cooldown: int = 0

    def worth_trying(self) -> bool:
        if self.cooldown > 0:
            self.cooldown -= 1
            return False
        return True

    def record(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted == 0:
            self.cooldown = 8  # a rejected draft cost a wider forward for nothing: back off


@dataclass
class _Decode:
    """One request's decode state; `gen` holds chosen tokens (the last may not be fed yet)."""

    req: FimRequest
    prompt: FimPrompt
    seq: Sequence
    rest: str  # heal text still owed
    gen: list[int] = field(default_factory=list)
    text: str = ""
    finish: str = ""
    result: FimResult | None = None


class Engine:
    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.encoder = loaded.encoder
        self.options = options or EngineOptions()
        self.store = PrefixStore(budget_bytes=self.options.kv_budget_bytes, enabled=self.options.kv_reuse)
        vocab = self.model.config.vocab_size
        self.heal = HealIndex.build(loaded.tokenizer, vocab)
        self.lookup = _Lookup()
        self.device = torch.device(loaded.device)
        self._background: _Decode | None = None
        self.forward_calls = 0

    # -- public -----------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.encoder.encode_text(text))

    def complete(self, req: FimRequest) -> FimResult:
        """The suggestion for `req`; raises `Cancelled` if its cancel token is set meanwhile."""
        t0 = time.perf_counter()
        self._background = None  # a new request always wins over prefetch work
        prompt = self.encoder.build(req.prefix, req.suffix, req.forced_middle, req.extra_files, heal=req.heal)
        seq, shared = self.store.take(req.doc, prompt.ids)
        state = _Decode(req, prompt, seq, rest=prompt.heal)
        result = FimResult(text="", finish="", prompt_tokens=len(prompt.ids))
        state.result = result
        try:
            logits = self._replay(state, shared)
            result.prefill_ms = (time.perf_counter() - t0) * 1000
            if not state.finish:
                deadline = t0 + req.budget_ms / 1000 if req.budget_ms else None
                self._decode(state, logits, deadline)
        except Cancelled:
            # Cancellation lands between forwards: the sequence is a valid cache of its ids.
            seq.next_logits = None
            del seq.constraints[max(0, len(seq.ids) - seq.prompt_len):]
            self.store.put(seq)
            raise
        # Any other failure may have left a half-updated cache: drop the sequence (not put back).
        self.store.put(seq)
        result.text = state.text
        result.finish = state.finish
        result.elapsed_ms = (time.perf_counter() - t0) * 1000
        if req.background and state.finish in ("budget", "stop") and seq.next_logits is not None:
            self._background = state
        return result

    def has_background_work(self) -> bool:
        return self._background is not None

    def background_step(self) -> bool:
        """Decode one more token past the last answer (prefetch); False when there is no more."""
        st = self._background
        if st is None or st.seq.next_logits is None or st.rest:
            self._background = None
            return False
        decoded = len(st.seq.ids) - st.seq.prompt_len
        if decoded >= st.req.max_tokens + self.options.background_tokens:
            self._background = None
            return False
        token = int(st.seq.next_logits.argmax())
        if token in st.prompt.stop_ids:
            self._background = None
            return False
        st.seq.constraints.append(None)
        st.seq.next_logits = self._forward(st.seq, [token])[-1]
        return True

    # -- phases -----------------------------------------------------------------------------

    def _replay(self, st: _Decode, shared: int) -> torch.Tensor | None:
        """Bring `st.seq` to the prompt; replay cached decoded tokens that are still valid.

        Returns the logits after the last fed token, or None when `st.finish` is already set.
        """
        seq, ids, res = st.seq, st.prompt.ids, st.result
        assert res is not None
        n = len(ids)
        if shared >= n and n >= seq.prompt_len:
            # The whole prompt is cached and what follows it was decoded greedily: replay it.
            res.reused_tokens = n
            old_prompt_len, old_constraints = seq.prompt_len, seq.constraints
            seq.prompt_len = n
            seq.constraints = []
            pos = n
            while pos < len(seq.ids):
                token = seq.ids[pos]
                old = old_constraints[pos - old_prompt_len] if pos - old_prompt_len < len(old_constraints) else ""
                if not self._still_greedy(token, old, st.rest):
                    break
                seq.constraints.append(st.rest or None)
                res.replayed_tokens += 1
                if self._accept(st, token):
                    # Stopped inside the cached continuation: keep its tail (with its own
                    # constraints) for the next keystroke, no model call at all.
                    seq.constraints += old_constraints[pos + 1 - old_prompt_len:]
                    return None
                pos += 1
            if pos == len(seq.ids) and seq.next_logits is not None:
                return seq.next_logits
            # Diverged (or no logits kept): re-feed the last valid token to get fresh logits.
            constraints = seq.constraints[: pos - n]
            last = self._token_at(st, pos - 1)
            seq.truncate(pos - 1)
            res.prefilled_tokens = 1
            logits = self._prefill(seq, [last], st.req.cancel)
            seq.prompt_len, seq.constraints = n, constraints
            return logits
        keep = min(shared, n - 1)
        seq.truncate(keep)
        seq.prompt_len = 0
        seq.constraints = []
        res.reused_tokens = keep
        res.prefilled_tokens = n - keep
        logits = self._prefill(seq, ids[keep:], st.req.cancel)
        seq.prompt_len = n
        return logits

    def _token_at(self, st: _Decode, pos: int) -> int:
        n = len(st.prompt.ids)
        return st.prompt.ids[pos] if pos < n else st.gen[pos - n]

    def _still_greedy(self, token: int, old: str | None, rest: str) -> bool:
        """Was cached `token` also the (constrained) greedy choice now?

        It was the argmax over the tokens allowed by `old`; it is the argmax now if it is allowed
        by `rest` and `rest` allows a subset of what `old` did.
        """
        if old is None:
            return self.heal.consistent(token, rest)
        if old == "":  # unknown: cached tail without constraint records
            return False
        return bool(rest) and rest.startswith(old) and self.heal.consistent(token, rest)

    def _prefill(self, seq: Sequence, ids: list[int], cancel: CancelToken) -> torch.Tensor:
        chunk = self.options.prefill_chunk
        logits = None
        for i in range(0, len(ids), chunk):
            if cancel.cancelled:
                raise Cancelled("request cancelled during prefill")
            logits = self._forward(seq, ids[i:i + chunk])
        assert logits is not None
        return logits[-1]

    def _decode(self, st: _Decode, logits: torch.Tensor, deadline: float | None) -> None:
        seq, res, req = st.seq, st.result, st.req
        assert res is not None
        while True:
            token = self._choose(logits, st.rest)
            if token in st.prompt.stop_ids:
                seq.next_logits = logits
                st.finish = "stop"
                return
            constraint = st.rest or None
            if self._accept(st, token):
                seq.next_logits = logits
                return
            if len(st.gen) >= req.max_tokens:
                seq.next_logits = logits
                st.finish = "length"
                return
            if deadline is not None and time.perf_counter() > deadline and not st.rest and st.text.strip():
                seq.next_logits = logits
                st.finish = "budget"
                return
            if req.cancel.cancelled:
                seq.next_logits = None
                raise Cancelled("request superseded")
            draft = self._draft(seq.ids + [token]) if (self.options.speculation and not st.rest) else []
            if draft:
                logits = self._verify(st, token, constraint, draft)
                if st.finish:
                    return
            else:
                seq.constraints.append(constraint)
                logits = self._forward(seq, [token])[-1]
                res.decoded_tokens += 1

    def _accept(self, st: _Decode, token: int) -> bool:
        """Add a chosen token to the suggestion; True when the stop rule ends it here."""
        st.gen.append(token)
        st.rest = self.heal.advance(st.rest, token)
        if st.rest:
            return False
        full = self.encoder.decode(st.gen)
        heal = st.prompt.heal
        middle = full[len(heal):] if full.startswith(heal) else full
        st.text, done = st.req.stop.cut(middle)
        if done:
            st.finish = "stop"
        return done

    def _choose(self, logits: torch.Tensor, rest: str) -> int:
        if not rest:
            return int(logits.argmax())
        allowed = self.heal.allowed(rest)
        if not allowed:  # nothing spells the owed text: fall back to free choice
            return int(logits.argmax())
        idx = torch.tensor(allowed, device=logits.device)
        return allowed[int(logits.index_select(0, idx).argmax())]

    # -- speculation (prompt lookup) --------------------------------------------------------

    def _draft(self, ids: list[int]) -> list[int]:
        """Tokens that followed the latest earlier occurrence of the last 3 (or 2) tokens."""
        if not self.lookup.worth_trying():
            return []
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

    def _verify(self, st: _Decode, token: int, constraint: str | None, draft: list[int]) -> torch.Tensor:
        """Feed `token` + draft in one forward; keep the prefix of the draft greedy agrees with."""
        seq, res = st.seq, st.result
        assert res is not None
        logits = self._forward(seq, [token, *draft], n_logits=len(draft) + 1)
        seq.constraints.append(constraint)
        res.decoded_tokens += 1
        accepted = 0
        for j, d in enumerate(draft):
            choice = int(logits[j].argmax())
            if choice != d:
                break
            accepted += 1
            seq.constraints.append(None)
            if d in st.prompt.stop_ids:
                accepted -= 1
                seq.constraints.pop()
                break
            if self._accept(st, d) or len(st.gen) >= st.req.max_tokens:
                st.finish = st.finish or "length"
                break
        rejected = len(draft) - accepted
        if rejected:
            seq.truncate(len(seq.ids) - rejected)
        self.lookup.record(len(draft), accepted)
        res.draft_proposed += len(draft)
        res.draft_accepted += accepted
        nxt = logits[accepted]
        if st.finish:
            # The last accepted token is fed; its successor's logits are known.
            seq.next_logits = nxt
        return nxt

    # -- the model --------------------------------------------------------------------------

    def _forward(self, seq: Sequence, ids: list[int], n_logits: int = 1) -> torch.Tensor:
        if seq.cache is None:
            from transformers import DynamicCache

            seq.cache = DynamicCache(config=self.model.config)
        inp = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=inp, past_key_values=seq.cache, use_cache=True, logits_to_keep=n_logits)
        seq.ids.extend(ids)
        self.forward_calls += 1
        return out.logits[0].float()
