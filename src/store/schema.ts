import type { ColumnType, Generated, Insertable, Selectable, Updateable } from "kysely";
import type { CircuitState } from "../core/endpoint-gate.js";

export type { CircuitState };

type CreatedAt = ColumnType<Date, Date | string | undefined, never>;
type Timestamp = ColumnType<Date, Date | string, Date | string>;
type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

export interface TenantTable {
  id: string;
  name: string;
  created_at: CreatedAt;
}

export interface ApiKeyTable {
  id: string;
  tenant_id: string;
  /** sha256 of the key; the key itself is shown once and never stored. */
  key_hash: string;
  admin: boolean;
  created_at: CreatedAt;
  revoked_at: NullableTimestamp;
}

export type WebhookStatus = "active" | "paused" | "disabled" | "deleted";

/** A signing secret and, for a rotated-out one, the moment it stops signing. */
export interface SigningSecret {
  /** Sealed with the deployment's key (enc:v1:…), never the plain whsec_ value. */
  secret: string;
  expires_at: string | null;
}

export interface WebhookTable {
  id: string;
  tenant_id: string;
  url: string;
  event_types: string[];
  status: WebhookStatus;
  description: string;
  signing_secrets: ColumnType<SigningSecret[], string, string>;
  ordered_by_key: Generated<boolean>;
  rate_limit_per_second: Generated<number>;
  /** The last seq handed to a delivery of this webhook; bumped under the row lock at ingest. */
  last_seq: Generated<number>;
  /**
   * Times deliveries of this webhook were put back to pending (a replay, a retry by hand), bumped under
   * the row lock: ingest hands it to the lanes with each job (see Lane in src/dispatcher/lanes.ts).
   */
  requeues: Generated<number>;
  shard: number;
  /** v1: HMAC with whsec_ secrets; v1a: ed25519 with whsk_ keys (sealed) and a published whpk_ key. */
  signature_scheme: Generated<SignatureScheme>;
  public_key: string | null;
  /** Retry delays in ms for this webhook; null: the server's schedule. */
  retry_schedule: number[] | null;
  /** The endpoint's health, saved by the dispatcher that owns the webhook's lane. */
  circuit_state: Generated<CircuitState>;
  circuit_open_until: NullableTimestamp;
  /** Times the circuit opened since it was last closed; each doubles the cool-down. */
  circuit_opened_count: Generated<number>;
  consecutive_failures: Generated<number>;
  /** The first failure since the last success; auto-disable counts from here. */
  failing_since: NullableTimestamp;
  /** Spacing between attempts imposed after repeated 429s, in ms; 0: none. */
  throttle_ms: Generated<number>;
  created_at: CreatedAt;
  updated_at: Timestamp;
}

export type SignatureScheme = "v1" | "v1a";


export interface AuditLogTable {
  id: string;
  tenant_id: string;
  actor: string;
  action: string;
  resource_id: string;
  details: ColumnType<Record<string, unknown>, string, never>;
  created_at: CreatedAt;
}

export interface EventTable {
  id: string;
  tenant_id: string;
  event_type: string;
  /** The payload's JSON text, kept verbatim so every attempt sends the same bytes. */
  payload: string;
  idempotency_key: string | null;
  ordering_key: string | null;
  delivery_count: number;
  created_at: Timestamp;
}

export type DeliveryStatus = "pending" | "succeeded" | "failed" | "expired" | "cancelled";

export interface DeliveryTable {
  id: string;
  tenant_id: string;
  webhook_id: string;
  event_id: string;
  /** Position in the webhook's order, gap-free per webhook. */
  seq: number;
  shard: number;
  ordering_key: string;
  status: DeliveryStatus;
  attempts: Generated<number>;
  next_attempt_at: Timestamp;
  /** Undelivered by then, it is expired. */
  expires_at: Timestamp;
  last_response_code: number | null;
  last_error: string | null;
  created_at: Timestamp;
  delivered_at: NullableTimestamp;
  /** The replay that last put this delivery back in its lane. */
  replay_id: ColumnType<string | null, string | null | undefined, string | null>;
}

export interface IdempotencyKeyTable {
  tenant_id: string;
  key: string;
  event_id: string;
  created_at: Timestamp;
}

export type ReplayScope = "failed" | "all";

export interface ReplayTable {
  id: string;
  tenant_id: string;
  webhook_id: string;
  /** failed: failed and expired deliveries; all: every final delivery but cancelled ones. */
  scope: ReplayScope;
  since: Timestamp;
  until: Timestamp;
  total: number;
  rate_per_second: number;
  created_at: CreatedAt;
}

export interface DeliveryAttemptTable {
  id: string;
  delivery_id: string;
  attempted_at: Timestamp;
  duration_ms: number;
  response_code: number | null;
  error: string | null;
  response_body: string | null;
}

export interface ShardLeaseTable {
  shard: number;
  owner: string;
  expires_at: Timestamp;
}

export interface DispatcherTable {
  id: string;
  heartbeat_at: Timestamp;
}

export interface DeploymentSettingTable {
  name: string;
  value: string;
}

export interface Database {
  tenants: TenantTable;
  api_keys: ApiKeyTable;
  webhooks: WebhookTable;
  audit_log: AuditLogTable;
  events: EventTable;
  idempotency_keys: IdempotencyKeyTable;
  deliveries: DeliveryTable;
  replays: ReplayTable;
  delivery_attempts: DeliveryAttemptTable;
  shard_leases: ShardLeaseTable;
  dispatchers: DispatcherTable;
  deployment_settings: DeploymentSettingTable;
}

export type Tenant = Selectable<TenantTable>;
export type ApiKey = Selectable<ApiKeyTable>;
export type Webhook = Selectable<WebhookTable>;
export type NewWebhook = Insertable<WebhookTable>;
export type WebhookUpdate = Updateable<WebhookTable>;
export type AuditEntry = Selectable<AuditLogTable>;
export type Event = Selectable<EventTable>;
export type Delivery = Selectable<DeliveryTable>;
export type Replay = Selectable<ReplayTable>;
export type DeliveryAttempt = Selectable<DeliveryAttemptTable>;
