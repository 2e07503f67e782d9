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
import sys
import threading
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


def server_wrapper(folder: Path, server: str, name: str = "codestral-ls") -> tuple[Path, Path, Path]:
    """A script `name` that runs `server` through `tap` (below): what the editor sends is copied to
    stdin.log, what the server answers to stdout.log, and every message with its time to
    traffic.jsonl (read with `traffic`). Returns (script, stdin log, stdout log)."""
    inp, out = folder / "stdin.log", folder / "stdout.log"
    script = folder / name
    script.write_text("#!/bin/sh\n"
                      "# codestral-ls with its LSP traffic copied to files (screen tests)\n"
                      f'exec "{sys.executable}" "{Path(__file__).resolve()}" tap "{folder}" "{server}" "$@"\n')
    script.chmod(0o755)
    return script, inp, out


def _frames(buffer: bytearray) -> list[dict]:
    """Takes the complete JSON-RPC messages off the front of `buffer`."""
    found = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        head = buffer.find(b"Content-Length:")
        if end < 0 or head < 0 or head > end:
            return found
        length = int(buffer[head + 15:buffer.find(b"\r\n", head)].strip())
        if len(buffer) < end + 4 + length:
            return found
        body = bytes(buffer[end + 4:end + 4 + length])
        del buffer[:end + 4 + length]
        try:
            found.append(json.loads(body))
        except ValueError:
            pass


def tap(folder: Path, command: list[str]) -> int:
    """Runs `command` (the server) with its stdio passed through, copying it to stdin.log /
    stdout.log / stderr.log and each message, timed (time.time()), to traffic.jsonl."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)
    lock = threading.Lock()
    timed = open(folder / "traffic.jsonl", "a", buffering=1)  # noqa: SIM115 (closed at exit)

    def pump(src: int, dst: int, log: Path, direction: str) -> None:
        pending = bytearray()
        with open(log, "ab", buffering=0) as copy:
            while True:
                try:
                    data = os.read(src, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                now = time.time()
                # Logged before it is passed on: what an editor shows of a message is in the log.
                copy.write(data)
                if direction != "err":
                    pending.extend(data)
                    with lock:
                        for m in _frames(pending):
                            timed.write(json.dumps({"t": now, "dir": direction, "msg": m}) + "\n")
                try:
                    os.write(dst, data)
                except OSError:
                    break
        if direction == "in":
            os.close(dst)

    assert proc.stdin and proc.stdout and proc.stderr
    threads = [threading.Thread(target=pump, args=(0, proc.stdin.fileno(), folder / "stdin.log", "in"), daemon=True),
               threading.Thread(target=pump, args=(proc.stdout.fileno(), 1, folder / "stdout.log", "out"),
                                daemon=True),
               threading.Thread(target=pump, args=(proc.stderr.fileno(), 2, folder / "stderr.log", "err"),
                                daemon=True)]
    for t in threads:
        t.start()
    code = proc.wait()
    threads[1].join(5)
    return code


def traffic(folder: Path) -> list[tuple[float, str, dict]]:
    """(time, "in" or "out", message) for each message through `tap`: "in" from the editor."""
    try:
        lines = (folder / "traffic.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue  # a line being written
        found.append((d["t"], d["dir"], d["msg"]))
    return found


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


ATTRIBUTES = {"1": "bold", "3": "italic", "4": "underline", "7": "reverse"}
RESETS = {"22": "bold", "23": "italic", "24": "underline", "27": "reverse"}


def _attrs(state: frozenset[str], code: str) -> frozenset[str]:
    """The attributes (bold, italic, underline, reverse) after the SGR escape `code`."""
    out = set(state)
    params = code[2:-1].replace(":", ";").split(";")
    i = 0
    while i < len(params):
        p = params[i]
        if p in ("", "0"):
            out.clear()
        elif p in ("38", "48", "58") and i + 1 < len(params):
            i += 2 if params[i + 1] == "5" else 4
        elif p in ATTRIBUTES:
            out.add(ATTRIBUTES[p])
        elif p in RESETS:
            out.discard(RESETS[p])
        i += 1
    return frozenset(out)


def styles(raw: str, text: str) -> list[tuple[str | None, frozenset[str]]] | None:
    """On the screen captured with escapes, the foreground colour and the attributes (bold,
    underline, ...) of each character of the first occurrence of `text`, or None if `text` is not
    on the screen."""
    for line in raw.splitlines():
        if text not in plain(line):
            continue
        shown, found = "", []
        fg, attrs, pos = None, frozenset(), 0
        for m in ESC.finditer(line + "\x1b[m"):
            chunk = line[pos:m.start()]
            found.extend([(fg, attrs)] * len(chunk))
            shown += chunk
            fg, attrs = _fg(fg, m.group(0)), _attrs(attrs, m.group(0))
            pos = m.end()
        start = shown.find(text)
        return found[start:start + len(text)]
    return None


def documented(readme: Path, shown: str) -> bool:
    """Whether the status text `shown` (as seen on the screen) is quoted in `readme` between
    backticks, any number standing for any number (`codestral: 180 ms` documents `codestral: 95 ms`)."""
    for quote in re.findall(r"`([^`\n]+)`", readme.read_text()):
        pattern = "".join(r"\d+" if part.isdigit() else re.escape(part) for part in re.split(r"(\d+)", quote))
        if re.fullmatch(pattern, shown.strip()):
            return True
    return False


def readme_snippet(readme: Path, language: str, must: str, must_not: str | None = None) -> str:
    """The README's setup snippet, as printed there: the first ```language block holding `must`
    (and not `must_not`). The screen tests run it verbatim, as a new user would paste it."""
    for block in re.findall(rf"```{language}\n(.*?)```", readme.read_text(), re.S):
        if must in block and (must_not is None or must_not not in block):
            return block
    raise AssertionError(f"{readme} has no {language} snippet with {must}")


if __name__ == "__main__" and len(sys.argv) > 3 and sys.argv[1] == "tap":
    sys.exit(tap(Path(sys.argv[2]), sys.argv[3:]))
