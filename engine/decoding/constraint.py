"""Which token may come next, and how it was chosen: the decode loop's one rule object.

`Constraint` pays the owed heal text first (token healing, engine/decoding/heal.py) and steers the
suggestion's first words off `avoid`ed starts (second opinions). When it overrides the argmax it
records a ranking of what scored above its pick, so a replay of the cached continuation can re-make
the same choice exactly under another constraint (`still_chosen`). `Lookup` decides when prompt-lookup
drafts are worth a wider forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from codestral_ls.engine.decoding.heal import HealIndex
from codestral_ls.engine.decoding.kvcache import Ranking

RANKED = 1024  # most tokens ranked at a constrained pick, so a replay can re-make it exactly


def top(logits: np.ndarray, k: int) -> list[int]:
    """The k best token ids, best first."""
    k = min(k, logits.shape[0])
    part = np.argpartition(-logits, k - 1)[:k]
    return part[np.argsort(-logits[part], kind="stable")].tolist()


@dataclass
class Constraint:
    """What may come next: the owed heal text (`rest`) is paid first, and the suggestion's first
    words must not begin an `avoid`ed line. `text` is the suggestion so far."""

    heal: HealIndex
    rest: str
    avoid: tuple[str, ...] = ()
    text: str = ""

    def active(self) -> bool:
        """Is a constraint still in force (heal text owed, or avoided starts not yet passed)?"""
        return bool(self.rest) or bool(self.avoid and not self.text.strip())

    def permits(self, token: int) -> bool:
        """May `token` come next: it pays the owed heal text and does not begin an avoided line."""
        return self.heal.consistent(token, self.rest) and not (self.avoid and self._starts_avoided(token))

    def _starts_avoided(self, token: int) -> bool:
        if self.text.strip():
            return False  # only the suggestion's first words are steered
        piece = self.heal.strings[token]
        if self.rest:
            piece = piece[len(self.rest):] if piece.startswith(self.rest) else ""
        content = (self.text + piece).lstrip()
        return bool(content) and any(a.startswith(content) for a in self.avoid)

    def choose(self, logits: np.ndarray) -> tuple[int, Ranking | None]:
        """The token to take and how it was chosen (see `Entry.choices`)."""
        best = int(np.argmax(logits))
        if not self.active() or self.permits(best):
            return best, None
        if self.rest:
            allowed = self.heal.allowed(self.rest)
            if not allowed:  # nothing spells the owed text: fall back to free choice
                return best, None
            scores = logits[np.asarray(allowed)]
            candidates = [allowed[i] for i in np.argsort(-scores, kind="stable").tolist()]
        else:
            candidates = top(logits, RANKED)
        # Every candidate starting an avoided line: give up avoiding, keep paying the heal text.
        token = next((t for t in candidates if self.permits(t)), candidates[0])
        if token == best:
            return best, None
        # Rank everything that scored above the pick (capped: past that, a replay re-decodes).
        above = int((logits > logits[token]).sum()) + 1
        return token, tuple(top(logits, min(max(above, 8), RANKED)))

    def still_chosen(self, token: int, old: Ranking | None) -> bool:
        """Would cached `token` be chosen now? An argmax (`old` None) stays the pick wherever it is
        permitted. A constrained pick is re-made from its ranking: the best-ranked token permitted
        now must be `token` (tokens outside the ranking score lower than all in it)."""
        if old is None:
            return self.permits(token)
        for t in old:
            if self.permits(t):
                return t == token
        return False

    def advance(self, token: int) -> None:
        self.rest = self.heal.advance(self.rest, token)


@dataclass
class Lookup:
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
