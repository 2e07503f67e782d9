"""Turn the model's middle into a suggestion a user would accept.

Each filter is a plain function `(text, Surroundings) -> text`; `FILTERS` lists them in order and
`postprocess` can switch any off, so the quality benchmark can measure each one's effect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from codestral_ls.engine.request import StopRule

PAIRS = {")": "(", "]": "[", "}": "{"}
OPENERS = set(PAIRS.values())


@dataclass(frozen=True)
class Surroundings:
    line_before: str  # current line up to the cursor (typed text included)
    line_after: str  # current line after the cursor
    suffix: str  # document text after the cursor
    prev_lines: tuple[str, ...]  # a few lines above the cursor's line, nearest last
    single_line: bool
    line_comment: str = ""  # the language's line comment: a comment-only line does not end a single line


def trim_to_line(text: str, s: Surroundings) -> str:
    """Single-line mode ends at the line break; multi-line drops trailing blank lines."""
    if s.single_line:
        return StopRule(single_line=True, line_comment=s.line_comment).cut(text)[0].rstrip()
    return text.rstrip()


def drop_suffix_overlap(text: str, s: Surroundings) -> str:
    """Drop the end of the suggestion that repeats what already follows the cursor."""
    after = s.line_after.strip()
    if after:
        # e.g. `foo(a, b))` before `)`: the closing text is already there.
        for k in range(min(len(after), len(text)), 0, -1):
            if text.endswith(after[:k]) and (k == len(after) or not after[:k].isalnum()):
                return text[: len(text) - k].rstrip() if k < len(text) else ""
        return text
    if "\n" in text:
        # Multi-line: drop trailing lines that equal the lines after the cursor.
        following = [ln.rstrip() for ln in s.suffix.lstrip("\n").split("\n") if ln.strip()][:8]
        lines = text.split("\n")
        if following:
            for i in range(1, len(lines)):
                tail = [ln.rstrip() for ln in lines[i:] if ln.strip()]
                if tail and tail == following[: len(tail)]:
                    return "\n".join(lines[:i]).rstrip()
    return text


def balance_brackets(text: str, s: Surroundings) -> str:
    """Cut at the first closing bracket that opens nowhere (not in the suggestion nor the line)."""
    stack = [c for c in _unclosed(s.line_before)]
    in_str: str | None = None
    for i, c in enumerate(text):
        if in_str:
            if c == in_str and (i == 0 or text[i - 1] != "\\"):
                in_str = None
            continue
        if c in "\"'`":
            in_str = c
        elif c in OPENERS:
            stack.append(c)
        elif c in PAIRS:
            if stack and stack[-1] == PAIRS[c]:
                stack.pop()
            else:
                return text[:i].rstrip()
    return text


def drop_repetition(text: str, s: Surroundings) -> str:
    """Drop what only repeats the lines above the cursor, and cut a loop on one line.

    The model sometimes re-writes the lines it was just shown (a docstring, the previous
    statement) before going on: those leading lines go, what follows them stays.
    """
    if not text.strip():  # nothing but whitespace
        return ""
    # Lines as they would read in the document, indentation included: `return False` one level
    # out from the same line above is a different statement, not a repeat.
    lines = [ln.rstrip() for ln in (s.line_before + text).split("\n") if ln.strip()]
    above = [ln.rstrip() for ln in s.prev_lines if ln.strip()]
    if s.line_before.strip():
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
                head = head[len(s.line_before):] if head.startswith(s.line_before) else head.lstrip()
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


def drop_empty(text: str, s: Surroundings) -> str:
    return text if text.strip() else ""


Filter = Callable[[str, Surroundings], str]
FILTERS: dict[str, Filter] = {
    "trim_to_line": trim_to_line,
    "drop_suffix_overlap": drop_suffix_overlap,
    "balance_brackets": balance_brackets,
    "drop_repetition": drop_repetition,
    "drop_empty": drop_empty,
}


def postprocess(text: str, s: Surroundings, disabled: frozenset[str] = frozenset()) -> str:
    for name, f in FILTERS.items():
        if name not in disabled:
            text = f(text, s)
        if not text:
            return ""
    return text


def _unclosed(line: str) -> list[str]:
    stack: list[str] = []
    for c in line:
        if c in OPENERS:
            stack.append(c)
        elif c in PAIRS and stack and stack[-1] == PAIRS[c]:
            stack.pop()
    return stack
