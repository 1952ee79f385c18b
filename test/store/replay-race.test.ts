// A replay of a webhook's failed deliveries racing a change of one of them (a retry by hand that has
// just succeeded, a lane's record): the replay puts back only what is still final in its scope when it
// gets the row, never a delivery that turned pending or succeeded meanwhile (an extra send, and a
// succeeded delivery shown pending again).
import { test } from "node:test";
import assert from "node:assert/strict";
import { sql } from "kysely";
import { newId } from "../../src/core/ids.js";
import { startReplay } from "../../src/store/replays.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { suiteStore } from "../support/store.js";
import { insertDeliveries, insertTestWebhook } from "../support/rows.js";
import { eventually } from "../support/wait.js";

const suite = suiteStore("postgres", "replay_race", { poolSize: 4 });
const HOUR = 60 * 60 * 1000;

for (const became of ["succeeded", "pending"] as const) {
  test(`a failed delivery that became ${became} while the replay waited for its row is left as it is`, async () => {
    const db = suite().db;
    const webhookId = `wh_race_${became}`;
    await insertTestWebhook(db, { id: webhookId, shard: 1 });
    const createdAt = new Date(Date.now() - 60_000);
    const ids = [newId("dlv"), newId("dlv")];
    await insertDeliveries(
      db,
      ids.map((id, i) => ({
        id, tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: newId("evt"), seq: i + 1, shard: 1, ordering_key: "",
        status: "failed", next_attempt_at: createdAt, expires_at: new Date(createdAt.getTime() + HOUR), created_at: createdAt,
      })),
    );
    let commit!: () => void;
    const committed = new Promise<void>((resolve) => (commit = resolve));
    let changed!: () => void;
    const holding = new Promise<void>((resolve) => (changed = resolve));
    // The change holds the first delivery's row, uncommitted, while the replay starts.
    const change = db.transaction().execute(async (trx) => {
      await trx.updateTable("deliveries").set({ status: became }).where("id", "=", ids[0]!).execute();
      changed();
      await committed;
    });
    await holding;
    const replay = startReplay(db, {
      id: newId("rpl"), tenantId: DEFAULT_TENANT_ID, webhookId, scope: "failed",
      since: new Date(createdAt.getTime() - 1_000), until: new Date(), ratePerSecond: 100, eventTtlMs: HOUR,
    });
    try {
      await eventually(
        async () => (await sql<{ n: number }>`select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`.execute(db)).rows[0]!.n,
        (n) => n === 1,
        "the replay to wait for the row",
        10_000,
      );
    } finally {
      // Committed whatever happens: an open transaction would hold the store's close, and the file, for good.
      commit();
      await change;
    }
    const { replay: row } = await replay;
    assert.equal(row.total, 1, "only the delivery still failed is put back");
    const statuses = await db.selectFrom("deliveries").select(["id", "status", "replay_id"]).where("webhook_id", "=", webhookId).orderBy("seq").execute();
    assert.deepEqual(
      statuses.map((d) => [d.status, d.replay_id]),
      [[became, null], ["pending", row.id]],
    );
  });
}
