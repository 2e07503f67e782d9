"""KV state of recent prompts, found by longest common token prefix (SGLang's radix idea, flat).

Each entry is one token sequence with its transformers `DynamicCache`: a prompt followed by the
tokens decoded after it. A new prompt takes the entry sharing its longest prefix, crops it there
and prefills only the rest. Entries are evicted least-recently-used to a byte budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Below this many shared tokens an entry of another document is left alone: taking it would
# destroy its cache for almost no gain.
MIN_SHARED_TO_TAKE = 32

Ranking = tuple[int, ...]


@dataclass
class Sequence:
    """Token ids whose keys/values are in `cache`.

    ids[:prompt_len] came from a prompt; ids[prompt_len:] were decoded. choices[i] says how
    ids[prompt_len + i] was chosen: None, it was the argmax; otherwise a constraint (owed heal
    text) picked it, and choices[i] ranks the top tokens there, best first, so a replay can tell
    whether it is still the pick under a different constraint (an empty ranking: unknown).
    `next_logits` are the logits after ids[-1], when known.
    """

    doc: str
    ids: list[int] = field(default_factory=list)
    cache: Any = None
    prompt_len: int = 0
    choices: list[Ranking | None] = field(default_factory=list)
    next_logits: Any = None
    last_used: float = field(default_factory=time.monotonic)

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (cache included)."""
        drop = len(self.ids) - n
        if drop <= 0:
            return
        if self.cache is not None:
            self.cache.crop(-drop)
        del self.ids[n:]
        keep_decoded = max(0, n - self.prompt_len)
        del self.choices[keep_decoded:]
        self.prompt_len = min(self.prompt_len, n)
        self.next_logits = None

    def nbytes(self) -> int:
        if self.cache is None:
            return 0
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
        return total


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


@dataclass
class PrefixStore:
    budget_bytes: int = 512 * 2**20
    enabled: bool = True
    max_entries: int = 64  # also bounded in count: `take` scans every entry, and tiny entries add up
    entries: list[Sequence] = field(default_factory=list)
    hits: int = 0
    misses: int = 0

    def take(self, doc: str, ids: list[int]) -> tuple[Sequence, int]:
        """The sequence to extend for prompt `ids`, and how many of its tokens `ids` shares.

        The caller owns the returned sequence until it calls `put` again (one engine worker).
        """
        best, best_len = None, 0
        if self.enabled:
            for seq in self.entries:
                n = common_prefix(seq.ids, ids)
                if n > best_len or (n == best_len and best is not None and seq.doc == doc and best.doc != doc):
                    best, best_len = seq, n
        if best is not None and (best_len >= MIN_SHARED_TO_TAKE or best.doc == doc) and best_len > 0:
            self.entries.remove(best)
            best.doc = doc
            self.hits += 1
            return best, best_len
        self.misses += 1
        return Sequence(doc=doc), 0

    def put(self, seq: Sequence) -> None:
        if not self.enabled or seq.cache is None:
            return
        seq.last_used = time.monotonic()
        self.entries.append(seq)
        self.evict()

    def evict(self) -> None:
        """Drop least-recently-used entries until within the byte budget and the entry limit."""
        self.entries.sort(key=lambda s: s.last_used)
        sizes = [s.nbytes() for s in self.entries]
        total, drop = sum(sizes), 0
        while drop < len(sizes) and (total > self.budget_bytes or len(sizes) - drop > self.max_entries):
            total -= sizes[drop]
            drop += 1
        del self.entries[:drop]

    def total_bytes(self) -> int:
        return sum(s.nbytes() for s in self.entries)

    def clear(self) -> None:
        self.entries.clear()
