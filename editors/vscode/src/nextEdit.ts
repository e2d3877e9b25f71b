// Next-edit suggestions in the editor: the first Tab jumps to the edit, the second applies it.

import type { EditSuggestion, Position } from "./protocol";

export type Action = "jump" | "apply";

/** What Tab does with `suggestion` when the cursor is at `cursor`: apply it where the cursor
 * already is on its lines (or the server says it is at the cursor), jump there otherwise. */
export function tabAction(suggestion: EditSuggestion, cursor: Position): Action {
  if (suggestion.atCursor) {
    return "apply";
  }
  const { start, end } = suggestion.range;
  return cursor.line >= start.line && cursor.line <= end.line ? "apply" : "jump";
}

/** The first line of what the edit makes of its lines, for a one-line preview after them. */
export function previewLine(lineTexts: string[], suggestion: EditSuggestion): string {
  const { start, end } = suggestion.range;
  const first = lineTexts[0] ?? "";
  const last = lineTexts[lineTexts.length - 1] ?? "";
  const after = first.slice(0, start.character) + suggestion.newText + last.slice(end.character);
  // The first line with something on it: a rewrite that starts with a blank line shows its code.
  return after.split("\n").find((line) => line.trim()) ?? "";
}
