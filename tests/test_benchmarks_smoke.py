"""The benchmarks run end to end at tiny sizes, so they cannot rot; their helpers behave.

The LSP-driven paths (the headline: the real server process with default options over stdio) and the
in-process ablations run on the tiny random model of conftest.py: fast, and the plumbing is what is
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

from benchmarks import quality, typing_replay  # noqa: E402
from benchmarks.common import (  # noqa: E402
    apply_item,
    device_problem,
    llama_problem,
    server_flags,
    stride_indices,
    utf16_offset,
    utf16_position,
)

HAS_DATA = (quality.data_dir() / quality.SETS[False]).is_file()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="HumanEval infilling data not found (shared/data)")

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
    assert stride_indices(1033, 4) == stride_indices(1033, 4)
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


@needs_data
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


# -- end to end -------------------------------------------------------------------------------------------


def _tiny_flags(tiny: Path) -> list[str]:
    return ["--model", str(tiny), "--max-tokens", "8"]


@needs_data
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


@needs_data
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
@needs_data
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
@needs_data
def test_quantization_compares_recipes_with_fp32(tmp_path):
    out = tmp_path / "quant.json"
    proc = bench("quantization", "--holes", "1", "--steps", "2", "--recipes", "fp32,int8-keep-down_proj",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["recipe"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"fp32", "int8-keep-down_proj"}
    assert results["fp32"]["same_as_fp32"] == 1 and results["int8-keep-down_proj"]["decode_ms_per_token"] > 0
    assert "first line = fp32's" in proc.stdout
