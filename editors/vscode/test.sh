#!/usr/bin/env bash
# Build, package and test the VS Code extension: npm ci, tsc, esbuild, vsce package (.vsix), then
# node --test test/, which drives the real server. Server: $CODESTRAL_LS (default: the repo's .venv).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export CODESTRAL_LS="${CODESTRAL_LS:-$REPO/.venv/bin/codestral-ls}"
cd "$HERE"

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund --prefer-offline
else
  npm install --no-audit --no-fund
fi
npm run check    # tsc --noEmit
npm run bundle   # esbuild -> out/extension.js, out/config.js
rm -f ./*.vsix
npm run package  # vsce package --no-dependencies (re-bundles, minified) -> codestral-ls-<version>.vsix
ls -l ./*.vsix

if [[ ! -x "$CODESTRAL_LS" ]]; then
  echo "test.sh: no codestral-ls at $CODESTRAL_LS (run 'make install' in $REPO, or set CODESTRAL_LS)" >&2
  exit 1
fi
node --test --test-reporter=spec test/
