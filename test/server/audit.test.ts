import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;

before(async () => {
  db = await createTestDatabase("audit");
  server = await startTestApp({ DATABASE_URL: db.url });
});

after(async () => {
  await server?.app.stop();
  await db?.drop();
});

async function auditLog(): Promise<{ action: string; actor: string; details: string }[]> {
  const res = await fetch(`${server.url}/webhook.v1.AdminService/ListAuditLog`, {
    method: "POST",
    headers: { authorization: `Bearer ${TEST_ADMIN_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ pageSize: 100 }),
  });
  assert.equal(res.status, 200);
  return ((await res.json()) as { entries?: { action: string; actor: string; details: string }[] }).entries ?? [];
}

test("auth failures are in the audit log, with a key prefix but never a whole key", async () => {
  const wrongKey = "whk_this-key-does-not-exist-anywhere-0123456789";
  assert.equal((await restClient(server.url, wrongKey)("GET", "/webhooks")).status, 401);
  assert.equal((await fetch(`${server.url}/webhooks`)).status, 401);
  assert.equal((await fetch(`${server.url}/webhooks`, { headers: { authorization: "Basic abc" } })).status, 401);

  let failures: { action: string; actor: string; details: string }[] = [];
  for (let i = 0; i < 50 && failures.length < 3; i++) {
    failures = (await auditLog()).filter((e) => e.action === "auth.failure");
    await new Promise((r) => setTimeout(r, 50));
  }
  const reasons = failures.map((e) => JSON.parse(e.details).reason).sort();
  assert.deepEqual(reasons, ["invalid_key", "malformed", "missing"]);
  const invalid = failures.find((e) => JSON.parse(e.details).reason === "invalid_key")!;
  assert.equal(JSON.parse(invalid.details).key_prefix, wrongKey.slice(0, 8));
  assert.ok(!invalid.details.includes(wrongKey));
  assert.equal(invalid.actor, "anonymous");
});

test("management mutations are audited with who did them", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  const created = await api("POST", "/webhooks", { url: "https://93.184.216.34/audit", event_types: ["a.b"] });
  await api("PUT", `/webhooks/${created.body.webhook_id}`, { status: "paused" });
  await api("POST", `/webhooks/${created.body.webhook_id}/rotate-secret`);
  await api("DELETE", `/webhooks/${created.body.webhook_id}`);
  const actions = (await auditLog()).filter((e) => e.actor === "bootstrap").map((e) => e.action);
  for (const action of ["webhook.create", "webhook.update", "webhook.rotate_secret", "webhook.delete"]) {
    assert.ok(actions.includes(action), `${action} missing from ${actions.join(", ")}`);
  }
});

test("over-limit requests are clear 4xx answers: headers, page size, URL length, event types", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  const huge = await fetch(`${server.url}/webhooks`, { headers: { authorization: `Bearer ${TEST_ADMIN_KEY}`, "x-padding": "a".repeat(20_000) } });
  assert.equal(huge.status, 431, "request headers over 16 KB");
  const page = await api("GET", "/webhooks?page_size=101");
  assert.equal(page.status, 400);
  assert.match(page.body.error.message, /page_size/);
  const longUrl = await api("POST", "/webhooks", { url: `https://93.184.216.34/${"a".repeat(2100)}`, event_types: ["a.b"] });
  assert.equal(longUrl.status, 400);
  assert.match(longUrl.body.error.message, /2048|long/);
  const manyTypes = await api("POST", "/webhooks", { url: "https://93.184.216.34/x", event_types: Array.from({ length: 51 }, (_, i) => `t${i}.x`) });
  assert.equal(manyTypes.status, 400);
  const bigBody = await api("POST", "/events", JSON.stringify({ event_type: "a.b", payload: { x: "y".repeat(400_000) } }));
  assert.equal(bigBody.status, 413);
});
