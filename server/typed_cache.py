"""Typed-through cache: while the user types what the ghost text shows, answer without the model.

An entry remembers a suggestion shown at a place (document, line, text before the cursor on that
line, text after it). A later request on that line whose text before the cursor is the remembered
text plus a prefix of the suggestion gets the rest of the suggestion.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Shown:
    uri: str
    line: int
    line_before: str
    line_after: str
    suggestion: str


class TypedThroughCache:
    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int, str, str], Shown] = OrderedDict()
        self.hits = 0

    def remember(self, shown: Shown) -> None:
        if not shown.suggestion or self.max_entries <= 0:
            return
        key = (shown.uri, shown.line, shown.line_before, shown.line_after)
        self._entries[key] = shown
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, uri: str, line: int, line_before: str, line_after: str) -> str | None:
        """The rest of a shown suggestion the user is typing through, if any."""
        # Newest first: the latest suggestion on this line is the one on screen.
        for key in reversed(self._entries):
            shown = self._entries[key]
            if shown.uri != uri or shown.line != line or shown.line_after != line_after:
                continue
            if not line_before.startswith(shown.line_before):
                continue
            typed = line_before[len(shown.line_before):]
            if typed and shown.suggestion.startswith(typed) and len(typed) < len(shown.suggestion):
                self._entries.move_to_end(key)
                self.hits += 1
                return shown.suggestion[len(typed):]
        return None

    def forget(self, uri: str) -> None:
        for key in [k for k in self._entries if k[0] == uri]:
            del self._entries[key]
