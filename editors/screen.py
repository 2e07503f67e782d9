"""Screen tests of the terminal clients, shared parts: an editor in a private tmux server, typed at
like a person (send-keys), read back with capture-pane (-e: with the colour escapes), and the
server's traffic seen through a wrapper that copies its stdin and stdout to files.

Used by editors/neovim/test/screen.py and editors/emacs/test-screen.py; no dependencies beyond
Python 3.8 and tmux.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ESC = re.compile(r"\x1b\[[0-9;:]*m")


def plain(text: str) -> str:
    """The screen text without colour escapes."""
    return ESC.sub("", text)


class Screen:
    """An editor running in a detached tmux session of its own (a private socket, no user config)."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str], width: int = 100,
                 height: int = 30) -> None:
        self.socket = f"codestral-screen-{os.getpid()}-{time.monotonic_ns()}"
        self.log: list[str] = []  # what the screen looked like, for the failure message
        self.env = env
        self._tmux("-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", str(height), "-c", str(cwd),
                   "--", "env", *[f"{k}={v}" for k, v in env.items()], *command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], check=True, capture_output=True,
                              text=True, timeout=20).stdout

    def keys(self, *keys: str) -> None:
        """Keys by tmux name (Escape, Tab, Enter, M-Right, C-x) or plain strings, as a person presses them."""
        for key in keys:
            self._tmux("send-keys", "-t", "0", key)
            time.sleep(0.15)

    def type(self, text: str, delay: float = 0.12) -> None:
        for ch in text:
            self._tmux("send-keys", "-t", "0", "-l", ch)
            time.sleep(delay)

    def capture(self, escapes: bool = False) -> str:
        return self._tmux("capture-pane", "-p", "-t", "0", *(["-e"] if escapes else []))

    def wait(self, what: str, cond: Callable[[str, str], Any], timeout: float, every: float = 0.25,
             each: Callable[[str, str], Any] | None = None) -> Any:
        """Capture every `every` s until cond(plain screen, screen with escapes) is truthy; `each` is
        called on every capture (to assert something holds all along). Returns cond's value."""
        end = time.monotonic() + timeout
        while True:
            raw = self.capture(escapes=True)
            text = plain(raw)
            if not self.log or self.log[-1] != text:
                self.log.append(text)
            if each:
                each(text, raw)
            value = cond(text, raw)
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; screen:\n{text}")
            time.sleep(every)

    def alive(self) -> bool:
        return subprocess.run(["tmux", "-L", self.socket, "has-session"], capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def have_tmux() -> bool:
    return shutil.which("tmux") is not None


def server_wrapper(folder: Path, server: str) -> tuple[Path, Path, Path]:
    """A script that runs `server`, copying what the editor sends to stdin.log and what the server
    answers to stdout.log. Returns (script, stdin log, stdout log)."""
    inp, out = folder / "stdin.log", folder / "stdout.log"
    script = folder / "codestral-ls"
    script.write_text("#!/bin/sh\n"
                      "# codestral-ls with its LSP traffic copied to files (screen tests)\n"
                      f'tee -a "{inp}" | "{server}" "$@" | tee -a "{out}"\n')
    script.chmod(0o755)
    return script, inp, out


def messages(log: Path) -> list[dict]:
    """The JSON-RPC messages in a stdio log (Content-Length framing)."""
    try:
        data = log.read_bytes()
    except FileNotFoundError:
        return []
    found, i = [], 0
    while True:
        head = data.find(b"Content-Length:", i)
        if head < 0:
            return found
        end = data.find(b"\r\n\r\n", head)
        if end < 0:
            return found
        length = int(data[head + 15:data.find(b"\r\n", head)].strip())
        body = data[end + 4:end + 4 + length]
        if len(body) < length:
            return found
        try:
            found.append(json.loads(body))
        except ValueError:
            pass
        i = end + 4 + length


def server_extensions(stdout_log: Path) -> dict:
    """`capabilities.experimental.codestral` of the server's InitializeResult ({} if not advertised)."""
    for m in messages(stdout_log):
        caps = (m.get("result") or {}).get("capabilities") if isinstance(m.get("result"), dict) else None
        if caps is not None:
            return ((caps.get("experimental") or {}).get("codestral") or {})
    return {}


def asked_uris(stdin_log: Path) -> list[str]:
    """The document of every textDocument/inlineCompletion request the editor sent."""
    return [m["params"]["textDocument"]["uri"] for m in messages(stdin_log)
            if m.get("method") == "textDocument/inlineCompletion"]


def _fg(state: str | None, code: str) -> str | None:
    """The foreground colour after the SGR escape `code`, from `state` (None: the default)."""
    params = code[2:-1].replace(":", ";").split(";")
    i = 0
    while i < len(params):
        p = params[i]
        if p in ("", "0", "39"):
            state = None
        elif p in ("38",) and i + 1 < len(params):
            n = 3 if params[i + 1] == "5" else 5
            state = ";".join(params[i:i + n])
            i += n - 1
        elif p in ("48", "58") and i + 1 < len(params):
            i += 2 if params[i + 1] == "5" else 4
        elif p.isdigit() and (30 <= int(p) <= 37 or 90 <= int(p) <= 97):
            state = p
        i += 1
    return state


def coloured(raw_line: str, fg: str | None) -> str:
    """The characters of a line (captured with escapes) drawn with foreground `fg`."""
    out, state, pos = [], None, 0
    for m in ESC.finditer(raw_line + "\x1b[m"):
        if state == fg:
            out.append(raw_line[pos:m.start()])
        state = _fg(state, m.group(0))
        pos = m.end()
    return "".join(out)


def next_word(text: str) -> str:
    """The first word of a suggestion as the clients' accept-word takes it: a line break with its
    indent, or blanks then a word or a run of symbols."""
    m = re.match(r"\r?\n[ \t]*|[ \t]*\w+|[ \t]*[^\w\s]+", text)
    return m.group(0) if m else text


def foreground_at(raw: str, text: str) -> tuple[str | None, str | None] | None:
    """On the screen captured with escapes, the foreground colour where `text` starts and where its
    line starts (None: the terminal's default), or None if `text` is not on the screen."""
    for line in raw.splitlines():
        if text not in plain(line):
            continue
        shown, fg, at, first = "", None, [], None
        pos = 0
        for m in ESC.finditer(line + "\x1b[m"):
            chunk = line[pos:m.start()] if m.start() <= len(line) else line[pos:]
            at.extend([fg] * len(chunk))
            shown += chunk
            fg = _fg(fg, m.group(0))
            pos = m.end()
        start = shown.find(text)
        first = next((c for ch, c in zip(shown, at, strict=False) if not ch.isspace()), None)
        return at[start], first
    return None


def readme_snippet(readme: Path, language: str, must: str, must_not: str | None = None) -> str:
    """The README's setup snippet, as printed there: the first ```language block holding `must`
    (and not `must_not`). The screen tests run it verbatim, as a new user would paste it."""
    for block in re.findall(rf"```{language}\n(.*?)```", readme.read_text(), re.S):
        if must in block and (must_not is None or must_not not in block):
            return block
    raise AssertionError(f"{readme} has no {language} snippet with {must}")
