import type { Db } from "./db.js";

/**
 * The deployment's shard count, as its first successful start recorded it; undefined before. Webhooks
 * keep the shard they were hashed to, so every process must agree on it for good.
 */
export async function shardCountOnRecord(db: Db): Promise<number | undefined> {
  const row = await db.selectFrom("deployment_settings").select("value").where("name", "=", "shard_count").executeTakeFirst();
  return row ? Number(row.value) : undefined;
}

/** Records the shard count unless one is on record already; returns the one on record. */
export async function recordShardCount(db: Db, shardCount: number): Promise<number> {
  await db
    .insertInto("deployment_settings")
    .values({ name: "shard_count", value: String(shardCount) })
    .onConflict((oc) => oc.column("name").doNothing())
    .execute();
  return (await shardCountOnRecord(db))!;
}
