import { sql } from "kysely";
import type { Db } from "./db.js";
import { HEALTHY, sameHealth, type EndpointHealth } from "../core/endpoint-gate.js";
import type { NewWebhook, SigningSecret, Webhook, WebhookStatus } from "./schema.js";

/** Deleted webhooks stay as rows (their deliveries refer to them) but are invisible through the API. */
const VISIBLE: WebhookStatus[] = ["active", "paused", "disabled"];

export function insertWebhook(db: Db, webhook: NewWebhook): Promise<Webhook> {
  return db.insertInto("webhooks").values(webhook).returningAll().executeTakeFirstOrThrow();
}

/** With `forUpdate`, the row stays locked for the rest of the transaction, so concurrent changes apply one after another. */
export function getWebhook(db: Db, tenantId: string, id: string, options: { forUpdate?: boolean } = {}): Promise<Webhook | undefined> {
  const query = db
    .selectFrom("webhooks")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .where("id", "=", id)
    .where("status", "in", VISIBLE);
  return (options.forUpdate ? query.forUpdate() : query).executeTakeFirst();
}

/**
 * Counts a putting back of the webhook's deliveries to pending (`requeues`), locking its row for the rest
 * of the transaction as DeleteWebhook and ingest lock it; false when the webhook is gone (deleted). An
 * ingest that locks the row after this commits hands the new count to the lanes with its jobs.
 */
export async function countRequeue(db: Db, tenantId: string, id: string): Promise<boolean> {
  const result = await db
    .updateTable("webhooks")
    .set({ requeues: sql`requeues + 1` })
    .where("tenant_id", "=", tenantId)
    .where("id", "=", id)
    .where("status", "in", VISIBLE)
    .executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

export function listWebhooks(db: Db, tenantId: string, afterId: string, limit: number): Promise<Webhook[]> {
  return db
    .selectFrom("webhooks")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .where("status", "in", VISIBLE)
    .where("id", ">", afterId)
    .orderBy("id")
    .limit(limit)
    .execute();
}

export interface WebhookChanges {
  url?: string;
  event_types?: string[];
  status?: WebhookStatus;
  description?: string;
  ordered_by_key?: boolean;
  rate_limit_per_second?: number;
  signing_secrets?: SigningSecret[];
  public_key?: string | null;
  retry_schedule?: number[] | null;
  /** Replaces the saved endpoint health (a re-enabled or re-pointed webhook starts healthy). */
  health?: EndpointHealth;
}

export function updateWebhook(db: Db, id: string, changes: WebhookChanges): Promise<Webhook> {
  const { signing_secrets, health, ...rest } = changes;
  return db
    .updateTable("webhooks")
    .set({
      ...rest,
      ...(signing_secrets ? { signing_secrets: JSON.stringify(signing_secrets) } : {}),
      ...(health ? healthColumns(health) : {}),
      updated_at: sql<Date>`now()`,
    })
    .where("id", "=", id)
    .returningAll()
    .executeTakeFirstOrThrow();
}

/** Disables an active or paused webhook (the receiver's 410, or failing too long); returns its tenant, or undefined when it was not. */
export async function disableWebhook(db: Db, id: string): Promise<string | undefined> {
  const row = await db
    .updateTable("webhooks")
    .set({ status: "disabled", updated_at: sql<Date>`now()` })
    .where("id", "=", id)
    .where("status", "in", ["active", "paused"])
    .returning("tenant_id")
    .executeTakeFirst();
  return row?.tenant_id;
}

/** True while the secret signs: the current one always, a rotated-out one until its grace period ends. */
export function isSigning(secret: SigningSecret, now: number): boolean {
  return secret.expires_at === null || Date.parse(secret.expires_at) > now;
}

/** A webhook row as read at one version, or nothing where the id has no row. */
export type WebhookVersion = { id: string; version: string; row: Webhook } | { id: string; version: undefined; row: undefined };

/**
 * Webhooks as the dispatcher needs them, whatever their status (a deleted one cancels its lane), but only
 * those whose row is not at the version given for it (null: not read yet), and the ids with no row. The
 * version is the row's `xmin`, the transaction that wrote it, so any update makes a new one: the
 * dispatcher confirms each webhook it sends to every second, and a confirmation costs an index probe,
 * not the row, its parsing and the opening of its secrets.
 */
export async function readChangedWebhooks(db: Db, ids: readonly string[], versions: readonly (string | null)[]): Promise<WebhookVersion[]> {
  if (ids.length === 0) return [];
  const { rows } = await sql<Webhook & { known_id: string; version: string | null }>`
    select c.id as known_id, w.xmin::text as version, w.*
    from unnest(${sql.val(ids)}::text[], ${sql.val(versions)}::text[]) as c(id, version)
    left join webhooks w on w.id = c.id
    where w.id is null or w.xmin::text is distinct from c.version`.execute(db);
  return rows.map(({ known_id, version, ...row }) =>
    version === null ? { id: known_id, version: undefined, row: undefined } : { id: known_id, version, row: row as Webhook },
  );
}

export function healthOf(row: Webhook): EndpointHealth {
  return {
    circuitState: row.circuit_state,
    openUntil: row.circuit_open_until?.getTime() ?? null,
    openedCount: row.circuit_opened_count,
    consecutiveFailures: row.consecutive_failures,
    failingSince: row.failing_since?.getTime() ?? null,
    throttleMs: row.throttle_ms,
  };
}

/** The webhook columns that hold an endpoint's health; `healthOf` reads them back. */
export function healthColumns(health: EndpointHealth) {
  return {
    circuit_state: health.circuitState,
    circuit_open_until: health.openUntil === null ? null : new Date(health.openUntil),
    circuit_opened_count: health.openedCount,
    consecutive_failures: health.consecutiveFailures,
    failing_since: health.failingSince === null ? null : new Date(health.failingSince),
    throttle_ms: Math.round(health.throttleMs),
  };
}

/** The highest shard a webhook not deleted is hashed to, or undefined with none. */
export async function highestShardInUse(db: Db): Promise<number | undefined> {
  const row = await db.selectFrom("webhooks").select((eb) => eb.fn.max("shard").as("shard")).where("status", "in", VISIBLE).executeTakeFirst();
  return row?.shard ?? undefined;
}

/** Sealed signing secrets of the newest webhooks (not deleted), with the id each is bound to. */
export async function newestSealedSecrets(db: Db, webhooks: number): Promise<{ id: string; sealed: string }[]> {
  const rows = await db.selectFrom("webhooks").select(["id", "signing_secrets"]).where("status", "in", VISIBLE).orderBy("id", "desc").limit(webhooks).execute();
  return rows.flatMap((row) => row.signing_secrets.map((s) => ({ id: row.id, sealed: s.secret })));
}

/** What a lane knew when its endpoint's health changed. */
export interface HealthSeen {
  /** The URL its gate is for. */
  url: string;
  /** The webhook's updated_at, in ms, as it last confirmed it. */
  changedAt: number | undefined;
  /** Its health before this change. */
  previous: EndpointHealth;
}

/**
 * Saves the endpoint health the lane's owner sees; false when it was not saved, given what the lane knew:
 * - A save never lands on a webhook pointed at another URL since: a failure of the old URL, saved over
 *   the reset, opened the new one's circuit before it had been tried.
 * - A reset by the API since (re-enabled: updated_at moved, the health reads as reset) wins over a save
 *   the lane made before it saw it, which would otherwise bring the old failures back, and with them an
 *   auto-disable at the next one.
 * - A lane that was healthy itself saves whatever the row reads: its first failure after an edit of the
 *   description is no reset (skipped, an endpoint edited while every attempt failed was never disabled).
 */
export async function saveEndpointHealth(db: Db, id: string, health: EndpointHealth, seen: HealthSeen): Promise<boolean> {
  let query = db.updateTable("webhooks").set(healthColumns(health)).where("id", "=", id).where("url", "=", seen.url);
  if (seen.changedAt !== undefined && !sameHealth(seen.previous, HEALTHY)) {
    const reset = Object.entries(healthColumns(HEALTHY)).map(([column, value]) => sql`${sql.ref(column)} is not distinct from ${value}`);
    query = query.where(sql<boolean>`not (date_trunc('milliseconds', updated_at) > ${new Date(seen.changedAt)} and ${sql.join(reset, sql` and `)})`);
  }
  const result = await query.executeTakeFirst();
  return result.numUpdatedRows > 0n;
}
