"""What a file holds, read with tree-sitter: its top-level spans, its definitions rendered as the
model should read them (signature, docstring, fields; bodies elided), its imports, and its chunks.

Rules: a file over `MAX_FILE_BYTES` is not parsed (fixed line-step chunks instead), so a request
never waits on a huge parse, nor one whose parse has over `MAX_TOP_NODES` top-level nodes; a
definition is cut after `MAX_DEF_LINES` lines. Deeply nested or broken code costs linear time: the
import query skips big erroneous nodes (`_matches`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from codestral_ls.server.languages import parser as parser_for

log = logging.getLogger(__name__)

CHUNK_LINES = 24  # a chunk holds top-level nodes up to this many lines; a longer node is cut in steps of it
MAX_FILE_BYTES = 256_000  # a file parsed (or read from disk for its definitions) is at most this big
DOC_LINES = 6  # a docstring is cut after this many lines
MAX_DEF_LINES = 40  # a rendered definition is cut after this many lines
QUERIED_NODE_BYTES = 16_000  # a top-level node with syntax errors bigger than this is not searched for imports
MAX_TOP_NODES = 5000  # a file with more top-level nodes is not outlined (its chunks are fixed line steps)
QUERIED_CHILDREN = 4000  # ... nor the top-level nodes past this many in a file with syntax errors
IMPORT_NODES = ("import", "include", "use_declaration", "package")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = frozenset(
    "and as assert async await break case catch class const continue def del do elif else enum except export "
    "extends false final finally fn for from func function go if impl import in interface is lambda let match "
    "mod mut new nil none not null or package pass pub raise return self static struct super switch this throw "
    "true try type use var void while with yield int str bool float char long".split())



def identifiers(text: str) -> set[str]:
    """Identifier set of `text` (keywords and one-letter names left out): what similarity compares."""
    return {w for w in IDENT.findall(text) if len(w) > 1 and w.lower() not in KEYWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b) if len(a) < len(b) else len(b & a)
    return common / (len(a) + len(b) - common)



@dataclass
class Parsed:
    """One file parsed: its top-level nodes' line spans and its definitions by name."""

    language: str
    lines: list[str]
    tops: list[tuple[int, int]]  # (first line, last line) of each top-level node
    defs: dict[str, tuple[int, str]] = field(default_factory=dict)  # name → (line, rendered text)
    imports: list[Import] = field(default_factory=list)
    _chunks: list[tuple[int, str, set[str]]] | None = None
    chars: int = 0  # the text's length: what keeping this parse costs
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

    parser = parser_for(language)
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
    parser = parser_for(language)
    if parser is None or len(text) > MAX_FILE_BYTES:
        return Parsed(language, lines, [], chars=len(text))
    data = text.encode("utf-8", "surrogatepass")
    try:
        tree = parser.parse(data)
    except Exception as exc:
        log.warning("tree-sitter parse failed: %s", exc)
        return Parsed(language, lines, [], chars=len(text))
    root = tree.root_node
    if root.child_count > MAX_TOP_NODES:  # minified or pathological (100 kB of `{`): plain lines, and its imports
        return Parsed(language, lines, [], imports=_imports(root, data, language), chars=len(text))
    parsed = Parsed(language, lines, [(c.start_point[0], c.end_point[0]) for c in root.children], chars=len(text))
    for child in root.children:
        if any(k in child.type for k in IMPORT_NODES):
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
    for _, caps in _matches(tree_sitter.QueryCursor(query), root):
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



def _matches(cursor: Any, root: Any) -> Iterable[tuple[int, dict[str, list[Any]]]]:
    """The query's matches. A tree with syntax errors is queried child by child (the first
    `QUERIED_CHILDREN`), leaving out a big child with errors that is no import: the query walks an
    ERROR node in time quadratic in its children (100 kB of `{`: 14 s), on the event loop."""
    if not root.has_error:
        yield from cursor.matches(root)
        return
    for i in range(min(root.child_count, QUERIED_CHILDREN)):
        child = root.child(i)
        if child.has_error and child.end_byte - child.start_byte > QUERIED_NODE_BYTES and \
                not any(k in child.type for k in IMPORT_NODES):
            continue
        yield from cursor.matches(child)


def used_outside_imports(parsed: Parsed) -> set[str]:
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


