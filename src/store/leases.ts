import { sql } from "kysely";
import type { Db } from "./db.js";

/**
 * Shard leases. Every comparison uses the database clock, so processes with skewed clocks agree on
 * who holds what.
 */

export async function heartbeat(db: Db, dispatcherId: string): Promise<void> {
  await db
    .insertInto("dispatchers")
    .values({ id: dispatcherId, heartbeat_at: sql<Date>`now()` })
    .onConflict((oc) => oc.column("id").doUpdateSet({ heartbeat_at: sql<Date>`now()` }))
    .execute();
}

export async function countLiveDispatchers(db: Db, ttlMs: number): Promise<number> {
  const row = await db
    .selectFrom("dispatchers")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("heartbeat_at", ">", sql<Date>`now() - ${`${ttlMs} milliseconds`}::interval`)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}

/**
 * Extends this process's leases on `shards` (those it works or still drains); returns the ones it still
 * holds (a lease that lapsed may be gone). Only those: a row this owner holds for a shard it no longer
 * works (a release that failed, a claim whose answer was lost) must lapse, not be kept alive by every tick
 * while nobody sends its deliveries.
 */
export async function renewLeases(db: Db, owner: string, shards: readonly number[], ttlMs: number): Promise<number[]> {
  if (shards.length === 0) return [];
  const rows = await db
    .updateTable("shard_leases")
    .set({ expires_at: sql<Date>`now() + ${`${ttlMs} milliseconds`}::interval` })
    .where("owner", "=", owner)
    .where("shard", "=", sql<number>`any(${sql.val([...shards])}::int[])`)
    .returning("shard")
    .execute();
  return rows.map((r) => r.shard);
}

/** Deletes this owner's leases on every shard but `keep`; returns the shards released. */
export async function releaseLeasesExcept(db: Db, owner: string, keep: readonly number[]): Promise<number[]> {
  const rows = await db
    .deleteFrom("shard_leases")
    .where("owner", "=", owner)
    .where(sql<boolean>`not (shard = any(${sql.val([...keep])}::int[]))`)
    .returning("shard")
    .execute();
  return rows.map((r) => r.shard);
}

/**
 * Takes shards that nobody holds or whose lease lapsed, up to this process's share (the shard count over
 * the live dispatchers) less the `held` it has; returns those taken. The share is counted by the same
 * statement, at the same instant as the lapsed leases: a dead process's heartbeat lapses just before its
 * leases do, so the survivors never count it alive while taking half of what it left.
 * The shards are picked at random (so processes starting together spread out) and inserted in shard
 * order: two claims inserting the same keys in different orders wait on each other, and Postgres ends one
 * as a deadlock.
 */
export async function claimShards(db: Db, owner: string, shardCount: number, held: number, ttlMs: number): Promise<number[]> {
  const ttl = `${ttlMs} milliseconds`;
  const result = await sql<{ shard: number }>`
    insert into shard_leases (shard, owner, expires_at)
    select s, ${owner}, now() + ${ttl}::interval
    from (
      select s from generate_series(0, ${shardCount - 1}) as s
      where not exists (select 1 from shard_leases l where l.shard = s and l.expires_at > now())
      order by random()
      limit (
        select greatest(0, ceil(${shardCount}::numeric / greatest(1, count(*)))::int - ${held})
        from dispatchers where heartbeat_at > now() - ${ttl}::interval
      )
    ) as picked
    order by s
    on conflict (shard) do update set owner = excluded.owner, expires_at = excluded.expires_at
      where shard_leases.expires_at <= now()
    returning shard`.execute(db);
  return result.rows.map((r) => r.shard);
}

export async function releaseShard(db: Db, owner: string, shard: number): Promise<void> {
  await db.deleteFrom("shard_leases").where("shard", "=", shard).where("owner", "=", owner).execute();
}

export async function removeDispatcher(db: Db, dispatcherId: string): Promise<void> {
  await db.deleteFrom("shard_leases").where("owner", "=", dispatcherId).execute();
  await db.deleteFrom("dispatchers").where("id", "=", dispatcherId).execute();
}

/**
 * Forgets every dispatcher and lease. Only for the embedded database, which one process holds at a time
 * (its lock): whatever is there was left by a process that died, and waiting out its leases would hold
 * every delivery back for the lease TTL after a crash.
 */
export async function forgetAllDispatchers(db: Db): Promise<void> {
  await db.deleteFrom("shard_leases").execute();
  await db.deleteFrom("dispatchers").execute();
}
