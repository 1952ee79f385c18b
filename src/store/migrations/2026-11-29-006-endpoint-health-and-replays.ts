import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  // The endpoint's health as the dispatcher that owns its lane last saw it; GetWebhook shows it and a
  // new owner takes it over.
  await db.schema
    .alterTable("webhooks")
    .addColumn("circuit_state", "text", (c) => c.notNull().defaultTo("closed"))
    .addColumn("circuit_open_until", "timestamptz")
    .addColumn("circuit_opened_count", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("consecutive_failures", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("failing_since", "timestamptz")
    .addColumn("throttle_ms", "integer", (c) => c.notNull().defaultTo(0))
    .execute();

  await db.schema
    .createTable("replays")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull())
    .addColumn("webhook_id", "text", (c) => c.notNull())
    .addColumn("scope", "text", (c) => c.notNull())
    .addColumn("since", "timestamptz", (c) => c.notNull())
    .addColumn("until", "timestamptz", (c) => c.notNull())
    .addColumn("total", "integer", (c) => c.notNull())
    .addColumn("rate_per_second", sql`double precision`, (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .execute();
  await db.schema.createIndex("replays_webhook_id").on("replays").columns(["webhook_id", "id"]).execute();

  // The replay that last put a delivery back; only replayed rows are indexed, for progress counts.
  await db.schema.alterTable("deliveries").addColumn("replay_id", "text").execute();
  await sql`create index deliveries_replay on deliveries (replay_id, status) where replay_id is not null`.execute(db);
}

export async function down(db: Kysely<unknown>): Promise<void> {
  await db.schema.alterTable("deliveries").dropColumn("replay_id").execute();
  await db.schema.dropTable("replays").execute();
  await db.schema
    .alterTable("webhooks")
    .dropColumn("circuit_state")
    .dropColumn("circuit_open_until")
    .dropColumn("circuit_opened_count")
    .dropColumn("consecutive_failures")
    .dropColumn("failing_since")
    .dropColumn("throttle_ms")
    .execute();
}
