// The extension's own middleware and notification handlers (out/extension.js, `testing`) driven by
// the real codestral-ls over a protocol connection: VS Code itself is the stub in vscode-stub.cjs,
// and `next` (what vscode-languageclient would do) sends the LSP request. Checks what the user
// would see on the status bar (load progress, latency, why nothing is shown) and that a
// codestral/suggestionUpdated where the cursor is makes the extension re-trigger the ghost text.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const require = createRequire(import.meta.url);
const stub = require("./vscode-stub.cjs");
const {
  createProtocolConnection,
  StreamMessageReader,
  StreamMessageWriter,
  InitializeRequest,
  InitializedNotification,
  DidOpenTextDocumentNotification,
  InlineCompletionRequest,
  DidChangeConfigurationNotification,
  ShutdownRequest,
  ExitNotification,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
  ConfigurationRequest,
  RegistrationRequest,
  CancellationTokenSource,
} = require("vscode-languageserver-protocol/node");

const here = path.dirname(fileURLToPath(import.meta.url));
const extensionRoot = path.resolve(here, "..");
const repo = path.resolve(extensionRoot, "../..");
const { CLIENT_EXTENSIONS } = require(path.join(extensionRoot, "out/config.js"));
const extension = require(path.join(extensionRoot, "out/extension.js"));
const { middleware, onServerStatus, onSuggestionUpdated } = extension.testing;

const TIMEOUT_MS = 180_000;
const LOAD_TOKEN = "codestral-ls/model-load";
const uri = pathToFileURL(path.join(repo, "scratch_middleware.py")).href;
const text = "def add(a, b):\n    return \n";
const cursor = { line: 1, character: 11 };

let server;
let connection;
const statusTexts = []; // what the status bar item showed, in order
const statusWatchers = []; // called with each codestral/status, after the extension's handler
let loaded;

// What VS Code hands the middleware, reduced to what the extension reads.
const document = { languageId: "python", uri: { toString: () => uri } };
const token = { isCancellationRequested: false };
const automatic = { triggerKind: 1 };
/** vscode-languageclient's part: the LSP request. */
const next = (_doc, position) =>
  connection.sendRequest(InlineCompletionRequest.type, {
    textDocument: { uri },
    position,
    context: { triggerKind: 2 },
  });

before(async () => {
  // Activate with no server to find: the status bar and commands exist, no LanguageClient starts.
  await extension.activate({ subscriptions: [] });
  let shown = stub.statusItem.text;
  Object.defineProperty(stub.statusItem, "text", {
    get: () => shown,
    set: (v) => {
      shown = v;
      statusTexts.push(v);
    },
  });

  server = spawn(process.env.CODESTRAL_LS ?? path.join(repo, ".venv/bin/codestral-ls"), [], { stdio: "pipe" });
  server.stderr.resume();
  connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));
  let resolveLoaded;
  loaded = new Promise((resolve) => (resolveLoaded = resolve));
  connection.onRequest(WorkDoneProgressCreateRequest.type, () => null);
  connection.onRequest(RegistrationRequest.type, () => null);
  connection.onRequest(ConfigurationRequest.type, (params) => params.items.map(() => null));
  // The server's notifications go to the extension's own handlers, as the LanguageClient routes them.
  connection.onProgress(WorkDoneProgress.type, LOAD_TOKEN, (value) => {
    middleware.handleWorkDoneProgress(LOAD_TOKEN, value, () => {});
    if (value.kind === "end") resolveLoaded(value);
  });
  connection.onNotification("codestral/status", (params) => {
    onServerStatus(params);
    for (const watch of statusWatchers) watch(params);
  });
  connection.onNotification("codestral/suggestionUpdated", onSuggestionUpdated);
  connection.listen();
  await connection.sendRequest(InitializeRequest.type, {
    processId: process.pid,
    rootUri: pathToFileURL(repo).href,
    capabilities: {
      experimental: CLIENT_EXTENSIONS,
      window: { workDoneProgress: true },
      workspace: { configuration: true },
      textDocument: { inlineCompletion: {} },
    },
    initializationOptions: { budgetMs: 0 },
  });
  await connection.sendNotification(InitializedNotification.type, {});
  await connection.sendNotification(DidOpenTextDocumentNotification.type, {
    textDocument: { uri, languageId: "python", version: 1, text },
  });
});

after(async () => {
  if (!server) return;
  const exited = new Promise((resolve) => server.once("exit", resolve));
  try {
    await Promise.race([connection.sendRequest(ShutdownRequest.type), new Promise((r) => setTimeout(r, 10_000))]);
    await connection.sendNotification(ExitNotification.type);
  } catch {
    // gone already
  }
  const timer = setTimeout(() => server.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
  connection.dispose();
  await extension.deactivate();
});

test("the model load shows on the status bar, then ready", { timeout: TIMEOUT_MS }, async () => {
  await loaded;
  assert.ok(statusTexts.some((t) => t.includes("loading~spin")), `no spinner while loading: ${statusTexts}`);
  assert.doesNotMatch(stub.statusItem.text, /loading~spin|error/, `after the load: ${stub.statusItem.text}`);
});

test("an automatic request through the middleware: the latency on the status bar", { timeout: TIMEOUT_MS }, async () => {
  const result = await middleware.provideInlineCompletionItems(document, cursor, automatic, token, next);
  const items = Array.isArray(result) ? result : result.items;
  assert.ok(items.length > 0 && items[0].insertText.startsWith("a"), JSON.stringify(result));
  await new Promise((r) => setTimeout(r, 200)); // the status notification follows the answer
  assert.match(stub.statusItem.text, /^\$\(sparkle\) \d+ ms$/, `status bar: ${statusTexts.slice(-4)}`);
});

test("a request VS Code cancels: the status bar does not stay at running", { timeout: TIMEOUT_MS }, async () => {
  // The server says nothing more about a request cancelled with $/cancelRequest; the spinner it
  // started must not stay with nothing running.
  const before = stub.statusItem.text;
  const source = new CancellationTokenSource();
  let sawRunning;
  const running = new Promise((resolve) => (sawRunning = resolve));
  const after = [];
  statusWatchers.push((params) => {
    if (params.kind === "running") {
      sawRunning();
      source.cancel();
    } else {
      after.push(params.kind);
    }
  });
  const empty = { line: 2, character: 0 }; // the empty line after `return`: the model has to decode
  const asked = middleware.provideInlineCompletionItems(document, empty, automatic, source.token, (_doc, position) =>
    connection.sendRequest(InlineCompletionRequest.type, { textDocument: { uri }, position, context: { triggerKind: 2 } },
      source.token));
  await running;
  await asked.catch(() => undefined);
  statusWatchers.length = 0;
  await new Promise((r) => setTimeout(r, 300));
  assert.doesNotMatch(stub.statusItem.text, /sync~spin/, `status bar after the cancel: ${statusTexts.slice(-4)}`);
  if (after.length === 0) {
    // The cancel came first (else the server answered and said so): back to what was shown.
    assert.equal(stub.statusItem.text, before, `the status bar before the request: ${before}, after: ${statusTexts.slice(-4)}`);
  }
});

test("a disabled language: the middleware does not ask", async () => {
  stub.settings.disabledLanguages = ["python"];
  try {
    let asked = false;
    const result = await middleware.provideInlineCompletionItems(document, cursor, automatic, token, () => {
      asked = true;
    });
    assert.equal(result, null);
    assert.equal(asked, false);
  } finally {
    stub.settings.disabledLanguages = [];
  }
});

test("the server declines: the status bar says why", { timeout: TIMEOUT_MS }, async () => {
  // The language disabled on the server's side (workspace/didChangeConfiguration), not the client's.
  const configure = (disabledLanguages) =>
    connection.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { codestral: { budgetMs: 0, disabledLanguages } },
    });
  await configure(["python"]);
  await next(document, cursor);
  await new Promise((r) => setTimeout(r, 200));
  await configure([]);
  const last = statusTexts.at(-1);
  assert.match(stub.statusItem.tooltip, /no suggestion: .+/, `status bar: ${last} / ${stub.statusItem.tooltip}`);
});

test("codestral/suggestionUpdated where the cursor is re-triggers the ghost text", () => {
  const editor = (line, character) => ({
    document: { uri: { toString: () => uri } },
    selection: { active: { line, character }, isEmpty: true },
  });
  const update = { textDocument: { uri, version: 1 }, position: cursor };
  stub.api.window.activeTextEditor = editor(cursor.line, cursor.character + 1);
  onSuggestionUpdated(update);
  assert.deepEqual(stub.executed, [], "re-triggered although the cursor moved on");
  stub.api.window.activeTextEditor = editor(cursor.line, cursor.character);
  onSuggestionUpdated(update);
  assert.deepEqual(stub.executed.map((c) => c.id), ["editor.action.inlineSuggest.trigger"]);
});
