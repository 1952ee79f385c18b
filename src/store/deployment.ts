import type { Db } from "./db.js";

/**
 * The deployment's shard count: recorded by the first start that gets here, and returned as recorded
 * (the given one, that first time). Webhooks keep the shard they were hashed to, so every process must
 * agree on it for good.
 */
export async function recordedShardCount(db: Db, shardCount: number): Promise<number> {
  await db
    .insertInto("deployment_settings")
    .values({ name: "shard_count", value: String(shardCount) })
    .onConflict((oc) => oc.column("name").doNothing())
    .execute();
  const row = await db.selectFrom("deployment_settings").select("value").where("name", "=", "shard_count").executeTakeFirstOrThrow();
  return Number(row.value);
}
