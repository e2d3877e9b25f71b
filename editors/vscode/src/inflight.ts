// One model request per state of the text: VS Code asks for inline completions again for the same
// text and cursor, and gives up on its own asks for reasons that are not the text's (the suggest
// widget opening and closing empty cancels a running ask). The server's answer for a state stays
// good until the text or the cursor moves, so it is kept rather than asked for again.

export interface Sent<T> {
  promise: Promise<T>;
  cancel(): void;
}

export interface Request<T> {
  readonly key: string;
  readonly promise: Promise<T | undefined>; // undefined: failed or cancelled
  readonly startedAt: number;
  settled: boolean;
  retriggered: boolean; // VS Code was asked again once already for this state
  shownId: number | undefined; // the suggestion this answer became, once shown
}

export class InflightRequests<T> {
  private current: (Request<T> & { cancel(): void }) | undefined;

  constructor(private readonly now: () => number = Date.now) {}

  /** The request for `key`: the one running or done for it, or a new one (`send()`) that
   * cancels the last. */
  get(key: string, send: () => Sent<T>): Request<T> {
    if (this.current?.key === key) {
      return this.current;
    }
    if (this.current && !this.current.settled) {
      this.current.cancel();
    }
    const sent = send();
    const request = {
      key,
      startedAt: this.now(),
      settled: false,
      retriggered: false,
      shownId: undefined,
      cancel: () => sent.cancel(),
      promise: sent.promise.then(
        (value): T | undefined => value,
        () => undefined,
      ),
    };
    void request.promise.then(() => {
      request.settled = true;
    });
    this.current = request;
    return request;
  }

  /** Whether `key` is still the state being answered (nothing newer was asked for). */
  isCurrent(key: string): boolean {
    return this.current?.key === key;
  }

  /** The text changed: whatever runs is for text that no longer exists. */
  cancel(): void {
    if (this.current && !this.current.settled) {
      this.current.cancel();
    }
    this.current = undefined;
  }
}

/** `promise`'s value, or `cancelled` if `onCancel` fires first. */
export function raceCancel<T, C>(
  promise: Promise<T>,
  onCancel: (listener: () => void) => { dispose(): void },
  cancelled: C,
): Promise<T | C> {
  return new Promise<T | C>((resolve) => {
    const subscription = onCancel(() => resolve(cancelled));
    promise.then(resolve, () => resolve(cancelled)).finally(() => subscription.dispose());
  });
}
