import { newId } from "../core/ids.js";
import type { Db } from "./db.js";
import type { AuditEntry } from "./schema.js";

export interface AuditRecord {
  tenantId: string;
  actor: string;
  action: string;
  resourceId: string;
  details?: Record<string, unknown>;
}

/** Written in the caller's transaction, so an audit entry exists exactly when its change does. */
export async function recordAudit(db: Db, record: AuditRecord): Promise<void> {
  await db
    .insertInto("audit_log")
    .values({
      id: newId("aud"),
      tenant_id: record.tenantId,
      actor: record.actor,
      action: record.action,
      resource_id: record.resourceId,
      details: JSON.stringify(record.details ?? {}),
    })
    .execute();
}

export function listAudit(db: Db, tenantId: string, afterId: string, limit: number): Promise<AuditEntry[]> {
  return db
    .selectFrom("audit_log")
    .selectAll()
    .where("tenant_id", "=", tenantId)
    .where("id", ">", afterId)
    .orderBy("id")
    .limit(limit)
    .execute();
}
