// The statements that write by delivery id (recordAttempts, expireDeliveries) must find their rows through
// the primary key of the one partition holding them: read through the pending partial indexes instead, as
// the planner prefers while their estimate lags the backlog, they cost O(backlog) per batch, and every
// day partition is planned and scanned besides.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { randomBytes } from "node:crypto";
import { encodeId, newId } from "../../src/core/ids.js";
import { expireDeliveries, recordAttempts, type NewDelivery } from "../../src/store/deliveries.js";
import { migrate, openStore, type Db, type Store } from "../../src/store/db.js";
import { DAY_MS, dayStart, ensurePartitions, listPartitions } from "../../src/store/partitions.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import { createTestDatabase } from "../support/postgres.js";
import { insertDeliveries, insertEvents, insertTestWebhook } from "../support/rows.js";

const BACKLOG = 20_000;
const WEBHOOKS = 4;
const BATCH = 20;

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;
let backlog: string[] = [];
let todays: string;

before(async () => {
  database = await createTestDatabase("attempt_plan");
  // One backend for everything: statistics another backend has yet to flush cannot land mid-measurement.
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 1 });
  const db = store.db;
  await migrate(db);
  // A month of day partitions, as a deployment keeps: a statement that plans over all of them shows.
  const failed = await ensurePartitions(db, Date.now(), dayStart(Date.now() - 30 * DAY_MS));
  assert.deepEqual(failed, []);
  assert.ok((await listPartitions(db, "deliveries")).length >= 34);

  await ensureDefaultTenant(db);
  const now = new Date();
  const webhooks: string[] = [];
  for (let w = 0; w < WEBHOOKS; w++) {
    const id = newId("wh");
    webhooks.push(id);
    await insertTestWebhook(db, { id, shard: w, at: now });
  }
  const events = Array.from({ length: BACKLOG }, () => ({
    id: newId("evt"), tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: "{}", idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: now,
  }));
  for (let i = 0; i < events.length; i += 1000) await insertEvents(db, events.slice(i, i + 1000));
  const deliveries: NewDelivery[] = events.map((e, i) => ({
    id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: webhooks[i % WEBHOOKS]!, event_id: e.id, seq: Math.floor(i / WEBHOOKS) + 1, shard: i % WEBHOOKS,
    ordering_key: "", status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + DAY_MS), created_at: now,
  }));
  // No ANALYZE, nor autovacuum's: the partition keeps a fresh one's estimate (0.5 % of its rows pending),
  // the one that made the planner read the pending indexes.
  for (const part of await listPartitions(db, "deliveries")) await sql`alter table ${sql.table(part)} set (autovacuum_enabled = off)`.execute(db);
  await insertDeliveries(db, deliveries);
  backlog = deliveries.map((d) => d.id);
  const { rows } = await sql<{ part: string }>`select distinct tableoid::regclass::text as part from deliveries`.execute(db);
  assert.equal(rows.length, 1, "the backlog is in one partition");
  todays = rows[0]!.part;
});

after(async () => {
  await store?.close();
  await database?.drop();
});

interface Reads {
  /** Tuples read through the pending partial indexes, of any partition. */
  pendingTuples: number;
  /** Tuples read through the primary keys, of any partition. */
  primaryKeyTuples: number;
  /** Tuples read by sequential scans, of any partition. */
  seqTuples: number;
  /** Partitions with any scan (sequential or index) counted. */
  scanned: Record<string, number>;
}

/** What this backend's statements read of deliveries so far; run on the backend that ran them. */
async function reads(conn: Db): Promise<Reads> {
  // Counters reach the shared statistics when a backend goes idle, and at most once a second unless forced.
  await sql`select pg_stat_force_next_flush()`.execute(conn);
  // By what the indexes are, not their names (a partition's are derived: deliveries_p20261129_pkey, …).
  const indexes = await sql<{ primary: boolean; pending: boolean; tuples: number }>`
    select x.indisprimary as primary, coalesce(pg_get_expr(x.indpred, x.indrelid) like '%pending%', false) as pending, s.idx_tup_read::int as tuples
    from pg_stat_user_indexes s join pg_index x on x.indexrelid = s.indexrelid
    where s.relid in (select inhrelid from pg_inherits where inhparent = 'deliveries'::regclass)`.execute(conn);
  const tables = await sql<{ table: string; scans: number; seqTuples: number }>`
    select relname as table, (seq_scan + coalesce(idx_scan, 0))::int as scans, seq_tup_read::int as "seqTuples" from pg_stat_user_tables
    where relid in (select inhrelid from pg_inherits where inhparent = 'deliveries'::regclass)`.execute(conn);
  assert.ok(indexes.rows.some((r) => r.pending) && indexes.rows.some((r) => r.primary), "the partitions' indexes are found");
  const sum = (pick: (r: (typeof indexes.rows)[number]) => boolean) => indexes.rows.filter(pick).reduce((n, r) => n + r.tuples, 0);
  return {
    pendingTuples: sum((r) => r.pending),
    primaryKeyTuples: sum((r) => r.primary),
    seqTuples: tables.rows.reduce((n, r) => n + r.seqTuples, 0),
    scanned: Object.fromEntries(tables.rows.map((r) => [r.table, r.scans])),
  };
}

/** Runs `work` on one backend and returns what it read of deliveries. */
async function measure(db: Db, work: (conn: Db) => Promise<void>): Promise<{ before: Reads; after: Reads }> {
  return db.connection().execute(async (conn) => {
    const before = await reads(conn);
    await work(conn);
    const after = await reads(conn);
    const show = (r: Reads) => JSON.stringify({ ...r, scanned: r.scanned[todays], othersScanned: Object.entries(r.scanned).filter(([t, n]) => t !== todays && n > 0).length });
    console.log(`# before ${show(before)}, after ${show(after)}`);
    return { before, after };
  });
}

function assertProbes(before: Reads, after: Reads, ids: number): void {
  assert.equal(after.pendingTuples - before.pendingTuples, 0, "nothing is read through the pending indexes");
  assert.equal(after.seqTuples - before.seqTuples, 0, "nothing is read sequentially");
  const probed = after.primaryKeyTuples - before.primaryKeyTuples;
  assert.ok(probed >= 1 && probed <= 2 * ids, `${probed} tuples read through the primary keys for ${ids} ids`);
  const others = Object.keys(after.scanned).filter((t) => t !== todays && after.scanned[t] !== before.scanned[t]);
  assert.deepEqual(others, [], "no partition but the backlog's is scanned");
}

async function statusCounts(db: Db): Promise<Record<string, number>> {
  const rows = await db.selectFrom("deliveries").select(["status", (eb) => eb.fn.countAll<number>().as("n")]).groupBy("status").execute();
  return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
}

test("recordAttempts reads its batch through one partition's primary key, not the pending backlog", async () => {
  const db = store.db;
  // Spread over the backlog, as the attempts that end together across many webhooks are: a plan that
  // reads the id range between the batch's ends reads most of the backlog here.
  const batch = backlog.filter((_, i) => i % 1000 === 7);
  assert.equal(batch.length, BATCH);
  const at = new Date();
  const { before, after } = await measure(db, (conn) =>
    recordAttempts(conn, batch.map((deliveryId) => ({
      attemptId: newId("att"), deliveryId, attemptedAt: at, durationMs: 5, responseCode: 200, error: null, responseBody: "ok", status: "succeeded", nextAttemptAt: at,
    }))),
  );
  assertProbes(before, after, BATCH);

  const written = await db.selectFrom("deliveries").select(["id", "status", "attempts"]).where("id", "in", batch).execute();
  assert.equal(written.length, BATCH);
  for (const row of written) assert.deepEqual({ status: row.status, attempts: row.attempts }, { status: "succeeded", attempts: 1 }, row.id);
  const attempts = await db.selectFrom("delivery_attempts").select("delivery_id").where("delivery_id", "in", batch).execute();
  assert.equal(attempts.length, BATCH);
  assert.deepEqual(await statusCounts(db), { pending: BACKLOG - BATCH, succeeded: BATCH });
});

test("expireDeliveries reads its deliveries through the primary key too", async () => {
  const db = store.db;
  const ids = backlog.filter((_, i) => i % 4000 === 11);
  // Past their TTL in Postgres: a lane's copy alone is not enough to expire one.
  await db.updateTable("deliveries").set({ expires_at: new Date(Date.now() - 1_000) }).where("id", "in", ids).execute();
  const { before, after } = await measure(db, async (conn) => {
    assert.equal(await expireDeliveries(conn, ids), ids.length);
  });
  assertProbes(before, after, ids.length);

  const rows = await db.selectFrom("deliveries").select("id").where("status", "=", "expired").orderBy("id").execute();
  assert.deepEqual(rows.map((r) => r.id), [...ids].sort());
  assert.deepEqual(await statusCounts(db), { pending: BACKLOG - BATCH - ids.length, succeeded: BATCH, expired: ids.length });
});

test("as a prepared statement's generic plan too, recordAttempts reads only its day's primary key", async () => {
  const db = store.db;
  const pending = await db.selectFrom("deliveries").select("id").where("status", "=", "pending").orderBy("id").execute();
  const batch = pending.map((r) => r.id).filter((_, i) => i % 900 === 5).slice(0, BATCH);
  const at = new Date();
  const { before, after } = await measure(db, async (conn) => {
    // Whether Postgres keeps planning the statement or takes a generic plan is its choice; both must read alike.
    await sql`set plan_cache_mode = force_generic_plan`.execute(conn);
    try {
      await recordAttempts(conn, batch.map((deliveryId) => ({
        attemptId: newId("att"), deliveryId, attemptedAt: at, durationMs: 5, responseCode: 503, error: null, responseBody: "busy", status: "pending", nextAttemptAt: at,
      })));
    } finally {
      await sql`reset plan_cache_mode`.execute(conn);
    }
  });
  assertProbes(before, after, batch.length);
  const rows = await db.selectFrom("deliveries").select("attempts").where("id", "in", batch).execute();
  assert.deepEqual(rows.map((r) => r.attempts), batch.map(() => 1));
});

test("a batch of a day without a partition (its rows in the default one) and a batch across two days are written too", async () => {
  const db = store.db;
  const now = Date.now();
  const webhookId = newId("wh");
  await insertTestWebhook(db, { id: webhookId, shard: 9, at: new Date(now) });
  const at = (ms: number) => ({ delivery: encodeId("dlv", ms, randomBytes(10)), event: encodeId("evt", ms, randomBytes(10)) });
  const rows = [at(now - 400 * DAY_MS), at(now), at(now - 2 * DAY_MS)];
  await insertEvents(db, rows.map((r) => ({
    id: r.event, tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: "{}", idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: new Date(now),
  })));
  await insertDeliveries(db, rows.map((r, i) => ({
    id: r.delivery, tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: r.event, seq: i + 1, shard: 9, ordering_key: "",
    status: "pending" as const, next_attempt_at: new Date(now), expires_at: new Date(now + DAY_MS), created_at: new Date(now),
  })));
  const { rows: homes } = await sql<{ id: string; part: string }>`select id, tableoid::regclass::text as part from deliveries where webhook_id = ${webhookId}`.execute(db);
  assert.equal(homes.find((h) => h.id === rows[0]!.delivery)?.part, "deliveries_default", "400 days back has no partition of its own");

  const record = (deliveryId: string) => ({
    attemptId: newId("att"), deliveryId, attemptedAt: new Date(), durationMs: 5, responseCode: 200, error: null, responseBody: "ok", status: "succeeded" as const, nextAttemptAt: new Date(),
  });
  await recordAttempts(db, [record(rows[0]!.delivery)]);
  await recordAttempts(db, [record(rows[1]!.delivery), record(rows[2]!.delivery)]);
  const written = await db.selectFrom("deliveries").select(["id", "status", "attempts"]).where("webhook_id", "=", webhookId).orderBy("seq").execute();
  assert.deepEqual(written.map((r) => [r.status, r.attempts]), [["succeeded", 1], ["succeeded", 1], ["succeeded", 1]]);
  const attempts = await db.selectFrom("delivery_attempts").select("delivery_id").where("delivery_id", "in", rows.map((r) => r.delivery)).execute();
  assert.equal(attempts.length, 3, "one attempt row each");
});
