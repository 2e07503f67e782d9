"""What an editor does with an answer's range (issue 24, items 7, 8, 11): the text after applying an item
is what the user meant, whatever default the client would put in place of a missing range, for the
completion fallback and for inline items. The server runs in this process on a scripted backend."""

from __future__ import annotations

from typing import Any

import pytest
from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import Completer

from tests.inprocess import InProcess
from tests.scripted import ScriptedBackend

URI = "file:///w/ranges.py"


async def started(answer: str, multiline: str = "never") -> InProcess:
    ip = InProcess(Options(multiline=multiline, second_opinions=0))
    await ip.initialize(engine=False)
    backend = ScriptedBackend(answer)
    ip.server.backend = backend
    ip.server.completer = Completer(backend, ip.server.options, ip.server.stats)
    return ip


def apply(text: str, rng: dict[str, Any], new_text: str) -> str:
    """An LSP edit applied as an editor does: UTF-16 columns, a character past its line's end is the end."""
    lines = text.split("\n")

    def offset(pos: dict[str, int]) -> int:
        line = lines[pos["line"]]
        units = 0
        for i, ch in enumerate(line):
            if units >= pos["character"]:
                return sum(len(x) + 1 for x in lines[:pos["line"]]) + i
            units += 2 if ord(ch) > 0xFFFF else 1
        return sum(len(x) + 1 for x in lines[:pos["line"]]) + len(line)

    return text[:offset(rng["start"])] + new_text + text[offset(rng["end"]):]


def vscode_default_range(text: str, line: int, character: int) -> dict[str, Any]:
    """VS Code's range for an inline item without one: from the start of the word before the cursor to
    the end of the line."""
    row = text.split("\n")[line]
    start = min(character, len(row))
    while start > 0 and (row[start - 1].isalnum() or row[start - 1] == "_"):
        start -= 1
    return {"start": {"line": line, "character": start}, "end": {"line": line, "character": len(row)}}


async def completion(ip: InProcess, line: int, character: int) -> dict[str, Any]:
    answer = await ip.request("textDocument/completion", {
        "textDocument": {"uri": URI}, "position": {"line": line, "character": character}})
    items = answer["result"]["items"]
    assert len(items) == 1, answer
    return items[0]


# -- the completion fallback (items 7 and 8) -------------------------------------------------------------


async def test_completion_replaces_the_auto_closed_bracket_the_suggestion_closes():
    ip = await started("a, b) + 1")
    text = "x = foo()\n"
    ip.open(URI, text)
    edit = (await completion(ip, 0, 8))["textEdit"]
    assert apply(text, edit["range"], edit["newText"]) == "x = foo(a, b) + 1\n"


@pytest.mark.parametrize("character", [7, 8, 99, 10**6])
async def test_completion_asked_past_the_end_of_the_line_does_not_repeat_the_word(character):
    ip = await started("urn a")
    text = "def f(a):\n    ret\n"
    ip.open(URI, text)
    item = await completion(ip, 1, character)
    edit = item["textEdit"]
    assert edit["range"]["start"] == {"line": 1, "character": 4}  # the word `ret`, where it really is
    assert edit["range"]["end"] == {"line": 1, "character": 7}
    assert apply(text, edit["range"], edit["newText"]) == "def f(a):\n    return a\n"
    assert item["filterText"].startswith("ret")


# -- inline items always carry the range the server means (item 11) -------------------------------------

# (document with | at the cursor, answer, the line once accepted)
INLINE_CASES = [
    ("def f(a):\n    ret|\n", "urn a", "    return a"),  # after a partial word
    ("f(|, b)\n", "a", "f(a, b)"),  # before code on the line
    ("x = foo(|)\n", "a, b) + 1", "x = foo(a, b) + 1"),  # over the closer it closes itself
    ("x = foo(|)\n", "bar(1)", "x = foo(bar(1))"),  # keeping the closer it needs
    ("def f(a):\n    return |\n", "a", "    return a"),  # at the end of the line
    ("s = '😀' + f(|)\n", "x)", "s = '😀' + f(x)"),  # UTF-16 columns
]


@pytest.mark.parametrize(("doc", "answer", "accepted"), INLINE_CASES, ids=[c[0] for c in INLINE_CASES])
async def test_every_inline_item_has_a_range_and_accepting_it_gives_the_line_meant(doc, answer, accepted):
    ip = await started(answer)
    text = doc.replace("|", "")
    before = doc[:doc.index("|")]
    line = before.count("\n")
    character = len(before.split("\n")[-1].encode("utf-16-le")) // 2
    ip.open(URI, text)
    result = (await ip.inline(URI, line, character))["result"]
    assert result["items"], result
    for item in result["items"]:
        # No range: VS Code would use [word start, end of line] and drop the item or eat the line.
        assert "range" in item and item["range"] is not None, item
        assert item["range"]["start"] == {"line": line, "character": character}
        applied = apply(text, item["range"], item["insertText"])
        assert applied.split("\n")[line] == accepted, applied


async def test_a_missing_range_would_have_lost_the_rest_of_the_line():
    """Why the range is always sent: the client's default range is not what the server means."""
    text = "x = foo\n"
    default = vscode_default_range(text, 0, 4)
    assert apply(text, default, "1 + ") != "x = 1 + foo\n"
