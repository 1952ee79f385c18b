import type { Db } from "./db.js";
import type { Tenant } from "./schema.js";

export const DEFAULT_TENANT_ID = "default";

export async function ensureDefaultTenant(db: Db): Promise<void> {
  await db
    .insertInto("tenants")
    .values({ id: DEFAULT_TENANT_ID, name: DEFAULT_TENANT_ID })
    .onConflict((oc) => oc.doNothing())
    .execute();
}

export function getTenant(db: Db, id: string): Promise<Tenant | undefined> {
  return db.selectFrom("tenants").selectAll().where("id", "=", id).executeTakeFirst();
}

export function getTenantByName(db: Db, name: string): Promise<Tenant | undefined> {
  return db.selectFrom("tenants").selectAll().where("name", "=", name).executeTakeFirst();
}

export function insertTenant(db: Db, tenant: { id: string; name: string }): Promise<Tenant> {
  return db.insertInto("tenants").values(tenant).returningAll().executeTakeFirstOrThrow();
}

export function listTenants(db: Db, afterId: string, limit: number): Promise<Tenant[]> {
  return db.selectFrom("tenants").selectAll().where("id", ">", afterId).orderBy("id").limit(limit).execute();
}
