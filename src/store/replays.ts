import { sql } from "kysely";
import { idFloor } from "../core/ids.js";
import type { Db } from "./db.js";
import type { Replay, ReplayScope } from "./schema.js";
import { requeueableSql, requeuedExpiry } from "./partitions.js";

const REPLAYED_STATUSES: Record<ReplayScope, string[]> = {
  failed: ["failed", "expired"],
  all: ["succeeded", "failed", "expired"],
};

export interface ReplayPlan {
  id: string;
  tenantId: string;
  webhookId: string;
  scope: ReplayScope;
  since: Date;
  until: Date;
  ratePerSecond: number;
  eventTtlMs: number;
}

/**
 * Puts the webhook's final deliveries created in [since, until) back to pending, in seq order, the
 * n-th due n/rate seconds from now: the lane sends them in order, and no faster than the rate. Each
 * gets a fresh TTL, but never past its partition's retention. One statement: the replay is all or nothing.
 */
export async function startReplay(db: Db, plan: ReplayPlan): Promise<Replay> {
  const spacingMs = 1000 / plan.ratePerSecond;
  const result = await sql<{ total: number }>`
    with chosen as (
      select id, created_at, row_number() over (order by seq) - 1 as position
      from deliveries
      where webhook_id = ${plan.webhookId}
        and id >= ${idFloor("dlv", plan.since.getTime())} and id < ${idFloor("dlv", plan.until.getTime())}
        and status = any(${sql.val(REPLAYED_STATUSES[plan.scope])}::text[])
        and ${requeueableSql(sql`created_at`, plan.eventTtlMs)}
    ), requeued as (
      update deliveries as d set
        status = 'pending',
        replay_id = ${plan.id},
        next_attempt_at = now() + c.position * ${spacingMs}::float8 * interval '1 millisecond',
        expires_at = ${requeuedExpiry(sql`c.created_at`, plan.eventTtlMs)}
      from chosen c
      where d.id = c.id
      returning d.id
    )
    select count(*)::int as total from requeued`.execute(db);
  return db
    .insertInto("replays")
    .values({
      id: plan.id,
      tenant_id: plan.tenantId,
      webhook_id: plan.webhookId,
      scope: plan.scope,
      since: plan.since,
      until: plan.until,
      total: result.rows[0]?.total ?? 0,
      rate_per_second: plan.ratePerSecond,
    })
    .returningAll()
    .executeTakeFirstOrThrow();
}

export function getReplay(db: Db, tenantId: string, webhookId: string, id: string): Promise<Replay | undefined> {
  return db.selectFrom("replays").selectAll().where("tenant_id", "=", tenantId).where("webhook_id", "=", webhookId).where("id", "=", id).executeTakeFirst();
}

/** Where the replay's deliveries stand now (a later replay of the same delivery takes it over). */
export async function replayProgress(db: Db, id: string): Promise<{ pending: number; succeeded: number; failed: number }> {
  const rows = await db
    .selectFrom("deliveries")
    .select(["status", sql<number>`count(*)::int`.as("n")])
    .where("replay_id", "=", id)
    .groupBy("status")
    .execute();
  const count = (statuses: string[]) => rows.filter((r) => statuses.includes(r.status)).reduce((sum, r) => sum + r.n, 0);
  return { pending: count(["pending"]), succeeded: count(["succeeded"]), failed: count(["failed", "expired", "cancelled"]) };
}
