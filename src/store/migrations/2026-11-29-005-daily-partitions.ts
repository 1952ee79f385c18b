import { sql, type Kysely } from "kysely";
import { idTimestamp } from "../../core/ids.js";
import type { Db } from "../db.js";
import { dayStart, ensurePartitions } from "../partitions.js";

/**
 * Events, deliveries and attempts become partitioned by day (see partitions.ts), so retention drops
 * partitions instead of deleting rows. Existing rows are copied aside and back. Idempotency keys move
 * to a table of their own: a unique key on a partitioned table would have to include the partition
 * column, and the same key must be refused whatever day it comes back on.
 */
export async function up(untyped: Kysely<unknown>): Promise<void> {
  const db = untyped as unknown as Db;
  const tables = ["events", "deliveries", "delivery_attempts"] as const;
  let earliest = Date.now();
  for (const table of tables) {
    await sql`create temp table ${sql.table(`${table}_copy`)} as select * from ${sql.table(table)}`.execute(db);
    const column = table === "delivery_attempts" ? "delivery_id" : "id";
    const first = await sql<{ id: string | null }>`select min(${sql.ref(column)}) as id from ${sql.table(table)}`.execute(db);
    const at = idTimestamp(first.rows[0]?.id)?.getTime();
    if (at !== undefined) earliest = Math.min(earliest, at);
  }
  for (const table of [...tables].reverse()) await sql`drop table ${sql.table(table)}`.execute(db);

  await sql`
    create table events (
      id text collate "C" not null,
      tenant_id text not null,
      event_type text not null,
      payload text not null,
      idempotency_key text,
      ordering_key text,
      delivery_count integer not null,
      created_at timestamptz not null,
      primary key (id)
    ) partition by range (id)`.execute(db);
  await sql`create index events_tenant_id on events (tenant_id, id)`.execute(db);

  await sql`
    create table idempotency_keys (
      tenant_id text not null,
      key text not null,
      event_id text not null,
      created_at timestamptz not null,
      primary key (tenant_id, key)
    )`.execute(db);
  // Housekeeping forgets keys older than the TTL.
  await sql`create index idempotency_keys_created_at on idempotency_keys (created_at)`.execute(db);

  await sql`
    create table deliveries (
      id text collate "C" not null,
      tenant_id text not null,
      webhook_id text not null,
      event_id text not null,
      seq bigint not null,
      shard integer not null,
      ordering_key text not null default '',
      status text not null,
      attempts integer not null default 0,
      next_attempt_at timestamptz not null,
      expires_at timestamptz not null,
      last_response_code integer,
      last_error text,
      created_at timestamptz not null,
      delivered_at timestamptz,
      primary key (id)
    ) partition by range (id)`.execute(db);
  // Listing a webhook's deliveries pages by id; a replay walks a range of ids (of time).
  await sql`create index deliveries_webhook_id on deliveries (webhook_id, id)`.execute(db);
  // A lane loads its pending deliveries in order without walking its delivered history.
  await sql`create index deliveries_pending_by_webhook on deliveries (webhook_id, seq) where status = 'pending'`.execute(db);
  // The shard owner's recovery and retry sweep read only what is still pending.
  await sql`create index deliveries_pending_by_shard on deliveries (shard, next_attempt_at) where status = 'pending'`.execute(db);

  await sql`
    create table delivery_attempts (
      id text collate "C" not null,
      delivery_id text collate "C" not null,
      attempted_at timestamptz not null,
      duration_ms integer not null,
      response_code integer,
      error text,
      response_body text,
      primary key (delivery_id, id)
    ) partition by range (delivery_id)`.execute(db);

  // Rows whose day partition is missing land here rather than fail the insert.
  for (const table of tables) {
    await sql`create table ${sql.table(`${table}_default`)} partition of ${sql.table(table)} default`.execute(db);
  }
  const failed = await ensurePartitions(db, Date.now(), dayStart(earliest));
  if (failed.length > 0) throw new Error(`could not create partitions: ${failed.join("; ")}`);

  for (const table of tables) {
    await sql`insert into ${sql.table(table)} select * from ${sql.table(`${table}_copy`)}`.execute(db);
    await sql`drop table ${sql.table(`${table}_copy`)}`.execute(db);
  }
  await sql`
    insert into idempotency_keys (tenant_id, key, event_id, created_at)
    select tenant_id, idempotency_key, id, created_at from events where idempotency_key is not null`.execute(db);
}

export async function down(): Promise<void> {
  throw new Error("the daily-partitions migration cannot be undone");
}
