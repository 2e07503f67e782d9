"""Screen test of codestral.el: `emacs -Q -nw` in tmux set up with the README's snippet verbatim
(paths filled in), three Python buffers open, keys sent like a person, the screen captured with
its colours.

    python3 test-screen.py       # CODESTRAL_LS names the server, EMACS the binary

The server runs behind a script called `lsp-server` (a user's wrapper, say). Checks what a
person sees: the model loading and the latency on the mode line (the lighter); the
ghost text in `reduce(lambda a, b: |, xs)` appearing without hiding the `, xs)` after the cursor,
in a colour of its own on a 256-colour terminal; M-f taking its first word and the rest staying on
screen; TAB putting exactly that text in the file; and in
the server's traffic: requests for the current buffer only, and a new request right after the
accept with no key pressed.

Then as in the issue's report: RET after the accepted line, and while that request is in flight
`x = max()` typed and <left> (C-b): the request in flight is cancelled, a new one goes out at the
cursor between the brackets with no other key, the lighter does not stay at `Codestral[…]` with
nothing in flight, `codestral/didFocus` tells the server once that the cursor rests on the new
line (not on each key there), and Eglot's mode-line part never shows `error` (the server's reply to the
cancelled request is no error). Every lighter seen is one the README quotes. Saving sends no
textDocument/didSave to a server that declares `save: false` (Eglot 1.9 would send it anyway), and
the server's log never says it got an unknown method. The screen is 200
columns wide, so that Eglot's `[eglot:...]` is on it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import screen  # noqa: E402  (editors/screen.py)

TIMEOUT_S = float(os.environ.get("CODESTRAL_TIMEOUT", "120"))
LINE = "total = reduce(lambda a, b:, xs)"
HEAD = f"from functools import reduce\nxs = [1, 2, 3]\n{LINE}\n"
# Code below the cursor, so that a request at a new line has a suffix to prefill (about a second
# on 2 cores) and is still in flight when the next one goes out: the next one cancels it.
BELOW = "".join(f"\n\ndef scale_{i}(values, factor={i}):\n    return [v * factor for v in values]\n"
                for i in range(40))
SOURCE = HEAD + BELOW
REDUCE = re.compile(r"reduce\(lambda a, b: (.*)$")


Check = Callable[[object, str], None]
Watch = Callable[[str, str], None]


def inline_requests(folder: Path) -> list[tuple[float, dict]]:
    return [(t, m) for t, d, m in screen.traffic(folder) if d == "in" and m.get("method") ==
            "textDocument/inlineCompletion"]


def answered(folder: Path) -> set:
    return {m["id"] for _, d, m in screen.traffic(folder) if d == "out" and "id" in m and "method" not in m}


def moved(scr: screen.Screen, folder: Path, accepted: str, check: Check, watch: Watch) -> None:
    """RET after the accepted line; while that request runs, `x = max()` and C-b."""
    line = HEAD.count("\n") + accepted.count("\n")  # 0-based: the new line after the accepted one
    scr.keys("C-e")
    before = len(inline_requests(folder))
    t_ret = time.time()
    scr.keys("Enter")
    first = None
    try:
        # The request at the new line's start; type while it is in flight.
        first = scr.wait("a request at the new line", lambda text, raw: next(
            (m for _, m in inline_requests(folder)[before:] if m["params"]["position"]["line"] == line), None),
            10, every=0.01)
    except AssertionError:
        check(False, "no request after RET")
    scr.type("x = max()", delay=0.06)
    t0 = time.time()
    scr.keys("C-b")

    def asked_here(text: str, raw: str):
        return next((m for t, m in inline_requests(folder) if t >= t0 and m["params"]["position"]
                     == {"line": line, "character": 8}), None)
    try:
        request = scr.wait("a request between the brackets", asked_here, 10, each=watch)
        print(f"screen: C-b into max() asked at {request['params']['position']}", flush=True)
        scr.wait("its answer", lambda text, raw: request["id"] in answered(folder), TIMEOUT_S, each=watch)
    except AssertionError:
        check(False, f"C-b into `x = max()` sent no request at ({line}, 8): "
              f"{[m['params']['position'] for t, m in inline_requests(folder) if t >= t0]}")
    # The request at the line start was still running when that one went out: it was cancelled,
    # and the server's RequestCancelled reply came while the new one was pending (`error/1`).
    if first:
        replies = [m for _, d, m in screen.traffic(folder) if d == "out" and m.get("id") == first["id"]
                   and "method" not in m]
        cancel = any(d == "in" and m.get("method") == "$/cancelRequest" and m["params"]["id"] == first["id"]
                     for _, d, m in screen.traffic(folder))
        print(f"screen: the request at the line start: {'cancelled' if cancel else 'not cancelled'}, "
              f"replied {[r.get('error', {}).get('message') or 'a result' for r in replies]}", flush=True)
        if not (cancel and replies and "error" in replies[0]):
            print("screen: NOTE: it was answered before the next request: the cancel path is not on screen",
                  flush=True)
    # Nothing in flight now: the lighter must say so within a redisplay or two.
    try:
        scr.wait("the lighter to leave […]", lambda text, raw: "Codestral[…]" not in text, 2, each=watch)
    except AssertionError:
        pending = [m["id"] for _, m in inline_requests(folder) if m["id"] not in answered(folder)]
        check(False, f"the lighter stays at Codestral[…]; requests without an answer: {pending}")
    # A ghost between the brackets, if any, goes in with TAB.
    shown = next((x.strip() for x in scr.capture().splitlines() if x.startswith("x = max(")), "")
    if shown not in ("", "x = max()"):
        scr.keys("Tab")
        try:
            scr.wait("the accepted ghost", lambda text, raw: any(
                x.rstrip() == shown for x in text.splitlines()), 5, each=watch)
            print(f"screen: TAB inside max() gave {shown!r}", flush=True)
        except AssertionError:
            check(False, f"TAB inside max() did not give {shown!r}")
    # Eglot's mode line stays free of errors for a while (each capture is checked by `watch`).
    end = time.monotonic() + 2
    scr.wait("two more seconds", lambda text, raw: time.monotonic() > end, 5, each=watch)
    # Where the cursor rested, the server was told once: on the new line, not on each key there.
    focus = [m["params"]["position"] for t, d, m in screen.traffic(folder) if d == "in" and t >= t_ret
             and m.get("method") == "codestral/didFocus"]
    print(f"screen: codestral/didFocus since RET: {focus}", flush=True)
    check([p["line"] for p in focus] == [line], f"codestral/didFocus since RET: {focus}, expected one on line {line}")


def main() -> int:
    emacs = os.environ.get("EMACS", "emacs")
    version = subprocess.run([emacs, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    # The server behind a script whose path does not say "codestral", as a user's wrapper may be:
    # codestral.el must still opt in to the server's extensions (load progress, status, didFocus).
    tmp = Path(tempfile.mkdtemp(prefix="emacs-screen-"))
    wrapper, stdin_log, stdout_log = screen.server_wrapper(tmp, os.environ["CODESTRAL_LS"], name="lsp-server")
    work = tmp / "work"
    work.mkdir()
    (work / "total.py").write_text(SOURCE)
    (work / "one.py").write_text("def one():\n    return 1\n")
    (work / "two.py").write_text("def two():\n    return 2\n")
    snippet = screen.readme_snippet(HERE / "README.md", "elisp", "(require 'codestral)", "use-package")
    snippet = snippet.replace('"~/src/codestral-ls/editors/emacs"', f'"{os.environ.get("CODESTRAL_EL_DIR", HERE)}"')
    snippet = snippet.replace('"~/src/codestral-ls/.venv/bin/codestral-ls"', f'"{wrapper}"')
    (tmp / "init.el").write_text(snippet)
    env = {"TERM": "xterm-256color", "HOME": str(tmp)}
    cache = os.environ.get("CODESTRAL_LS_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codestral-ls")
    env["CODESTRAL_LS_CACHE"] = cache  # HOME moves: keep the user's converted model
    # HOME is new on each run: Emacs with native compilation would compile Eglot and ~70 of its own
    # libraries in the background for minutes, on the cores the model needs (a user's eln-cache has
    # them after the first start), and pop up a *Warnings* window over the test.
    scr = screen.Screen([emacs, "-Q", "-nw", "--eval", "(setq native-comp-deferred-compilation nil)",
                         "-l", str(tmp / "init.el"), "--eval",
                         '(progn (find-file "one.py") (find-file "two.py") (find-file "total.py"))'],
                        cwd=work, env=env, width=200)
    print(f"screen: {version}", flush=True)
    failures: list[str] = []
    lighters: list[str] = []
    eglot_seen: list[str] = []

    def check(ok: object, message: str) -> None:
        if not ok and message not in failures:
            failures.append(message)
            print(f"screen: FAILED CHECK: {message}", flush=True)

    def watch(text: str, raw: str) -> None:
        lighters.extend(re.findall(r"Codestral(?:\[[^\]]*\])?", text))
        for segment in re.findall(r"\[eglot:[^\]]*\]", text):
            eglot_seen.append(segment)
            check("error" not in segment, f"Eglot's mode line shows an error: {segment}")
        for line in text.splitlines():
            m = REDUCE.search(line)
            if m:  # the `, xs)` after the cursor stays on screen
                check(", xs)" in m.group(1), f"the code after the cursor is hidden: {line.strip()!r}")

    try:
        t0 = time.monotonic()
        try:
            scr.wait("the server to start", lambda text, raw: "Codestral" in text, TIMEOUT_S, each=watch)
            scr.wait("the model to load", lambda text, raw: re.search(r"Codestral\[\d+ms\]", text) or (
                any("loading" in x for x in lighters) and "Codestral" in text and "loading" not in text),
                TIMEOUT_S, each=watch)
            print(f"screen: model ready after {time.monotonic() - t0:.1f} s", flush=True)
        except AssertionError as exc:
            check(False, f"no model load on screen: {exc}")
        check(any("loading" in x for x in lighters), f"the mode line never said the model was loading: {set(lighters)}")

        # To the line, before `, xs)`, and type a space (the ghost text follows an edit).
        scr.keys("M-<", "C-n", "C-n", "C-e", "C-b", "C-b", "C-b", "C-b", "C-b")
        scr.type(" ")
        t0 = time.monotonic()

        def ghost(text: str, raw: str):
            for line in raw.splitlines():
                m = REDUCE.search(screen.plain(line))
                if m and not m.group(1).startswith(", xs)"):
                    return m.group(1), line
            return None

        shown, raw_line = scr.wait("the ghost text", ghost, TIMEOUT_S, each=watch)
        print(f"screen: ghost text after {time.monotonic() - t0:.1f} s: {shown!r}", flush=True)
        body = shown.rstrip()
        suggestion = body[:body.rindex(", xs)")] if ", xs)" in body else body
        check(suggestion, f"no suggestion between the code: {shown!r}")
        ghost_fg, _ = screen.foreground_at(raw_line, suggestion)
        typed_fg, _ = screen.foreground_at(raw_line, "lambda")
        print(f"screen: suggestion {suggestion!r} drawn with fg {ghost_fg}, code with fg {typed_fg}", flush=True)
        check(ghost_fg is not None and ghost_fg != typed_fg,
              f"the ghost text is drawn like code (fg {ghost_fg}): {raw_line!r}")

        # M-f takes the first word; the rest stays on screen in the ghost colour, no key pressed.
        word = screen.next_word(suggestion)
        rest = suggestion[len(word):]
        if rest.strip() and ghost_fg is not None:
            scr.keys("M-f")

            def rest_shown(text: str, raw: str):
                for line in raw.splitlines():
                    if f"lambda a, b: {word}" in screen.plain(line) and \
                            screen.coloured(line, ghost_fg).strip() == rest.strip():
                        return line
                return None
            try:
                line = scr.wait("the rest after M-f", rest_shown, 10, each=watch)
                print(f"screen: after M-f the rest {rest!r} is shown: {screen.plain(line).strip()!r}", flush=True)
            except AssertionError:
                check(False, f"after M-f the rest {rest!r} is not shown as ghost text")

        asked_before = len(screen.asked_uris(stdin_log))
        scr.keys("Tab")
        expected = f"total = reduce(lambda a, b: {suggestion}, xs)"
        try:
            scr.wait("the accepted line", lambda text, raw: expected in text, 10, each=watch)
        except AssertionError:
            check(False, f"after TAB the screen does not show {expected!r}")
        # Asked again after the accept, with no key pressed.
        try:
            scr.wait("a request after the accept", lambda text, raw: len(screen.asked_uris(stdin_log)) > asked_before,
                     5)
        except AssertionError:
            check(False, "no new request after the accept until a key is pressed")
        lat = [x for x in lighters if re.match(r"Codestral\[\d+ms\]", x)]
        print(f"screen: mode line lighters seen: {sorted(set(lighters))}", flush=True)
        check(lat, "the mode line never showed a latency")
        scr.keys("C-x", "C-s")
        scr.wait("the file saved", lambda text, raw: "Wrote" in text, 10)
        line3 = (work / "total.py").read_text().splitlines()[2]
        check(line3 == expected, f"line 3 of the file is {line3!r}, the screen showed {expected!r}")
        print(f"screen: accepted: {line3!r}", flush=True)

        moved(scr, tmp, expected, check, watch)
        print(f"screen: mode line lighters seen: {sorted(set(lighters))}", flush=True)
        for lighter in sorted(set(lighters)):
            check(screen.documented(HERE / "README.md", lighter), f"the lighter {lighter!r} is not in the README")
        check(eglot_seen, "Eglot's part of the mode line is not on the screen")

        # A save: sent only to a server that asks for it, and never an "unknown method" in its log.
        sync = next(((m["result"].get("capabilities") or {}).get("textDocumentSync") for _, d, m in
                     screen.traffic(tmp) if d == "out" and isinstance(m.get("result"), dict)
                     and "capabilities" in m["result"]), None)
        saves = [m for _, d, m in screen.traffic(tmp) if d == "in" and m.get("method") == "textDocument/didSave"]
        if isinstance(sync, dict) and sync.get("save") in (False, None):
            check(not saves, f"{len(saves)} textDocument/didSave sent, though the server declares save: false")
        log = (tmp / "stderr.log").read_text(errors="replace") if (tmp / "stderr.log").exists() else ""
        unknown = sorted(set(re.findall(r"[Uu]nknown method '?([\w/$]+)", log)))
        check(not unknown, f"the server's log says it got unknown methods: {unknown}")
        print(f"screen: on save: textDocumentSync.save {sync.get('save') if isinstance(sync, dict) else sync!r}, "
              f"{len(saves)} didSave, unknown methods in the server's log: {unknown}", flush=True)

        uris = screen.asked_uris(stdin_log)
        others = [u for u in uris if not u.endswith("/total.py")]
        print(f"screen: {len(uris)} inline requests, {len(others)} for other buffers", flush=True)
        check(uris, "no textDocument/inlineCompletion request reached the server")
        check(not others, f"requests for buffers that are not current: {sorted(set(others))}")
        assert not failures, "; ".join(failures)
        print(f"screen: PASS ({version}; server extensions {screen.server_extensions(stdout_log) or 'none'})",
              flush=True)
        return 0
    except AssertionError as exc:
        print(f"screen: FAIL: {exc}", flush=True)
        print("screen: last screens:\n" + "\n----\n".join(scr.log[-3:]), flush=True)
        return 1
    finally:
        scr.close()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    sys.exit(main())
