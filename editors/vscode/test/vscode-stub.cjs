// A stub `vscode` module for loading the bundled extension in plain Node: the few APIs the
// extension calls, recording what it shows (status bar item, messages) and the commands it runs.
// Requiring this file makes `require("vscode")` return the stub.
const Module = require("node:module");

const settings = { serverPath: "/nowhere/codestral-ls", enabled: true, disabledLanguages: [] };
const updates = [];
const errors = [];
const warnings = [];
const executed = []; // commands the extension ran
const commands = new Map();
const statusItem = { show() {}, dispose() {} };
const disposable = { dispose() {} };
const channel = { info() {}, warn() {}, error() {}, appendLine() {}, show() {}, dispose() {} };

const api = {
  window: {
    createOutputChannel: () => channel,
    createStatusBarItem: () => statusItem,
    showErrorMessage: async (message) => void errors.push(message),
    showWarningMessage: async (message) => void warnings.push(message),
    onDidChangeActiveTextEditor: () => disposable,
    onDidChangeTextEditorSelection: () => disposable,
    activeTextEditor: undefined,
  },
  workspace: {
    workspaceFolders: undefined,
    isTrusted: true,
    onDidGrantWorkspaceTrust: () => disposable,
    getConfiguration: () => ({
      get: (key, fallback) => settings[key] ?? fallback,
      inspect: (key) => ({ key, globalValue: settings[key] }),
      update: async (key, value, target) => void updates.push({ key, value, target }),
    }),
    onDidChangeConfiguration: () => disposable,
  },
  commands: {
    registerCommand: (id, fn) => (commands.set(id, fn), disposable),
    executeCommand: async (id, ...args) => void executed.push({ id, args }),
  },
  StatusBarAlignment: { Left: 1, Right: 2 },
  ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
  InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
  ThemeColor: class {
    constructor(id) {
      this.id = id;
    }
  },
};
// vscode-languageclient subclasses and reads vscode classes at load time: give it empty ones.
const vscode = new Proxy(api, { get: (target, key) => (key in target ? target[key] : class {}) });

const load = Module._load;
Module._load = function (request, ...rest) {
  return request === "vscode" ? vscode : load.call(this, request, ...rest);
};

module.exports = { settings, updates, errors, warnings, executed, commands, statusItem, api };
