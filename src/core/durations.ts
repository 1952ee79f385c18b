/**
 * Durations as written in configuration (`500ms`, `5s`, `5m`, `2h`, `30d`), in milliseconds.
 * A unit is always required: a bare `30` is ambiguous between seconds and milliseconds.
 */

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
type Unit = keyof typeof UNIT_MS;

const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;
// Largest first, so formatDuration picks the shortest exact spelling.
const UNITS_DESCENDING: readonly Unit[] = ['d', 'h', 'm', 's'];

/** Milliseconds of a duration like `5s`; throws an Error naming the bad value. */
export function parseDuration(s: string): number {
  const text = typeof s === 'string' ? s.trim() : '';
  const match = DURATION_RE.exec(text);
  if (match === null) {
    throw new Error(
      `invalid duration ${JSON.stringify(s)}: expected a number and a unit (ms, s, m, h, d), e.g. 500ms, 5s, 5m, 2h, 30d`,
    );
  }
  const ms = Math.round(Number(match[1]) * UNIT_MS[match[2] as Unit]);
  if (!Number.isSafeInteger(ms)) throw new Error(`invalid duration ${JSON.stringify(s)}: too large`);
  return ms;
}

/** The retry delays of a schedule like `5s,5m,30m`; an empty string means no retries. */
export function parseRetrySchedule(s: string): number[] {
  if (s.trim() === '') return [];
  return s.split(',').map((entry, i) => {
    try {
      return parseDuration(entry);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw new Error(`invalid retry schedule ${JSON.stringify(s)}: entry ${i + 1}: ${why}`);
    }
  });
}

/** The shortest exact spelling parseDuration reads back to the same value: 7200000 → `2h`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  const whole = Math.round(ms);
  if (whole < 0) return `-${formatDuration(-whole)}`;
  if (whole === 0) return '0s';
  for (const unit of UNITS_DESCENDING) {
    if (whole % UNIT_MS[unit] === 0) return `${whole / UNIT_MS[unit]}${unit}`;
  }
  return `${whole}ms`;
}
