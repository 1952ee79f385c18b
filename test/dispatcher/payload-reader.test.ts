// The dispatcher reads payloads just before attempts start: one query for all the reads asked for in a
// turn, a read already under way joined rather than repeated, against a real Postgres.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import type { KyselyPlugin } from "kysely";
import { newId } from "../../src/core/ids.js";
import { PayloadReader } from "../../src/dispatcher/payload-reader.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import type { Event } from "../../src/store/schema.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import { createTestDatabase } from "../support/postgres.js";
import { insertEvents } from "../support/rows.js";

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;
const events: Event[] = [];

before(async () => {
  database = await createTestDatabase("payload_reader");
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir() });
  await migrate(store.db);
  await ensureDefaultTenant(store.db);
  for (let i = 0; i < 700; i++) {
    events.push({
      id: newId("evt"),
      tenant_id: DEFAULT_TENANT_ID,
      event_type: "order.created",
      payload: JSON.stringify({ i, note: "naïve café — 東京 🚀", pad: "x".repeat(i % 3 === 0 ? 6_000 : 10) }),
      idempotency_key: null,
      ordering_key: null,
      delivery_count: 1,
      created_at: new Date(),
    });
  }
  await insertEvents(store.db, events);
});

after(async () => {
  await store?.close();
  await database?.drop();
});

/** The store's Db, counting the statements it runs. */
function counted(): { db: Store["db"]; queries: () => number } {
  let queries = 0;
  const plugin: KyselyPlugin = {
    transformQuery: (args) => {
      queries++;
      return args.node;
    },
    transformResult: async (args) => args.result,
  };
  return { db: store.db.withPlugin(plugin), queries: () => queries };
}

test("reads asked for in one turn go out together, 500 ids a query, and each comes back as written", async () => {
  const { db, queries } = counted();
  const reader = new PayloadReader(db);
  const wanted = [...events, ...events.slice(0, 50)];
  const read = await Promise.all(wanted.map((e) => reader.read(e.id)));
  assert.deepEqual(read, wanted.map((e) => e.payload));
  assert.equal(queries(), 2, "700 distinct ids: two queries");
});

test("a read of a payload already being read joins it; a later turn reads again", async () => {
  const { db, queries } = counted();
  const reader = new PayloadReader(db);
  const first = reader.read(events[0]!.id);
  await new Promise((resolve) => setImmediate(resolve)); // the query is on its way
  const joined = reader.read(events[0]!.id);
  assert.equal(await first, events[0]!.payload);
  assert.equal(await joined, events[0]!.payload);
  assert.equal(queries(), 1);
  assert.equal(await reader.read(events[0]!.id), events[0]!.payload);
  assert.equal(queries(), 2);
});

test("an event Postgres does not have reads as undefined, beside ones it has", async () => {
  const reader = new PayloadReader(store.db);
  const [missing, present] = await Promise.all([reader.read(newId("evt")), reader.read(events[1]!.id)]);
  assert.equal(missing, undefined);
  assert.equal(present, events[1]!.payload);
});

test("a failed query fails every read it carried, and the next read is tried afresh", async () => {
  let fail = true;
  const plugin: KyselyPlugin = {
    transformQuery: (args) => {
      if (fail) throw new Error("connection lost");
      return args.node;
    },
    transformResult: async (args) => args.result,
  };
  const reader = new PayloadReader(store.db.withPlugin(plugin));
  const reads = [reader.read(events[2]!.id), reader.read(events[3]!.id)];
  for (const r of reads) await assert.rejects(r, /connection lost/);
  fail = false;
  assert.equal(await reader.read(events[2]!.id), events[2]!.payload);
});
