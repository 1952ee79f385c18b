import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { ConnectError } from "@connectrpc/connect";
import type { Db } from "../store/db.js";
import { findActiveKeyByHash } from "../store/api-keys.js";
import { DEFAULT_TENANT_ID, getTenant } from "../store/tenants.js";
import { notFound, permissionDenied, rateLimited, unauthenticated } from "./errors.js";
import { KeyedRateLimiter, TokenBucket } from "../core/token-bucket.js";
import { recordAudit } from "../store/audit.js";
import { authFailures } from "../metrics.js";

/** Who is calling and which tenant the call acts on. */
export interface Principal {
  /** The tenant every read and write of this call is confined to. */
  tenantId: string;
  admin: boolean;
  /** For the audit log: the key id, or "bootstrap" for the admin key from the environment. */
  actor: string;
}

export function hashApiKey(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

export function generateApiKey(): string {
  return `whk_${randomBytes(32).toString("base64url")}`;
}

export interface Authenticator {
  authenticate(headers: Headers): Promise<Principal>;
  /** Drops cached keys, e.g. after a revocation in this process. */
  forget(): void;
}

const CACHE_MS = 5_000;

type Refusal = "missing" | "malformed" | "invalid_key" | "tenant_mismatch";

const REFUSAL_ERRORS: Record<Refusal, () => ConnectError> = {
  missing: () => unauthenticated("missing Authorization header (expected: Bearer <api key>)"),
  malformed: () => unauthenticated("malformed Authorization header (expected: Bearer <api key>)"),
  invalid_key: () => unauthenticated("invalid or revoked API key"),
  tenant_mismatch: () => permissionDenied("x-tenant-id may only be set by admin keys"),
};

export function createAuthenticator(deps: { db: Db; bootstrapAdminKey: string | undefined; rateLimit: number }): Authenticator {
  // Per key, in this process: N API processes allow up to N times the rate, which bounds abuse all the same.
  // A burst of at least one request: below it (a rate under 0.5) no request ever got through.
  const limiter = deps.rateLimit > 0 ? new KeyedRateLimiter(deps.rateLimit, Math.max(1, deps.rateLimit * 2)) : undefined;
  const bootstrapHash = deps.bootstrapAdminKey ? Buffer.from(hashApiKey(deps.bootstrapAdminKey), "hex") : undefined;
  // Ingest authenticates every call: a short cache keeps the key lookup off the hot path.
  const cache = new Map<string, { key: { id: string; tenantId: string; admin: boolean }; at: number }>();
  /**
   * Moves on at every `forget`: a lookup that began before a revocation and answers after it must not put
   * the revoked key back (it kept working here for the cache's 5 s after the revoke was answered).
   */
  let generation = 0;

  async function resolveKey(token: string) {
    const hash = hashApiKey(token);
    if (bootstrapHash && timingSafeEqual(Buffer.from(hash, "hex"), bootstrapHash)) {
      return { id: "bootstrap", tenantId: DEFAULT_TENANT_ID, admin: true };
    }
    const cached = cache.get(hash);
    if (cached && Date.now() - cached.at < CACHE_MS) return cached.key;
    const asked = generation;
    const row = await findActiveKeyByHash(deps.db, hash);
    if (!row) return undefined;
    const key = { id: row.id, tenantId: row.tenant_id, admin: row.admin };
    if (asked !== generation) return key;
    if (cache.size > 10_000) cache.clear();
    cache.set(hash, { key, at: Date.now() });
    return key;
  }

  // Failures are audited, but a flood of them must not become a flood of writes: past this rate they are
  // only counted in the metrics.
  const auditBudget = new TokenBucket(20, 100, Date.now());
  function refuse(reason: Refusal, token: string | undefined, tenantId = DEFAULT_TENANT_ID): never {
    authFailures.inc();
    if (auditBudget.take(Date.now()) === 0) {
      void recordAudit(deps.db, {
        tenantId,
        actor: "anonymous",
        action: "auth.failure",
        resourceId: "",
        // A prefix identifies which key was tried without storing a usable secret.
        details: { reason, ...(token ? { key_prefix: token.slice(0, 8) } : {}) },
      }).catch(() => undefined);
    }
    throw REFUSAL_ERRORS[reason]();
  }

  return {
    forget: () => {
      generation++;
      cache.clear();
    },
    async authenticate(headers) {
      const header = headers.get("authorization");
      if (!header) refuse("missing", undefined);
      const match = /^Bearer\s+(\S+)$/i.exec(header.trim());
      if (!match) refuse("malformed", undefined);
      const key = await resolveKey(match[1]!);
      if (!key) refuse("invalid_key", match[1]);
      const waitMs = limiter?.take(key.id, Date.now()) ?? 0;
      if (waitMs > 0) throw rateLimited(`API key ${key.id} is over its limit of ${deps.rateLimit} requests per second`, waitMs);
      const requested = headers.get("x-tenant-id")?.trim();
      if (!key.admin) {
        if (requested && requested !== key.tenantId) refuse("tenant_mismatch", match[1], key.tenantId);
        return { tenantId: key.tenantId, admin: false, actor: key.id };
      }
      // The contract's rule, whichever tenant the admin key was made for: no header means `default`.
      const tenantId = requested || DEFAULT_TENANT_ID;
      if (tenantId !== key.tenantId && !(await getTenant(deps.db, tenantId))) throw notFound("tenant", tenantId);
      return { tenantId, admin: true, actor: key.id };
    },
  };
}

export function requireAdmin(principal: Principal): void {
  if (!principal.admin) throw permissionDenied("this call needs an admin API key");
}
