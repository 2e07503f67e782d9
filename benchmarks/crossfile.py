"""Cross-file benchmark: does the suggestion know the project? (issue 18)

Built from real multi-file code the model (Qwen2.5-Coder, trained on data up to 2024) is unlikely to
have seen: packages installed in this venv released after it (huggingface_hub 2.x, mistral_common
1.13, pygls 2.x). Each package is copied (its .py files) into a workspace folder of its own,
`<tmp>/<package>/<package>/…`, so that the repository root the editor sends is its parent, as in a
checkout.

A site is a line of a module A that is the **first use of a name A imports from a sibling module
B** of the same package (`from .b import name`, `from pkg.b import name`), where B defines the name
(tree-sitter, server/retrieval/'s own import query) — a line that needs B to be right. The line is
blanked to its indentation (an editor's auto-indent) and the cursor put there; sites are picked
with a fixed stride among all such lines, the same number from each package (at most two per
module, not `__init__.py`, code lines of 12–90 characters that are not a def/class/decorator line).

Each configuration is the real server over stdio (tests' and editors' protocol, workspace folders
sent at initialize), started once; per site it opens B (when the configuration opens it) then A
(didOpen, as an editor would: A last, the file being edited), asks `textDocument/inlineCompletion`
at the cursor, and closes both. The first line of the first item is compared with the original
line (both stripped): exact-line rate, edit similarity (1 − Levenshtein / longer length), and how
often the suggestion names the imported name at all.

Configurations (default options unless the label says otherwise):

  alone-none       A alone, `--retrieval none`: nothing from any other file (the baseline)
  alone            A alone, default options: definitions are read from disk under the workspace root
  open             headline: A with B open, default options (context from other files is sized to the
                   device: none on a CPU whose cold prompt is already at the window floor)
  open-384         ablation: B open, `--extra-context-tokens 384` (every source, whatever the device)
  open-chunks      ablation: B open, `--retrieval chunks` only (each source ablation with 384 tokens)
  open-defs        ablation: B open, `--retrieval definitions` only
  open-edits       ablation: B open, `--retrieval edits` only; the user's last edit in B was the line
                   defining the name (retyped), an optimistic case labelled as such

Retrieval cost is timed in this process on the same sites with the server's `Retriever`: the first
selection in a block (cold) and a keystroke in it (warm, returns the cached selection).

    .venv/bin/python -m benchmarks.crossfile --sites 24
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from codestral_ls.server.pipeline import Document
from codestral_ls.server.retrieval import Retriever, Workspace, parse_file, resolve

from benchmarks.lsp_driver import LspServer
from benchmarks.measure import RESULTS_DIR, load_average, machine, stride_indices, table, write_json

PACKAGES = ("huggingface_hub", "mistral_common", "pygls")
CONFIGS: dict[str, tuple[list[str], bool, bool]] = {  # name → (server flags, open B, edit B)
    "alone-none": (["--retrieval", "none"], False, False),
    "alone": ([], False, False),
    "open": ([], True, False),
    "open-384": (["--extra-context-tokens", "384"], True, False),
    "open-chunks": (["--retrieval", "chunks", "--extra-context-tokens", "384"], True, False),
    "open-defs": (["--retrieval", "definitions", "--extra-context-tokens", "384"], True, False),
    "open-edits": (["--retrieval", "edits", "--extra-context-tokens", "384"], True, True),
}
MAX_PER_MODULE = 2
SKIP_STARTS = ("def ", "async def ", "class ", "@", "import ", "from ", "#", "\"\"\"", "'''")


@dataclass(frozen=True)
class Site:
    package: str
    a: str  # path of A relative to the workspace root
    b: str  # path of B
    line: int  # 0-based line of A that is blanked
    original: str  # the line, stripped
    indent: str
    name: str  # the name imported from B that the line uses first
    b_line: int  # where B defines it


def site_packages() -> Path:
    import pygls

    return Path(pygls.__file__).resolve().parent.parent


def make_workspace(base: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Each package's .py files under base/<package>/<package>/; returns package → repository root."""
    roots = {}
    sp = site_packages()
    for pkg in packages:
        repo = base / pkg
        src = sp / pkg
        for f in sorted(src.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            dest = repo / pkg / f.relative_to(src)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
        roots[pkg] = repo
    return roots


def first_uses(text: str) -> dict[str, int]:
    """Line of each identifier's first use as code (tree-sitter: not in a string, comment or import)."""
    from codestral_ls.server.languages import parser as _parser

    parser = _parser("python")
    out: dict[str, int] = {}
    if parser is None:
        return out
    data = text.encode()
    stack = [parser.parse(data).root_node]
    while stack:
        node = stack.pop()
        if node.type in ("string", "comment", "import_statement", "import_from_statement"):
            continue
        if node.type == "identifier":
            name = data[node.start_byte:node.end_byte].decode()
            out[name] = min(out.get(name, node.start_point[0]), node.start_point[0])
        stack.extend(node.children)
    return out


def find_sites(pkg: str, root: Path) -> list[Site]:
    ws = Workspace((root.resolve(),))
    sites: list[Site] = []
    for a in sorted((root / pkg).rglob("*.py")):
        text = a.read_text("utf-8", errors="replace")
        if len(text) > 200_000:
            continue
        if a.name == "__init__.py":
            continue  # re-exports: names listed, not used
        parsed = parse_file(text, "python")
        lines = text.split("\n")
        uses = first_uses(text)
        taken: set[int] = set()
        found = 0
        for imp in parsed.imports:
            if not imp.names or found >= MAX_PER_MODULE:
                continue
            b = next((p for p in resolve(imp.module, a, "python", ws)
                      if p.is_file() and p != a and ws.root_of(p) is not None), None)
            if b is None:
                continue
            defs = parse_file(b.read_text("utf-8", errors="replace"), "python").defs
            for name in imp.names:
                if name not in defs or found >= MAX_PER_MODULE:
                    continue
                use = uses.get(name)
                if use is None or use in taken:
                    continue
                stripped = lines[use].strip()
                if not 12 <= len(stripped) <= 90 or stripped.startswith(SKIP_STARTS):
                    continue
                indent = lines[use][:len(lines[use]) - len(lines[use].lstrip())]
                sites.append(Site(pkg, a.relative_to(root).as_posix(), b.relative_to(root).as_posix(), use,
                                  stripped, indent, name, defs[name][0]))
                taken.add(use)
                found += 1
    return sites


def blanked(root: Path, site: Site) -> str:
    lines = (root / site.a).read_text("utf-8", errors="replace").split("\n")
    lines[site.line] = site.indent
    return "\n".join(lines)


def edit_similarity(a: str, b: str) -> float:
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1 - prev[-1] / max(len(a), len(b))


async def run_config(name: str, sites: list[Site], roots: dict[str, Path], model: str | None = None) -> dict[str, Any]:
    flags, open_b, edit_b = CONFIGS[name]
    flags = [*flags, *(["--model", model] if model else [])]
    # Workspace folders: every package's repository (a multi-root workspace, as an editor sends it).
    server = LspServer(flags, folders=[r.as_uri() for r in roots.values()])
    load_s = await server.start()
    rows = []
    try:
        for site in sites:
            root = roots[site.package]
            a_uri, b_uri = (root / site.a).as_uri(), (root / site.b).as_uri()
            if open_b:
                b_text = (root / site.b).read_text("utf-8", errors="replace")
                server.open(b_uri, b_text)
                if edit_b:  # retype the definition's first character: the last edit in B was there
                    first = b_text.split("\n")[site.b_line][:1]
                    server.client.text_document_did_change(_change(b_uri, 2, site.b_line, first))
            server.open(a_uri, blanked(root, site))
            t0 = time.perf_counter()
            try:
                item = await server.inline(a_uri, site.line, len(site.indent))
                error = ""
            except Exception as exc:  # an error answer is a result: no suggestion, counted
                item, error = None, str(exc)[:200]
            ms = (time.perf_counter() - t0) * 1000
            got = ((item or {}).get("text") or "").split("\n", 1)[0].strip()
            rows.append({"site": asdict(site), "got": got, "exact": got == site.original, "uses_name": site.name in got,
                         "similarity": round(edit_similarity(got, site.original), 3), "ms": round(ms, 1),
                         "error": error})
            server.close(a_uri)
            if open_b:
                server.close(b_uri)
    finally:
        await server.stop()
    n = len(rows)
    return {"config": name, "flags": flags, "opens_related": open_b, "load_s": round(load_s, 1), "n": n,
            "exact": round(100 * sum(r["exact"] for r in rows) / n, 1) if n else None,
            "similarity": round(statistics.mean(r["similarity"] for r in rows), 3) if n else None,
            "uses_name": round(100 * sum(r["uses_name"] for r in rows) / n, 1) if n else None,
            "p50_ms": round(statistics.median(r["ms"] for r in rows), 1) if n else None, "rows": rows}


def _change(uri: str, version: int, line: int, first: str) -> Any:
    """Retype the first character of `line`: delete it and insert it again (one edit there)."""
    from lsprotocol import types

    start, end = types.Position(line=line, character=0), types.Position(line=line, character=len(first))
    return types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=start, end=end),
                                                                text=first)])


def retrieval_cost(sites: list[Site], roots: dict[str, Path]) -> dict[str, Any]:
    """Per-request time of the server's selection on these sites: cold (a new block) and warm (a
    keystroke in it), with B open and every source on."""
    r = Retriever()
    r.workspace = Workspace.of([root.as_uri() for root in roots.values()])
    cold, warm = [], []
    for site in sites:
        root = roots[site.package]
        a_path, b_path = root / site.a, root / site.b
        text = blanked(root, site)
        offset = sum(len(ln) + 1 for ln in text.split("\n")[:site.line]) + len(site.indent)
        others = [Document(b_path.as_uri(), b_path.read_text("utf-8", errors="replace"), "python")]
        for i, typed in enumerate(("", site.original[:1])):
            t = text[:offset] + typed + text[offset:]
            t0 = time.perf_counter()
            r.select(a_path.as_uri(), t, offset + len(typed), "python", others, ("chunks", "definitions", "edits"),
                     384)
            (cold if i == 0 else warm).append((time.perf_counter() - t0) * 1000)

    def summary(v: list[float]) -> dict[str, float]:
        s = sorted(v)
        return {"p50": round(s[len(s) // 2], 2), "p95": round(s[min(len(s) - 1, int(len(s) * 0.95))], 2),
                "max": round(s[-1], 2)}

    return {"cold_ms": summary(cold), "keystroke_ms": summary(warm)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sites", type=int, default=24, help="sites, picked with a fixed stride (default 24)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--packages", default=",".join(PACKAGES))
    p.add_argument("--model", help="a model other than the embedded one (the server's --model: an ablation, "
                                   "labelled with the model in the results)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="crossfile-") as tmp:
        roots = make_workspace(Path(tmp), tuple(args.packages.split(",")))
        # The same share of sites from each package, each picked with a fixed stride.
        per = -(-args.sites // len(roots))
        found = {pkg: find_sites(pkg, root) for pkg, root in roots.items()}
        sites = [s for fs in found.values() for s in (fs[i] for i in stride_indices(len(fs), per))][:args.sites]
        print(f"{len(sites)} sites of {sum(map(len, found.values()))} in {', '.join(roots)}", flush=True)
        cost = retrieval_cost(sites, roots)
        print(f"retrieval per request: cold {cost['cold_ms']} ms, keystroke {cost['keystroke_ms']} ms", flush=True)
        results = []
        for name in configs:
            res = asyncio.run(run_config(name, sites, roots, args.model))
            results.append(res)
            print(f"{name}: exact {res['exact']} %, similarity {res['similarity']}, uses the name "
                  f"{res['uses_name']} %, p50 {res['p50_ms']} ms", flush=True)
    print(table([[r["config"], " ".join(r["flags"]) or "(defaults)", "yes" if r["opens_related"] else "no",
                  str(r["n"]), f"{r['exact']:.1f}", f"{r['similarity']:.3f}", f"{r['uses_name']:.1f}",
                  f"{r['p50_ms']:.0f}"] for r in results],
                ["config", "flags", "B open", "n", "exact %", "edit sim", "name %", "p50 ms"]))
    out = args.out or RESULTS_DIR / f"crossfile_{len(sites)}.json"
    write_json(out, {"benchmark": "crossfile", "command": " ".join(sys.argv), "model": args.model, "sites": len(sites),
                     "packages": list(roots), "retrieval_cost": cost, "results": results,
                     "load_average": load_average(), "machine": machine()})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
