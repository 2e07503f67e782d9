"""Symbols: the definitions the code at the cursor is about to use, as short stubs.

The `symbols` source (server/retrieval/select.py). When the cursor enters a block, the names that
block needs from other files are read from its own text and the current file's imports:

- the receiver or callee just before the cursor (`state.`, `state.ad`, `make_state(`): the class of
  `state` (a parameter annotated with it, or a variable assigned `C(...)`), or the function;
- the classes of the enclosing code's annotated parameters and of variables assigned an instance;
- imported names not used yet above the cursor (the code being written is about to use them);
- imported names the block uses.

Each is rendered as a stub from its file's syntax tree: `class C(bases):` with its fields and its
methods' signatures (no docstrings, no bodies: every member, however long the class), or
`def f(params) -> ret: ...`. A stub is a few tokens per member where `definitions` renders a class
with its docstrings and cuts it after 40 lines, so the member the cursor needs was often cut.

Rules it keeps: stubs are computed with the rest of the selection (select.py: only when the cursor
enters another block), so typing never changes them; a stub is cut to `MAX_STUB_LINES`; at most
`MAX_NAMES` names are looked up.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from codestral_ls.server.languages import parser as parser_for

MAX_STUB_LINES = 30  # members of a class kept in its stub (fields first, then methods, in file order)
MAX_NAMES = 8  # names looked up per selection
ANNOTATED = re.compile(r"\b([A-Za-z_]\w*)\s*:\s*(?:[\w.]+\[)?[\"']?([A-Za-z_]\w*)")  # v: C, v: Optional[C]
ASSIGNED = re.compile(r"\b([A-Za-z_]\w*)\s*=\s*([A-Za-z_]\w*)\s*\(")  # v = C(
AT_CURSOR = re.compile(r"([A-Za-z_]\w*)\s*(?:\.\s*\w*|\(\s*)$")  # v.  v.pa  f(


def wanted(block: str, before: str, imported: list[str], used_above: set[str]) -> list[str]:
    """Names of `imported` the code needs, most needed first.

    `block`: the text of the enclosing block up to a little past the cursor; `before`: the cursor's
    line up to the cursor; `used_above`: identifiers the file uses above the block."""
    names = set(imported)
    types: dict[str, str] = {}  # variable → imported class
    for pattern in (ANNOTATED, ASSIGNED):
        for var, cls in pattern.findall(block):
            if cls in names:
                types.setdefault(var, cls)
    out: list[str] = []
    m = AT_CURSOR.search(before)
    if m:
        head = m.group(1)
        out.append(types.get(head, head))
    out.extend(types.values())
    out.extend(n for n in imported if n not in used_above)
    used = set(re.findall(r"[A-Za-z_]\w*", block))
    out.extend(n for n in imported if n in used)
    return [n for n in dict.fromkeys(out) if n in names][:MAX_NAMES]


_STUBS: OrderedDict[tuple[int, int, str], tuple[int, str] | None] = OrderedDict()  # (hash, size, name) →


def stub(text: str, name: str) -> tuple[int, str] | None:
    """(line, stub) of the top-level class or function `name` in the Python `text`, or None; remembered
    by the text's hash (not the text: a cache of big files' texts would hold megabytes)."""
    key = (hash(text), len(text), name)
    if key in _STUBS:
        _STUBS.move_to_end(key)
        return _STUBS[key]
    got = _STUBS[key] = _stub(text, name)
    while len(_STUBS) > 256:
        _STUBS.popitem(last=False)
    return got


def _stub(text: str, name: str) -> tuple[int, str] | None:
    parser = parser_for("python")
    if parser is None:
        return None
    data = text.encode("utf-8", "surrogatepass")
    for top in parser.parse(data).root_node.children:
        node = top.child_by_field_name("definition") if top.type == "decorated_definition" else top
        if node is None or node.type not in ("class_definition", "function_definition"):
            continue
        ident = node.child_by_field_name("name")
        if ident is None or _text(ident, data) != name:
            continue
        if node.type == "function_definition":
            return top.start_point[0], _signature(node, data, "") + " ..."
        return top.start_point[0], _class_stub(top, node, data)
    return None


def _text(node: Any, data: bytes) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "replace")


def _signature(node: Any, data: bytes, indent: str) -> str:
    """`def f(params) -> ret:` on one line (whitespace inside the parameters collapsed)."""
    body = node.child_by_field_name("body")
    head = data[node.start_byte:body.start_byte].decode("utf-8", "replace").rstrip()
    return indent + " ".join(head.split()).replace("( ", "(").replace(", )", ")").replace(",)", ")")


def _class_stub(top: Any, node: Any, data: bytes) -> str:
    decorators = [_text(c, data) for c in top.children if c.type == "decorator"] if top is not node else []
    body = node.child_by_field_name("body")
    header = " ".join(data[node.start_byte:body.start_byte].decode("utf-8", "replace").split())
    fields, methods = [], []
    for child in body.named_children:
        inner = child.child_by_field_name("definition") if child.type == "decorated_definition" else child
        if inner is not None and inner.type == "function_definition":
            name = _text(inner.child_by_field_name("name"), data)
            if name.startswith("__") and name != "__init__" or name.startswith("_") and not name.startswith("__"):
                continue  # private: not what code in another file calls
            marks = [_text(c, data) for c in child.children if c.type == "decorator"] if child is not inner else []
            prop = any(m.strip() in ("@property", "@cached_property", "@functools.cached_property") for m in marks)
            methods.append(f"    {_text(inner.child_by_field_name('name'), data)}: ..." if prop
                           else _signature(inner, data, "    ") + " ...")
        elif child.type == "expression_statement" and child.named_child_count == 1:
            a = child.named_children[0]
            left = a.child_by_field_name("left") if a.type == "assignment" else None
            if left is not None and left.type == "identifier" and not _text(left, data).startswith("_"):
                line = _text(a, data).split("\n", 1)[0]
                fields.append("    " + (line if len(line) <= 100 else line[:line.find("=")].rstrip() or line[:100]))
    members = (fields + methods)[:MAX_STUB_LINES] or ["    ..."]
    return "\n".join([*decorators, header, *members])
