// The Connect door: the same scenario over gRPC (h2c) and Connect (HTTP/1.1), one gRPC-Web call,
// errors as Connect codes, and CORS. Real Postgres, real clients.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { Code, ConnectError, createClient, type CallOptions, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/webhook/v1/admin_pb.js";
import { WebhookService } from "../../gen/webhook/v1/webhook_pb.js";
import { createTestDatabase } from "../support/postgres.js";
import { startTestApp, TEST_ADMIN_KEY } from "../support/app.js";

const PUBLIC_URL = "https://93.184.216.34/hook";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let pool: pg.Pool;
let server: Awaited<ReturnType<typeof startTestApp>>;
const sessions: Http2SessionManager[] = [];

function as(key: string, tenantId?: string): CallOptions {
  return { headers: { authorization: `Bearer ${key}`, ...(tenantId ? { "x-tenant-id": tenantId } : {}) } };
}
const asAdmin = as(TEST_ADMIN_KEY);

/** Awaits a rejection with the given Connect code and a message matching `message`. */
async function rejectsWith(promise: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, `expected ${Code[code]}, the call succeeded`);
  const err = ConnectError.from(caught);
  assert.equal(err.code, code, `expected ${Code[code]}, got ${Code[err.code]}: ${err.rawMessage}`);
  if (message) assert.match(err.rawMessage, message);
  return err;
}

async function counts(): Promise<{ webhooks: number; audit: number; keys: number; tenants: number }> {
  const { rows } = await pool.query(
    `select (select count(*) from webhooks)::int as webhooks, (select count(*) from audit_log where action <> 'auth.failure')::int as audit,
            (select count(*) from api_keys)::int as keys, (select count(*) from tenants)::int as tenants`,
  );
  return rows[0];
}

before(async () => {
  db = await createTestDatabase("connect");
  server = await startTestApp({ DATABASE_URL: db.url }, ["api"]);
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
});

after(async () => {
  for (const s of sessions) s.abort();
  await server?.app.stop();
  await pool?.end();
  await db?.drop();
});

const transports: [string, () => Transport][] = [
  [
    "grpc",
    () => {
      const sessionManager = new Http2SessionManager(server.url);
      sessions.push(sessionManager);
      // gRPC is always HTTP/2 here (h2c: the server tells it from HTTP/1.1 by the connection preface).
      return createGrpcTransport({ baseUrl: server.url, sessionManager });
    },
  ],
  ["connect", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
];

for (const [label, makeTransport] of transports) {
  describe(`over ${label}`, () => {
    let admin: ReturnType<typeof createClient<typeof AdminService>>;
    let webhooks: ReturnType<typeof createClient<typeof WebhookService>>;
    let tenantId: string;
    let otherTenantId: string;
    let tenantKey: string;
    let tenantKeyId: string;
    let otherKey: string;
    let webhookId: string;
    let secret: string;

    before(() => {
      const transport = makeTransport();
      admin = createClient(AdminService, transport);
      webhooks = createClient(WebhookService, transport);
    });

    test("tenants: create, refuse a duplicate and a bad name, list every page", async () => {
      const { tenant } = await admin.createTenant({ name: `acme-${label}` }, asAdmin);
      assert.match(tenant!.tenantId, /^ten_[0-9a-z]{26}$/);
      assert.equal(tenant!.name, `acme-${label}`);
      assert.ok(tenant!.createdAt);
      tenantId = tenant!.tenantId;
      otherTenantId = (await admin.createTenant({ name: `other-${label}` }, asAdmin)).tenant!.tenantId;

      const before = await counts();
      await rejectsWith(admin.createTenant({ name: `acme-${label}` }, asAdmin), Code.AlreadyExists, /already exists/);
      await rejectsWith(admin.createTenant({ name: "Not A Name" }, asAdmin), Code.InvalidArgument, /tenant name/);
      await rejectsWith(admin.createTenant({ name: "" }, asAdmin), Code.InvalidArgument, /tenant name/);
      assert.deepEqual(await counts(), before, "refused calls write nothing");

      // One tenant a page: every tenant, the built-in default included, exactly once.
      const seen: string[] = [];
      let pageToken = "";
      do {
        const page = await admin.listTenants({ pageSize: 1, pageToken }, asAdmin);
        assert.ok(page.tenants.length <= 1);
        seen.push(...page.tenants.map((t) => t.tenantId));
        pageToken = page.nextPageToken;
        assert.ok(seen.length < 100);
      } while (pageToken);
      const { rows } = await pool.query("select id from tenants order by id");
      assert.deepEqual(seen, rows.map((r) => r.id));
      assert.ok(seen.includes("default") && seen.includes(tenantId) && seen.includes(otherTenantId));
    });

    test("api keys: create for a tenant, refuse a missing or unknown tenant", async () => {
      const res = await admin.createApiKey({ tenantId, admin: false }, asAdmin);
      assert.match(res.key, /^whk_\S{40,}$/);
      assert.match(res.apiKey!.keyId, /^key_[0-9a-z]{26}$/);
      assert.equal(res.apiKey!.tenantId, tenantId);
      assert.equal(res.apiKey!.admin, false);
      assert.equal(res.apiKey!.revokedAt, undefined);
      tenantKey = res.key;
      tenantKeyId = res.apiKey!.keyId;
      otherKey = (await admin.createApiKey({ tenantId: otherTenantId, admin: false }, asAdmin)).key;

      const before = await counts();
      await rejectsWith(admin.createApiKey({ tenantId: "", admin: false }, asAdmin), Code.InvalidArgument, /tenant_id is required/);
      await rejectsWith(admin.createApiKey({ tenantId: "ten_doesnotexist0000", admin: false }, asAdmin), Code.NotFound, /tenant/);
      assert.deepEqual(await counts(), before);
    });

    test("webhooks: create, get, list by pages, update, rotate, delete", async () => {
      const key = as(tenantKey);
      const created = await webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: ["document.created", "invoice.*"], description: "first" }, key);
      assert.match(created.webhook!.webhookId, /^wh_[0-9a-z]{26}$/);
      assert.equal(created.webhook!.status, "active");
      assert.match(created.secret, /^whsec_[A-Za-z0-9+/]+={0,2}$/);
      webhookId = created.webhook!.webhookId;
      secret = created.secret;

      const got = await webhooks.getWebhook({ webhookId }, key);
      assert.equal(got.webhook!.url, PUBLIC_URL);
      assert.deepEqual(got.webhook!.eventTypes, ["document.created", "invoice.*"]);
      assert.equal(got.webhook!.description, "first");
      assert.ok(got.webhook!.createdAt);

      const ids = [webhookId];
      for (let i = 0; i < 4; i++) ids.push((await webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: [`t.n${i}`] }, key)).webhook!.webhookId);
      const listed: string[] = [];
      let pageToken = "";
      let pages = 0;
      do {
        const page = await webhooks.listWebhooks({ pageSize: 2, pageToken }, key);
        assert.ok(page.webhooks.length <= 2);
        listed.push(...page.webhooks.map((w) => w.webhookId));
        pageToken = page.nextPageToken;
        pages += 1;
      } while (pageToken && pages < 20);
      assert.equal(pages, 3);
      assert.deepEqual(listed, ids, "every webhook once, in creation order");

      await webhooks.updateWebhook(
        { webhookId, url: "https://93.184.216.35/v2", eventTypes: ["order.*"], status: "paused", description: "second" },
        key,
      );
      let now = (await webhooks.getWebhook({ webhookId }, key)).webhook!;
      assert.equal(now.url, "https://93.184.216.35/v2");
      assert.deepEqual(now.eventTypes, ["order.*"]);
      assert.equal(now.status, "paused");
      assert.equal(now.description, "second");
      const updated = await webhooks.updateWebhook({ webhookId, status: "active" }, key);
      assert.equal(updated.webhook!.status, "active");
      assert.deepEqual(updated.webhook!.eventTypes, ["order.*"], "an update without event types keeps them");
      now = (await webhooks.getWebhook({ webhookId }, key)).webhook!;
      assert.equal(now.status, "active");
      assert.equal(now.description, "second");

      const rotated = await webhooks.rotateWebhookSecret({ webhookId }, key);
      assert.match(rotated.secret, /^whsec_/);
      assert.notEqual(rotated.secret, secret);

      const doomed = ids[4]!;
      await webhooks.deleteWebhook({ webhookId: doomed }, key);
      await rejectsWith(webhooks.getWebhook({ webhookId: doomed }, key), Code.NotFound, /webhook/);
      await rejectsWith(webhooks.deleteWebhook({ webhookId: doomed }, key), Code.NotFound);
      const left = await webhooks.listWebhooks({ pageSize: 100, pageToken: "" }, key);
      assert.deepEqual(left.webhooks.map((w) => w.webhookId), ids.slice(0, 4));
    });

    test("errors map to Connect codes and write nothing", async () => {
      const key = as(tenantKey);
      const before = await counts();
      await rejectsWith(webhooks.createWebhook({ url: "https://10.0.0.1/", eventTypes: ["a.b"] }, key), Code.InvalidArgument, /private range/);
      await rejectsWith(webhooks.createWebhook({ url: "not a url", eventTypes: ["a.b"] }, key), Code.InvalidArgument, /not a valid absolute URL/);
      await rejectsWith(webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: [] }, key), Code.InvalidArgument, /at least one event type/);
      await rejectsWith(webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: ["a.*.b"] }, key), Code.InvalidArgument, /misplaced/);
      await rejectsWith(webhooks.updateWebhook({ webhookId, status: "deleted" }, key), Code.InvalidArgument, /status must be/);
      await rejectsWith(webhooks.listWebhooks({ pageSize: 1000, pageToken: "" }, key), Code.InvalidArgument, /page_size/);
      await rejectsWith(webhooks.listWebhooks({ pageSize: 0, pageToken: "junk!" }, key), Code.InvalidArgument, /page_token/);
      await rejectsWith(webhooks.getWebhook({ webhookId: "wh_00000000000000000000000000" }, key), Code.NotFound, /webhook/);

      await rejectsWith(webhooks.listWebhooks({}), Code.Unauthenticated, /Authorization/);
      await rejectsWith(webhooks.listWebhooks({}, as("whk_not_a_key")), Code.Unauthenticated, /invalid or revoked/);
      await rejectsWith(webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: ["a.b"] }, as("whk_not_a_key")), Code.Unauthenticated);

      await rejectsWith(admin.createTenant({ name: `sneaky-${label}` }, key), Code.PermissionDenied, /admin/);
      await rejectsWith(admin.createApiKey({ tenantId, admin: true }, key), Code.PermissionDenied);
      await rejectsWith(admin.listTenants({}, key), Code.PermissionDenied);
      await rejectsWith(admin.listAuditLog({ tenantId }, key), Code.PermissionDenied);
      await rejectsWith(webhooks.listWebhooks({}, as(tenantKey, otherTenantId)), Code.PermissionDenied, /x-tenant-id/);

      // Another tenant's webhook does not exist for this one.
      const other = as(otherKey);
      await rejectsWith(webhooks.getWebhook({ webhookId }, other), Code.NotFound);
      await rejectsWith(webhooks.updateWebhook({ webhookId, status: "paused" }, other), Code.NotFound);
      await rejectsWith(webhooks.rotateWebhookSecret({ webhookId }, other), Code.NotFound);
      await rejectsWith(webhooks.deleteWebhook({ webhookId }, other), Code.NotFound);
      await rejectsWith(webhooks.getWebhook({ webhookId }, asAdmin), Code.NotFound, undefined);
      assert.deepEqual(await counts(), before);

      // An admin naming the tenant reaches it.
      const viaAdmin = await webhooks.getWebhook({ webhookId }, as(TEST_ADMIN_KEY, tenantId));
      assert.equal(viaAdmin.webhook!.webhookId, webhookId);
      assert.equal((await webhooks.getWebhook({ webhookId }, key)).webhook!.status, "active");
    });

    test("a revoked key is refused at once", async () => {
      const extra = await admin.createApiKey({ tenantId, admin: false }, asAdmin);
      // Used once, so the authenticator has it cached.
      await webhooks.listWebhooks({}, as(extra.key));
      await rejectsWith(admin.revokeApiKey({ keyId: extra.apiKey!.keyId }, as(tenantKey)), Code.PermissionDenied);
      const revoked = await admin.revokeApiKey({ keyId: extra.apiKey!.keyId }, asAdmin);
      assert.ok(revoked.apiKey!.revokedAt);
      assert.equal(revoked.apiKey!.keyId, extra.apiKey!.keyId);
      await rejectsWith(webhooks.listWebhooks({}, as(extra.key)), Code.Unauthenticated, /revoked/);
      await rejectsWith(webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: ["a.b"] }, as(extra.key)), Code.Unauthenticated);
      await rejectsWith(admin.revokeApiKey({ keyId: "key_00000000000000000000000000" }, asAdmin), Code.NotFound);
      await rejectsWith(admin.revokeApiKey({ keyId: "nonsense" }, asAdmin), Code.NotFound);
      // The other keys still work.
      await webhooks.listWebhooks({}, as(tenantKey));
    });

    test("the audit log holds every change, page by page", async () => {
      const entries = [];
      let pageToken = "";
      do {
        const page = await admin.listAuditLog({ tenantId, pageSize: 3, pageToken }, asAdmin);
        assert.ok(page.entries.length <= 3);
        // Refused calls are audited too (auth.failure); this test is about the changes.
        entries.push(...page.entries.filter((e) => e.action !== "auth.failure"));
        pageToken = page.nextPageToken;
      } while (pageToken);
      const actions = entries.map((e) => e.action);
      assert.deepEqual(actions, [
        "tenant.create",
        "api_key.create",
        "webhook.create",
        "webhook.create",
        "webhook.create",
        "webhook.create",
        "webhook.create",
        "webhook.update",
        "webhook.update",
        "webhook.rotate_secret",
        "webhook.delete",
        "api_key.create",
        "api_key.revoke",
      ]);
      assert.equal(entries[0]!.resourceId, tenantId);
      assert.equal(entries[1]!.resourceId, tenantKeyId);
      assert.equal(entries[2]!.resourceId, webhookId);
      assert.equal(entries[2]!.actor, tenantKeyId);
      assert.equal(entries[0]!.actor, "bootstrap");
      assert.ok(entries.every((e) => e.tenantId === tenantId));
      assert.ok(entries.every((e) => !e.details.includes("whsec_")));
      assert.deepEqual(JSON.parse(entries[2]!.details).event_types, ["document.created", "invoice.*"]);
      await rejectsWith(admin.listAuditLog({ tenantId: "ten_doesnotexist0000" }, asAdmin), Code.NotFound, /tenant/);
    });
  });
}

describe("other doors", () => {
  test("gRPC-Web answers a call", async () => {
    const transport = createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" });
    const webhooks = createClient(WebhookService, transport);
    const created = await webhooks.createWebhook({ url: PUBLIC_URL, eventTypes: ["grpc.web"] }, asAdmin);
    assert.match(created.secret, /^whsec_/);
    const got = await webhooks.getWebhook({ webhookId: created.webhook!.webhookId }, asAdmin);
    assert.deepEqual(got.webhook!.eventTypes, ["grpc.web"]);
    await rejectsWith(webhooks.getWebhook({ webhookId: created.webhook!.webhookId }), Code.Unauthenticated);
  });

  test("Connect JSON on the wire uses the proto JSON names", async () => {
    const res = await fetch(`${server.url}/webhook.v1.WebhookService/CreateWebhook`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TEST_ADMIN_KEY}` },
      body: JSON.stringify({ url: PUBLIC_URL, eventTypes: ["wire.json"] }),
    });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { webhook: { webhookId: string; eventTypes: string[]; status: string }; secret: string };
    assert.match(body.webhook.webhookId, /^wh_/);
    assert.deepEqual(body.webhook.eventTypes, ["wire.json"]);
    assert.equal(body.webhook.status, "active");
    assert.match(body.secret, /^whsec_/);

    const bad = await fetch(`${server.url}/webhook.v1.WebhookService/CreateWebhook`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TEST_ADMIN_KEY}` },
      body: JSON.stringify({ url: PUBLIC_URL, eventTypes: [] }),
    });
    assert.equal(bad.status, 400);
    const error = (await bad.json()) as { code: string; message: string };
    assert.equal(error.code, "invalid_argument");
    assert.match(error.message, /event type/);
  });

  test("Connect JSON with a field the API does not know is refused, as REST refuses it, and publishes nothing", async () => {
    // A misplaced idempotency key: dropped, the retry that was to be idempotent made a second event.
    const publish = () =>
      fetch(`${server.url}/webhook.v1.EventService/PublishEvents`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${TEST_ADMIN_KEY}` },
        body: JSON.stringify({ events: [{ eventType: "unknown.field", payload: { order: 42 } }], idempotencyKey: "order-42" }),
      });
    for (let i = 0; i < 2; i++) {
      const res = await publish();
      assert.equal(res.status, 400);
      const error = (await res.json()) as { code: string; message: string };
      assert.equal(error.code, "invalid_argument");
      assert.match(error.message, /idempotencyKey/);
    }
    const { rows } = await pool.query("select count(*)::int as n from events where event_type = 'unknown.field'");
    assert.equal(rows[0].n, 0);
  });

  test("a CORS preflight answers 204 with the allowed origin, methods and headers", async () => {
    for (const path of ["/webhook.v1.WebhookService/CreateWebhook", "/webhooks"]) {
      const res = await fetch(`${server.url}${path}`, {
        method: "OPTIONS",
        headers: {
          origin: "https://console.example.com",
          "access-control-request-method": "POST",
          "access-control-request-headers": "authorization, content-type, connect-protocol-version",
        },
      });
      assert.equal(res.status, 204, path);
      assert.equal(res.headers.get("access-control-allow-origin"), "*");
      assert.match(res.headers.get("access-control-allow-methods") ?? "", /POST/);
      const allowed = (res.headers.get("access-control-allow-headers") ?? "").toLowerCase();
      for (const h of ["authorization", "content-type", "connect-protocol-version", "x-tenant-id"]) assert.ok(allowed.includes(h), `${h} in ${allowed}`);
    }
    // The actual cross-origin call carries the header too.
    const res = await fetch(`${server.url}/webhooks`, { headers: { origin: "https://console.example.com", authorization: `Bearer ${TEST_ADMIN_KEY}` } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), "*");
  });
});
