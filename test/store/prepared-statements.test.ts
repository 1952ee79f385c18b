// The lane's read of its pending deliveries is prepared once per connection: no partition key narrows
// it, so planned afresh it plans every day partition on every call (4 ms of Postgres CPU with a month of
// them, against 0.4 ms for the prepared statement's generic plan).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { newId } from "../../src/core/ids.js";
import { loadPendingForLane } from "../../src/store/deliveries.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { DAY_MS, dayStart, ensurePartitions } from "../../src/store/partitions.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import { createTestDatabase } from "../support/postgres.js";
import { insertDeliveries, insertEvents, insertTestWebhook } from "../support/rows.js";

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;
const webhookId = newId("wh");

before(async () => {
  database = await createTestDatabase("prepared");
  // One connection: the prepared statement and its counters live in the backend that ran it.
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 1 });
  const db = store.db;
  await migrate(db);
  assert.deepEqual(await ensurePartitions(db, Date.now(), dayStart(Date.now() - 30 * DAY_MS)), []);
  await ensureDefaultTenant(db);
  const now = new Date();
  await insertTestWebhook(db, { id: webhookId, shard: 3, at: now });
  const events = Array.from({ length: 20 }, (_, i) => ({
    id: newId("evt"), tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: `{"i":${i}}`, idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: now,
  }));
  await insertEvents(db, events);
  await insertDeliveries(db, events.map((e, i) => ({
    id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: e.id, seq: i + 1, shard: 3, ordering_key: "",
    status: "pending" as const, next_attempt_at: now, expires_at: new Date(now.getTime() + DAY_MS), created_at: now,
  })));
  await sql`update webhooks set last_seq = 20 where id = ${webhookId}`.execute(db);
});

after(async () => {
  await store?.close();
  await database?.drop();
});

test("a lane's read of the record is a prepared statement that settles on one generic plan, and reads the same", async () => {
  for (let call = 0; call < 12; call++) {
    const after = call % 4;
    const { jobs, lastSeq } = await loadPendingForLane(store.db, webhookId, after, 256);
    assert.equal(lastSeq, 20);
    assert.deepEqual(jobs.map((j) => j.seq), Array.from({ length: 20 - after }, (_, i) => after + i + 1));
    assert.equal(jobs[0]!.eventType, "order.created");
  }
  const { rows } = await sql<{ generic: number; custom: number }>`
    select generic_plans::int as generic, custom_plans::int as custom from pg_prepared_statements where name = 'lane_load'`.execute(store.db);
  assert.equal(rows.length, 1, "lane_load is prepared on the connection");
  assert.ok(rows[0]!.generic >= 6, `generic plans: ${rows[0]!.generic}, custom plans: ${rows[0]!.custom}`);
});
