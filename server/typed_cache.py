"""Typed-through cache: while the user types what the ghost text shows, answer without the model.
Asked again where nothing was typed yet, it answers the newest suggestion shown there (a grown block,
a second opinion found after the first answer).

An entry remembers a suggestion shown at a place: the document, the line, the text before the
cursor on that line and the text after it (as `Line`s: length, hash and tail, bounded in bytes
whatever the line), and the text around the line (`AROUND_CHARS` above and below). A later
request on that line whose text before the cursor is the remembered text plus a prefix of the
suggestion gets the rest of the suggestion — only while the text around the line is unchanged:
after an edit above or below (a rename, inserted lines) the suggestion may be stale.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from codestral_ls.server.cursor import Cursor

AROUND_CHARS = 4000  # text above and below the line that must be unchanged for a typed-through answer
TAIL_CHARS = 256  # the end of the text before (and after) the cursor kept as is; the rest as a hash


@dataclass(frozen=True)
class Line:
    """A piece of a line (the text before or after the cursor), remembered by its length, its hash
    and its last `TAIL_CHARS`: never the whole text, which may be a megabyte of minified code."""

    length: int
    digest: int
    tail: str

    @staticmethod
    def of(text: str) -> Line:
        return Line(len(text), hash(text), text[-TAIL_CHARS:])

    def starts(self, text: str) -> bool:
        """Does `text` start with the remembered piece?"""
        n = self.length
        return len(text) >= n and text[max(0, n - TAIL_CHARS):n] == self.tail and \
            (n <= TAIL_CHARS or hash(text[:n]) == self.digest)

    def equals(self, text: str) -> bool:
        return len(text) == self.length and self.starts(text)


@dataclass(frozen=True)
class Shown:
    uri: str
    line: int
    line_before: Line
    line_after: Line
    suggestion: str  # in the document's line ending
    above: str = ""  # document text right above the line (up to AROUND_CHARS)
    below: str = ""  # ... and right below it, from the line's break on
    replace_after: int = 0  # characters after the cursor the suggestion replaces

    @staticmethod
    def at(uri: str, c: Cursor, suggestion: str, replace_after: int = 0) -> Shown:
        above, below = _around(c)
        return Shown(uri, c.line, Line.of(c.before), Line.of(c.after), suggestion, above, below, replace_after)


@dataclass(frozen=True)
class Rest:
    """The part of a shown suggestion not typed yet."""

    text: str
    replace_after: int


class TypedThroughCache:
    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int, Line, Line], Shown] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, shown: Shown) -> None:
        if not shown.suggestion or self.max_entries <= 0:
            return
        key = (shown.uri, shown.line, shown.line_before, shown.line_after)
        self._entries[key] = shown
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, uri: str, c: Cursor) -> Rest | None:
        """The rest of a shown suggestion the user is typing through, if any."""
        around = None
        # Newest first: the latest suggestion on this line is the one on screen.
        for key in reversed(self._entries):
            shown = self._entries[key]
            if shown.uri != uri or shown.line != c.line or not shown.line_after.equals(c.after):
                continue
            if not shown.line_before.starts(c.before):
                continue
            typed = c.before[shown.line_before.length:]  # "": asked again where it was shown
            if not (shown.suggestion.startswith(typed) and len(typed) < len(shown.suggestion)):
                continue
            around = around or _around(c)
            if around != (shown.above, shown.below):
                continue  # the code around the line changed since: the suggestion may not fit it
            self._entries.move_to_end(key)
            self.hits += 1
            return Rest(shown.suggestion[len(typed):], shown.replace_after)
        return None

    def forget(self, uri: str) -> None:
        for key in [k for k in self._entries if k[0] == uri]:
            del self._entries[key]


def _around(c: Cursor) -> tuple[str, str]:
    return (c.text[max(0, c.line_start - AROUND_CHARS):c.line_start],
            c.text[c.line_end:c.line_end + AROUND_CHARS])
