import { create } from "@bufbuild/protobuf";
import { newId } from "../core/ids.js";
import type { Db } from "../store/db.js";
import { isUniqueViolation } from "../store/db.js";
import * as tenants from "../store/tenants.js";
import { DEFAULT_TENANT_ID } from "../store/tenants.js";
import * as apiKeys from "../store/api-keys.js";
import { listAudit, recordAudit } from "../store/audit.js";
import {
  CreateApiKeyResponseSchema,
  CreateTenantResponseSchema,
  ListAuditLogResponseSchema,
  ListTenantsResponseSchema,
  RevokeApiKeyResponseSchema,
  type CreateApiKeyRequest,
  type CreateApiKeyResponse,
  type CreateTenantRequest,
  type CreateTenantResponse,
  type ListAuditLogRequest,
  type ListAuditLogResponse,
  type ListTenantsRequest,
  type ListTenantsResponse,
  type RevokeApiKeyRequest,
  type RevokeApiKeyResponse,
} from "../../gen/webhook/v1/admin_pb.js";
import { generateApiKey, hashApiKey, requireAdmin, type Principal } from "./auth.js";
import { toApiKey, toAuditEntry, toTenant } from "./convert.js";
import { alreadyExists, invalidArgument, notFound } from "./errors.js";
import { pageOf, readPage } from "./paging.js";

const TENANT_NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;

export type AdminService = ReturnType<typeof createAdminService>;

export function createAdminService(deps: { db: Db; onKeyRevoked: () => void }) {
  const { db } = deps;

  async function tenantFor(principal: Principal, tenantId: string): Promise<string> {
    if (!tenantId) return principal.tenantId;
    const valid = tenantId === DEFAULT_TENANT_ID || /^ten_[0-9a-z]{26}$/.test(tenantId);
    if (!valid || !(await tenants.getTenant(db, tenantId))) throw notFound("tenant", JSON.stringify(tenantId));
    return tenantId;
  }

  return {
    async createTenant(principal: Principal, req: CreateTenantRequest): Promise<CreateTenantResponse> {
      requireAdmin(principal);
      if (!TENANT_NAME.test(req.name)) {
        throw invalidArgument(
          `tenant name must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit (got ${JSON.stringify(req.name)})`,
        );
      }
      try {
        const row = await db.transaction().execute(async (trx) => {
          const tenant = await tenants.insertTenant(trx, { id: newId("ten"), name: req.name });
          await recordAudit(trx, {
            tenantId: tenant.id,
            actor: principal.actor,
            action: "tenant.create",
            resourceId: tenant.id,
            details: { name: req.name },
          });
          return tenant;
        });
        return create(CreateTenantResponseSchema, { tenant: toTenant(row) });
      } catch (err) {
        if (isUniqueViolation(err)) throw alreadyExists(`a tenant named ${JSON.stringify(req.name)} already exists`);
        throw err;
      }
    },

    async listTenants(principal: Principal, req: ListTenantsRequest): Promise<ListTenantsResponse> {
      requireAdmin(principal);
      const page = readPage(req);
      const { items, nextPageToken } = pageOf(await tenants.listTenants(db, page.afterId, page.limit), page);
      return create(ListTenantsResponseSchema, { tenants: items.map(toTenant), nextPageToken });
    },

    async createApiKey(principal: Principal, req: CreateApiKeyRequest): Promise<CreateApiKeyResponse> {
      requireAdmin(principal);
      if (!req.tenantId) throw invalidArgument("tenant_id is required");
      const tenantId = await tenantFor(principal, req.tenantId);
      const key = generateApiKey();
      const row = await db.transaction().execute(async (trx) => {
        const inserted = await apiKeys.insertApiKey(trx, {
          id: newId("key"),
          tenant_id: tenantId,
          key_hash: hashApiKey(key),
          admin: req.admin,
        });
        await recordAudit(trx, {
          tenantId,
          actor: principal.actor,
          action: "api_key.create",
          resourceId: inserted.id,
          details: { admin: req.admin },
        });
        return inserted;
      });
      return create(CreateApiKeyResponseSchema, { apiKey: toApiKey(row), key });
    },

    async revokeApiKey(principal: Principal, req: RevokeApiKeyRequest): Promise<RevokeApiKeyResponse> {
      requireAdmin(principal);
      const row = await db.transaction().execute(async (trx) => {
        const existing = /^key_[0-9A-Za-z]{10,40}$/.test(req.keyId) ? await apiKeys.getApiKey(trx, req.keyId) : undefined;
        if (!existing) throw notFound("api key", JSON.stringify(req.keyId));
        const revoked = (await apiKeys.revokeApiKey(trx, req.keyId))!;
        await recordAudit(trx, {
          tenantId: revoked.tenant_id,
          actor: principal.actor,
          action: "api_key.revoke",
          resourceId: revoked.id,
        });
        return revoked;
      });
      deps.onKeyRevoked();
      return create(RevokeApiKeyResponseSchema, { apiKey: toApiKey(row) });
    },

    async listAuditLog(principal: Principal, req: ListAuditLogRequest): Promise<ListAuditLogResponse> {
      requireAdmin(principal);
      const tenantId = await tenantFor(principal, req.tenantId);
      const page = readPage(req);
      const { items, nextPageToken } = pageOf(await listAudit(db, tenantId, page.afterId, page.limit), page);
      return create(ListAuditLogResponseSchema, { entries: items.map(toAuditEntry), nextPageToken });
    },
  };
}
