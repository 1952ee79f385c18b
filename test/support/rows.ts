import { CompiledQuery } from "kysely";
import type { Db } from "../../src/store/db.js";
import type { NewDelivery } from "../../src/store/deliveries.js";
import { DELIVERY_COLUMNS, EVENT_COLUMNS } from "../../src/store/ingest.js";
import type { Event } from "../../src/store/schema.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { insertWebhook } from "../../src/store/webhooks.js";
import { SecretBox } from "../../src/core/secret-box.js";
import { generateSecret } from "../../src/core/signing.js";
import { TEST_ENCRYPTION_KEY } from "./app.js";

/**
 * An active webhook of the default tenant written straight into the table, for tests of the store that
 * need a webhook row and nothing else of what the API does when it registers one.
 */
export async function insertTestWebhook(db: Db, row: { id: string; shard: number; url?: string; at?: Date }): Promise<void> {
  await insertWebhook(db, {
    id: row.id,
    tenant_id: DEFAULT_TENANT_ID,
    url: row.url ?? "http://127.0.0.1:9/unused",
    event_types: ["order.created"],
    status: "active",
    description: "",
    // Sealed under the tests' key, as the API seals them: a process started on the database opens it.
    signing_secrets: JSON.stringify([{ secret: SecretBox.fromEncodedKey(TEST_ENCRYPTION_KEY).seal(generateSecret(), row.id), expires_at: null }]),
    shard: row.shard,
    public_key: null,
    retry_schedule: null,
    updated_at: row.at ?? new Date(),
  });
}

/**
 * Events written straight into the table with their idempotency keys, for tests of the store that need
 * rows without an ingest (any day, any number); a key claimed already is a unique violation.
 */
export async function insertEvents(db: Db, events: Event[]): Promise<void> {
  if (events.length === 0) return;
  const keyed = events.filter((e) => e.idempotency_key !== null);
  if (keyed.length > 0) {
    await db
      .insertInto("idempotency_keys")
      .values(keyed.map((e) => ({ tenant_id: e.tenant_id, key: e.idempotency_key!, event_id: e.id, created_at: e.created_at })))
      .execute();
  }
  await insertRows(db, "events", EVENT_COLUMNS, events);
}

/** Deliveries written straight into the table, as they are given (seqs included), 1,000 rows a statement. */
export async function insertDeliveries(db: Db, rows: NewDelivery[]): Promise<void> {
  for (let i = 0; i < rows.length; i += 1000) await insertRows(db, "deliveries", DELIVERY_COLUMNS, rows.slice(i, i + 1000));
}

/**
 * A multi-row insert of plain values, without the query builder, so a test can write tens of thousands of
 * rows quickly. Dates go as ISO text (a timestamptz reads it as UTC), not formatted in local time by pg.
 */
async function insertRows<T extends object>(db: Db, table: string, columns: readonly (keyof T & string)[], rows: readonly T[]): Promise<void> {
  if (rows.length === 0) return;
  const tuples: string[] = new Array(rows.length);
  const params: unknown[] = new Array(rows.length * columns.length);
  let n = 0;
  for (let r = 0; r < rows.length; r++) {
    const row = rows[r] as Record<string, unknown>;
    const placeholders: string[] = new Array(columns.length);
    for (let c = 0; c < columns.length; c++) {
      const value = row[columns[c]!];
      params[n++] = value instanceof Date ? value.toISOString() : value;
      placeholders[c] = `$${n}`;
    }
    tuples[r] = `(${placeholders.join(", ")})`;
  }
  const text = `insert into "${table}" (${columns.map((c) => `"${c}"`).join(", ")}) values ${tuples.join(", ")}`;
  await db.executeQuery(CompiledQuery.raw(text, params));
}
