// The owners' sweep query: which webhooks have work due, with the lowest seq each has pending, and what the periodic sweep leaves to the full one — the backlog that has been due
// for long, which it would otherwise read whole every period behind a dead endpoint.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { idFloor, newId } from "../../src/core/ids.js";
import { findWebhooksWithDueDeliveries, type DueWebhook, type NewDelivery } from "../../src/store/deliveries.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import { createTestDatabase } from "../support/postgres.js";
import { insertDeliveries, insertTestWebhook } from "../support/rows.js";

const MINUTE = 60_000;
let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;
const now = Date.now();
/** webhook id → its deliveries' due times, relative to now, in seq order. */
const plan = {
  wh_backlog: [-60 * MINUTE, -60 * MINUTE, -59 * MINUTE],
  wh_recent: [-10_000, -5_000],
  // Due within the horizon with room to spare: the query's "coming due" window starts at the real now,
  // which on a busy machine can be seconds past this file's `now` by the time the tests run.
  wh_retry_soon: [30_000],
  wh_retry_later: [60 * MINUTE, 61 * MINUTE],
  wh_too_young: [-500],
  wh_other_shard: [-10_000],
};

before(async () => {
  database = await createTestDatabase("sweep_query");
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 2 });
  await migrate(store.db);
  await ensureDefaultTenant(store.db);
  const rows: NewDelivery[] = [];
  for (const [webhookId, dues] of Object.entries(plan)) {
    await insertTestWebhook(store.db, { id: webhookId, shard: webhookId === "wh_other_shard" ? 9 : 1, at: new Date(now) });
    dues.forEach((offset, i) => {
      rows.push({
        id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: webhookId, event_id: newId("evt"), seq: 10 + i,
        shard: webhookId === "wh_other_shard" ? 9 : 1, ordering_key: "", status: "pending",
        next_attempt_at: new Date(now + offset), expires_at: new Date(now + 24 * 60 * MINUTE), created_at: new Date(now),
      });
    });
  }
  await insertDeliveries(store.db, rows);
  // What ingest keeps on the webhook row: the last seq given out.
  for (const [webhookId, dues] of Object.entries(plan)) {
    await store.db.updateTable("webhooks").set({ last_seq: 10 + dues.length - 1 }).where("id", "=", webhookId).execute();
  }
});

after(async () => {
  await store?.close();
  await database?.drop();
});

/** Every page of a sweep, each of at most `limit` webhooks: what it found, and how many pages it took. */
async function sweep(dueSince?: Date, limit = 100) {
  const found: DueWebhook[] = [];
  let pages = 0;
  for (let after: string | undefined = ""; after !== undefined; pages++) {
    const page = await findWebhooksWithDueDeliveries(store.db, { shards: [1, 2], dueBy: new Date(now - 2_000), horizon: new Date(now + 60_000), dueSince, after, limit });
    assert.ok(page.webhooks.length <= limit);
    found.push(...page.webhooks);
    after = page.next;
  }
  return { pages, found: Object.fromEntries(found.map((r) => [r.webhook_id, { shard: r.shard, first: r.first_seq }])) };
}

test("the full sweep finds every webhook with work due past the grace or coming due within the horizon", async () => {
  assert.deepEqual((await sweep()).found, {
    wh_backlog: { shard: 1, first: 10 },
    wh_recent: { shard: 1, first: 10 },
    wh_retry_soon: { shard: 1, first: 10 },
  });
});

test("the periodic sweep leaves work due for long to the full sweep, and still finds the rest", async () => {
  assert.deepEqual((await sweep(new Date(now - 2 * MINUTE))).found, {
    wh_recent: { shard: 1, first: 10 },
    wh_retry_soon: { shard: 1, first: 10 },
  });
});

test("both sweeps go page by page and find the same webhooks as in one page", async () => {
  const full = await sweep();
  const periodic = await sweep(new Date(now - 2 * MINUTE));
  // A full sweep's page is the webhooks walked, whatever their shard or due times: six with pending
  // work, one at a time, then an empty last page.
  assert.deepEqual(await sweep(undefined, 1), { pages: 7, found: full.found });
  assert.deepEqual(await sweep(undefined, 4), { pages: 2, found: full.found });
  // A periodic sweep's page is the webhooks found.
  assert.deepEqual(await sweep(new Date(now - 2 * MINUTE), 1), { pages: 3, found: periodic.found });
});

test("the full sweep reads about one index entry per webhook, not one per delivery of a dead endpoint's backlog", async () => {
  // 50,000 deliveries of one webhook, due for an hour.
  await insertTestWebhook(store.db, { id: "wh_dead", shard: 2, at: new Date(now) });
  const dueAt = new Date(now - 60 * MINUTE);
  await sql`
    insert into deliveries (id, tenant_id, webhook_id, event_id, seq, shard, ordering_key, status, next_attempt_at, expires_at, created_at)
    select ${idFloor("dlv", now)} || lpad(g::text, 8, '0'), ${DEFAULT_TENANT_ID}, 'wh_dead', 'evt_x', g, 2, '', 'pending', ${dueAt}, ${new Date(now + 24 * 60 * MINUTE)}, ${new Date(now)}
    from generate_series(1, 50000) g`.execute(store.db);
  await store.db.updateTable("webhooks").set({ last_seq: 50_000 }).where("id", "=", "wh_dead").execute();
  const read = await store.db.connection().execute(async (conn) => {
    const tuples = async () => {
      await sql`select pg_stat_force_next_flush()`.execute(conn);
      const { rows } = await sql<{ n: number }>`
        select coalesce(sum(idx_tup_read), 0)::int as n from pg_stat_user_indexes
        where relid in (select inhrelid from pg_inherits where inhparent = 'deliveries'::regclass)`.execute(conn);
      return rows[0]!.n;
    };
    const before = await tuples();
    const { webhooks: found } = await findWebhooksWithDueDeliveries(conn, { shards: [1, 2], dueBy: new Date(now - 2_000), horizon: new Date(now + 3_000), limit: 100 });
    assert.deepEqual(found.find((r) => r.webhook_id === "wh_dead"), { webhook_id: "wh_dead", shard: 2, first_seq: 1 });
    return (await tuples()) - before;
  });
  assert.ok(read < 1_000, `${read} index entries read for 50,000 due deliveries`);
});
