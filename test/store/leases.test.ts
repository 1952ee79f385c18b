// Shard leases claimed by several dispatchers at the same moment, as when a deployment starts: every
// claim succeeds (no deadlock between their inserts) and no shard has two owners. A lease on a shard its
// owner does not work is never renewed, and is released.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { claimShards, releaseLeasesExcept, renewLeases } from "../../src/store/leases.js";
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

test("only the shards a process works are renewed; a lease it holds on any other is not kept alive, and is released", async () => {
  await sql`delete from shard_leases`.execute(store.db);
  const owner = "dsp_stray";
  // Shards 0–3 worked; 4 claimed by a statement that committed but whose answer never came back.
  assert.deepEqual(await claimShards(store.db, owner, 5, 5, 10_000), [0, 1, 2, 3, 4]);
  await sql`update shard_leases set expires_at = now() + interval '1 second'`.execute(store.db);
  assert.deepEqual((await renewLeases(store.db, owner, [0, 1, 2, 3], 10_000)).sort(), [0, 1, 2, 3]);
  const { rows } = await sql<{ shard: number; left: number }>`
    select shard, extract(epoch from expires_at - now())::float8 as left from shard_leases order by shard`.execute(store.db);
  assert.ok(rows.slice(0, 4).every((r) => r.left > 9), `worked shards renewed: ${JSON.stringify(rows)}`);
  assert.ok(rows[4]!.left <= 1, `the stray lease left to lapse: ${JSON.stringify(rows[4])}`);
  assert.deepEqual(await renewLeases(store.db, owner, [], 10_000), [], "nothing worked, nothing renewed");

  await claimShards(store.db, "dsp_other", 8, 2, 10_000);
  assert.deepEqual(await releaseLeasesExcept(store.db, owner, [0, 1, 2, 3]), [4]);
  const left = await sql<{ shard: number; owner: string }>`select shard, owner from shard_leases order by shard`.execute(store.db);
  assert.deepEqual(
    left.rows.filter((r) => r.owner === owner).map((r) => r.shard),
    [0, 1, 2, 3],
  );
  assert.equal(left.rows.filter((r) => r.owner === "dsp_other").length, 2, "another owner's leases are not touched");
  assert.deepEqual(await releaseLeasesExcept(store.db, owner, []), [0, 1, 2, 3], "with nothing kept, every lease of the owner goes");
});
