// A dispatcher whose clock runs ahead of Postgres': a delivery past its TTL by the dispatcher's clock but
// not yet by the database's is not expired, by the lane or by housekeeping (Postgres decides), and its lane must wait for the clocks to
// agree, not ask again at once (it spun through thousands of statements a second). Real Postgres, the
// real Dispatcher with the embedded feed; the sender only counts (nothing must be sent).
import { test } from "node:test";
import assert from "node:assert/strict";
import { sql, type KyselyPlugin } from "kysely";
import { newId } from "../../src/core/ids.js";
import { createEmbeddedFeed } from "../../src/queue/embedded.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { insertDeliveries, insertEvents, insertTestWebhook } from "../support/rows.js";
import { countingSender, testDispatcher } from "../support/dispatcher.js";
import { suiteStore } from "../support/store.js";
import { eventually, sleep } from "../support/wait.js";

const suite = suiteStore("postgres", "expiry_skew", { poolSize: 8 });
const AHEAD_MS = 3_000;

test("a delivery expired by the dispatcher's clock, not yet by Postgres', waits for Postgres without spinning, then expires unsent", async () => {
  const db = suite().db;
  const webhookId = "wh_skew";
  await insertTestWebhook(db, { id: webhookId, shard: 0 });
  const dbNow = (await sql<{ now: Date }>`select now() as now`.execute(db)).rows[0]!.now.getTime();
  const created = new Date(dbNow);
  const eventId = newId("evt");
  await insertEvents(db, [{ id: eventId, tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: "{}", idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: created }]);
  const deliveryId = newId("dlv");
  await insertDeliveries(db, [{
    id: deliveryId, tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: eventId, seq: 1, shard: 0, ordering_key: "",
    // Expired 2.5 s after now by the database's clock: already past it by the dispatcher's.
    status: "pending", next_attempt_at: created, expires_at: new Date(dbNow + 2_500), created_at: created,
  }]);
  await db.updateTable("webhooks").set({ last_seq: 1 }).where("id", "=", webhookId).execute();

  let statements = 0;
  const counting: KyselyPlugin = { transformQuery: (args) => args.node, transformResult: async (args) => (statements++, args.result) };
  const sender = countingSender();
  const realNow = Date.now;
  Date.now = () => realNow() + AHEAD_MS;
  // Housekeeping runs at start, on Postgres' clock: on the dispatcher's it expired the delivery at once.
  const dispatcher = testDispatcher({ db: db.withPlugin(counting), feed: createEmbeddedFeed(), sender, sweepGraceMs: 0 });
  try {
    await dispatcher.start();
    const started = statements;
    await sleep(1_000);
    const inASecond = statements - started;
    assert.ok(inASecond < 60, `${inASecond} statements in a second for one delivery waiting for Postgres to agree it expired`);
    const early = await db.selectFrom("deliveries").select("status").where("id", "=", deliveryId).executeTakeFirstOrThrow();
    assert.equal(early.status, "pending", "expired before its TTL by Postgres' clock");
    const row = await eventually(
      () => db.selectFrom("deliveries").select(["status", "attempts"]).where("id", "=", deliveryId).executeTakeFirstOrThrow(),
      (r) => r.status !== "pending",
      "the delivery to expire once Postgres' clock passes its TTL",
      10_000,
    );
    assert.deepEqual(row, { status: "expired", attempts: 0 });
    assert.equal(sender.sends, 0, "never sent past its TTL");
  } finally {
    Date.now = realNow;
    await dispatcher.stop();
  }
});
