"""How long a person waits for the first ghost text at a new line of a real file, per terminal
editor, measured on the screen: each editor in tmux, set up with its README's snippet, opens a
copy of Python's statistics.py, waits for the model, goes to the end of `T = reduce(_coerce,
types, int)` (in `_sum`), rests there, presses Enter and waits for text on the new line. The
server's traffic (screen.tap) splits the wait into: key to request, request to answer, answer to
screen.

    python3 editors/first_ghost.py [--rounds N] [--rest S] nvim=PATH emacs=PATH ...

Editors: nvim (0.12 or 0.7, the plugin picks the renderer) and emacs (Emacs + Eglot). Each
editor gets a fresh HOME / XDG folders; for Emacs with native compilation that would mean
compiling Eglot, xref and project.el in the background on every start, on the cores the model
needs (a user's ~/.emacs.d/eln-cache has them after the first start): `emacs` turns that deferred
compilation off, `emacs-fresh` keeps it, as a first start. Rounds alternate between the editors,
so a busy machine slows them alike; run it under `flock -x /tmp/cpu.lock` when the figures are
reported. CODESTRAL_LS names the server.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import screen  # noqa: E402

ANCHOR = "T = reduce(_coerce, types, int)"
BELOW = "return (T, total, count)"
TIMEOUT_S = 120.0


def _cache() -> str:
    return os.environ.get("CODESTRAL_LS_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codestral-ls")


def start(kind: str, binary: str, tmp: Path, work: Path, wrapper: Path, el_dir: Path) -> screen.Screen:
    """The editor in tmux on statistics.py, set up as its README says."""
    if kind == "nvim":
        plugin = HERE / "neovim"
        snippet = screen.readme_snippet(plugin / "README.md", "lua", "runtimepath:append")
        snippet = snippet.replace('"~/src/codestral-ls/editors/neovim"', json.dumps(str(plugin)))
        snippet = snippet.replace('"/path/to/codestral-ls"', json.dumps(str(wrapper)))
        snippet += "vim.o.laststatus = 2\nvim.o.statusline = \"%f %{v:lua.require'codestral'.statusline()}\"\n"
        (tmp / "init.lua").write_text(snippet)
        env = {"TERM": "tmux-256color", "XDG_CONFIG_HOME": str(tmp / "config"), "XDG_DATA_HOME": str(tmp / "data"),
               "XDG_STATE_HOME": str(tmp / "state"), "XDG_CACHE_HOME": str(tmp / "cache"),
               "CODESTRAL_LS_CACHE": _cache()}
        return screen.Screen([binary, "--clean", "-u", str(tmp / "init.lua"), "statistics.py"], cwd=work, env=env,
                             width=120, height=30)
    snippet = screen.readme_snippet(HERE / "emacs" / "README.md", "elisp", "(require 'codestral)", "use-package")
    snippet = snippet.replace('"~/src/codestral-ls/editors/emacs"', json.dumps(str(el_dir)))
    snippet = snippet.replace('"~/src/codestral-ls/.venv/bin/codestral-ls"', json.dumps(str(wrapper)))
    (tmp / "init.el").write_text(snippet)
    env = {"TERM": "xterm-256color", "HOME": str(tmp), "CODESTRAL_LS_CACHE": _cache()}
    # Before the snippet loads Eglot (see the module docstring); a no-op without native compilation.
    pre = [] if kind == "emacs-fresh" else ["--eval", "(setq native-comp-deferred-compilation nil)"]
    return screen.Screen([binary, "-Q", "-nw", *pre, "-l", str(tmp / "init.el"), "statistics.py"], cwd=work,
                         env=env, width=120, height=30)


def ghost_row(text: str) -> bool:
    """Text on the new line below ANCHOR, with BELOW pushed further down: the ghost is shown."""
    rows = text.splitlines()
    at = next((i for i, r in enumerate(rows) if ANCHOR in r), None)
    if at is None or at + 1 >= len(rows):
        return False
    below = next((i for i, r in enumerate(rows) if BELOW in r and i > at), None)
    return bool(rows[at + 1].strip()) and below is not None and below > at + 1


def dump(tmp: Path, zero: float) -> None:
    """The traffic around the measurement, times relative to the Enter key."""
    for t, d, m in screen.traffic(tmp):
        if t < zero - 15:
            continue
        what = m.get("method") or ("error" if "error" in m else "result")
        params = m.get("params") if "method" in m else m.get("error", m.get("result"))
        text = json.dumps(params)
        if what != "textDocument/didChange":
            text = text[:160]
        print(f"  {t - zero:+8.3f} {'->' if d == 'in' else '<-'} {m.get('id', '')!s:>4} {what} {text}")
    log = (tmp / "stderr.log").read_text(errors="replace").splitlines() if (tmp / "stderr.log").exists() else []
    print("  server log (last 30 lines):\n    " + "\n    ".join(log[-30:]))


def one(kind: str, binary: str, rest: float, show: bool = False, el_dir: Path = HERE / "emacs") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"codestral-first-ghost-{kind}-"))
    wrapper, _, _ = screen.server_wrapper(tmp, os.environ["CODESTRAL_LS"])
    work = tmp / "work"
    work.mkdir()
    source = Path(statistics.__file__).read_text()
    (work / "statistics.py").write_text(source)
    line = next(i for i, text in enumerate(source.splitlines(), 1) if ANCHOR in text)
    scr = start(kind, binary, tmp, work, wrapper, el_dir)
    try:
        end = time.monotonic() + TIMEOUT_S
        while not any(d == "out" and m.get("method") == "codestral/status" and (m.get("params") or {}).get("kind")
                      == "ready" for _, d, m in screen.traffic(tmp)):
            if time.monotonic() > end:
                raise AssertionError(f"{kind}: the model did not load")
            time.sleep(0.25)
        time.sleep(3)  # what the server does on its own after opening (warming the end) is over
        if kind == "nvim":
            scr.keys(f":{line}", "Enter", "A")
        else:
            scr.keys("M-g", "g")
            scr.type(str(line), delay=0.05)
            scr.keys("Enter", "C-e")
        time.sleep(rest)
        pressed = time.time()
        scr._tmux("send-keys", "-t", "0", "Enter")
        scr.wait("the ghost text at the new line", lambda text, raw: ghost_row(text), TIMEOUT_S, every=0.03)
        shown = time.time()
        if show:
            time.sleep(0.5)
            dump(tmp, pressed)
        asked = [(t, m) for t, d, m in screen.traffic(tmp) if d == "in" and t >= pressed
                 and m.get("method") == "textDocument/inlineCompletion"]
        answered = {m.get("id"): t for t, d, m in screen.traffic(tmp) if d == "out" and "id" in m and "method" not in m}
        # The request that was answered with the ghost: the last one sent before it was shown.
        last = [(t, m) for t, m in asked if t <= shown and m["id"] in answered]
        sent, msg = last[-1] if last else (float("nan"), {"id": None, "params": {}})
        return {"editor": kind, "ghost_s": shown - pressed, "requests": len(asked),
                "first_request_s": asked[0][0] - pressed if asked else float("nan"),
                "request_s": sent - pressed, "server_s": answered.get(msg["id"], float("nan")) - sent,
                "draw_s": shown - answered.get(msg["id"], float("nan")),
                "position": msg["params"].get("position"),
                "changes": sum(1 for t, d, m in screen.traffic(tmp) if d == "in" and t >= pressed and t <= shown
                               and m.get("method") == "textDocument/didChange")}
    finally:
        scr.close()
        subprocess.run(["rm", "-rf", str(tmp)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("editors", nargs="+", help="nvim=PATH, emacs=PATH or emacs-fresh=PATH; an emacs may be "
                        "followed by @DIR: codestral.el from DIR (to compare two versions in one run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rest", type=float, default=2.0, help="seconds at the line end before Enter")
    parser.add_argument("--traffic", action="store_true", help="print the LSP traffic of each round")
    args = parser.parse_args()
    editors = []
    for spec in args.editors:
        kind, _, binary = spec.partition("=")
        binary, _, el = binary.partition("@")
        if kind not in ("nvim", "emacs", "emacs-fresh") or not binary:
            parser.error(f"not nvim=PATH, emacs=PATH or emacs-fresh=PATH: {spec}")
        binary = shutil.which(binary) or binary  # the editor runs in another folder
        binary = str(Path(binary).resolve()) if "/" in binary else binary
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        label = re.sub(r"\s+", " ", version) + (" (fresh)" if kind == "emacs-fresh" else "")
        label += f" ({el})" if el else ""
        editors.append((kind, binary, label, Path(el).resolve() if el else HERE / "emacs"))
    results: dict[str, list[dict]] = {v: [] for _, _, v, _ in editors}
    for r in range(args.rounds):
        for kind, binary, version, el_dir in editors:
            res = one(kind, binary, args.rest, args.traffic, el_dir)
            results[version].append(res)
            print(f"round {r + 1} {version}: ghost {res['ghost_s']:.2f} s (key->request {res['request_s']:.2f}, "
                  f"server {res['server_s']:.2f}, answer->screen {res['draw_s']:.2f}; {res['requests']} requests, "
                  f"{res['changes']} didChange, at {res['position']})", flush=True)
    for version, rs in results.items():
        print(f"{version}: first ghost median {statistics.median(x['ghost_s'] for x in rs):.2f} s over {len(rs)} "
              f"({', '.join(format(x['ghost_s'], '.2f') for x in rs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
