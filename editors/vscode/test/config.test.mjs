// Server discovery, the settings sent to the server, the status bar text for codestral/status and
// when codestral/suggestionUpdated asks again (src/config.ts, bundled to out/config.js).
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { after, test } from "node:test";

const require = createRequire(import.meta.url);
const {
  findServer,
  serverSettings,
  serverArgs,
  SERVER_KEYS,
  statusText,
  shouldRetrigger,
  focusChange,
  serverPathSetting,
  workspaceRelative,
  keepRanges,
} = require("../out/config.js");

const tmp = mkdtempSync(path.join(os.tmpdir(), "codestral-vscode-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function executable(file, mode = 0o755) {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, "#!/bin/sh\n");
  chmodSync(file, mode);
  return file;
}

const bin = path.join(tmp, "bin");
const workspace = path.join(tmp, "ws");
const onPath = executable(path.join(bin, "codestral-ls"));
const inVenv = executable(path.join(workspace, ".venv", "bin", "codestral-ls"));
const opts = { platform: "linux", home: tmp, trusted: true };

test("the serverPath setting wins, with ~ and ${workspaceFolder} expanded", () => {
  const setting = (s) => findServer({ ...opts, setting: s, workspaceFolders: [workspace], pathEnv: bin }).path;
  assert.equal(setting("${workspaceFolder}/.venv/bin/codestral-ls"), inVenv);
  assert.equal(setting("~/bin/codestral-ls"), onPath);
  assert.equal(setting(".venv/bin/codestral-ls"), inVenv); // relative to the workspace folder
  const missing = findServer({ ...opts, setting: "/nowhere/codestral-ls", workspaceFolders: [workspace], pathEnv: bin });
  assert.equal(missing.path, undefined, "a wrong setting is an error, not a fallback");
  assert.deepEqual(missing.tried, ["/nowhere/codestral-ls"]);
});

test("then PATH, then .venv in a workspace folder", () => {
  assert.equal(findServer({ ...opts, setting: "", workspaceFolders: [workspace], pathEnv: `/nowhere:${bin}` }).path, onPath);
  assert.equal(findServer({ ...opts, setting: "", workspaceFolders: [tmp, workspace], pathEnv: "/nowhere" }).path, inVenv);
});

test("an untrusted workspace never provides the server", () => {
  const untrusted = findServer({ ...opts, trusted: false, setting: "", workspaceFolders: [workspace], pathEnv: "/nowhere" });
  assert.equal(untrusted.path, undefined, "the workspace's .venv was used although the workspace is not trusted");
  assert.equal(findServer({ ...opts, trusted: false, setting: "", workspaceFolders: [workspace], pathEnv: bin }).path, onPath);
});

test("an untrusted workspace never runs a serverPath inside it: ${workspaceFolder} or relative", () => {
  const untrusted = (s) => findServer({ ...opts, trusted: false, setting: s, workspaceFolders: [workspace], pathEnv: bin });
  for (const s of ["${workspaceFolder}/.venv/bin/codestral-ls", ".venv/bin/codestral-ls", "./.venv/bin/codestral-ls",
    "../ws/.venv/bin/codestral-ls", " ${workspaceFolder}/../ws/.venv/bin/codestral-ls "]) {
    const found = untrusted(s);
    assert.equal(found.path, undefined, `${s} ran the workspace's binary in an untrusted workspace`);
    assert.match(found.tried[0], /untrusted workspace/, "the error names why");
  }
  // The user's absolute path and ~ still work there; trusted, the workspace-relative ones do too.
  assert.equal(untrusted(onPath).path, onPath);
  assert.equal(untrusted("~/bin/codestral-ls").path, onPath);
  const trusted = findServer({ ...opts, setting: "${workspaceFolder}/.venv/bin/codestral-ls", workspaceFolders: [workspace] });
  assert.equal(trusted.path, inVenv);
  assert.equal(workspaceRelative("C:\\tools\\codestral-ls.exe", "win32"), false);
  assert.equal(workspaceRelative("tools\\codestral-ls.exe", "win32"), true);
});

test("serverPath from workspace settings only in a trusted workspace", () => {
  const inspected = { globalValue: "/usr/bin/codestral-ls", workspaceValue: "./evil", workspaceFolderValue: undefined };
  assert.equal(serverPathSetting(inspected, false), "/usr/bin/codestral-ls");
  assert.equal(serverPathSetting({ workspaceValue: "./evil" }, false), "");
  assert.equal(serverPathSetting({ workspaceFolderValue: "/x/evil" }, false), "");
  assert.equal(serverPathSetting(inspected, true), "./evil");
  assert.equal(serverPathSetting(undefined, true), "");
});

test("inline items keep the server's range; one without gets the empty range at the cursor", () => {
  const server = { start: { line: 0, character: 8 }, end: { line: 0, character: 9 } };
  const empty = { start: { line: 0, character: 8 }, end: { line: 0, character: 8 } };
  const items = keepRanges([{ insertText: "a)", range: server }, { insertText: "b" }, { insertText: "c", range: null }],
    () => empty);
  assert.deepEqual(items.map((i) => i.range), [server, empty, empty]);
});

test("the status bar text for each codestral/status", () => {
  assert.equal(statusText({ kind: "answered", message: "", latencyMs: 182.6 }).text, "$(sparkle) 183 ms");
  assert.match(statusText({ kind: "loading", message: "loading model 40%" }).tooltip, /40%/);
  assert.match(statusText({ kind: "running", message: "" }).text, /spin/);
  const declined = statusText({ kind: "declined", message: "language disabled" });
  assert.match(declined.tooltip, /language disabled/);
  assert.equal(statusText({ kind: "error", message: "no model" }).text, "$(error) Codestral");
});

test("codestral/suggestionUpdated asks again only where the cursor still is", () => {
  const update = { textDocument: { uri: "file:///a.py", version: 3 }, position: { line: 4, character: 8 } };
  const at = { uri: "file:///a.py", line: 4, character: 8, empty: true };
  assert.equal(shouldRetrigger(update, at), true);
  assert.equal(shouldRetrigger(update, { ...at, character: 9 }), false);
  assert.equal(shouldRetrigger(update, { ...at, uri: "file:///b.py" }), false);
  assert.equal(shouldRetrigger(update, { ...at, empty: false }), false, "a selection is not a cursor");
  assert.equal(shouldRetrigger(update, undefined), false);
});

test("nothing found lists every place looked at; non-executables do not count", () => {
  const plain = executable(path.join(tmp, "plain", "codestral-ls"), 0o644);
  const found = findServer({ ...opts, setting: "", workspaceFolders: [tmp], pathEnv: path.dirname(plain) });
  assert.equal(found.path, undefined);
  assert.deepEqual(found.tried, [plain, path.join(tmp, ".venv", "bin", "codestral-ls")]);
});

test("serverSettings sends every server key that has a value", () => {
  const all = serverSettings((key) => `v-${key}`);
  assert.deepEqual(Object.keys(all), [...SERVER_KEYS]);
  assert.deepEqual(serverSettings((key) => (key === "budgetMs" ? 0 : undefined)), { budgetMs: 0 });
});

test("model and draftModel go on the command line, never in initializationOptions", () => {
  // The server refuses them over LSP (a workspace must not choose the files it loads).
  assert.ok(!SERVER_KEYS.includes("model") && !SERVER_KEYS.includes("draftModel"));
  const settings = { model: " ~/models/codestral-22b ", draftModel: "embedded" };
  assert.deepEqual(serverArgs((k) => settings[k]), ["--model", "~/models/codestral-22b", "--draft-model", "embedded"]);
  assert.deepEqual(serverArgs(() => ""), []);
  assert.deepEqual(serverArgs(() => undefined), []);
});

test("codestral/didFocus: when the cursor rests on another line or document, not within a line", () => {
  const uri = "file:///w/a.py";
  const first = focusChange(uri, { line: 3, character: 8 }, "");
  assert.deepEqual(first.params, { textDocument: { uri }, position: { line: 3, character: 8 } });
  assert.equal(focusChange(uri, { line: 3, character: 2 }, first.key), undefined);
  assert.deepEqual(focusChange(uri, { line: 4, character: 0 }, first.key).params.position, { line: 4, character: 0 });
  assert.equal(focusChange("file:///w/b.py", { line: 3, character: 8 }, first.key).params.textDocument.uri,
    "file:///w/b.py");
});
