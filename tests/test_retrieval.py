"""Context from other files (server/retrieval/): ranking, import-following under the workspace
root only, never a secret or a disabled language, a prompt whose extra part stays token-identical
while the user types (and the engine reuses its cache), and distinct finished candidates.

Pure functions on real files in a temporary workspace; the embedded model only for the cache and
candidate tests (loaded once per session)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from codestral_ls.engine.models.fim import FimEncoder, detect_profile
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import Completer, Document
from codestral_ls.server.retrieval import Retriever, Workspace, chunk_spans, identifiers, jaccard, parse_file

ALL = ("chunks", "definitions", "edits")

GEOMETRY = '''"""Shapes."""

import math


def circle_area(radius: float) -> float:
    """Area of a circle."""
    return math.pi * radius ** 2


def unrelated_logging_setup(level):
    logger = make_logger(level)
    logger.propagate = False
    return logger


class Rectangle:
    """An axis-aligned rectangle."""

    width: float
    height: float

    def scaled_rectangle_area(self, factor: float) -> float:
        return self.width * self.height * factor * factor
'''

USES = '''from .geometry import Rectangle, circle_area


def total(shapes):
    room = Rectangle()
    return room.scaled_rectangle_area(2.0) + circle_area(1.0)
'''


def doc(path: Path | str, text: str, language: str = "python") -> Document:
    uri = path.as_uri() if isinstance(path, Path) else path
    return Document(uri, text, language)


def select(r: Retriever, current: Document, others: list[Document], sources=ALL, budget: int = 384,
           offset: int | None = None, **kw) -> tuple[tuple[str, str], ...]:
    off = len(current.text) if offset is None else offset
    return r.select(current.uri, current.text, off, "python", others, sources, budget, **kw)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "geometry.py").write_text(GEOMETRY)
    (root / "pkg" / "uses.py").write_text(USES)
    return root


def test_jaccard_and_identifiers():
    assert identifiers("def f(room, x): return room.width") == {"room", "width"}
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard(set(), {"a"}) == 0.0


def test_chunks_are_cut_on_top_level_nodes_and_bounded():
    parsed = parse_file(GEOMETRY * 3, "python")
    spans = chunk_spans(parsed)
    assert spans[0][0] == 0 and all(b - a < 24 for a, b in spans)
    tops = {first for first, _ in parsed.tops}
    assert all(a in tops or a == 0 for a, _ in spans), "a chunk starts on a top-level node"


def test_ranking_picks_the_chunk_with_the_needed_definition(tmp_path):
    head, rectangle = GEOMETRY.split("class Rectangle")
    filler = "".join(f"def filler_{i}(value):\n    return value + {i}\n\n\n" for i in range(12))
    other = doc(tmp_path / "geometry.py", head + filler + "class Rectangle" + rectangle)
    current = doc(tmp_path / "main.py", "def measure(box):\n    return box.scaled_rectangle_area(factor) * box.width\n")
    # A budget for one chunk: the chunk holding Rectangle wins over the file's head (what the
    # server sent before) and over the filler.
    out = select(Retriever(), current, [other], sources=("chunks",), budget=150)
    assert len(out) == 1 and "class Rectangle" in out[0][1], out
    assert "circle_area" not in out[0][1] and "filler_3" not in out[0][1], out
    # Nothing in common with the code around the cursor: the file's top is what fills the budget.
    out = select(Retriever(), doc(tmp_path / "x.py", "zzz = qqq\n"), [other], sources=("chunks",), budget=150)
    assert len(out) == 1 and "circle_area" in out[0][1] and "class Rectangle" not in out[0][1], out


def test_import_following_finds_a_sibling_definition_on_disk(project):
    r = Retriever()
    r.workspace = Workspace.of([project.as_uri()])
    current = doc(project / "pkg" / "main.py", "from .geometry import Rectangle\n\n\ndef f(room):\n    return room.")
    out = select(r, current, [], sources=("definitions",))
    assert [p for p, _ in out] == ["pkg/geometry.py"], out
    text = out[0][1]
    assert "class Rectangle:" in text and "width: float" in text and "def scaled_rectangle_area(self" in text
    assert "return self.width" not in text, "bodies are elided: signatures, docstrings and fields only"
    assert "circle_area" not in text, "only the names the file imports"
    # Absolute imports resolve from the package's parent folder too (a root at the package itself).
    r2 = Retriever()
    r2.workspace = Workspace.of([(project / "pkg").as_uri()])
    absolute = doc(project / "pkg" / "main.py", "from pkg.geometry import circle_area\n\nx = circle_area(")
    assert "def circle_area(radius: float) -> float:" in select(r2, absolute, [], sources=("definitions",))[0][1]


def test_import_following_never_reads_outside_the_workspace(project, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.py").write_text("def leaked_secret_function():\n    pass\n")
    (project / "pkg" / "link.py").symlink_to(outside / "leak.py")
    r = Retriever()
    r.workspace = Workspace.of([(project / "pkg").as_uri()])
    for source in ("from ..outside.leak import leaked_secret_function\nleaked_secret_function(",
                   "from .link import leaked_secret_function\nleaked_secret_function(",
                   "from ...outside.leak import leaked_secret_function\nleaked_secret_function("):
        out = select(r, doc(project / "pkg" / "main.py", source), [], sources=("definitions",))
        assert "leaked_secret_function" not in str(out), (source, out)
    # The control: the same import inside the workspace is followed.
    r.workspace = Workspace.of([tmp_path.as_uri()])
    source = "from .link import leaked_secret_function\nleaked_secret_function("
    out = select(r, doc(project / "pkg" / "main.py", source), [], sources=("definitions",))
    assert "leaked_secret_function" in str(out)


def test_secrets_and_disabled_languages_are_never_context(project):
    (project / "pkg" / "secrets.py").write_text("API_TOKEN = 'sk-live-123'\ndef token_for(user):\n    pass\n")
    r = Retriever()
    r.workspace = Workspace.of([project.as_uri()])
    current = doc(project / "pkg" / "main.py", "from .secrets import token_for, API_TOKEN\n\nx = token_for(API_TOKEN")
    env = doc(project / ".env", "API_TOKEN=sk-live-123\n", "dotenv")
    js = doc(project / "web.js", "const API_TOKEN = token_for('sk-live-123');\n", "javascript")
    patterns = Options().secret_files
    out = select(r, current, [env, js], secret_files=patterns, disabled_languages=("javascript",))
    assert "sk-live" not in str(out) and "token_for(user)" not in str(out), out
    # The control: without the lists each of them would be sent.
    r0 = Retriever()
    r0.workspace = r.workspace
    out = select(r0, current, [env, js])
    assert "sk-live" in str(out)
    r2 = Retriever()
    r2.workspace = r.workspace
    assert "def token_for(user)" in str(select(r2, current, [], sources=("definitions",)))


def test_recent_edits_in_other_files_are_context(tmp_path):
    r = Retriever()
    other = doc(tmp_path / "a.py", "\n".join(f"line_{i} = {i}" for i in range(50)))
    r.edits.edited(other.uri, 30)
    out = select(r, doc(tmp_path / "b.py", "x = 1\n"), [other], sources=("edits",))
    assert out and "line_30 = 30" in out[0][1] and "line_10" not in out[0][1]


def test_selection_changes_in_coarse_steps(project):
    r = Retriever()
    r.workspace = Workspace.of([project.as_uri()])
    geometry = doc(project / "pkg" / "geometry.py", GEOMETRY)
    notes = doc(project / "pkg" / "notes.py", "def scaled_twice(room):\n    return room.scaled_rectangle_area(2)\n")
    head = "from .geometry import Rectangle\n\n\ndef total(room):\n    return room."
    first = select(r, doc(project / "pkg" / "main.py", head), [geometry, notes])
    assert first
    # Typing in the block: the very same selection (identical objects: nothing recomputed).
    for typed in ("s", "sc", "scaled_rectangle_area(", "scaled_rectangle_area(2)\n    x = circle"):
        assert select(r, doc(project / "pkg" / "main.py", head + typed), [geometry, notes]) is first
    # An edit in another file: that file moves last, the files before it keep their text and order.
    edited = doc(notes.uri, notes.text + "\n\ndef scaled_thrice(room):\n    return room.scaled_rectangle_area(3)\n")
    r.edits.edited(edited.uri, 3)
    after = select(r, doc(project / "pkg" / "main.py", head), [geometry, edited])
    assert after is not first and after[-1][0] == "pkg/notes.py"
    assert after[:-1] == tuple(f for f in first if f[0] != "pkg/notes.py")


@pytest.fixture(scope="module")
def qwen_tok():
    from codestral_ls.engine.models.gguf_tokenizer import tokenizer_dir
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir())  # the GGUF's own, as the server uses


def test_qwen_repo_layout_with_paths(qwen_tok):
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    v = qwen_tok.get_vocab()
    extra = (("pkg/geometry.py", "def circle_area(r): ...\n"),)
    p = enc.build("x = ", "\n", extra_files=extra, heal=False, path="pkg/main.py", repo="proj")
    expected = [v["<|repo_name|>"], *enc.encode_text("proj\n"), v["<|file_sep|>"],
                *enc.encode_text("pkg/geometry.py\ndef circle_area(r): ...\n"), v["<|file_sep|>"],
                *enc.encode_text("pkg/main.py\n"), v["<|fim_prefix|>"]]
    assert p.ids[:len(expected)] == expected
    # The model card's string, tokenized whole, is the same prompt.
    card = ("<|repo_name|>proj\n<|file_sep|>pkg/geometry.py\ndef circle_area(r): ...\n<|file_sep|>pkg/main.py\n"
            "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>")
    assert p.ids == qwen_tok.encode(card)


def test_codestral_gets_extra_context_before_the_fim_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = FimEncoder(tok, detect_profile(tok))
    plain = enc.build("x = ", "\n", heal=False)
    with_extra = enc.build("x = ", "\n", extra_files=(("a.py", "y = 1\n"),), heal=False, path="b.py")
    suffix_at = with_extra.ids.index(tok.get_vocab()["[SUFFIX]"])
    assert with_extra.ids[0] == tok.bos_token_id and with_extra.ids[suffix_at:] == plain.ids[1:]
    assert "a.py" in tok.decode(with_extra.ids[1:suffix_at]) and "y = 1" in tok.decode(with_extra.ids[1:suffix_at])


# -- on the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker(qwen_engine):
    from codestral_ls.engine.serving.worker import EngineWorker

    w = EngineWorker(lambda: qwen_engine).start()
    w.loaded.wait(600)
    yield w
    w.stop()


@pytest.mark.model
def test_context_from_other_files_is_sized_to_the_device(project, worker):
    """With default options a device whose cold prompt is already at the window floor (this CPU) sends
    no other file: it would cost seconds at every new site. A faster device gets them, for a model
    that can use them; the embedded 0.5B cannot (engine/models/catalog.py: measured, no gain), so it gets
    none on any device."""
    from codestral_ls.server.cursor import read_cursor

    c = Completer(worker, Options())
    c.workspace = Workspace.of([project.as_uri()])
    others = [doc(project / "pkg" / "geometry.py", GEOMETRY)]
    text = USES + "\n\ndef area_of(room):\n    return room."
    main = project / "pkg" / "main.py"
    loaded = worker.engine.loaded
    assert loaded.packaged == "qwen2.5-coder-0.5b" and loaded.extra_context_tokens == 0

    def extra() -> tuple:
        return c.request(doc(main, text), read_cursor(text, len(text), "python"), others).extra_files

    c.speed.device = "cpu"
    c.speed.observe(SimpleNamespace(prefilled_tokens=400, prefill_ms=4400.0))  # ~90 tok/s, this machine
    assert extra() == ()
    c.speed.device = "cuda"
    c.speed.observe(SimpleNamespace(prefilled_tokens=5000, prefill_ms=100.0))  # thousands of tokens a second
    assert extra() == ()  # the 0.5B: none, whatever the device
    loaded.extra_context_tokens = None  # a model with no measured default: the device rule
    try:
        c.anchors.forget(doc(main, text).uri)  # a new device: the windows are sized again
        assert extra()
    finally:
        loaded.extra_context_tokens = 0


def test_two_keystrokes_share_the_extra_part_and_the_cache(project, qwen_engine, worker):
    c = Completer(worker, Options(budget_ms=0, extra_context_tokens=384))
    c.workspace = Workspace.of([project.as_uri()])
    others = [doc(project / "pkg" / "geometry.py", GEOMETRY)]
    base = USES + "\n\ndef area_of(room):\n    return room."
    main = project / "pkg" / "main.py"

    reqs = []
    for text in (base, base + "s"):
        from codestral_ls.server.cursor import read_cursor

        reqs.append(c.request(doc(main, text), read_cursor(text, len(text), "python"), others))
    assert reqs[0].extra_files and reqs[0].extra_files == reqs[1].extra_files
    enc = qwen_engine.encoder
    parts = [enc.extra_context(r.extra_files, r.path, r.repo) for r in reqs]
    assert parts[0] == parts[1] and len(parts[0]) > 20
    ids = [enc.build(r.prefix, r.suffix, r.forced_middle, r.extra_files, path=r.path, repo=r.repo).ids for r in reqs]
    assert ids[0][:len(parts[0])] == ids[1][:len(parts[1])] == parts[0], "the extra part starts both prompts"
    first = asyncio.run(c.ask(reqs[0]))
    second = asyncio.run(c.ask(reqs[1]))
    assert first.prefilled_tokens >= len(parts[0])
    assert second.reused_tokens >= len(parts[0]) and second.prefilled_tokens < first.prefilled_tokens, second


@pytest.mark.model
def test_candidates_are_distinct_and_each_finished(worker):
    c = Completer(worker, Options(candidates=3, budget_ms=0, multiline="never"))
    text = "def mean(values):\n    total = "
    s = asyncio.run(c.complete(Document("file:///w/mean.py", text, "python"), len(text)))
    assert s is not None and 1 <= len(s.alternatives) <= 2, s
    texts = [s.text, *(a.text for a in s.alternatives)]
    assert len({t.strip() for t in texts}) == len(texts), texts
    for t in texts:
        assert t.strip() and "\n" not in t, texts
        compile(text + t + "\n    return total\n", "mean.py", "exec")
    assert len({s.id, *(a.id for a in s.alternatives)}) == len(texts)


@pytest.mark.model
def test_one_candidate_by_default(worker):
    c = Completer(worker, Options(budget_ms=0))
    text = "def mean(values):\n    total = "
    s = asyncio.run(c.complete(Document("file:///w/mean1.py", text, "python"), len(text)))
    assert s is not None and s.alternatives == []


def test_path_and_repo_cross_the_daemon_wire():
    from codestral_ls.engine.serving.wire import request_from_wire, to_wire

    r = FimRequest(doc="d", prefix="", suffix="", extra_files=(("a.py", "x"),), path="a/b.py", repo="proj",
                   stop=StopRule())
    back = request_from_wire(to_wire(r))
    assert (back.path, back.repo, back.extra_files) == ("a/b.py", "proj", (("a.py", "x"),))


def test_an_import_not_used_yet_comes_first(project):
    """The code being written is about to use what was imported and not used so far."""
    text = ("from .geometry import Rectangle, circle_area\n\n\ndef first(r):\n    return Rectangle()\n\n\n"
            "def second(radius):\n    ")
    main = project / "pkg" / "main.py"
    # A budget for one of the two definitions: the one not used yet wins over import order.
    for code, wanted, other in ((text, "def circle_area", "class Rectangle"),
                                (text.replace("return Rectangle()", "return circle_area(r)"), "class Rectangle",
                                 "def circle_area")):
        r = Retriever()
        r.workspace = Workspace.of([project.as_uri()])
        out = select(r, doc(main, code), [], sources=("definitions",), budget=60)
        assert len(out) == 1 and wanted in out[0][1] and other not in out[0][1], (wanted, out)


def test_crossfile_benchmark_sites_of_each_kind(tmp_path):
    import sys

    root_dir = str(Path(__file__).resolve().parent.parent)
    if root_dir not in sys.path:
        sys.path.insert(0, root_dir)
    from benchmarks.crossfile import blanked, edit_similarity
    from benchmarks.crossfile_sites import find_sites

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("from .geometry import circle_area\n")
    (repo / "pkg" / "geometry.py").write_text(GEOMETRY.replace("class Rectangle:", "@dataclass\nclass Rectangle:"))
    (repo / "pkg" / "uses.py").write_text(USES + "\n\ndef later(box: Rectangle):\n    side = box.width\n"
                                          "    return circle_area(2.0) + side\n\n\ndef other(box: Rectangle):\n"
                                          "    return box.scaled_rectangle_area(3.0)\n")
    sites = find_sites("pkg", repo)
    assert [(s.a, s.b, s.name, s.original) for s in sites["import"]] == [
        ("pkg/uses.py", "pkg/geometry.py", "Rectangle", "room = Rectangle()"),
        ("pkg/uses.py", "pkg/geometry.py", "circle_area",
         "return room.scaled_rectangle_area(2.0) + circle_area(1.0)")]
    assert [(s.name, s.expected) for s in sites["call"]] == [("circle_area", "2.0) + side")]
    assert [(s.name, s.expected) for s in sites["field"]] == [("Rectangle.width", "width")]
    assert [(s.name, s.expected) for s in sites["method"]] == [("Rectangle.scaled_rectangle_area",
                                                               "scaled_rectangle_area(3.0)")]
    lines = blanked(repo, sites["import"][0]).split("\n")
    assert lines[sites["import"][0].line] == "    " and "Rectangle()" not in lines[sites["import"][0].line]
    assert blanked(repo, sites["method"][0]).split("\n")[sites["method"][0].line] == "    return box."
    assert edit_similarity("abc", "abc") == 1.0 and edit_similarity("abc", "abd") == pytest.approx(2 / 3)


def test_a_huge_open_file_is_chunked_without_a_parse(tmp_path):
    from codestral_ls.server.retrieval import outline as retrieval

    huge = "".join(f"def helper_{i}(value):\n    return value + {i}\n\n" for i in range(12_000))
    assert len(huge) > retrieval.MAX_FILE_BYTES
    parsed = parse_file(huge, "python")
    assert parsed.tops == [] and parsed.defs == {}
    assert all(b - a == retrieval.CHUNK_LINES - 1 for a, b in chunk_spans(parsed)[:-1])
    out = select(Retriever(), doc(tmp_path / "b.py", "x = helper_11999(3)\n"), [doc(tmp_path / "h.py", huge)],
                 sources=("chunks",), budget=150)
    assert "def helper_11999" in out[0][1]


def test_code_already_in_the_current_file_is_not_sent_again(tmp_path):
    # The same text open twice (a copy, a split view, a scratch buffer): its chunk told the model the
    # line was already written, and it answered '0' or 'a' instead of 'a + b' (the editor tests saw it).
    text = "def add(a, b):\n    return "
    copy = doc(tmp_path / "copy.py", text + "\n")
    assert select(Retriever(), doc(tmp_path / "main.py", text), [copy], sources=("chunks",)) == ()
    # A chunk that differs is still sent.
    other = doc(tmp_path / "other.py", "def sub(a, b):\n    return a - b\n")
    out = select(Retriever(), doc(tmp_path / "main.py", text), [other], sources=("chunks",))
    assert out and "def sub" in out[0][1]


BIG_CLASS = '''class Session:
    """A long-lived session.

''' + "".join(f"    Detail line {i} of a long docstring.\n" for i in range(30)) + '''    """

    name: str
''' + "".join(f"\n    def helper_{i}(self, value: int) -> int:\n        \"\"\"Helper {i}.\"\"\"\n        return value\n"
              for i in range(12)) + '''
    def refresh_token(self, force: bool = False) -> str:
        """Refresh the token."""
        return self.name
'''


def test_symbols_stub_the_class_the_cursor_types_a_member_of(tmp_path):
    # The definitions source renders a class with its docstrings and cuts it after 40 lines: the
    # member at its end is not in the prompt. The symbols source gives every member's signature.
    root = tmp_path / "proj"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "session.py").write_text(BIG_CLASS)
    (root / "pkg" / "geometry.py").write_text(GEOMETRY)
    code = ("from .geometry import circle_area\nfrom .session import Session\n\n\n"
            "def renew(current: Session):\n    return current.")
    current = doc(root / "pkg" / "main.py", code)

    def fresh() -> Retriever:
        r = Retriever()
        r.workspace = Workspace.of([root.as_uri()])
        return r

    defs = select(fresh(), current, [], sources=("definitions",), budget=384)
    assert "class Session" in "".join(t for _, t in defs) and "refresh_token" not in "".join(t for _, t in defs)
    # A budget for one stub: the class of the receiver at the cursor, not the unused import.
    r = fresh()
    out = select(r, current, [], sources=("symbols",), budget=200)
    assert len(out) == 1 and out[0][0] == "pkg/session.py", out
    assert "def refresh_token(self, force: bool = False) -> str: ..." in out[0][1]
    assert "Detail line" not in out[0][1] and "circle_area" not in out[0][1]
    # Typing the member changes nothing in the extra part (the prompt's cached head).
    typed = doc(current.uri, code + "ref")
    assert select(r, typed, [], sources=("symbols",), budget=200) == out


def test_symbols_come_last_nearest_the_current_file(project):
    r = Retriever()
    r.workspace = Workspace.of([project.as_uri()])
    code = "from .geometry import Rectangle\n\n\ndef total(box: Rectangle, shapes):\n    return box."
    notes = doc(project / "pkg" / "zz_notes.py", "def total_of(shapes):\n    return sum(shapes)\n")
    out = select(r, doc(project / "pkg" / "main.py", code), [notes], sources=("symbols", "chunks"), budget=384)
    assert [p for p, _ in out] == ["pkg/zz_notes.py", "pkg/geometry.py"], out
    assert out[-1][1] == ("class Rectangle:\n    width: float\n    height: float\n"
                          "    def scaled_rectangle_area(self, factor: float) -> float: ...\n")
