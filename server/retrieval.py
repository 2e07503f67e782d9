"""What the cursor needs from the rest of the project: snippets of other files, within a budget.

Three sources, each switchable (`retrieval` option, server/options.py):

- ``chunks``: other open documents cut into chunks of about `CHUNK_LINES` lines on top-level
  syntax boundaries (llama.vim's ring of chunks), ranked by the Jaccard similarity of their
  identifier sets with the lines around the cursor (Continue's snippet ranking);
- ``definitions``: the signature, docstring and fields of names the current file imports from the
  workspace (Python, JS/TS, Go, Rust, Java, C/C++ imports read with tree-sitter queries), names
  imported but not used yet above the cursor first (the code being written is about to use them),
  then those used near it; read from the open document, else from disk under a workspace root;
- ``edits``: the lines the user edited most recently in other files.

Rules it keeps:
- Never context: a file `privacy.shareable` refuses (credentials, disabled languages), whether
  it is open or read from disk; never a file outside the workspace roots (symlinks resolved), nor
  one over `MAX_FILE_BYTES`, nor more than `MAX_FILES` files read per selection.
- Coarse steps: the selection is recomputed only when the cursor enters another top-level block
  of its file, the text above that block changes, or another document changes; the query (the
  identifiers around the cursor) is taken when the cursor enters the block. Otherwise the last
  selection is returned as is, so typing never changes the prompt's extra part (its KV cache).
  Files are ordered by when they were last edited (files never edited first, by path), snippets
  in a file by line: an edit elsewhere moves that file last and leaves the files before it alone.
- Cheap: an unchanged selection costs a hash of the text above the block and of the other
  documents; a recomputation parses only files not seen at that version (never one over
  `MAX_FILE_BYTES`: fixed line-step chunks instead), and remembers where imports lead
  (`RESOLVE_TTL_S`) and a closed file's size and time (`STAT_TTL_S`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from codestral_ls.server.cursor import _parser, language_for
from codestral_ls.server.privacy import shareable

log = logging.getLogger(__name__)

SOURCES = ("chunks", "definitions", "edits")
CHUNK_LINES = 24  # a chunk holds top-level nodes up to this many lines; a longer node is cut in steps of it
QUERY_ABOVE, QUERY_BELOW = 30, 10  # lines around the cursor whose identifiers rank the chunks
MAX_FILE_BYTES = 256_000  # a file read from disk for its definitions is at most this big
MAX_FILES = 24  # files read from disk per selection
RESOLVE_TTL_S = 30.0  # an import's file is looked up again after this long
STAT_TTL_S = 2.0  # ... and a closed file's time and size read again after this long
USED_ABOVE_CHARS = 64_000  # the code above the cursor read for the names it uses already
HEAD_CHARS = 64_000  # the current file's imports are read from at most this much text above the cursor
DOC_LINES = 6  # a docstring is cut after this many lines
MAX_DEF_LINES = 40  # a rendered definition is cut after this many lines
MIN_CUT_CHARS = 300  # a definition bigger than the budget left is cut to it when this much is left
EDIT_CONTEXT = 2  # lines around an edited line that go with it
EDITS_KEPT = 16  # edited places remembered (other files)
CHARS_PER_TOKEN = 3.2  # budget estimate: counting tokens exactly costs more than it saves
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = frozenset(
    "and as assert async await break case catch class const continue def del do elif else enum except export "
    "extends false final finally fn for from func function go if impl import in interface is lambda let match "
    "mod mut new nil none not null or package pass pub raise return self static struct super switch this throw "
    "true try type use var void while with yield int str bool float char long".split())

NEAR_CHARS = 40_000  # before the cursor (a quarter of it after): text a snippet may already be part of


@dataclass(frozen=True)
class Snippet:
    path: str  # as shown to the model: relative to the workspace root, else the file name
    line: int  # 0-based first line in its file
    text: str
    source: str  # one of SOURCES
    order: float = 0.0  # when its file was last edited (0: never): files are laid out by it


class OtherDoc(Protocol):
    """An open document (pipeline.Document is one)."""

    uri: str
    text: str
    language_id: str


def identifiers(text: str) -> set[str]:
    """Identifier set of `text` (keywords and one-letter names left out): what similarity compares."""
    return {w for w in IDENT.findall(text) if len(w) > 1 and w.lower() not in KEYWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b) if len(a) < len(b) else len(b & a)
    return common / (len(a) + len(b) - common)


# -- syntax helpers -------------------------------------------------------------------------------


@dataclass
class Parsed:
    """One file parsed: its top-level nodes' line spans and its definitions by name."""

    language: str
    lines: list[str]
    tops: list[tuple[int, int]]  # (first line, last line) of each top-level node
    defs: dict[str, tuple[int, str]] = field(default_factory=dict)  # name → (line, rendered text)
    imports: list[Import] = field(default_factory=list)
    _chunks: list[tuple[int, str, set[str]]] | None = None
    _code_ids: set[str] | None = None

    def chunks(self) -> list[tuple[int, str, set[str]]]:
        """(first line, text, identifier set) of each chunk, computed once per file version."""
        if self._chunks is None:
            self._chunks = []
            for first, last in chunk_spans(self):
                body = "\n".join(self.lines[first:last + 1])
                if body.strip():
                    self._chunks.append((first, body, identifiers(body)))
        return self._chunks


@dataclass(frozen=True)
class Import:
    module: str  # as written: "pkg.mod", ".sibling", "./x", "crate::a::b", "a/b.h"
    names: tuple[str, ...]  # names imported from it ("" for the module itself)
    alias: str = ""  # the local name of the module (import x as m, import * as m)


# Imports per grammar (tree-sitter queries): @module is the module, @name a name taken from it,
# @alias the module's local name.
IMPORT_QUERIES = {
    "python": """
        (import_statement name: (dotted_name) @module)
        (import_statement name: (aliased_import name: (dotted_name) @module alias: (identifier) @alias))
        (import_from_statement module_name: (_) @module name: (dotted_name) @name)
        (import_from_statement module_name: (_) @module name: (aliased_import name: (dotted_name) @name))
        (import_from_statement module_name: (_) @module (wildcard_import))
    """,
    "javascript": """
        (import_statement
          (import_clause (named_imports (import_specifier name: (identifier) @name))) source: (string) @module)
        (import_statement (import_clause (identifier) @alias) source: (string) @module)
        (import_statement (import_clause (namespace_import (identifier) @alias)) source: (string) @module)
    """,
    "go": """(import_spec path: (interpreted_string_literal) @module)""",
    "rust": """(use_declaration argument: (_) @module)""",
    "java": """(import_declaration (scoped_identifier) @module)""",
    "c": """(preproc_include path: (string_literal) @module)""",
}
IMPORT_QUERIES |= {"javascriptreact": IMPORT_QUERIES["javascript"], "typescript": IMPORT_QUERIES["javascript"],
                   "typescriptreact": IMPORT_QUERIES["javascript"], "cpp": IMPORT_QUERIES["c"]}

# Top-level definitions: node types whose `name` field names them; wrappers are looked through.
WRAPPERS = {"decorated_definition": "definition", "export_statement": "declaration"}
CONTAINERS = ("class", "interface", "struct", "trait", "impl", "enum", "object_type", "record")


@functools.cache
def _query(language: str) -> Any:
    import tree_sitter

    parser = _parser(language)
    source = IMPORT_QUERIES.get(language)
    if parser is None or source is None:
        return None
    try:
        return tree_sitter.Query(parser.language, source)
    except Exception as exc:  # a grammar version without one of the node types: no imports there
        log.warning("import query for %s: %s", language, exc)
        return None


def parse_file(text: str, language: str) -> Parsed:
    """Top-level spans, definitions and imports of a file; a file over `MAX_FILE_BYTES` characters is
    not parsed (its chunks are fixed line steps): a request never waits on a huge parse."""
    lines = text.split("\n")
    parser = _parser(language)
    if parser is None or len(text) > MAX_FILE_BYTES:
        return Parsed(language, lines, [])
    data = text.encode("utf-8", "surrogatepass")
    try:
        tree = parser.parse(data)
    except Exception as exc:
        log.warning("tree-sitter parse failed: %s", exc)
        return Parsed(language, lines, [])
    root = tree.root_node
    parsed = Parsed(language, lines, [(c.start_point[0], c.end_point[0]) for c in root.children])
    for child in root.children:
        if any(k in child.type for k in ("import", "include", "use_declaration", "package")):
            continue  # an import names what it takes, it defines nothing
        for name, node in _named(child, data):
            if not name:
                continue
            rendered = _render(node, data, language)
            if name in parsed.defs:  # Rust's struct then its impl, a C prototype then its body: both
                line, before = parsed.defs[name]
                rendered = _cap(before + "\n" + rendered) if rendered not in before else before
                parsed.defs[name] = (line, rendered)
            else:
                parsed.defs[name] = (node.start_point[0], rendered)
    parsed.imports = _imports(root, data, language)
    return parsed


def _text(node: Any, data: bytes) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _named(node: Any, data: bytes) -> Iterable[tuple[str, Any]]:
    """(name, node) of the definitions a top-level node makes (the node rendered for each)."""
    inner = node.child_by_field_name(WRAPPERS[node.type]) if node.type in WRAPPERS else None
    target = inner or node
    name = target.child_by_field_name("name")
    if name is not None:
        yield _text(name, data), node
        return
    if target.type in ("impl_item",):  # Rust: impl Type { ... } defines Type's methods
        typ = target.child_by_field_name("type")
        if typ is not None:
            yield _text(typ, data), node
        return
    declarator = target.child_by_field_name("declarator")
    while declarator is not None and declarator.type not in ("identifier", "field_identifier", "type_identifier"):
        declarator = declarator.child_by_field_name("declarator")
    if declarator is not None:  # C/C++ functions and prototypes
        yield _text(declarator, data), node
        return
    # Assignments and variable/type declarations: each named child that names something.
    for child in target.named_children:
        if child.type in ("assignment", "variable_declarator", "type_spec", "const_spec", "var_spec", "type_alias"):
            left = child.child_by_field_name("left") or child.child_by_field_name("name")
            if left is not None and left.type in ("identifier", "type_identifier", "field_identifier"):
                yield _text(left, data), node


def _render(node: Any, data: bytes, language: str, depth: int = 0, indent: str = "") -> str:
    """A definition as the model should read it: signature, docstring, fields; bodies elided."""
    target = node.child_by_field_name(WRAPPERS[node.type]) if node.type in WRAPPERS else None
    target = target or node
    body = target.child_by_field_name("body")
    if body is None or body.type in ("expression", "arrow_function"):
        return indent + _cap(_text(node, data))
    header = indent + data[node.start_byte:body.start_byte].decode("utf-8", "replace").rstrip()
    python = language == "python"
    members: list[str] = []
    doc = _docstring(body, data) if python else ""
    if doc and depth > 0 and "\n" in doc:  # a member's docstring: its summary line is enough
        first = doc.split("\n", 1)[0].rstrip()
        quote = first.lstrip("rbuRBU")[:3]
        doc = first if len(first.lstrip("rbuRBU")) > 6 and first.endswith(quote) else first + quote
    if doc and doc.count("\n") > DOC_LINES:  # the summary and the start of the details
        lines = doc.split("\n")
        quote = doc.lstrip("rbuRBU")[:3]
        doc = "\n".join(lines[:DOC_LINES] + [lines[-1][:len(lines[-1]) - len(lines[-1].lstrip())] + "..." + quote])
    if doc:
        members.append(" " * body.start_point[1] + doc)
    if any(k in target.type for k in CONTAINERS) and depth == 0:
        for child in body.named_children:
            if child.type in ("comment", "pass_statement") or (python and _docstring_node(child)):
                continue
            # A member on a line of its own keeps its indentation; one on the header's line gets one level.
            inner = " " * child.start_point[1] if child.start_point[0] > node.start_point[0] else indent + "    "
            members.append(_render(child, data, language, depth + 1, inner))
    elif python:
        members.append(" " * body.start_point[1] + "...")
    if python:
        return _cap("\n".join([header, *members]))
    if not members:
        return header + " { ... }"
    return _cap("\n".join([header + " {", *members, indent + "}"]))


def _docstring_node(node: Any) -> bool:
    return node.type == "expression_statement" and node.named_child_count == 1 and \
        node.named_children[0].type == "string"


def _docstring(body: Any, data: bytes) -> str:
    first = body.named_children[0] if body.named_child_count else None
    if first is not None and _docstring_node(first):
        return _text(first, data)
    return ""


def _cap(text: str) -> str:
    lines = text.split("\n")
    return "\n".join(lines[:MAX_DEF_LINES] + (["    ..."] if len(lines) > MAX_DEF_LINES else []))


def _imports(root: Any, data: bytes, language: str) -> list[Import]:
    query = _query(language)
    if query is None:
        return []
    import tree_sitter

    out: dict[str, Import] = {}
    for _, caps in tree_sitter.QueryCursor(query).matches(root):
        modules = caps.get("module", [])
        if not modules:
            continue
        module = _text(modules[0], data).strip("\"'<>")
        names = tuple(_text(n, data) for n in caps.get("name", []))
        alias = caps["alias"][0] if caps.get("alias") else None
        old = out.get(module, Import(module, ()))
        if not names and language in ("java", "rust"):  # `import a.b.C`, `use crate::a::{B, C}`: the names
            head, _, tail = module.partition("{")
            names = tuple(n.strip() for n in tail.strip("}").split(",") if n.strip()) if tail else \
                (re.split(r"\.|::", module)[-1],)
            module = head.rstrip(":") if tail else module
        out[module] = Import(module, old.names + names, _text(alias, data) if alias is not None else old.alias)
    if language == "python":  # `from pkg import module`: the name may be a module of its own
        for imp in list(out.values()):
            for name in imp.names:
                sub = imp.module + name if imp.module.endswith(".") else f"{imp.module}.{name}"
                out.setdefault(sub, Import(sub, (), name))
    return list(out.values())


# -- the workspace on disk --------------------------------------------------------------------------


def path_of(uri: str) -> Path | None:
    """The file system path of a file: URI (None for another scheme)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("file", ""):
        return None
    return Path(urllib.parse.unquote(parts.path))


def file_uri(path: Path) -> str:
    return path.as_uri()


@dataclass(frozen=True)
class Workspace:
    """The workspace roots: the only folders files are read from."""

    roots: tuple[Path, ...] = ()

    @classmethod
    def of(cls, uris: Iterable[str]) -> Workspace:
        roots = []
        for uri in uris:
            p = path_of(uri)
            if p is not None and p.is_absolute():
                try:
                    roots.append(p.resolve())
                except OSError:
                    continue
        return cls(tuple(dict.fromkeys(roots)))

    def root_of(self, path: Path) -> Path | None:
        """The root holding `path` once resolved (symlinks followed), or None: outside."""
        try:
            real = path.resolve()
        except OSError:
            return None
        return next((r for r in self.roots if real.is_relative_to(r)), None)

    def relative(self, uri: str) -> str:
        """The path the model sees: relative to its root, else the file name."""
        p = path_of(uri)
        if p is None:
            return uri.rsplit("/", 1)[-1]
        for r in self.roots:
            if p.is_relative_to(r):
                return p.relative_to(r).as_posix()
        try:  # a root given through a symlinked path
            real = p.resolve()
            r = next((r for r in self.roots if real.is_relative_to(r)), None)
            if r is not None:
                return real.relative_to(r).as_posix()
        except OSError:
            pass
        return p.name

    def name_of(self, uri: str) -> str:
        """The name of the root holding the file (the repository's name in Qwen's layout), else ""."""
        p = path_of(uri)
        return next((r.name for r in self.roots if p is not None and p.is_relative_to(r)), "")


# -- edits ---------------------------------------------------------------------------------------


class RecentEdits:
    """The places the user edited last: (uri, line), most recent last, at most `EDITS_KEPT`."""

    def __init__(self) -> None:
        self.places: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.last_edit: dict[str, float] = {}  # uri → when it was last edited (monotonic counter)
        self._clock = itertools.count(1)

    def edited(self, uri: str, line: int | None) -> None:
        tick = float(next(self._clock))
        self.last_edit[uri] = tick
        if line is None:
            return
        # Nearby lines are one place: typing along a line moves nothing.
        for (u, ln) in list(self.places):
            if u == uri and abs(ln - line) <= EDIT_CONTEXT:
                del self.places[(u, ln)]
        self.places[(uri, line)] = tick
        while len(self.places) > EDITS_KEPT:
            self.places.popitem(last=False)

    def forget(self, uri: str) -> None:
        for key in [k for k in self.places if k[0] == uri]:
            del self.places[key]
        self.last_edit.pop(uri, None)


# -- selection -----------------------------------------------------------------------------------


@dataclass
class _Block:
    """What the selection was made for, and the selection."""

    key: tuple[Any, ...]
    query: set[str]
    others: tuple[tuple[str, int], ...]
    snippets: tuple[tuple[str, str], ...]


class Retriever:
    """Selects the extra context of a request (see the module docstring for its rules)."""

    def __init__(self) -> None:
        self.workspace = Workspace()
        self.edits = RecentEdits()
        self._parsed: OrderedDict[tuple[str, int], Parsed] = OrderedDict()  # (uri or path, hash) → parse
        self._blocks: dict[str, _Block] = {}  # per current document
        self._where: dict[tuple[Any, ...], tuple[Any, float]] = {}  # (file, import, roots) → file, when
        self.last_ms = 0.0  # what the last selection cost (reported by the benchmark)

    def forget(self, uri: str) -> None:
        self._blocks.pop(uri, None)
        self.edits.forget(uri)

    def select(self, uri: str, text: str, offset: int, language: str, others: Sequence[OtherDoc],
               sources: Iterable[str], budget_tokens: int, secret_files: Iterable[str] = (),
               disabled_languages: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
        """The extra files of a request at `offset` of `text`: ((path, text), ...) in prompt order.

        `others` are the other open documents (already refused by `shareable` or not: checked
        here again). Returns the previous selection unchanged while its key holds.
        """
        t0 = time.perf_counter()
        sources = tuple(s for s in SOURCES if s in set(sources))
        secret_files, disabled = tuple(secret_files), tuple(disabled_languages)
        if not sources or budget_tokens <= 0:
            return ()
        others = [d for d in others if d.uri != uri and shareable(d.uri, d.language_id, secret_files, disabled)]
        block_start = _block_start(text, offset)
        state = tuple(sorted((d.uri, hash(d.text)) for d in others))
        edits = tuple((u, ln) for (u, ln) in self.edits.places if u != uri) if "edits" in sources else ()
        key = (block_start, hash(text[:block_start]), sources, budget_tokens, self.workspace.roots,
               secret_files, disabled)
        old = self._blocks.get(uri)
        if old is not None and old.key == key and old.others == (state, edits):
            self.last_ms = (time.perf_counter() - t0) * 1000
            return old.snippets
        # Entering a block: the query is the code around the cursor now; another file's edit: kept.
        query = old.query if old is not None and old.key == key else _query_ids(text, offset)
        snippets = self._select(uri, text, offset, language, others, sources, budget_tokens, query, secret_files,
                                disabled)
        self._blocks[uri] = _Block(key, query, (state, edits), snippets)
        self.last_ms = (time.perf_counter() - t0) * 1000
        return snippets

    # -- the three sources ------------------------------------------------------------------------

    def _select(self, uri: str, text: str, offset: int, language: str, others: Sequence[OtherDoc],
                sources: tuple[str, ...], budget_tokens: int, query: set[str], secret_files: tuple[str, ...],
                disabled: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        budget = int(budget_tokens * CHARS_PER_TOKEN)
        picked: list[Snippet] = []
        taken: dict[str, list[tuple[int, int]]] = {}  # path → line spans already in
        near = text[max(0, offset - NEAR_CHARS):offset + NEAR_CHARS // 4]  # what the prompt holds anyway

        def take(s: Snippet, limit: int) -> int:
            if s.text.strip() in near:
                # Already in the current file (a copy, the same file open twice): it adds nothing,
                # and an unfinished copy of the cursor's line made the model think it was written.
                return 0
            n = len(s.text) + len(s.path) + 2
            if n > limit and s.source == "definitions" and limit >= MIN_CUT_CHARS:
                # A big class: its head (signature, docstring, first fields and methods) still helps.
                head = s.text[:limit - len(s.path) - 10]
                s = dataclasses.replace(s, text=head[:head.rfind("\n") + 1] + "    ...\n")
                n = len(s.text) + len(s.path) + 2
            if n > limit:
                return 0
            span = (s.line, s.line + s.text.count("\n"))
            if any(a <= span[1] and span[0] <= b for a, b in taken.get(s.path, [])):
                return 0  # overlaps what another source already gave
            taken.setdefault(s.path, []).append(span)
            picked.append(s)
            return n

        left = budget
        # Definitions first (the names the code uses), edits next (small), chunks fill the rest.
        if "definitions" in sources:
            cap = left if len(sources) == 1 else int(budget * 0.6)
            for s in self._definitions(uri, text, offset, language, others, query, secret_files, disabled):
                cap -= (n := take(s, cap))
                left -= n
        if "edits" in sources:
            cap = min(left, int(budget * 0.2)) if "chunks" in sources else left
            for s in self._edits(others):
                cap -= (n := take(s, cap))
                left -= n
        if "chunks" in sources:
            for s in self._chunks(others, query):
                left -= take(s, left)
        # Stable layout: files by when they were last edited, then path; snippets by line.
        picked.sort(key=lambda s: (s.order, s.path, s.line))
        files: dict[str, list[str]] = {}
        for s in picked:
            files.setdefault(s.path, []).append(s.text.rstrip("\n"))
        return tuple((p, "\n...\n".join(parts) + "\n") for p, parts in files.items())

    def _candidates(self, module: str, here: Path, language: str) -> list[str]:
        """`resolve`'s candidates as normalized path strings, remembered for `RESOLVE_TTL_S`."""
        key = ("candidates", str(here), module, self.workspace.roots)
        now = time.monotonic()
        hit = self._where.get(key)
        if hit is None or now - hit[1] >= RESOLVE_TTL_S:
            hit = self._where[key] = ([os.path.normpath(p) for p in resolve(module, here, language, self.workspace)],
                                      now)
        return hit[0]

    def _on_disk(self, module: str, here: Path, language: str) -> Path | None:
        """The workspace file an import names, or None; remembered for `RESOLVE_TTL_S` (files come and
        go rarely, and resolving costs stats). Never a stat outside the workspace roots."""
        key = (str(here), module, self.workspace.roots)
        now = time.monotonic()
        hit = self._where.get(key)
        if hit is not None and now - hit[1] < RESOLVE_TTL_S:
            return hit[0]
        found = None
        for lexical in self._candidates(module, here, language):
            if not any(lexical.startswith(str(r) + os.sep) for r in self.workspace.roots):
                continue  # outside by its name: not even looked at
            if os.path.isfile(lexical) and self.workspace.root_of(Path(lexical)) is not None:  # symlinks too
                found = Path(lexical)
                break
        self._where[key] = (found, now)
        if len(self._where) > 4096:
            self._where.clear()
        return found

    def _disk_parse(self, path: Path) -> Parsed | None:
        """A workspace file's parse, read again only when its size or time changed."""
        now = time.monotonic()
        seen = self._where.get(("stat", path))
        if seen is not None and now - seen[1] < STAT_TTL_S:
            version = seen[0]
        else:
            try:
                st = path.stat()
            except OSError:
                return None
            version = self._where[("stat", path)] = ((st.st_mtime_ns, st.st_size), now)
            version = version[0]
        if version[1] > MAX_FILE_BYTES:
            return None
        k = (f"disk:{path}", hash(version))
        parsed = self._parsed.get(k)
        if parsed is None:
            body = _read(path)
            if body is None:
                return None
            parsed = self._parsed[k] = parse_file(body, language_for("", str(path)))
            while len(self._parsed) > 64:
                self._parsed.popitem(last=False)
        return parsed

    def _order(self, uri: str) -> float:
        return self.edits.last_edit.get(uri, 0.0)

    def _parse(self, key: str, text: str, language: str) -> Parsed:
        k = (key, hash(text))
        parsed = self._parsed.get(k)
        if parsed is None:
            parsed = self._parsed[k] = parse_file(text, language)
            while len(self._parsed) > 64:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(k)
        return parsed

    def _chunks(self, others: Sequence[OtherDoc], query: set[str]) -> list[Snippet]:
        scored = []
        # Chunks with nothing in common still fill a budget left over (llama.vim sends its whole
        # ring): ranked last, the most recently used file's first, each file from its top.
        for rank, d in enumerate(others):
            language = language_for(d.language_id, d.uri)
            parsed = self._parse(d.uri, d.text, language)
            path = self.workspace.relative(d.uri)
            for first, body, ids in parsed.chunks():
                score = jaccard(query, ids)
                scored.append((-score, rank, first, Snippet(path, first, body, "chunks", self._order(d.uri))))
        scored.sort(key=lambda x: x[:3])
        return [s for *_, s in scored]

    def _edits(self, others: Sequence[OtherDoc]) -> list[Snippet]:
        by_uri = {d.uri: d for d in others}
        out = []
        for uri, line in reversed(self.edits.places):  # most recent first
            d = by_uri.get(uri)
            if d is None:
                continue  # closed, refused, or the current file
            lines = d.text.split("\n")
            first = max(0, line - EDIT_CONTEXT)
            body = "\n".join(lines[first:line + EDIT_CONTEXT + 1])
            if body.strip():
                out.append(Snippet(self.workspace.relative(uri), first, body, "edits", self._order(uri)))
        return out

    def _definitions(self, uri: str, text: str, offset: int, language: str, others: Sequence[OtherDoc], query: set[str],
                     secret_files: tuple[str, ...], disabled: tuple[str, ...]) -> list[Snippet]:
        """Definitions of the names the current file imports, those used around the cursor first."""
        here = path_of(uri)
        # Imports sit above the cursor's block: only that head is parsed (bounded), once per version.
        head = text[:min(_block_start(text, offset), HEAD_CHARS)]
        parsed = self._parse(uri, head, language)
        if not parsed.imports or here is None:
            return []
        open_docs = {}
        for d in others:
            p = path_of(d.uri)
            if p is not None:
                open_docs[os.path.normpath(p)] = d
        # Names the code above the cursor does not use yet: an import not used so far is most often
        # what the code being written is about to use.
        used_above = identifiers(text[len(head):offset][-USED_ABOVE_CHARS:]) | _used_outside_imports(parsed)
        reads = 0
        wanted: list[tuple[int, Snippet]] = []
        for n, imp in enumerate(parsed.imports):
            path = next((p for p in self._candidates(imp.module, here, language) if p in open_docs), None)
            doc = open_docs.get(path) if path is not None else None
            if doc is not None:  # open: its text in the editor, whatever is on disk
                target = self._parse(doc.uri, doc.text, language_for(doc.language_id, doc.uri))
                target_uri = doc.uri
            else:
                path = self._on_disk(imp.module, here, language)
                if path is None or reads >= MAX_FILES:
                    continue
                target_uri = file_uri(path)
                if not shareable(target_uri, "", secret_files, disabled):
                    continue
                reads += 1
                got = self._disk_parse(path)
                if got is None:
                    continue
                target = got
            rel = self.workspace.relative(target_uri)
            names = [x for x in imp.names if x] or sorted(target.defs)  # a module: what the code uses of it
            for name in names:
                found = target.defs.get(name.rsplit(".", 1)[-1])
                if found is None:
                    continue
                line, rendered = found
                short = name.rsplit(".", 1)[-1]
                # Imported and not used yet first, then used around the cursor, then in import order.
                tier = 0 if imp.names and short not in used_above else 1 if short in query else 2
                rank = tier * 10_000 + n * 100
                if not imp.names and name not in query:
                    continue  # a whole module: only the names the code near the cursor uses
                wanted.append((rank, Snippet(rel, line, rendered, "definitions", self._order(target_uri))))
        wanted.sort(key=lambda x: x[0])
        return [s for _, s in wanted]


def _used_outside_imports(parsed: Parsed) -> set[str]:
    """Identifiers of the head's lines that are not import statements (the code above the block),
    once per head version."""
    if parsed._code_ids is None:
        lines = parsed.lines
        code = []
        for first, last in parsed.tops:
            if not lines[first].lstrip().startswith(("import ", "from ", "#include", "use ", "package ")):
                code.append("\n".join(lines[first:last + 1]))
        parsed._code_ids = identifiers("\n".join(code))
    return parsed._code_ids


def chunk_spans(parsed: Parsed) -> list[tuple[int, int]]:
    """Line spans of a file's chunks: consecutive top-level nodes up to `CHUNK_LINES` lines; a longer
    node cut in steps of it; without a parse, fixed steps."""
    n = len(parsed.lines)
    if not parsed.tops:
        return [(i, min(n, i + CHUNK_LINES) - 1) for i in range(0, n, CHUNK_LINES)]
    spans: list[tuple[int, int]] = []
    start = parsed.tops[0][0]
    if start > 0:
        spans.append((0, start - 1))
    cur: tuple[int, int] | None = None
    for first, last in parsed.tops:
        first = max(first, cur[1] + 1 if cur else first)
        if last < first:
            continue
        if cur is not None and last - cur[0] < CHUNK_LINES:
            cur = (cur[0], last)
            continue
        if cur is not None:
            spans.append(cur)
        while last - first >= CHUNK_LINES:
            spans.append((first, first + CHUNK_LINES - 1))
            first += CHUNK_LINES
        cur = (first, last)
    if cur is not None:
        spans.append(cur)
    return spans


def _block_start(text: str, offset: int) -> int:
    """Start of the top-level statement the cursor is in: the nearest line above (or at) the cursor's
    that starts at column 0 with code, not a closing bracket. A text scan, no parse: it runs on
    every keystroke, and only has to move when the cursor leaves a block."""
    pos = text.rfind("\n", 0, offset) + 1
    while True:
        ch = text[pos:pos + 1]
        if ch and ch not in " \t\r\n)]}" and not text.startswith(("#", "//", "/*", "*"), pos):
            return pos
        if pos == 0:
            return 0
        pos = text.rfind("\n", 0, pos - 1) + 1


def _query_ids(text: str, offset: int) -> set[str]:
    start, end = offset, offset
    for _ in range(QUERY_ABOVE):
        start = text.rfind("\n", 0, max(0, start - 1)) + 1
        if start == 0:
            break
    for _ in range(QUERY_BELOW):
        nxt = text.find("\n", end + 1)
        end = len(text) if nxt < 0 else nxt
        if nxt < 0:
            break
    return identifiers(text[start:end])


def _read(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return None


# -- import resolution ------------------------------------------------------------------------------

JS_EXTENSIONS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs")


def resolve(module: str, here: Path, language: str, workspace: Workspace) -> list[Path]:
    """Candidate files for an import written in the file at `here`, most likely first; whether one is
    open, exists, or lies in the workspace is the caller's to check."""
    folder = here.parent
    out: list[Path] = []
    if language == "python":
        dots = len(module) - len(module.lstrip("."))
        parts = [p for p in module.lstrip(".").split(".") if p]
        if dots:
            base = folder
            for _ in range(dots - 1):
                base = base.parent
            bases = [base]
        else:
            bases = [*_python_bases(here, workspace)]
        for base in bases:
            stem = base.joinpath(*parts) if parts else base
            out += [stem.with_suffix(".py") if parts else stem / "__init__.py", stem / "__init__.py"]
    elif language in ("javascript", "javascriptreact", "typescript", "typescriptreact"):
        if not module.startswith("."):
            return []  # a package from node_modules: not the workspace's code
        stem = (folder / module)
        out += [stem, *(Path(str(stem) + e) for e in JS_EXTENSIONS), *(stem / f"index{e}" for e in JS_EXTENSIONS)]
        if stem.suffix == ".js":  # TypeScript imports name the compiled file
            out += [stem.with_suffix(e) for e in (".ts", ".tsx")]
    elif language in ("c", "cpp"):
        out += [folder / module, *(r / module for r in workspace.roots),
                *(r / "include" / module for r in workspace.roots)]
    elif language == "java":
        rel = Path(*module.split("."))
        for r in workspace.roots:
            for base in (r, r / "src" / "main" / "java", r / "src"):
                out += [base / rel.with_suffix(".java"), base / rel.parent.with_suffix(".java")]
    elif language == "rust":
        parts = [p for p in module.split("{")[0].split("::") if p]
        if parts[:1] in (["crate"], ["super"], ["self"]):
            head = parts.pop(0)
            base = folder if head == "self" else folder.parent if head == "super" else _rust_src(here, workspace)
            for k in range(len(parts), 0, -1):  # the longest prefix that is a module file
                stem = base.joinpath(*parts[:k])
                out += [stem.with_suffix(".rs"), stem / "mod.rs"]
    elif language == "go":
        for r in workspace.roots:
            gomod = r / "go.mod"
            try:
                name = next((ln.split()[1] for ln in gomod.read_text().splitlines() if ln.startswith("module ")), "")
            except (OSError, IndexError):
                continue
            if name and module.startswith(name + "/"):
                pkg = r / module[len(name) + 1:]
                try:
                    out += sorted(p for p in pkg.glob("*.go") if not p.name.endswith("_test.go"))[:8]
                except OSError:
                    pass
    return [p for p in dict.fromkeys(out) if p.suffix]


def _python_bases(here: Path, workspace: Workspace) -> list[Path]:
    """Folders an absolute Python import is looked up from: each root (and its src/), and the folder
    above the current file's top package (its sys.path entry)."""
    bases = []
    for r in workspace.roots:
        bases += [r, r / "src"]
    top = here.parent
    while workspace.root_of(top) is not None and (top / "__init__.py").exists():  # never a stat outside
        top = top.parent
    bases.append(top)
    return list(dict.fromkeys(bases))


def _rust_src(here: Path, workspace: Workspace) -> Path:
    d = here.parent
    while d.parent != d and not (d / "Cargo.toml").exists():
        if workspace.root_of(d) is None:
            break
        d = d.parent
    return d / "src"


__all__ = ["SOURCES", "OtherDoc", "Retriever", "Snippet", "Workspace", "chunk_spans", "identifiers", "jaccard",
           "parse_file", "resolve"]
