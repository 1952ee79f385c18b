import { sql } from "kysely";
import type { DeliveryJob } from "../queue/job.js";
import type { Db } from "./db.js";
import { prepared } from "./prepared.js";
import type { Delivery, DeliveryAttempt, DeliveryStatus } from "./schema.js";
import { onDayPartition, requeueableSql, requeuedExpiry } from "./partitions.js";

export type NewDelivery = Omit<Delivery, "attempts" | "last_response_code" | "last_error" | "delivered_at" | "replay_id">;

/** Ends every pending delivery of a webhook; returns how many. */
export async function cancelPendingDeliveries(db: Db, webhookId: string): Promise<number> {
  const result = await db
    .updateTable("deliveries")
    .set({ status: "cancelled" })
    .where("webhook_id", "=", webhookId)
    .where("status", "=", "pending")
    .executeTakeFirst();
  return Number(result.numUpdatedRows);
}

export interface LaneLoad {
  jobs: DeliveryJob[];
  /** The webhook's last reserved seq when the jobs were read: every pending seq up to it is in jobs, unless jobs was cut at the limit. */
  lastSeq: number;
  /** The webhook's `requeues` when the jobs were read: every delivery those put back is among them (read from the start). */
  requeues: number;
}

/**
 * Pending deliveries of a webhook after a seq, in order, with what the sender needs of their events but
 * their payloads, which are read when an attempt is about to start; but for those of `leaveOutKeys`
 * (ordering keys a lane has parked).
 */
export async function loadPendingForLane(db: Db, webhookId: string, afterSeq: number, limit: number, leaveOutKeys: readonly string[] = []): Promise<LaneLoad> {
  // One statement, one snapshot: lastSeq and the rows agree.
  let rows = await readPendingForLane(db, webhookId, afterSeq, limit, leaveOutKeys);
  let lastSeq = rows[0] ? Number(rows[0].last_seq) : undefined;
  let requeues = rows[0]?.requeues ?? 0;
  if (lastSeq === undefined) {
    // Nothing pending: the last seq comes from a second statement, whose later snapshot may hold seqs
    // committed after the first (counted as held, not in the lane: the next seq went before them). Every
    // seq up to it was committed with it (ingest reserves and inserts in one statement), so a third read
    // sees them all. Its `requeues` may count a requeue after the first read too; a read from the start
    // (afterSeq 0) of a webhook that has deliveries reads a third time, which sees what that put back.
    const webhook = await db.selectFrom("webhooks").select(["last_seq", "requeues"]).where("id", "=", webhookId).executeTakeFirst();
    lastSeq = Number(webhook?.last_seq ?? 0);
    requeues = webhook?.requeues ?? 0;
    if (lastSeq > afterSeq) {
      rows = await readPendingForLane(db, webhookId, afterSeq, limit, leaveOutKeys);
      if (rows[0]) {
        lastSeq = Number(rows[0].last_seq);
        requeues = rows[0].requeues ?? 0;
      }
    }
  }
  const jobs = rows.map((r) => ({
    deliveryId: r.id,
    webhookId: r.webhook_id,
    shard: r.shard,
    seq: Number(r.seq),
    orderingKey: r.ordering_key,
    eventId: r.event_id,
    eventType: r.event_type,
    createdAt: r.created_at.getTime(),
    attempts: r.attempts,
    nextAttemptAt: r.next_attempt_at.getTime(),
    expiresAt: r.expires_at.getTime(),
    ...(r.replay_rate ? { paceMs: 1000 / r.replay_rate } : {}),
  }));
  return { jobs, lastSeq, requeues };
}

function readPendingForLane(db: Db, webhookId: string, afterSeq: number, limit: number, leaveOutKeys: readonly string[]) {
  return db
    .selectFrom("deliveries as d")
    .innerJoin("events as e", "e.id", "d.event_id")
    .leftJoin("replays as r", "r.id", "d.replay_id")
    // Nothing here narrows the partitions: planned afresh every call, this cost 4.9 ms of Postgres CPU
    // with a month of them (20 rows read); prepared, it settles on a generic plan and costs 0.55.
    .modifyFront(prepared(leaveOutKeys.length > 0 ? "lane_load_leaving_keys" : "lane_load"))
    .select([
      "r.rate_per_second as replay_rate",
      "d.id",
      "d.webhook_id",
      "d.shard",
      "d.seq",
      "d.ordering_key",
      "d.event_id",
      "e.event_type",
      "e.created_at",
      "d.attempts",
      "d.next_attempt_at",
      "d.expires_at",
      sql<number>`(select last_seq from webhooks w where w.id = ${webhookId})`.as("last_seq"),
      sql<number>`(select requeues from webhooks w where w.id = ${webhookId})`.as("requeues"),
    ])
    .where("d.webhook_id", "=", webhookId)
    // A literal, so that the statement's generic plan can use the partial indexes on pending rows.
    .where("d.status", "=", sql.lit("pending"))
    .where("d.seq", ">", afterSeq)
    // One array parameter, so that the statement's text is the same however many keys are left out.
    .$if(leaveOutKeys.length > 0, (q) => q.where(sql<boolean>`d.ordering_key <> all(${[...leaveOutKeys]}::text[])`))
    .orderBy("d.seq")
    .limit(limit)
    .execute();
}

export interface DueQuery {
  shards: number[];
  /** Work due by then counts (and after `dueSince`, when given). */
  dueBy: Date;
  /** Work coming due between now and then counts too. */
  horizon: Date;
  dueSince?: Date;
  /** The `next` of the page before: webhooks after it only. */
  after?: string;
  /** Webhooks per page: found (periodic sweep), or walked (full sweep). */
  limit: number;
}

export interface DuePage {
  webhooks: DueWebhook[];
  /** Where the next page starts; absent on the last page. */
  next?: string;
}

/**
 * Webhooks of these shards with a pending delivery due by `dueBy` (and after `dueSince`, when given), or
 * coming due between now and `horizon` — the lanes that should be moving or about to — with the lowest
 * seq pending for each (due or not), so a lane whose position is past it reads from there and finds
 * deliveries put back behind it without skipping one that waits for its retry; and the webhook's last
 * seq, so a lane short of it reads on (a feed message lost: other ordering keys may have work there).
 * A page at a time, in webhook id order: a sweep cut at its limit without a next page left the webhooks
 * past it to the feed alone, and behind 10,000 lanes held by open circuits a delivery whose feed message
 * was lost waited for good.
 *
 * With `dueSince`, one index entry is read per delivery that came due since then (the periodic sweep).
 * Without it, a backlog behind a dead endpoint must not be read whole: the webhooks with pending
 * deliveries are walked one index descent each (a loose scan of the pending index by webhook), and each
 * is asked whether one of its deliveries is due — 6 ms for a million due deliveries of five webhooks,
 * where reading them took 0.5 s; about 50 µs a webhook with pending work.
 */
export async function findWebhooksWithDueDeliveries(db: Db, query: DueQuery): Promise<DuePage> {
  const { shards, dueBy, horizon, dueSince, after = "", limit } = query;
  if (shards.length === 0) return { webhooks: [] };
  const now = new Date();
  if (!dueSince) {
    // The walk goes over every shard's webhooks (the index leads with the webhook), so a page ends where
    // the walk did, whether or not the last webhook walked is one of these shards' or has work due.
    const { rows } = await sql<DueWebhook & { walked: number; walked_to: string | null }>`
      with recursive hooks(webhook_id) as (
        (select d.webhook_id from deliveries d where d.status = 'pending' and d.webhook_id > ${after} order by d.webhook_id limit 1)
        union all
        select (select d.webhook_id from deliveries d where d.status = 'pending' and d.webhook_id > h.webhook_id order by d.webhook_id limit 1)
        from hooks h where h.webhook_id is not null
      ),
      walked as materialized (select webhook_id from hooks where webhook_id is not null limit ${limit})
      select x.walked, x.walked_to, due.*
      from (select count(*)::int as walked, max(webhook_id) as walked_to from walked) x
      left join lateral (
        select w.id as webhook_id, w.shard,
          (select min(p.seq) from deliveries p where p.webhook_id = w.id and p.status = 'pending') as first_seq
        from walked h join webhooks w on w.id = h.webhook_id
        where w.shard = any(${sql.val(shards)}::int[])
          and exists (select 1 from deliveries p where p.webhook_id = w.id and p.status = 'pending'
            and (p.next_attempt_at <= ${dueBy} or (p.next_attempt_at > ${now} and p.next_attempt_at <= ${horizon})))
      ) due on true`.execute(db);
    const first = rows[0];
    return {
      webhooks: rows.filter((r) => r.webhook_id !== null).map(dueWebhook),
      ...(first && first.walked === limit && first.walked_to ? { next: first.walked_to } : {}),
    };
  }
  const rows = await db
    .selectFrom("deliveries as d")
    .select([
      "d.webhook_id",
      "d.shard",
      sql<number>`(select min(p.seq) from deliveries p where p.webhook_id = d.webhook_id and p.status = 'pending')`.as("first_seq"),
    ])
    .where("d.status", "=", "pending")
    .where("d.shard", "in", shards)
    .where("d.webhook_id", ">", after)
    .where((eb) =>
      eb.or([
        eb.and([eb("d.next_attempt_at", ">", dueSince), eb("d.next_attempt_at", "<=", dueBy)]),
        eb.and([eb("d.next_attempt_at", ">", now), eb("d.next_attempt_at", "<=", horizon)]),
      ]),
    )
    .groupBy(["d.webhook_id", "d.shard"])
    .orderBy("d.webhook_id")
    .limit(limit)
    .execute();
  const webhooks = rows.map(dueWebhook);
  return { webhooks, ...(webhooks.length === limit ? { next: webhooks.at(-1)!.webhook_id } : {}) };
}

export interface DueWebhook {
  webhook_id: string;
  shard: number;
  /** The lowest seq pending, due or not. */
  first_seq: number;
}

function dueWebhook(r: DueWebhook): DueWebhook {
  return { webhook_id: r.webhook_id, shard: r.shard, first_seq: Number(r.first_seq) };
}

/**
 * "Still pending", for statements that find their deliveries by id. Written so that the planner cannot
 * match it to the pending partial indexes: their row estimate lags a backlog (it is 0.5 % of the rows
 * before the first ANALYZE), which makes reading every pending delivery and hashing look cheaper than
 * one primary-key probe per id — a plan that costs O(backlog) per statement, measured at 4× the CPU of
 * the probes with 20,000 pending, and worse the longer the backlog.
 */
function stillPending(alias: string) {
  return sql<boolean>`(${sql.ref(`${alias}.status`)} = 'pending') is true`;
}

/** What a delivery ended without an attempt looks like. */
const EXPIRED_UNTRIED = { status: "expired", last_error: "expired before it could be delivered" } as const;

export interface AttemptRecord {
  attemptId: string;
  deliveryId: string;
  attemptedAt: Date;
  durationMs: number;
  responseCode: number | null;
  error: string | null;
  responseBody: string | null;
  /** The delivery's state after this attempt. */
  status: DeliveryStatus;
  nextAttemptAt: Date;
}

/**
 * Writes a batch of attempts and their deliveries' new state in one statement (atomic, one round trip:
 * this is the dispatcher's busiest query). Only pending deliveries change: a late writer (a lost lease,
 * a cancelled webhook) cannot undo a final state. Except "expired before it could be delivered", which
 * housekeeping (or a new owner's lane) writes when the TTL ends while the attempt is in flight: a final
 * answer then says what became of the delivery. Left expired, a delivery the receiver had answered 200
 * read "expired, 0 attempts" beside that attempt, and a replay of the failed ones sent it again.
 * A delivery cancelled (its webhook deleted) while its attempt was under way stays cancelled, but counts
 * the attempt and its answer: it read "cancelled, 0 attempts" beside the attempt the receiver had.
 */
export async function recordAttempts(db: Db, records: AttemptRecord[]): Promise<void> {
  if (records.length === 0) return;
  const ids = records.map((r) => r.deliveryId);
  // Aimed at the day partition holding the batch, as a prepared statement: Postgres parses and plans it
  // once per connection (46–65 → 31–39 µs of its CPU per record, batches of 20, a month of partitions).
  await onDayPartition("deliveries", ids, "record_attempts", (target, mark) => sql`${mark}
    with v as (
      select * from unnest(
        ${sql.val(ids)}::text[],
        ${sql.val(records.map((r) => r.attemptId))}::text[],
        ${sql.val(records.map((r) => r.status))}::text[],
        ${sql.val(records.map((r) => r.nextAttemptAt.toISOString()))}::timestamptz[],
        ${sql.val(records.map((r) => r.responseCode))}::int[],
        ${sql.val(records.map((r) => r.error))}::text[],
        ${sql.val(records.map((r) => r.attemptedAt.toISOString()))}::timestamptz[],
        ${sql.val(records.map((r) => r.durationMs))}::int[],
        ${sql.val(records.map((r) => r.responseBody))}::text[]
      ) as v(id, attempt_id, status, next_attempt_at, code, error, attempted_at, duration_ms, body)
    ), attempts as (
      insert into delivery_attempts (id, delivery_id, attempted_at, duration_ms, response_code, error, response_body)
      select attempt_id, id, attempted_at, duration_ms, code, error, body from v
    )
    update ${sql.table(target)} as d set
      status = case when d.status = 'cancelled' then d.status else v.status end,
      attempts = d.attempts + 1,
      next_attempt_at = case when d.status = 'cancelled' then d.next_attempt_at else v.next_attempt_at end,
      last_response_code = v.code,
      last_error = v.error,
      delivered_at = case when v.status = 'succeeded' then v.attempted_at else d.delivered_at end
    from v
    where d.id = v.id
      and (${stillPending("d")} or d.status = 'cancelled' or (d.status = 'expired' and d.last_error = ${EXPIRED_UNTRIED.last_error} and v.status <> 'pending'))
      -- Read through the primary key, however far apart in the backlog the rows are. Against the
      -- partitioned table the ids are a constant list, so the planner leaves out every other day's
      -- partition (planning over all of them cost 4× the CPU of the statement with a month of them).
      and d.id = any(${sql.val(ids)}::text[])`.execute(db),
  );
}

/**
 * Ends deliveries without an attempt (expired before they could be tried) whose TTL has passed in
 * Postgres, not only in a lane's copy: a retry by hand or a replay gives a fresh one. Returns how many.
 */
export async function expireDeliveries(db: Db, ids: string[]): Promise<number> {
  if (ids.length === 0) return 0;
  const result = await db
    .updateTable("deliveries")
    .set(EXPIRED_UNTRIED)
    .where("id", "in", ids)
    .where(stillPending("deliveries"))
    .where("expires_at", "<=", sql<Date>`now()`)
    .executeTakeFirst();
  return Number(result.numUpdatedRows);
}

export async function isDeliveryPending(db: Db, id: string): Promise<boolean> {
  const row = await db.selectFrom("deliveries").select("status").where("id", "=", id).executeTakeFirst();
  return row?.status === "pending";
}

/** A pending delivery's schedule as Postgres has it; undefined when it is not pending (or not there). */
export async function pendingSchedule(db: Db, id: string): Promise<{ attempts: number; nextAttemptAt: number; expiresAt: number } | undefined> {
  const row = await db
    .selectFrom("deliveries")
    .select(["attempts", "next_attempt_at", "expires_at"])
    .where("id", "=", id)
    .where("status", "=", "pending")
    .executeTakeFirst();
  return row && { attempts: row.attempts, nextAttemptAt: new Date(row.next_attempt_at).getTime(), expiresAt: new Date(row.expires_at).getTime() };
}

export function getDelivery(db: Db, tenantId: string, id: string) {
  return db
    .selectFrom("deliveries as d")
    .innerJoin("events as e", "e.id", "d.event_id")
    .selectAll("d")
    .select("e.event_type")
    .where("d.tenant_id", "=", tenantId)
    .where("d.id", "=", id)
    .executeTakeFirst();
}

export function listDeliveries(db: Db, tenantId: string, webhookId: string, status: string, afterId: string, limit: number) {
  let query = db
    .selectFrom("deliveries as d")
    .innerJoin("events as e", "e.id", "d.event_id")
    .selectAll("d")
    .select("e.event_type")
    .where("d.tenant_id", "=", tenantId)
    .where("d.webhook_id", "=", webhookId)
    .where("d.id", ">", afterId);
  if (status) query = query.where("d.status", "=", status as DeliveryStatus);
  return query.orderBy("d.id").limit(limit).execute();
}

export function listAttempts(db: Db, deliveryId: string): Promise<DeliveryAttempt[]> {
  return db
    .selectFrom("delivery_attempts")
    .selectAll()
    .where("delivery_id", "=", deliveryId)
    // Attempt ids are minted at attempt time: id order is time order, and the primary key serves it.
    .orderBy("id")
    .execute();
}

/**
 * Puts a failed or expired delivery back in its lane, due now, with a fresh TTL capped at its partition's
 * retention; returns false when it was not in such a state, too close to that retention to be put back,
 * or its webhook is deleted. Its attempt count goes on, so it gets one more attempt, not a new schedule.
 */
export async function requeueDelivery(db: Db, id: string, eventTtlMs: number): Promise<boolean> {
  const result = await db
    // The webhook's row is locked first: a delete in progress is waited for and its outcome seen (the
    // row is read again), so either the delete commits first and nothing is put back, or it waits for
    // this statement and then cancels the delivery with the webhook's other pending ones. Paused and
    // disabled webhooks take it: their lanes hold it until they are active again.
    .with("hook", (qb) =>
      qb
        .selectFrom("webhooks")
        .select("id")
        .where("id", "=", (eb) => eb.selectFrom("deliveries").select("webhook_id").where("id", "=", id))
        .where("status", "<>", "deleted")
        .forUpdate(),
    )
    .with("requeued", (qb) =>
      qb
        .updateTable("deliveries")
        // A retry by hand is its own: it leaves any replay the delivery was part of (and its pace).
        .set({ status: "pending", next_attempt_at: sql<Date>`now()`, expires_at: requeuedExpiry(sql`created_at`, eventTtlMs), replay_id: null })
        .where("id", "=", id)
        .where("status", "in", ["failed", "expired"])
        .where(requeueableSql(sql`created_at`, eventTtlMs))
        .where("webhook_id", "=", (eb) => eb.selectFrom("hook").select("hook.id"))
        .returning("webhook_id"),
    )
    // Counted only when it was put back; the next ingest hands the count to the lanes (WebhookTable.requeues).
    .updateTable("webhooks")
    .set({ requeues: sql`requeues + 1` })
    .where("id", "=", (eb) => eb.selectFrom("requeued").select("requeued.webhook_id"))
    .executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

/**
 * Ends the pending deliveries whose TTL has passed — those of paused, disabled or circuit-broken
 * webhooks that no attempt looked at — and any still pending in partitions about to be dropped.
 * Returns how many.
 */
export async function expireOverdueDeliveries(db: Db, now: Date, keepFromId: string): Promise<number> {
  const result = await db
    .updateTable("deliveries")
    .set(EXPIRED_UNTRIED)
    .where("status", "=", "pending")
    .where((eb) => eb.or([eb("expires_at", "<=", now), eb("id", "<", keepFromId)]))
    .executeTakeFirst();
  return Number(result.numUpdatedRows);
}
