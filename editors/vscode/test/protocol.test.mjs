// Drives the real codestral-ls over stdio the way the extension does (vscode-languageclient sits on
// the same vscode-languageserver-protocol): the extension's initializationOptions with the default
// settings (budgetMs 0 for a deterministic answer), an inline completion, its acceptance, a
// typed-through request, a settings change and codestral/stats; with the extension's opt-in to the
// server's extensions, its codestral/status notifications rendered by the extension's own status
// bar code, and codestral/suggestionUpdated checked with the extension's own re-trigger rule.
//
// Needs `npm run bundle` first (for out/config.js). Server: $CODESTRAL_LS or ../../.venv/bin/codestral-ls.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const require = createRequire(import.meta.url);
const {
  createProtocolConnection,
  StreamMessageReader,
  StreamMessageWriter,
  InitializeRequest,
  InitializedNotification,
  DidOpenTextDocumentNotification,
  DidChangeTextDocumentNotification,
  DidChangeConfigurationNotification,
  InlineCompletionRequest,
  ExecuteCommandRequest,
  ShutdownRequest,
  ExitNotification,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  ConfigurationRequest,
  RegistrationRequest,
  ShowMessageNotification,
  LogMessageNotification,
  MessageType,
} = require("vscode-languageserver-protocol/node");

const here = path.dirname(fileURLToPath(import.meta.url));
const extensionRoot = path.resolve(here, "..");
const repo = path.resolve(extensionRoot, "../..");
const { findServer, serverSettings, SERVER_KEYS, CLIENT_EXTENSIONS, statusText, shouldRetrigger } = require(
  path.join(extensionRoot, "out/config.js"),
);

const LOAD_TIMEOUT_MS = 180_000; // model load: ~10 s alone, up to a minute on a busy 2-core CPU
const REQUEST_TIMEOUT_MS = 120_000;
const STATS_REQUEST = "codestral/stats";
const ACCEPT_COMMAND = "codestral.accept";
const LOAD_TOKEN = "codestral-ls/model-load";

const uri = pathToFileURL(path.join(repo, "scratch_add.py")).href;
const text = "def add(a, b):\n    return \n";
const cursor = { line: 1, character: 11 };

// The extension's initializationOptions: every server key at its default from package.json, as
// vscode.workspace.getConfiguration("codestral") gives them, through the extension's own code.
const pkg = JSON.parse(readFileSync(path.join(extensionRoot, "package.json"), "utf8"));
const properties = pkg.contributes.configuration.properties;
const defaults = serverSettings((key) => properties[`codestral.${key}`]?.default);
const initializationOptions = { ...defaults, budgetMs: 0 };

let server; // ChildProcess
let connection; // ProtocolConnection
let initializeResult;
const stderr = [];
const progress = [];
const messages = [];
const statuses = []; // codestral/status
const updates = []; // codestral/suggestionUpdated
let loaded; // Promise of the load progress "end" value
let suggestion; // the first inline completion item

function logTail() {
  return stderr.join("").split("\n").slice(-60).join("\n");
}

/** A test whose failure carries the tail of the server's log. */
function step(name, fn, timeout = REQUEST_TIMEOUT_MS) {
  test(name, { timeout }, async () => {
    try {
      await fn();
    } catch (err) {
      if (err instanceof Error) err.message += `\n--- codestral-ls log (tail) ---\n${logTail()}`;
      throw err;
    }
  });
}

function applyEdit(source, range, newText) {
  const lines = source.split("\n");
  const offset = (p) => lines.slice(0, p.line).reduce((n, l) => n + l.length + 1, 0) + p.character;
  return source.slice(0, offset(range.start)) + newText + source.slice(offset(range.end));
}

async function inline(position, version) {
  const result = await connection.sendRequest(InlineCompletionRequest.type, {
    textDocument: { uri },
    position,
    context: { triggerKind: 2 /* Automatic */ },
  });
  assert.ok(result, `no inline completion result (document version ${version})`);
  return Array.isArray(result) ? result : result.items;
}

// `{}`: pygls rejects a request without a params member.
const stats = () => connection.sendRequest(STATS_REQUEST, {});
const problems = () => messages.filter((m) => m.type === MessageType.Error || m.type === MessageType.Warning);

before(async () => {
  const found = findServer({
    setting: process.env.CODESTRAL_LS ?? ".venv/bin/codestral-ls",
    workspaceFolders: [repo],
    trusted: true,
  });
  assert.ok(found.path, `codestral-ls not found at ${found.tried.join(", ")} (set CODESTRAL_LS, or run make install)`);
  server = spawn(found.path, [], { stdio: ["pipe", "pipe", "pipe"] });
  server.stderr.setEncoding("utf8").on("data", (chunk) => stderr.push(chunk));
  connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));

  let resolveLoaded;
  loaded = new Promise((resolve) => (resolveLoaded = resolve));
  connection.onRequest(WorkDoneProgressCreateRequest.type, () => null);
  connection.onRequest(RegistrationRequest.type, () => null);
  connection.onRequest(ConfigurationRequest.type, (params) => params.items.map(() => null));
  connection.onProgress(WorkDoneProgress.type, LOAD_TOKEN, (value) => {
    progress.push(value);
    if (value.kind === "end") resolveLoaded(value);
  });
  connection.onNotification(ShowMessageNotification.type, (m) => messages.push(m));
  connection.onNotification(LogMessageNotification.type, () => {});
  connection.onNotification("codestral/status", (p) => statuses.push(p));
  connection.onNotification("codestral/suggestionUpdated", (p) => updates.push(p));
  connection.listen();

  initializeResult = await connection.sendRequest(InitializeRequest.type, {
    processId: process.pid,
    clientInfo: { name: "codestral-vscode-protocol-test" },
    rootUri: pathToFileURL(repo).href,
    workspaceFolders: [{ uri: pathToFileURL(repo).href, name: "repo" }],
    capabilities: {
      experimental: CLIENT_EXTENSIONS, // as the extension's registered feature fills it in
      general: { positionEncodings: ["utf-16"] },
      window: { workDoneProgress: true, showMessage: {} },
      workspace: { configuration: true, didChangeConfiguration: { dynamicRegistration: true }, executeCommand: {} },
      textDocument: {
        synchronization: { dynamicRegistration: true, didSave: true },
        inlineCompletion: { dynamicRegistration: true },
        completion: { completionItem: { snippetSupport: true } },
      },
    },
    initializationOptions,
  });
  await connection.sendNotification(InitializedNotification.type, {});
  await connection.sendNotification(DidOpenTextDocumentNotification.type, {
    textDocument: { uri, languageId: "python", version: 1, text },
  });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((resolve) => server.once("exit", resolve));
  if (server.exitCode === null) {
    try {
      await Promise.race([connection.sendRequest(ShutdownRequest.type), new Promise((r) => setTimeout(r, 10_000))]);
      await connection.sendNotification(ExitNotification.type);
    } catch {
      // the server is gone already
    }
    const timer = setTimeout(() => server.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }
  connection.dispose();
});

step("package.json declares every setting the extension sends", async () => {
  for (const key of SERVER_KEYS) assert.ok(properties[`codestral.${key}`], `codestral.${key} missing from contributes`);
  assert.deepEqual(Object.keys(defaults).sort(), [...SERVER_KEYS].sort());
});

step("package.json's defaults are the server's defaults (an untouched setting changes nothing)", async () => {
  // The server's own defaults, as its CLI prints them: `codestral-ls --help` is not structured, so ask
  // the server module itself.
  const { execFileSync } = await import("node:child_process");
  const python = path.join(path.dirname(process.env.CODESTRAL_LS ?? path.join(repo, ".venv/bin/codestral-ls")), "python");
  const camel = JSON.parse(
    execFileSync(python, [
      "-c",
      "import json, dataclasses; from codestral_ls.server.options import Options, camel; " +
        "print(json.dumps({camel(f.name): f.default for f in dataclasses.fields(Options) " +
        "if f.default is not dataclasses.MISSING and isinstance(f.default, (int, str))}))",
    ]).toString(),
  );
  for (const key of SERVER_KEYS) {
    if (!(key in camel)) continue;
    assert.deepEqual(defaults[key], camel[key], `codestral.${key}: package.json ${defaults[key]}, server ${camel[key]}`);
  }
});

step("initialize: inline completion and the accept command", async () => {
  const caps = initializeResult.capabilities;
  assert.ok(caps.inlineCompletionProvider, "no inlineCompletionProvider");
  assert.ok(caps.executeCommandProvider?.commands.includes(ACCEPT_COMMAND), "codestral.accept not declared");
});

step(
  "the model loads with $/progress, and the settings are accepted",
  async () => {
    const end = await loaded;
    assert.equal(progress[0]?.kind, "begin");
    assert.equal(end.message, "model ready", `model load: ${end.message}`);
    assert.deepEqual(problems(), [], "the server complained (about the extension's settings?)");
  },
  LOAD_TIMEOUT_MS,
);

step("inline completion completes the return statement", async () => {
  const items = await inline(cursor, 1);
  assert.equal(items.length, 1, `expected one item, got ${JSON.stringify(items)}`);
  suggestion = items[0];
  assert.equal(typeof suggestion.insertText, "string");
  assert.ok(suggestion.insertText.length > 0, "empty insertText");
  // The server's own range, always: VS Code's default ([word start, end of line]) is not what it means.
  const range = suggestion.range;
  assert.ok(range, `no range: VS Code would replace from the word start to the line end: ${JSON.stringify(suggestion)}`);
  assert.deepEqual(range.start, cursor);
  assert.deepEqual(range.end, cursor, "a plain insertion at the cursor replaces nothing");
  const applied = applyEdit(text, range, suggestion.insertText);
  assert.equal(applied.split("\n")[1], "    return a + b", `applied: ${JSON.stringify(applied)}`);
  assert.equal(suggestion.command?.command, ACCEPT_COMMAND);
});

step("accepting runs codestral.accept, counted in codestral/stats", async () => {
  assert.ok(suggestion, "no suggestion to accept");
  // What VS Code does on Tab: insert the text, then run the item's command (languageclient sends it on).
  await connection.sendRequest(ExecuteCommandRequest.type, {
    command: suggestion.command.command,
    arguments: suggestion.command.arguments,
  });
  const s = await stats();
  assert.ok(s.accepted >= 1, `accepted = ${s.accepted}`);
});

step("typing the suggestion's first character gives the remainder", async () => {
  assert.ok(suggestion, "no suggestion");
  const first = suggestion.insertText[0];
  await connection.sendNotification(DidChangeTextDocumentNotification.type, {
    textDocument: { uri, version: 2 },
    contentChanges: [{ range: { start: cursor, end: cursor }, text: first }],
  });
  const items = await inline({ line: cursor.line, character: cursor.character + 1 }, 2);
  assert.equal(items.length, 1, `expected one item, got ${JSON.stringify(items)}`);
  assert.equal(items[0].insertText, suggestion.insertText.slice(1));
  const s = await stats();
  assert.ok(s.typed_through_hits >= 1, `typed_through_hits = ${s.typed_through_hits}`);
});

step("a settings change (didChangeConfiguration) disables the language", async () => {
  const settings = (overrides) => ({ settings: { codestral: { ...initializationOptions, ...overrides } } });
  await connection.sendNotification(DidChangeConfigurationNotification.type, settings({ disabledLanguages: ["python"] }));
  assert.deepEqual(await inline({ line: cursor.line, character: cursor.character + 1 }, 2), []);
  await connection.sendNotification(DidChangeConfigurationNotification.type, settings({}));
  assert.deepEqual(problems(), []);
});

step("the server's extensions: status notifications as the status bar shows them", async () => {
  const ours = initializeResult.capabilities.experimental?.codestral;
  assert.ok(ours?.status && ours?.suggestionUpdates, `experimental.codestral: ${JSON.stringify(ours)}`);
  const answered = statuses.filter((s) => s.kind === "answered");
  assert.ok(answered.length > 0, `no 'answered' status among ${JSON.stringify(statuses.map((s) => s.kind))}`);
  assert.match(statusText(answered.at(-1)).text, /^\$\(sparkle\) \d+ ms$/);
  const declined = statuses.filter((s) => s.kind === "declined");
  assert.ok(declined.length > 0, "the disabled language was not reported as declined");
  assert.match(statusText(declined.at(-1)).tooltip, /no suggestion: .+/);
  for (const u of updates) {
    // Where the cursor is, the extension re-triggers; one line down, it does not.
    const at = { uri: u.textDocument.uri, line: u.position.line, character: u.position.character, empty: true };
    assert.equal(shouldRetrigger(u, at), true);
    assert.equal(shouldRetrigger(u, { ...at, line: at.line + 1 }), false);
  }
});

step("codestral/stats reports requests, latency and the model", async () => {
  const s = await stats();
  assert.ok(s.requests >= 2, `requests = ${s.requests}`);
  assert.ok(s.suggestions >= 2, `suggestions = ${s.suggestions}`);
  assert.equal(s.errors, 0);
  assert.ok(s.latency_ms.count >= 2 && typeof s.latency_ms.p50 === "number", JSON.stringify(s.latency_ms));
  assert.ok(s.model?.source && s.model?.device, `model: ${JSON.stringify(s.model)}`);
});
