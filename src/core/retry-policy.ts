/**
 * What happens after a delivery attempt. Pure: the dispatcher passes in the clock and randomness,
 * so every branch is testable without timers.
 */

export const DEFAULT_JITTER = 0.2;
/** Bounds on a receiver's Retry-After: at least 1 s so a `0` cannot make us spin, at most 24 h. */
export const MIN_RETRY_AFTER_MS = 1_000;
export const MAX_RETRY_AFTER_MS = 24 * 60 * 60 * 1_000;

export interface RetryDelayInput {
  /** Delays in ms before retry 1, 2, …; its length is the number of retries. */
  schedule: readonly number[];
  /** Attempts already made, including the one that just failed (1 after the first failure). */
  attemptsMade: number;
  /** Relative spread, 0.2 → ±20 %; spreads out retries of events that failed together. */
  jitter?: number;
  random?: () => number;
}

/** Delay in ms before the next retry, or null when the schedule is exhausted. */
export function nextRetryDelay({
  schedule,
  attemptsMade,
  jitter = DEFAULT_JITTER,
  random = Math.random,
}: RetryDelayInput): number | null {
  if (!Number.isSafeInteger(attemptsMade) || attemptsMade < 1) {
    throw new RangeError(`attemptsMade must be a whole number >= 1, got ${attemptsMade}`);
  }
  const base = schedule[attemptsMade - 1];
  if (base === undefined) return null;
  const spread = Math.min(Math.max(jitter, 0), 1);
  const factor = 1 + spread * (2 * random() - 1);
  return Math.max(0, Math.round(base * factor));
}

export type AttemptResult =
  | { kind: 'response'; status: number; retryAfterMs?: number }
  /** No HTTP response: timeout, connection error, TLS error, or `blocked` by the SSRF guard. */
  | { kind: 'error'; blocked: boolean };

export type AttemptOutcome =
  | { kind: 'succeeded' }
  | { kind: 'retry'; at: Date }
  | { kind: 'failed' }
  | { kind: 'expired' };

export interface DecideInput {
  result: AttemptResult;
  attemptsMade: number;
  schedule: readonly number[];
  now: Date;
  /** The event's TTL end: no attempt is scheduled after it. */
  expiresAt: Date;
  jitter?: number;
  random?: () => number;
}

export function assertNever(value: never): never {
  throw new Error(`unhandled case: ${JSON.stringify(value)}`);
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(Math.max(value, min), max);
}

/** The receiver's own Retry-After delay when it is one we honour (429 / 503 only). */
function honouredRetryAfter(result: AttemptResult): number | undefined {
  if (result.kind !== 'response' || result.retryAfterMs === undefined) return undefined;
  if (result.status !== 429 && result.status !== 503) return undefined;
  if (!Number.isFinite(result.retryAfterMs)) return undefined;
  return clamp(result.retryAfterMs, MIN_RETRY_AFTER_MS, MAX_RETRY_AFTER_MS);
}

function retryOrGiveUp(input: DecideInput): AttemptOutcome {
  const scheduled = nextRetryDelay({
    schedule: input.schedule,
    attemptsMade: input.attemptsMade,
    jitter: input.jitter,
    random: input.random,
  });
  // The schedule bounds the number of attempts even when the receiver keeps asking for more time.
  if (scheduled === null) return { kind: 'failed' };
  const delay = honouredRetryAfter(input.result) ?? scheduled;
  const at = new Date(input.now.getTime() + delay);
  return at.getTime() > input.expiresAt.getTime() ? { kind: 'expired' } : { kind: 'retry', at };
}

/**
 * Any 2xx succeeds; every other status (redirects are not followed), timeout or connection error
 * retries per the schedule. A destination blocked by the SSRF guard fails at once: retrying cannot
 * help until an operator changes the URL or the allow-list, and each retry would give a DNS-rebinding
 * attacker another try. A failed delivery can still be retried by hand.
 */
export function decideOutcome(input: DecideInput): AttemptOutcome {
  const { result } = input;
  switch (result.kind) {
    case 'response':
      if (result.status >= 200 && result.status <= 299) return { kind: 'succeeded' };
      return retryOrGiveUp(input);
    case 'error':
      if (result.blocked) return { kind: 'failed' };
      return retryOrGiveUp(input);
    default:
      return assertNever(result);
  }
}

/** The delivery status an outcome leaves the delivery in. */
export function deliveryStatusAfter(outcome: AttemptOutcome): 'succeeded' | 'pending' | 'failed' | 'expired' {
  switch (outcome.kind) {
    case 'succeeded':
      return 'succeeded';
    case 'retry':
      return 'pending';
    case 'failed':
      return 'failed';
    case 'expired':
      return 'expired';
    default:
      return assertNever(outcome);
  }
}

const DELTA_SECONDS_RE = /^\d+$/;
// The three HTTP-date forms of RFC 9110 §5.6.7: IMF-fixdate, obsolete RFC 850, and asctime.
const IMF_FIXDATE_RE = /^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/;
const RFC850_DATE_RE = /^[A-Za-z]{6,9}, \d{2}-[A-Za-z]{3}-\d{2} \d{2}:\d{2}:\d{2} GMT$/;
const ASCTIME_DATE_RE = /^[A-Za-z]{3} [A-Za-z]{3} [ \d]\d \d{2}:\d{2}:\d{2} \d{4}$/;

function parseHttpDate(text: string): number | undefined {
  let ms: number;
  if (IMF_FIXDATE_RE.test(text) || RFC850_DATE_RE.test(text)) ms = Date.parse(text);
  // asctime carries no zone; HTTP dates are always UTC, so say so rather than let Date.parse pick local time.
  else if (ASCTIME_DATE_RE.test(text)) ms = Date.parse(`${text} GMT`);
  else return undefined;
  return Number.isNaN(ms) ? undefined : ms;
}

/**
 * A `Retry-After` header as milliseconds from `now` (delta-seconds or HTTP-date; a date in the
 * past gives 0), or undefined when absent or malformed. Not clamped: decideOutcome does that.
 */
export function parseRetryAfter(header: string | undefined, now: Date): number | undefined {
  if (typeof header !== 'string') return undefined;
  const text = header.trim();
  if (DELTA_SECONDS_RE.test(text)) {
    const seconds = Number(text);
    // Beyond what a number of ms can hold is "as long as we ever wait" anyway.
    return Number.isSafeInteger(seconds * 1000) ? seconds * 1000 : MAX_RETRY_AFTER_MS;
  }
  const at = parseHttpDate(text);
  return at === undefined ? undefined : Math.max(0, at - now.getTime());
}
