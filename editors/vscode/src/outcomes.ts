// What became of each shown suggestion, told to the server once (`nextab/suggestionOutcome`),
// which keeps the local acceptance log that `nextab stats` reads.

export type Outcome = "accepted" | "partial" | "dismissed" | "ignored";

export interface Report {
  uri: string;
  kind: "completion" | "nextEdit";
  outcome: Outcome;
  shownChars: number;
  acceptedChars: number;
  latencyMs: number | null;
}

interface Shown {
  id: number;
  uri: string;
  text: string;
  latencyMs: number;
  accepted: number; // characters taken by partial accepts so far
}

/** Tracks the suggestion on screen. A new suggestion, a dismissal or a full accept settles the
 * previous one: accepted, partial (some words taken), dismissed (Esc) or ignored (typed over). */
export class OutcomeTracker {
  private current: Shown | undefined;
  private nextId = 1;

  constructor(private readonly send: (report: Report) => void) {}

  shown(uri: string, text: string, latencyMs: number): number {
    this.settle("ignored");
    const id = this.nextId++;
    this.current = { id, uri, text, latencyMs, accepted: 0 };
    return id;
  }

  get visible(): Shown | undefined {
    return this.current;
  }

  accepted(id: number): void {
    if (this.current?.id !== id) {
      return;
    }
    this.current.accepted = this.current.text.length;
    this.settle("accepted");
  }

  /** `chars` of suggestion `id` were taken (a partial accept); nothing if a newer one showed. */
  partial(id: number, chars: number): void {
    if (this.current?.id === id) {
      this.current.accepted = Math.min(this.current.text.length, this.current.accepted + chars);
    }
  }

  dismissed(): void {
    this.settle("dismissed");
  }

  /** The suggestion went away without a word from the user (typed over, cursor moved). */
  gone(): void {
    this.settle("ignored");
  }

  private settle(outcome: Outcome): void {
    const shown = this.current;
    if (!shown) {
      return;
    }
    this.current = undefined;
    // Taken word by word to the end is taken all the same.
    const all = shown.accepted === shown.text.length;
    const result: Outcome = all ? "accepted" : shown.accepted > 0 ? "partial" : outcome;
    this.send({
      uri: shown.uri,
      kind: "completion",
      outcome: result,
      shownChars: shown.text.length,
      acceptedChars: result === "accepted" ? shown.text.length : shown.accepted,
      latencyMs: Math.round(shown.latencyMs),
    });
  }
}
