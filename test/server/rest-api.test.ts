// The REST API against a real Postgres: every call through fetch, every refusal checked for its
// status, its error body, and for having written nothing.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import pg from "pg";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AdminService } from "../../gen/webhook/v1/admin_pb.js";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY, TEST_ENCRYPTION_KEY } from "../support/app.js";
import { SecretBox } from "../../src/core/secret-box.js";

type Rest = ReturnType<typeof restClient>;
type App = Awaited<ReturnType<typeof startTestApp>>;

const WEBHOOK_ID = /^wh_[0-9a-z]{26}$/;
const SECRET = /^whsec_[A-Za-z0-9+/]+={0,2}$/;
const PUBLIC_URL = "https://93.184.216.34/hook";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let pool: pg.Pool;
/** Test defaults: http allowed, 127.0.0.0/8 exempted. */
let main: App;
/** Production defaults: https only, no exemptions; made-up names answered by `fakeDns`. */
let strict: App;
let admin: Rest;
let adminRpc: Client<typeof AdminService>;

const fakeDns: Record<string, { address: string; family: number }[]> = {
  "internal.example.test": [{ address: "10.1.2.3", family: 4 }],
  "mixed.example.test": [
    { address: "93.184.216.34", family: 4 },
    { address: "192.168.7.7", family: 4 },
  ],
  "v6internal.example.test": [{ address: "fd12::1", family: 6 }],
  "public.example.test": [{ address: "93.184.216.34", family: 4 }],
};

const asAdmin = { headers: { authorization: `Bearer ${TEST_ADMIN_KEY}` } };

async function counts(): Promise<{ webhooks: number; audit: number; keys: number; tenants: number }> {
  const { rows } = await pool.query(
    `select (select count(*) from webhooks)::int as webhooks, (select count(*) from audit_log where action <> 'auth.failure')::int as audit,
            (select count(*) from api_keys)::int as keys, (select count(*) from tenants)::int as tenants`,
  );
  return rows[0];
}

/** Sends a bad request and checks the 400, its body, that the message names the problem, and that nothing was written. */
async function refused(client: Rest, method: string, path: string, body: unknown, message: RegExp) {
  const before = await counts();
  const res = await client(method, path, body);
  assert.equal(res.status, 400, `${method} ${path} ${JSON.stringify(body)} → ${res.status} ${JSON.stringify(res.body)}`);
  assert.equal(res.body?.error?.code, "invalid_argument", JSON.stringify(res.body));
  assert.equal(typeof res.body.error.message, "string");
  assert.match(res.body.error.message, message);
  assert.deepEqual(Object.keys(res.body), ["error"]);
  assert.deepEqual(await counts(), before, `nothing is written for ${JSON.stringify(body)}`);
  return res.body.error.message as string;
}

async function createWebhook(client: Rest, body: Record<string, unknown> = {}) {
  const res = await client("POST", "/webhooks", { url: PUBLIC_URL, event_types: ["document.created"], ...body });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body as { webhook_id: string; secret: string; status: string; url: string; event_types: string[] };
}

async function listAll(client: Rest, pageSize: number): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let token: string | undefined;
  let pages = 0;
  do {
    const query = `?page_size=${pageSize}${token ? `&page_token=${encodeURIComponent(token)}` : ""}`;
    const res = await client("GET", `/webhooks${query}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.ok(res.body.webhooks.length <= pageSize);
    ids.push(...res.body.webhooks.map((w: { webhook_id: string }) => w.webhook_id));
    token = res.body.next_page_token;
    pages += 1;
    assert.ok(pages < 100, "pagination terminates");
  } while (token);
  return { ids, pages };
}

async function auditFor(tenantId: string) {
  const entries = [];
  let pageToken = "";
  do {
    const res = await adminRpc.listAuditLog({ tenantId, pageSize: 100, pageToken }, asAdmin);
    entries.push(...res.entries);
    pageToken = res.nextPageToken;
  } while (pageToken);
  return entries;
}

async function newTenant(name: string) {
  const { tenant } = await adminRpc.createTenant({ name }, asAdmin);
  const { key, apiKey } = await adminRpc.createApiKey({ tenantId: tenant!.tenantId, admin: false }, asAdmin);
  return { id: tenant!.tenantId, key, keyId: apiKey!.keyId };
}

before(async () => {
  db = await createTestDatabase("rest");
  main = await startTestApp({ DATABASE_URL: db.url }, ["api"]);
  strict = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_ALLOW_HTTP: "false", WEBHOOKD_ALLOWED_CIDRS: "" }, ["api"], {
    resolve: async (hostname) => {
      const answer = fakeDns[hostname];
      if (!answer) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" });
      return answer;
    },
  });
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  admin = restClient(main.url, TEST_ADMIN_KEY);
  adminRpc = createClient(AdminService, createConnectTransport({ baseUrl: main.url, httpVersion: "1.1" }));
});

after(async () => {
  await strict?.app.stop();
  await main?.app.stop();
  await pool?.end();
  await db?.drop();
});

describe("webhook lifecycle", () => {
  test("create answers 201 with a wh_ id, status active and a whsec_ secret", async () => {
    const res = await admin("POST", "/webhooks", { url: PUBLIC_URL, event_types: ["document.created", "invoice.*"], description: "docs" });
    assert.equal(res.status, 201);
    assert.match(res.body.webhook_id, WEBHOOK_ID);
    assert.equal(res.body.status, "active");
    assert.match(res.body.secret, SECRET);
    assert.ok(Buffer.from(res.body.secret.slice("whsec_".length), "base64").length >= 24, "secret has at least 192 bits");
    assert.equal(res.body.url, PUBLIC_URL);
    assert.deepEqual(res.body.event_types, ["document.created", "invoice.*"]);
    assert.equal(res.body.description, "docs");
    assert.ok(!Number.isNaN(Date.parse(res.body.created_at)));
  });

  test("create keeps the normalised URL and drops duplicate event types", async () => {
    const res = await admin("POST", "/webhooks", { url: "HTTPS://Example.COM:443/a/../hook", event_types: ["a.b", "a.b", "*"] });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.url, "https://example.com/hook");
    assert.deepEqual(res.body.event_types, ["a.b", "*"]);
  });

  test("get shows the webhook without its secret", async () => {
    const created = await createWebhook(admin, { description: "get me" });
    const res = await admin("GET", `/webhooks/${created.webhook_id}`);
    assert.equal(res.status, 200);
    assert.equal(res.body.webhook_id, created.webhook_id);
    assert.equal(res.body.url, PUBLIC_URL);
    assert.deepEqual(res.body.event_types, ["document.created"]);
    assert.equal(res.body.status, "active");
    assert.equal(res.body.description, "get me");
    assert.ok(!Number.isNaN(Date.parse(res.body.created_at)));
    assert.ok(!("secret" in res.body));
    assert.ok(!("signing_secrets" in res.body));
    assert.ok(!JSON.stringify(res.body).includes(created.secret), "the secret appears nowhere in the answer");
    assert.ok(!JSON.stringify(res.body).includes("whsec_"));
  });

  test("get of an unknown or malformed id is 404 not_found", async () => {
    for (const id of ["wh_00000000000000000000000000", "wh_nope", "nothing", "evt_0000000000000000000000000a"]) {
      const res = await admin("GET", `/webhooks/${id}`);
      assert.equal(res.status, 404, id);
      assert.equal(res.body.error.code, "not_found");
      assert.match(res.body.error.message, /webhook/);
    }
  });

  test("list pages through every webhook exactly once", async () => {
    const tenant = await newTenant("paging");
    const client = restClient(main.url, tenant.key);
    const created: string[] = [];
    for (let i = 0; i < 7; i++) created.push((await createWebhook(client, { description: `n${i}` })).webhook_id);

    const { ids, pages } = await listAll(client, 3);
    assert.equal(pages, 3);
    assert.deepEqual([...ids].sort(), [...created].sort());
    assert.equal(new Set(ids).size, ids.length, "no id twice");
    assert.deepEqual(ids, created, "ids come back in creation order");

    // A page size that divides the count exactly ends without an empty page.
    const exact = await client("GET", "/webhooks?page_size=7");
    assert.equal(exact.body.webhooks.length, 7);
    assert.equal(exact.body.next_page_token, undefined);

    // The default page holds them all, and no one else's.
    const all = await client("GET", "/webhooks");
    assert.equal(all.status, 200);
    assert.deepEqual(all.body.webhooks.map((w: { webhook_id: string }) => w.webhook_id), created);
    assert.equal(all.body.next_page_token, undefined);
    assert.ok(all.body.webhooks.every((w: Record<string, unknown>) => !("secret" in w)));
  });

  test("update changes url, event types, status and description", async () => {
    const created = await createWebhook(admin, { description: "before" });
    const path = `/webhooks/${created.webhook_id}`;

    let res = await admin("PUT", path, { url: "https://hooks.example.com/v2", event_types: ["order.*", "user.created"] });
    assert.equal(res.status, 200);
    assert.equal(res.body.status, "updated");
    res = await admin("GET", path);
    assert.equal(res.body.url, "https://hooks.example.com/v2");
    assert.deepEqual(res.body.event_types, ["order.*", "user.created"]);
    assert.equal(res.body.description, "before", "fields not sent are kept");

    res = await admin("PUT", path, { status: "paused" });
    assert.deepEqual([res.status, res.body.status], [200, "updated"]);
    assert.equal((await admin("GET", path)).body.status, "paused");

    res = await admin("PUT", path, { status: "active", description: "after" });
    assert.deepEqual([res.status, res.body.status], [200, "updated"]);
    res = await admin("GET", path);
    assert.equal(res.body.status, "active");
    assert.equal(res.body.description, "after");
    assert.equal(res.body.url, "https://hooks.example.com/v2");

    res = await admin("PUT", "/webhooks/wh_00000000000000000000000000", { status: "paused" });
    assert.equal(res.status, 404);
    assert.equal(res.body.error.code, "not_found");
  });

  test("delete answers deleted, then the webhook is gone", async () => {
    const created = await createWebhook(admin);
    const path = `/webhooks/${created.webhook_id}`;
    const res = await admin("DELETE", path);
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, { status: "deleted" });

    for (const [method, p, body] of [
      ["GET", path, undefined],
      ["PUT", path, { status: "active" }],
      ["DELETE", path, undefined],
      ["POST", `${path}/rotate-secret`, undefined],
    ] as const) {
      const again = await admin(method, p, body);
      assert.equal(again.status, 404, `${method} ${p}`);
      assert.equal(again.body.error.code, "not_found");
    }
    const { ids } = await listAll(admin, 100);
    assert.ok(!ids.includes(created.webhook_id));
  });

  test("rotate-secret returns a new whsec_ secret", async () => {
    const created = await createWebhook(admin);
    const res = await admin("POST", `/webhooks/${created.webhook_id}/rotate-secret`);
    assert.equal(res.status, 200);
    assert.match(res.body.secret, SECRET);
    assert.notEqual(res.body.secret, created.secret);
    const again = await admin("POST", `/webhooks/${created.webhook_id}/rotate-secret`);
    assert.notEqual(again.body.secret, res.body.secret);
    // Both secrets are kept for signing (the old one until its grace ends), sealed, and neither is shown.
    const { rows } = await pool.query("select signing_secrets from webhooks where id = $1", [created.webhook_id]);
    const box = SecretBox.fromEncodedKey(TEST_ENCRYPTION_KEY);
    const secrets = (rows[0].signing_secrets as { secret: string; expires_at: string | null }[]).map((s) => ({
      secret: box.open(s.secret, created.webhook_id),
      expires_at: s.expires_at,
    }));
    assert.equal(secrets[0]!.secret, again.body.secret);
    assert.equal(secrets[0]!.expires_at, null);
    assert.ok(secrets.some((s) => s.secret === created.secret && s.expires_at !== null));

    // Rotated again and again within the grace period: the current secret and the newest three before it
    // sign, the older ones are dropped, so the signature header stays a few hundred bytes.
    const issued = [created.secret, res.body.secret, again.body.secret];
    for (let i = 0; i < 4; i++) issued.push((await admin("POST", `/webhooks/${created.webhook_id}/rotate-secret`)).body.secret);
    const after = await pool.query("select signing_secrets from webhooks where id = $1", [created.webhook_id]);
    const kept = (after.rows[0].signing_secrets as { secret: string }[]).map((s) => box.open(s.secret, created.webhook_id));
    assert.deepEqual(kept, issued.slice(-4).reverse());
  });

  test("unknown routes are 404 and wrong methods 405, both with an error body", async () => {
    let res = await admin("GET", "/webhooks/wh_00000000000000000000000000/nothing");
    assert.equal(res.status, 404);
    assert.equal(res.body.error.code, "not_found");
    res = await admin("PATCH", "/webhooks");
    assert.equal(res.status, 405);
    assert.match(res.body.error.message, /GET|POST/);
  });
});

describe("bad input is 400 invalid_argument, names the problem, and writes nothing", () => {
  test("bodies that are not a JSON object", async () => {
    await refused(admin, "POST", "/webhooks", "{not json", /not valid JSON/);
    await refused(admin, "POST", "/webhooks", '{"url": "https://example.com/"', /not valid JSON/);
    await refused(admin, "POST", "/webhooks", "[1, 2]", /must be a JSON object/);
    await refused(admin, "POST", "/webhooks", '"https://example.com/"', /must be a JSON object/);
    await refused(admin, "POST", "/webhooks", "null", /must be a JSON object/);
    await refused(admin, "POST", "/webhooks", "42", /must be a JSON object/);
    await refused(admin, "POST", "/webhooks", "", /empty/);
  });

  test("missing or mistyped fields, unknown fields", async () => {
    await refused(admin, "POST", "/webhooks", { event_types: ["a.b"] }, /url is required/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL }, /event_types is required/);
    await refused(admin, "POST", "/webhooks", { url: 42, event_types: ["a.b"] }, /url must be a string/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: "a.b" }, /event_types must be an array/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: [1] }, /event_types must be an array of strings/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"], ordered_by_key: "yes" }, /ordered_by_key/);
    const message = await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"], secret: "whsec_x", tenant_id: "t" }, /unknown fields/);
    assert.match(message, /secret/);
    assert.match(message, /tenant_id/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"], description: "x".repeat(1001) }, /description/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"], rate_limit_per_second: -1 }, /rate_limit_per_second/);
    await refused(admin, "POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"], rate_limit_per_second: 1e-9 }, /rate_limit_per_second must be 0 \(no limit\) or between 0\.001 and 10000 \(got 1e-9\)/);
  });

  test("a batch's errors name the event they are about", async () => {
    const batch = (bad: Record<string, unknown>) => ({ events: [{ event_type: "a.b" }, { event_type: "a.b" }, bad] });
    await refused(admin, "POST", "/events/batch", batch({}), /^events\[2\]\.event_type is required$/);
    await refused(admin, "POST", "/events/batch", batch({ event_type: 7 }), /^events\[2\]\.event_type must be a string$/);
    await refused(admin, "POST", "/events/batch", batch({ event_type: "a.b", idempotency_key: 7 }), /^events\[2\]\.idempotency_key must be a string$/);
    await refused(admin, "POST", "/events/batch", batch({ event_type: "a.b", idempotencykey: "k" }), /^events\[2\]\.unknown field idempotencykey/);
    await refused(admin, "POST", "/events/batch", batch({ event_type: "a.b", payload: [] }), /^events\[2\]\.payload must be a JSON object$/);
    await refused(admin, "POST", "/events", { event_type: 7 }, /^event_type must be a string$/);
  });

  test("urls that do not parse, or carry credentials or a fragment", async () => {
    const create = (url: unknown) => ({ url, event_types: ["a.b"] });
    await refused(admin, "POST", "/webhooks", create(""), /url is required/);
    await refused(admin, "POST", "/webhooks", create("not a url"), /not a valid absolute URL/);
    await refused(admin, "POST", "/webhooks", create("example.com/hook"), /not a valid absolute URL/);
    await refused(admin, "POST", "/webhooks", create("https://"), /not a valid absolute URL/);
    await refused(admin, "POST", "/webhooks", create("ftp://example.com/hook"), /url must use http or https/);
    await refused(admin, "POST", "/webhooks", create("https://user:pass@example.com/hook"), /username or password/);
    await refused(admin, "POST", "/webhooks", create("https://user@example.com/hook"), /username or password/);
    await refused(admin, "POST", "/webhooks", create("https://example.com/hook#part"), /fragment/);
    await refused(admin, "POST", "/webhooks", create(`https://example.com/${"a".repeat(2100)}`), /too long/);
  });

  test("http:// is refused when WEBHOOKD_ALLOW_HTTP is false", async () => {
    const strictAdmin = restClient(strict.url, TEST_ADMIN_KEY);
    const message = await refused(strictAdmin, "POST", "/webhooks", { url: "http://93.184.216.34/hook", event_types: ["a.b"] }, /url must use https/);
    assert.match(message, /http:/);
    // The same URL over https is accepted by that server.
    const ok = await strictAdmin("POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"] });
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    // And the test server, which allows http, takes it.
    const lenient = await admin("POST", "/webhooks", { url: "http://93.184.216.34/hook", event_types: ["a.b"] });
    assert.equal(lenient.status, 201, JSON.stringify(lenient.body));
  });

  test("private, link-local and mapped addresses in several spellings", async () => {
    const create = (url: string) => ({ url, event_types: ["a.b"] });
    // Outside 127.0.0.0/8, so refused even by the test server that exempts loopback.
    const cases: [string, RegExp][] = [
      ["https://10.0.0.1/", /10\.0\.0\.1.*private range/],
      ["https://10.255.255.254:8443/hook", /10\.255\.255\.254.*private range/],
      ["https://172.16.5.4/", /private range/],
      ["https://192.168.1.1/", /192\.168\.1\.1.*private range/],
      ["https://0xc0.0xa8.1.1/", /192\.168\.1\.1.*private range/],
      ["https://012.0.0.1/", /10\.0\.0\.1.*private range/],
      ["https://167772161/", /10\.0\.0\.1.*private range/],
      ["https://169.254.169.254/", /169\.254\.169\.254.*link-local/],
      ["https://169.254.169.254./latest/meta-data", /link-local/],
      ["https://[::ffff:10.0.0.1]/", /10\.0\.0\.1.*private range/],
      ["https://[::ffff:a00:1]/", /10\.0\.0\.1.*private range/],
      ["https://[::ffff:169.254.169.254]/", /link-local/],
      ["https://[fd00::1]/", /unique local/],
      ["https://[fe80::1]/", /link-local/],
      ["https://100.64.0.1/", /carrier-grade NAT/],
      ["https://0.0.0.0/", /unspecified/],
      ["https://metadata.google.internal/", /metadata/],
    ];
    for (const [url, reason] of cases) {
      const message = await refused(admin, "POST", "/webhooks", create(url), reason);
      assert.match(message, /^url/, `${url}: the message says the url is the problem`);
    }
  });

  test("loopback in several spellings, refused without the test exemption", async () => {
    const strictAdmin = restClient(strict.url, TEST_ADMIN_KEY);
    const create = (url: string) => ({ url, event_types: ["a.b"] });
    const cases: [string, RegExp][] = [
      ["https://127.0.0.1/", /127\.0\.0\.1.*loopback/],
      ["https://[::1]/", /::1.*loopback/],
      ["https://[0:0:0:0:0:0:0:1]:8443/", /loopback/],
      ["https://0x7f.1/", /127\.0\.0\.1.*loopback/],
      ["https://2130706433/", /127\.0\.0\.1.*loopback/],
      ["https://0177.0.0.1/", /127\.0\.0\.1.*loopback/],
      ["https://127.1/", /127\.0\.0\.1.*loopback/],
      ["https://[::ffff:127.0.0.1]/", /127\.0\.0\.1.*loopback/],
      ["https://localhost/", /local machine/],
      ["https://LOCALHOST.:8443/", /local machine/],
      ["https://api.localhost/", /local machine/],
      ["https://router.local/", /internal name/],
      ["https://intranet/", /single-label/],
    ];
    for (const [url, reason] of cases) await refused(strictAdmin, "POST", "/webhooks", create(url), reason);
  });

  test("a name that resolves to a private address is refused at registration", async () => {
    const strictAdmin = restClient(strict.url, TEST_ADMIN_KEY);
    const create = (url: string) => ({ url, event_types: ["a.b"] });
    await refused(strictAdmin, "POST", "/webhooks", create("https://internal.example.test/hook"), /internal\.example\.test resolves to 10\.1\.2\.3/);
    await refused(strictAdmin, "POST", "/webhooks", create("https://mixed.example.test/hook"), /192\.168\.7\.7/);
    await refused(strictAdmin, "POST", "/webhooks", create("https://v6internal.example.test/hook"), /fd12::1/);
    // A public answer, and a name that does not resolve (yet), are accepted: delivery checks again.
    for (const url of ["https://public.example.test/hook", "https://unresolvable.example.test/hook"]) {
      const ok = await strictAdmin("POST", "/webhooks", create(url));
      assert.equal(ok.status, 201, `${url}: ${JSON.stringify(ok.body)}`);
    }
  });

  test("bad event types", async () => {
    const create = (event_types: unknown) => ({ url: PUBLIC_URL, event_types });
    await refused(admin, "POST", "/webhooks", create([]), /at least one event type/);
    const fiftyOne = Array.from({ length: 51 }, (_, i) => `type.n${i}`);
    await refused(admin, "POST", "/webhooks", create(fiftyOne), /51.*at most 50/);
    await refused(admin, "POST", "/webhooks", create(["a..b"]), /"a\.\.b" has an empty segment/);
    await refused(admin, "POST", "/webhooks", create(["ok.one", "*.a"]), /event_types\[1\].*"\*\.a".*misplaced/);
    await refused(admin, "POST", "/webhooks", create(["a.*.b"]), /"a\.\*\.b".*misplaced/);
    await refused(admin, "POST", "/webhooks", create(["a*"]), /misplaced/);
    await refused(admin, "POST", "/webhooks", create([""]), /must not be empty/);
    await refused(admin, "POST", "/webhooks", create(["a b"]), /invalid segment/);
    await refused(admin, "POST", "/webhooks", create([".*"]), /empty prefix/);
    // 50 distinct types are fine, and 51 entries with a repeat count as 50.
    const fifty = fiftyOne.slice(0, 50);
    const ok = await admin("POST", "/webhooks", create([...fifty, fifty[0]]));
    assert.equal(ok.status, 201, JSON.stringify(ok.body));
    assert.equal(ok.body.event_types.length, 50);
  });

  test("bad updates leave the webhook as it was", async () => {
    const created = await createWebhook(admin, { description: "keep" });
    const path = `/webhooks/${created.webhook_id}`;
    const before = (await admin("GET", path)).body;
    await refused(admin, "PUT", path, "{oops", /not valid JSON/);
    await refused(admin, "PUT", path, "[]", /must be a JSON object/);
    await refused(admin, "PUT", path, { status: "deleted" }, /status must be "active" or "paused".*deleted/);
    await refused(admin, "PUT", path, { status: "disabled" }, /status must be/);
    await refused(admin, "PUT", path, { status: "" }, /status must be/);
    await refused(admin, "PUT", path, { status: 1 }, /status must be a string/);
    await refused(admin, "PUT", path, { event_types: [] }, /event_types must not be empty/);
    await refused(admin, "PUT", path, { event_types: ["a..b"] }, /empty segment/);
    await refused(admin, "PUT", path, { url: "https://10.0.0.1/" }, /private range/);
    await refused(admin, "PUT", path, { url: "nope" }, /not a valid absolute URL/);
    await refused(admin, "PUT", path, { description: "ok", colour: "blue" }, /unknown field colour/);
    // A valid change beside an invalid one is not applied either.
    await refused(admin, "PUT", path, { description: "changed", status: "gone" }, /status must be/);
    assert.deepEqual((await admin("GET", path)).body, before);
  });

  test("bad paging parameters", async () => {
    await refused(admin, "GET", "/webhooks?page_size=1000", undefined, /page_size must be between 1 and 100.*1000/);
    await refused(admin, "GET", "/webhooks?page_size=101", undefined, /page_size/);
    await refused(admin, "GET", "/webhooks?page_size=-1", undefined, /page_size/);
    await refused(admin, "GET", "/webhooks?page_size=abc", undefined, /page_size/);
    await refused(admin, "GET", "/webhooks?page_size=2.5", undefined, /page_size/);
    await refused(admin, "GET", "/webhooks?page_token=garbage!", undefined, /page_token/);
    await refused(admin, "GET", `/webhooks?page_token=${Buffer.from("not an id").toString("base64url")}`, undefined, /page_token/);
    const ok = await admin("GET", "/webhooks?page_size=100");
    assert.equal(ok.status, 200);
  });
});

describe("authentication and tenants", () => {
  let a: Awaited<ReturnType<typeof newTenant>>;
  let b: Awaited<ReturnType<typeof newTenant>>;
  let restA: Rest;
  let restB: Rest;

  before(async () => {
    a = await newTenant("tenant-a");
    b = await newTenant("tenant-b");
    restA = restClient(main.url, a.key);
    restB = restClient(main.url, b.key);
  });

  test("no header, a malformed header or a wrong key is 401", async () => {
    const created = await createWebhook(admin);
    for (const path of ["/webhooks", `/webhooks/${created.webhook_id}`]) {
      const none = await fetch(`${main.url}${path}`);
      assert.equal(none.status, 401);
      const body = (await none.json()) as { error: { code: string; message: string } };
      assert.equal(body.error.code, "unauthenticated");
      assert.match(body.error.message, /Authorization/);
    }
    const malformed = await fetch(`${main.url}/webhooks`, { headers: { authorization: TEST_ADMIN_KEY } });
    assert.equal(malformed.status, 401);
    const wrong = await restClient(main.url, "whk_wrong")("GET", "/webhooks");
    assert.equal(wrong.status, 401);
    assert.equal(wrong.body.error.code, "unauthenticated");
    assert.match(wrong.body.error.message, /invalid or revoked/);
  });

  test("an unauthenticated write is 401 and writes nothing, whatever its body", async () => {
    const nobody = restClient(main.url, "whk_wrong");
    for (const body of [{ url: PUBLIC_URL, event_types: ["a.b"] }, "{not json", { url: "nope", event_types: [] }]) {
      const before = await counts();
      const res = await nobody("POST", "/webhooks", body);
      assert.equal(res.status, 401, `${JSON.stringify(body)} → ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, "unauthenticated");
      assert.deepEqual(await counts(), before);
    }
    const created = await createWebhook(admin);
    for (const [method, path] of [
      ["PUT", `/webhooks/${created.webhook_id}`],
      ["DELETE", `/webhooks/${created.webhook_id}`],
      ["POST", `/webhooks/${created.webhook_id}/rotate-secret`],
    ] as const) {
      const res = await nobody(method, path, method === "PUT" ? { status: "paused" } : undefined);
      assert.equal(res.status, 401, `${method} ${path}`);
    }
    for (const body of ["{not json", { status: "gone" }, { event_types: [] }]) {
      const res = await nobody("PUT", `/webhooks/${created.webhook_id}`, body);
      assert.equal(res.status, 401, `PUT ${JSON.stringify(body)} → ${JSON.stringify(res.body)}`);
    }
    const after = await admin("GET", `/webhooks/${created.webhook_id}`);
    assert.equal(after.body.status, "active");
  });

  test("a tenant never sees another tenant's webhooks: 404 both ways", async () => {
    const ofA = await createWebhook(restA);
    const ofB = await createWebhook(restB);
    for (const [other, id] of [
      [restB, ofA.webhook_id],
      [restA, ofB.webhook_id],
      [admin, ofA.webhook_id],
    ] as const) {
      const before = await counts();
      for (const [method, path, body] of [
        ["GET", `/webhooks/${id}`, undefined],
        ["PUT", `/webhooks/${id}`, { status: "paused" }],
        ["POST", `/webhooks/${id}/rotate-secret`, undefined],
        ["DELETE", `/webhooks/${id}`, undefined],
      ] as const) {
        const res = await other(method, path, body);
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal(res.body.error.code, "not_found");
      }
      assert.deepEqual(await counts(), before);
    }
    assert.deepEqual((await listAll(restA, 100)).ids, [ofA.webhook_id]);
    assert.deepEqual((await listAll(restB, 100)).ids, [ofB.webhook_id]);
    // Untouched by the attempts above.
    const still = await restA("GET", `/webhooks/${ofA.webhook_id}`);
    assert.equal(still.body.status, "active");
  });

  test("a tenant key naming another tenant in x-tenant-id is 403; its own tenant is fine", async () => {
    const res = await restClient(main.url, a.key, b.id)("GET", "/webhooks");
    assert.equal(res.status, 403);
    assert.equal(res.body.error.code, "permission_denied");
    assert.match(res.body.error.message, /x-tenant-id/);
    const before = await counts();
    const write = await restClient(main.url, a.key, b.id)("POST", "/webhooks", { url: PUBLIC_URL, event_types: ["a.b"] });
    assert.equal(write.status, 403);
    assert.deepEqual(await counts(), before);
    const own = await restClient(main.url, a.key, a.id)("GET", "/webhooks");
    assert.equal(own.status, 200);
  });

  test("an admin key with x-tenant-id acts on that tenant", async () => {
    const adminAsA = restClient(main.url, TEST_ADMIN_KEY, a.id);
    const created = await createWebhook(adminAsA, { description: "made by admin" });
    const seen = await restA("GET", `/webhooks/${created.webhook_id}`);
    assert.equal(seen.status, 200);
    assert.equal(seen.body.description, "made by admin");
    assert.equal((await restB("GET", `/webhooks/${created.webhook_id}`)).status, 404);
    assert.equal((await admin("GET", `/webhooks/${created.webhook_id}`)).status, 404, "without the header, admin acts on default");
    assert.equal((await adminAsA("PUT", `/webhooks/${created.webhook_id}`, { status: "paused" })).status, 200);
    assert.equal((await restA("GET", `/webhooks/${created.webhook_id}`)).body.status, "paused");
    const ids = (await listAll(adminAsA, 100)).ids;
    assert.ok(ids.includes(created.webhook_id));
    const { rows } = await pool.query("select tenant_id from webhooks where id = $1", [created.webhook_id]);
    assert.equal(rows[0].tenant_id, a.id);

    const unknown = await restClient(main.url, TEST_ADMIN_KEY, "ten_doesnotexist0000")("GET", "/webhooks");
    assert.equal(unknown.status, 404);
    assert.match(unknown.body.error.message, /tenant/);
  });

  test("an admin key made for another tenant acts on default without x-tenant-id, and on its own tenant only when named", async () => {
    const { key } = await adminRpc.createApiKey({ tenantId: a.id, admin: true }, asAdmin);
    const created = await createWebhook(restClient(main.url, key));
    const { rows } = await pool.query("select tenant_id from webhooks where id = $1", [created.webhook_id]);
    assert.deepEqual(rows, [{ tenant_id: "default" }]);
    assert.equal((await admin("GET", `/webhooks/${created.webhook_id}`)).status, 200, "the bootstrap admin key sees it in default");
    assert.equal((await restA("GET", `/webhooks/${created.webhook_id}`)).status, 404);
    const named = await createWebhook(restClient(main.url, key, a.id));
    assert.equal((await restA("GET", `/webhooks/${named.webhook_id}`)).status, 200);
  });

  test("the audit log records every change with its actor", async () => {
    const t = await newTenant("audited");
    const rest = restClient(main.url, t.key);
    const created = await createWebhook(rest);
    const id = created.webhook_id;
    assert.equal((await rest("PUT", `/webhooks/${id}`, { status: "paused" })).status, 200);
    assert.equal((await rest("POST", `/webhooks/${id}/rotate-secret`)).status, 200);
    assert.equal((await rest("DELETE", `/webhooks/${id}`)).status, 200);
    const adminKey = await adminRpc.createApiKey({ tenantId: t.id, admin: true }, asAdmin);

    const entries = await auditFor(t.id);
    const actions = entries.map((e) => [e.action, e.resourceId, e.actor]);
    assert.deepEqual(actions, [
      ["tenant.create", t.id, "bootstrap"],
      ["api_key.create", t.keyId, "bootstrap"],
      ["webhook.create", id, t.keyId],
      ["webhook.update", id, t.keyId],
      ["webhook.rotate_secret", id, t.keyId],
      ["webhook.delete", id, t.keyId],
      ["api_key.create", adminKey.apiKey!.keyId, "bootstrap"],
    ]);
    assert.ok(entries.every((e) => e.tenantId === t.id && e.createdAt));
    const update = JSON.parse(entries[3]!.details);
    assert.equal(update.status, "paused");
    const create = JSON.parse(entries[2]!.details);
    assert.equal(create.url, PUBLIC_URL);
    // No secret is ever written into the log.
    const all = JSON.stringify(entries.map((e) => e.details));
    assert.ok(!all.includes("whsec_"));
    assert.ok(!all.includes(t.key) && !all.includes(adminKey.key));
  });

  test("API keys are stored hashed, never in plain text", async () => {
    const t = await newTenant("hashed");
    const { rows } = await pool.query("select * from api_keys");
    assert.ok(rows.length >= 2);
    const dump = JSON.stringify(rows);
    assert.ok(!dump.includes(t.key), "the plaintext key is nowhere in api_keys");
    assert.ok(!dump.includes(TEST_ADMIN_KEY));
    const row = rows.find((r) => r.id === t.keyId);
    assert.equal(row.key_hash, createHash("sha256").update(t.key).digest("hex"));
    assert.equal(row.tenant_id, t.id);
    assert.equal(row.admin, false);
    // And the key works.
    assert.equal((await restClient(main.url, t.key)("GET", "/webhooks")).status, 200);
    const audit = await pool.query("select details::text as d from audit_log");
    assert.ok(audit.rows.every((r) => !r.d.includes(t.key)));
  });
});

describe("event bodies: the payload limit is on the payload, however the client spells its JSON", () => {
  /** JSON with every character past ASCII written as \uXXXX, as Python's json.dumps writes it by default. */
  const asciiOnly = (json: string) => json.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
  /** JSON with every character of every string (none holds an escape here) written as \uXXXX: six bytes a byte. */
  const allEscaped = (json: string) => json.replace(/"((?:[^"\\]|\\.)*)"/g, (_, text: string) => `"${[...text].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`).join("")}"`);
  const eventCount = async () => (await pool.query("select count(*)::int as n from events")).rows[0].n as number;

  test("POST /events takes a payload within 256 KB written \\u-escaped or pretty-printed, and stores it as sent", async () => {
    const cjk = { text: "中".repeat(66_660) };
    assert.ok(Buffer.byteLength(JSON.stringify(cjk)) < 200_000);
    const escaped = await admin("POST", "/events", asciiOnly(JSON.stringify({ event_type: "doc.escaped", payload: cjk })));
    assert.equal(escaped.status, 201, JSON.stringify(escaped.body));
    assert.deepEqual((await admin("GET", `/events/${escaped.body.event_id}`)).body.payload, cjk);

    const list = { items: Array.from({ length: 20_000 }, (_, i) => ({ i })) };
    const pretty = JSON.stringify({ event_type: "doc.pretty", payload: list }, null, 8);
    assert.ok(pretty.length > 6 * Buffer.byteLength(JSON.stringify(list)), "pretty-printing may take more than six bytes a byte");
    const res = await admin("POST", "/events", pretty);
    assert.equal(res.status, 201, JSON.stringify(res.body));
  });

  test("the limit is exact on the compact payload: 262144 bytes escaped throughout are taken, one more is refused by name", async () => {
    const payload = (bytes: number) => ({ s: "a".repeat(bytes - JSON.stringify({ s: "" }).length) });
    const atLimit = allEscaped(JSON.stringify({ event_type: "doc.limit", payload: payload(262_144) }));
    assert.ok(atLimit.length > 6 * 262_000);
    const taken = await admin("POST", "/events", atLimit);
    assert.equal(taken.status, 201, JSON.stringify(taken.body));

    const before = await eventCount();
    const over = await admin("POST", "/events", allEscaped(JSON.stringify({ event_type: "doc.limit", payload: payload(262_145) })));
    assert.equal(over.status, 413, JSON.stringify(over.body));
    assert.equal(over.body.error.code, "payload_too_large");
    assert.match(over.body.error.message, /payload is 262145 bytes; the limit is 262144 bytes/);
    assert.equal(await eventCount(), before);
  });

  test("POST /events/batch takes a hundred \\u-escaped payloads that Connect takes", async () => {
    const events = Array.from({ length: 100 }, (_, i) => ({ event_type: "doc.batch", payload: { i, text: "中".repeat(15_000) } }));
    const body = asciiOnly(JSON.stringify({ events }));
    assert.ok(body.length > 8 * 1024 * 1024, `${body.length} bytes`);
    const res = await admin("POST", "/events/batch", body);
    assert.equal(res.status, 201, JSON.stringify(res.body).slice(0, 500));
    assert.equal(res.body.events.length, 100);
  });
});

describe("health", () => {
  test("/healthz is 200 without a key", async () => {
    const res = await fetch(`${main.url}/healthz`);
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { status: "ok" });
  });

  test("/readyz is 200 with its checks", async () => {
    const res = await fetch(`${main.url}/readyz`);
    assert.equal(res.status, 200);
    const body = (await res.json()) as { status: string; checks: Record<string, boolean> };
    assert.equal(body.status, "ready");
    assert.deepEqual(body.checks, { store: true, queue: true });
  });
});
