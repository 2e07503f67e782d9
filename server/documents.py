"""Open documents with LSP's line rules, at a cost that does not grow with every keystroke.

pygls' `TextDocument` splits with `str.splitlines`, which also breaks lines at \\x0b \\x0c \\x1c-\\x1e
\\x85 \\u2028 \\u2029: a document holding one of those (a form feed in C or Python, a U+2028 in a JS
string) gets edits applied at the wrong place and drifts from the editor's copy. It also re-splits
the whole text for every position it converts and clamps a character past the end of the last
line to one before its end. Here lines end at \\n, \\r\\n or \\r only (the LSP rule), the line index
is built once per text version, and a position converts by encoding one line (a prefix of it).
The pygls private members this needs (and the workspace's class swap) are listed and checked in
server/pygls_seam.py.
"""

from __future__ import annotations

import codecs
import logging
import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

from codestral_ls.server import pygls_seam
from lsprotocol import types
from pygls.workspace import TextDocument, Workspace

log = logging.getLogger(__name__)

_LINE_BREAK = re.compile(r"\r\n?|\n")
_LF = re.compile("\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


def line_starts(text: str) -> list[int]:
    """Offsets where each line starts; a text ending with a line break has an empty last line."""
    return [0, *(m.end() for m in (_LINE_BREAK if "\r" in text else _LF).finditer(text))]


def edited_line_starts(starts: list[int], new_text: str, start: int, end: int, inserted: int) -> list[int]:
    """The line starts of `new_text`, made from `starts` (those of the text before the edit that
    replaced [start, end) with `inserted` characters): kept before the edit, rescanned around it,
    shifted after it. Linear in the number of lines, not in the size of the text."""
    delta = inserted - (end - start)
    keep = starts[:bisect_right(starts, start - 1)] or [0]
    lo, hi = max(0, start - 1), min(len(new_text), start + inserted + 2)
    middle = [m.end() for m in _LINE_BREAK.finditer(new_text, lo, hi) if start <= m.end() <= start + inserted]
    tail = [p + delta for p in starts[bisect_left(starts, end + 1):]]
    return keep + [p for p in middle if p > keep[-1]] + tail


def chars_for_units(line: str, units: int, encoding: str | None) -> int:
    """How many characters of `line` the first `units` code units of `encoding` cover.

    Past the end of the line means its end (LSP); inside a character means before it.
    """
    if units <= 0:
        return 0
    head = line[:units]  # every character is at least one code unit
    if encoding == types.PositionEncodingKind.Utf32 or head.isascii():
        return len(head)
    if encoding == types.PositionEncodingKind.Utf8:
        codec, width = "utf-8", 1
    else:  # UTF-16, the LSP default
        codec, width = "utf-16-le", 2
    data = head.encode(codec, "surrogatepass")
    if len(data) <= units * width:
        return len(head)
    decoder = codecs.getincrementaldecoder(codec)("surrogatepass")
    n = len(decoder.decode(data[: units * width], final=False))
    # The decoder holds back a high surrogate at the cut, waiting for its pair; a lone one (JSON
    # can carry "\ud800") is a whole character of one unit.
    lone_high = n < len(head) and "\ud800" <= head[n] <= "\udbff" and not (
        n + 1 < len(line) and "\udc00" <= line[n + 1] <= "\udfff")
    if lone_high and len(head[: n + 1].encode(codec, "surrogatepass")) <= units * width:
        n += 1
    return n


def without_lone_surrogates(text: str) -> str:
    """JSON can carry lone surrogates ("\\ud800"); tokenizers refuse them. U+FFFD instead: one
    character for one, so offsets stay the same."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


class LspTextDocument(TextDocument):
    _indexed: str | None = None
    _starts: list[int]
    _cleaned: str | None = None
    _clean: str

    def model_text(self) -> str:
        """The text the model may see (`without_lone_surrogates`), once per text version."""
        source = self.source
        if self._cleaned is not source:
            self._clean = without_lone_surrogates(source)
            self._cleaned = source
        return self._clean

    def line_starts(self) -> list[int]:
        source = self.source
        if self._indexed is not source:
            self._starts = line_starts(source)
            self._indexed = source
        return self._starts

    def line_count(self) -> int:
        return len(self.line_starts())

    @property
    def lines(self) -> Sequence[str]:
        source = self.source
        starts = self.line_starts()
        out = [source[a:b] for a, b in zip(starts, [*starts[1:], len(source)], strict=True)]
        if out and not out[-1]:
            out.pop()  # as splitlines(True): no empty line after a final line break
        return tuple(out)

    def offset_at_position(self, client_position: types.Position) -> int:
        """The offset of a client position: a character past its line's end is the line's end, a
        line past the last is the end of the document."""
        source = self.source
        starts = self.line_starts()
        line = max(0, client_position.line)
        if line >= len(starts):
            return len(source)
        start = starts[line]
        end = starts[line + 1] if line + 1 < len(starts) else len(source)
        if line + 1 < len(starts):  # drop the line break
            end -= 2 if source.startswith("\r\n", end - 2) else 1
        encoding = self._position_codec.encoding
        return start + chars_for_units(source[start:end], client_position.character, encoding)

    def _apply_incremental_change(self, change: types.TextDocumentContentChangePartial) -> None:
        start = self.offset_at_position(change.range.start)
        end = max(start, self.offset_at_position(change.range.end))
        source, text = self.source, change.text
        new = source[:start] + text + source[end:]
        # Keep the per-version caches valid for the new text without rescanning all of it.
        starts = edited_line_starts(self.line_starts(), new, start, end, len(text))
        clean = self._cleaned is source and self._clean is source and without_lone_surrogates(text) is text
        self._source = new
        self._starts, self._indexed = starts, self.source
        if clean:
            self._clean = self._cleaned = self.source


class LspWorkspace(Workspace):
    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self._position_codec)

    def update_text_document(self, text_doc: types.VersionedTextDocumentIdentifier, change: Any) -> None:
        doc = self._text_documents.get(unquote(text_doc.uri))
        if doc is None:  # a change for a document never opened (or closed): nothing to apply it to
            log.warning("ignoring a change to %s: it is not open", text_doc.uri)
            return
        doc.apply_change(change)
        doc.version = text_doc.version

    def open_document(self, uri: str) -> LspTextDocument | None:
        """The open document at `uri`, or None (never a file read from disk)."""
        doc = self._text_documents.get(unquote(uri))
        return doc if isinstance(doc, LspTextDocument) else None


def adopt(workspace: Workspace) -> LspWorkspace:
    """pygls builds a plain `Workspace` on `initialize`: make it this kind before any document opens."""
    return pygls_seam.adopt_class(workspace, LspWorkspace)
