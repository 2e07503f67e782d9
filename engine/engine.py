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
from codestral_ls.engine.draft import DraftModel
from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.fim import FimPrompt
from codestral_ls.engine.forward import forward, prefill
from codestral_ls.engine.heal import HealIndex
from codestral_ls.engine.kvcache import PrefixStore, Ranking, Sequence
from codestral_ls.engine.loading import LoadedModel
from codestral_ls.engine.options import EngineOptions
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult

log = logging.getLogger(__name__)

RANKED = 1024  # most tokens ranked at a constrained pick, so a replay can re-make it exactly


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
    def __init__(self, loaded: LoadedModel, options: EngineOptions | None = None,
                 draft: DraftModel | None = None) -> None:
        self.loaded = loaded
        self.draft = draft
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
            del seq.choices[max(0, len(seq.ids) - seq.prompt_len):]
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
        token, choice = self._choose(st.seq.next_logits, st)
        if token in st.prompt.stop_ids:
            self._background = None
            return False
        st.seq.choices.append(choice)
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
            old_prompt_len, old_choices = seq.prompt_len, seq.choices
            seq.prompt_len = n
            seq.choices = []
            pos = n
            while pos < len(seq.ids):
                token = seq.ids[pos]
                old = old_choices[pos - old_prompt_len] if pos - old_prompt_len < len(old_choices) else ()
                if not self._still_greedy(token, old, st):
                    break
                seq.choices.append(old)  # how it ranked does not depend on the constraint
                res.replayed_tokens += 1
                if self._accept(st, token):
                    # Stopped inside the cached continuation: keep its tail (with its own
                    # choices) for the next keystroke, no model call at all.
                    seq.choices += old_choices[pos + 1 - old_prompt_len:]
                    return None
                pos += 1
            if pos == len(seq.ids) and seq.next_logits is not None:
                return seq.next_logits
            # Diverged (or no logits kept): re-feed the last valid token to get fresh logits.
            choices = seq.choices[: pos - n]
            last = self._token_at(st, pos - 1)
            seq.truncate(pos - 1)
            res.prefilled_tokens = 1
            logits = self._prefill(seq, [last], st.req.cancel)
            seq.prompt_len, seq.choices = n, choices
            return logits
        keep = min(shared, n - 1)
        seq.truncate(keep)
        seq.prompt_len = 0
        seq.choices = []
        res.reused_tokens = keep
        res.prefilled_tokens = n - keep
        logits = self._prefill(seq, ids[keep:], st.req.cancel)
        seq.prompt_len = n
        return logits

    def _token_at(self, st: _Decode, pos: int) -> int:
        n = len(st.prompt.ids)
        return st.prompt.ids[pos] if pos < n else st.gen[pos - n]

    def _still_greedy(self, token: int, old: Ranking | None, st: _Decode) -> bool:
        """Would cached `token` be chosen now, in state `st`?

        An argmax (`old` None) stays the pick wherever it is permitted. A constrained pick is
        re-made from its ranking: the best-ranked token permitted now must be `token` (tokens
        outside the ranking score lower than all in it, so none can win).
        """
        if old is None:
            return self._permits(st, token)
        for t in old:
            if self._permits(st, t):
                return t == token
        return False

    def _permits(self, st: _Decode, token: int) -> bool:
        """May `token` come next: it pays the owed heal text and does not begin an avoided line."""
        return self.heal.consistent(token, st.rest) and not (st.req.avoid and self._starts_avoided(st, token))

    def _starts_avoided(self, st: _Decode, token: int) -> bool:
        if st.text.strip():
            return False  # only the suggestion's first words are steered
        piece = self.heal.strings[token]
        if st.rest:
            piece = piece[len(st.rest):] if piece.startswith(st.rest) else ""
        content = (st.text + piece).lstrip()
        return bool(content) and any(a.startswith(content) for a in st.req.avoid)

    def _steering(self, st: _Decode) -> bool:
        """Is a constraint still in force (heal text owed, or avoided starts not yet passed)?"""
        return bool(st.rest) or bool(st.req.avoid and not st.text.strip())

    def _prefill(self, seq: Sequence, ids: list[int], cancel: CancelToken) -> torch.Tensor:
        return prefill(self._forward, seq, ids, self.options.prefill_chunk, cancel)

    def _decode(self, st: _Decode, logits: torch.Tensor, deadline: float | None) -> None:
        seq, res, req = st.seq, st.result, st.req
        assert res is not None
        while True:
            token, choice = self._choose(logits, st)
            if token in st.prompt.stop_ids:
                seq.next_logits = logits
                st.finish = "stop"
                return
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
            draft = self._draft(st, token) if self.options.speculation and not self._steering(st) else []
            if draft:
                logits = self._verify(st, token, choice, draft)
                if st.finish:
                    return
            else:
                seq.choices.append(choice)
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

    def _choose(self, logits: torch.Tensor, st: _Decode) -> tuple[int, Ranking | None]:
        """The token to take and how it was chosen (see `Sequence.choices`)."""
        best = int(logits.argmax())
        if not self._steering(st) or self._permits(st, best):
            return best, None
        if st.rest:
            allowed = self.heal.allowed(st.rest)
            if not allowed:  # nothing spells the owed text: fall back to free choice
                return best, None
            idx = torch.tensor(allowed, device=logits.device)
            order = torch.argsort(logits.index_select(0, idx), descending=True).tolist()
            candidates = [allowed[i] for i in order]
        else:
            candidates = torch.topk(logits, min(RANKED, logits.numel())).indices.tolist()
        # Every candidate starting an avoided line: give up avoiding, keep paying the heal text.
        token = next((t for t in candidates if self._permits(st, t)), candidates[0])
        if token == best:
            return best, None
        # Rank everything that scored above the pick (capped: past that, a replay re-decodes).
        above = int((logits > logits[token]).sum()) + 1
        return token, tuple(torch.topk(logits, min(max(above, 8), RANKED, logits.numel())).indices.tolist())

    # -- speculation (prompt lookup) --------------------------------------------------------

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

    def _verify(self, st: _Decode, token: int, choice: Ranking | None, draft: list[int]) -> torch.Tensor:
        """Feed `token` + draft in one forward; keep the prefix of the draft greedy agrees with."""
        seq, res = st.seq, st.result
        assert res is not None
        logits = self._forward(seq, [token, *draft], n_logits=len(draft) + 1)
        seq.choices.append(choice)
        res.decoded_tokens += 1
        accepted = 0
        for j, d in enumerate(draft):
            choice = int(logits[j].argmax())
            if choice != d:
                break
            accepted += 1
            seq.choices.append(None)
            if d in st.prompt.stop_ids:
                accepted -= 1
                seq.choices.pop()
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
        self.forward_calls += 1
        return forward(self.model, seq, ids, self.device, n_logits)
