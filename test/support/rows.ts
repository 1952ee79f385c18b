import type { Db } from "../../src/store/db.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { insertWebhook } from "../../src/store/webhooks.js";

/**
 * An active webhook of the default tenant written straight into the table, for tests of the store that
 * need a webhook row and nothing of what the API does when it registers one (the secret is a placeholder).
 */
export async function insertTestWebhook(db: Db, row: { id: string; shard: number; url?: string; at?: Date }): Promise<void> {
  await insertWebhook(db, {
    id: row.id,
    tenant_id: DEFAULT_TENANT_ID,
    url: row.url ?? "http://127.0.0.1:9/unused",
    event_types: ["order.created"],
    status: "active",
    description: "",
    signing_secrets: JSON.stringify([{ secret: "enc:v1:unused", expires_at: null }]),
    shard: row.shard,
    public_key: null,
    retry_schedule: null,
    updated_at: row.at ?? new Date(),
  });
}
