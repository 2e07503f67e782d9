"""KV state of recent prompts, found by longest common token prefix (SGLang's radix idea, flat).

A `Sequence` is what a cache holds: token ids and the runner's keys/values for exactly those ids
(`KV`, a torch DynamicCache or a llama.cpp sequence slot). An `Entry` of the `PrefixStore` is a
sequence plus what the engine learnt decoding it: which ids were prompt, how each decoded token
was chosen, and the logits after the last one. A new prompt takes the entry sharing its longest
prefix, crops it there and prefills only the rest.

Shared entries (spines): the text of an open file from a window start on, prefilled while the user
reads (`FimRequest.spine`). A request never takes one: it takes a copy (`Fork`, the runner's), cropped
where its prompt leaves the spine, so one spine serves every cursor whose prompt starts there. Only
a newer spine of the same document replaces it.

Rules: entries are evicted least-recently-used to a byte budget and an entry limit, but the most
recent entry is never evicted (it is the one the next keystroke needs); when it alone is over the
budget that is logged and counted in `oversized`. Growth after `put` (background decoding) is
brought back under the budget by calling `evict` again. An evicted entry releases its runner
state at once (a llama.cpp slot is a bounded resource).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Below this many shared tokens an entry of another document is left alone: taking it would
# destroy its cache for almost no gain.
MIN_SHARED_TO_TAKE = 32

Ranking = tuple[int, ...]


class KV(Protocol):
    """A runner's keys/values for one sequence."""

    def crop(self, n: int) -> None:
        """Keep the first n positions."""

    def nbytes(self, n_tokens: int) -> int:
        """Bytes held for a sequence of n_tokens."""

    def release(self) -> None:
        """Free the state now (it is never used again)."""


@dataclass(eq=False)
class Sequence:
    """Token ids whose keys/values are in `kv` (None until the runner first feeds it)."""

    ids: list[int] = field(default_factory=list)
    kv: KV | None = None

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (their keys/values included)."""
        if len(self.ids) <= n:
            return
        if self.kv is not None:
            self.kv.crop(n)
        del self.ids[n:]

    def nbytes(self) -> int:
        return self.kv.nbytes(len(self.ids)) if self.kv is not None else 0

    def release(self) -> None:
        if self.kv is not None:
            self.kv.release()
            self.kv = None
        self.ids.clear()


@dataclass(eq=False)
class Entry:
    """A sequence and its decoded continuation.

    seq.ids[:prompt_len] came from a prompt; the rest were decoded. choices[i] says how
    seq.ids[prompt_len + i] was chosen: None, it was the argmax; otherwise a constraint picked it,
    and choices[i] ranks the top tokens there, best first, so a replay can tell whether it is still
    the pick under a different constraint (an empty ranking: unknown). `next_logits` are the
    logits after seq.ids[-1], when known.
    """

    doc: str
    seq: Sequence = field(default_factory=Sequence)
    prompt_len: int = 0
    choices: list[Ranking | None] = field(default_factory=list)
    next_logits: Any = None  # numpy float32 [vocab]
    last_used: float = field(default_factory=time.monotonic)
    shared: bool = False  # a spine: copied by requests, never taken by them

    @property
    def ids(self) -> list[int]:
        return self.seq.ids

    def truncate(self, n: int) -> None:
        """Keep the first n tokens; what was learnt about the dropped ones goes with them."""
        if len(self.seq.ids) <= n:
            return
        self.seq.truncate(n)
        del self.choices[max(0, n - self.prompt_len):]
        self.prompt_len = min(self.prompt_len, n)
        self.next_logits = None

    def nbytes(self) -> int:
        return self.seq.nbytes()


Fork = Callable[[Sequence], Sequence]  # a copy of a sequence's ids and keys/values (the runner's)


def _rank(entry: Entry, doc: str, ids: list[int]) -> int:
    """Among entries sharing as much: the document's own, a working one, one decoded from exactly this
    prompt (its continuation replays) first."""
    return (entry.doc != doc) * 4 + entry.shared * 2 + (entry.prompt_len != len(ids))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Compare in blocks first: prompts share hundreds of tokens.
    step = 64
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class PrefixStore:
    budget_bytes: int = 512 * 2**20
    enabled: bool = True
    max_entries: int = 64  # also bounded in count: `take` scans every entry, and tiny entries add up
    entries: list[Entry] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    oversized: int = 0  # times the most recent entry alone was over the budget (kept anyway)
    # What `summary` returns: computed by the thread that changes the store (the engine's), after each
    # change, and swapped in whole. Another thread reading entries' sizes would read runner state that
    # the engine thread is cropping or releasing.
    _summary: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._publish()

    def _publish(self) -> None:
        self._summary = {"entries": len(self.entries), "bytes": sum(e.nbytes() for e in self.entries),
                         "budget_bytes": self.budget_bytes, "oversized": self.oversized}

    def _best(self, doc: str, ids: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with `ids`; on a tie, the document's own working entry
        (no copy needed) before a spine, and the document's own before another's."""
        best, best_len = None, 0
        if not self.enabled:
            return None, 0
        for entry in self.entries:
            n = common_prefix(entry.seq.ids, ids)
            if n > best_len or (n == best_len and best is not None
                                and _rank(entry, doc, ids) < _rank(best, doc, ids)):
                best, best_len = entry, n
        return best, best_len

    def peek(self, ids: list[int]) -> int:
        """How many leading tokens of `ids` some entry holds (what a prompt would not have to prefill)."""
        return self._best("", ids)[1]

    def take(self, doc: str, ids: list[int], fork: Fork | None = None, spine: bool = False,
             warm: bool = False) -> tuple[Entry, int]:
        """The entry to extend for prompt `ids`, and how many of its tokens `ids` shares.

        The caller owns the returned entry until it calls `put` again (one engine worker). A spine is
        copied with `fork` (it stays here for the next cursor), unless `spine` says the caller is a
        newer spine of the same document: that one replaces it. A warm-up (`warm`) copies too, unless
        the entry already is its prompt: the place the user is at keeps its cache and its decoded
        continuation while the next line is prepared.
        """
        best, best_len = self._best(doc, ids)
        if best is None or best_len == 0 or (best_len < MIN_SHARED_TO_TAKE and best.doc != doc):
            self.misses += 1
            return Entry(doc=doc), 0
        self.hits += 1
        replaces = spine and best.shared and best.doc == doc
        same_prompt = best_len >= len(ids) and best.prompt_len == len(ids)
        if (best.shared or spine or (warm and not same_prompt)) and not replaces:
            if fork is None or best.seq.kv is None:
                return Entry(doc=doc), 0
            best.last_used = time.monotonic()  # the most recent now: never the entry a fork evicts
            copy = Entry(doc=doc, seq=fork(best.seq), prompt_len=min(best.prompt_len, len(best.ids)))
            if spine:  # an unfinished earlier copy of this spine is part of the new one: drop it
                for old in [e for e in self.entries if e.shared and e.doc == doc and e is not best
                            and common_prefix(e.seq.ids, ids) == len(e.seq.ids)]:
                    self.discard(old)
            self._publish()
            return copy, best_len
        self.entries.remove(best)
        best.doc = doc
        self._publish()
        return best, best_len

    def put(self, entry: Entry) -> None:
        if not self.enabled or entry.seq.kv is None:
            entry.seq.release()
            return
        entry.last_used = time.monotonic()
        self.entries.append(entry)
        self.evict()
        size = entry.nbytes()
        if size > self.budget_bytes:
            self.oversized += 1
            log.warning("one KV cache entry (%d tokens, %.1f MiB) is over the whole budget (%.1f MiB): kept, "
                        "but raise kvBudgetMb or shorten the prompt", len(entry.seq.ids), size / 2**20,
                        self.budget_bytes / 2**20)
            self._publish()

    def discard(self, entry: Entry) -> None:
        """Forget `entry` (its state is not to be trusted) and free its runner state."""
        if entry in self.entries:
            self.entries.remove(entry)
        entry.seq.release()
        self._publish()

    def evict(self) -> None:
        """Drop least-recently-used entries until within the byte budget and the entry limit,
        never the most recent one."""
        self.entries.sort(key=lambda e: e.last_used)
        sizes = [e.nbytes() for e in self.entries]
        total, drop = sum(sizes), 0
        while drop < len(sizes) - 1 and (total > self.budget_bytes or len(sizes) - drop > self.max_entries):
            total -= sizes[drop]
            drop += 1
        for entry in self.entries[:drop]:
            entry.seq.release()
        del self.entries[:drop]
        self._publish()

    def evict_oldest(self) -> bool:
        """Free the least recently used entry (a runner out of slots or cells asks); False if none."""
        if not self.entries:
            return False
        oldest = min(self.entries, key=lambda e: e.last_used)
        self.entries.remove(oldest)
        oldest.seq.release()
        self._publish()
        return True

    def total_bytes(self) -> int:
        return sum(e.nbytes() for e in list(self.entries))

    def summary(self) -> dict[str, int]:
        """For `codestral/stats`, from any thread: the figures as the engine thread last left them (no
        entry nor runner state is read here). `oversized`: times one entry alone was over the budget."""
        return dict(self._summary)

    def clear(self) -> None:
        for entry in self.entries:
            entry.seq.release()
        self.entries.clear()
        self._publish()
