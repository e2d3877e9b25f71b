// The VS Code side of nextab: starts `nextab serve`, shows its suggestions as ghost text, shows
// next-edit suggestions where they will happen, and reports what became of each suggestion.

import * as vscode from "vscode";
import {
  LanguageClient,
  State as ClientState,
  type LanguageClientOptions,
  type ServerOptions,
} from "vscode-languageclient/node";

import { InflightRequests, raceCancel, type Request, type Sent } from "./inflight";
import { previewLine, tabAction } from "./nextEdit";
import { OutcomeTracker, type Report } from "./outcomes";
import * as P from "./protocol";

let client: LanguageClient | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("nextab");
  const bar = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  bar.command = "nextab.status";
  bar.show();
  const state = new State(output, bar);
  context.subscriptions.push(output, bar, state);

  context.subscriptions.push(
    vscode.languages.registerInlineCompletionItemProvider({ pattern: "**" }, new Provider(state)),
    vscode.commands.registerCommand("nextab.accepted", (id: number) => state.completionAccepted(id)),
    vscode.commands.registerCommand("nextab.acceptWord", () => state.acceptWord()),
    vscode.commands.registerCommand("nextab.dismiss", () => state.dismiss()),
    vscode.commands.registerCommand("nextab.toggle", () => state.toggle()),
    vscode.commands.registerCommand("nextab.showLog", () => output.show()),
    vscode.commands.registerCommand("nextab.status", () => state.showStatus()),
    vscode.commands.registerCommand("nextab.restart", () => state.restart()),
    vscode.commands.registerCommand("nextab.nextEdit", () => state.nextEditTab()),
    vscode.commands.registerCommand("nextab.dismissNextEdit", () => state.dismissNextEdit()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("nextab")) {
        state.configurationChanged();
      }
    }),
    vscode.workspace.onDidChangeTextDocument((e) => state.documentChanged(e)),
    vscode.window.onDidChangeActiveTextEditor(() => state.clearNextEdit("ignored")),
    vscode.window.onDidChangeTextEditorSelection((e) => state.selectionChanged(e)),
  );
  await state.start();
}

export async function deactivate(): Promise<void> {
  await client?.stop();
  client = undefined;
}

function settings(): { command: string; args: string[]; enabled: boolean; delayMs: number; server: Record<string, unknown> } {
  const c = vscode.workspace.getConfiguration("nextab");
  return {
    command: c.get<string>("serverCommand", "nextab"),
    args: c.get<string[]>("serverArgs", ["serve"]),
    enabled: c.get<boolean>("enable", true),
    delayMs: c.get<number>("nextEdit.delayMs", 600),
    server: P.serverSettings({
      model: c.get<string>("model", "embedded"),
      device: c.get<string>("device", "auto"),
      decoding: c.get<string>("decoding", "greedy"),
      maxTokens: c.get<number>("maxTokens", 64),
      nextEditEnable: c.get<boolean>("nextEdit.enable", true),
      extra: c.get<Record<string, unknown>>("settings", {}),
    }),
  };
}

interface ShownEdit {
  uri: string;
  suggestion: P.EditSuggestion;
  latencyMs: number;
}

class State implements vscode.Disposable {
  enabled = settings().enabled;
  readonly outcomes = new OutcomeTracker((r) => this.report(r));
  private status: P.Status | undefined;
  private stopped = false;
  private poll: NodeJS.Timeout | undefined;
  private editTimer: NodeJS.Timeout | undefined;
  private editRequest: vscode.CancellationTokenSource | undefined;
  private edit: ShownEdit | undefined;
  // A next edit that came while ghost text was on screen: shown once the ghost text is turned
  // down without a change (Esc, the cursor moving away), dropped by any edit.
  private deferredEdit: (ShownEdit & { version: number }) | undefined;
  private ghostAt: { uri: string; version: number } | undefined;
  private readonly removed = vscode.window.createTextEditorDecorationType({
    backgroundColor: new vscode.ThemeColor("diffEditor.removedTextBackground"),
  });
  private readonly added = vscode.window.createTextEditorDecorationType({
    after: { color: new vscode.ThemeColor("editorGhostText.foreground"), margin: "0 0 0 2em" },
  });

  constructor(
    readonly output: vscode.OutputChannel,
    private readonly bar: vscode.StatusBarItem,
  ) {}

  dispose(): void {
    clearInterval(this.poll);
    clearTimeout(this.editTimer);
    this.removed.dispose();
    this.added.dispose();
  }

  async start(): Promise<void> {
    const s = settings();
    const serverOptions: ServerOptions = { command: s.command, args: s.args };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
      outputChannel: this.output,
      initializationOptions: s.server,
      middleware: {
        // The server also answers plain completion requests, for editors without ghost text;
        // here they would ask the model twice per keystroke (each cancelling the other) and pop
        // the suggestion up in the suggest widget as well.
        provideCompletionItem: () => undefined,
      },
    };
    const started = new LanguageClient("nextab", "nextab", serverOptions, clientOptions);
    client = started;
    this.stopped = false;
    this.render();
    // The client restarts a crashed server a few times by itself; the status bar follows it and
    // says so when it gives up, rather than spinning on "loading" for ever.
    started.onDidChangeState(({ newState }) => {
      if (client !== started) {
        return;
      }
      this.stopped = newState === ClientState.Stopped;
      if (this.stopped) {
        this.status = undefined;
        clearInterval(this.poll);
        this.render();
      } else if (newState === ClientState.Running) {
        this.pollStatus();
      }
    });
    try {
      await started.start();
    } catch (error) {
      this.stopped = true;
      this.render();
      this.output.appendLine(`nextab: the server did not start: ${error}`);
      void vscode.window.showErrorMessage(
        `nextab: could not start "${s.command}". Install it (pip install nextab) or set nextab.serverCommand.`,
        "Show Log",
      ).then((choice) => choice && this.output.show());
      return;
    }
    this.pollStatus();
  }

  async restart(): Promise<void> {
    this.outcomes.gone();
    this.clearNextEdit("ignored");
    await client?.stop();
    await this.start();
  }

  configurationChanged(): void {
    const s = settings();
    this.enabled = s.enabled;
    if (!this.enabled) {
      this.clearNextEdit("ignored");
    }
    void client?.sendNotification("workspace/didChangeConfiguration", { settings: { nextab: s.server } });
    this.pollStatus();
    this.render();
  }

  async toggle(): Promise<void> {
    await vscode.workspace.getConfiguration("nextab").update("enable", !this.enabled, vscode.ConfigurationTarget.Global);
  }

  // -- status ------------------------------------------------------------------------------

  private pollStatus(): void {
    clearInterval(this.poll);
    const tick = async () => {
      this.status = await this.fetchStatus();
      this.render();
      const settled = this.status?.state === "ready" && !(this.status.indexing && !this.status.indexing.finished);
      if (settled || this.status?.state === "failed") {
        clearInterval(this.poll);
      }
    };
    void tick();
    this.poll = setInterval(tick, 1500);
  }

  private async fetchStatus(): Promise<P.Status | undefined> {
    if (!client?.isRunning()) {
      return undefined;
    }
    try {
      return await client.sendRequest<P.Status>(P.STATUS, null);
    } catch {
      return undefined;
    }
  }

  latency(ms: number): void {
    if (this.status) {
      this.status.lastLatencyMs = ms;
    }
    this.render();
  }

  private render(): void {
    const { text, busy } = P.statusText(this.status, this.enabled, this.stopped);
    this.bar.text = `${busy ? "$(sync~spin)" : "$(sparkle)"} ${text}`;
    const model = this.status?.model;
    this.bar.tooltip = model?.name
      ? `nextab ${this.status?.version}: ${model.name} on ${model.device} (${model.dtype}), ${this.status?.decoding} decoding. Click for actions.`
      : "nextab: click for actions";
  }

  async showStatus(): Promise<void> {
    const status = await this.fetchStatus();
    const detail = status ? JSON.stringify(status, null, 2) : "the server is not running";
    const choice = await vscode.window.showQuickPick(
      [this.enabled ? "Turn suggestions off" : "Turn suggestions on", "Show server log", "Restart server"],
      { placeHolder: status ? `nextab ${status.version}: ${status.model.name ?? status.state}` : detail },
    );
    if (choice?.startsWith("Turn")) {
      await this.toggle();
    } else if (choice === "Show server log") {
      this.output.show();
    } else if (choice === "Restart server") {
      await this.restart();
    }
  }

  // -- completions -------------------------------------------------------------------------

  private report(r: Report): void {
    void client?.sendNotification(P.OUTCOME, {
      textDocument: { uri: r.uri },
      kind: r.kind,
      outcome: r.outcome,
      shownChars: r.shownChars,
      acceptedChars: r.acceptedChars,
      latencyMs: r.latencyMs,
    });
  }

  completionAccepted(id: number): void {
    this.outcomes.accepted(id);
    void vscode.commands.executeCommand("setContext", "nextab.suggestionVisible", false);
  }

  async acceptWord(): Promise<void> {
    // What VS Code takes as a "word" depends on its version and the language's word pattern
    // (a leading blank alone, punctuation alone): count what the cursor actually moved over.
    const editor = vscode.window.activeTextEditor;
    const shown = this.outcomes.visible;
    const before = editor?.document.offsetAt(editor.selection.active);
    await vscode.commands.executeCommand("editor.action.inlineSuggest.acceptNextWord");
    if (editor && shown && before !== undefined) {
      const taken = editor.document.offsetAt(editor.selection.active) - before;
      if (taken > 0) {
        this.outcomes.partial(shown.id, taken);
      }
    }
  }

  async dismiss(): Promise<void> {
    this.outcomes.dismissed();
    this.ghostAt = undefined;
    await vscode.commands.executeCommand("setContext", "nextab.suggestionVisible", false);
    await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
    this.showDeferredEdit();
  }

  /** Ghost text for this document version is (or may be) on screen. */
  ghostShown(document: vscode.TextDocument, shown: boolean): void {
    this.ghostAt = shown ? { uri: document.uri.toString(), version: document.version } : undefined;
    const edit = this.edit;
    if (shown && edit && edit.uri === document.uri.toString()) {
      // A next edit already drawn for this text makes way for the ghost text, and comes back.
      this.edit = undefined;
      this.hideNextEdit();
      this.deferredEdit = { ...edit, version: document.version };
    }
  }

  private ghostOn(document: vscode.TextDocument): boolean {
    return this.ghostAt?.uri === document.uri.toString() && this.ghostAt.version === document.version;
  }

  selectionChanged(e: vscode.TextEditorSelectionChangeEvent): void {
    // The cursor moved: VS Code took the ghost text away (typing, too, moves it, but after the
    // change that already dropped a deferred edit). The next edit's turn.
    this.ghostAt = undefined;
    const d = this.deferredEdit;
    if (d && e.textEditor.document.uri.toString() === d.uri && e.textEditor.document.version === d.version) {
      this.showDeferredEdit();
    }
  }

  private showDeferredEdit(): void {
    const d = this.deferredEdit;
    this.deferredEdit = undefined;
    const editor = vscode.window.activeTextEditor;
    if (d && editor && editor.document.uri.toString() === d.uri && editor.document.version === d.version) {
      this.showNextEdit(editor, d);
    }
  }

  // -- next edits --------------------------------------------------------------------------

  documentChanged(e: vscode.TextDocumentChangeEvent): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor || e.document !== editor.document || e.contentChanges.length === 0) {
      return;
    }
    if (this.edit && this.edit.uri === e.document.uri.toString()) {
      // Any change may move the edit's lines: a stale range must never be applied.
      this.clearNextEdit("ignored");
    }
    this.deferredEdit = undefined;
    this.scheduleNextEdit(editor);
  }

  private scheduleNextEdit(editor: vscode.TextEditor): void {
    clearTimeout(this.editTimer);
    this.editRequest?.cancel();
    const wanted = (settings().server.nextEdit as { enabled?: boolean } | undefined)?.enabled !== false;
    if (!this.enabled || !wanted || !this.serverHasNextEdit()) {
      return;
    }
    this.editTimer = setTimeout(() => void this.requestNextEdit(editor), settings().delayMs);
  }

  private serverHasNextEdit(): boolean {
    const experimental = client?.initializeResult?.capabilities.experimental as { nextab?: { nextEdit?: boolean } } | undefined;
    return Boolean(experimental?.nextab?.nextEdit);
  }

  private async requestNextEdit(editor: vscode.TextEditor): Promise<void> {
    if (!client?.isRunning() || vscode.window.activeTextEditor !== editor) {
      return;
    }
    const document = editor.document;
    const version = document.version;
    const source = new vscode.CancellationTokenSource();
    this.editRequest = source;
    const started = Date.now();
    const position = editor.selection.active;
    let result: unknown;
    try {
      result = await client.sendRequest(P.NEXT_EDIT, P.nextEditParams(document.uri.toString(), {
        line: position.line,
        character: position.character,
      }), source.token);
    } catch {
      return;
    }
    if (source.token.isCancellationRequested || document.version !== version) {
      return;
    }
    const [first] = P.editSuggestions(result);
    if (!first) {
      return;
    }
    const shown = { uri: document.uri.toString(), suggestion: first, latencyMs: Date.now() - started };
    if (this.ghostOn(document)) {
      // Two suggestions at once, one taken by Tab, the other drawn over the code: the ghost
      // text at the cursor goes first.
      this.deferredEdit = { ...shown, version };
    } else {
      this.showNextEdit(editor, shown);
    }
  }

  private showNextEdit(editor: vscode.TextEditor, shown: ShownEdit): void {
    this.clearNextEdit("ignored");
    this.edit = shown;
    const s = shown.suggestion;
    const range = client!.protocol2CodeConverter.asRange(s.range);
    const lines = [];
    for (let line = s.range.start.line; line <= s.range.end.line; line++) {
      lines.push(editor.document.lineAt(line).text);
    }
    const preview = previewLine(lines, s) || "delete"; // nothing but blanks left
    editor.setDecorations(this.removed, range.isEmpty ? [] : [range]);
    const end = editor.document.lineAt(s.range.end.line).range.end;
    editor.setDecorations(this.added, [{
      range: new vscode.Range(end, end),
      renderOptions: { after: { contentText: `→ ${preview.trim()}  (Tab)` } },
      hoverMessage: new vscode.MarkdownString().appendText(`nextab next edit (${s.reason}):\n`).appendCodeblock(s.newText),
    }]);
    void vscode.commands.executeCommand("setContext", "nextab.nextEditVisible", true);
  }

  clearNextEdit(outcome: "ignored" | "dismissed" | "accepted"): void {
    const shown = this.edit;
    if (!shown) {
      return;
    }
    this.edit = undefined;
    this.hideNextEdit();
    const chars = shown.suggestion.newText.length;
    this.report({
      uri: shown.uri,
      kind: "nextEdit",
      outcome,
      shownChars: chars,
      acceptedChars: outcome === "accepted" ? chars : 0,
      latencyMs: Math.round(shown.latencyMs),
    });
  }

  private hideNextEdit(): void {
    for (const editor of vscode.window.visibleTextEditors) {
      editor.setDecorations(this.removed, []);
      editor.setDecorations(this.added, []);
    }
    void vscode.commands.executeCommand("setContext", "nextab.nextEditVisible", false);
  }

  async nextEditTab(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const shown = this.edit;
    if (!editor || !shown || shown.uri !== editor.document.uri.toString()) {
      return;
    }
    const range = client!.protocol2CodeConverter.asRange(shown.suggestion.range);
    const cursor = editor.selection.active;
    if (tabAction(shown.suggestion, { line: cursor.line, character: cursor.character }) === "jump") {
      editor.selection = new vscode.Selection(range.start, range.start);
      editor.revealRange(range, vscode.TextEditorRevealType.InCenterIfOutsideViewport);
      return;
    }
    this.clearNextEdit("accepted"); // before the edit, whose change would clear it as ignored
    await editor.edit((builder) => builder.replace(range, shown.suggestion.newText));
  }

  dismissNextEdit(): void {
    this.clearNextEdit("dismissed");
  }
}

class Provider implements vscode.InlineCompletionItemProvider {
  private readonly requests = new InflightRequests<unknown>();

  constructor(private readonly state: State) {}

  private send(uri: string, position: P.Position, automatic: boolean): Sent<unknown> {
    const source = new vscode.CancellationTokenSource();
    const params = P.inlineParams(uri, position, automatic);
    const promise = client!.sendRequest(P.INLINE_COMPLETION, params, source.token);
    promise.catch((error) => {
      if (!source.token.isCancellationRequested) {
        this.state.output.appendLine(`nextab: inline completion failed: ${error}`);
      }
    });
    return { promise, cancel: () => source.cancel() };
  }

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[] | undefined> {
    if (!this.state.enabled || !client?.isRunning()) {
      return undefined;
    }
    const uri = document.uri.toString();
    const at = { line: position.line, character: position.character };
    const key = `${uri}@${document.version}:${at.line}:${at.character}`;
    const automatic = context.triggerKind === vscode.InlineCompletionTriggerKind.Automatic;
    const request = this.requests.get(key, () => this.send(uri, at, automatic));
    const result = await raceCancel(request.promise, (f) => token.onCancellationRequested(f), CANCELLED);
    if (result === CANCELLED) {
      // VS Code gave up on this ask, not the text on it: the request runs on, and VS Code is
      // asked again once it has an answer (if the text and cursor are still where they were).
      void request.promise.then((late) => this.retrigger(request, late));
      return undefined;
    }
    return this.items(document, position, request, result);
  }

  private retrigger(request: Request<unknown>, result: unknown): void {
    const editor = vscode.window.activeTextEditor;
    if (request.retriggered || !P.inlineItems(result).length || !editor || !this.requests.isCurrent(request.key)) {
      return;
    }
    const { document, selection } = editor;
    const key = `${document.uri.toString()}@${document.version}:${selection.active.line}:${selection.active.character}`;
    if (key === request.key && selection.isEmpty) {
      request.retriggered = true;
      void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
    }
  }

  private items(
    document: vscode.TextDocument,
    position: vscode.Position,
    request: Request<unknown>,
    result: unknown,
  ): vscode.InlineCompletionItem[] {
    const [first] = P.inlineItems(result);
    this.state.ghostShown(document, Boolean(first));
    if (!first) {
      this.state.outcomes.gone();
      void vscode.commands.executeCommand("setContext", "nextab.suggestionVisible", false);
      return [];
    }
    if (request.shownId === undefined || this.state.outcomes.visible?.id !== request.shownId) {
      // Shown once per answer, however often VS Code asks for the same state again.
      const latency = Date.now() - request.startedAt;
      this.state.latency(latency);
      request.shownId = this.state.outcomes.shown(document.uri.toString(), first.text, latency);
    }
    void vscode.commands.executeCommand("setContext", "nextab.suggestionVisible", true);
    const range = first.range ? client!.protocol2CodeConverter.asRange(first.range) : new vscode.Range(position, position);
    return [
      new vscode.InlineCompletionItem(first.text, range, {
        title: "nextab: accepted",
        command: "nextab.accepted",
        arguments: [request.shownId],
      }),
    ];
  }
}

const CANCELLED = Symbol("cancelled");
