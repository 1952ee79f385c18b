// Shard leases claimed by several dispatchers at the same moment, as when a deployment starts: every
// claim succeeds (no deadlock between their inserts) and no shard has two owners. A claim takes the share
// of the dispatchers alive at its own instant. A lease on a shard its owner does not work is never
// renewed, and is released.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import { sql } from "kysely";
import { claimShards, heartbeat, releaseLeasesExcept, renewLeases } from "../../src/store/leases.js";
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
    await sql`delete from dispatchers`.execute(store.db);
    const owners = Array.from({ length: 6 }, (_, i) => `dsp_round${round}_${i}`);
    for (const owner of owners) await heartbeat(store.db, owner);
    const claims = await Promise.all(owners.map((owner) => claimShards(store.db, owner, 64, 0, 10_000)));
    const all = claims.flat();
    assert.equal(new Set(all).size, all.length, `round ${round}: a shard claimed twice`);
    assert.ok(all.length >= 11, `round ${round}: ${all.length} shards claimed`);
    for (const shards of claims) assert.ok(shards.length <= 11, `round ${round}: a claim took ${shards.length} shards, more than 64 / 6`);
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
  await sql`delete from dispatchers`.execute(store.db);
  assert.deepEqual(await claimShards(store.db, owner, 5, 0, 10_000), [0, 1, 2, 3, 4]);
  await sql`update shard_leases set expires_at = now() + interval '1 second'`.execute(store.db);
  assert.deepEqual((await renewLeases(store.db, owner, [0, 1, 2, 3], 10_000)).sort((a, b) => a - b), [0, 1, 2, 3]);
  const { rows } = await sql<{ shard: number; left: number }>`
    select shard, extract(epoch from expires_at - now())::float8 as left from shard_leases order by shard`.execute(store.db);
  assert.ok(rows.slice(0, 4).every((r) => r.left > 9), `worked shards renewed: ${JSON.stringify(rows)}`);
  assert.ok(rows[4]!.left <= 1, `the stray lease left to lapse: ${JSON.stringify(rows[4])}`);
  assert.deepEqual(await renewLeases(store.db, owner, [], 10_000), [], "nothing worked, nothing renewed");

  // Its share of 8 shards is all of them (no heartbeats: counted as the one dispatcher); it holds 6.
  assert.equal((await claimShards(store.db, "dsp_other", 8, 6, 10_000)).length, 2);
  assert.deepEqual(await releaseLeasesExcept(store.db, owner, [0, 1, 2, 3]), [4]);
  const left = await sql<{ shard: number; owner: string }>`select shard, owner from shard_leases order by shard`.execute(store.db);
  assert.deepEqual(
    left.rows.filter((r) => r.owner === owner).map((r) => r.shard),
    [0, 1, 2, 3],
  );
  assert.equal(left.rows.filter((r) => r.owner === "dsp_other").length, 2, "another owner's leases are not touched");
  // DELETE … RETURNING lists rows in no set order.
  const released = await releaseLeasesExcept(store.db, owner, []);
  assert.deepEqual(released.sort((a, b) => a - b), [0, 1, 2, 3], "with nothing kept, every lease of the owner goes");
});

test("a claim takes the share of the dispatchers alive at its instant: all a dead one left once its heartbeat lapsed", async () => {
  await sql`delete from shard_leases`.execute(store.db);
  await sql`delete from dispatchers`.execute(store.db);
  const ttl = 3_000;
  // The dead process heartbeat, then renewed its leases a moment later: both lapsed now.
  await sql`insert into dispatchers (id, heartbeat_at) values ('dsp_dead', now() - interval '3100 milliseconds')`.execute(store.db);
  await sql`insert into shard_leases (shard, owner, expires_at) select s, 'dsp_dead', now() - interval '50 milliseconds' from generate_series(0, 63) s`.execute(store.db);
  await heartbeat(store.db, "dsp_survivor");
  assert.equal((await claimShards(store.db, "dsp_survivor", 64, 0, ttl)).length, 64, "every lapsed shard in one claim");

  // A live second dispatcher halves the share, and what is held counts against it.
  await sql`delete from shard_leases`.execute(store.db);
  await heartbeat(store.db, "dsp_peer");
  assert.equal((await claimShards(store.db, "dsp_survivor", 64, 0, ttl)).length, 32);
  assert.deepEqual(await claimShards(store.db, "dsp_survivor", 64, 32, ttl), [], "its share held: nothing more");
  assert.equal((await claimShards(store.db, "dsp_peer", 64, 30, ttl)).length, 2, "the peer takes what its share still allows");
});
