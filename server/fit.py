"""Does a suggestion fit the code that follows the cursor?

A suggestion is text inserted in front of code the user already has. Some suggestions cannot be
right there, whatever the model thought: the line right below already says it, a `return` with
more statements of its block after it, a plain statement where Python needs a block header
because the next line is indented deeper. `misfit` names such a reason; the pipeline then asks
the engine for its next-best start (`FimRequest.avoid`) instead of showing a wrong line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Statements after which nothing else in the same block can run.
_TERMINAL = re.compile(r"(return|raise|throw|break|continue)\b")
# Lines at the block's indent that may legally follow a terminal statement.
_CONTINUES = re.compile(r"(else|elif|except|finally|case|default|catch)\b|[})\]#]|//|/\*|\*")
# Languages where a deeper next line means the current line must open a block.
_INDENTED_BLOCKS = {"python": ":"}
LINE_COMMENTS = {"python": "#", "javascript": "//", "javascriptreact": "//", "typescript": "//",
                 "typescriptreact": "//", "go": "//", "rust": "//", "java": "//", "c": "//", "cpp": "//"}


@dataclass(frozen=True)
class Line:
    text: str  # stripped
    indent: int


def misfit(suggestion: str, line_before: str, line_after: str, suffix: str, language: str) -> str | None:
    """Why `suggestion` cannot be right before `suffix` (None: nothing against it).

    Only judged when the suggestion ends a line of its own: cursor after indentation (or on an
    empty line) and nothing else on the line after it.
    """
    if not suggestion.strip() or line_before.strip() or line_after.strip():
        return None
    lines = suggestion.split("\n")
    first = lines[0]
    last = Line(lines[-1].strip(), _indent(lines[-1]) if len(lines) > 1 else len(line_before) + _indent(first))
    following = _next_code_line(suffix.split("\n", 1)[1] if "\n" in suffix else "")
    if following is None or not last.text:
        return None
    if len(lines) == 1 and last.text == following.text and any(c.isalnum() for c in last.text):
        return "repeats the next line"
    if (_TERMINAL.match(last.text) and following.indent == last.indent
            and not _CONTINUES.match(following.text)):
        return "unreachable code follows it"
    opener = _INDENTED_BLOCKS.get(language)
    if opener:
        opens = _opens_block(last.text, opener)
        if following.indent > last.indent and not opens:
            return "the next line is indented deeper, but this line opens no block"
        code = _code(last.text)
        if following.indent <= last.indent and code.endswith(opener) and _depth(code) <= 0:
            return "it opens a block, but the next line is not inside it"
    return None


def first_words(suggestion: str) -> str:
    """What `FimRequest.avoid` gets for a rejected suggestion: its first line, stripped."""
    return suggestion.split("\n", 1)[0].strip()


def _code(line: str) -> str:
    """The line without a trailing comment."""
    return line.split("#", 1)[0].rstrip() if "#" in line and not _in_string(line, line.index("#")) else line


def _opens_block(line: str, opener: str) -> bool:
    code = _code(line)
    if code.endswith((opener, "\\", ",")):
        return True
    return _depth(code) > 0  # an open bracket: the deeper line continues the expression


def _depth(code: str) -> int:
    return sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")


def _in_string(line: str, pos: int) -> bool:
    quote = None
    for c in line[:pos]:
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
    return quote is not None


def _next_code_line(text: str) -> Line | None:
    for raw in text.split("\n", 50)[:50]:
        if raw.strip():
            return Line(raw.strip(), _indent(raw))
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))
