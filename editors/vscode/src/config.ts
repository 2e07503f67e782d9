// The parts of the extension that do not need VS Code: the settings sent to the server, server
// discovery, what the status bar says about the server's `codestral/status`, and when a
// `codestral/suggestionUpdated` asks for the ghost text again. Bundled to out/config.js too, so the
// protocol test runs the same code against the real server.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

/** `codestral.*` settings forwarded to the server, under the camelCase names it accepts. */
export const SERVER_KEYS = [
  "device",
  "dtype",
  "quantize",
  "budgetMs",
  "maxTokens",
  "multiline",
  "disabledLanguages",
  "prefixTokens",
  "suffixTokens",
  "secondOpinions",
] as const;

/**
 * Settings the server takes from its command line only (it refuses them over LSP: a workspace must
 * not choose the files it loads): passed as flags, from the user's settings only.
 */
export const COMMAND_LINE_KEYS = { model: "--model", draftModel: "--draft-model" } as const;
export type CommandLineKey = keyof typeof COMMAND_LINE_KEYS;

/** The server's command-line flags for `codestral.model` / `codestral.draftModel` (empty: none). */
export function serverArgs(get: (key: CommandLineKey) => unknown): string[] {
  const args: string[] = [];
  for (const [key, flag] of Object.entries(COMMAND_LINE_KEYS) as [CommandLineKey, string][]) {
    const value = get(key);
    if (typeof value === "string" && value.trim()) args.push(flag, value.trim());
  }
  return args;
}

export type ServerKey = (typeof SERVER_KEYS)[number];
export type ServerSettings = Partial<Record<ServerKey, unknown>>;

/**
 * The `initializationOptions` (and `didChangeConfiguration` settings) for the server: every key is
 * sent, so that removing a setting puts the server back on its default.
 */
export function serverSettings(get: (key: ServerKey) => unknown): ServerSettings {
  const out: ServerSettings = {};
  for (const key of SERVER_KEYS) {
    const value = get(key);
    if (value !== undefined && value !== null) {
      out[key] = value;
    }
  }
  return out;
}

export interface Discovery {
  /** The executable found, if any. */
  path?: string;
  /** Every place looked at, in order, for the error message. */
  tried: string[];
}

export interface DiscoveryInput {
  setting: string;
  workspaceFolders: readonly string[];
  /** Whether the workspace is trusted: an untrusted one never provides the server binary. */
  trusted: boolean;
  pathEnv?: string;
  platform?: NodeJS.Platform;
  home?: string;
}

const NAME = "codestral-ls";

/**
 * `codestral.serverPath`, then `codestral-ls` on PATH, then `.venv/bin/codestral-ls` in a workspace
 * folder, the last only in a trusted workspace (a cloned repository must not get its own binary run).
 */
export function findServer(input: DiscoveryInput): Discovery {
  const platform = input.platform ?? process.platform;
  const home = input.home ?? os.homedir();
  const tried: string[] = [];
  const check = (candidate: string): string | undefined => {
    tried.push(candidate);
    return isExecutable(candidate, platform) ? candidate : undefined;
  };

  const setting = input.setting.trim();
  if (setting) {
    // An explicit setting is the only place looked at: a wrong path is an error, not a fallback.
    const folder = input.workspaceFolders[0] ?? process.cwd();
    let p = setting.replace(/\$\{workspaceFolder\}/g, folder);
    if (p === "~" || p.startsWith("~/")) {
      p = path.join(home, p.slice(1));
    }
    if (!input.trusted && workspaceRelative(setting, platform)) {
      // `${workspaceFolder}/...` or a relative path names the repository's own binary: never run in
      // an untrusted workspace (as the .venv discovery below).
      tried.push(`${path.resolve(folder, p)} (not in an untrusted workspace: ${setting} is the workspace's)`);
      return { tried };
    }
    return { path: check(path.resolve(folder, p)), tried };
  }

  const exts = platform === "win32" ? [".exe", ".cmd", ""] : [""];
  const sep = platform === "win32" ? ";" : ":";
  for (const dir of (input.pathEnv ?? "").split(sep).filter(Boolean)) {
    for (const ext of exts) {
      const found = check(path.join(dir, NAME + ext));
      if (found) return { path: found, tried };
    }
  }
  for (const folder of input.trusted ? input.workspaceFolders : []) {
    const venv =
      platform === "win32" ? path.join(folder, ".venv", "Scripts", NAME + ".exe") : path.join(folder, ".venv", "bin", NAME);
    const found = check(venv);
    if (found) return { path: found, tried };
  }
  return { tried };
}

/** Whether a `codestral.serverPath` names a file in the workspace: `${workspaceFolder}` or a relative path. */
export function workspaceRelative(setting: string, platform: NodeJS.Platform = process.platform): boolean {
  const s = setting.trim();
  if (s.includes("${workspaceFolder}")) return true;
  if (s === "~" || s.startsWith("~/")) return false;
  return !(platform === "win32" ? path.win32.isAbsolute(s) : path.posix.isAbsolute(s));
}

/**
 * `codestral.serverPath` as the extension may use it: the user's own value (user settings), the
 * workspace's only in a trusted workspace (a cloned repository must not choose the program that runs).
 */
export function serverPathSetting(
  inspected: { globalValue?: unknown; workspaceValue?: unknown; workspaceFolderValue?: unknown } | undefined,
  trusted: boolean,
): string {
  const pick = trusted
    ? (inspected?.workspaceFolderValue ?? inspected?.workspaceValue ?? inspected?.globalValue)
    : inspected?.globalValue;
  return typeof pick === "string" ? pick : "";
}

/**
 * Inline items as the server meant them: its range kept (every item carries one); an item without one
 * (an older server) gets the empty range at the cursor, never VS Code's default, which runs from the
 * start of the word before the cursor to the end of the line (the item is dropped after a partial
 * word, or accepting it deletes the rest of the line).
 */
export function keepRanges<I extends { range?: unknown }>(items: I[], emptyRange: () => unknown): I[] {
  for (const item of items) {
    if (item.range === undefined || item.range === null) item.range = emptyRange();
  }
  return items;
}

function isExecutable(file: string, platform: NodeJS.Platform): boolean {
  try {
    if (!fs.statSync(file).isFile()) return false;
    if (platform !== "win32") fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `codestral/status` from the server. */
export interface ServerStatus {
  kind: "loading" | "ready" | "error" | "running" | "answered" | "declined";
  message?: string;
  latencyMs?: number | null;
}

/** The status bar item's text and tooltip for a server status (the item's icon syntax). */
export function statusText(s: ServerStatus): { text: string; tooltip: string } {
  const message = s.message ?? "";
  switch (s.kind) {
    case "loading":
      return { text: "$(loading~spin) Codestral", tooltip: `Codestral: ${message || "loading the model"}` };
    case "running":
      return { text: "$(sync~spin) Codestral", tooltip: "Codestral: asking the model" };
    case "answered": {
      const ms = typeof s.latencyMs === "number" ? `${Math.round(s.latencyMs)} ms` : "Codestral";
      return { text: `$(sparkle) ${ms}`, tooltip: "Codestral: latency of the last suggestion. Click to disable." };
    }
    case "declined":
      return { text: "$(circle-outline) Codestral", tooltip: `Codestral: no suggestion: ${message || "nothing to suggest here"}` };
    case "error":
      return { text: "$(error) Codestral", tooltip: `Codestral: ${message}` };
    default:
      return { text: "$(sparkle) Codestral", tooltip: "Codestral: ready. Click to disable." };
  }
}

/** `codestral/suggestionUpdated`: the server has a longer suggestion at this place. */
export interface SuggestionUpdated {
  textDocument: { uri: string; version?: number | null };
  position: { line: number; character: number };
}

/**
 * Whether the ghost text should be asked for again: the notification is about the document in the
 * active editor and its cursor is still where the suggestion was asked for (VS Code's positions are
 * UTF-16, like the server's).
 */
export function shouldRetrigger(
  update: SuggestionUpdated,
  editor: { uri: string; line: number; character: number; empty: boolean } | undefined,
): boolean {
  return (
    !!editor &&
    editor.empty &&
    editor.uri === update.textDocument.uri &&
    editor.line === update.position.line &&
    editor.character === update.position.character
  );
}

/** The client capability that opts in to the server's extensions. */
export const CLIENT_EXTENSIONS = { codestral: { suggestionUpdates: true, status: true } } as const;

/** `codestral/didFocus` params. */
export interface DidFocus {
  textDocument: { uri: string };
  position: { line: number; character: number };
}

/**
 * Where the cursor came to rest, as a `codestral/didFocus` to send: only when it rests on another line
 * or in another document than `last` (the key returned with the last one sent), so moving within a
 * line, or not at all, sends nothing.
 */
export function focusChange(
  uri: string,
  at: { line: number; character: number },
  last: string,
): { key: string; params: DidFocus } | undefined {
  const key = `${uri}:${at.line}`;
  if (key === last) return undefined;
  return { key, params: { textDocument: { uri }, position: { line: at.line, character: at.character } } };
}
