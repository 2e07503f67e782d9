"""Draft-model speculation: a small model sharing the target's tokenizer proposes the next tokens,
the target checks them all in one forward (`Engine._verify`), so the output is exactly the
target's greedy output and only the number of target forwards changes.

It pays where a target forward costs much more than a draft forward and little more for a few
extra positions: a GPU, the 0.5B drafting for a 1.5B–22B target. On a 2-core CPU a wider forward
costs nearly proportionally more (benchmarks/README.md), so it is off unless `--draft-model` is given.
The draft keeps its own KV prefix store, so across keystrokes it too only feeds the new tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from codestral_ls.engine.decoding.kvcache import Entry, PrefixStore, Sequence
from codestral_ls.engine.decoding.runner import Runner, prefill
from codestral_ls.engine.errors import Cancelled, ModelLoadError
from codestral_ls.engine.request import CancelToken


class DraftModel:
    def __init__(self, runner: Runner, budget_bytes: int, prefill_chunk: int = 256) -> None:
        self.runner = runner
        self.store = PrefixStore(budget_bytes=budget_bytes, enabled=True)
        runner.attach(self.store)
        self.prefill_chunk = prefill_chunk
        self.forward_calls = 0

    @staticmethod
    def check_compatible(target_tokenizer: Any, draft_tokenizer: Any, target_vocab: int, draft_vocab: int) -> None:
        """Drafts are token ids: both models must read them the same way."""
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise ModelLoadError("--draft-model must use the same tokenizer as the model (the vocabularies differ)")
        if draft_vocab > target_vocab:
            raise ModelLoadError(
                f"--draft-model has a larger vocabulary ({draft_vocab}) than the model ({target_vocab})")

    def propose(self, doc: str, ids: list[int], k: int, stop_ids: frozenset[int], cancel: CancelToken) -> list[int]:
        """Up to `k` greedy tokens of the draft after `ids` (ending before a stop token)."""
        entry, shared = self.store.take(doc, ids)
        keep = min(shared, len(ids) - 1)
        entry.truncate(keep)
        try:
            out = self._propose(entry.seq, ids[keep:], k, stop_ids, cancel)
        except Cancelled:
            self._keep(entry)  # cancelled between forwards: still a valid cache of its ids
            raise
        except BaseException:
            entry.seq.release()  # may be a half-updated cache: dropped
            raise
        self._keep(entry)
        return out

    def _propose(self, seq: Sequence, pending: list[int], k: int, stop_ids: frozenset[int],
                 cancel: CancelToken) -> list[int]:
        logits = prefill(self._forward, seq, pending, self.prefill_chunk, cancel)
        out: list[int] = []
        while len(out) < k:
            token = int(np.argmax(logits))
            if token in stop_ids:
                break
            out.append(token)
            if len(out) < k:
                logits = self._forward(seq, [token])[-1]
        return out

    def _keep(self, entry: Entry) -> None:
        entry.prompt_len = len(entry.ids)
        self.store.put(entry)

    def _forward(self, seq: Sequence, ids: list[int]) -> Any:
        self.forward_calls += 1
        return self.runner.forward(seq, ids)
