// A lane's read of the record promises that every pending delivery up to the lastSeq it returns is among
// its jobs. With nothing pending after its position, lastSeq comes from a second statement; an ingest
// that commits between the two must not be counted as held and left out (the next seq then went first).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { sql, type KyselyPlugin } from "kysely";
import { newId } from "../../src/core/ids.js";
import { loadPendingForLane, requeueDelivery } from "../../src/store/deliveries.js";
import { countRequeue } from "../../src/store/webhooks.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import type { Db } from "../../src/store/db.js";
import { suiteStore } from "../support/store.js";
import { insertDeliveries, insertEvents, insertTestWebhook } from "../support/rows.js";

const suite = suiteStore("postgres", "lane_load", { poolSize: 4 });

test("a delivery committed between the read of the rows and the read of last_seq is among the jobs", async () => {
  const db = suite().db;
  const webhookId = "wh_lane_load";
  await insertTestWebhook(db, { id: webhookId, shard: 0 });
  // An ingest as the ingest statement makes it: the seq reserved and the delivery inserted together.
  const ingest = () =>
    db.transaction().execute(async (trx) => {
      const { last_seq } = await trx.updateTable("webhooks").set({ last_seq: sql`last_seq + 1` }).where("id", "=", webhookId).returning("last_seq").executeTakeFirstOrThrow();
      const now = new Date();
      const eventId = newId("evt");
      await insertEvents(trx, [{ id: eventId, tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: "{}", idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: now }]);
      await insertDeliveries(trx, [{
        id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: eventId, seq: Number(last_seq), shard: 0,
        ordering_key: "", status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + 3_600_000), created_at: now,
      }]);
    });
  // The ingest lands right after the first read answers with no rows.
  let armed = true;
  const between: KyselyPlugin = {
    transformQuery: (args) => args.node,
    async transformResult(args) {
      if (armed && args.result.rows.length === 0) {
        armed = false;
        await ingest();
      }
      return args.result;
    },
  };
  const load = await loadPendingForLane(db.withPlugin(between), webhookId, 0, 256);
  assert.equal(armed, false, "the ingest ran between the statements");
  assert.equal(load.lastSeq, 1);
  assert.deepEqual(load.jobs.map((j) => j.seq), [1], "every pending seq up to lastSeq is among the jobs");
});

// A lane that parked ordering keys reads past their deliveries: the statement leaves them out, whatever
// characters a key holds (they travel as one array parameter), on the generic plan too.
for (const kind of ["postgres", "pglite"] as const) {
  describe(`a read that leaves ordering keys out (${kind})`, () => {
    const store = suiteStore(kind, "lane_load_keys");
    test("returns the other keys' deliveries in seq order, and the webhook's last seq", async () => {
      const db = store().db;
      const webhookId = "wh_leave_out";
      await insertTestWebhook(db, { id: webhookId, shard: 0 });
      const odd = 'a,"b"{c}\\ d';
      const keys = ["A", "B", "A", "", odd, "A", "B"];
      await insertPending(db, webhookId, keys);
      const seqs = async (leaveOut: string[]) => (await loadPendingForLane(db, webhookId, 0, 256, leaveOut)).jobs.map((j) => j.seq);
      // Past five runs Postgres may settle on a generic plan for the prepared statement.
      for (let run = 0; run < 7; run++) {
        assert.deepEqual(await seqs(["A"]), [2, 4, 5, 7]);
        assert.deepEqual(await seqs(["A", "B"]), [4, 5]);
        assert.deepEqual(await seqs([odd, ""]), [1, 2, 3, 6, 7]);
        assert.deepEqual(await seqs([]), [1, 2, 3, 4, 5, 6, 7]);
      }
      const load = await loadPendingForLane(db, webhookId, 4, 1, ["B"]);
      assert.deepEqual({ seqs: load.jobs.map((j) => j.seq), lastSeq: load.lastSeq }, { seqs: [5], lastSeq: 7 });
    });
  });
}

// A retry by hand or a replay bumps the webhook's `requeues`; the next ingest and a lane's read hand it on,
// so that a lane reads from the start before it sends an event published after deliveries were put back.
for (const kind of ["postgres", "pglite"] as const) {
  describe(`a webhook's count of deliveries put back (${kind})`, () => {
    const store = suiteStore(kind, "lane_load_requeues");
    test("a retry by hand and a replay count; a refused retry does not; a read reports the count with rows and without", async () => {
      const db = store().db;
      const webhookId = "wh_requeues";
      await insertTestWebhook(db, { id: webhookId, shard: 0 });
      await insertPending(db, webhookId, ["", ""]);
      const [first, second] = (await loadPendingForLane(db, webhookId, 0, 256)).jobs;
      const count = async () => (await db.selectFrom("webhooks").select("requeues").where("id", "=", webhookId).executeTakeFirstOrThrow()).requeues;
      assert.equal(await count(), 0);
      // Pending: not put back, nothing counted.
      assert.equal(await requeueDelivery(db, first!.deliveryId, 3_600_000), false);
      assert.equal(await count(), 0);
      await db.updateTable("deliveries").set({ status: "failed" }).where("id", "=", first!.deliveryId).execute();
      assert.equal(await requeueDelivery(db, first!.deliveryId, 3_600_000), true);
      assert.equal(await count(), 1);
      assert.deepEqual(await loadPendingForLane(db, webhookId, 0, 256).then((l) => [l.jobs.length, l.requeues]), [2, 1]);
      assert.equal(await countRequeue(db, DEFAULT_TENANT_ID, webhookId), true);
      await db.updateTable("deliveries").set({ status: "succeeded" }).where("webhook_id", "=", webhookId).execute();
      // Nothing pending: the count comes with the last seq.
      assert.deepEqual(await loadPendingForLane(db, webhookId, 0, 256).then((l) => [l.jobs.length, l.lastSeq, l.requeues]), [0, 2, 2]);
      assert.equal(await requeueDelivery(db, second!.deliveryId, 3_600_000), false, "succeeded: not put back");
      await db.updateTable("webhooks").set({ status: "deleted" }).where("id", "=", webhookId).execute();
      assert.equal(await countRequeue(db, DEFAULT_TENANT_ID, webhookId), false, "a deleted webhook is not counted");
      assert.equal(await count(), 2);
    });
  });
}

async function insertPending(db: Db, webhookId: string, keys: string[]): Promise<void> {
  const now = new Date();
  const events = keys.map(() => newId("evt"));
  await insertEvents(db, events.map((id) => ({ id, tenant_id: DEFAULT_TENANT_ID, event_type: "order.created", payload: "{}", idempotency_key: null, ordering_key: null, delivery_count: 1, created_at: now })));
  await insertDeliveries(db, keys.map((key, i) => ({
    id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: events[i]!, seq: i + 1, shard: 0,
    ordering_key: key, status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + 3_600_000), created_at: now,
  })));
  await db.updateTable("webhooks").set({ last_seq: keys.length }).where("id", "=", webhookId).execute();
}
