"""Helpers shared by the benchmarks: sampling, device flags, memory, percentiles, JSON, plots, and a
plain LSP client that drives the real server process over stdio as an editor would."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_MAX_TOKENS = 64  # the server's default max_tokens


def stride_indices(total: int, limit: int | None) -> list[int]:
    """`limit` indices spread evenly over range(total): the same subset on every run, no seed."""
    if limit is None or limit <= 0 or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device (GPU mode)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; cuda needs a CUDA torch and a GPU)")
    g.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="model dtype (auto: float32 on CPU, bfloat16 on CUDA)")
    g.add_argument("--quantize", choices=("none", "int8", "nf4"), default="none",
                   help="weight quantization: int8 (CPU/CUDA), nf4 (CUDA, bitsandbytes)")


def server_flags(args: argparse.Namespace) -> list[str]:
    """The flags a headline server gets: none, unless a model or device other than the defaults was asked
    for (`--model`, `--device`, `--dtype`, `--quantize`, `--max-tokens` of the benchmark's own command line)."""
    flags = []
    if getattr(args, "model", None):
        flags += ["--model", args.model]
    if args.device != "cpu":
        flags += ["--device", args.device]
    if args.dtype != "auto":
        flags += ["--dtype", args.dtype]
    if args.quantize != "none":
        flags += ["--quantize", args.quantize]
    if args.max_tokens != DEFAULT_MAX_TOKENS:
        flags += ["--max-tokens", str(args.max_tokens)]
    return flags


def device_problem(device: str, quantize: str) -> str | None:
    """Why the asked device cannot be used here (None: it can). Checked before anything loads."""
    wants_cuda = device == "cuda" or quantize == "nf4"
    if not wants_cuda:
        return None
    try:
        import torch
    except ImportError:
        return "--device cuda needs torch"
    if not torch.cuda.is_available():
        what = "--quantize nf4" if quantize == "nf4" and device != "cuda" else "--device cuda"
        return f"{what} was asked for but torch sees no CUDA device here; run without it (CPU) or on a GPU machine"
    if quantize in ("nf4", "int8") and device == "cuda":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return f"--quantize {quantize} on CUDA needs bitsandbytes: pip install 'codestral-ls[cuda]'"
    return None


def refuse_if_unusable(args: argparse.Namespace) -> None:
    problem = device_problem(args.device, args.quantize)
    if problem:
        sys.stderr.write(f"benchmark: error: {problem}\n")
        raise SystemExit(2)


def peak_rss_mib(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of a process, in MiB; None where /proc is not readable."""
    path = f"/proc/{pid or 'self'}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def load_average() -> float | None:
    """The 1-minute load average (how busy the shared machine was), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[i], 1)


def latency_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "mean": round(sum(values) / len(values), 1) if values else None,
            "max": round(max(values), 1) if values else None}


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count(), "git": git_state(), "code": code_location()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def code_location() -> str | None:
    """Where `codestral_ls.server` is imported from (a run may measure a snapshot via PYTHONPATH)."""
    import importlib.util

    spec = importlib.util.find_spec("codestral_ls.server")
    return str(Path(spec.origin).parent) if spec is not None and spec.origin else None


def git_state() -> str | None:
    """The commit measured, with "+dirty" when the work tree had changes (None outside a checkout)."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plots; pip install 'codestral-ls[bench]')")
        return None
    return plt


def save_figure(plt: Any, fig: Any, png: Path) -> Path:
    """Lay out `fig`, write it to `png` (folders made) and close it."""
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def fmt(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)


# -- a plain LSP client driving the real server over stdio ------------------------------------------------

UPDATED_NOTIFICATION = "codestral/suggestionUpdated"  # server → client: a longer suggestion at a position
FOCUS_NOTIFICATION = "codestral/didFocus"  # client → server: the cursor landed here (warm it up)
STATS_REQUEST = "codestral/stats"


def plain(obj: Any) -> Any:
    """A JSON value as plain dicts (pygls hands back attribute objects for methods it does not know)."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if hasattr(obj, "_asdict"):  # namedtuple
        return {k: plain(v) for k, v in obj._asdict().items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {k: plain(v) for k, v in vars(obj).items()}
    return obj


def utf16_position(text: str, offset: int) -> tuple[int, int]:
    """(line, character) of `offset` in LSP's default UTF-16 code units."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return line, len(text[start:offset].encode("utf-16-le")) // 2


def utf16_offset(text: str, line: int, character: int) -> int:
    """The offset of an LSP position (UTF-16 units; past the line's end means its end)."""
    start = 0
    for _ in range(line):
        nxt = text.find("\n", start)
        if nxt < 0:
            return len(text)
        start = nxt + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    units = 0
    for i in range(start, end):
        if units >= character:
            return i
        units += 2 if ord(text[i]) > 0xFFFF else 1
    return end


class LspServer:
    """The `codestral-ls` process with the given flags, and a client that talks to it as an editor would.

    `suggestion_updates=True` is one of our own editor clients: it opts in with the client capability
    `experimental.codestral.suggestionUpdates` and asks again when the server says a suggestion grew.
    Otherwise it is a generic LSP client (no experimental capabilities).
    """

    def __init__(self, flags: list[str], suggestion_updates: bool = False, folders: list[str] | None = None) -> None:
        self.flags = flags
        self.suggestion_updates = suggestion_updates
        self.folders = folders or []  # workspace folder URIs an editor sends (files are read only under them)
        self.client: Any = None
        self.init_result: Any = None
        self.updates: list[dict[str, Any]] = []  # suggestionUpdated params, in arrival order
        self.updated = asyncio.Event()
        self.stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self.versions: dict[str, int] = {}

    async def start(self, wait_for_model: bool = True) -> float:
        """Start, initialize, wait until the model is loaded; returns the seconds it took."""
        from lsprotocol import types
        from pygls.lsp.client import LanguageClient

        t0 = time.perf_counter()
        client = LanguageClient("codestral-ls-bench", "0")

        @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _create(params: Any) -> None:
            return None

        @client.feature(types.PROGRESS)
        def _progress(params: Any) -> None:
            return None

        @client.feature(types.WINDOW_SHOW_MESSAGE)
        def _show(params: Any) -> None:
            return None

        @client.feature(types.WINDOW_LOG_MESSAGE)
        def _log(params: Any) -> None:
            return None

        @client.feature(UPDATED_NOTIFICATION)
        def _updated(params: Any) -> None:
            self.updates.append({"t": time.perf_counter(), **(plain(params) or {})})
            self.updated.set()

        await client.start_io(sys.executable, "-m", "codestral_ls.server", *self.flags, cwd=str(ROOT),
                              env=dict(os.environ))
        self.client = client
        self._stderr_task = asyncio.ensure_future(self._drain())
        experimental = {"codestral": {"suggestionUpdates": True}} if self.suggestion_updates else None
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=["utf-16"]),
            window=types.WindowClientCapabilities(work_done_progress=True),
            experimental=experimental)
        folders = [types.WorkspaceFolder(uri=u, name=u.rsplit("/", 1)[-1]) for u in self.folders] or None
        self.init_result = await client.initialize_async(types.InitializeParams(
            capabilities=caps, process_id=os.getpid(), root_uri=self.folders[0] if self.folders else None,
            workspace_folders=folders))
        client.initialized(types.InitializedParams())
        while wait_for_model:  # the model loads after `initialized`; the first request must not be the load
            model = (await self.stats()).get("model") or {}
            if "error" in model:
                raise RuntimeError(f"server: the model did not load: {model['error']}")
            if model:
                break
            if client._server is not None and client._server.returncode is not None:
                raise RuntimeError(f"server exited ({client._server.returncode}): {self.log_tail()}")
            await asyncio.sleep(0.5)
        return time.perf_counter() - t0

    async def _drain(self, keep: int = 2**20) -> None:
        # The server logs to stderr: read it all the time, or a chatty server blocks on a full pipe.
        stream = self.client._server.stderr if self.client._server is not None else None
        echo = os.environ.get("CODESTRAL_BENCH_SERVER_LOG") == "1"
        while stream is not None and (chunk := await stream.read(65536)):
            self.stderr.extend(chunk)
            del self.stderr[:-keep]
            if echo:
                sys.stderr.write(chunk.decode("utf-8", "replace"))

    def log_tail(self, n: int = 2000) -> str:
        return self.stderr[-n:].decode("utf-8", "replace")

    def pid(self) -> int | None:
        return getattr(getattr(self.client, "_server", None), "pid", None)

    async def stats(self) -> dict[str, Any]:
        return plain(await self.client.protocol.send_request_async(STATS_REQUEST, {}))

    def open(self, uri: str, text: str, language: str = "python") -> None:
        from lsprotocol import types

        self.versions[uri] = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))

    def close(self, uri: str) -> None:
        from lsprotocol import types

        self.versions.pop(uri, None)
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    def insert(self, uri: str, line: int, character: int, text: str) -> None:
        from lsprotocol import types

        self.versions[uri] += 1
        pos = types.Position(line=line, character=character)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=pos, end=pos),
                                                                   text=text)]))

    def focus(self, uri: str, line: int, character: int) -> None:
        """Our clients' `codestral/didFocus`: the cursor landed at a new place (harmless if ignored)."""
        self.client.protocol.notify(FOCUS_NOTIFICATION, {"textDocument": {"uri": uri},
                                                         "position": {"line": line, "character": character}})

    async def inline(self, uri: str, line: int, character: int) -> dict[str, Any] | None:
        """One `textDocument/inlineCompletion`; the first item as {text, range}, None when empty."""
        from lsprotocol import types

        result = await self.client.text_document_inline_completion_async(types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
        items = (result if isinstance(result, list) else result.items) if result is not None else []
        if not items:
            return None
        item = items[0]
        text = item.insert_text if isinstance(item.insert_text, str) else getattr(item.insert_text, "value", "")
        r = item.range
        rng = None if r is None else ((r.start.line, r.start.character), (r.end.line, r.end.character))
        return {"text": text, "range": rng}

    async def stop(self) -> None:
        if self.client is None:
            return
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
        except Exception:  # a server that died already: nothing to shut down
            pass
        await self.client.stop()
        if self._stderr_task is not None:
            self._stderr_task.cancel()


def apply_item(text: str, offset: int, item: dict[str, Any] | None) -> str:
    """The document after accepting an inline completion item at `offset` (its range, if any, replaced)."""
    if item is None:
        return text
    if item.get("range") is None:
        start = end = offset
    else:
        (l0, c0), (l1, c1) = item["range"]
        start, end = utf16_offset(text, l0, c0), utf16_offset(text, l1, c1)
    return text[:start] + item["text"] + text[end:]


# -- llama.cpp, the peer -------------------------------------------------------------------------------


def llama_problem(model: str | None = None) -> str | None:
    """Why the llama.cpp peer cannot run here (None: it can): llama_cpp missing, or no GGUF for `model`."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return "llama_cpp is not importable (pip install 'codestral-ls[bench]')"
    if model and not model.endswith(".gguf"):
        return f"--model {model} is not a .gguf file"
    return None


def llama_gguf(model: str | None = None) -> str:
    """The GGUF llama.cpp loads: `model` when it is one, else the embedded model's (the server's default)."""
    if model:
        return model
    from codestral_ls.engine.models.embedded import gguf_path

    return str(gguf_path())


def llama_threads_wait_passively() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set, before llama.cpp loads: the server runs its own llama.cpp so
    (engine/models/runner_llamacpp.py), and on busy cores spinning threads decode many times slower."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def qwen_fim_prompt(prefix: str, suffix: str) -> str:
    """Qwen2.5-Coder's FIM prompt text (PSM), as llama.vim / llama-server's /infill build it."""
    return f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
