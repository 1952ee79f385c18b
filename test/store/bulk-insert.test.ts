// The store tests' row fixtures (test/support/rows.ts) write events and deliveries by hand, not through the
// query builder: every column must arrive as given, timestamps to the millisecond, on Postgres and on the
// embedded PGlite, or the tests built on them test something else.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { encodeId } from "../../src/core/ids.js";
import type { Store } from "../../src/store/db.js";
import { type NewDelivery } from "../../src/store/deliveries.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import type { Event } from "../../src/store/schema.js";
import { suiteStore } from "../support/store.js";
import { insertDeliveries, insertEvents } from "../support/rows.js";

function events(at: number): Event[] {
  const row = (i: number, payload: string, keys: { idempotency_key: string | null; ordering_key: string | null }): Event => ({
    id: encodeId("evt", at + i, randomBytes(10)),
    tenant_id: DEFAULT_TENANT_ID,
    event_type: `order.created.v${i}`,
    payload,
    ...keys,
    delivery_count: i,
    created_at: new Date(at + i * 1001),
  });
  return [
    row(0, JSON.stringify({ plain: "text" }), { idempotency_key: null, ordering_key: null }),
    // Quotes, backslashes, a newline escape and text beyond ASCII go through untouched.
    row(1, JSON.stringify({ quote: 'say "hi"', path: "C:\\tmp", line: "a\nb", text: "größe ✓ 𝄞" }), { idempotency_key: `key-${at}`, ordering_key: "customer-7" }),
    row(2, JSON.stringify({ n: 1.5e300, list: [1, null, true] }), { idempotency_key: null, ordering_key: "customer-8" }),
  ];
}

function deliveriesOf(rows: Event[], webhookId: string): NewDelivery[] {
  return rows.map((e, i) => ({
    id: encodeId("dlv", e.created_at.getTime(), randomBytes(10)),
    tenant_id: DEFAULT_TENANT_ID,
    webhook_id: webhookId,
    event_id: e.id,
    seq: 41 + i,
    shard: 3,
    ordering_key: e.ordering_key ?? "",
    status: "pending",
    next_attempt_at: new Date(e.created_at.getTime() + 5_123),
    expires_at: new Date(e.created_at.getTime() + 30 * 86_400_000),
    created_at: e.created_at,
  }));
}

function checks(open: () => Store) {
  test("events come back exactly as inserted, in batches of one and of several", async () => {
    const { db } = open();
    const at = Date.now();
    const rows = events(at);
    await insertEvents(db, rows.slice(0, 1));
    await insertEvents(db, rows.slice(1));
    const back = await db.selectFrom("events").selectAll().where("id", "in", rows.map((r) => r.id)).orderBy("id").execute();
    assert.deepEqual(back, rows);
    const keys = await db.selectFrom("idempotency_keys").select(["key", "event_id"]).where("event_id", "in", rows.map((r) => r.id)).execute();
    assert.deepEqual(keys, [{ key: `key-${at}`, event_id: rows[1]!.id }]);
  });

  test("deliveries come back exactly as inserted, with the defaults of the columns not given", async () => {
    const { db } = open();
    const rows = events(Date.now() + 10_000);
    await insertEvents(db, rows);
    const deliveries = deliveriesOf(rows, "wh_bulk_insert");
    await insertDeliveries(db, deliveries);
    const back = await db.selectFrom("deliveries").selectAll().where("webhook_id", "=", "wh_bulk_insert").orderBy("seq").execute();
    assert.deepEqual(
      back,
      deliveries.map((d) => ({ ...d, attempts: 0, last_response_code: null, last_error: null, delivered_at: null, replay_id: null })),
    );
  });

  test("a refused row fails the whole insert and, in a transaction, leaves nothing behind", async () => {
    const { db } = open();
    const rows = events(Date.now() + 20_000);
    rows[2]!.payload = "bad\u0000text";
    await assert.rejects(db.transaction().execute((trx) => insertEvents(trx, rows)));
    const back = await db.selectFrom("events").select("id").where("id", "in", rows.map((r) => r.id)).execute();
    assert.deepEqual(back, []);
    const keys = await db.selectFrom("idempotency_keys").select("key").where("event_id", "in", rows.map((r) => r.id)).execute();
    assert.deepEqual(keys, []);
  });
}

describe("bulk inserts on Postgres", () => {
  checks(suiteStore("postgres", "bulk_insert"));
});

describe("bulk inserts on PGlite", () => {
  checks(suiteStore("pglite", "bulk"));
});
