import type { Logger } from "pino";
import type { SecretBox } from "../core/secret-box.js";
import { webhookReads } from "../metrics.js";
import type { Db } from "../store/db.js";
import type { Webhook } from "../store/schema.js";
import { healthOf, readChangedWebhooks } from "../store/webhooks.js";
import type { LaneWebhook } from "./lanes.js";

const MAX_ENTRIES = 100_000;
/** Ids per query. */
const CHUNK = 500;
/** An entry not asked for this long is dropped. */
const IDLE_MS = 60_000;
/** How often a webhook whose secrets do not open is read again (and logged). */
const UNOPENABLE_RETRY_MS = 5_000;

interface Entry {
  webhook: LaneWebhook | undefined;
  /** The row version the entry was built from (see readChangedWebhooks); undefined: no row. */
  version: string | undefined;
  /** Its secrets, opened, with when each stops signing (a rotated-out one). */
  secrets: { value: string; expiresAt: number }[];
  /** When the read that found the entry current was sent. */
  confirmedAt: number;
  usedAt: number;
}

/**
 * Webhook settings for the lanes. An entry serves for `ttlMs` after the read that confirmed it; the
 * first ask after that waits for a new confirmation, batched with every other asked for in the same
 * turn, so an update, pause or rotation reaches every attempt that starts `ttlMs` after it. Only
 * webhooks that are asked for are confirmed, and an unchanged row is confirmed by its version alone.
 *
 * Every entry used to be read again twice a second, whether its lane was sending or not: with 5,000
 * webhooks that was 10,000 rows a second, each parsed and its secrets opened, and 5,000 webhooks × 20
 * events took 72 s to deliver against 53 s now.
 */
export function createWebhookCache(db: Db, secretBox: SecretBox, log: Logger, ttlMs = 1_000) {
  const entries = new Map<string, Entry>();
  /** Ids being read, and those of them forgotten meanwhile: what was read may predate the change. */
  const reading = new Set<string>();
  const forgottenWhileReading = new Set<string>();
  /** Ids to confirm in the next round, and who waits for them. */
  const queued = new Map<string, ((webhook: LaneWebhook | undefined) => void)[]>();
  let round: NodeJS.Immediate | undefined;
  /** Closed: the reads tried again later (Postgres down, a secret that does not open) stop. */
  let closed = false;
  const evictor = setInterval(() => {
    const cutoff = Date.now() - IDLE_MS;
    for (const [id, entry] of entries) if (entry.usedAt < cutoff) entries.delete(id);
  }, IDLE_MS / 2);
  evictor.unref();

  function build(row: Webhook, version: string, now: number): Entry {
    // A deleted webhook signs nothing again: its lane only needs to learn that it is gone, even when its
    // secrets would not open.
    const sealed = row.status === "deleted" ? [] : row.signing_secrets;
    const secrets = sealed.map((s) => ({
      value: secretBox.open(s.secret, row.id),
      expiresAt: s.expires_at === null ? Infinity : Date.parse(s.expires_at),
    }));
    const webhook: LaneWebhook = {
      id: row.id,
      url: row.url,
      status: row.status,
      orderedByKey: row.ordered_by_key,
      signatureScheme: row.signature_scheme,
      rateLimitPerSecond: row.rate_limit_per_second,
      retrySchedule: row.retry_schedule,
      health: healthOf(row),
      changedAt: new Date(row.updated_at).getTime(),
      secrets: [],
    };
    const entry: Entry = { webhook, version, secrets, confirmedAt: now, usedAt: now };
    refreshSecrets(entry, now);
    return entry;
  }

  /** A rotated-out secret stops signing when its grace period ends, with no change to the row. */
  function refreshSecrets(entry: Entry, now: number): void {
    if (!entry.webhook) return;
    const signing = entry.secrets.filter((s) => s.expiresAt > now).map((s) => s.value);
    if (signing.length !== entry.webhook.secrets.length) entry.webhook = { ...entry.webhook, secrets: signing };
  }

  async function readRound(): Promise<void> {
    round = undefined;
    const batch = [...queued];
    queued.clear();
    for (let i = 0; i < batch.length; i += CHUNK) {
      const chunk = batch.slice(i, i + CHUNK);
      for (const [id] of chunk) reading.add(id);
      const sentAt = Date.now();
      // What the read confirms, kept even if the entry is evicted meanwhile.
      const known = chunk.map(([id]) => entries.get(id));
      try {
        const changed = await readChangedWebhooks(
          db,
          chunk.map(([id]) => id),
          known.map((entry) => entry?.version ?? null),
        );
        const now = Date.now();
        const byId = new Map(changed.map((c) => [c.id, c]));
        if (entries.size > MAX_ENTRIES) entries.clear();
        let unchanged = 0;
        let changedOrGone = 0;
        const unopenable: string[] = [];
        for (const [index, [id, waiters]] of chunk.entries()) {
          if (forgottenWhileReading.delete(id)) {
            queue(id, ...waiters);
            continue;
          }
          const found = byId.get(id);
          // Not found: the row is at the version sent, so that entry was there to send it.
          let entry = known[index]!;
          if (found) {
            changedOrGone++;
            try {
              entry = found.row
                ? build(found.row, found.version, sentAt)
                : { webhook: undefined, version: undefined, secrets: [], confirmedAt: sentAt, usedAt: now };
            } catch {
              // A secret that does not open (sealed under another WEBHOOKD_ENCRYPTION_KEY, or copied from
              // another row): nothing can be signed for this webhook, so its lane waits, and nobody else's.
              // Thrown out of the loop, it held every webhook read after it in the round, whoever's.
              unopenable.push(id);
              setTimeout(() => queue(id, ...waiters), UNOPENABLE_RETRY_MS).unref();
              continue;
            }
          } else {
            unchanged++;
            entry.confirmedAt = sentAt;
            refreshSecrets(entry, now);
          }
          entry.usedAt = now;
          entries.set(id, entry);
          for (const resolve of waiters) resolve(entry.webhook);
        }
        if (unopenable.length > 0) {
          log.error(
            { webhookIds: unopenable.slice(0, 10), count: unopenable.length },
            "signing secrets do not open with this WEBHOOKD_ENCRYPTION_KEY; these webhooks' deliveries wait",
          );
        }
        webhookReads.inc({ result: "changed" }, changedOrGone);
        webhookReads.inc({ result: "unchanged" }, unchanged);
      } catch {
        // Tried again shortly; the lanes asking wait (Postgres is the record of what a webhook is now).
        setTimeout(() => chunk.forEach(([id, waiters]) => queue(id, ...waiters)), 1_000).unref();
      } finally {
        for (const [id] of chunk) reading.delete(id);
      }
    }
  }

  function queue(id: string, ...waiters: ((webhook: LaneWebhook | undefined) => void)[]): void {
    if (closed) return;
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
    /**
     * What is known of the webhook now, without waiting or confirming: undefined when nothing is (not
     * asked for lately); `webhook` undefined when it has no row.
     */
    peek(id: string): { webhook: LaneWebhook | undefined } | undefined {
      return entries.get(id);
    },
    get(id: string): Promise<LaneWebhook | undefined> {
      const entry = entries.get(id);
      const now = Date.now();
      if (entry && now - entry.confirmedAt < ttlMs) {
        entry.usedAt = now;
        return Promise.resolve(entry.webhook);
      }
      return new Promise((resolve) => queue(id, resolve));
    },
    close(): void {
      closed = true;
      clearInterval(evictor);
      clearImmediate(round);
    },
  };
}
