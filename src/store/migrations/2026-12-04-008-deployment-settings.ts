import type { Kysely } from "kysely";

/** Settings every process of a deployment must agree on, recorded by the first start (the shard count). */
export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("deployment_settings")
    .ifNotExists()
    .addColumn("name", "text", (col) => col.primaryKey())
    .addColumn("value", "text", (col) => col.notNull())
    .execute();
}
