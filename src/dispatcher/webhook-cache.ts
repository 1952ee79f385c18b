import type { SecretBox } from "../core/secret-box.js";
import type { Db } from "../store/db.js";
import type { Webhook } from "../store/schema.js";
import { getWebhooksByIds, healthOf, isSigning } from "../store/webhooks.js";
import type { LaneWebhook } from "./lanes.js";

const MAX_ENTRIES = 100_000;
/** Ids per refresh query. */
const CHUNK = 500;

/** An entry not asked for this long is dropped rather than refreshed. */
const IDLE_MS = 60_000;

/**
 * Webhook settings for the lanes. Every `ttlMs / 2` the entries in use are re-read together, in one
 * query per 500: an update, pause or rotation reaches every attempt that starts `ttlMs` after it, and
 * no attempt waits on a read of its webhook. A webhook seen for the first time is read before its first
 * attempt (batched with the others asked for in the same turn).
 */
export function createWebhookCache(db: Db, secretBox: SecretBox, ttlMs = 1_000) {
  const entries = new Map<string, { webhook: LaneWebhook | undefined; usedAt: number }>();
  /** Ids being read, and those of them forgotten meanwhile: what was read may predate the change. */
  const reading = new Set<string>();
  const forgottenWhileReading = new Set<string>();
  /** Ids to read in the next round, and who waits for a first read. */
  const queued = new Map<string, ((webhook: LaneWebhook | undefined) => void)[]>();
  let round: NodeJS.Immediate | undefined;
  const refresher = setInterval(() => {
    // A round still reading (a slow database) is not doubled up on.
    if (reading.size > 0) return;
    const now = Date.now();
    for (const [id, entry] of entries) {
      if (now - entry.usedAt > IDLE_MS) entries.delete(id);
      else if (!queued.has(id)) queue(id);
    }
  }, ttlMs / 2);
  refresher.unref();

  function toLaneWebhook(row: Webhook, now: number): LaneWebhook {
    return {
      id: row.id,
      url: row.url,
      status: row.status,
      orderedByKey: row.ordered_by_key,
      signatureScheme: row.signature_scheme,
      rateLimitPerSecond: row.rate_limit_per_second,
      retrySchedule: row.retry_schedule,
      health: healthOf(row),
      secrets: row.signing_secrets
        .filter((s) => isSigning(s, now))
        .map((s) => secretBox.open(s.secret, row.id)),
    };
  }

  async function readRound(): Promise<void> {
    round = undefined;
    const batch = [...queued];
    queued.clear();
    for (let i = 0; i < batch.length; i += CHUNK) {
      const chunk = batch.slice(i, i + CHUNK);
      for (const [id] of chunk) reading.add(id);
      try {
        const rows = await getWebhooksByIds(
          db,
          chunk.map(([id]) => id),
        );
        const now = Date.now();
        const byId = new Map(rows.map((row) => [row.id, toLaneWebhook(row, now)]));
        if (entries.size > MAX_ENTRIES) entries.clear();
        for (const [id, waiters] of chunk) {
          if (forgottenWhileReading.delete(id)) {
            queue(id, ...waiters);
            continue;
          }
          const webhook = byId.get(id);
          entries.set(id, { webhook, usedAt: entries.get(id)?.usedAt ?? now });
          for (const resolve of waiters) resolve(webhook);
        }
      } catch {
        // Entries stay as they are until a later round reads them; first reads are tried again shortly.
        const waiting = chunk.filter(([, waiters]) => waiters.length > 0);
        if (waiting.length > 0) setTimeout(() => waiting.forEach(([id, waiters]) => queue(id, ...waiters)), 1_000).unref();
      } finally {
        for (const [id] of chunk) reading.delete(id);
      }
    }
  }

  function queue(id: string, ...waiters: ((webhook: LaneWebhook | undefined) => void)[]): void {
    const list = queued.get(id);
    if (list) list.push(...waiters);
    else queued.set(id, waiters);
    round ??= setImmediate(() => void readRound());
  }

  return {
    /** The next get reads Postgres: for changes this process made itself. */
    forget(id: string): void {
      entries.delete(id);
      if (reading.has(id)) forgottenWhileReading.add(id);
    },
    get(id: string): Promise<LaneWebhook | undefined> {
      const entry = entries.get(id);
      if (entry) {
        entry.usedAt = Date.now();
        return Promise.resolve(entry.webhook);
      }
      return new Promise((resolve) => queue(id, resolve));
    },
    close(): void {
      clearInterval(refresher);
      clearImmediate(round);
    },
  };
}
