"""What the model sees around the cursor, and what kind of suggestion fits there.

Windows are cut on syntax boundaries (starts of top-level nodes, found with tree-sitter) inside a
token budget; when a top-level node alone is too big, on lines in coarse steps. Either way the
window start only moves when the cursor crosses a boundary, so consecutive keystrokes share the
prompt's beginning and the engine's KV cache. Only a region around the cursor is parsed, never a
whole multi-megabyte file.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["none", "single", "multi"]
LINE_STEP = 32  # fallback window starts snap to multiples of this many lines
REGION_LINES = 400  # lines parsed around the cursor
MAX_LINE_CHARS = 2000  # a longer line is cut: context is never a 100k-character line
REGION_CHARS = 64_000  # and the parsed region never more characters than this before the cursor
TAIL_STEP = 64  # the window edge inside a too-long line moves in steps of this many characters

# languageId → (module, attribute holding the grammar)
GRAMMARS: dict[str, tuple[str, str]] = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "javascriptreact": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "typescriptreact": ("tree_sitter_typescript", "language_tsx"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
}
EXTENSIONS = {".py": "python", ".js": "javascript", ".jsx": "javascriptreact", ".ts": "typescript",
              ".tsx": "typescriptreact", ".go": "go", ".rs": "rust", ".java": "java", ".c": "c", ".h": "c",
              ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp", ".cxx": "cpp"}
# Inside these the suggestion stays on one line whatever the line looks like.
SINGLE_LINE_NODES = ("string", "comment", "argument_list", "arguments", "parameters", "formal_parameters",
                     "parameter_list", "template_string", "subscript", "type_arguments")


@dataclass(frozen=True)
class Context:
    prefix: str  # window text before the cursor
    suffix: str  # window text after the cursor
    mode: Mode
    block_indent: int | None  # multi-line suggestions end before a line indented less than this
    prefix_start: int  # offset in the document where `prefix` starts


def language_for(language_id: str, path: str = "") -> str:
    if language_id in GRAMMARS:
        return language_id
    for ext, lang in EXTENSIONS.items():
        if path.endswith(ext):
            return lang
    return language_id or "plaintext"


@functools.cache
def _parser(language: str):  # -> tree_sitter.Parser | None
    spec = GRAMMARS.get(language)
    if spec is None:
        return None
    try:
        import tree_sitter

        module = importlib.import_module(spec[0])
        return tree_sitter.Parser(tree_sitter.Language(getattr(module, spec[1])()))
    except Exception as exc:  # a missing or broken grammar degrades to plain-text context
        log.warning("no tree-sitter grammar for %s: %s", language, exc)
        return None


def build_context(text: str, offset: int, language: str, count_tokens: Callable[[str], int],
                  prefix_tokens: int, suffix_tokens: int, multiline: str = "auto") -> Context:
    cursor_line = text.count("\n", 0, offset)  # never split the text: it may be megabytes
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_end = len(text) if line_end < 0 else line_end
    region_start = _nth_line_offset(text, max(0, cursor_line - REGION_LINES), line_start, cursor_line)
    region_end = _offset_after_lines(text, offset, REGION_LINES // 4)
    boundaries, node_types = _syntax(text, region_start, region_end, offset, language)

    prefix_start = _prefix_start(text, region_start, line_start, offset, boundaries, count_tokens, prefix_tokens)
    prefix = _clip_long_lines(text[prefix_start:offset], keep_end=True)
    suffix_end = _suffix_end(text, offset, region_end, count_tokens, suffix_tokens)
    suffix = _clip_long_lines(text[offset:suffix_end], keep_end=False)

    mode, indent = _mode_at(text[line_start:offset], text[offset:line_end], node_types, multiline,
                            _next_line(text, line_end))
    return Context(prefix=prefix, suffix=suffix, mode=mode, block_indent=indent, prefix_start=prefix_start)


def cursor_mode(text: str, offset: int, language: str, multiline: str = "auto") -> tuple[Mode, int | None]:
    """Suggestion kind at `offset` and the block indentation a multi-line one must stay within."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line_end = len(text) if line_end < 0 else line_end
    cursor_line = text.count("\n", 0, offset)
    region_start = _nth_line_offset(text, max(0, cursor_line - 50), line_start, cursor_line)
    _, node_types = _syntax(text, region_start, _offset_after_lines(text, offset, 20), offset, language,
                            max_chars=REGION_CHARS // 8)  # every keystroke: a smaller region
    return _mode_at(text[line_start:offset], text[offset:line_end], node_types, multiline,
                    _next_line(text, line_end))


def _next_line(text: str, line_end: int) -> str:
    """The line right below the cursor's line ("" at the end of the text)."""
    if line_end >= len(text):
        return ""
    nxt = text.find("\n", line_end + 1, line_end + 1 + MAX_LINE_CHARS)
    return text[line_end + 1: nxt if nxt >= 0 else line_end + 1 + MAX_LINE_CHARS]


def _mode_at(line_before: str, line_after: str, node_types: list[str], multiline: str,
             next_line: str = "") -> tuple[Mode, int | None]:
    indent = len(line_before) - len(line_before.lstrip())
    mode = _mode(line_before, line_after, node_types, multiline)
    if mode == "multi" and multiline == "auto" and not line_before.strip() and next_line.strip():
        # An empty line with code right below at the same depth: the user is inserting one
        # statement into a block that goes on, not writing the rest of it.
        if len(next_line) - len(next_line.lstrip()) >= indent:
            return "single", indent
    if mode == "multi" and line_before.rstrip().endswith(BLOCK_OPENERS):
        return mode, indent + 1  # the body must be indented deeper than its header
    return mode, indent


BLOCK_OPENERS = (":", "{", "(", "[", "=>")


def _mode(line_before: str, line_after: str, node_types: list[str], multiline: str) -> Mode:
    if line_after[:1].isalnum() or line_after[:1] == "_":
        return "none"  # mid-word: the user is editing an identifier, not writing new code
    if multiline in ("never", "always"):
        return "single" if multiline == "never" else "multi"
    if line_after.strip(" \t)]};,'\"`"):
        return "single"  # real code follows on this line
    if not line_before.strip():
        return "multi"  # an empty line: room for a statement or a block
    if any(t.startswith(SINGLE_LINE_NODES) or t.endswith(SINGLE_LINE_NODES) for t in node_types):
        return "single"  # inside a string, comment or argument list
    return "multi" if line_before.rstrip().endswith(BLOCK_OPENERS) else "single"


def _syntax(text: str, start: int, end: int, offset: int, language: str,
            max_chars: int = REGION_CHARS) -> tuple[list[int], list[str]]:
    """Offsets where top-level nodes of the parsed region start, and node types around the cursor."""
    parser = _parser(language)
    if parser is None:
        return [], []
    # Lines can be huge (minified code): the region is bounded in characters too.
    start, end = max(start, offset - max_chars), min(end, offset + max_chars // 4)
    region = text[start:end].encode("utf-8", "surrogatepass")
    cursor = len(text[start:offset].encode("utf-8", "surrogatepass"))
    try:
        tree = parser.parse(region)
    except Exception as exc:
        log.warning("tree-sitter parse failed: %s", exc)
        return [], []
    starts = []
    byte, char = 0, start
    for child in tree.root_node.children:
        # Byte offset → character offset, one child after the other (linear in the region).
        piece = region[byte:child.start_byte]
        try:
            char += len(piece.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:  # a node starting inside a lone surrogate's bytes
            char += len(piece.decode("utf-8", "ignore"))
        byte = child.start_byte
        starts.append(char)
    types = []
    node = tree.root_node.descendant_for_byte_range(max(0, cursor - 1), max(0, cursor - 1))
    while node is not None:
        types.append(node.type)
        node = node.parent
    return starts, types


def _prefix_start(text: str, region_start: int, line_start: int, offset: int, boundaries: list[int],
                  count_tokens: Callable[[str], int], budget: int) -> int:
    """Earliest stable start whose window fits the budget."""
    candidates = sorted({b for b in boundaries if b <= line_start})
    # Line-step fallbacks, counted from the document start so they do not move with the cursor.
    line_no = text.count("\n", 0, region_start)
    pos = region_start
    step_starts = []
    while pos <= line_start:
        if line_no % LINE_STEP == 0:
            step_starts.append(pos)
        nxt = text.find("\n", pos, line_start)
        if nxt < 0:
            break
        pos = nxt + 1
        line_no += 1
    candidates = sorted(set(candidates) | set(step_starts) | {line_start})
    # Cheap first cut from the char count, then exact counts: a binary search, as a later start
    # never has more tokens (a few tokenizations, not one per candidate line).
    near = [start for start in candidates if offset - start <= budget * 6]
    lo, hi = 0, len(near)
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[near[mid]:offset]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo < len(near):
        return near[lo]
    # Even the current line is too long: keep the tail of it that fits.
    return _fit_tail(text, line_start, offset, count_tokens, budget)


def _suffix_end(text: str, offset: int, region_end: int, count_tokens: Callable[[str], int], budget: int) -> int:
    if budget <= 0:
        return offset
    end = offset
    pos = offset
    limit = min(region_end, offset + budget * 6)
    while pos < limit:
        nxt = text.find("\n", pos, limit)
        nxt = limit if nxt < 0 else nxt + 1
        if count_tokens(text[offset:nxt]) > budget:
            break
        end = pos = nxt
    if end > offset:
        return end
    line_end = text.find("\n", offset)
    return _fit_head(text, offset, len(text) if line_end < 0 else line_end, count_tokens, budget)


def _fit_tail(text: str, lo: int, offset: int, count_tokens: Callable[[str], int], budget: int) -> int:
    """Start of the longest tail of text[lo:offset] within the token budget (a line of digits or
    CJK is about one token per character, or more), snapped to TAIL_STEP so it stays put while
    the user types."""
    width = budget * 3
    for _ in range(8):
        start = max(lo, offset - width)
        snapped = -(-start // TAIL_STEP) * TAIL_STEP
        if start > lo and snapped < offset:
            start = snapped
        tokens = count_tokens(text[start:offset])
        if tokens <= budget:
            return start
        width = (offset - start) * budget // tokens  # narrower each round: tokens > budget
    return offset


def _fit_head(text: str, offset: int, hi: int, count_tokens: Callable[[str], int], budget: int) -> int:
    """End of the longest head of text[offset:hi] within the token budget (see `_fit_tail`)."""
    width = budget * 3
    for _ in range(8):
        end = min(hi, offset + width)
        snapped = end // TAIL_STEP * TAIL_STEP
        if end < hi and snapped > offset:
            end = snapped
        tokens = count_tokens(text[offset:end])
        if tokens <= budget:
            return end
        width = (end - offset) * budget // tokens
    return offset


def _nth_line_offset(text: str, line: int, line_start: int, cursor_line: int) -> int:
    pos = line_start
    for _ in range(cursor_line - line):
        prev = text.rfind("\n", 0, pos - 1)
        pos = prev + 1
        if prev < 0:
            return 0
    return pos


def _offset_after_lines(text: str, offset: int, n: int) -> int:
    pos = offset
    for _ in range(n):
        nxt = text.find("\n", pos)
        if nxt < 0:
            return len(text)
        pos = nxt + 1
    return pos


def _clip_long_lines(text: str, keep_end: bool) -> str:
    if len(text) <= MAX_LINE_CHARS or all(len(line) <= MAX_LINE_CHARS for line in text.split("\n")):
        return text
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        touching_cursor = (i == len(lines) - 1) if keep_end else (i == 0)
        if len(line) > MAX_LINE_CHARS:
            line = (line[-MAX_LINE_CHARS:] if keep_end else line[:MAX_LINE_CHARS]) if touching_cursor else ""
        out.append(line)
    return "\n".join(out)
