// Loads the bundled extension (out/extension.js) against a stub `vscode` module and activates it
// with a server path that does not exist: the bundle loads, the commands match package.json, and
// the missing server is a clear error. Then in an untrusted workspace whose .venv holds a
// codestral-ls: the extension must not run it. (The protocol itself is tested in protocol.test.mjs.)
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";
import { test } from "node:test";

const require = createRequire(import.meta.url);
const stub = require("./vscode-stub.cjs");
const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

const { settings, updates, errors, warnings, commands, statusItem, api } = stub;

test("activates, registers the contributed commands, and reports a missing server", async () => {
  const extension = require("../out/extension.js");
  const context = { subscriptions: [] };
  await extension.activate(context);

  const contributed = pkg.contributes.commands.map((c) => c.command).sort();
  assert.deepEqual([...commands.keys()].sort(), contributed);
  assert.equal(errors.length, 1);
  assert.match(errors[0], /codestral-ls server was not found.*codestral\.serverPath/);
  assert.equal(statusItem.text, "$(error) Codestral");

  await commands.get("codestral.toggle")();
  assert.deepEqual(updates, [{ key: "enabled", value: false, target: api.ConfigurationTarget.Global }]);

  await commands.get("codestral.showStats")();
  assert.match(warnings[0], /not running/);
  await extension.deactivate();
});

test("package.json: untrusted workspaces are limited, and serverPath is a user setting only", () => {
  const untrusted = pkg.capabilities?.untrustedWorkspaces;
  assert.ok(untrusted, "capabilities.untrustedWorkspaces is not declared");
  assert.equal(untrusted.supported, "limited");
  for (const key of ["serverPath", "model", "draftModel"]) {
    const scope = pkg.contributes.configuration.properties[`codestral.${key}`].scope;
    assert.equal(scope, "machine", `a workspace's settings can set codestral.${key}`);
  }
});

test("in an untrusted workspace the server in its .venv is not run", async () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), "codestral-untrusted-"));
  try {
    const venv = path.join(tmp, ".venv", "bin");
    mkdirSync(venv, { recursive: true });
    const planted = path.join(venv, "codestral-ls");
    const marker = path.join(tmp, "ran");
    writeFileSync(planted, `#!/bin/sh\ntouch '${marker}'\n`);
    chmodSync(planted, 0o755);
    settings.serverPath = "";
    api.workspace.workspaceFolders = [{ uri: { fsPath: tmp } }];
    api.workspace.isTrusted = false;
    const savedPath = process.env.PATH;
    process.env.PATH = "/nowhere";
    errors.length = 0;
    const extension = require("../out/extension.js");
    try {
      await extension.activate({ subscriptions: [] });
    } finally {
      process.env.PATH = savedPath;
    }
    assert.equal(errors.length, 1, `expected the not-found error, got ${JSON.stringify(errors)}`);
    assert.match(errors[0], /not found/);
    assert.equal(statusItem.text, "$(error) Codestral");
    await extension.deactivate();
    let ran = true;
    try {
      readFileSync(marker);
    } catch {
      ran = false;
    }
    assert.equal(ran, false, "the workspace's codestral-ls ran");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
