// Event payloads are compressed with lz4 where the server has it: every events partition, those that
// existed before the upgrade and those made after it, and payloads read back unchanged whichever way they
// were written.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { Migrator, sql } from "kysely";
import { randomBytes } from "node:crypto";
import { encodeId } from "../../src/core/ids.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { loadPayloads } from "../../src/store/events.js";
import { hasLz4 } from "../../src/store/migrations/2026-11-29-007-payload-lz4.js";
import { migrationProvider } from "../../src/store/migrations/index.js";
import { DAY_MS, ensurePartitions } from "../../src/store/partitions.js";
import { DEFAULT_TENANT_ID, ensureDefaultTenant } from "../../src/store/tenants.js";
import type { Event } from "../../src/store/schema.js";
import { createTestDatabase } from "../support/postgres.js";
import { insertEvents } from "../support/rows.js";

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;

before(async () => {
  database = await createTestDatabase("payload_lz4");
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir() });
});

after(async () => {
  await store?.close();
  await database?.drop();
});

/** A 5 KB JSON payload that does not compress to nothing: lz4 and pglz both leave it over 2 KB. */
function payload(seed: number): string {
  const items = Array.from({ length: 60 }, (_, i) => ({ sku: `sku-${seed}-${i}`, qty: (i * 7919 + seed) % 97, note: ((i + 1) * 2654435761 + seed).toString(36) }));
  return JSON.stringify({ order: seed, items }).slice(0, 5_000) + "}";
}

function eventRow(at: number, body: string): Event {
  return {
    id: encodeId("evt", at, randomBytes(10)),
    tenant_id: DEFAULT_TENANT_ID,
    event_type: "order.created",
    payload: body,
    idempotency_key: null,
    ordering_key: null,
    delivery_count: 0,
    created_at: new Date(at),
  };
}

async function compressionOf(ids: string[]): Promise<Map<string, string | null>> {
  const rows = await sql<{ id: string; method: string | null }>`
    select id, pg_column_compression(payload) as method from events where id = any(${ids}::text[])`.execute(store.db);
  return new Map(rows.rows.map((r) => [r.id, r.method]));
}

test("an upgraded database compresses new payloads with lz4 in every events partition and reads old and new payloads back unchanged", async (t) => {
  const db = store.db;
  if (!(await hasLz4(db))) {
    t.skip("this Postgres server is built without lz4: the migration leaves pglz in place");
    return;
  }
  const migrator = new Migrator({ db, provider: migrationProvider });
  const to006 = await migrator.migrateTo("2026-11-29-006-endpoint-health-and-replays");
  assert.equal(to006.error, undefined);
  await ensureDefaultTenant(db);

  const now = Date.now();
  const before = eventRow(now, payload(1));
  await insertEvents(db, [before]);
  assert.equal((await compressionOf([before.id])).get(before.id), "pglz", "before the upgrade Postgres compresses with pglz");

  const applied = await migrate(db);
  assert.deepEqual(applied, ["2026-11-29-007-payload-lz4", "2026-12-04-008-deployment-settings", "2026-12-05-009-webhook-requeues"]);

  // Partitions that existed before the migration and partitions made after it (days ahead).
  const failed = await ensurePartitions(db, now + 10 * DAY_MS, now);
  assert.deepEqual(failed, []);
  const settings = await sql<{ name: string; method: string }>`
    select c.relname as name, a.attcompression as method
    from pg_attribute a join pg_class c on c.oid = a.attrelid
    where a.attname = 'payload' and (c.oid = 'events'::regclass or c.oid in (select inhrelid from pg_inherits where inhparent = 'events'::regclass))`.execute(db);
  assert.ok(settings.rows.length >= 15, `events and its partitions: ${settings.rows.map((r) => r.name).join(", ")}`);
  for (const row of settings.rows) assert.equal(row.method, "l", `${row.name} compresses payloads with lz4`);

  const written = [eventRow(now, payload(2)), eventRow(now + 8 * DAY_MS, payload(3)), eventRow(now - 400 * DAY_MS, payload(4))];
  await insertEvents(db, written);
  const methods = await compressionOf([before.id, ...written.map((e) => e.id)]);
  assert.equal(methods.get(before.id), "pglz", "a value written before the upgrade keeps its compression");
  for (const e of written) assert.equal(methods.get(e.id), "lz4", `${e.id} (${e.created_at.toISOString()}) is compressed with lz4`);

  const read = await loadPayloads(db, [before.id, ...written.map((e) => e.id)]);
  for (const e of [before, ...written]) assert.equal(read.get(e.id), e.payload);
});
