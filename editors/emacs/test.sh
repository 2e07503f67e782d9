#!/usr/bin/env bash
# Batch test of codestral.el against the real codestral-ls server.
#
#   editors/emacs/test.sh
#
# Env: CODESTRAL_LS  server program (default: $REPO/.venv/bin/codestral-ls)
#      EMACS         emacs binary (default: emacs)
# Exit status 77: Emacs with Eglot is missing and could not be installed (a skip).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export CODESTRAL_LS="${CODESTRAL_LS:-$REPO/.venv/bin/codestral-ls}"
EMACS="${EMACS:-emacs}"
# Eglot installed with package.el (rather than Debian's elpa-eglot or Emacs >= 29) needs activating.
REQUIRE_EGLOT="(or (require 'eglot nil t) (progn (package-initialize) (require 'eglot)))"

have_eglot() {
  command -v "$EMACS" >/dev/null 2>&1 && "$EMACS" --batch --eval "$REQUIRE_EGLOT" >/dev/null 2>&1
}

if ! have_eglot; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing emacs-nox elpa-eglot" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends emacs-nox elpa-eglot; } >&2; then
      echo "test.sh: SKIP: apt-get could not install emacs-nox elpa-eglot" >&2
      exit 77
    fi
  fi
  if ! have_eglot; then
    echo "test.sh: SKIP: no Emacs with Eglot (install emacs-nox and elpa-eglot, or set EMACS)" >&2
    exit 77
  fi
fi

if [ ! -x "$CODESTRAL_LS" ] && ! command -v "$CODESTRAL_LS" >/dev/null 2>&1; then
  echo "test.sh: server not found: $CODESTRAL_LS (set CODESTRAL_LS)" >&2
  exit 1
fi

"$EMACS" --version | head -n 1
"$EMACS" --batch --eval "(progn $REQUIRE_EGLOT (message \"eglot: %s\" (locate-library \"eglot\")))"

# Compile first (warnings are errors), then test the compiled file.
BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
cp "$HERE/codestral.el" "$BUILD/"
"$EMACS" --batch -L "$BUILD" --eval "$REQUIRE_EGLOT" \
  --eval '(setq byte-compile-error-on-warn t)' -f batch-byte-compile "$BUILD/codestral.el"

"$EMACS" --batch -L "$BUILD" -l "$HERE/codestral-tests.el" -f ert-run-tests-batch-and-exit

# The same in an interactive `emacs -nw` on a pseudo-terminal: real keystrokes, idle timer, redisplay.
PYTHON="${PYTHON:-$(command -v python3 || echo "$REPO/.venv/bin/python")}"
CODESTRAL_EL_DIR="$BUILD" EMACS="$EMACS" "$PYTHON" "$HERE/test-tty.py"

# What a person sees: `emacs -Q -nw` in tmux set up with the README's snippet, three buffers open,
# the screen read back with its colours (tmux apt-installed when missing and we are root).
if ! command -v tmux >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test.sh: installing tmux" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; } >&2 || true
fi
if command -v tmux >/dev/null; then
  CODESTRAL_EL_DIR="$BUILD" EMACS="$EMACS" "$PYTHON" "$HERE/test-screen.py"
else
  echo "test.sh: SKIP screen test: no tmux" >&2
fi
