import { create } from "@bufbuild/protobuf";
import type { UrlPolicy } from "../core/url-policy.js";
import { checkWebhookUrl } from "../core/url-policy.js";
import { parseIpLiteral } from "../core/address-policy.js";
import { normaliseEventTypes } from "../core/event-types.js";
import { generateSecret, generateSigningKeyPair } from "../core/signing.js";
import { formatDuration, parseRetrySchedule } from "../core/durations.js";
import type { SecretBox } from "../core/secret-box.js";
import { newId } from "../core/ids.js";
import { isStorableText, longerThan } from "../core/input-limits.js";
import { shardOf } from "../core/shards.js";
import { withTimeout } from "../core/timeout.js";
import { HEALTHY } from "../core/endpoint-gate.js";
import { resolveAndCheck } from "../dispatcher/guarded-lookup.js";
import type { Db } from "../store/db.js";
import type { SignatureScheme, SigningSecret, WebhookStatus } from "../store/schema.js";
import * as webhooks from "../store/webhooks.js";
import { cancelPendingDeliveries } from "../store/deliveries.js";
import { recordAudit } from "../store/audit.js";
import {
  CreateWebhookResponseSchema,
  DeleteWebhookResponseSchema,
  GetWebhookResponseSchema,
  ListWebhooksResponseSchema,
  RotateWebhookSecretResponseSchema,
  UpdateWebhookResponseSchema,
  type CreateWebhookRequest,
  type CreateWebhookResponse,
  type DeleteWebhookRequest,
  type DeleteWebhookResponse,
  type GetWebhookRequest,
  type GetWebhookResponse,
  type ListWebhooksRequest,
  type ListWebhooksResponse,
  type RotateWebhookSecretRequest,
  type RotateWebhookSecretResponse,
  type UpdateWebhookRequest,
  type UpdateWebhookResponse,
} from "../../gen/webhook/v1/webhook_pb.js";
import type { Principal } from "./auth.js";
import { toWebhook } from "./convert.js";
import { invalidArgument, notFound } from "./errors.js";
import { pageOf, readPage } from "./paging.js";

export const MAX_DESCRIPTION_LENGTH = 1000;
export const MAX_RATE_LIMIT = 10_000;
/** One delivery every 1,000 s. Below it a limit is a mistake (1e-9 is one a generation), not a pace. */
export const MIN_RATE_LIMIT = 0.001;
export const MAX_RETRIES = 30;
const MAX_RETRY_DELAY_MS = 7 * 24 * 3600 * 1000;
const DNS_CHECK_TIMEOUT_MS = 2_000;

export interface WebhookServiceDeps {
  db: Db;
  urlPolicy: UrlPolicy;
  shardCount: number;
  /** How long a rotated-out secret keeps signing beside the new one. */
  secretGraceMs: number;
  /** Signing secrets are stored sealed, bound to their webhook's id. */
  secretBox: SecretBox;
  /** Injected by tests to answer DNS for made-up names. */
  resolve?: (hostname: string) => Promise<{ address: string; family: number }[]>;
}

export type WebhookService = ReturnType<typeof createWebhookService>;

/** Rotated-out secrets that go on signing (within their grace period) at most, besides the current one. */
export const MAX_PREVIOUS_SECRETS = 3;

export function createWebhookService(deps: WebhookServiceDeps) {
  const { db } = deps;

  /** Refuses a URL that is malformed or points inside; a name that does not resolve (yet) is accepted. */
  async function validateUrl(raw: string): Promise<string> {
    const checked = checkWebhookUrl(raw, deps.urlPolicy);
    if (!checked.ok) throw invalidArgument(checked.reason);
    const host = checked.url.hostname;
    if (parseIpLiteral(host) === null) {
      try {
        await withTimeout(resolveAndCheck(host, deps.urlPolicy, deps.resolve), DNS_CHECK_TIMEOUT_MS);
      } catch (err) {
        if ((err as { code?: string }).code === "EBLOCKED") throw invalidArgument(`url is not allowed: ${(err as Error).message}`);
        // Unresolvable today is not proof of harm: every dispatch checks the address again.
      }
    }
    return checked.url.toString();
  }

  function validateEventTypes(list: string[]): string[] {
    const result = normaliseEventTypes(list);
    if (!result.ok) throw invalidArgument(result.reason);
    return result.types;
  }

  function validateDescription(description: string): string {
    if (longerThan(description, MAX_DESCRIPTION_LENGTH)) {
      throw invalidArgument(`description is longer than ${MAX_DESCRIPTION_LENGTH} characters`);
    }
    if (!isStorableText(description)) throw invalidArgument("description holds a NUL character or a lone surrogate");
    return description;
  }

  function validateRateLimit(rate: number): number {
    if (!Number.isFinite(rate) || (rate !== 0 && (rate < MIN_RATE_LIMIT || rate > MAX_RATE_LIMIT))) {
      throw invalidArgument(`rate_limit_per_second must be 0 (no limit) or between ${MIN_RATE_LIMIT} and ${MAX_RATE_LIMIT} (got ${rate})`);
    }
    return rate;
  }

  function validateStatus(status: string): WebhookStatus {
    if (status !== "active" && status !== "paused") {
      throw invalidArgument(`status must be "active" or "paused" (got ${JSON.stringify(status)})`);
    }
    return status;
  }

  function validateScheme(scheme: string): SignatureScheme {
    if (scheme === "" || scheme === "v1") return "v1";
    if (scheme === "v1a") return "v1a";
    throw invalidArgument(`signature_scheme must be "v1" (HMAC-SHA256) or "v1a" (ed25519) (got ${JSON.stringify(scheme)})`);
  }

  /** A new signing credential: what is stored (to be sealed) and what the caller is shown. */
  function newCredential(scheme: SignatureScheme): { stored: string; secret: string; publicKey: string | null } {
    if (scheme === "v1") {
      const secret = generateSecret();
      return { stored: secret, secret, publicKey: null };
    }
    const pair = generateSigningKeyPair();
    return { stored: pair.secretKey, secret: "", publicKey: pair.publicKey };
  }

  /** "" is the server's default (null), "none" no retries at all. */
  function validateRetrySchedule(raw: string): number[] | null {
    if (raw.trim() === "") return null;
    if (raw.trim() === "none") return [];
    let schedule: number[];
    try {
      schedule = parseRetrySchedule(raw);
    } catch (err) {
      throw invalidArgument(`retry_schedule: ${(err as Error).message}`);
    }
    if (schedule.length > MAX_RETRIES) throw invalidArgument(`retry_schedule has ${schedule.length} retries; the limit is ${MAX_RETRIES}`);
    const tooLong = schedule.find((ms) => ms > MAX_RETRY_DELAY_MS || ms < 1);
    if (tooLong !== undefined) throw invalidArgument(`retry_schedule delays must be between 1ms and 7d (got ${formatDuration(tooLong)})`);
    return schedule;
  }

  function validateId(id: string): string {
    if (!/^wh_[0-9A-Za-z]{10,40}$/.test(id)) throw notFound("webhook", JSON.stringify(id));
    return id;
  }

  return {
    async createWebhook(principal: Principal, req: CreateWebhookRequest): Promise<CreateWebhookResponse> {
      const eventTypes = validateEventTypes(req.eventTypes);
      const description = validateDescription(req.description);
      const rate = validateRateLimit(req.rateLimitPerSecond);
      const scheme = validateScheme(req.signatureScheme);
      const retrySchedule = validateRetrySchedule(req.retrySchedule);
      const url = await validateUrl(req.url);
      const id = newId("wh");
      const credential = newCredential(scheme);
      const row = await db.transaction().execute(async (trx) => {
        const inserted = await webhooks.insertWebhook(trx, {
          id,
          tenant_id: principal.tenantId,
          url,
          event_types: eventTypes,
          status: "active",
          description,
          signing_secrets: JSON.stringify([{ secret: deps.secretBox.seal(credential.stored, id), expires_at: null }] satisfies SigningSecret[]),
          signature_scheme: scheme,
          public_key: credential.publicKey,
          retry_schedule: retrySchedule,
          ordered_by_key: req.orderedByKey,
          rate_limit_per_second: rate,
          shard: shardOf(id, deps.shardCount),
          updated_at: new Date(),
        });
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "webhook.create",
          resourceId: id,
          details: { url, event_types: eventTypes, signature_scheme: scheme },
        });
        return inserted;
      });
      return create(CreateWebhookResponseSchema, { webhook: toWebhook(row), secret: credential.secret });
    },

    async getWebhook(principal: Principal, req: GetWebhookRequest): Promise<GetWebhookResponse> {
      const row = await webhooks.getWebhook(db, principal.tenantId, validateId(req.webhookId));
      if (!row) throw notFound("webhook", req.webhookId);
      return create(GetWebhookResponseSchema, { webhook: toWebhook(row) });
    },

    async listWebhooks(principal: Principal, req: ListWebhooksRequest): Promise<ListWebhooksResponse> {
      const page = readPage(req);
      const rows = await webhooks.listWebhooks(db, principal.tenantId, page.afterId, page.limit);
      const { items, nextPageToken } = pageOf(rows, page);
      return create(ListWebhooksResponseSchema, { webhooks: items.map(toWebhook), nextPageToken });
    },

    async updateWebhook(principal: Principal, req: UpdateWebhookRequest): Promise<UpdateWebhookResponse> {
      const id = validateId(req.webhookId);
      const changes: webhooks.WebhookChanges = {};
      if (req.eventTypes.length > 0) changes.event_types = validateEventTypes(req.eventTypes);
      if (req.status !== undefined) changes.status = validateStatus(req.status);
      if (req.description !== undefined) changes.description = validateDescription(req.description);
      if (req.orderedByKey !== undefined) changes.ordered_by_key = req.orderedByKey;
      if (req.rateLimitPerSecond !== undefined) changes.rate_limit_per_second = validateRateLimit(req.rateLimitPerSecond);
      if (req.retrySchedule !== undefined) changes.retry_schedule = validateRetrySchedule(req.retrySchedule);
      if (req.url !== undefined) changes.url = await validateUrl(req.url);
      const row = await db.transaction().execute(async (trx) => {
        const current = await webhooks.getWebhook(trx, principal.tenantId, id, { forUpdate: true });
        if (!current) throw notFound("webhook", id);
        // Re-enabled (to active, or paused first) or pointed elsewhere, the endpoint starts healthy: its
        // failures were another story. Through paused it kept them, and one more failure disabled it again.
        const reenabled = changes.status !== undefined && changes.status !== "disabled" && current.status === "disabled";
        const resetHealth = reenabled || (changes.url !== undefined && changes.url !== current.url);
        const updated =
          Object.keys(changes).length === 0 ? current : await webhooks.updateWebhook(trx, id, resetHealth ? { ...changes, health: HEALTHY } : changes);
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "webhook.update",
          resourceId: id,
          details: { ...changes },
        });
        return updated;
      });
      return create(UpdateWebhookResponseSchema, { webhook: toWebhook(row) });
    },

    async deleteWebhook(principal: Principal, req: DeleteWebhookRequest): Promise<DeleteWebhookResponse> {
      const id = validateId(req.webhookId);
      await db.transaction().execute(async (trx) => {
        const current = await webhooks.getWebhook(trx, principal.tenantId, id, { forUpdate: true });
        if (!current) throw notFound("webhook", id);
        await webhooks.updateWebhook(trx, id, { status: "deleted" });
        // Nothing will ever be sent to a deleted webhook: its queue ends in a final state now.
        const cancelled = await cancelPendingDeliveries(trx, id);
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "webhook.delete",
          resourceId: id,
          details: { cancelled_deliveries: cancelled },
        });
      });
      return create(DeleteWebhookResponseSchema, {});
    },

    async rotateWebhookSecret(principal: Principal, req: RotateWebhookSecretRequest): Promise<RotateWebhookSecretResponse> {
      const id = validateId(req.webhookId);
      const credential = await db.transaction().execute(async (trx) => {
        const current = await webhooks.getWebhook(trx, principal.tenantId, id, { forUpdate: true });
        if (!current) throw notFound("webhook", id);
        const fresh = newCredential(current.signature_scheme);
        const now = Date.now();
        const graceEnd = new Date(now + deps.secretGraceMs).toISOString();
        // The previous secret keeps signing for the grace period, so receivers can roll over without a gap;
        // the newest few only (newest first): every one signs every delivery, and a few hundred rotations
        // within a grace period made webhook-signature too large for receivers' header limits (431) and
        // tied up the dispatcher signing each attempt hundreds of times.
        const previous = current.signing_secrets
          .filter((s) => webhooks.isSigning(s, now))
          .slice(0, MAX_PREVIOUS_SECRETS)
          .map((s) => ({ secret: s.secret, expires_at: s.expires_at ?? graceEnd }));
        await webhooks.updateWebhook(trx, id, {
          signing_secrets: [{ secret: deps.secretBox.seal(fresh.stored, id), expires_at: null }, ...previous],
          public_key: fresh.publicKey,
        });
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "webhook.rotate_secret",
          resourceId: id,
          details: { previous_secret_expires_at: graceEnd },
        });
        return fresh;
      });
      return create(RotateWebhookSecretResponseSchema, { secret: credential.secret, publicKey: credential.publicKey ?? "" });
    },
  };
}
