"""Plain functions of the server: context windows, modes, post-processing, anchors, typed-through
cache, options. No model needed."""

from __future__ import annotations

from codestral_ls.engine.request import StopRule
from codestral_ls.server.anchor import Anchors
from codestral_ls.server.context import build_context, cursor_mode
from codestral_ls.server.fit import misfit
from codestral_ls.server.options import Options, parse_options
from codestral_ls.server.postprocess import FILTERS, Surroundings, postprocess
from codestral_ls.server.typed_cache import Shown, TypedThroughCache


def count(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


PY = ("import os\n\n\ndef load(path):\n    with open(path) as f:\n        return f.read()\n\n\n"
      "def main():\n    data = \n    print(data)\n")


def test_context_windows_and_mode():
    off = PY.index("data = ") + len("data = ")
    ctx = build_context(PY, off, "python", count, prefix_tokens=512, suffix_tokens=64)
    assert PY[:off].endswith(ctx.prefix) and ctx.prefix.startswith("import os")
    assert PY[off:].startswith(ctx.suffix) and "print(data)" in ctx.suffix
    assert ctx.mode == "single"


def test_prefix_window_starts_at_a_top_level_boundary_and_stays_put_while_typing():
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n\n" for i in range(60))
    text = body + "def g(y):\n    total = 0\n    "
    starts = set()
    for extra in ("", "t", "to", "tot", "total"):
        t = text + extra
        ctx = build_context(t, len(t), "python", count, prefix_tokens=200, suffix_tokens=32)
        assert count(ctx.prefix) <= 200
        assert ctx.prefix.startswith("def f")  # a top-level definition starts the window
        starts.add(ctx.prefix_start)
    assert len(starts) == 1


def test_huge_line_is_windowed_not_swallowed():
    text = "x = '" + "a" * 100_000 + "'\ny = "
    ctx = build_context(text, len(text), "python", count, prefix_tokens=256, suffix_tokens=32)
    assert len(ctx.prefix) < 5000


def test_modes_from_the_cursor_place():
    def mode(text: str, marker: str = "|") -> str:
        off = text.index(marker)
        return cursor_mode(text.replace(marker, ""), off, "python")[0]

    assert mode("def f(x):\n    |\n") == "multi"  # empty line in a body
    assert mode("def f(x):|\n") == "multi"  # after a block opener
    assert mode("x = foo(|)\n") == "single"  # inside an argument list
    assert mode("x = fo|o\n") == "none"  # mid-word
    assert mode("s = 'hello |'\n") == "single"  # in a string
    assert mode("function f() {|\n", "|") in ("multi", "single")


def surround(line_before: str, line_after: str = "", suffix: str = "", single: bool = True,
             prev: tuple[str, ...] = ()) -> Surroundings:
    return Surroundings(line_before, line_after, suffix or line_after, prev, single)


def test_postprocess_cuts_overlap_and_balances_brackets():
    assert postprocess("a + b)", surround("    print(add(", ")")) == "a + b"
    assert postprocess("x, y))\nfoo()", surround("f(g(")) == "x, y))"
    assert postprocess("x)]", surround("f(")) == "x)"
    assert postprocess("   \n", surround("x = ")) == ""


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
    s = Surroundings("    ", "", "\n    return total\n", ("def f(v):",), False)
    assert postprocess("total = sum(v)\n    return total", s) == "total = sum(v)"


def test_every_filter_can_be_switched_off():
    s = surround("    print(add(", ")")
    assert postprocess("a + b)", s, frozenset({"drop_suffix_overlap", "balance_brackets"})) == "a + b)"
    assert set(FILTERS) >= {"trim_to_line", "drop_suffix_overlap", "balance_brackets", "drop_repetition"}


def test_anchor_keeps_the_prompt_while_typing_and_moves_when_the_cursor_leaves():
    anchors = Anchors()
    text = "def f(a):\n    return \n\nprint(f(1))\n"
    off = text.index("return ") + 7

    def ctx(t, o):
        return lambda: build_context(t, o, "python", count, 256, 64)

    first = anchors.place("u", text, off, ctx(text, off))
    assert not first.anchored and first.forced_middle == ""
    typed = text[:off] + "a +" + text[off:]
    second = anchors.place("u", typed, off + 3, ctx(typed, off + 3))
    assert second.anchored and second.forced_middle == "a +" and second.ctx == first.ctx
    moved = anchors.place("u", typed, 3, ctx(typed, 3))
    assert not moved.anchored
    edited_below = typed.replace("print(f(1))", "print(f(2))")
    again = anchors.place("u", edited_below, 3, ctx(edited_below, 3))
    assert not again.anchored  # text after the cursor changed: a fresh prompt


def test_typed_through_cache():
    cache = TypedThroughCache(4)
    cache.remember(Shown("u", 3, "    return ", "", "a + b"))
    assert cache.lookup("u", 3, "    return a", "") == " + b"
    assert cache.lookup("u", 3, "    return a +", "") == " b"
    assert cache.lookup("u", 3, "    return x", "") is None
    assert cache.lookup("u", 4, "    return a", "") is None
    for i in range(10):
        cache.remember(Shown("u", 10 + i, "", "", "zz"))
    assert cache.lookup("u", 3, "    return a", "") is None  # evicted (LRU, 4 entries)


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
        off = text.index("|")
        return cursor_mode(text.replace("|", ""), off, "python")[0]

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
    body = "    x = f()\n    return x\n"
    # The next line already says it.
    assert misfit("x = f()", "    ", "", "\n" + body, "python") == "repeats the next line"
    # A return with more statements of its block below it.
    assert misfit("return None", "    ", "", "\n" + body, "python") == "unreachable code follows it"
    assert misfit("return None", "        ", "", "\n    else:\n        pass\n", "python") is None
    # The next line is deeper: Python needs a block header here.
    deeper = "\n        total += v\n    return total\n"
    assert "opens no block" in misfit("total = 0", "    ", "", deeper, "python")
    assert misfit("for v in values:", "    ", "", deeper, "python") is None
    # A block header with nothing indented under it.
    assert "not inside it" in misfit("if x:", "    ", "", "\n" + body, "python")
    assert misfit("d = {'a':", "    ", "", "\n" + body, "python") is None
    assert misfit("for v in values:  # each", "    ", "", deeper, "python") is None
    assert misfit("total = sum(", "    ", "", deeper, "python") is None  # an open bracket continues
    assert misfit("total = 0", "    ", "", deeper, "javascript") is None  # braces, not indentation
    # Only whole lines are judged: mid-line text, or code after the cursor, is left alone.
    assert misfit("x = f()", "    y = ", "", "\n" + body, "python") is None
    assert misfit("x = f()", "    ", ")", ")\n" + body, "python") is None
    assert misfit("y = 2", "    ", "", "\n" + body, "python") is None


def test_a_comment_alone_does_not_end_a_single_line_suggestion():
    rule = StopRule(single_line=True, line_comment="#")
    assert rule.cut("# sort them\n    lst.sort()\n    return lst") == ("# sort them\n    lst.sort()", True)
    assert rule.cut("lst.sort()\n    return lst") == ("lst.sort()", True)
    assert StopRule(single_line=True).cut("# sort them\n    lst.sort()\n") == ("# sort them", True)
    s = Surroundings("    ", "", "\n", (), single_line=True, line_comment="#")
    assert postprocess("# sort them\n    lst.sort()\n    x", s) == "# sort them\n    lst.sort()"
