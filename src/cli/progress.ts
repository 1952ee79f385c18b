import { parseDuration } from "../core/durations.js";
import { parseRfc3339 } from "../core/rfc3339.js";

/** Where a replay stands, as GetReplay reports it. */
export interface ReplayCounts {
  total: number;
  pending: number;
  succeeded: number;
  failed: number;
}

const BAR_WIDTH = 30;

function formatSeconds(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/**
 * One line of a replay's progress: `[#########.....] 340/1000 done (338 delivered, 2 failed) 20.1/s, 33s left`.
 * `elapsedMs` is since the replay began; the rate and the time left come from it.
 */
export function renderReplayProgress(counts: ReplayCounts, elapsedMs: number): string {
  const done = counts.total - counts.pending;
  const fraction = counts.total === 0 ? 1 : done / counts.total;
  const filled = Math.round(fraction * BAR_WIDTH);
  const bar = `[${"#".repeat(filled)}${".".repeat(BAR_WIDTH - filled)}]`;
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0;
  const left = counts.pending === 0 ? "" : rate > 0 ? `, ${formatSeconds(counts.pending / rate)} left` : "";
  return `${bar} ${done}/${counts.total} done (${counts.succeeded} delivered, ${counts.failed} failed) ${rate.toFixed(1)}/s${left}`;
}

/**
 * A point in time as the CLI takes it: RFC 3339 (`2026-11-29T08:00:00Z`) or a duration ago (`2h`, `3d`).
 */
export function parsePointInTime(value: string, now: number): Date {
  if (/^\d{4}-\d{2}-\d{2}T/.test(value)) {
    const at = parseRfc3339(value);
    if (!at) throw new Error(`${JSON.stringify(value)} is not a valid RFC 3339 time (with seconds, and Z or an offset such as +01:00)`);
    return at;
  }
  try {
    return new Date(now - parseDuration(value));
  } catch {
    throw new Error(`${JSON.stringify(value)} is neither an RFC 3339 time (2026-11-29T08:00:00Z) nor a duration ago (90m, 2h, 3d)`);
  }
}
