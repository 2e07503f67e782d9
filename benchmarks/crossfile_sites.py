"""Sites of the cross-file benchmark: lines of real code that need a definition from another module.

Four kinds, each found with tree-sitter in a module A of a package, the definition in a sibling
module B of the same package (resolved as the server resolves imports, server/retrieval/):

  import   the first use of a name A imports from B; the line is blanked to its indentation (the
           cursor after an editor's auto-indent), the whole line is expected
  call     a call `f(args)` of a function f that A imports from B, with at least one argument; the
           line is typed up to and including `f(`, the rest of the line is expected
  method   `v.m(...)` where v is a parameter annotated with (or a variable assigned an instance of, or
           the name of) a class C that A imports from B, and m a method C defines; typed up to `v.`
  field    the same for a field (an annotated class attribute) of a dataclass C (decorated
           `@dataclass`, or a NamedTuple / TypedDict / BaseModel subclass); typed up to `v.`

Fixed rules, no look at results: modules sorted by path, at most `MAX_MODULES` of a package scanned
(picked with a stride), not `__init__.py`, not over `MAX_BYTES`; at most `MAX_PER_MODULE` sites of a
kind per module; a site line is 12–120 characters, not a def/class/decorator/import/comment line,
and has something left to type.

Held-out packages (`held_out`): the venv's largest pure-Python packages by .py bytes, leaving out
those this project has used before (the old benchmark's three, and pydantic_settings, measured
before), any with a compiled extension (.so/.pyd), any that vendors other packages (a `_vendor` or
`vendor` folder), and the project itself. The rule is code, run before any result was seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codestral_ls.server.retrieval import Workspace, parse_file, resolve

USED_BEFORE = ("huggingface_hub", "mistral_common", "pygls", "pydantic_settings", "codestral_ls")
KINDS = ("import", "call", "method", "field")
MAX_MODULES = 80
MAX_BYTES = 200_000
MAX_PER_MODULE = 2
SKIP_STARTS = ("def ", "async def ", "class ", "@", "import ", "from ", "#", "\"\"\"", "'''")
DATA_BASES = ("NamedTuple", "TypedDict", "BaseModel")


@dataclass(frozen=True)
class Site:
    package: str
    kind: str  # one of KINDS
    a: str  # path of A relative to the workspace root
    b: str  # path of B
    line: int  # 0-based line of A the cursor is on
    col: int  # the cursor's column: the line is cut there (what is after it is expected)
    original: str  # the whole line, stripped
    expected: str  # what is after the cursor on the line, stripped
    name: str  # the name needed: the imported name, or Class.member
    b_line: int  # where B defines the name (the class for a member)
    members: tuple[str, ...] = ()  # the class's members (method, field kinds)
    params: tuple[str, ...] = ()  # the function's parameter names (call kind)


def site_packages() -> Path:
    import pygls

    return Path(pygls.__file__).resolve().parent.parent


def held_out(count: int = 5) -> tuple[str, ...]:
    """The `count` largest pure-Python packages of the venv not used before (the module docstring's rule)."""
    sizes = []
    for d in site_packages().iterdir():
        if not d.is_dir() or d.name.startswith("_") or not (d / "__init__.py").is_file() or d.name in USED_BEFORE:
            continue
        files = [f for f in d.rglob("*") if "__pycache__" not in f.parts]
        if any(f.suffix in (".so", ".pyd") for f in files) or any(f.name in ("_vendor", "vendor") for f in files):
            continue
        sizes.append((sum(f.stat().st_size for f in files if f.suffix == ".py"), d.name))
    return tuple(name for _, name in sorted(sizes, reverse=True)[:count])


def _parser() -> Any:
    from codestral_ls.server.languages import parser

    return parser("python")


def _walk(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def _txt(node: Any, data: bytes) -> str:
    return data[node.start_byte:node.end_byte].decode("utf-8", "replace")


@dataclass
class ClassInfo:
    line: int
    methods: set[str]
    fields: set[str]
    data: bool  # a dataclass (or NamedTuple / TypedDict / BaseModel)


def classes(text: str) -> dict[str, ClassInfo]:
    """Top-level classes of a module: their methods, annotated fields, and whether they hold data."""
    data = text.encode()
    out: dict[str, ClassInfo] = {}
    for top in _parser().parse(data).root_node.children:
        node, decorators = top, ""
        if top.type == "decorated_definition":
            decorators = " ".join(_txt(c, data) for c in top.children if c.type == "decorator")
            node = top.child_by_field_name("definition")
        if node is None or node.type != "class_definition":
            continue
        name = _txt(node.child_by_field_name("name"), data)
        bases = node.child_by_field_name("superclasses")
        is_data = "dataclass" in decorators or (bases is not None and any(b in _txt(bases, data) for b in DATA_BASES))
        info = ClassInfo(top.start_point[0], set(), set(), is_data)
        for child in node.child_by_field_name("body").named_children:
            inner = child.child_by_field_name("definition") if child.type == "decorated_definition" else child
            if inner is not None and inner.type == "function_definition":
                info.methods.add(_txt(inner.child_by_field_name("name"), data))
            elif child.type == "expression_statement" and child.named_child_count == 1:
                a = child.named_children[0]
                if a.type == "assignment" and a.child_by_field_name("type") is not None:
                    left = a.child_by_field_name("left")
                    if left is not None and left.type == "identifier":
                        info.fields.add(_txt(left, data))
        out[name] = info
    return out


def functions(text: str) -> dict[str, tuple[str, ...]]:
    """Top-level functions of a module and their parameter names."""
    data = text.encode()
    out = {}
    for top in _parser().parse(data).root_node.children:
        node = top.child_by_field_name("definition") if top.type == "decorated_definition" else top
        if node is None or node.type != "function_definition":
            continue
        params = []
        for p in node.child_by_field_name("parameters").named_children:
            ident = p if p.type == "identifier" else next((c for c in p.children if c.type == "identifier"), None)
            if ident is not None:
                params.append(_txt(ident, data))
        out[_txt(node.child_by_field_name("name"), data)] = tuple(params)
    return out


def _line_ok(line: str) -> bool:
    s = line.strip()
    return 12 <= len(s) <= 120 and not s.startswith(SKIP_STARTS)


def find_sites(pkg: str, root: Path) -> dict[str, list[Site]]:
    """Every site of each kind in the package copied under `root` (the rules in the module docstring)."""
    ws = Workspace((root.resolve(),))
    out: dict[str, list[Site]] = {k: [] for k in KINDS}
    modules = [a for a in sorted((root / pkg).rglob("*.py"))
               if a.name != "__init__.py" and a.stat().st_size <= MAX_BYTES]
    step = max(1, -(-len(modules) // MAX_MODULES))
    b_defs: dict[Path, tuple[str, dict[str, Any]]] = {}  # B → its text and definitions, parsed once
    b_classes: dict[Path, dict[str, ClassInfo]] = {}
    b_funcs: dict[Path, dict[str, tuple[str, ...]]] = {}
    for a in modules[::step]:
        text = a.read_text("utf-8", errors="replace")
        lines = text.split("\n")
        parsed = parse_file(text, "python")
        # name imported from a sibling → (B path, its line in B, B's text)
        imported: dict[str, tuple[Path, int, str]] = {}
        for imp in parsed.imports:
            if not imp.names:
                continue
            b = next((p for p in resolve(imp.module, a, "python", ws)
                      if p.is_file() and p != a and ws.root_of(p) is not None), None)
            if b is None:
                continue
            if b not in b_defs:
                b_text = b.read_text("utf-8", errors="replace")
                b_defs[b] = (b_text, parse_file(b_text, "python").defs)
            b_text, defs = b_defs[b]
            for name in imp.names:
                if name in defs:
                    imported[name] = (b, defs[name][0], b_text)
        if not imported:
            continue
        mod = _Module(pkg, root, a.relative_to(root).as_posix(), lines, out)
        add = mod.add
        data = text.encode()
        tree = _parser().parse(data)
        first: dict[str, Any] = {}
        for node in _walk(tree.root_node):
            if node.type in ("import_statement", "import_from_statement"):
                continue
            if node.type == "identifier" and _txt(node, data) in imported and not _inside_import(node):
                name = _txt(node, data)
                if name not in first or node.start_byte < first[name].start_byte:
                    first[name] = node
        for name, node in sorted(first.items(), key=lambda kv: kv[1].start_byte):
            b, b_line, _ = imported[name]
            ln = node.start_point[0]
            indent = len(lines[ln]) - len(lines[ln].lstrip())
            add("import", ln, indent, name, b, b_line)
        for node in _walk(tree.root_node):
            if node.type == "call":
                fn = node.child_by_field_name("function")
                args = node.child_by_field_name("arguments")
                if fn is None or fn.type != "identifier" or args is None or args.named_child_count == 0:
                    continue
                name = _txt(fn, data)
                if name not in imported or node.start_point[0] != node.end_point[0]:
                    continue
                b, b_line, b_text = imported[name]
                funcs = b_funcs[b] if b in b_funcs else b_funcs.setdefault(b, functions(b_text))
                if name in funcs:
                    add("call", fn.start_point[0], args.start_point[1] + 1, name, b, b_line, params=funcs[name])
            elif node.type == "function_definition":
                typed = dict(_typed_names(node, data, imported))  # variable → class
                body = node.child_by_field_name("body")
                if not typed or body is None:
                    continue
                for attr in _walk(body):
                    if attr.type != "attribute" or attr.start_point[0] != attr.end_point[0]:
                        continue
                    obj, member = attr.child_by_field_name("object"), attr.child_by_field_name("attribute")
                    if obj is None or member is None or obj.type != "identifier" or _txt(obj, data) not in typed:
                        continue
                    cls = typed[_txt(obj, data)]
                    b, _, b_text = imported[cls]
                    info = (b_classes[b] if b in b_classes else b_classes.setdefault(b, classes(b_text))).get(cls)
                    if info is None:
                        continue
                    m = _txt(member, data)
                    kind = "field" if info.data and m in info.fields else "method" if m in info.methods and \
                        not m.startswith("__") else None
                    if kind:
                        add(kind, member.start_point[0], member.start_point[1], f"{cls}.{m}", b, info.line,
                            members=tuple(sorted(info.methods | info.fields)))
    return out


@dataclass
class _Module:
    """One module A being scanned: where its sites go, and how many of each kind it gave."""

    pkg: str
    root: Path
    rel: str
    lines: list[str]
    out: dict[str, list[Site]]
    per: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    taken: set[int] = field(default_factory=set)

    def add(self, kind: str, line: int, col: int, name: str, b: Path, b_line: int, **more: Any) -> None:
        if self.per[kind] >= MAX_PER_MODULE or line in self.taken or not _line_ok(self.lines[line]):
            return
        expected = self.lines[line][col:].strip()
        if not expected:
            return
        self.taken.add(line)
        self.per[kind] += 1
        self.out[kind].append(Site(self.pkg, kind, self.rel, b.relative_to(self.root).as_posix(), line, col,
                                   self.lines[line].strip(), expected, name, b_line, **more))


def _inside_import(node: Any) -> bool:
    p = node.parent
    while p is not None:
        if p.type in ("import_statement", "import_from_statement"):
            return True
        p = p.parent
    return False


def _typed_names(fn: Any, data: bytes, imported: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable, class) pairs in a function: parameters annotated with an imported name, variables
    assigned a call of one, and the imported class names themselves (C.method)."""
    import re

    pairs = []
    params = fn.child_by_field_name("parameters")
    for p in params.named_children if params is not None else []:
        if p.type not in ("typed_parameter", "typed_default_parameter"):
            continue
        ident = next((c for c in p.children if c.type == "identifier"), None)
        typ = p.child_by_field_name("type")
        if ident is None or typ is None:
            continue
        cls = next((w for w in re.findall(r"[A-Za-z_]\w*", _txt(typ, data)) if w in imported), None)
        if cls is not None:
            pairs.append((_txt(ident, data), cls))
    body = fn.child_by_field_name("body")
    for n in _walk(body) if body is not None else []:
        if n.type == "assignment":
            left, right = n.child_by_field_name("left"), n.child_by_field_name("right")
            if left is not None and right is not None and left.type == "identifier" and right.type == "call":
                f = right.child_by_field_name("function")
                if f is not None and f.type == "identifier" and _txt(f, data) in imported:
                    pairs.append((_txt(left, data), _txt(f, data)))
    pairs.extend((name, name) for name in imported if name[:1].isupper())
    return pairs
