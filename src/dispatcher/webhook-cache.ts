import type { SecretBox } from "../core/secret-box.js";
import type { Db } from "../store/db.js";
import { getWebhooksByIds, healthOf } from "../store/webhooks.js";
import type { LaneWebhook } from "./lanes.js";

/**
 * Webhook settings for the lanes, re-read from Postgres at most once per `ttlMs` per webhook: an
 * update, pause or rotation reaches the next attempt within that time without a read per attempt.
 */
export function createWebhookCache(db: Db, secretBox: SecretBox, ttlMs = 1_000) {
  const entries = new Map<string, { webhook: LaneWebhook | undefined; at: number }>();
  const inFlight = new Map<string, Promise<LaneWebhook | undefined>>();

  async function load(id: string): Promise<LaneWebhook | undefined> {
    const [row] = await getWebhooksByIds(db, [id]);
    const now = Date.now();
    const webhook: LaneWebhook | undefined = row && {
      id: row.id,
      url: row.url,
      status: row.status,
      orderedByKey: row.ordered_by_key,
      signatureScheme: row.signature_scheme,
      rateLimitPerSecond: row.rate_limit_per_second,
      retrySchedule: row.retry_schedule,
      health: healthOf(row),
      secrets: row.signing_secrets
        .filter((s) => s.expires_at === null || Date.parse(s.expires_at) > now)
        .map((s) => secretBox.open(s.secret, row.id)),
    };
    if (entries.size > 100_000) entries.clear();
    entries.set(id, { webhook, at: now });
    return webhook;
  }

  return {
    /** The next get reads Postgres: for changes this process made itself. */
    forget(id: string): void {
      entries.delete(id);
    },
    get(id: string): Promise<LaneWebhook | undefined> {
      const entry = entries.get(id);
      if (entry && Date.now() - entry.at < ttlMs) return Promise.resolve(entry.webhook);
      let pending = inFlight.get(id);
      if (!pending) {
        pending = load(id).finally(() => inFlight.delete(id));
        inFlight.set(id, pending);
      }
      return pending;
    },
  };
}
