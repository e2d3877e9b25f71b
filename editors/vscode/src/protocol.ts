// What the extension says to `nextab serve` and what it gets back, with no VS Code in it: the
// extension and the end-to-end test (a plain Node LSP client) share it.

export interface Position {
  line: number;
  character: number;
}

export interface Range {
  start: Position;
  end: Position;
}

export interface InlineItem {
  insertText: string | { kind: string; value: string };
  range?: Range;
}

export interface EditSuggestion {
  range: Range;
  newText: string;
  score: number;
  source: string;
  reason: string;
  atCursor: boolean;
  lines: { start: number; end: number };
}

export interface Status {
  version: string;
  state: "starting" | "loading" | "ready" | "failed";
  error: string | null;
  model: { name?: string; device?: string; dtype?: string };
  decoding: string;
  indexing: { done: number; total: number; finished: boolean } | null;
  lastLatencyMs: number | null;
}

export const INLINE_COMPLETION = "textDocument/inlineCompletion";
export const NEXT_EDIT = "nextab/nextEdit";
export const STATUS = "nextab/status";
export const OUTCOME = "nextab/suggestionOutcome";

export function inlineParams(uri: string, position: Position, automatic: boolean) {
  return {
    textDocument: { uri },
    position,
    context: { triggerKind: automatic ? 2 : 1 },
  };
}

export function nextEditParams(uri: string, position: Position) {
  return { textDocument: { uri }, position };
}

/** The items of an inline-completion answer (a list or {items}), with their text. */
export function inlineItems(result: unknown): { text: string; range?: Range }[] {
  if (!result) {
    return [];
  }
  const items: InlineItem[] = Array.isArray(result) ? result : ((result as { items?: InlineItem[] }).items ?? []);
  return items
    .map((item) => ({
      text: typeof item.insertText === "string" ? item.insertText : item.insertText?.value ?? "",
      range: item.range,
    }))
    .filter((item) => item.text.length > 0);
}

export function editSuggestions(result: unknown): EditSuggestion[] {
  const suggestions = (result as { suggestions?: EditSuggestion[] } | null)?.suggestions;
  return Array.isArray(suggestions) ? suggestions : [];
}

export interface ExtensionSettings {
  model: string;
  device: string;
  decoding: string;
  maxTokens: number;
  nextEditEnable: boolean;
  extra: Record<string, unknown>;
}

/** The server's settings (initializationOptions, didChangeConfiguration) from the extension's. */
export function serverSettings(s: ExtensionSettings): Record<string, unknown> {
  const extraNextEdit = (s.extra.nextEdit as Record<string, unknown> | undefined) ?? {};
  return {
    ...s.extra,
    model: s.model,
    device: s.device,
    decoding: s.decoding,
    maxTokens: s.maxTokens,
    nextEdit: { ...extraNextEdit, enabled: s.nextEditEnable },
  };
}

/** A status-bar line: the model, where it runs, the last latency. `stopped`: the server process
 * is gone for good (it did not start, or crashed too often to be restarted). */
export function statusText(
  status: Status | undefined,
  enabled: boolean,
  stopped = false,
): { text: string; busy: boolean } {
  if (stopped) {
    return { text: "nextab: server stopped", busy: false };
  }
  if (!enabled) {
    return { text: "nextab: off", busy: false };
  }
  if (!status || status.state === "starting" || status.state === "loading") {
    return { text: "nextab: loading model", busy: true };
  }
  if (status.state === "failed") {
    return { text: "nextab: model failed", busy: false };
  }
  const parts = [status.model.name ?? "model", status.model.device ?? "?"];
  if (status.lastLatencyMs != null) {
    parts.push(`${Math.round(status.lastLatencyMs)} ms`);
  }
  const indexing = status.indexing && !status.indexing.finished;
  if (indexing && status.indexing) {
    parts.push(`indexing ${status.indexing.done}/${status.indexing.total}`);
  }
  return { text: `nextab: ${parts.join(" · ")}`, busy: Boolean(indexing) };
}
