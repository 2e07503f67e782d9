"""Cross-file benchmark: does the suggestion know the project? (issues 18, 27)

Built from real multi-file code: by default the held-out packages (benchmarks/crossfile_sites.py:
the venv's five largest pure-Python packages this project never used or tuned on, a rule fixed in
code before any result was seen); `--packages huggingface_hub,mistral_common,pygls` are the three
the cross-file defaults were first tuned on (issue 18), labelled as such. Each package is copied
(its .py files) into a workspace folder of its own, `<tmp>/<package>/<package>/…`, so that the
repository root the editor sends is its parent, as in a checkout.

Sites of four kinds (crossfile_sites.py): the first use of a name imported from a sibling module
(`import`, the line blanked to its indentation), a call of a function another module defines, typed
up to `f(` (`call`), a method (`method`) or a dataclass field (`field`) of a class another module
defines, typed up to `v.`. The same number of each kind from each package, picked with a fixed
stride (`--per-kind`).

Each configuration is the real server over stdio (tests' and editors' protocol, workspace folders
sent at initialize), started once; per site it opens B (when the configuration opens it) then A
(didOpen, as an editor would: A last, the file being edited), asks `textDocument/inlineCompletion`
at the cursor, and closes both. The line as typed plus the first line of the first item is compared
with the original line (both stripped): exact-line rate; edit similarity (1 − Levenshtein / longer
length) of what was suggested against what was expected after the cursor; and whether it used the
definition (`import`: names the name; `call`: exact, or names one of the function's parameters;
`method`/`field`: starts with the right member).

Per site, the same selection is made in this process with the server's `Retriever` (the server's
budget and sources for that configuration): whether the needed definition is in the prompt's extra
part, whether it was cut (a member past the rendered head), and how far from the cursor it sits
(characters of extra context after it, plus the current file's text before the cursor, which the
server's prefix window then bounds).

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
  open-384-none    control for open-384: B open, `--retrieval none` (the same server, nothing sent)
  open-sym         B open, 384 tokens, every source and `symbols` (stubs of what the block uses, last)
  open-sym128      B open, `--retrieval symbols` only, 128 tokens: fewer, more relevant tokens
  alone-sym128     the same with B closed: the stubs read from disk

Retrieval cost is timed in this process on the same sites with the server's `Retriever`: the first
selection in a block (cold) and a keystroke in it (warm, returns the cached selection).

    .venv/bin/python -m benchmarks.crossfile --per-kind 4 --configs alone-none,open-384
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from codestral_ls.server.pipeline import Document
from codestral_ls.server.retrieval import Retriever, Workspace

from benchmarks.crossfile_sites import KINDS, Site, find_sites, held_out, site_packages
from benchmarks.lsp_driver import LspServer
from benchmarks.measure import RESULTS_DIR, load_average, machine, stride_indices, table, write_json

TUNED = ("huggingface_hub", "mistral_common", "pygls")  # issue 18's packages: the defaults were tuned on them
CONFIGS: dict[str, tuple[list[str], bool, bool]] = {  # name → (server flags, open B, edit B)
    "alone-none": (["--retrieval", "none"], False, False),
    "alone": ([], False, False),
    "open": ([], True, False),
    "open-384": (["--extra-context-tokens", "384"], True, False),
    "open-chunks": (["--retrieval", "chunks", "--extra-context-tokens", "384"], True, False),
    "open-defs": (["--retrieval", "definitions", "--extra-context-tokens", "384"], True, False),
    "open-edits": (["--retrieval", "edits", "--extra-context-tokens", "384"], True, True),
    "open-384-none": (["--retrieval", "none", "--extra-context-tokens", "384"], True, False),
    "open-sym": (["--retrieval", "symbols", "--retrieval", "definitions", "--retrieval", "chunks", "--retrieval",
                  "edits", "--extra-context-tokens", "384"], True, False),
    "open-sym128": (["--retrieval", "symbols", "--extra-context-tokens", "128"], True, False),
    "alone-sym128": (["--retrieval", "symbols", "--extra-context-tokens", "128"], False, False),
}


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


def blanked(root: Path, site: Site) -> str:
    """A's text with the site's line cut at the cursor (the rest of the line is what is expected)."""
    lines = (root / site.a).read_text("utf-8", errors="replace").split("\n")
    lines[site.line] = lines[site.line][:site.col]
    return "\n".join(lines)


def typed(root: Path, site: Site) -> str:
    """What the line holds before the cursor."""
    return (root / site.a).read_text("utf-8", errors="replace").split("\n")[site.line][:site.col]


def used_definition(site: Site, got: str, line: str) -> bool:
    """Did the suggestion use what the definition says (the module docstring's rule per kind)."""
    if site.kind == "import":
        return site.name in got
    if site.kind == "call":
        return line == site.original or any(f"{p}=" in got for p in site.params if p not in ("self", "cls"))
    return got.startswith(site.name.split(".")[-1]) and not got[len(site.name.split(".")[-1]):][:1].isidentifier()


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
                item = await server.inline(a_uri, site.line, site.col)
                error = ""
            except Exception as exc:  # an error answer is a result: no suggestion, counted
                item, error = None, str(exc)[:200]
            ms = (time.perf_counter() - t0) * 1000
            text = ((item or {}).get("text") or "").split("\n", 1)[0]
            rng = (item or {}).get("range")
            start = rng[0][1] if rng and rng[0][0] == site.line else site.col  # an item may replace from before
            line = (typed(root, site)[:start] + text).strip()
            got = line[len(typed(root, site).strip()):].strip() if line.startswith(typed(root, site).strip()) \
                else text.strip()
            rows.append({"site": asdict(site), "got": got, "line": line, "exact": line == site.original,
                         "used": used_definition(site, got, line),
                         "similarity": round(edit_similarity(got, site.expected), 3), "ms": round(ms, 1),
                         "error": error, "prompt": probe(site, roots, flags, open_b)})
            server.close(a_uri)
            if open_b:
                server.close(b_uri)
    finally:
        await server.stop()
    return {"config": name, "flags": flags, "opens_related": open_b, "load_s": round(load_s, 1),
            **summarize(rows), "by_kind": {k: summarize([r for r in rows if r["site"]["kind"] == k]) for k in KINDS},
            "by_package": {p: summarize([r for r in rows if r["site"]["package"] == p])
                           for p in dict.fromkeys(r["site"]["package"] for r in rows)},
            "rows": rows}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    if not n:
        return {"n": 0}
    return {"n": n, "exact": round(100 * sum(r["exact"] for r in rows) / n, 1),
            "similarity": round(statistics.mean(r["similarity"] for r in rows), 3),
            "used": round(100 * sum(r["used"] for r in rows) / n, 1),
            "in_prompt": round(100 * sum(r["prompt"]["in_prompt"] for r in rows) / n, 1),
            "p50_ms": round(statistics.median(r["ms"] for r in rows), 1)}


def _flag(flags: list[str], name: str, default: str) -> str:
    """The values a repeatable flag takes, comma-joined (the default where it is absent)."""
    values = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f == name]
    return ",".join(values) if values else default


def probe(site: Site, roots: dict[str, Path], flags: list[str], open_b: bool) -> dict[str, Any]:
    """Where the site's definition sits in the extra part the server would send (the same selection
    in this process: the configuration's sources and budget; the default budget of an embedded-model
    configuration is none)."""
    from codestral_ls.server.options import Options

    budget = int(_flag(flags, "--extra-context-tokens", "0"))
    sources = _flag(flags, "--retrieval", ",".join(Options().retrieval)).split(",")
    root = roots[site.package]
    r = Retriever()
    r.workspace = Workspace.of([x.as_uri() for x in roots.values()])
    text = blanked(root, site)
    offset = sum(len(ln) + 1 for ln in text.split("\n")[:site.line]) + site.col
    b_path = root / site.b
    others = [Document(b_path.as_uri(), b_path.read_text("utf-8", errors="replace"), "python")] if open_b else []
    extra = r.select((root / site.a).as_uri(), text, offset, "python", others, [s for s in sources if s != "none"],
                     budget) if budget else ()
    layout = "".join(f"{p}\n{t}" for p, t in extra)
    cls, _, member = site.name.partition(".")
    # The definition: its `def`/`class` line in the layout (the B file's part of it).
    head = next((m for m in (f"class {cls}", f"def {cls}", f"{cls} =", f"{cls}:") if m in layout), None)
    at = layout.find(head) if head else -1
    member_at = layout.find(f"def {member}(", at) if member and at >= 0 else -1
    if member and member_at < 0 and at >= 0:
        member_at = layout.find(f" {member}:", at)
    found = at >= 0 and (not member or member_at >= 0)
    return {"extra_chars": len(layout), "in_prompt": found, "class_in_prompt": at >= 0,
            "cut": at >= 0 and bool(member) and member_at < 0,
            "after_chars": len(layout) - max(at, member_at) if found else None, "prefix_chars": offset,
            "files": [p for p, _ in extra]}


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
        offset = sum(len(ln) + 1 for ln in text.split("\n")[:site.line]) + site.col
        others = [Document(b_path.as_uri(), b_path.read_text("utf-8", errors="replace"), "python")]
        for i, key in enumerate(("", site.expected[:1])):
            t = text[:offset] + key + text[offset:]
            t0 = time.perf_counter()
            r.select(a_path.as_uri(), t, offset + len(key), "python", others, ("chunks", "definitions", "edits"),
                     384)
            (cold if i == 0 else warm).append((time.perf_counter() - t0) * 1000)

    def summary(v: list[float]) -> dict[str, float]:
        s = sorted(v)
        return {"p50": round(s[len(s) // 2], 2), "p95": round(s[min(len(s) - 1, int(len(s) * 0.95))], 2),
                "max": round(s[-1], 2)}

    return {"cold_ms": summary(cold), "keystroke_ms": summary(warm)}


def probe_table(sites: list[Site], roots: dict[str, Path], configs: list[str]) -> str:
    """The prompt probe alone (no server, no model): definition in the prompt / member cut, per kind."""
    out = []
    for name in configs:
        flags, open_b, _ = CONFIGS[name]
        probes = [(site.kind, probe(site, roots, flags, open_b)) for site in sites]
        for kind in ["all", *KINDS]:
            got = [x for k, x in probes if kind in ("all", k)]
            if got:
                after = sorted(x["after_chars"] for x in got if x["in_prompt"])
                out.append([name, kind, str(len(got)), f"{sum(x['in_prompt'] for x in got)}/{len(got)}",
                            f"{sum(x['cut'] for x in got)}/{len(got)}", str(after[len(after) // 2]) if after else "–"])
    return table(out, ["config", "kind", "n", "def in prompt", "class in, member cut", "chars after it (median)"])


def explain(paths: list[Path]) -> str:
    """Why the context was used or not: per configuration and kind, how often the definition was in the
    prompt, cut, how far from the cursor (median characters of extra context after it, and of the
    current file before the cursor), and the exact rate with the definition in the prompt and without."""
    out = []
    for path in paths:
        d = json.loads(path.read_text())
        for r in d["results"]:
            for kind in ["all", *KINDS]:
                rows = [x for x in r["rows"] if kind == "all" or x["site"]["kind"] == kind]
                if not rows:
                    continue
                inp = [x for x in rows if x["prompt"]["in_prompt"]]
                out_ = [x for x in rows if not x["prompt"]["in_prompt"]]
                after = sorted(x["prompt"]["after_chars"] for x in inp)
                pre = sorted(x["prompt"]["prefix_chars"] for x in rows)

                def rate(xs: list[dict[str, Any]], key: str) -> str:
                    return f"{sum(x[key] for x in xs)}/{len(xs)}" if xs else "–"

                out.append([r["config"], kind, str(len(rows)), f"{len(inp)}/{len(rows)}",
                            f"{sum(x['prompt']['cut'] for x in rows)}/{len(rows)}",
                            str(after[len(after) // 2]) if after else "–", str(pre[len(pre) // 2]),
                            rate(inp, "exact"), rate(out_, "exact"), rate(inp, "used"), rate(out_, "used")])
    return table(out, ["config", "kind", "n", "def in prompt", "cut", "chars after it", "file chars before cursor",
                       "exact (in)", "exact (not in)", "used (in)", "used (not in)"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--explain", type=Path, nargs="+", help="results files: where the definitions sat, per kind")
    p.add_argument("--per-kind", type=int, default=4,
                   help="sites of each kind from each package, picked with a fixed stride (default 4)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--configs", default="alone-none,open-384", help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--packages", help="default: the held-out packages (crossfile_sites.held_out); "
                                      f"{','.join(TUNED)} are those the defaults were tuned on")
    p.add_argument("--model", help="a model other than the embedded one (the server's --model: an ablation, "
                                   "labelled with the model in the results)")
    p.add_argument("--probe-only", action="store_true",
                   help="no model: per configuration and kind, how often the definition is in the prompt")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.explain:
        print(explain(args.explain))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs: {', '.join(unknown)}")
    packages = tuple(args.packages.split(",")) if args.packages else held_out()
    kinds = [k for k in args.kinds.split(",") if k]
    with tempfile.TemporaryDirectory(prefix="crossfile-") as tmp:
        roots = make_workspace(Path(tmp), packages)
        found = {pkg: find_sites(pkg, root) for pkg, root in roots.items()}
        sites = [fs[k][i] for fs in found.values() for k in kinds for i in stride_indices(len(fs[k]), args.per_kind)]
        print(f"{len(sites)} sites of {sum(len(fs[k]) for fs in found.values() for k in kinds)} in "
              f"{', '.join(roots)}", flush=True)
        if args.probe_only:
            print(probe_table(sites, roots, configs))
            return 0
        cost = retrieval_cost(sites, roots)
        print(f"retrieval per request: cold {cost['cold_ms']} ms, keystroke {cost['keystroke_ms']} ms", flush=True)
        results = []
        for name in configs:
            res = asyncio.run(run_config(name, sites, roots, args.model))
            results.append(res)
            print(f"{name}: exact {res['exact']} %, similarity {res['similarity']}, used the definition "
                  f"{res['used']} %, definition in the prompt {res['in_prompt']} %, p50 {res['p50_ms']} ms",
                  flush=True)
    rows = []
    for r in results:
        for k, s in [("all", r), *r["by_kind"].items()]:
            if s.get("n"):
                rows.append([r["config"], k, str(s["n"]), f"{s['exact']:.1f}", f"{s['similarity']:.3f}",
                             f"{s['used']:.1f}", f"{s['in_prompt']:.1f}", f"{s['p50_ms']:.0f}"])
    print(table(rows, ["config", "kind", "n", "exact %", "edit sim", "used def %", "def in prompt %", "p50 ms"]))
    tag = "heldout" if not args.packages else "_".join(packages) if len(packages) == 1 else f"{len(packages)}pkg"
    model = f"_{Path(args.model).stem}" if args.model else ""
    out = args.out or RESULTS_DIR / f"crossfile_{tag}_{len(sites)}{model}.json"
    write_json(out, {"benchmark": "crossfile", "command": " ".join(sys.argv), "model": args.model, "sites": len(sites),
                     "packages": list(roots), "kinds": kinds, "held_out": not args.packages,
                     "retrieval_cost": cost, "results": results,
                     "load_average": load_average(), "machine": machine()})
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
