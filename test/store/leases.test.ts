// Shard leases claimed by several dispatchers at the same moment, as when a deployment starts: every
// claim succeeds (no deadlock between their inserts) and no shard has two owners.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { claimShards } from "../../src/store/leases.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { createTestDatabase } from "../support/postgres.js";

let database: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;

before(async () => {
  database = await createTestDatabase("leases");
  store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 8 });
  await migrate(store.db);
});

after(async () => {
  await store?.close();
  await database?.drop();
});

test("dispatchers claiming at once never deadlock and never share a shard", async () => {
  for (let round = 0; round < 40; round++) {
    await sql`delete from shard_leases`.execute(store.db);
    const owners = Array.from({ length: 6 }, (_, i) => `dsp_round${round}_${i}`);
    const claims = await Promise.all(owners.map((owner) => claimShards(store.db, owner, 64, 16, 10_000)));
    const all = claims.flat();
    assert.equal(new Set(all).size, all.length, `round ${round}: a shard claimed twice`);
    assert.ok(all.length >= 16, `round ${round}: ${all.length} shards claimed`);
    // The table agrees with what each claim returned: the shard is its claimer's.
    const { rows } = await sql<{ shard: number; owner: string }>`select shard, owner from shard_leases`.execute(store.db);
    const claimedBy = new Map(claims.flatMap((shards, i) => shards.map((s) => [s, owners[i]!] as const)));
    assert.deepEqual(new Map(rows.map((r) => [r.shard, r.owner])), claimedBy, `round ${round}: leases differ from the claims`);
  }
});
