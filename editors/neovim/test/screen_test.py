"""Screen test of the Neovim client: Neovim in tmux, set up with the README's snippet verbatim (paths
filled in), three buffers open, keys sent like a person, the screen captured with its colours.

    python3 test/screen.py NVIM      # CODESTRAL_LS names the server

Checks what a person sees: the model-load progress and the status item on the statusline; the
ghost text in `reduce((a, b) => |);` appearing without drawing over the `);` after the cursor, in a
colour of its own (no 'termguicolors': the 256-colour palette tmux gives); <Tab> putting exactly
that text in the file; and, in the server's traffic, only the current buffer asked, with
initializationOptions sent as a JSON object.

While the model loads, the message area says the percentage the statusline says (within 0.6 s).
Then, in a Python buffer, as a person meets them: `x = max()` and <Left> shows the ghost between
the brackets with the `)` right after it (not at the end of the line, as `eol` virtual text drew
it before Neovim 0.10), in the ghost's own colour with none of MatchParen's bold or underline;
typing the ghost's first characters never shows one twice at any 30 ms sample, and a key that
does not match leaves no stale ghost after it; `codestral/didFocus` tells the server once where the
cursor rests (not on each key); <Esc> while a request runs does not leave the
statusline at `codestral: …`. Every status text seen on the statusline and in
the message area is one the README quotes, and once the model is loaded the message area no
longer says it is loading.
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
PLUGIN = HERE.parent
sys.path.insert(0, str(PLUGIN.parent))
import screen  # noqa: E402  (editors/screen.py)

LOAD_TIMEOUT_S = float(os.environ.get("CODESTRAL_TIMEOUT", "120"))
LINE = "const total = xs.reduce((a, b) => );"
SOURCE = f"const xs = [1, 2, 3];\n{LINE}\nconsole.log(total);\n"
REDUCE = re.compile(r"xs\.reduce\(\(a, b\) => (.*)$")


MAX = "    x = max("
GHOST_FG = "38;5;244"  # CodestralGhost and ComplHint (the plugin gives it ctermfg=244), if not seen before
Check = Callable[[object, str], None]
Watch = Callable[[str, str], None]


def text_of(scr: screen.Screen) -> str:
    return scr.log[-1].rstrip().splitlines()[-1] if scr.log else ""


def statuses(log: list[str]) -> set[tuple[str, str]]:
    """The codestral texts seen: ("statusline", ...) after the file name, ("message area", ...) on
    the last line."""
    found = set()
    for text in log:
        lines = text.splitlines()  # all rows: the last is the message area, blank or not
        for line in lines[:-1]:
            m = re.search(r"\.(?:js|py) (codestral: .*?)\s*$", line)
            if m:
                found.add(("statusline", m.group(1)))
        if lines and lines[-1].startswith("codestral: "):
            found.add(("message area", lines[-1].strip()))
    return found


def max_line(text: str) -> str | None:
    return next((line.rstrip() for line in text.splitlines() if line.startswith(MAX)), None)


def answered_since(folder: Path, t0: float) -> bool:
    """Whether an inline request sent after `t0` has been answered."""
    traffic = screen.traffic(folder)
    asked = {m["id"] for t, d, m in traffic if d == "in" and t >= t0 and m.get("method") ==
             "textDocument/inlineCompletion"}
    return any(d == "out" and m.get("id") in asked and "method" not in m for _, d, m in traffic)


def brackets(scr: screen.Screen, folder: Path, check: Check, watch: Watch, ghost_fg: str | None) -> None:
    """`x = max()`, <Left>: the ghost between the brackets, in its own colour; typing through it."""
    scr.keys("Escape", ":edit biggest.py", "Enter")
    t0 = time.time()
    scr.keys("2G", "A")
    try:
        typed_through(scr, folder, check, watch, ghost_fg)
    finally:
        scr.keys("Escape")
    # Where the cursor rested, the server was told once: line 2, not on each key typed there.
    focus = [m["params"]["position"]["line"] for t, d, m in screen.traffic(folder) if d == "in" and t >= t0
             and m.get("method") == "codestral/didFocus" and m["params"]["textDocument"]["uri"].endswith("/biggest.py")]
    print(f"screen: codestral/didFocus lines in biggest.py: {focus}", flush=True)
    check(focus == [1], f"codestral/didFocus in biggest.py on lines {focus}, expected once on line 1 (0-based)")


def typed_through(scr: screen.Screen, folder: Path, check: Check, watch: Watch, ghost_fg: str | None) -> None:
    scr.type("x = max()")
    scr.keys("Left")
    t0 = time.monotonic()

    def ghost(text: str, raw: str):
        line = max_line(text)
        return line if line and line != "    x = max()" else None

    try:
        line = scr.wait("the ghost text inside max()", ghost, LOAD_TIMEOUT_S, each=watch)
    except AssertionError:
        check(False, "no ghost text inside max()")
        return
    print(f"screen: inside max() after {time.monotonic() - t0:.1f} s: {line!r}", flush=True)
    if not (line.endswith(")") and line.count(")") >= 1 and not line.startswith("    x = max()")):
        check(False, f"the ghost is not between the brackets: {line!r} (the `)` must follow it)")
        return
    g = line[len(MAX):-1]
    style = screen.styles(scr.capture(escapes=True), line) or []  # the whole line: `nums` is on line 1 too
    marks = style[len(MAX):len(MAX) + len(g)]
    print(f"screen: ghost {g!r}: {sorted(set(marks))}; `x` {style[4] if style else None}", flush=True)
    check(marks and all(fg == (ghost_fg or GHOST_FG) and not attrs & {"bold", "underline"} for fg, attrs in marks),
          f"inside max() the ghost {g!r} is not drawn in the ghost colour alone: {marks}")
    if len(g) < 2:
        check(False, f"the ghost {g!r} is too short to type through")
        return

    # Type its first characters as a person does, the screen sampled every 30 ms.
    k = min(3, len(g) - 1)
    shown_rest = False
    for j in range(1, k + 1):
        scr.type(g[j - 1], delay=0)
        end = time.monotonic() + 0.15
        while time.monotonic() < end:
            now = max_line(screen.plain(scr.capture())) or ""
            after = now[len(MAX):]
            doubled = next((i for i in range(1, j + 1) if after.startswith(g[:i] + g)), None)
            check(doubled is None, f"typing {g[:j]!r} through the ghost {g!r} shows it twice: {now!r}")
            shown_rest = shown_rest or (j == k and after == g + ")")
            time.sleep(0.03)
    check(shown_rest, f"after typing {g[:k]!r} the rest of the ghost {g[k:]!r} is not shown")
    # A key that does not match: the rest of the old ghost must not stay after it.
    other = "q" if g[k] != "q" else "z"
    t0 = time.time()
    scr.type(other, delay=0)
    end = time.monotonic() + 0.6
    stale_seen = False
    # Until the answer to a request sent after that key (which may suggest anything) arrives.
    while time.monotonic() < end:
        now = max_line(screen.plain(scr.capture())) or ""
        if answered_since(folder, t0):  # logged before the editor gets it: `now` may show it
            break
        after = now[len(MAX):]
        if after.startswith(g[:k] + other) and after != g[:k] + other + ")":  # more than was typed
            stale_seen = True
            check(False, f"after {other!r}, which the ghost {g!r} does not have, a stale ghost stays after it: {now!r}")
        time.sleep(0.03)
    if not stale_seen:
        print(f"screen: typed {g[:k]!r} through {g!r}, then {other!r}: no doubled character, no stale ghost",
              flush=True)


def escape_in_flight(scr: screen.Screen, folder: Path, check: Check, watch: Watch) -> None:
    """<Esc> while a request runs cancels it: the statusline must not stay at `codestral: …`."""
    for attempt, line in enumerate(("3G", "2G", "3G")):
        t0 = time.time()
        scr.keys(line, "A")
        try:
            request = scr.wait("a request", lambda text, raw, t0=t0: next(
                (m for t, d, m in screen.traffic(folder) if d == "in" and t >= t0
                 and m.get("method") == "textDocument/inlineCompletion"), None), 10, every=0.01)
        except AssertionError:
            check(False, "no request on entering insert mode")
            scr.keys("Escape")
            return
        scr._tmux("send-keys", "-t", "0", "Escape")
        time.sleep(0.3)
        traffic = screen.traffic(folder)
        cancelled = any(d == "in" and m.get("method") == "$/cancelRequest" and m["params"]["id"] == request["id"]
                        for _, d, m in traffic)
        answered = any(d == "out" and m.get("id") == request["id"] and "method" not in m and "error" not in m
                       for _, d, m in traffic)
        if cancelled and not answered:
            try:
                scr.wait("the statusline to leave `codestral: …`", lambda text, raw: not any(
                    shown == "codestral: …" for kind, shown in statuses([text]) if kind == "statusline"), 1.5,
                    each=watch)
                print(f"screen: <Esc> cancelled a request in flight (try {attempt + 1}); the statusline moved on",
                      flush=True)
            except AssertionError:
                check(False, "after <Esc> cancelled the request in flight the statusline stays at `codestral: …`")
            return
    print("screen: NOTE: every request was answered before <Esc> cancelled it; not checked", flush=True)


def declined(scr: screen.Screen, check: Check, watch: Watch) -> None:
    """Inside a word the server declines: the statusline says why (checked against the README)."""
    scr.keys("3G", "0", "w", "l", "i")  # `r|eturn x`
    try:
        scr.wait("a declined status", lambda text, raw: any(
            kind == "statusline" and not re.fullmatch(r"codestral: (ready|…|\d+ ms|loading.*)", shown)
            for kind, shown in statuses([text])), 20, each=watch)
    except AssertionError:
        check(False, "no reason on the statusline when the server declines inside a word")
    scr.keys("Escape")


def main(nvim: str) -> int:
    nvim = str(Path(nvim).resolve())
    version = subprocess.run([nvim, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    tmp = Path(tempfile.mkdtemp(prefix="codestral-nvim-screen-"))
    wrapper, stdin_log, stdout_log = screen.server_wrapper(tmp, os.environ["CODESTRAL_LS"])
    work = tmp / "work"
    work.mkdir()
    (work / "sum.js").write_text(SOURCE)
    (work / "one.py").write_text("def one():\n    return 1\n")
    (work / "two.py").write_text("def two():\n    return 2\n")
    (work / "biggest.py").write_text("def biggest(nums):\n    \n    return x\n")
    snippet = screen.readme_snippet(PLUGIN / "README.md", "lua", "runtimepath:append")
    snippet = snippet.replace('"~/src/codestral-ls/editors/neovim"', repr(str(PLUGIN)).replace("'", '"'))
    snippet = snippet.replace('"/path/to/codestral-ls"', f'"{wrapper}"')
    statusline = "vim.o.laststatus = 2\nvim.o.statusline = \"%f %{v:lua.require'codestral'.statusline()}\"\n"
    (tmp / "init.lua").write_text(snippet + statusline)
    # The server's model cache lives under XDG_CACHE_HOME: keep the user's, or each run reconverts.
    cache = os.environ.get("CODESTRAL_LS_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "codestral-ls")
    env = {"TERM": "tmux-256color", "XDG_CONFIG_HOME": str(tmp / "config"),
           "XDG_DATA_HOME": str(tmp / "data"), "XDG_STATE_HOME": str(tmp / "state"),
           "XDG_CACHE_HOME": str(tmp / "cache"), "CODESTRAL_LS_CACHE": cache}
    scr = screen.Screen([nvim, "--clean", "-u", str(tmp / "init.lua"), "-c", "edit one.py",
                         "-c", "edit two.py", "-c", "edit sum.js"], cwd=work, env=env)
    print(f"screen: {version}", flush=True)
    seen_loading = []
    lag: dict[str, float] = {}
    failures: list[str] = []  # checks that fail without stopping the test: all are reported

    def check(ok: object, message: str) -> None:
        if not ok and message not in failures:
            failures.append(message)
            print(f"screen: FAILED CHECK: {message}", flush=True)

    try:
        def watch(text: str, raw: str) -> None:
            check("Press ENTER" not in text, f"a hit-enter prompt: {text.strip()[-200:]!r}")
            check("must be a JSON object" not in text, f"the server refused the options: {text.strip()[-200:]!r}")
            if re.search(r"codestral: loading", text):
                seen_loading.append(text)
            # The message area follows the load as the statusline does (a person reads either).
            bar = re.search(r"codestral: loading (\d+)%", text)
            said = re.search(r"codestral: loading the model (\d+)%", text)
            if bar and said and bar.group(1) != said.group(1):
                lag.setdefault("since", time.monotonic())
                check(time.monotonic() - lag["since"] < 0.6, f"the statusline says loading {bar.group(1)}% "
                      f"and the message area still loading the model {said.group(1)}%")
            else:
                lag.pop("since", None)
            for line in text.splitlines():
                m = REDUCE.search(line)
                if m:  # the `);` after the cursor stays on screen, whatever the ghost text does
                    check(");" in m.group(1), f"the code after the cursor was drawn over: {line.strip()!r}")

        t0 = time.monotonic()
        try:
            scr.wait("the model to load", lambda text, raw: "codestral: ready" in text
                     or re.search(r"codestral: \d+ ms", text), LOAD_TIMEOUT_S, each=watch)
            print(f"screen: model ready after {time.monotonic() - t0:.1f} s", flush=True)
        except AssertionError:
            check(False, "no 'codestral: ready' on the statusline")
        check(seen_loading, "the model loaded with no 'codestral: loading' on screen")
        # The message area says the model loaded, not "loading the model 0%" for good.
        try:
            scr.wait("the message area to leave 'loading the model'", lambda text, raw:
                     "loading the model" not in text.rstrip().splitlines()[-1], 3, each=watch)
        except AssertionError:
            check(False, f"the model is ready but the message area still says {text_of(scr)!r}")
        if seen_loading:
            print(f"screen: saw loading progress: {[x for x in seen_loading[-1].splitlines() if 'loading' in x]}",
                  flush=True)

        scr.keys("2", "G", "$", "h", "i")  # insert before `);`, as a person would get there
        t0 = time.monotonic()

        def ghost(text: str, raw: str):
            for line in raw.splitlines():
                m = REDUCE.search(screen.plain(line))
                if not m or m.group(1).rstrip() == ");":
                    continue
                return m.group(1).rstrip(), line
            return None

        shown, raw_line = scr.wait("the ghost text", ghost, LOAD_TIMEOUT_S, each=watch)
        print(f"screen: ghost text after {time.monotonic() - t0:.1f} s: {shown!r}", flush=True)
        # The suggestion is what is drawn in the ghost colour; the code around it is not.
        ghost_fg = None
        text_plain = screen.plain(raw_line)
        start = text_plain.index("=> ") + 3
        suggestion = text_plain[start:].rstrip()
        if suggestion.startswith(");"):  # drawn at the end of the line (Neovim before 0.10)
            suggestion = suggestion[2:].strip()
        elif ");" in suggestion:
            suggestion = suggestion[:suggestion.rindex(");")]
        assert suggestion, f"no suggestion between the code: {text_plain!r}"
        ghost_fg, line_fg = screen.foreground_at(raw_line, suggestion)
        print(f"screen: suggestion {suggestion!r} drawn with fg {ghost_fg}, code with fg {line_fg}", flush=True)
        check(ghost_fg is not None, f"the ghost text is drawn in the default colour, like code: {raw_line!r}")

        # <M-Right> takes the first word; the rest stays on screen in the ghost colour, no key pressed.
        word = screen.next_word(suggestion)
        rest = suggestion[len(word):]
        if rest.strip() and ghost_fg is not None:
            scr.keys("M-Right")

            def rest_shown(text: str, raw: str):
                for line in raw.splitlines():
                    if REDUCE.search(screen.plain(line)) and f"=> {word}" in screen.plain(line) \
                            and screen.coloured(line, ghost_fg).strip() == rest.strip():
                        return line
                return None
            try:
                line = scr.wait("the rest after <M-Right>", rest_shown, 10, each=watch)
                print(f"screen: after <M-Right> the rest {rest!r} is shown: {screen.plain(line).strip()!r}",
                      flush=True)
            except AssertionError:
                check(False, f"after <M-Right> the rest {rest!r} is not shown as ghost text")

        scr.keys("Tab")
        expected = f"const total = xs.reduce((a, b) => {suggestion});"
        try:
            scr.wait("the accepted line on screen", lambda text, raw: expected in text, 10, each=watch)
        except AssertionError:
            check(False, f"after <Tab> the screen does not show {expected!r}")
        scr.keys("Escape", ":w", "Enter")
        scr.wait("the file written", lambda text, raw: "written" in text, 10)
        line2 = (work / "sum.js").read_text().splitlines()[1]
        check(line2 == expected, f"line 2 of the file is {line2!r}, the screen showed {expected!r}")
        after = scr.capture(escapes=True)
        for line in after.splitlines():
            if expected in screen.plain(line):
                colour_after = screen.foreground_at(line, suggestion)[0]
                check(colour_after != ghost_fg, "accepted code is drawn in the ghost colour")
                print(f"screen: accepted: {line2!r} (now drawn with fg {colour_after})", flush=True)

        brackets(scr, tmp, check, watch, ghost_fg)
        escape_in_flight(scr, tmp, check, watch)
        declined(scr, check, watch)
        for kind, shown in sorted(statuses(scr.log)):
            check(screen.documented(PLUGIN / "README.md", shown),
                  f"the {kind} shows {shown!r}, which the README does not mention")
        print(f"screen: status texts seen: {sorted(statuses(scr.log))}", flush=True)

        uris = screen.asked_uris(stdin_log)
        target = (work / "sum.js").as_uri()
        others = [u for u in uris if not u.endswith(("/sum.js", "/biggest.py"))]
        print(f"screen: {len(uris)} inline requests, {len(others)} for other buffers", flush=True)
        assert uris, "no textDocument/inlineCompletion request reached the server"
        check(not others, f"{len(others)} requests for buffers that are not current: {sorted(set(others))}")
        init = next(m for m in screen.messages(stdin_log) if m.get("method") == "initialize")
        options = init["params"].get("initializationOptions")
        check(isinstance(options, dict), f"initializationOptions went out as {options!r}")
        ext = screen.server_extensions(stdout_log)
        if ext.get("status"):
            check(any(re.search(r"codestral: \d+ ms", t) for t in scr.log), "no latency on the statusline")
        assert not failures, "; ".join(failures)
        print(f"screen: PASS ({version}; server extensions {ext or 'none'}; target {target})", flush=True)
        return 0
    except AssertionError as exc:
        print(f"screen: FAIL: {exc}", flush=True)
        print("screen: last screens:\n" + "\n----\n".join(scr.log[-3:]), flush=True)
        return 1
    finally:
        scr.close()
        subprocess.run(["rm", "-rf", str(tmp)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
