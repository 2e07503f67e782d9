"""Judge the model's middle: repair it into a suggestion a user would accept, or say why it cannot
be right where the cursor is.

Repairs are plain functions `(text, Cursor) -> text`; `FILTERS` lists them in order and
`postprocess` can switch any off, so the quality benchmark can measure each one's effect.
`replaced_after` says how many auto-closed characters after the cursor a suggestion takes the
place of (an editor replaces them on accept). `misfit` names why a finished suggestion cannot be
right before the code that follows: a line that the code below contradicts, or a syntax error the
document did not have (`adds_syntax_error`, one more tree-sitter parse of the cursor's region);
the pipeline then asks for the model's next-best start.

Rules it keeps: one bracket counter (`scan`) for every judgement, aware of strings and line
comments; a judgement reads the `Cursor` (and its one parse), never the whole document again;
texts here are in LF form.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from codestral_ls.server.cursor import Cursor
from codestral_ls.server.languages import parser

log = logging.getLogger(__name__)

PAIRS = {")": "(", "]": "[", "}": "{"}
OPENERS = set(PAIRS.values())
QUOTES = "\"'`"
AUTO_CLOSED = ")]}" + QUOTES  # what an editor inserts after the cursor when the user opens a pair


# -- the bracket counter --------------------------------------------------------------------------


@dataclass
class Brackets:
    """What `scan` found in a piece of code."""

    open: list[str] = field(default_factory=list)  # openers still unclosed, innermost last
    unmatched: list[int] = field(default_factory=list)  # positions of closers that close nothing
    quote: str | None = None  # the quote of a string still open at the end
    comment: int | None = None  # where a line comment on the last line starts

    @property
    def depth(self) -> int:
        """Openers left open minus closers too many."""
        return len(self.open) - len(self.unmatched)

    @property
    def badness(self) -> int:
        """How far the code is from balanced: open and stray brackets, an unclosed string."""
        return len(self.open) + len(self.unmatched) + (self.quote is not None)


# The line around the cursor read for brackets, each way, and the auto-closed brackets a suggestion may
# replace: bounded, or a line of 20 000 `]` costs minutes (a choice per bracket, a scan of the line each).
SCAN_CHARS = 1000
MAX_REPLACED = 16
MAX_CHECKED_CHILDREN = 4000  # a syntax node with more children than this is not checked for new errors


def scan(code: str, line_comment: str = "", quotes: str = QUOTES) -> Brackets:
    """Brackets of `code`, skipping strings (opened by any of `quotes`) and line comments. A closer
    that does not match the innermost open bracket closes nothing."""
    b = Brackets()
    i, n = 0, len(code)
    while i < n:
        c = code[i]
        if b.quote:
            if c == "\\":
                i += 1  # the escaped character
            elif c == b.quote:
                b.quote = None
        elif c == "\n":
            b.comment = None
        elif line_comment and code.startswith(line_comment, i):
            b.comment = i
            end = code.find("\n", i)
            if end < 0:
                break
            i = end
            continue
        elif c in quotes:
            b.quote = c
        elif c in OPENERS:
            b.open.append(c)
        elif c in PAIRS:
            if b.open and b.open[-1] == PAIRS[c]:
                b.open.pop()
            else:
                b.unmatched.append(i)
        i += 1
    return b


# -- repairs --------------------------------------------------------------------------------------


def strip_end(text: str, c: Cursor) -> str:
    """Trailing blank lines and spaces go. Where the suggestion ends (a single line's break, the
    block's end) was decided once, by the request's `StopRule`, which every backend applies."""
    return text.rstrip()


def drop_suffix_overlap(text: str, c: Cursor) -> str:
    """Drop the end of the suggestion that repeats what already follows the cursor.

    A repeated closing bracket goes only when the line reads better without it: in `foo(` before
    `)`, `bar(1)` keeps its `)` (it closes `bar(`), `a, b)` loses it (the `)` after the cursor
    closes `foo(` already).
    """
    if c.after.strip():
        return _closing(text, c)[0]
    if "\n" in text:
        # Multi-line: drop trailing lines that equal the lines after the cursor.
        following = [ln.rstrip() for ln in c.suffix.lstrip("\n").split("\n") if ln.strip()][:8]
        lines = text.split("\n")
        if following:
            for i in range(1, len(lines)):
                tail = [ln.rstrip() for ln in lines[i:] if ln.strip()]
                if tail and tail == following[: len(tail)]:
                    return "\n".join(lines[:i]).rstrip()
    return text


def balance_brackets(text: str, c: Cursor) -> str:
    """Cut at the first closing bracket that opens nowhere (not in the suggestion nor the line)."""
    before = c.before[-SCAN_CHARS:]  # a minified line's megabyte is not read per suggestion
    b = scan(before + text, c.line_comment, c.quotes)
    stray = [i - len(before) for i in b.unmatched if i >= len(before)]
    return text[:stray[0]].rstrip() if stray else text


def drop_repetition(text: str, c: Cursor) -> str:
    """Drop what only repeats the lines above the cursor, and cut a loop on one line.

    The model sometimes re-writes the lines it was just shown (a docstring, the previous
    statement) before going on: those leading lines go, what follows them stays.
    """
    if not text.strip():  # nothing but whitespace
        return ""
    # Lines as they would read in the document, indentation included: `return False` one level
    # out from the same line above is a different statement, not a repeat.
    lines = [ln.rstrip() for ln in (c.before + text).split("\n") if ln.strip()]
    above = [ln.rstrip() for ln in c.prev_lines if ln.strip()]
    if c.before.strip():
        # Mid-line: the cursor's line as it would read must not just be the line above.
        if above and lines[0] == above[-1] and len(above[-1].strip()) > 3:
            return ""
    else:
        for k in range(min(len(lines), len(above)), 0, -1):
            if lines[:k] == above[-k:] and sum(len(ln.strip()) for ln in lines[:k]) > 3:
                rest = _after_nonblank_lines(text, k).lstrip("\n")
                if not rest.strip():
                    return ""
                # The first kept line goes where the cursor is: its indentation is already there.
                head, _, tail = rest.partition("\n")
                head = head[len(c.before):] if head.startswith(c.before) else head.lstrip()
                text = head + ("\n" + tail if tail else "")
                break
    # A line repeated three times in a row is the model looping: keep the first copy.
    out, run = [], 0
    raw = text.split("\n")
    for i, ln in enumerate(raw):
        run = run + 1 if i > 0 and ln.strip() and ln.strip() == raw[i - 1].strip() else 0
        if run >= 2:
            return "\n".join(out[:-1]).rstrip()
        out.append(ln)
    return text


def _after_nonblank_lines(text: str, k: int) -> str:
    """`text` after its first `k` non-blank lines, with the indentation of the next line kept."""
    parts = text.split("\n")
    seen = 0
    for i, ln in enumerate(parts):
        if ln.strip():
            seen += 1
            if seen == k:
                return "\n".join(parts[i + 1:])
    return ""


def drop_empty(text: str, c: Cursor) -> str:
    return text if text.strip() else ""


Filter = Callable[[str, Cursor], str]
FILTERS: dict[str, Filter] = {
    "strip_end": strip_end,
    "drop_suffix_overlap": drop_suffix_overlap,
    "balance_brackets": balance_brackets,
    "drop_repetition": drop_repetition,
    "drop_empty": drop_empty,
}


def postprocess(text: str, c: Cursor, disabled: frozenset[str] = frozenset()) -> str:
    for name, f in FILTERS.items():
        if name not in disabled:
            text = f(text, c)
        if not text:
            return ""
    return text


def replaced_after(text: str, c: Cursor) -> int:
    """How many characters right after the cursor the suggestion takes the place of: auto-closed
    brackets and quotes it closes itself (`a, b) + 1` in `foo(` before `)`). 0: a plain insert."""
    return _closing(text, c)[1] if text and c.after.strip() else 0


def _closing(text: str, c: Cursor) -> tuple[str, int]:
    """The suggestion and the number of characters after the cursor it replaces, chosen so that
    the cursor's line reads as balanced as it can: drop a repeated end, keep it, or replace the
    auto-closed characters. On a tie the earlier way wins, in that order."""
    after = c.after.strip()
    choices: list[tuple[str, int]] = []
    # e.g. `foo(a, b))` before `)`: the closing text is already there.
    for k in range(min(len(after), len(text)), 0, -1):
        if text.endswith(after[:k]) and (k == len(after) or not after[:k].isalnum()):
            if not any(ch in AUTO_CLOSED for ch in after[:k]):
                return (text[: len(text) - k].rstrip() if k < len(text) else ""), 0  # `;`, `else`: no bracket
            choices.append((text[: len(text) - k].rstrip() if k < len(text) else "", 0))
            break
    choices.append((text, 0))
    lead = len(c.after) - len(c.after.lstrip(" \t"))
    run = lead
    while run < min(len(c.after), lead + MAX_REPLACED) and c.after[run] in AUTO_CLOSED:
        run += 1
        choices.append((text, run))

    def badness(choice: tuple[str, int]) -> int:
        middle, replace = choice
        return scan(c.before[-SCAN_CHARS:] + middle + c.after[replace:replace + SCAN_CHARS], c.line_comment,
                    c.quotes).badness

    return min(choices, key=badness)  # min keeps the first of equals


# -- does a finished suggestion fit the code around it? -----------------------------------------

# Statements after which nothing else in the same block can run.
_TERMINAL = re.compile(r"(return|raise|throw|break|continue)\b")
# Lines at the block's indent that may legally follow a terminal statement.
_CONTINUES = re.compile(r"(else|elif|except|finally|case|default|catch)\b|[})\]#]|//|/\*|\*")
# Languages where a deeper next line means the current line must open a block.
_INDENTED_BLOCKS = {"python": ":"}


@dataclass(frozen=True)
class Line:
    text: str  # stripped
    indent: int


PARSE_CHECK = "parse_check"  # in `misfit`'s `disabled`: no syntax check (the benchmarks' ablation)


MIN_REPEATED = 12  # characters: shorter lines (`i += 1`, `pass`) repeat legitimately


def misfit(suggestion: str, c: Cursor, replace_after: int = 0, disabled: frozenset[str] = frozenset()) -> str | None:
    """Why `suggestion` (replacing `replace_after` characters after the cursor) cannot be right
    where the cursor is (None: nothing against it)."""
    why = _line_misfit(suggestion, c)
    if why is None and PARSE_CHECK not in disabled and adds_syntax_error(suggestion, c, replace_after):
        why = "it adds a syntax error"
    return why


def _line_misfit(suggestion: str, c: Cursor) -> str | None:
    """Reasons read from the lines around a suggestion that ends a line of its own: cursor after
    indentation (or on an empty line) and nothing else on the line after it."""
    if not suggestion.strip() or c.before.strip() or c.after.strip():
        return None
    lines = suggestion.split("\n")
    first = lines[0]
    last = Line(lines[-1].strip(), _indent(lines[-1]) if len(lines) > 1 else len(c.before) + _indent(first))
    following = _next_code_line(c.suffix.split("\n", 1)[1] if "\n" in c.suffix else "")
    if following is None or not last.text:
        return None
    if len(lines) == 1 and last.text == following.text and any(ch.isalnum() for ch in last.text):
        return "repeats the next line"
    if (len(lines) == 1 and len(last.text) >= MIN_REPEATED and not _TERMINAL.match(last.text)
            and any(b.text == last.text and b.indent < last.indent for b in _code_lines_below(c))):
        # Already written a few lines down, after this block ends: the model skipped the line that
        # belongs here. (Deeper or sibling copies are legitimate: the same call in if and else.)
        return "repeats a line below"
    if (_TERMINAL.match(last.text) and following.indent == last.indent
            and not _CONTINUES.match(following.text)):
        return "unreachable code follows it"
    opener = _INDENTED_BLOCKS.get(c.language)
    if opener:
        b = scan(last.text, c.line_comment, c.quotes)
        code = last.text[:b.comment].rstrip() if b.comment is not None else last.text
        opens = code.endswith((opener, "\\", ",")) or b.depth > 0  # an open bracket continues
        if following.indent > last.indent and not opens:
            return "the next line is indented deeper, but this line opens no block"
        if following.indent <= last.indent and code.endswith(opener) and b.depth <= 0:
            return "it opens a block, but the next line is not inside it"
    return None


def first_words(suggestion: str) -> str:
    """What `FimRequest.avoid` gets for a rejected suggestion: its first line, stripped."""
    return suggestion.split("\n", 1)[0].strip()


def _code_lines_below(c: Cursor, count: int = 3) -> list[Line]:
    """The next `count` lines below the cursor's line that hold code (not blank, not only a comment)."""
    out = []
    below = c.suffix.split("\n", 1)[1] if "\n" in c.suffix else ""
    for raw in below.split("\n", 50)[:50]:
        text = raw.strip()
        if text and not (c.line_comment and text.startswith(c.line_comment)):
            out.append(Line(text, _indent(raw)))
            if len(out) == count:
                break
    return out


def _next_code_line(text: str) -> Line | None:
    for raw in text.split("\n", 50)[:50]:
        if raw.strip():
            return Line(raw.strip(), _indent(raw))
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


# -- does it parse? -----------------------------------------------------------------------------


def adds_syntax_error(suggestion: str, c: Cursor, replace_after: int = 0) -> bool:
    """Whether the document with the suggestion in it has a syntax error (a tree-sitter ERROR or
    MISSING node) that it did not have, starting on the lines from the cursor's line to the one
    after the suggestion's last line.

    An error is the same one as before when its kind and place (shifted by the insertion) are: an
    error of the document's own stays, and the error of the incomplete code at the cursor (`x = ;`)
    must go — a suggestion that leaves it, in another shape, adds one. Errors starting elsewhere
    are not counted: a suggestion that opens a block (`if (x) {`) leaves a closing brace missing
    at the end of the file until the user writes the block, and an unclosed bracket far above
    makes the parser's recovery of the whole region change with any edit. Python's grammar
    accepts a block header with no body, so a block cut short by the latency budget passes too.
    """
    syntax = c.syntax
    ts_parser = parser(c.language)
    if syntax.tree is None or ts_parser is None or not suggestion.strip() or _sprawling(syntax.tree):
        return False
    data, at = syntax.data, syntax.cursor_byte
    inserted = c.in_document(suggestion).encode("utf-8", "surrogatepass")
    replaced = len(c.text[c.offset:c.offset + replace_after].encode("utf-8", "surrogatepass"))
    changed = data[:at] + inserted + data[at + replaced:]
    try:
        tree = ts_parser.parse(changed)
    except Exception as exc:  # never lose a suggestion to the checker itself
        log.warning("tree-sitter parse failed: %s", exc)
        return False
    if not tree.root_node.has_error:
        return False
    line_start = max(0, at - len(c.before.encode("utf-8", "surrogatepass")))
    delta = len(inserted) - replaced

    def shifted(pos: int) -> int:
        return pos if pos < at else max(at + len(inserted), pos + delta)

    old_end, new_end = _lines_end(data, at + replaced, 2), _lines_end(changed, at + len(inserted), 2)
    had = {(kind, shifted(start), shifted(end))
           for kind, start, end in _errors(c.language, syntax.tree, line_start, old_end)}
    has = _errors(c.language, tree, line_start, new_end)
    if any(error not in had for error in has):
        return True
    # An error that wraps the lines around the cursor where there was none: a statement put between
    # a block and its `else:` makes the parser give up on the whole enclosing block, so the error
    # starts above the cursor's line (the `raise` above `else:` case).
    return (not _errors(c.language, syntax.tree, line_start, old_end, overlapping=True)
            and any(kind == "ERROR" and start < line_start
                    for kind, start, _ in _errors(c.language, tree, line_start, new_end, overlapping=True)))


def _sprawling(tree) -> bool:  # noqa: ANN001
    """A tree the error query would take seconds on (it is quadratic in an ERROR node's children:
    100 kB of `{`): not checked, the suggestion stands."""
    root = tree.root_node
    if not root.has_error:
        return False
    if root.child_count > MAX_CHECKED_CHILDREN:
        return True
    return any(child.type == "ERROR" and child.child_count > MAX_CHECKED_CHILDREN for child in root.children)


@functools.cache
def _error_query(language: str):  # -> tree_sitter.Query
    import tree_sitter

    return tree_sitter.Query(parser(language).language, "(ERROR) @error (MISSING) @missing")


def _errors(language: str, tree, start: int, end: int,  # noqa: ANN001
            overlapping: bool = False) -> list[tuple[str, int, int]]:
    """(kind, start, end) of the ERROR and MISSING nodes of `tree` within bytes [start, end] (or,
    `overlapping`, that reach into them)."""
    import tree_sitter

    if not tree.root_node.has_error:
        return []
    cursor = tree_sitter.QueryCursor(_error_query(language))
    cursor.set_byte_range(start, end)
    return [("missing " + n.type if n.is_missing else n.type, n.start_byte, n.end_byte)
            for nodes in cursor.captures(tree.root_node).values() for n in nodes
            if overlapping or (start <= n.start_byte and n.end_byte <= end)]


def _lines_end(data: bytes, pos: int, lines: int) -> int:
    """The end of the `lines`-th line from the one holding byte `pos` (1: that line's own end)."""
    end = pos
    for _ in range(lines):
        nl = data.find(b"\n", end)
        if nl < 0:
            return len(data)
        end = nl + 1
    return end
