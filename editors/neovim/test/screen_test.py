"""Screen test of the Neovim client: Neovim in tmux, set up with the README's snippet verbatim (paths
filled in), three buffers open, keys sent like a person, the screen captured with its colours.

    python3 test/screen.py NVIM      # CODESTRAL_LS names the server

Checks what a person sees: the model-load progress and the status item on the statusline; the
ghost text in `reduce((a, b) => |);` appearing without drawing over the `);` after the cursor, in a
colour of its own (no 'termguicolors': the 256-colour palette tmux gives); <Tab> putting exactly
that text in the file; and, in the server's traffic, only the current buffer asked, with
initializationOptions sent as a JSON object.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE.parent
sys.path.insert(0, str(PLUGIN.parent))
import screen  # noqa: E402  (editors/screen.py)

LOAD_TIMEOUT_S = float(os.environ.get("CODESTRAL_TIMEOUT", "120"))
LINE = "const total = xs.reduce((a, b) => );"
SOURCE = f"const xs = [1, 2, 3];\n{LINE}\nconsole.log(total);\n"
REDUCE = re.compile(r"xs\.reduce\(\(a, b\) => (.*)$")


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

        uris = screen.asked_uris(stdin_log)
        target = (work / "sum.js").as_uri()
        others = [u for u in uris if not u.endswith("/sum.js")]
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
