// VS Code client for codestral-ls: inline (ghost-text) completions from a local model.
//
// vscode-languageclient does the LSP work: it registers the inline completion provider from the
// server's capabilities, and `codestral.accept` (the command on every item) from the server's
// executeCommandProvider, so accepting a suggestion tells the server. This file adds settings,
// server discovery (never from an untrusted workspace), the server's extensions (status bar from
// `codestral/status`, ghost text asked again on `codestral/suggestionUpdated`, `codestral/didFocus`
// when the cursor rests on another line), and the toggle / trigger / stats / restart commands.
import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  LanguageClient,
  type LanguageClientOptions,
  type Middleware,
  type ServerOptions,
  State,
} from "vscode-languageclient/node";
import {
  CLIENT_EXTENSIONS,
  COMMAND_LINE_KEYS,
  findServer,
  focusChange,
  keepRanges,
  SERVER_KEYS,
  serverArgs,
  serverPathSetting,
  serverSettings,
  shouldRetrigger,
  statusText,
  type ServerSettings,
  type ServerStatus,
  type SuggestionUpdated,
} from "./config";

const SECTION = "codestral";
const STATS_REQUEST = "codestral/stats";
const LOAD_PROGRESS_TOKEN = "codestral-ls/model-load";
const FOCUS_DEBOUNCE_MS = 200;

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let status: StatusItem;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("Codestral", { log: true });
  status = new StatusItem();
  context.subscriptions.push(
    output,
    status,
    vscode.commands.registerCommand("codestral.toggle", toggle),
    vscode.commands.registerCommand("codestral.trigger", () =>
      vscode.commands.executeCommand("editor.action.inlineSuggest.trigger"),
    ),
    vscode.commands.registerCommand("codestral.showStats", showStats),
    vscode.commands.registerCommand("codestral.restart", restart),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChanged),
    vscode.window.onDidChangeActiveTextEditor(() => {
      status.render();
      noteFocus();
    }),
    vscode.window.onDidChangeTextEditorSelection(() => noteFocus()),
    // Trust granted later: a server in the workspace's .venv may now be used.
    vscode.workspace.onDidGrantWorkspaceTrust(() => {
      if (!client) void startClient();
    }),
  );
  await startClient();
}

export async function deactivate(): Promise<void> {
  await stopClient();
}

function config(): vscode.WorkspaceConfiguration {
  return vscode.workspace.getConfiguration(SECTION);
}

function currentServerSettings(): ServerSettings {
  const c = config();
  return serverSettings((key) => c.get(key));
}

/** Whether automatic suggestions are wanted in this language (the toggle and `codestral.disabledLanguages`). */
function enabledFor(languageId: string | undefined): boolean {
  const c = config();
  return c.get<boolean>("enabled", true) && !(languageId && c.get<string[]>("disabledLanguages", []).includes(languageId));
}

async function startClient(): Promise<void> {
  const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
  const found = findServer({
    setting: serverPathSetting(config().inspect<string>("serverPath"), vscode.workspace.isTrusted),
    workspaceFolders: folders,
    trusted: vscode.workspace.isTrusted,
    pathEnv: process.env.PATH,
  });
  if (!found.path) {
    output.error(`codestral-ls not found; looked at:\n  ${found.tried.join("\n  ")}`);
    status.error("codestral-ls not found");
    const message =
      "Codestral: the codestral-ls server was not found. Set `codestral.serverPath` (user settings), put " +
      "`codestral-ls` on PATH, or install it into `.venv` in a trusted workspace.";
    void vscode.window.showErrorMessage(message, "Open Settings", "Show Log").then((choice) => {
      if (choice === "Open Settings") void vscode.commands.executeCommand("workbench.action.openSettings", "codestral.serverPath");
      if (choice === "Show Log") output.show();
    });
    return;
  }
  output.info(`starting ${found.path}`);

  // stdio transport; the server logs to stderr, which goes to the output channel.
  // The model files come from the user's settings only (global scope), as command-line flags.
  const args = serverArgs((key) => config().inspect<string>(key)?.globalValue);
  const serverOptions: ServerOptions = { command: found.path, args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: currentServerSettings(),
    outputChannel: output,
    middleware,
  };

  const c = new LanguageClient(SECTION, "Codestral", serverOptions, clientOptions);
  // Opt in to the server's extensions (client capability experimental.codestral).
  c.registerFeature({
    fillClientCapabilities(capabilities) {
      capabilities.experimental = { ...(capabilities.experimental as object | undefined), ...CLIENT_EXTENSIONS };
    },
    initialize() {},
    getState: () => ({ kind: "static" }),
    clear() {},
  });
  c.onNotification("codestral/status", onServerStatus);
  c.onNotification("codestral/suggestionUpdated", onSuggestionUpdated);
  c.onDidChangeState((e) => {
    if (e.newState === State.Stopped && client === c) status.error("server stopped (see the Codestral output)");
  });
  client = c;
  status.loading("starting server");
  try {
    await c.start();
  } catch (err) {
    status.error(`server failed to start: ${String(err)}`);
    void vscode.window.showErrorMessage(`Codestral: ${found.path} failed to start: ${String(err)}`);
  }
}

let focusTimer: NodeJS.Timeout | undefined;
let lastFocus = "";

/** `codestral/didFocus` when the cursor rests (200 ms) on another line or in another document. */
function noteFocus(): void {
  clearTimeout(focusTimer);
  focusTimer = setTimeout(() => {
    const editor = vscode.window.activeTextEditor;
    const c = client;
    const ours = (c?.initializeResult?.capabilities.experimental as { codestral?: { didFocus?: boolean } } | undefined)
      ?.codestral;
    if (!editor || !c?.isRunning() || !ours?.didFocus) return;
    const change = focusChange(editor.document.uri.toString(), editor.selection.active, lastFocus);
    if (!change) return;
    lastFocus = change.key;
    void c.sendNotification("codestral/didFocus", change.params);
  }, FOCUS_DEBOUNCE_MS);
}

/** Inline requests sent and not yet answered or cancelled. */
let inFlight = 0;

/** What the extension adds between VS Code and the protocol: the toggle and disabled languages, the
 * latency and load progress on the status bar, no completion-widget duplicates. */
const middleware: Middleware = {
  async provideInlineCompletionItems(document, position, context, token, next) {
    const manual = context.triggerKind === vscode.InlineCompletionTriggerKind.Invoke;
    if (!manual && !enabledFor(document.languageId)) return null;
    const started = Date.now();
    inFlight += 1;
    try {
      const result = await next(document, position, context, token);
      if (!token.isCancellationRequested) status.answered(Date.now() - started);
      // The server's range, kept: without one VS Code replaces [word start, end of line].
      const items = Array.isArray(result) ? result : result?.items;
      if (items) keepRanges(items, () => new vscode.Range(position, position));
      return result;
    } finally {
      inFlight -= 1;
      // VS Code cancelled it ($/cancelRequest): the server says nothing more about it, so the
      // spinner would stay with nothing running.
      if (token.isCancellationRequested && inFlight === 0) status.cancelled();
    }
  },
  // The server's textDocument/completion is a fallback for editors without inline completion;
  // here it would duplicate the ghost text in the suggest widget and compete for the model.
  provideCompletionItem: () => undefined,
  handleWorkDoneProgress(token, params, next) {
    if (token === LOAD_PROGRESS_TOKEN) {
      if (params.kind === "end") {
        if (params.message?.startsWith("failed")) status.error(params.message);
        else status.ready();
      } else {
        status.loading(params.message, params.percentage);
      }
    }
    next(token, params);
  },
};

/** `codestral/status`: the status bar says what the server is doing and why nothing is shown. */
function onServerStatus(params: ServerStatus): void {
  status.server(params);
}

/** `codestral/suggestionUpdated`: a longer suggestion where the cursor still is shows with no keystroke. */
function onSuggestionUpdated(params: SuggestionUpdated): void {
  const editor = vscode.window.activeTextEditor;
  const here = editor && {
    uri: editor.document.uri.toString(),
    line: editor.selection.active.line,
    character: editor.selection.active.character,
    empty: editor.selection.isEmpty,
  };
  if (shouldRetrigger(params, here)) void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
}

/** For the tests (test/middleware.test.mjs): the extension's own handlers, driven by a real server. */
export const testing = { middleware, onServerStatus, onSuggestionUpdated };

async function stopClient(): Promise<void> {
  const c = client;
  client = undefined;
  if (c) {
    try {
      await c.stop(5000);
    } catch (err) {
      output.warn(`stopping the server: ${String(err)}`);
    }
  }
}

async function restart(): Promise<void> {
  await stopClient();
  await startClient();
}

function onConfigurationChanged(e: vscode.ConfigurationChangeEvent): void {
  if (!e.affectsConfiguration(SECTION)) return;
  const restartKeys = ["serverPath", ...Object.keys(COMMAND_LINE_KEYS)];
  if (restartKeys.some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
    void restart();
  } else if (client?.isRunning() && SERVER_KEYS.some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
    void client.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { [SECTION]: currentServerSettings() },
    });
  }
  status.render();
}

async function toggle(): Promise<void> {
  const c = config();
  const inspected = c.inspect<boolean>("enabled");
  // Write where the effective value comes from, so the toggle always takes effect.
  const target =
    inspected?.workspaceFolderValue !== undefined
      ? vscode.ConfigurationTarget.WorkspaceFolder
      : inspected?.workspaceValue !== undefined
        ? vscode.ConfigurationTarget.Workspace
        : vscode.ConfigurationTarget.Global;
  await c.update("enabled", !c.get<boolean>("enabled", true), target);
}

async function showStats(): Promise<void> {
  if (!client?.isRunning()) {
    void vscode.window.showWarningMessage("Codestral: the server is not running.");
    return;
  }
  // `{}` rather than no params: pygls rejects a request without a params member.
  const stats = await client.sendRequest<Record<string, unknown>>(STATS_REQUEST, {});
  output.info(`codestral/stats:\n${JSON.stringify(stats, null, 2)}`);
  output.show(true);
}

type Phase =
  | { kind: "loading"; detail: string }
  | { kind: "ready"; latencyMs?: number }
  | { kind: "error"; detail: string }
  | { kind: "server"; status: ServerStatus };

/** loading / running / the last latency / why nothing is shown / disabled / error; a click toggles. */
class StatusItem implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private phase: Phase = { kind: "loading", detail: "starting" };
  private beforeRunning: Phase | undefined;

  constructor() {
    this.item.name = "Codestral";
    this.item.command = "codestral.toggle";
    this.render();
    this.item.show();
  }

  loading(message?: string, percentage?: number): void {
    const pct = percentage === undefined ? "" : ` ${percentage}%`;
    this.phase = { kind: "loading", detail: `${message ?? "loading model"}${pct}` };
    this.render();
  }

  /** A suggestion came back: our own latency, unless the server reports its status itself. */
  answered(latencyMs: number): void {
    if (this.phase.kind !== "server") this.ready(latencyMs);
  }

  ready(latencyMs?: number): void {
    this.phase = { kind: "ready", latencyMs: latencyMs ?? (this.phase.kind === "ready" ? this.phase.latencyMs : undefined) };
    this.render();
  }

  error(detail: string): void {
    this.phase = { kind: "error", detail };
    this.render();
  }

  /** `codestral/status`: the server says what it is doing, and why nothing is shown. */
  server(s: ServerStatus): void {
    const running = (p: Phase) => p.kind === "server" && p.status.kind === "running";
    if (s.kind === "running" && !running(this.phase)) this.beforeRunning = this.phase;
    this.phase = { kind: "server", status: s };
    this.render();
  }

  /** The request in flight was cancelled: back to what was shown before it ran. */
  cancelled(): void {
    if (this.phase.kind === "server" && this.phase.status.kind === "running" && this.beforeRunning) {
      this.phase = this.beforeRunning;
      this.render();
    }
  }

  render(): void {
    const language = vscode.window.activeTextEditor?.document.languageId;
    const p = this.phase;
    this.item.backgroundColor = undefined;
    if (p.kind === "error") {
      this.item.text = "$(error) Codestral";
      this.item.tooltip = `Codestral: ${p.detail}`;
      this.item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
    } else if (!enabledFor(language)) {
      this.item.text = "$(circle-slash) Codestral";
      this.item.tooltip = config().get<boolean>("enabled", true)
        ? `Codestral: disabled for ${language} (codestral.disabledLanguages)`
        : "Codestral: disabled. Click to enable.";
    } else if (p.kind === "server") {
      const { text, tooltip } = statusText(p.status);
      this.item.text = text;
      this.item.tooltip = tooltip;
      if (p.status.kind === "error") this.item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
    } else if (p.kind === "loading") {
      this.item.text = "$(loading~spin) Codestral";
      this.item.tooltip = `Codestral: ${p.detail}`;
    } else {
      this.item.text = p.latencyMs === undefined ? "$(sparkle) Codestral" : `$(sparkle) ${p.latencyMs} ms`;
      this.item.tooltip = "Codestral: ready (last suggestion latency). Click to disable.";
    }
  }

  dispose(): void {
    this.item.dispose();
  }
}
