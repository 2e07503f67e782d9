"""Selection: what the cursor needs from the rest of the project: snippets of other files, within a budget.

Three sources, each switchable (`retrieval` option, server/options.py):

- ``chunks``: other open documents cut into chunks of about `CHUNK_LINES` lines on top-level
  syntax boundaries (llama.vim's ring of chunks), ranked by the Jaccard similarity of their
  identifier sets with the lines around the cursor (Continue's snippet ranking);
- ``definitions``: the signature, docstring and fields of names the current file imports from the
  workspace (Python, JS/TS, Go, Rust, Java, C/C++ imports read with tree-sitter queries), names
  imported but not used yet above the cursor first (the code being written is about to use them),
  then those used near it; read from the open document, else from disk under a workspace root;
- ``edits``: the lines the user edited most recently in other files;
- ``symbols``: stubs (signatures, fields, method signatures) of the names the block at the cursor
  is about to use from other files (server/retrieval/symbols.py), placed last: nearest the cursor.

Rules it keeps:
- Never context: a file `privacy.shareable` refuses (credentials, disabled languages, by its name
  or its symlink's target), whether it is open or read from disk; never a file outside the
  workspace roots (symlinks resolved; `Workspace.holds`), open or not, nor an `untitled:` buffer, nor
  one over `MAX_FILE_BYTES` read from disk, nor more than `MAX_FILES` files read per selection.
- Bounded: a document over `MAX_CONTEXT_CHARS` is never context, and one being edited gets none
  (`skipped` says so, and codestral/status); parses are kept up to `PARSED_CHARS` of text.
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
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from codestral_ls.engine.models.counting import CHARS_PER_TOKEN  # a budget estimate: exact counts cost more
from codestral_ls.server.languages import language_for
from codestral_ls.server.privacy import shareable
from codestral_ls.server.retrieval.edits import EDIT_CONTEXT, RecentEdits
from codestral_ls.server.retrieval.outline import (
    MAX_FILE_BYTES,
    Parsed,
    identifiers,
    jaccard,
    parse_file,
    used_outside_imports,
)
from codestral_ls.server.retrieval.symbols import stub, wanted
from codestral_ls.server.retrieval.workspace import Workspace, file_uri, path_of, read_text, resolve

SOURCES = ("chunks", "definitions", "edits", "symbols")
SYMBOLS_SHARE = 0.5  # of the budget, when other sources are on too
QUERY_ABOVE, QUERY_BELOW = 30, 10  # lines around the cursor whose identifiers rank the chunks
MAX_FILES = 24  # files read from disk per selection
RESOLVE_TTL_S = 30.0  # an import's file is looked up again after this long
STAT_TTL_S = 2.0  # ... and a closed file's time and size read again after this long
USED_ABOVE_CHARS = 64_000  # the code above the cursor read for the names it uses already
HEAD_CHARS = 64_000  # the current file's imports are read from at most this much text above the cursor
MIN_CUT_CHARS = 300  # a definition bigger than the budget left is cut to it when this much is left
MAX_CONTEXT_CHARS = 1_000_000  # a document bigger than this is never context, nor gets any (a log, a dump)
PARSED_FILES = 64  # parses kept (file versions) ...
PARSED_CHARS = 8_000_000  # ... holding at most this much text (with its chunks: about 3 times the bytes)
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
        self._parsed_chars = 0  # text held by `_parsed`, bounded by PARSED_CHARS
        self.last_ms = 0.0  # what the last selection cost (reported by the benchmark)
        self.skipped = ""  # what the last selection left out for its size ("" when nothing): codestral/status

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
        self.skipped = ""
        if not sources or budget_tokens <= 0:
            return ()
        if len(text) > MAX_CONTEXT_CHARS:
            self.skipped = f"no context from other files: this file is over {MAX_CONTEXT_CHARS // 1_000_000} MB"
            return ()
        big = sum(len(d.text) > MAX_CONTEXT_CHARS for d in others)
        if big:
            self.skipped = f"{big} open file(s) over {MAX_CONTEXT_CHARS // 1_000_000} MB not used as context"
        others = [d for d in others if d.uri != uri and len(d.text) <= MAX_CONTEXT_CHARS
                  and shareable(d.uri, d.language_id, secret_files, disabled) and self.workspace.holds(d.uri, uri)]
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
            if n > limit and s.source in ("definitions", "symbols") and limit >= MIN_CUT_CHARS:
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
        # Stubs of what the cursor is about to use first (placed last, nearest the cursor), then
        # definitions (the names the code uses), edits next (small), chunks fill the rest.
        if "symbols" in sources:
            cap = left if len(sources) == 1 else int(budget * SYMBOLS_SHARE)
            for s in self._symbols(uri, text, offset, language, others, secret_files, disabled):
                cap -= (n := take(s, cap))
                left -= n
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
        files: dict[tuple[str, bool], list[str]] = {}  # stubs: a part of their own, after every file
        for s in sorted(picked, key=lambda s: s.source == "symbols"):
            files.setdefault((s.path, s.source == "symbols"), []).append(s.text.rstrip("\n"))
        return tuple((p, "\n...\n".join(parts) + "\n") for (p, _), parts in files.items())

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
            body = read_text(path)
            if body is None:
                return None
            parsed = self._keep(k, parse_file(body, language_for("", str(path))))
        return parsed

    def _keep(self, k: tuple[str, int], parsed: Parsed) -> Parsed:
        """Remember a parse, the oldest ones dropped past `PARSED_FILES` or `PARSED_CHARS` of text."""
        self._parsed[k] = parsed
        self._parsed_chars += parsed.chars
        while len(self._parsed) > PARSED_FILES or (self._parsed_chars > PARSED_CHARS and len(self._parsed) > 1):
            self._parsed_chars -= self._parsed.popitem(last=False)[1].chars
        return parsed

    def _order(self, uri: str) -> float:
        return self.edits.last_edit.get(uri, 0.0)

    def _parse(self, key: str, text: str, language: str) -> Parsed:
        k = (key, hash(text))
        parsed = self._parsed.get(k)
        if parsed is None:
            parsed = self._keep(k, parse_file(text, language))
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

    def _symbols(self, uri: str, text: str, offset: int, language: str, others: Sequence[OtherDoc],
                 secret_files: tuple[str, ...], disabled: tuple[str, ...]) -> list[Snippet]:
        """Stubs of the imported names the cursor's block needs (symbols.py), most needed first."""
        here = path_of(uri)
        block_start = _block_start(text, offset)
        head = text[:min(block_start, HEAD_CHARS)]
        parsed = self._parse(uri, head, language)
        if language != "python" or here is None or not parsed.imports:
            return []
        source: dict[str, str] = {}  # imported name → module
        for imp in parsed.imports:
            for name in imp.names:
                if name and "." not in name:
                    source.setdefault(name, imp.module)
        line_start = text.rfind("\n", 0, offset) + 1
        nxt = text.find("\n", offset)
        block = text[block_start:len(text) if nxt < 0 else nxt]
        used_above = identifiers(text[len(head):line_start][-USED_ABOVE_CHARS:]) | used_outside_imports(parsed)
        open_docs = {os.path.normpath(p): d for d in others if (p := path_of(d.uri)) is not None}
        out = []
        for name in wanted(block, text[line_start:offset], list(source), used_above):
            module = source[name]
            path = next((p for p in self._candidates(module, here, language) if p in open_docs), None)
            if path is not None:
                target_uri, body = open_docs[path].uri, open_docs[path].text
            else:
                found = self._on_disk(module, here, language)
                target_uri = file_uri(found) if found is not None else ""
                if not target_uri or not shareable(target_uri, "", secret_files, disabled):
                    continue
                got = self._disk_parse(found)
                if got is None:
                    continue
                body = "\n".join(got.lines)
            hit = stub(body, name) if len(body) <= MAX_FILE_BYTES else None  # never a huge parse
            if hit is not None:
                out.append(Snippet(self.workspace.relative(target_uri), hit[0], hit[1] + "\n", "symbols",
                                   self._order(target_uri)))
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
        used_above = identifiers(text[len(head):offset][-USED_ABOVE_CHARS:]) | used_outside_imports(parsed)
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


