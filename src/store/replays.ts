import { sql } from "kysely";
import { clampIdTime, idFloor } from "../core/ids.js";
import type { Db } from "./db.js";
import type { Replay, ReplayScope } from "./schema.js";
import { requeueableSql, requeueDeadlineSql, requeuedExpiry } from "./partitions.js";

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
 * gets a fresh TTL from when it comes due (from now, a slow replay's tail expired unsent), never past its
 * partition's retention. One statement: the replay is all or nothing. `late` counts the deliveries that
 * would come due after their records go; the caller refuses the replay (rolls it back) when there are any.
 *
 * The range is on `created_at`, the time the API shows: a delivery's id, which the store partitions by,
 * is made a little later (after the subscribers are read), so the id bounds only narrow the search.
 */
export async function startReplay(db: Db, plan: ReplayPlan): Promise<{ replay: Replay; late: number }> {
  const spacingMs = 1000 / plan.ratePerSecond;
  const result = await sql<{ total: number; late: number }>`
    with chosen as (
      select id, created_at, now() + (row_number() over (order by seq) - 1) * ${spacingMs}::float8 * interval '1 millisecond' as due_at
      from deliveries
      where webhook_id = ${plan.webhookId}
        and created_at >= ${plan.since} and created_at < ${plan.until}
        and id >= ${idFloor("dlv", clampIdTime(plan.since.getTime()))}
        and id < ${idFloor("dlv", clampIdTime(plan.until.getTime() + ID_AFTER_CREATED_MS))}
        and status = any(${sql.val(REPLAYED_STATUSES[plan.scope])}::text[])
        and ${requeueableSql(sql`created_at`, plan.eventTtlMs)}
    ), requeued as (
      update deliveries as d set
        status = 'pending',
        replay_id = ${plan.id},
        next_attempt_at = c.due_at,
        expires_at = ${requeuedExpiry(sql`c.created_at`, plan.eventTtlMs, sql`c.due_at`)}
      from chosen c
      where d.id = c.id
        -- Checked again on the row as the update finds it: one changed since the statement began (a retry
        -- by hand that succeeded meanwhile) is read afresh once its change commits, and left as it is.
        and d.status = any(${sql.val(REPLAYED_STATUSES[plan.scope])}::text[])
      returning d.id, c.created_at, c.due_at
    )
    select (select count(*)::int from requeued) as total,
      (select count(*)::int from requeued r where r.due_at >= ${requeueDeadlineSql(sql`r.created_at`, plan.eventTtlMs)}) as late`.execute(db);
  const replay = await db
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
  return { replay, late: result.rows[0]?.late ?? 0 };
}

/** How much later than its `created_at` a delivery's id may have been made (the ingest's own time). */
const ID_AFTER_CREATED_MS = 60 * 60 * 1000;

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
