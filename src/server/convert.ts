import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ApiKeySchema, AuditEntrySchema, TenantSchema, type ApiKey, type AuditEntry, type Tenant } from "../../gen/webhook/v1/admin_pb.js";
import { WebhookSchema, type Webhook } from "../../gen/webhook/v1/webhook_pb.js";
import type * as rows from "../store/schema.js";
import { formatDuration } from "../core/durations.js";

/** Rows to API messages: the only place that knows both shapes. */
export function toWebhook(row: rows.Webhook): Webhook {
  return create(WebhookSchema, {
    webhookId: row.id,
    url: row.url,
    eventTypes: row.event_types,
    status: row.status,
    description: row.description,
    createdAt: timestampFromDate(row.created_at),
    updatedAt: timestampFromDate(row.updated_at),
    orderedByKey: row.ordered_by_key,
    rateLimitPerSecond: row.rate_limit_per_second,
    signatureScheme: row.signature_scheme,
    publicKey: row.public_key ?? "",
    retrySchedule: row.retry_schedule === null ? "" : row.retry_schedule.length === 0 ? "none" : row.retry_schedule.map(formatDuration).join(","),
  });
}

export function toTenant(row: rows.Tenant): Tenant {
  return create(TenantSchema, { tenantId: row.id, name: row.name, createdAt: timestampFromDate(row.created_at) });
}

export function toApiKey(row: rows.ApiKey): ApiKey {
  return create(ApiKeySchema, {
    keyId: row.id,
    tenantId: row.tenant_id,
    admin: row.admin,
    createdAt: timestampFromDate(row.created_at),
    revokedAt: row.revoked_at ? timestampFromDate(row.revoked_at) : undefined,
  });
}

export function toAuditEntry(row: rows.AuditEntry): AuditEntry {
  return create(AuditEntrySchema, {
    auditId: row.id,
    tenantId: row.tenant_id,
    actor: row.actor,
    action: row.action,
    resourceId: row.resource_id,
    details: JSON.stringify(row.details),
    createdAt: timestampFromDate(row.created_at),
  });
}
