"""Plain functions of the server: context windows, modes, post-processing, anchors, typed-through
cache, options. No model needed."""

from __future__ import annotations

import pytest
from codestral_ls.engine.request import StopRule
from codestral_ls.server import cursor as cursor_module
from codestral_ls.server.anchor import Anchors
from codestral_ls.server.context import build_context
from codestral_ls.server.cursor import Cursor, read_cursor
from codestral_ls.server.options import Options, parse_options
from codestral_ls.server.postprocess import FILTERS, PARSE_CHECK, adds_syntax_error, misfit, postprocess, replaced_after
from codestral_ls.server.typed_cache import Shown, TypedThroughCache


class Quarters:
    """A token every four characters (a short text is one token)."""

    def starts(self, text: str) -> list[int]:
        return list(range(0, 4 * max(1, len(text) // 4), 4)) if text else []


counter = Quarters()


def count(text: str) -> int:
    return len(counter.starts(text))


def at(text: str, language: str = "python", multiline: str = "auto", marker: str = "|") -> Cursor:
    """The cursor where `marker` is in `text` (the marker removed)."""
    off = text.index(marker)
    return read_cursor(text[:off] + text[off + len(marker):], off, language, multiline)


def context(text: str, offset: int, prefix_tokens: int, suffix_tokens: int):
    return build_context(read_cursor(text, offset, "python"), counter, prefix_tokens, suffix_tokens)


PY = ("import os\n\n\ndef load(path):\n    with open(path) as f:\n        return f.read()\n\n\n"
      "def main():\n    data = \n    print(data)\n")


def test_context_windows_and_mode():
    off = PY.index("data = ") + len("data = ")
    ctx = context(PY, off, prefix_tokens=512, suffix_tokens=64)
    assert PY[:off].endswith(ctx.prefix) and ctx.prefix.startswith("import os")
    assert PY[off:].startswith(ctx.suffix) and "print(data)" in ctx.suffix
    assert read_cursor(PY, off, "python").mode == "single"


def test_prefix_window_starts_at_a_top_level_boundary_and_stays_put_while_typing():
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(60))
    text = body + "def g(y):\n    total = 0\n    "
    starts = set()
    for extra in ("", "t", "to", "tot", "total"):
        t = text + extra
        ctx = context(t, len(t), prefix_tokens=200, suffix_tokens=32)
        assert count(ctx.prefix) <= 200
        assert ctx.prefix.startswith("def f")  # a top-level definition starts the window
        starts.add(ctx.prefix_start)
    assert len(starts) == 1


def test_huge_line_is_windowed_not_swallowed():
    text = "x = '" + "a" * 100_000 + "'\ny = "
    ctx = context(text, len(text), prefix_tokens=256, suffix_tokens=32)
    assert len(ctx.prefix) < 5000


def test_modes_from_the_cursor_place():
    def mode(text: str, language: str = "python") -> str:
        return at(text, language).mode

    assert mode("def f(x):\n    |\n") == "multi"  # empty line in a body
    assert mode("def f(x):|\n") == "multi"  # after a block opener
    assert mode("x = foo(|)\n") == "single"  # inside an argument list
    assert mode("x = fo|o\n") == "none"  # mid-word
    assert mode("s = 'hello |'\n") == "single"  # in a string
    # After a brace that opens a body: a block, indented deeper than the header.
    opened = at("function f() {|\n}\n", "javascript")
    assert (opened.mode, opened.block_indent) == ("multi", 1)
    assert mode("const x = f(a, |);\n", "javascript") == "single"  # inside the call's arguments
    assert mode("// see |\n", "javascript") == "single"  # in a comment


def test_one_parse_per_request(monkeypatch):
    """Mode, block indent and the context windows come from one tree-sitter parse."""
    parses = []
    real = cursor_module.parser_for("python")

    class Counting:
        def parse(self, data: bytes):
            parses.append(len(data))
            return real.parse(data)

    monkeypatch.setattr(cursor_module, "parser_for", lambda language: Counting())
    c = at(PY.replace("data = ", "data = |"))
    assert c.mode == "single" and c.block_indent == 4
    build_context(c, counter, 512, 64)
    assert len(parses) == 1


def surround(line_before: str, line_after: str = "", below: str = "", single: bool = True,
             prev: tuple[str, ...] = ()) -> Cursor:
    """A cursor between `line_before` and `line_after`, lines `prev` above it and `below` after
    its line; single- or multi-line mode by the option."""
    above = "".join(ln + "\n" for ln in prev)
    return at(above + line_before + "|" + line_after + below, multiline="never" if single else "always")


def test_postprocess_cuts_overlap_and_balances_brackets():
    assert postprocess("a + b)", surround("    print(add(", "))")) == "a + b"  # both closers already there
    assert postprocess("x, y))  \n\n", surround("f(g(", single=False)) == "x, y))"  # trailing blanks go
    assert postprocess("x)]", surround("f(")) == "x)"
    # A Rust lifetime is not a quote: the stray `)` after it is still found.
    rust = at("fn f<'a>(x: &'a str) -> &'a str {\n    g(|\n}\n", "rust", "never")
    assert postprocess("x)) + 1", rust) == "x)"
    assert postprocess("   \n", surround("x = ")) == ""


def test_a_closer_the_suggestion_needs_is_kept():
    """Issue 16: `bar(1)` in `foo(` before `)` lost its own `)`, leaving `foo(bar(1)` in the buffer."""
    assert postprocess("bar(1)", surround("x = foo(", ")")) == "bar(1)"
    assert postprocess("get(a)", surround("if check(", "):")) == "get(a)"
    assert postprocess("a + b)", surround("    print(add(", ")")) == "a + b)"  # `add(` closed, `print(` by `)`
    # A closer the text after the cursor already has still goes.
    assert postprocess("a, b)", surround("x = foo(", ")")) == "a, b"
    assert postprocess("a):", surround("if check(", "):")) == "a"
    assert postprocess("x;", surround("    return ", ";")) == "x"  # no bracket: as before
    assert postprocess('hello")', surround('print("', '")')) == "hello"


def test_a_suggestion_that_closes_the_auto_closed_bracket_itself_replaces_it():
    """`a, b) + 1` in `foo(` before the editor's `)`: inserted as is the line would read
    `foo(a, b) + 1)`; the item replaces the `)` after the cursor instead."""
    c = surround("x = foo(", ")")
    assert replaced_after(postprocess("a, b) + 1", c), c) == 1
    assert replaced_after(postprocess("bar(1)", c), c) == 0  # a plain insert
    assert replaced_after(postprocess("a, b)", c), c) == 0  # the repeat was dropped instead
    assert replaced_after('x"] + y', surround('d["', '"]')) == 2  # the quote and the bracket
    assert replaced_after('hi", end="")', surround('print("', '")')) == 0  # the repeat was dropped instead
    assert replaced_after("a", surround("f(", "")) == 0


def test_postprocess_drops_repeated_previous_line_and_loops():
    assert postprocess("return a + b", surround("    ", prev=("    return a + b",))) == ""
    # The same words one level out are another statement: the function's own last line.
    assert postprocess("return False", surround("    ", prev=("        return False",))) == "return False"
    looped = "x += 1\nx += 1\nx += 1\nx += 1"
    assert postprocess(looped, surround("", single=False)) == "x += 1"
    # The model re-writing the docstring it was just shown, then the real line: only that stays.
    doc = ('    """Prefixes of a string.', "    >>> prefixes('ab')", "    ['a', 'ab']", '    """', "")
    rewritten = '"""Prefixes of a string.\n    >>> prefixes(\'ab\')\n    [\'a\', \'ab\']\n    """\n    result = []'
    assert postprocess(rewritten, surround("    ", prev=doc, single=False)) == "result = []"
    assert postprocess(rewritten.rsplit("\n", 1)[0], surround("    ", prev=doc, single=False)) == ""


def test_postprocess_multiline_drops_lines_already_below():
    s = surround("    ", "", "\n    return total\n", False, ("def f(v):",))
    assert postprocess("total = sum(v)\n    return total", s) == "total = sum(v)"


def test_every_filter_can_be_switched_off():
    s = surround("    x = add(", ")")
    assert postprocess("a + b)", s) == "a + b"
    assert postprocess("a + b)", s, frozenset({"drop_suffix_overlap", "balance_brackets"})) == "a + b)"
    assert set(FILTERS) >= {"strip_end", "drop_suffix_overlap", "balance_brackets", "drop_repetition"}


def test_anchor_keeps_the_prompt_while_typing_and_moves_when_the_cursor_leaves():
    anchors = Anchors()
    text = "def f(a):\n    return \n\nprint(f(1))\n"
    off = text.index("return ") + 7

    def place(t, o):  # as the pipeline does: the anchored prompt, else a fresh one here
        return anchors.lookup("u", t, o) or anchors.remember("u", t, o, context(t, o, 256, 64))

    first = place(text, off)
    assert not first.anchored and first.forced_middle == ""
    typed = text[:off] + "a +" + text[off:]
    second = place(typed, off + 3)
    assert second.anchored and second.forced_middle == "a +" and second.ctx == first.ctx
    moved = place(typed, 3)
    assert not moved.anchored
    edited_below = typed.replace("print(f(1))", "print(f(2))")
    again = place(edited_below, 3)
    assert not again.anchored  # text after the cursor changed: a fresh prompt


def test_typed_through_cache():
    cache = TypedThroughCache(4)
    doc = "def f(a, b):\n    x = 1\n    y = 2\n    return |\n"
    cache.remember(Shown.at("u", at(doc), "a + b"))

    def rest(typed: str, text: str = doc) -> str | None:
        found = cache.lookup("u", at(text.replace("|", typed + "|")))
        return found.text if found else None

    assert rest("a") == " + b"
    assert rest("a +") == " b"
    assert rest("x") is None
    assert rest("a", doc.replace("    x = 1\n", "")) is None  # another line now
    filler = "".join(f"v{i} = {i}\n" for i in range(10))
    for i in range(10):
        cache.remember(Shown.at("u", at(filler + f"v{i} = |"), "zz"))
    assert rest("a") is None  # evicted (LRU, 4 entries)


def test_typed_through_answers_go_stale_when_the_code_around_changes():
    """Issue 16: the cache was keyed by the line alone. Rename `total` above, come back, type `r`:
    the old `eturn total` came back. Insert lines above: another line with the same indent at
    that line number matched."""
    cache = TypedThroughCache()
    doc = "def f(v):\n    total = 0\n    for x in v:\n        total += x\n    |\n"
    cache.remember(Shown.at("u", at(doc), "return total"))
    assert cache.lookup("u", at(doc.replace("|", "r|"))).text == "eturn total"  # the user types it
    renamed = doc.replace("total", "sum")
    assert cache.lookup("u", at(renamed.replace("|", "r|"))) is None
    # Lines inserted above: line 4 is now an empty line in the middle of the function.
    shifted = "import os\n\ndef f(v):\n    total = 0\n    |\n    for x in v:\n        total += x\n"
    assert (at(shifted).line, at(shifted).before, at(shifted).after) == (4, "    ", "")
    assert cache.lookup("u", at(shifted.replace("|", "r|"))) is None
    # An edit far away (past the window around the line) does not matter.
    far = "# " + "x" * 5000 + "\n" + doc
    cache.remember(Shown.at("u", at(far), "return total"))
    edited_far = far.replace("# x", "# y", 1)
    assert cache.lookup("u", at(edited_far.replace("|", "r|"))).text == "eturn total"


def test_options_camel_case_validation_and_bad_values():
    o, problems = parse_options({"budgetMs": 50, "quantize": "int8", "kvReuse": False, "model": "embedded"})
    assert (o.budget_ms, o.quantize, o.kv_reuse, o.model) == (50, "int8", False, None)
    assert problems == []
    o2, problems = parse_options({"codestral": {"quantize": "int3", "budgetMs": -1, "bogus": 1, "maxTokens": 32}}, o)
    assert o2.quantize == "int8" and o2.budget_ms == 50 and o2.max_tokens == 32  # bad values ignored
    assert len(problems) == 3 and any("int3" in p for p in problems)
    assert parse_options("nonsense")[1]
    assert Options().budget_ms == 100


def test_empty_line_inside_a_block_gets_one_line_at_its_end_a_block():
    def mode(text: str) -> str:
        return at(text).mode

    assert mode("def f(x):\n    y = 1\n    |\n    return y\n") == "single"  # code continues below
    assert mode("def f(x):\n    y = 1\n    |\n\ndef g():\n    pass\n") == "multi"  # end of the block
    assert mode("def f(x):\n    if x:\n        |\n    return x\n") == "multi"  # below is dedented


def test_utf16_columns_around_astral_characters_and_lone_surrogates():
    from codestral_ls.server.documents import chars_for_units

    line = "𐀀\ud800a"  # an astral character (2 units), a lone surrogate JSON can carry (1), "a"
    assert [chars_for_units(line, u, "utf-16") for u in range(5)] == [0, 0, 1, 2, 3]
    assert chars_for_units("a😀b", 2, "utf-16") == 1  # inside the emoji: before it
    assert chars_for_units("é = 1", 2, "utf-8") == 1


def test_misfit_rejects_lines_that_cannot_be_right_before_the_code_below():
    def misfit_(suggestion: str, line_before: str, line_after: str, suffix: str, language: str) -> str | None:
        assert suffix.startswith(line_after)  # the rules read from the lines (these are fragments: no parse check)
        return misfit(suggestion, at(line_before + "|" + suffix, language), disabled=frozenset({PARSE_CHECK}))

    body = "    x = f()\n    return x\n"
    # The next line already says it.
    assert misfit_("x = f()", "    ", "", "\n" + body, "python") == "repeats the next line"
    # A return with more statements of its block below it.
    assert misfit_("return None", "    ", "", "\n" + body, "python") == "unreachable code follows it"
    assert misfit_("return None", "        ", "", "\n    else:\n        pass\n", "python") is None
    # The next line is deeper: Python needs a block header here.
    deeper = "\n        total += v\n    return total\n"
    assert "opens no block" in misfit_("total = 0", "    ", "", deeper, "python")
    assert misfit_("for v in values:", "    ", "", deeper, "python") is None
    # A block header with nothing indented under it.
    assert "not inside it" in misfit_("if x:", "    ", "", "\n" + body, "python")
    assert misfit_("d = {'a':", "    ", "", "\n" + body, "python") is None
    assert misfit_("for v in values:  # each", "    ", "", deeper, "python") is None
    assert misfit_("total = sum(", "    ", "", deeper, "python") is None  # an open bracket continues
    assert misfit_("total = 0", "    ", "", deeper, "javascript") is None  # braces, not indentation
    # Only whole lines are judged: mid-line text, or code after the cursor, is left alone.
    assert misfit_("x = f()", "    y = ", "", "\n" + body, "python") is None
    assert misfit_("x = f()", "    ", ")", ")\n" + body, "python") is None
    assert misfit_("y = 2", "    ", "", "\n" + body, "python") is None
    # A line that is already written a little further down, past a comment and a blank line: the
    # model skipped the line that belongs here (textwrap.py, "else:" body, in the typing replay).
    below = ("\n\n    # Maximum width for this line.\n    width = self.width - len(indent)\n"
             "\n    # First chunk\n    if chunks:\n        del chunks[-1]\n")
    assert misfit_("width = self.width - len(indent)", "        ", "", below, "python") == "repeats a line below"
    assert misfit_("indent = self.initial_indent", "        ", "", below, "python") is None
    # Copies that are legitimate: the same call in a sibling branch or deeper, a repeated return,
    # short lines (`i += 1`). (10 of HumanEval's 1033 right single lines are such copies.)
    assert misfit_("del chunks[-1]", "    ", "", below, "python") is None
    branches = "\n    else:\n        out.append(value)\n"
    assert misfit_("out.append(value)", "        ", "", branches, "python") is None
    assert misfit_("return False", "        ", "", "\n    x = 1\n    return False\n", "python") is None
    assert misfit_("i += 1", "        ", "", "\n    x = 1\n    i += 1\n", "python") is None


def test_a_comment_alone_does_not_end_a_single_line_suggestion():
    rule = StopRule(single_line=True, line_comment="#")
    assert rule.cut("# sort them\n    lst.sort()\n    return lst") == ("# sort them\n    lst.sort()", "stop")
    assert rule.cut("lst.sort()\n    return lst") == ("lst.sort()", "stop")
    assert StopRule(single_line=True).cut("# sort them\n    lst.sort()\n") == ("# sort them", "stop")
    s = surround("    ", "", "\n", single=True)
    assert s.line_comment == "#"
    cut, _ = StopRule(single_line=True, line_comment=s.line_comment).cut("# sort them\n    lst.sort()\n    x")
    assert postprocess(cut, s) == "# sort them\n    lst.sort()"  # what the engine cut stays whole


# -- CRLF documents (issue 16) -------------------------------------------------------------------

CRLF_CASES = ["def f(x):\n    |\n", "def f(x):|\n    pass\n", "x = foo(|)\n",
              "def f(x):\n    y = 1\n    |\n    return y\n", "s = 'a |'\nprint(s)\n", "|"]


@pytest.mark.parametrize("doc", CRLF_CASES)
def test_a_crlf_document_reads_like_the_lf_one(doc):
    """`"\\r"` was left in the text after the cursor: a CRLF line got `single` where LF got `multi`."""
    lf, crlf = at(doc), at(doc.replace("\n", "\r\n"))
    assert (crlf.mode, crlf.block_indent) == (lf.mode, lf.block_indent)
    assert (crlf.before, crlf.after, crlf.next_line, crlf.suffix) == (lf.before, lf.after, lf.next_line, lf.suffix)
    assert [ln for ln in crlf.prev_lines] == [ln for ln in lf.prev_lines]
    assert crlf.newline == ("\r\n" if "\n" in doc else "\n") and lf.newline == "\n"
    # The model sees the LF text either way.
    a = build_context(lf, counter, 256, 64)
    b = build_context(crlf, counter, 256, 64)
    assert (a.prefix, a.suffix) == (b.prefix, b.suffix)


def test_suggestions_get_the_document_line_ending():
    c = at("def f(x):\r\n    |\r\n")
    assert c.in_document("if x:\n        return 1\n    return 2") == "if x:\r\n        return 1\r\n    return 2"
    assert at("def f(x):\n    |\n").in_document("a\nb") == "a\nb"
    assert at("x = 1\r\ny = |").newline == "\r\n"  # the last line: the break above says


def test_a_crlf_anchor_keeps_the_prompt_and_sends_an_lf_middle():
    anchors = Anchors()
    text = "def f(a):\r\n    \r\n\r\nprint(f(1))\r\n"
    off = text.index("    ") + 4
    first = anchors.remember("u", text, off, build_context(read_cursor(text, off, "python"), counter, 256, 64))
    assert "\r" not in first.ctx.prefix + first.ctx.suffix
    typed = text[:off] + "x = 1\r\n    " + text[off:]
    second = anchors.lookup("u", typed, off + 11)
    assert second is not None and second.anchored and second.forced_middle == "x = 1\n    "
    below = typed.replace("f(1)", "f(2)")  # the suffix window's end, raw CRLF text, is checked too
    assert anchors.lookup("u", below, off + 11) is None


# -- the parse check (issue 18) --------------------------------------------------------------------

# (language, document with `|` at the cursor, a suggestion that fits, one that adds a syntax error)
PARSE_CASES = [
    ("python", "def f(a, b):\n    return |\n", "a + b", "a +"),
    ("python", "def f(a, b):\n    x = |\n    return x\n", "a * b", "1 2"),
    ("python", "def f(a):\n    if |\n        return 1\n", "a > 0:", "a >:"),
    ("python", "x = foo(|)\n", "a, b", "a, b)) + 1"),
    ("python", "def f(a, b):\r\n    |\r\n", "if a:\n        return 1\n    return b", "if a:\n        return 1)"),
    ("javascript", "function f() {\n  const x = foo(|);\n}\n", "a, b", "a, b) + 1"),
    ("typescript", "function f(a: number): number {\n  const x: number = |;\n  return x;\n}\n", "a * 2", "a as"),
    ("typescriptreact", "const A = () => <div>{|}</div>;\n", "items.map((i) => <b>{i}</b>)",
     "items.map((i) => <b>{i}</b>))"),
    ("go", "package main\n\nfunc f(a int) int {\n\tx := |\n\treturn x\n}\n", "g(a, 1)", "g(a, 1"),
    ("rust", "fn f() -> Vec<i32> {\n    let x = |;\n    x\n}\n", "vec![1, 2]", "vec![1, 2"),
    ("java", "class A {\n  int f(int a, int b) {\n    int x = |;\n    return x;\n  }\n}\n", "a * b", "a +* b"),
    ("c", "int f(int a) {\n    int x = |;\n    return x;\n}\n", "g(a)", "g(a))"),
    ("cpp", "int f(std::vector<int> v) {\n    auto n = |;\n    return n;\n}\n", "v.size()", "v.size("),
    # A statement between a block and its `else:` (statistics.py in Neovim, after line 200): the
    # parser gives up on the whole `if`, so the error starts above the cursor's line.
    ("python", "def f(x):\n    if x:\n        y = 1\n    |\n    else:\n        y = 2\n",
     "    raise ValueError(x)", "raise ValueError(x)"),
]


@pytest.mark.parametrize(("language", "doc", "fits", "broken"), PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_a_suggestion_that_adds_a_syntax_error_is_rejected(language, doc, fits, broken):
    c = at(doc, language)
    assert not adds_syntax_error(fits, c)
    assert adds_syntax_error(broken, c)
    assert misfit(broken, c) == "it adds a syntax error"
    assert misfit(broken, c, disabled=frozenset({PARSE_CHECK})) is None  # the benchmarks' ablation


def test_the_parse_check_leaves_errors_that_are_not_the_suggestions_alone():
    # A block opened on its own line: its closing brace is missing far below, until written.
    assert not adds_syntax_error("if (x) {", at("function f(x) {\n  |\n  return 1;\n}\n", "javascript"))
    # An unclosed bracket far above changes how the parser recovers the whole region.
    assert not adds_syntax_error("a + b", at("x = (\n\ndef f(a, b):\n    return |\n"))
    # The user's own error on another line stays what it was.
    assert not adds_syntax_error("a + b", at("def f(a, b):\n    y = = 2\n    return |\n"))
    # A block cut short by the latency budget (Python accepts a header without a body).
    assert not adds_syntax_error("for x in v:", at("def f(v):\n    |\n"))
    # The replaced auto-closed `)` is gone from the checked text.
    c = at("x = foo(|)\n")
    assert adds_syntax_error("a, b) + 1", c) and not adds_syntax_error("a, b) + 1", c, replace_after=1)
    assert not adds_syntax_error("anything at all (", at("no grammar |", "plaintext"))


def test_the_parse_check_rejects_a_raise_above_else_in_statistics_py():
    """The screen case: a new line after line 200 of the stdlib's statistics.py, at the `if`'s
    indent directly above `    else:`; the model's `raise StatisticsError(...)` there would detach
    the `else:` (the same line one level deeper, inside the block, is fine)."""
    import statistics
    from pathlib import Path

    lines = Path(statistics.__file__).read_text(encoding="utf-8").split("\n")
    assert lines[200] == "    else:"
    for indent, broken in (("    ", True), ("        ", False)):
        c = at("\n".join(lines[:200] + [indent + "|"] + lines[200:]))
        suggestion = "raise StatisticsError('no data points')"
        assert adds_syntax_error(suggestion, c) is broken
        assert (misfit(suggestion, c) == "it adds a syntax error") is broken


def test_the_parse_check_passes_every_line_of_real_files_put_back():
    """Blank a line of a real file, suggest the line it had: the file is whole again, so nothing
    may count as a new syntax error (our own Python, the VS Code client's TypeScript)."""
    import random
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    rng = random.Random(7)
    files = [(p, "python") for p in sorted((root / "server").glob("*.py"))]
    files += [(p, "typescript") for p in sorted((root / "editors" / "vscode" / "src").glob("*.ts"))]
    checked = 0
    for path, language in files:
        text = path.read_text(encoding="utf-8")
        lines = text.split("\n")
        starts = [0]
        for ln in lines:
            starts.append(starts[-1] + len(ln) + 1)
        for i in rng.sample(range(len(lines)), min(12, len(lines))):
            content = lines[i].strip()
            if len(content) < 4:
                continue
            indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
            doc = text[:starts[i]] + indent + text[starts[i] + len(lines[i]):]
            c = read_cursor(doc, starts[i] + len(indent), language)
            assert not adds_syntax_error(content, c), f"{path.name}:{i + 1}: {content}"
            checked += 1
    assert checked > 100


def test_the_parse_check_passes_every_canonical_humaneval_infilling_answer():
    """No pass@1 loss from the parse check: no canonical middle of HumanEval single- or multi-line
    infilling (6 848 holes, at the auto-indented cursor as the quality benchmark asks) counts as
    adding a syntax error; the same answers with a stray `)` do."""
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:  # benchmarks/ is not an installed package
        sys.path.insert(0, root)
    from benchmarks import quality

    paths = [quality.data_dir() / quality.SETS[multi] for multi in (False, True)]
    assert all(p.is_file() for p in paths), paths  # vendored in benchmarks/data/
    caught = total = 0
    for path in paths:
        for task in quality.load_tasks(path):
            hole = quality.make_hole(task)
            middle = quality.canonical_middle(task, hole)
            c = read_cursor(hole.text, hole.offset, "python")
            assert not adds_syntax_error(middle, c), task["task_id"]
            if "\n" not in middle:
                total += 1
                caught += adds_syntax_error(middle + ")", c)
    assert total > 1000 and caught > 0.95 * total


def test_context_windows_follow_the_measured_prefill_speed():
    from types import SimpleNamespace

    from codestral_ls.server.speed import DeviceSpeed

    cpu = DeviceSpeed(device="cpu")
    # Nothing measured, or a slow CPU: never below the windows HumanEval needs (smaller ones cost
    # 5 points of pass@1 on this machine's 2 cores).
    assert cpu.windows(0, 0, 0) == (512, 128)
    cpu.observe(SimpleNamespace(prefilled_tokens=400, prefill_ms=4400.0))  # ~90 tok/s
    assert cpu.windows(0, 0, 0) == (512, 128)
    # A GPU prefilling thousands of tokens a second gets more context for the same wait.
    gpu = DeviceSpeed(device="cuda")
    gpu.observe(SimpleNamespace(prefilled_tokens=2000, prefill_ms=400.0))  # 5000 tok/s, 300 ms target
    prefix, suffix = gpu.windows(0, 0, 0)
    assert prefix + suffix == 1472 and prefix > suffix and prefix % 64 == 0
    # Coarse steps: a slightly different estimate keeps the windows (the prompt start and its cache).
    gpu.observe(SimpleNamespace(prefilled_tokens=2000, prefill_ms=420.0))
    assert gpu.windows(0, 0, 0) == (prefix, suffix)
    # Too short to be a rate; and windows the user set are never resized.
    gpu.observe(SimpleNamespace(prefilled_tokens=3, prefill_ms=0.1))
    assert gpu.windows(0, 0, 0) == (prefix, suffix)
    assert gpu.windows(300, 50, 0) == (300, 50)

    # Context from other files is part of the cold prompt: none where the windows are at their floor
    # (this CPU: 3 s more at every new site for no gain), the old 384 where the device has room,
    # and the user's number when set.
    assert cpu.extra_tokens(0) == 0 and DeviceSpeed(device="cpu").extra_tokens(0) == 0
    assert gpu.extra_tokens(0) == 384
    assert DeviceSpeed().extra_tokens(0) == 384  # a remote backend (no local device): as before
    assert cpu.extra_tokens(200) == 200 and gpu.extra_tokens(100) == 100
    mid = DeviceSpeed(device="cuda")
    mid.observe(SimpleNamespace(prefilled_tokens=3000, prefill_ms=1000.0))  # 3000 tok/s: 896-token windows
    mid.windows(0, 0, 0)
    assert mid.extra_tokens(0) == 256


def test_a_zero_max_lines_ends_after_one_line_and_cuts_no_character():
    """StopRule(max_lines=0) cut the last character of a line (text[:-1])."""
    assert StopRule(max_lines=0, single_line=True).cut("return x\nfoo") == ("return x", "stop")
    assert StopRule(max_lines=0, single_line=True).cut("return x") == ("return x", None)
    assert StopRule(max_lines=0).cut("a = 1\nb = 2\n") == ("a = 1", "stop")
