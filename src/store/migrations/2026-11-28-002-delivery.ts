import { sql, type Kysely } from "kysely";

export async function up(db: Kysely<unknown>): Promise<void> {
  await db.schema
    .createTable("events")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull())
    .addColumn("event_type", "text", (c) => c.notNull())
    .addColumn("payload", "text", (c) => c.notNull())
    .addColumn("idempotency_key", "text")
    .addColumn("ordering_key", "text")
    .addColumn("delivery_count", "integer", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .execute();
  await db.schema.createIndex("events_tenant_id").on("events").columns(["tenant_id", "id"]).execute();
  // The same idempotency key within a tenant names one event.
  await db.schema
    .createIndex("events_idempotency_key")
    .on("events")
    .columns(["tenant_id", "idempotency_key"])
    .unique()
    .where(sql.ref("idempotency_key"), "is not", null)
    .execute();

  await db.schema
    .createTable("deliveries")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("tenant_id", "text", (c) => c.notNull())
    .addColumn("webhook_id", "text", (c) => c.notNull())
    .addColumn("event_id", "text", (c) => c.notNull())
    .addColumn("seq", "bigint", (c) => c.notNull())
    .addColumn("shard", "integer", (c) => c.notNull())
    .addColumn("ordering_key", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("status", "text", (c) => c.notNull())
    .addColumn("attempts", "integer", (c) => c.notNull().defaultTo(0))
    .addColumn("next_attempt_at", "timestamptz", (c) => c.notNull())
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .addColumn("last_response_code", "integer")
    .addColumn("last_error", "text")
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("delivered_at", "timestamptz")
    .execute();
  // One delivery per position in a webhook's order; also the lane's read path.
  await db.schema.createIndex("deliveries_webhook_seq").on("deliveries").columns(["webhook_id", "seq"]).unique().execute();
  // A lane loads its pending deliveries in order without walking its delivered history.
  await db.schema
    .createIndex("deliveries_pending_by_webhook")
    .on("deliveries")
    .columns(["webhook_id", "seq"])
    .where(sql.ref("status"), "=", "pending")
    .execute();
  await db.schema.createIndex("deliveries_webhook_id").on("deliveries").columns(["webhook_id", "id"]).execute();
  await db.schema.createIndex("deliveries_event_id").on("deliveries").column("event_id").execute();
  // The shard owner's recovery and retry sweep read only what is still pending.
  await db.schema
    .createIndex("deliveries_pending_by_shard")
    .on("deliveries")
    .columns(["shard", "next_attempt_at"])
    .where(sql.ref("status"), "=", "pending")
    .execute();

  await db.schema
    .createTable("delivery_attempts")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("delivery_id", "text", (c) => c.notNull())
    .addColumn("attempted_at", "timestamptz", (c) => c.notNull())
    .addColumn("duration_ms", "integer", (c) => c.notNull())
    .addColumn("response_code", "integer")
    .addColumn("error", "text")
    .addColumn("response_body", "text")
    .execute();
  await db.schema.createIndex("delivery_attempts_delivery_id").on("delivery_attempts").columns(["delivery_id", "attempted_at"]).execute();

  await db.schema
    .createTable("shard_leases")
    .addColumn("shard", "integer", (c) => c.primaryKey())
    .addColumn("owner", "text", (c) => c.notNull())
    .addColumn("expires_at", "timestamptz", (c) => c.notNull())
    .execute();

  await db.schema
    .createTable("dispatchers")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("heartbeat_at", "timestamptz", (c) => c.notNull())
    .execute();
}

export async function down(db: Kysely<unknown>): Promise<void> {
  for (const table of ["dispatchers", "shard_leases", "delivery_attempts", "deliveries", "events"]) {
    await db.schema.dropTable(table).execute();
  }
}
