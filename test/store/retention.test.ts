// Retention by daily partitions: the partitions migrate makes, the upgrade of an unpartitioned
// database, housekeeping with a moved clock (on Postgres and on PGlite), and TTL expiry end to end.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { Migrator, sql } from "kysely";
import pg from "pg";
import { encodeId, idTimestamp, newId } from "../../src/core/ids.js";
import { runHousekeeping } from "../../src/dispatcher/housekeeping.js";
import { getDelivery, listAttempts, loadPendingForLane, recordAttempts } from "../../src/store/deliveries.js";
import { migrate, openStore, type Db, type Store } from "../../src/store/db.js";
import { findEventsByIdempotencyKeys, getEvent } from "../../src/store/events.js";
import { migrationProvider } from "../../src/store/migrations/index.js";
import { DAYS_AHEAD, listPartitions, partitionDay } from "../../src/store/partitions.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import { getWebhook } from "../../src/store/webhooks.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { createTestDatabase } from "../support/postgres.js";
import { freePort } from "../support/ports.js";
import { insertDeliveries, insertEvents, insertTestWebhook } from "../support/rows.js";
import { startReceiver } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";

// Written out here rather than imported, so a change to the product's constants shows up as a failure.
const DAY = 24 * 60 * 60 * 1000;
const HOUR = 60 * 60 * 1000;
const TABLES = ["events", "deliveries", "delivery_attempts"] as const;

const dayOf = (ms: number) => Math.floor(ms / DAY) * DAY;
const yyyymmdd = (ms: number) => new Date(ms).toISOString().slice(0, 10).replaceAll("-", "");
const part = (table: string, day: number) => `${table}_p${yyyymmdd(day)}`;
/** The day partitions of `table` from `first` through `last` (day starts), in name order. */
function dayParts(table: string, first: number, last: number): string[] {
  const names: string[] = [];
  for (let d = first; d <= last; d += DAY) names.push(part(table, d));
  return names;
}

type Cleanup = () => Promise<unknown>;
const cleanups: Cleanup[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => console.error("cleanup failed", err));
});

async function pgStore(label: string): Promise<{ store: Store; url: string; client: pg.Client }> {
  const database = await createTestDatabase(label);
  cleanups.push(() => database.drop());
  const store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 4 });
  cleanups.push(() => store.close());
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  cleanups.push(() => client.end());
  return { store, url: database.url, client };
}

/** The partition (relation) a row lives in. */
async function partitionOf(db: Db, table: string, column: string, id: string): Promise<string | undefined> {
  const { rows } = await sql<{ part: string }>`select tableoid::regclass::text as part from ${sql.table(table)} where ${sql.ref(column)} = ${id}`.execute(db);
  assert.ok(rows.length <= 1, `${table}.${column} = ${id} is in one row at most`);
  return rows[0]?.part;
}

async function countRows(db: Db, table: string): Promise<number> {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from ${sql.table(table)}`.execute(db);
  return rows[0]!.n;
}

async function statuses(db: Db, ids: string[]): Promise<Record<string, string>> {
  const rows = await db.selectFrom("deliveries").select(["id", "status"]).where("id", "in", ids).execute();
  return Object.fromEntries(rows.map((r) => [r.id, r.status]));
}

async function allPartitions(db: Db): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const table of TABLES) out[table] = await listPartitions(db, table);
  return out;
}

/** Each table has a day partition for today through today + DAYS_AHEAD, and its default partition. */
async function checkFreshPartitions(db: Db): Promise<void> {
  assert.equal(DAYS_AHEAD, 3, "three days of partitions are made ahead");
  const today = dayOf(Date.now());
  for (const table of TABLES) {
    const parts = await listPartitions(db, table);
    for (const name of dayParts(table, today, today + 3 * DAY)) assert.ok(parts.includes(name), `${table}: ${name} exists (have ${parts.join(", ")})`);
    assert.ok(parts.includes(`${table}_default`), `${table}: a default partition exists`);
    assert.equal(partitionDay(`${table}_default`), undefined);
    // A fresh database has nothing older than today.
    for (const name of parts) {
      const day = partitionDay(name);
      if (day !== undefined) assert.ok(day >= today && day <= today + 3 * DAY, `${table}: unexpected partition ${name}`);
    }
    const { rows } = await sql<{ strategy: string }>`
      select pt.partstrat as strategy from pg_partitioned_table pt join pg_class c on c.oid = pt.partrelid where c.relname = ${table}`.execute(db);
    assert.equal(rows[0]?.strategy, "r", `${table} is range-partitioned`);
  }
}

/** A tenant's webhook, event, delivery and attempt written straight through the repositories. */
async function seedDirect(db: Db, opts: { key: string; url: string }) {
  await ensureDefaultTenant(db);
  const now = new Date();
  const webhookId = newId("wh");
  await insertTestWebhook(db, { id: webhookId, shard: 0, url: opts.url, at: now });
  const eventId = newId("evt");
  await insertEvents(db, [
    { id: eventId, tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: '{"n":1}', idempotency_key: opts.key, ordering_key: null, delivery_count: 2, created_at: now },
  ]);
  const pendingId = newId("dlv");
  const doneId = newId("dlv");
  await insertDeliveries(db, [
    { id: pendingId, tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: eventId, seq: 1, shard: 0, ordering_key: "", status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + HOUR), created_at: now },
    { id: doneId, tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: eventId, seq: 2, shard: 0, ordering_key: "", status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + HOUR), created_at: now },
  ]);
  await recordAttempts(db, [
    { attemptId: newId("att"), deliveryId: pendingId, attemptedAt: now, durationMs: 3, responseCode: 503, error: "HTTP 503", responseBody: "busy", status: "pending", nextAttemptAt: new Date(now.getTime() + 30 * 60_000) },
    { attemptId: newId("att"), deliveryId: doneId, attemptedAt: now, durationMs: 3, responseCode: 200, error: null, responseBody: "ok", status: "succeeded", nextAttemptAt: now },
  ]);
  return { webhookId, eventId, pendingId, doneId };
}

/**
 * Housekeeping with a moved clock on a store holding today's rows only: nothing goes before the
 * retention of today's partitions ends, at that instant exactly today's partitions go, with the
 * pending delivery expired first and the idempotency key forgotten.
 */
async function checkHousekeepingDrop(db: Db): Promise<void> {
  const ttl = HOUR;
  const seeded = await seedDirect(db, { key: "order-42", url: "http://127.0.0.1:9/unused" });
  const now = Date.now();
  // The day the rows were minted on (not read off the clock again, in case midnight passed meanwhile).
  const today = dayOf(idTimestamp(seeded.eventId)!.getTime());
  const end = today + DAY + ttl + DAY;
  for (const table of TABLES) assert.equal(await partitionOf(db, table, table === "delivery_attempts" ? "delivery_id" : "id", table === "events" ? seeded.eventId : seeded.pendingId), part(table, today));

  const before = await allPartitions(db);
  const early = await runHousekeeping(db, ttl, now + 60_000);
  assert.deepEqual(early, { partitionsFailed: [], expired: 0, keysForgotten: 0, partitionsDropped: [] });
  const justBefore = await runHousekeeping(db, ttl, end - 1);
  assert.deepEqual(justBefore.partitionsDropped, [], "nothing goes a millisecond before retention ends");
  assert.equal(justBefore.expired, 1, "the pending delivery is past its TTL");
  assert.equal(justBefore.keysForgotten, 1, "the key is older than the TTL");
  for (const table of TABLES) for (const name of before[table]!) assert.ok((await listPartitions(db, table)).includes(name), `${name} kept`);
  assert.deepEqual(await statuses(db, [seeded.pendingId, seeded.doneId]), { [seeded.pendingId]: "expired", [seeded.doneId]: "succeeded" });
  assert.equal((await getEvent(db, DEFAULT_TENANT_ID, seeded.eventId))?.id, seeded.eventId, "the event is still readable");
  assert.equal((await listAttempts(db, seeded.pendingId)).length, 1);
  assert.deepEqual(await findEventsByIdempotencyKeys(db, DEFAULT_TENANT_ID, ["order-42"]), []);

  // Put back pending (as a retry by hand would, with a fresh TTL that outlives the partition).
  await db.updateTable("deliveries").set({ status: "pending", expires_at: new Date(now + 30 * DAY) }).where("id", "=", seeded.pendingId).execute();
  const atEnd = await runHousekeeping(db, ttl, end);
  assert.deepEqual([...atEnd.partitionsDropped].sort(), TABLES.map((t) => part(t, today)).sort(), "exactly today's partitions go when their retention ends");
  assert.equal(atEnd.expired, 1, "the delivery still pending in a partition about to go is expired first");
  assert.deepEqual(atEnd.partitionsFailed, []);
  for (const table of TABLES) {
    assert.equal(await countRows(db, table), 0, `${table}: today's rows are gone`);
    const parts = await listPartitions(db, table);
    assert.ok(!parts.includes(part(table, today)));
    for (const name of dayParts(table, today + DAY, dayOf(end) + 3 * DAY)) assert.ok(parts.includes(name), `${table}: ${name} exists`);
    assert.ok(parts.includes(`${table}_default`));
  }
  assert.equal(await countRows(db, "idempotency_keys"), 0);
  const again = await runHousekeeping(db, ttl, end);
  assert.deepEqual(again, { partitionsFailed: [], expired: 0, keysForgotten: 0, partitionsDropped: [] }, "a second round finds nothing to do");
}

describe("retention on Postgres", () => {
  test("migrate makes today's and the next three days' partitions, and a default one, for each table", async () => {
    const { store } = await pgStore("ret_fresh");
    await migrate(store.db);
    await checkFreshPartitions(store.db);
    // Running migrate again (every start does) changes nothing.
    const before = await allPartitions(store.db);
    assert.deepEqual(await migrate(store.db), []);
    assert.deepEqual(await allPartitions(store.db), before);
  });

  test("upgrading an unpartitioned database keeps every row, puts old rows in their day's partition and moves idempotency keys", async () => {
    const { store, client } = await pgStore("ret_upgrade");
    const db = store.db;
    const migrator = new Migrator({ db, provider: migrationProvider });
    const to004 = await migrator.migrateTo("2026-11-29-004-retry-schedule");
    assert.equal(to004.error, undefined);
    assert.deepEqual(to004.results?.map((r) => r.migrationName), [
      "2026-11-28-001-foundation",
      "2026-11-28-002-delivery",
      "2026-11-29-003-signature-scheme",
      "2026-11-29-004-retry-schedule",
    ]);

    const now = Date.now();
    const old = now - 3 * DAY;
    const mint = (kind: "evt" | "dlv" | "att", at: number) => encodeId(kind, at, randomBytes(10));
    const webhookId = mint("att", now).replace("att_", "wh_");
    const oldKeyed = mint("evt", old);
    const oldPlain = mint("evt", old + 1);
    const newEvent = mint("evt", now);
    const oldDone = mint("dlv", old);
    const oldPending = mint("dlv", old + 1);
    const newDelivery = mint("dlv", now);
    const attempts = [
      { id: mint("att", old), delivery: oldDone, code: 200 },
      { id: mint("att", old + 5), delivery: oldPending, code: 500 },
      { id: mint("att", now - 1000), delivery: oldPending, code: 500 },
      { id: mint("att", now), delivery: newDelivery, code: 200 },
    ];
    const iso = (ms: number) => new Date(ms).toISOString();
    await client.query("insert into tenants (id, name) values ('ten_old', 'old-tenant')");
    await client.query(
      `insert into webhooks (id, tenant_id, url, event_types, status, signing_secrets, last_seq, shard, signature_scheme, retry_schedule)
       values ($1, 'ten_old', 'https://93.184.216.34/hook', '{order.created}', 'active', '[{"secret":"enc:v1:x","expires_at":null}]', 3, 5, 'v1', '{1000,2000}')`,
      [webhookId],
    );
    for (const [id, key, at] of [[oldKeyed, "key-old", old], [oldPlain, null, old + 1], [newEvent, "key-new", now]] as const) {
      await client.query(
        `insert into events (id, tenant_id, event_type, payload, idempotency_key, ordering_key, delivery_count, created_at)
         values ($1, 'ten_old', 'order.created', $2, $3, null, 1, $4)`,
        [id, JSON.stringify({ id }), key, iso(at)],
      );
    }
    const deliveries = [
      { id: oldDone, event: oldKeyed, seq: 1, status: "succeeded", attempts: 1, at: old },
      { id: oldPending, event: oldPlain, seq: 2, status: "pending", attempts: 2, at: old + 1 },
      { id: newDelivery, event: newEvent, seq: 3, status: "succeeded", attempts: 1, at: now },
    ];
    for (const d of deliveries) {
      await client.query(
        `insert into deliveries (id, tenant_id, webhook_id, event_id, seq, shard, status, attempts, next_attempt_at, expires_at, created_at)
         values ($1, 'ten_old', $2, $3, $4, 5, $5, $6, $7, $8, $7)`,
        [d.id, webhookId, d.event, d.seq, d.status, d.attempts, iso(d.at), iso(d.at + 30 * DAY)],
      );
    }
    for (const a of attempts) {
      await client.query(
        `insert into delivery_attempts (id, delivery_id, attempted_at, duration_ms, response_code) values ($1, $2, $3, 7, $4)`,
        [a.id, a.delivery, iso(now), a.code],
      );
    }

    const applied = await migrate(db);
    assert.deepEqual(applied, ["2026-11-29-005-daily-partitions", "2026-11-29-006-endpoint-health-and-replays", "2026-11-29-007-payload-lz4", "2026-12-04-008-deployment-settings", "2026-12-05-009-webhook-requeues"]);

    // Every row is still there and readable through the repositories.
    assert.equal(await countRows(db, "events"), 3);
    assert.equal(await countRows(db, "deliveries"), 3);
    assert.equal(await countRows(db, "delivery_attempts"), 4);
    for (const id of [oldKeyed, oldPlain, newEvent]) {
      const event = await getEvent(db, "ten_old", id);
      assert.equal(event?.id, id);
      assert.deepEqual(JSON.parse(event!.payload), { id });
    }
    for (const d of deliveries) {
      const row = await getDelivery(db, "ten_old", d.id);
      assert.equal(row?.status, d.status, d.id);
      assert.equal(row?.attempts, d.attempts);
      assert.equal(row?.event_id, d.event);
      assert.equal(row?.replay_id, null);
    }
    assert.deepEqual((await listAttempts(db, oldPending)).map((a) => a.id), [attempts[1]!.id, attempts[2]!.id]);
    const lane = await loadPendingForLane(db, webhookId, 0, 10);
    assert.deepEqual(lane.jobs.map((j) => [j.deliveryId, j.seq, j.attempts]), [[oldPending, 2, 2]]);
    assert.equal(lane.lastSeq, 3);
    const webhook = await getWebhook(db, "ten_old", webhookId);
    assert.equal(webhook?.circuit_state, "closed");
    assert.deepEqual(webhook?.retry_schedule, [1000, 2000]);

    // Rows minted three days ago sit in that day's partition; today's in today's; none in a default partition.
    const oldDay = dayOf(old);
    const today = dayOf(now);
    for (const id of [oldKeyed, oldPlain]) assert.equal(await partitionOf(db, "events", "id", id), part("events", oldDay));
    assert.equal(await partitionOf(db, "events", "id", newEvent), part("events", today));
    for (const id of [oldDone, oldPending]) assert.equal(await partitionOf(db, "deliveries", "id", id), part("deliveries", oldDay));
    assert.equal(await partitionOf(db, "deliveries", "id", newDelivery), part("deliveries", today));
    const { rows: attemptParts } = await sql<{ id: string; part: string }>`
      select id, tableoid::regclass::text as part from delivery_attempts order by id`.execute(db);
    assert.deepEqual(
      attemptParts,
      [...attempts].sort((a, b) => (a.id < b.id ? -1 : 1)).map((a) => ({ id: a.id, part: part("delivery_attempts", a.delivery === newDelivery ? today : oldDay) })),
      "attempts follow their delivery's day, whenever they were made",
    );
    for (const table of TABLES) {
      assert.equal(await countRows(db, `${table}_default`), 0, `${table}_default is empty`);
      const parts = await listPartitions(db, table);
      for (const name of dayParts(table, oldDay, today + 3 * DAY)) assert.ok(parts.includes(name), `${table}: ${name} exists`);
    }

    // Idempotency keys moved to their own table and still find their events.
    const { rows: keys } = await client.query("select tenant_id, key, event_id from idempotency_keys order by key");
    assert.deepEqual(keys, [
      { tenant_id: "ten_old", key: "key-new", event_id: newEvent },
      { tenant_id: "ten_old", key: "key-old", event_id: oldKeyed },
    ]);
    assert.deepEqual((await findEventsByIdempotencyKeys(db, "ten_old", ["key-old", "key-new"])).map((e) => e.id).sort(), [oldKeyed, newEvent].sort());
    // The same key is refused whatever day it comes back on.
    await assert.rejects(
      insertEvents(db, [{ id: newId("evt"), tenant_id: "ten_old", event_type: "order.created", payload: "{}", idempotency_key: "key-old", ordering_key: null, delivery_count: 0, created_at: new Date() }]),
      (err: { code?: string }) => err.code === "23505",
    );
  });

  test("housekeeping with a moved clock: nothing goes before retention ends, then today's partitions, rows, pending deliveries and keys go", async () => {
    const { store, url, client } = await pgStore("ret_housekeeping");
    const ttl = HOUR;
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    const { app, url: apiUrl } = await startTestApp({ DATABASE_URL: url, WEBHOOKD_EVENT_TTL: "1h", WEBHOOKD_RETRY_SCHEDULE: "30m" });
    cleanups.push(() => app.stop());
    const db = store.db;
    const rest = restClient(apiUrl, TEST_ADMIN_KEY);
    await checkFreshPartitions(db);

    const down = await rest("POST", "/webhooks", { url: `http://127.0.0.1:${await freePort()}/down`, event_types: ["order.created"] });
    assert.equal(down.status, 201, JSON.stringify(down.body));
    const up = await rest("POST", "/webhooks", { url: receiver.url("/up"), event_types: ["ping.sent"] });
    assert.equal(up.status, 201, JSON.stringify(up.body));
    const publish = async (body: Record<string, unknown>) => {
      const res = await rest("POST", "/events", { payload: { at: Date.now() }, ...body });
      assert.ok(res.status === 200 || res.status === 201, JSON.stringify(res.body));
      return res.body as { event_id: string; duplicate: boolean };
    };
    const e1 = await publish({ event_type: "order.created", idempotency_key: "order-1" });
    const e2 = await publish({ event_type: "order.created" });
    const e3 = await publish({ event_type: "ping.sent" });
    assert.equal(e1.duplicate, false);

    // The unreachable endpoint's head has failed once and waits for its retry; the other one is delivered.
    const rows = await eventually(
      async () => (await client.query("select id, event_id, status, attempts, next_attempt_at from deliveries order by id")).rows,
      (rs) => rs.length === 3 && rs.some((r) => r.event_id === e1.event_id && r.attempts === 1) && rs.some((r) => r.event_id === e3.event_id && r.status === "succeeded"),
      "the first attempts",
    );
    const byEvent = new Map(rows.map((r) => [r.event_id as string, r as { id: string; status: string; attempts: number; next_attempt_at: Date }]));
    const d1 = byEvent.get(e1.event_id)!;
    const d2 = byEvent.get(e2.event_id)!;
    const d3 = byEvent.get(e3.event_id)!;
    assert.equal(d1.status, "pending");
    assert.ok(d1.next_attempt_at.getTime() > Date.now() + 10 * 60_000, "the retry is scheduled half an hour out");
    assert.deepEqual([d2.status, d2.attempts], ["pending", 0], "the second waits behind the head");
    assert.equal(receiver.forPath("/up").length, 1);
    assert.equal((await publish({ event_type: "order.created", idempotency_key: "order-1" })).event_id, e1.event_id, "the key is known");

    const now = Date.now();
    const today = dayOf(idTimestamp(e1.event_id)!.getTime());
    const ids = [d1.id, d2.id, d3.id];
    for (const id of ids) assert.equal(await partitionOf(db, "deliveries", "id", id), part("deliveries", today));
    assert.equal(await partitionOf(db, "delivery_attempts", "delivery_id", d1.id), part("delivery_attempts", today));
    assert.equal(await partitionOf(db, "events", "id", e1.event_id), part("events", today));
    const partsBefore = await allPartitions(db);
    const rowsBefore = { events: await countRows(db, "events"), deliveries: await countRows(db, "deliveries"), attempts: await countRows(db, "delivery_attempts") };
    assert.deepEqual(rowsBefore, { events: 3, deliveries: 3, attempts: 2 });

    // A minute on: nothing to do.
    assert.deepEqual(await runHousekeeping(db, ttl, now + 60_000), { partitionsFailed: [], expired: 0, keysForgotten: 0, partitionsDropped: [] });
    assert.deepEqual(await statuses(db, ids), { [d1.id]: "pending", [d2.id]: "pending", [d3.id]: "succeeded" });

    // Past the TTL but well within retention: the overdue deliveries expire and the key is forgotten; nothing is dropped.
    const pastTtlClock = now + ttl + 60_000;
    const pastTtl = await runHousekeeping(db, ttl, pastTtlClock);
    assert.deepEqual(pastTtl, { partitionsFailed: [], expired: 2, keysForgotten: 1, partitionsDropped: [] });
    assert.deepEqual(await statuses(db, ids), { [d1.id]: "expired", [d2.id]: "expired", [d3.id]: "succeeded" });
    // Nothing dropped. A run in the last hour of a UTC day moves the clock past midnight, and then the
    // days ahead of the moved clock are made too; at any other hour nothing is added.
    for (const table of TABLES) {
      const expected = [...new Set([...partsBefore[table]!, ...dayParts(table, dayOf(pastTtlClock), dayOf(pastTtlClock) + 3 * DAY)])].sort();
      assert.deepEqual(await listPartitions(db, table), expected, `${table}: no partition dropped, none added but the moved clock's days ahead`);
    }
    assert.deepEqual(
      { events: await countRows(db, "events"), deliveries: await countRows(db, "deliveries"), attempts: await countRows(db, "delivery_attempts") },
      rowsBefore,
      "every row kept",
    );
    const expiredRow = await rest("GET", `/deliveries/${d1.id}`);
    assert.equal(expiredRow.body.status, "expired", JSON.stringify(expiredRow.body));

    // A new keyed event, whose delivery is put back with a TTL that outlives its partition (as a retry by hand can).
    const e4 = await publish({ event_type: "order.created", idempotency_key: "order-4" });
    const d4 = (await client.query("select id from deliveries where event_id = $1", [e4.event_id])).rows[0].id as string;
    await client.query("update deliveries set expires_at = now() + interval '30 days' where id = $1", [d4]);

    // A millisecond before today's retention ends, nothing goes.
    const end = today + DAY + ttl + DAY;
    const justBefore = await runHousekeeping(db, ttl, end - 1);
    assert.deepEqual(justBefore.partitionsDropped, []);
    assert.equal(justBefore.expired, 0, "the long-lived delivery's partition is not about to go yet");
    assert.deepEqual(await statuses(db, [d4]), { [d4]: "pending" });
    for (const table of TABLES) assert.ok((await listPartitions(db, table)).includes(part(table, today)));

    // When it ends: today's partitions of all three tables go, after their pending deliveries were ended.
    const atEnd = await runHousekeeping(db, ttl, end);
    assert.deepEqual([...atEnd.partitionsDropped].sort(), TABLES.map((t) => part(t, today)).sort());
    assert.equal(atEnd.expired, 1, "the still-pending delivery was expired before its partition went");
    assert.deepEqual(atEnd.partitionsFailed, []);

    // Three days and a TTL on: tomorrow's partitions go too; the coming days' exist.
    const later = now + ttl + 3 * DAY;
    const last = await runHousekeeping(db, ttl, later);
    assert.deepEqual([...last.partitionsDropped].sort(), TABLES.map((t) => part(t, today + DAY)).sort());
    for (const table of TABLES) {
      const parts = await listPartitions(db, table);
      assert.deepEqual(parts, [...dayParts(table, today + 2 * DAY, dayOf(later) + 3 * DAY), `${table}_default`].sort(), `${table} partitions`);
    }

    // The rows are gone, nothing is left pending anywhere (default partitions included), the keys are forgotten.
    for (const table of ["events", "deliveries", "delivery_attempts", "idempotency_keys"]) assert.equal(await countRows(db, table), 0, `${table} is empty`);
    assert.equal((await rest("GET", `/events/${e1.event_id}`)).status, 404);
    assert.equal((await rest("GET", `/deliveries/${d1.id}`)).status, 404);

    // The same key now makes a new event (in the default partition: today's is gone).
    const again = await publish({ event_type: "order.created", idempotency_key: "order-1" });
    assert.equal(again.duplicate, false);
    assert.notEqual(again.event_id, e1.event_id);
    assert.equal(await partitionOf(db, "events", "id", again.event_id), "events_default");
    assert.equal((await publish({ event_type: "order.created", idempotency_key: "order-1" })).event_id, again.event_id, "and the key is claimed again");
  });

  test("a delivery past its TTL ends expired end to end, and the webhook's next delivery goes through", async () => {
    const { url, client } = await pgStore("ret_ttl");
    let healthy = false;
    const receiver = await startReceiver(() => (healthy ? undefined : { status: 503 }));
    cleanups.push(() => receiver.close());
    const { app, url: apiUrl } = await startTestApp({ DATABASE_URL: url, WEBHOOKD_EVENT_TTL: "2s", WEBHOOKD_RETRY_SCHEDULE: "1s,1s,1s,1s,1s,1s" });
    cleanups.push(() => app.stop());
    const rest = restClient(apiUrl, TEST_ADMIN_KEY);
    const hook = await rest("POST", "/webhooks", { url: receiver.url("/ttl"), event_types: ["ttl.test"] });
    assert.equal(hook.status, 201, JSON.stringify(hook.body));

    const started = Date.now();
    const first = await rest("POST", "/events", { event_type: "ttl.test", payload: { n: 1 } });
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const expired = await eventually(
      async () => (await client.query("select id, status, attempts, expires_at, last_response_code from deliveries where event_id = $1", [first.body.event_id])).rows[0],
      (row) => row?.status !== "pending",
      "the delivery to end",
      8_000,
    );
    const tookMs = Date.now() - started;
    console.log(`# expired ${tookMs} ms after publishing, after ${expired.attempts} attempts`);
    assert.equal(expired.status, "expired", JSON.stringify(expired));
    assert.ok(tookMs < 5_000, `expired within a few seconds (${tookMs} ms)`);
    assert.ok(expired.attempts >= 1 && expired.attempts <= 3, `attempts ${expired.attempts}`);
    assert.equal(expired.last_response_code, 503);
    const { rows: attempts } = await client.query("select attempted_at, response_code from delivery_attempts where delivery_id = $1", [expired.id]);
    assert.equal(attempts.length, expired.attempts);
    for (const a of attempts) assert.ok(a.attempted_at.getTime() <= expired.expires_at.getTime(), "no attempt after the TTL");
    const sent = receiver.forPath("/ttl").length;
    assert.equal(sent, expired.attempts);
    await sleep(1_500);
    assert.equal(receiver.forPath("/ttl").length, sent, "nothing is sent after it expired");

    // The endpoint heals: the webhook's next event is delivered, and the expired one is not sent again.
    healthy = true;
    const second = await rest("POST", "/events", { event_type: "ttl.test", payload: { n: 2 } });
    assert.equal(second.status, 201);
    await receiver.waitFor(() => receiver.forPath("/ttl").some((r) => r.headers["webhook-id"] === second.body.event_id), 10_000, "the next delivery");
    const done = await eventually(
      async () => (await client.query("select status, attempts from deliveries where event_id = $1", [second.body.event_id])).rows[0],
      (row) => row?.status === "succeeded",
      "the next delivery to succeed",
      5_000,
    );
    assert.equal(done.attempts, 1);
    assert.deepEqual(
      receiver.forPath("/ttl").map((r) => r.headers["webhook-id"]),
      [...Array(sent).fill(first.body.event_id), second.body.event_id],
    );
    assert.equal((await client.query("select status from deliveries where event_id = $1", [first.body.event_id])).rows[0].status, "expired");

    // A retry by hand within its retention is taken; one whose records are about to go is refused, naming when.
    await client.query("update deliveries set created_at = now() - interval '3 days' where id = $1", [expired.id]);
    const refused = await rest("POST", `/deliveries/${expired.id}/retry`);
    assert.equal(refused.status, 409, JSON.stringify(refused.body));
    assert.match(refused.body.error.message, /past its retention: its records are removed at \d{4}-/);
    assert.equal((await client.query("select status from deliveries where id = $1", [expired.id])).rows[0].status, "expired", "nothing changed");
  });
});

describe("retention on PGlite", () => {
  let store: Store;
  let dataDir: string;

  before(async () => {
    dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-retention-"));
    store = await openStore({ databaseUrl: undefined, dataDir });
    await migrate(store.db);
  });

  after(async () => {
    await store?.close();
    if (dataDir) await fs.rm(dataDir, { recursive: true, force: true });
  });

  test("migrate makes today's and the next three days' partitions, and a default one, for each table", async () => {
    await checkFreshPartitions(store.db);
  });

  test("housekeeping drops today's partitions only once their retention ends", async () => {
    await checkHousekeepingDrop(store.db);
  });
});

describe("retention with rows written through the repositories, on Postgres", () => {
  test("housekeeping drops today's partitions only once their retention ends", async () => {
    const { store } = await pgStore("ret_direct");
    await migrate(store.db);
    await checkHousekeepingDrop(store.db);
  });
});
