import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ApiKeySchema, AuditEntrySchema, TenantSchema, type ApiKey, type AuditEntry, type Tenant } from "../../gen/webhook/v1/admin_pb.js";
import { EndpointHealthSchema, ReplaySchema, WebhookSchema, type Replay, type Webhook } from "../../gen/webhook/v1/webhook_pb.js";
import { visibleCircuitState } from "../core/endpoint-gate.js";
import type * as rows from "../store/schema.js";
import { healthOf } from "../store/webhooks.js";
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
    health: create(EndpointHealthSchema, {
      circuitState: visibleCircuitState(healthOf(row), Date.now()),
      circuitOpenUntil: row.circuit_open_until ? timestampFromDate(row.circuit_open_until) : undefined,
      consecutiveFailures: row.consecutive_failures,
      failingSince: row.failing_since ? timestampFromDate(row.failing_since) : undefined,
      throttleMs: row.throttle_ms,
    }),
  });
}

export function toReplay(row: rows.Replay, progress: { pending: number; succeeded: number; failed: number }): Replay {
  return create(ReplaySchema, {
    replayId: row.id,
    webhookId: row.webhook_id,
    scope: row.scope,
    since: timestampFromDate(row.since),
    until: timestampFromDate(row.until),
    ratePerSecond: row.rate_per_second,
    total: row.total,
    ...progress,
    createdAt: timestampFromDate(row.created_at),
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
