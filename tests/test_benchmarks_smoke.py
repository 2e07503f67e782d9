"""The benchmarks run end to end at tiny sizes, so they cannot rot; their helpers behave.

The LSP-driven paths (the headline: the real server process with default options over stdio) and the
in-process ablations run on the tiny random model of benchmarks/tiny_model.py: fast, and the plumbing is what is
checked. Tests marked `model` run the llama.cpp peer on the embedded model's GGUF. No timing or
quality figure is asserted anywhere: the numbers belong in benchmarks/README.md, not in a test.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import quality, report, session, typing_replay  # noqa: E402
from benchmarks.device_args import device_problem, server_flags  # noqa: E402
from benchmarks.llama_peer import llama_problem  # noqa: E402
from benchmarks.lsp_driver import apply_item, utf16_offset, utf16_position  # noqa: E402
from benchmarks.measure import stride_indices  # noqa: E402

# Vendored in benchmarks/data/: a clone has it, so a missing file is a failure, not a skip.
assert (quality.DATA_DIR / quality.SETS[False]).is_file(), quality.DATA_DIR

SHORT_FILE = '''import os


def join_all(parts):
    total = []
    for part in parts:
        total.append(os.path.join("root", part))
    return total
'''


def bench(module: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- helpers, no model ---------------------------------------------------------------------------------


def test_stride_sampling_is_deterministic_and_spread():
    assert stride_indices(1033, 4) == [0, 258, 516, 774]
    for total, limit in [(1033, 4), (10, 3), (7, 7), (100, 1), (164, 20), (999, 998)]:
        picked = stride_indices(total, limit)
        assert len(picked) == limit and picked[0] == 0 and picked[-1] < total
        gaps = [b - a for a, b in zip(picked, picked[1:], strict=False)]
        assert all(g > 0 for g in gaps) and max(gaps, default=0) - min(gaps, default=0) <= 1, (total, limit, gaps)
    assert stride_indices(5, 10) == [0, 1, 2, 3, 4]
    assert stride_indices(5, 0) == [0, 1, 2, 3, 4]


def test_hole_puts_the_cursor_after_the_auto_indent():
    task = {"prompt": "def f(x):\n", "suffix": "    return y\n", "canonical_solution": "    y = x + 1\n",
            "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    hole = quality.make_hole(task)
    assert hole.text[:hole.offset] == "def f(x):\n    "
    assert hole.text[hole.offset:] == "\n    return y\n"
    middle = quality.canonical_middle(task, hole)
    assert middle == "y = x + 1"
    runner = quality.TestRunner(timeout=10)
    try:
        assert runner.passes(hole.program(middle, task))
        assert not runner.passes(hole.program("", task))
    finally:
        runner.close()


def test_canonical_solutions_pass_the_harness():
    tasks = quality.load_tasks(quality.data_dir() / quality.SETS[False])
    runner = quality.TestRunner(timeout=10)
    try:
        for i in stride_indices(len(tasks), 3):
            hole = quality.make_hole(tasks[i])
            assert runner.passes(hole.program(quality.canonical_middle(tasks[i], hole), tasks[i])), tasks[i]["task_id"]
    finally:
        runner.close()


def test_sites_blank_a_code_line_to_its_indentation(tmp_path):
    path = tmp_path / "short.py"
    path.write_text(SHORT_FILE)
    sites = typing_replay.pick_sites(path, 1)
    assert sites == typing_replay.pick_sites(path, 1)  # deterministic
    (site,) = sites
    lines = SHORT_FILE.split("\n")
    assert lines[site.line] == site.indent + site.target
    assert site.text.split("\n")[site.line] == site.indent
    assert site.text.split("\n")[: site.line] == lines[: site.line]


def test_replay_never_shows_the_server_the_line_being_typed(tmp_path):
    """While a site is typed the other files are open whole, the site's own file never is (its whole
    text holds the blanked line: retrieval would find the answer), and each site's document is closed."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(SHORT_FILE)
    b.write_text(SHORT_FILE.replace("def ", "def other_"))
    sites = typing_replay.pick_sites(a, 1) + typing_replay.pick_sites(b, 1)

    class Recorder(typing_replay.System):
        def __init__(self) -> None:
            self.docs: dict[str, str] = {}
            self.seen: list[set[str]] = []  # per request: the texts of the other open documents

        async def open(self, uri, text, language):
            self.docs[uri] = text

        async def insert(self, uri, line, col, text):
            pass

        async def close(self, uri):
            del self.docs[uri]

        async def suggest(self, uri, line, col):
            self.seen.append({t for u, t in self.docs.items() if u != uri})
            return None, {}

    system = Recorder()
    typist = typing_replay.Typist(every_key=True, debounce_ms=0, char_ms=0, pause_ms=0, read_ms=0)
    asyncio.run(typing_replay.replay_all(system, sites, typist, progress=lambda _: None))
    assert len(system.seen) >= 2
    # a's site saw b whole and not a; b's site saw a whole and not b; nothing left open but the neighbours
    first, last = system.seen[0], system.seen[-1]
    assert b.read_text() in first and a.read_text() not in first
    assert a.read_text() in last and b.read_text() not in last
    assert not any(u.startswith("file:///replay/0/") or u.startswith("file:///replay/1/") for u in system.docs)


def test_typist_requests_only_at_pauses_when_debounced():
    t = typing_replay.Typist(every_key=False, debounce_ms=150)
    gaps = [t.gap_after(c) for c in "ab c"]
    assert gaps == [80, 80, 400, 80]
    assert [t.requests_at(g) for g in gaps] == [False, False, True, False]
    assert all(typing_replay.Typist(every_key=True, debounce_ms=0).requests_at(g) for g in gaps)


@pytest.mark.skipif(device_problem("cuda", "none") is None, reason="CUDA is available here")
@pytest.mark.parametrize("module", ["quality", "typing_replay"])
def test_gpu_mode_refuses_cleanly_without_cuda(module):
    proc = bench(module, "--device", "cuda", "--dtype", "bfloat16", timeout=120)
    assert proc.returncode == 2
    assert "CUDA" in proc.stderr and "Traceback" not in proc.stderr


def test_hole_at_column_0_leaves_the_indentation_to_the_suggestion():
    task = {"prompt": "def f(x):\n", "suffix": "    return y\n", "canonical_solution": "    y = x + 1\n",
            "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    hole = quality.make_hole(task, "col0")
    assert hole.text[:hole.offset] == "def f(x):\n"
    assert quality.canonical_middle(task, hole) == "    y = x + 1"
    assert quality.same_code(hole.document("    y = x + 1"), quality.make_hole(task).document("y = x + 1"))


def test_lsp_positions_and_items_apply_like_an_editor():
    text = "a = '\U0001F600'\nb = 1\n"
    assert utf16_position(text, text.index("\n")) == (0, 8)  # the emoji is two UTF-16 units
    assert utf16_offset(text, 0, 8) == text.index("\n")
    assert utf16_offset(text, 1, 99) == len(text) - 1  # past the line's end: its end
    doc = "foo(|)\n".replace("|", "")
    # A plain insert, and an item whose range replaces the auto-closed bracket it closes itself.
    assert apply_item(doc, 4, {"text": "x", "range": None}) == "foo(x)\n"
    assert apply_item(doc, 4, {"text": "x)", "range": ((0, 4), (0, 5))}) == "foo(x)\n"
    assert apply_item(doc, 4, None) == doc


def test_the_readmes_tables_are_what_the_results_files_say():
    """benchmarks/README.md's tables and the README's headline table are generated from the results files
    (`python -m benchmarks.report`); a table typed over, or a results file changed without them, fails."""
    proc = bench("report", "--check", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_report_check_sees_a_changed_figure_and_an_unknown_table(tmp_path):
    doc = tmp_path / "README.md"
    good = f"x\n<!-- report: runners -->\n{report.render('runners', tmp_path)}<!-- end report -->\ny\n"
    doc.write_text(good)
    assert report.run(check=True, documents=(doc,)) == []
    doc.write_text(good.replace("37.5", "12.3", 1))  # a figure typed over
    assert any("runners" in p for p in report.run(check=True, documents=(doc,)))
    doc.write_text(good + "<!-- report: nowhere -->\n<!-- end report -->\n")
    assert any("nowhere" in p for p in report.run(check=True, documents=(doc,)))
    report.run(check=False, documents=(doc,))  # rewriting fixes what can be rendered
    assert doc.read_text().startswith(good)
    # every registered table renders, and names the results file it came from
    for name, table in report.TABLES.items():
        assert report.path_of(table.file).name in report.render(name), name


def test_headline_server_gets_no_flags_by_default():
    args = quality.build_parser().parse_args([])
    assert server_flags(args) == []
    args = typing_replay.build_parser().parse_args([])
    assert server_flags(args) == [] and args.read_ms == 2000
    assert typing_replay.SERVER_ARGS["default"] == [] and typing_replay.SERVER_ARGS["generic"] == []
    assert typing_replay.LABELS["plain"].startswith("ablation")


def test_quality_labels_every_non_default_configuration_as_an_ablation():
    args = quality.build_parser().parse_args([])
    args.cursors, args.llama = ["indent", "col0"], True
    configs = quality.config_list(args, ["strip_end"])
    kinds = {c.name: c.kind for c in configs}
    assert [c.name for c in configs if c.kind == "headline"] == ["lsp@indent", "lsp@col0"]
    assert kinds["llama@indent"] == "peer" and kinds["llama@col0"] == "peer"
    for c in configs:
        if c.kind == "ablation":
            assert c.label.startswith("ablation:"), c
    assert {"pipeline_budget0@indent", "pipeline_budget0@col0", "raw@col0", "no_strip_end@indent"} <= set(kinds)


def test_typist_reads_at_a_new_site_then_types():
    t = typing_replay.Typist(every_key=False, debounce_ms=150, read_ms=2000)
    assert t.first_gap == 2000 and t.requests_at(t.first_gap) and t.mode.startswith("read-2000ms")
    b2b = typing_replay.Typist(every_key=False, debounce_ms=150, read_ms=0)
    assert b2b.first_gap == 400 and b2b.mode.startswith("back-to-back")
    inf = float("inf")
    assert typing_replay._median_ms([300.0, inf, 500.0]) == 500.0
    assert typing_replay._median_ms([inf, inf, 100.0]) == inf  # most sites never got one: never


# -- the session benchmark's pure parts (no model) --------------------------------------------------------

SESSION_FILE = '''"""A module docstring
that spans lines."""
import math


def area(radius):
    """The area of a circle."""
    # a comment line that is long enough
    squared = radius * radius
    result = math.pi * squared
    return result


def perimeter(radius):
    doubled = 2 * radius
    value = math.pi * doubled
    return value


class Shape:
    def __init__(self, name, sides):
        self.name = name
        self.sides = sides

    def describe(self):
        text = f"{self.name} has {self.sides} sides"
        return text.upper()


def total(shapes):
    count = sum(s.sides for s in shapes)
    return count
'''


def test_session_places_are_code_lines_top_to_bottom_with_seeded_jumps(tmp_path):
    path = tmp_path / "shapes.py"
    path.write_text(SESSION_FILE)
    places = session.pick_places(path, 6, lines_per_place=3, seed=0)
    assert places == session.pick_places(path, 6, lines_per_place=3, seed=0)  # deterministic
    lines = SESSION_FILE.split("\n")
    is_code = session.code_lines(SESSION_FILE, "python")
    assert not any(is_code[i] for i in (0, 1, 6, 7)) and is_code[8]  # docstrings, a comment; code
    assert len(places) == 6 and len({p.line for p in places}) == 6
    for k, p in enumerate(places):
        assert is_code[p.line] and lines[p.line].strip() and not lines[p.line].strip().startswith("#")
        assert all(is_code[p.line + i] for i in range(p.n_lines)) and 1 <= p.n_lines <= 3
        assert p.mode == ("newline" if k % 2 else "retype")
        assert not p.jump or k % 3 == 2  # jumps only every third visit
    sequential = [p.line for p in places if not p.jump]
    assert sequential == sorted(sequential)  # the others go top to bottom
    assert any(p.jump for p in places)


def test_session_schedule_and_accept_bookkeeping():
    person = session.Person(char_ms=80, pause_ms=400)
    # keys at read time, then 80 ms after a word character, 400 ms after another; last: the line's end
    assert session.key_schedule(person, "a(b", 2000) == [2000, 2080, 2480, 2560]
    # the first line is the rest: accepted; the next line too when it is the next real line
    acc = session.accept_match("c = 1\n    d = 2\n", "c = 1", ["    d = 2", "    e = 3"])
    assert acc is not None and acc.lines == 2 and acc.whole and acc.text == "c = 1\n    d = 2"
    assert acc.saved == len("c = 1") + len("d = 2")
    part = session.accept_match("c = 1\n    wrong", "c = 1", ["    d = 2"])
    assert part is not None and part.lines == 1 and not part.whole and part.text == "c = 1"
    assert part.suggestion_chars == len("c = 1") and part.saved == 5
    assert session.accept_match("c = 2", "c = 1", []) is None  # wrong: typed on
    assert session.accept_match("c", "c = 1", []) is None  # a start of the rest is not the rest
    assert session.accept_match("", "c = 1", []) is None and session.accept_match("x", "", []) is None
    over = session.accept_match("c = 1\n    d = 2", "c = 1", [])  # no more real lines at the place
    assert over is not None and over.lines == 1 and not over.whole


def test_session_cold_and_warm_arrivals_from_the_stats():
    before = {"prompt_tokens": 100, "reused_tokens": 90, "engine_calls": 1}
    warm = {"prompt_tokens": 400, "reused_tokens": 385, "engine_calls": 2}
    cold = {"prompt_tokens": 700, "reused_tokens": 90, "engine_calls": 2}
    assert session.request_prefill(before, warm) == (5, "prompt-reused")
    assert session.classify_arrival(5, "prompt-reused", True) == "warm"
    assert session.request_prefill(before, cold) == (600, "prompt-reused")
    assert session.classify_arrival(600, "prompt-reused", True) == "cold"
    # superseded before it answered: today's counters saw none of its prefill, yet it was not ready
    assert session.classify_arrival(0, "prompt-reused", False) == "cold"
    # the server's own request-time counter wins when it has one (cancelled prefill counted too)
    with_section = ({**before, "prefill": {"request_tokens": 50, "warm_tokens": 900}},
                    {**cold, "prefill": {"request_tokens": 58, "warm_tokens": 1500}})
    assert session.request_prefill(*with_section) == (8, "prefill.request_tokens")
    assert session.classify_arrival(8, "prefill.request_tokens", False) == "warm"
    assert session.classify_arrival(None, "n/a", True) == "unknown"
    assert session._warm(*with_section)[0] == 600
    assert session._warm(before, cold) == (None, None)  # no prefill section: n/a, not a failure
    assert session.request_prefill(None, cold) == (None, "n/a")
    assert session.source_of({"typed_through_hits": 1, "engine_calls": 0}) == "typed-through"
    assert session.source_of({"typed_through_hits": 0, "engine_calls": 1}) == "engine"


class ScriptedSide(session.Side):
    """Knows the real file: answers the rest of the line and the next real line once three characters
    of it are typed, nothing before; counts like codestral/stats. The plumbing, not a model."""

    name = "scripted"
    focus_supported = True

    def __init__(self, original: str) -> None:
        super().__init__()
        self.original = original.split("\n")
        self.docs: dict[str, str] = {}
        self.counters = {k: 0 for k in session.STAT_KEYS}
        self.accepts: list[tuple[bool, int]] = []
        self.focused: list[int] = []
        self.announced: set[int] = set()

    def open(self, uri, text, language):
        self.docs[uri] = text

    def edit(self, uri, start, end, text):
        doc = self.docs[uri]
        a, b = utf16_offset(doc, *start), utf16_offset(doc, *end)
        self.docs[uri] = doc[:a] + text + doc[b:]

    def close(self, uri):
        self.docs.pop(uri, None)

    def focus(self, uri, line, character):
        self.focused.append(line)

    def send(self, uri, line, character, req_id):
        fut = asyncio.get_running_loop().create_future()
        typed = self.docs[uri].split("\n")[line][:character] if uri in self.docs else ""
        real = self.original[line] if line < len(self.original) else ""
        self.counters["requests"] += 1
        item = None
        if len(typed.strip()) >= 3 and real.startswith(typed) and real != typed:
            nxt = self.original[line + 1] if line + 1 < len(self.original) else ""
            item = {"text": real[len(typed):] + "\n" + nxt, "range": None, "command": {"arguments": [req_id]}}
            self.counters["engine_calls"] += 1
            self.counters["prompt_tokens"] += 100
            self.counters["reused_tokens"] += 99
        fut.set_result((item, {}))
        if not typed.strip() and line not in self.announced:  # once per line: "a longer suggestion here"
            self.announced.add(line)
            asyncio.get_running_loop().call_later(0.005, self.announce, uri, line, character)
        return fut

    def announce(self, uri, line, character):
        self.updates.append({"textDocument": {"uri": uri}, "position": {"line": line, "character": character}})
        self.updated.set()

    def accepted(self, item, whole, length):
        self.accepts.append((whole, length))

    async def stats(self):
        return dict(self.counters)


def test_session_driver_plays_places_accepts_and_restores_the_file(tmp_path):
    path = tmp_path / "shapes.py"
    path.write_text(SESSION_FILE)
    places = session.pick_places(path, 3, lines_per_place=3)
    # Fast, but slow enough that an instant answer comes before the next key (the loop is closed).
    person = session.Person(idle_s=0.01, read_ms=20, char_ms=20, pause_ms=40, enter_ms=5, move_ms=5, focus_ms=10)
    side = ScriptedSide(SESSION_FILE)
    run = asyncio.run(session.run_session(side, {str(path): places}, person, progress=lambda _: None))
    assert [p["restored"] for p in run["places"]] == [True] * len(places)  # what was typed is the file again
    lines = [ln for p in run["places"] for ln in p["lines"]]
    assert all(ln["accept"] and ln["typed"] >= 3 for ln in lines)  # three keys, then the rest was accepted
    assert all(ln["typed"] + ln["saved"] == ln["chars"] for ln in lines)
    assert side.accepts and any(whole for whole, _ in side.accepts)  # whole items went through the command
    assert any(ln["trigger"] == "accept-enter" for ln in lines) or all(p["n_lines"] <= 2 for p in places)
    rows = run["requests"]
    assert rows[0]["trigger"] == "arrival" and {r["outcome"] for r in rows} <= {"shown", "empty", "superseded"}
    assert {r["source"] for r in rows} <= {"engine", "none"} and {r["outcome"] for r in rows} >= {"shown", "empty"}
    assert {e["kind"] for e in run["events"]} >= {"key", "accept", "focus"}
    assert any(r["trigger"] == "update" for r in rows)  # suggestionUpdated at the cursor: asked again
    summary = session.summarize(run, person)
    assert summary["places"] == len(places) and summary["key_superseded"] <= 2
    assert summary["chars_saved"] == sum(ln["saved"] for ln in lines) and summary["chars_saved_rate"] > 0.5
    assert summary["arrival_ms"]["n"] == len(places) and summary["prefill_warm_tokens"] is None
    # every arrival request answered (empty: nothing typed yet) and needed no prefill: warm
    assert [a["class"] for a in summary["arrivals"]] == ["warm"] * len(places)
    assert all(a["span_prefill_tokens"] >= 1 for a in summary["arrivals"])  # the accepted one prefilled 1


def test_session_quick_mode_and_defaults():
    args = session.resolve(session.build_parser().parse_args(["--quick"]))
    assert len(args.files) == 1 and args.places == 2 and args.idle_s == 2.0 and args.burst == 20
    full = session.resolve(session.build_parser().parse_args([]))
    assert [f.name for f in full.files] == ["statistics.py", "ipaddress.py"] and full.places == 10
    assert full.idle_s == 8 and full.burst == 200 and session.server_flags(full) == []
    person = session.make_person(full)
    assert person.read_ms == 2000 and person.cancel and person.char_ms == 80
    plan = session.make_plan(args)
    assert len(plan) == 1 and len(next(iter(plan.values()))) == 2


# -- end to end -------------------------------------------------------------------------------------------


def _tiny_flags(tiny: Path) -> list[str]:
    return ["--model", str(tiny), "--max-tokens", "8"]


def test_quality_drives_the_default_server_over_lsp_at_both_cursors(tmp_path, tiny_model_dir):
    out = tmp_path / "q.json"
    proc = bench("quality", "--limit", "2", *_tiny_flags(tiny_model_dir), "--no-ablations", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert summary["lsp@indent"]["kind"] == summary["lsp@col0"]["kind"] == "headline"
    assert {"pipeline_budget0@indent", "pipeline_budget0@col0", "raw@indent", "raw@col0", "no_second_opinions@indent",
            "canonical@indent", "canonical@col0", "empty@indent"} <= set(summary)
    assert summary["canonical@indent"]["pass@1"] == summary["canonical@col0"]["pass@1"] == 100.0
    assert all(s["n"] == 2 for s in summary.values())
    # The headline server got nothing but the model the test asked for: default options otherwise.
    assert result["phases"]["lsp"]["flags"] == _tiny_flags(tiny_model_dir)
    assert result["phases"]["lsp"]["server_stats"]["requests"] >= 4  # one per task and cursor (+ warm-up)
    for rec in result["tasks"]:
        for c in ("indent", "col0"):
            assert rec["answers"][f"lsp@{c}"]["latency_ms"] > 0
    assert "llama.cpp peer" in proc.stdout  # skipped, and saying why: the tiny model is no GGUF
    assert "target @indent" in proc.stdout and "pass@1" in proc.stdout
    assert "lsp@col0" in out.with_suffix(".txt").read_text()  # the printed table, kept next to the JSON


def test_quality_multi_line_set_through_lsp(tmp_path, tiny_model_dir):
    out = tmp_path / "qm.json"
    proc = bench("quality", "--multi-line", "--limit", "1", "--cursor", "indent", *_tiny_flags(tiny_model_dir),
                 "--no-ablations", "--out", str(out), "--no-plot")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())["summary"]
    assert {"lsp@indent", "pipeline_budget0@indent", "raw@indent", "raw_full@indent"} <= set(summary)
    assert "lsp@col0" not in summary and summary["canonical@indent"]["pass@1"] == 100.0


def test_typing_replay_drives_the_default_server_with_a_pause_at_the_site(tmp_path, tiny_model_dir):
    src = tmp_path / "short.py"
    src.write_text(SHORT_FILE)
    out = tmp_path / "r.json"
    # A fast typist who reads briefly: this checks the plumbing, not the numbers.
    proc = bench("typing_replay", "--files", str(src), "--sites", "1", "--systems", "default,generic,hf",
                 *_tiny_flags(tiny_model_dir), "--read-ms", "200", "--char-ms", "10", "--pause-ms", "60",
                 "--debounce-ms", "30", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert list(result["systems"]) == ["default", "generic", "hf"]
    assert result["typist"]["read_ms"] == 200
    for run in result["systems"].values():
        s = run["summary"]
        assert s["requests"] >= 1 and s["sites"] == 1
        assert s["latency_ms"]["p50"] is not None
        assert "site_first_suggestion_ms" in s and "chars_saved_rate" in s
        assert run["sites"][0]["requests"][0]["trigger"] == "arrival"
    default = result["systems"]["default"]
    assert default["args"] == _tiny_flags(tiny_model_dir) and default["client"] == "ours"
    assert result["systems"]["generic"]["client"] == "generic"
    assert default["summary"]["kv_reuse_ratio"] is not None and default["summary"]["updates_received"] is not None
    assert "site->1st sugg." in proc.stdout and "peak RSS" in proc.stdout
    assert "headline" in out.with_suffix(".txt").read_text()
    if importlib.util.find_spec("matplotlib"):
        assert out.with_name("r_cdf.png").is_file() and out.with_name("r_timeline.png").is_file()


def test_typing_replay_back_to_back_keeps_the_old_schedule(tmp_path, tiny_model_dir):
    src = tmp_path / "short.py"
    src.write_text(SHORT_FILE)
    out = tmp_path / "b.json"
    proc = bench("typing_replay", "--files", str(src), "--sites", "1", "--systems", "plain",
                 *_tiny_flags(tiny_model_dir), "--read-ms", "0", "--char-ms", "10", "--pause-ms", "60",
                 "--debounce-ms", "30", "--out", str(out), "--no-plot")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["typist"]["mode"].startswith("back-to-back")
    plain = result["systems"]["plain"]
    assert plain["args"][:5] == ["--no-kv-reuse", "--no-speculation", "--budget-ms", "0", "--model"]
    assert "ablation" in proc.stdout


needs_llama = pytest.mark.skipif(llama_problem() is not None, reason=f"llama.cpp peer: {llama_problem()}")


@pytest.mark.model
@needs_llama
def test_quality_llama_peer_on_the_embedded_gguf(tmp_path):
    out = tmp_path / "ql.json"
    proc = bench("quality", "--limit", "1", "--no-lsp", "--no-inprocess", "--max-tokens", "16", "--out", str(out),
                 "--no-plot")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"llama@indent", "llama@col0"} <= set(result["summary"]) and "lsp@indent" not in result["summary"]
    assert result["phases"]["llama"]["gguf"].endswith(".gguf")


@pytest.mark.model
@needs_llama
def test_typing_replay_llama_peer_on_the_embedded_gguf(tmp_path):
    src = tmp_path / "short.py"
    src.write_text(SHORT_FILE)
    out = tmp_path / "rl.json"
    proc = bench("typing_replay", "--files", str(src), "--sites", "1", "--systems", "llama", "--max-tokens", "16",
                 "--read-ms", "100", "--char-ms", "10", "--pause-ms", "60", "--debounce-ms", "30", "--out", str(out),
                 "--no-plot")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads(out.read_text())["systems"]["llama"]["summary"]
    assert s["requests"] >= 1 and (s["peak_rss_mib"] is None or s["peak_rss_mib"] > 100)


@pytest.mark.model
def test_quantization_compares_recipes_with_fp32(tmp_path):
    out = tmp_path / "quant.json"
    proc = bench("quantization", "--holes", "1", "--steps", "2", "--recipes", "fp32,int8-keep-down_proj",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["recipe"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"fp32", "int8-keep-down_proj"}
    assert results["fp32"]["same_as_fp32"] == 1 and results["int8-keep-down_proj"]["decode_ms_per_token"] > 0
    assert "first line = fp32's" in proc.stdout
