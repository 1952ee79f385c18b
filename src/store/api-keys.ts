import type { Db } from "./db.js";
import type { ApiKey } from "./schema.js";

export function findActiveKeyByHash(db: Db, keyHash: string): Promise<ApiKey | undefined> {
  return db
    .selectFrom("api_keys")
    .selectAll()
    .where("key_hash", "=", keyHash)
    .where("revoked_at", "is", null)
    .executeTakeFirst();
}

export function insertApiKey(db: Db, key: { id: string; tenant_id: string; key_hash: string; admin: boolean }): Promise<ApiKey> {
  return db.insertInto("api_keys").values(key).returningAll().executeTakeFirstOrThrow();
}

export function getApiKey(db: Db, id: string): Promise<ApiKey | undefined> {
  return db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirst();
}

/** Revoking twice keeps the first revocation time. */
export function revokeApiKey(db: Db, id: string): Promise<ApiKey | undefined> {
  return db
    .updateTable("api_keys")
    .set((eb) => ({ revoked_at: eb.fn.coalesce("revoked_at", eb.fn<Date>("now")) }))
    .where("id", "=", id)
    .returningAll()
    .executeTakeFirst();
}
