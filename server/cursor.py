"""The cursor, read once per request: where it is, in what language, inside which syntax nodes,
and what kind of suggestion fits there.

`read_cursor` costs a few string searches; the tree-sitter parse of the region around the cursor
runs on first use of `syntax` (or `mode`), at most once, so a typed-through answer never parses.
Context windows, post-processing and the fit check all read the same `Cursor`.

Rules it keeps:
- Never split or copy the whole text: it may be megabytes, with lines of 100k characters. Only a
  region around the cursor is parsed (`REGION_LINES`, `REGION_CHARS`), and only the innermost
  `MAX_ANCESTORS` syntax nodes are read: deeply nested code costs linear time, not quadratic.
- Line facts are in LF form: `before`/`after` never hold the "\\r" of a CRLF line end, and
  `newline` is the document's own line ending, which suggestions get back (`in_document`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from codestral_ls.server.languages import LINE_COMMENTS, QUOTES
from codestral_ls.server.languages import parser as parser_for

log = logging.getLogger(__name__)

Mode = Literal["none", "single", "multi"]
REGION_LINES = 400  # lines parsed above the cursor (a quarter of that below)
REGION_CHARS = 64_000  # and never more characters than this before the cursor (a quarter after)
MAX_LINE_CHARS = 2000  # the line below is read up to this many characters
MAX_ANCESTORS = 48  # syntax nodes read around the cursor, innermost first (what decides the kind of suggestion)
SUFFIX_CHARS = 2000  # document text after the cursor that post-processing looks at
ABOVE_CHARS = 1600  # ... and before the cursor's line (`prev_lines`)

SINGLE_LINE_NODES = ("string", "comment", "argument_list", "arguments", "parameters", "formal_parameters",
                     "parameter_list", "template_string", "subscript", "type_arguments")
BLOCK_OPENERS = (":", "{", "(", "[", "=>")


@dataclass(frozen=True)
class Syntax:
    """One parse of the region around the cursor."""

    start: int  # document offset where the parsed text starts
    end: int  # ... and ends
    data: bytes  # the parsed text, UTF-8
    cursor_byte: int  # the cursor in `data`
    tree: Any  # tree_sitter.Tree, or None without a grammar
    boundaries: tuple[int, ...]  # document offsets where the region's top-level nodes start
    node_types: tuple[str, ...]  # the node before the cursor and its ancestors, innermost first


@dataclass(frozen=True)
class Cursor:
    text: str = field(repr=False)  # the whole document, not a copy
    offset: int
    language: str
    multiline: str  # the option: auto, never or always
    line: int  # 0-based
    line_start: int
    line_end: int  # offset of the line break ending the cursor's line (before a "\r\n")
    break_end: int  # offset where the next line starts (len(text) on the last line)
    newline: str  # the document's line ending: "\n" or "\r\n"
    before: str  # the line up to the cursor
    after: str  # the line after the cursor, without its line break

    # -- neighbouring text (LF form) ------------------------------------------------------------

    @functools.cached_property
    def prev_lines(self) -> tuple[str, ...]:
        """Up to 12 lines above the cursor's line, nearest last (the last one is "" when there is
        a line above: the text up to the line start ends with its break)."""
        above = self.text[max(0, self.line_start - ABOVE_CHARS):self.line_start]
        return tuple(ln.removesuffix("\r") for ln in above.split("\n")[-12:])

    @functools.cached_property
    def next_line(self) -> str:
        """The line right below the cursor's line ("" at the end of the text)."""
        start = self.break_end
        if start >= len(self.text):
            return ""
        nxt = self.text.find("\n", start, start + MAX_LINE_CHARS)
        return self.text[start: nxt if nxt >= 0 else start + MAX_LINE_CHARS].removesuffix("\r")

    @functools.cached_property
    def suffix(self) -> str:
        """Document text right after the cursor (`SUFFIX_CHARS`), LF line ends."""
        return self.text[self.offset:self.offset + SUFFIX_CHARS].replace("\r\n", "\n")

    @property
    def line_comment(self) -> str:
        return LINE_COMMENTS.get(self.language, "")

    @property
    def quotes(self) -> str:
        return QUOTES.get(self.language, "\"'`")

    @property
    def single_line(self) -> bool:
        return self.mode == "single"

    def in_document(self, suggestion: str) -> str:
        """The suggestion with the document's own line ending (the model speaks LF)."""
        return suggestion.replace("\n", self.newline) if self.newline != "\n" else suggestion

    # -- the parse -----------------------------------------------------------------------------

    @functools.cached_property
    def region(self) -> tuple[int, int]:
        """Line-aligned bounds of the text around the cursor that context windows draw from."""
        return (_lines_back(self.text, self.line_start, REGION_LINES),
                _lines_forward(self.text, self.offset, REGION_LINES // 4))

    @functools.cached_property
    def syntax(self) -> Syntax:
        start, end = self.region
        # Lines can be huge (minified code): the parsed text is bounded in characters too.
        start, end = max(start, self.offset - REGION_CHARS), min(end, self.offset + REGION_CHARS // 4)
        data = self.text[start:end].encode("utf-8", "surrogatepass")
        cursor_byte = len(self.text[start:self.offset].encode("utf-8", "surrogatepass"))
        parser = parser_for(self.language)
        tree = None
        if parser is not None:
            try:
                tree = parser.parse(data)
            except Exception as exc:
                log.warning("tree-sitter parse failed: %s", exc)
        if tree is None:
            return Syntax(start, end, data, cursor_byte, None, (), ())
        starts = []
        byte, char = 0, start
        for child in tree.root_node.children:
            # Byte offset → character offset, one child after the other (linear in the region).
            piece = data[byte:child.start_byte]
            try:
                char += len(piece.decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError:  # a node starting inside a lone surrogate's bytes
                char += len(piece.decode("utf-8", "ignore"))
            byte = child.start_byte
            starts.append(char)
        types = []
        node = tree.root_node.descendant_for_byte_range(max(0, cursor_byte - 1), max(0, cursor_byte - 1))
        # The nearest ancestors only: each `parent` walks down from the root (O(depth) in py-tree-sitter
        # 0.26), so all of them cost depth² (5 000 nested brackets: 1 s per request, 20 000: 16 s).
        while node is not None and len(types) < MAX_ANCESTORS:
            types.append(node.type)
            node = node.parent
        return Syntax(start, end, data, cursor_byte, tree, tuple(starts), tuple(types))

    # -- what kind of suggestion fits ------------------------------------------------------------

    @functools.cached_property
    def _shape(self) -> tuple[Mode, int | None]:
        before = self.before
        indent = len(before) - len(before.lstrip())
        mode = self._mode()
        if mode == "multi" and self.multiline == "auto" and not before.strip() and self.next_line.strip():
            # An empty line with code right below at the same depth: the user is inserting one
            # statement into a block that goes on, not writing the rest of it.
            if len(self.next_line) - len(self.next_line.lstrip()) >= indent:
                return "single", indent
        if mode == "multi" and before.rstrip().endswith(BLOCK_OPENERS):
            return mode, indent + 1  # the body must be indented deeper than its header
        return mode, indent

    @property
    def mode(self) -> Mode:
        """none (mid-word), single (one line) or multi (a block)."""
        return self._shape[0]

    @property
    def block_indent(self) -> int | None:
        """A multi-line suggestion ends before a line indented less than this."""
        return self._shape[1]

    def _mode(self) -> Mode:
        before, after = self.before, self.after
        if after[:1].isalnum() or after[:1] == "_":
            return "none"  # mid-word: the user is editing an identifier, not writing new code
        if self.multiline in ("never", "always"):
            return "single" if self.multiline == "never" else "multi"
        if after.strip(" \t)]};,'\"`"):
            return "single"  # real code follows on this line
        if not before.strip():
            return "multi"  # an empty line: room for a statement or a block
        if any(t.startswith(SINGLE_LINE_NODES) or t.endswith(SINGLE_LINE_NODES) for t in self.syntax.node_types):
            return "single"  # inside a string, comment or argument list
        return "multi" if before.rstrip().endswith(BLOCK_OPENERS) else "single"


def read_cursor(text: str, offset: int, language: str, multiline: str = "auto") -> Cursor:
    """The cursor at `offset` of `text` (`language` as `language_for` names it)."""
    line_start = text.rfind("\n", 0, offset) + 1
    brk = text.find("\n", offset)
    if brk < 0:
        line_end = break_end = len(text)
        crlf = line_start >= 2 and text[line_start - 2] == "\r"  # the last line: the break above says
    else:
        break_end = brk + 1
        crlf = brk > line_start and text[brk - 1] == "\r"
        line_end = brk - 1 if crlf and brk > offset else brk
    return Cursor(text=text, offset=offset, language=language, multiline=multiline,
                  line=text.count("\n", 0, offset), line_start=line_start, line_end=line_end,
                  break_end=break_end, newline="\r\n" if crlf else "\n",
                  before=text[line_start:offset], after=text[offset:line_end])


def _lines_back(text: str, line_start: int, n: int) -> int:
    """Start of the line `n` lines above the one starting at `line_start`."""
    pos = line_start
    for _ in range(n):
        if pos == 0:
            return 0
        pos = text.rfind("\n", 0, pos - 1) + 1
    return pos


def _lines_forward(text: str, offset: int, n: int) -> int:
    pos = offset
    for _ in range(n):
        nxt = text.find("\n", pos)
        if nxt < 0:
            return len(text)
        pos = nxt + 1
    return pos
