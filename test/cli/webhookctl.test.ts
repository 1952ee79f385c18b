import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, verifyDelivery } from "../support/receiver.js";
import { runBin } from "../support/processes.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let env: Record<string, string>;

before(async () => {
  db = await createTestDatabase("cli");
  server = await startTestApp({ DATABASE_URL: db.url });
  receiver = await startReceiver();
  env = { WEBHOOKD_URL: server.url, WEBHOOKD_API_KEY: TEST_ADMIN_KEY };
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

async function ctl(args: string[], extraEnv: Record<string, string> = {}) {
  const { code, output } = await runBin("webhookctl", args, { ...env, ...extraEnv });
  return { code, output };
}

async function ctlJson(args: string[], extraEnv: Record<string, string> = {}) {
  const { code, output } = await ctl([...args, "--json"], extraEnv);
  assert.equal(code, 0, `webhookctl ${args.join(" ")} failed:\n${output}`);
  return JSON.parse(output);
}

test("the real webhookctl manages webhooks, publishes events and reads deliveries", async () => {
  const created = await ctlJson(["webhooks", "create", "--url", receiver.url("/cli"), "--events", "doc.*,invoice.paid", "--description", "from the cli"]);
  const webhookId: string = created.webhook.webhookId;
  assert.match(webhookId, /^wh_/);
  assert.match(created.secret, /^whsec_/);
  assert.deepEqual(created.webhook.eventTypes, ["doc.*", "invoice.paid"]);

  const listed = await ctlJson(["webhooks", "list"]);
  assert.ok(listed.webhooks.some((w: { webhookId: string }) => w.webhookId === webhookId));

  const table = await ctl(["webhooks", "list"]);
  assert.equal(table.code, 0);
  assert.match(table.output, new RegExp(webhookId));

  const updated = await ctlJson(["webhooks", "update", webhookId, "--description", "renamed"]);
  assert.equal(updated.webhook.description, "renamed");

  const published = await ctlJson(["events", "publish", "--type", "doc.created", "--data", '{"n": 1}', "--idempotency-key", "cli-1"]);
  const eventId: string = published.event.eventId;
  assert.match(eventId, /^evt_/);
  const again = await ctlJson(["events", "publish", "--type", "doc.created", "--data", '{"n": 1}', "--idempotency-key", "cli-1"]);
  assert.equal(again.event.eventId, eventId);
  assert.equal(again.duplicate, true);

  await receiver.waitFor(() => receiver.forPath("/cli").length >= 1, 15_000, "the delivery");
  const body = verifyDelivery(receiver.forPath("/cli")[0]!, created.secret);
  assert.equal(body.event_id, eventId);
  assert.deepEqual(body.payload, { n: 1 });

  const event = await ctlJson(["events", "get", eventId]);
  assert.equal(event.event.eventType, "doc.created");

  let deliveries: { deliveryId: string; status: string }[] = [];
  for (let i = 0; i < 50; i++) {
    deliveries = (await ctlJson(["deliveries", "list", "--webhook", webhookId])).deliveries ?? [];
    if (deliveries[0]?.status === "succeeded") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(deliveries.length, 1);
  assert.equal(deliveries[0]!.status, "succeeded");
  const attempts = await ctlJson(["deliveries", "attempts", deliveries[0]!.deliveryId]);
  assert.equal(attempts.attempts.length, 1);
  assert.equal(attempts.attempts[0].responseCode, 200);

  const rotated = await ctlJson(["webhooks", "rotate-secret", webhookId]);
  assert.match(rotated.secret, /^whsec_/);
  assert.notEqual(rotated.secret, created.secret);

  const deleted = await ctl(["webhooks", "delete", webhookId]);
  assert.equal(deleted.code, 0, deleted.output);
  const gone = await ctl(["webhooks", "get", webhookId]);
  assert.equal(gone.code, 1);
  assert.match(gone.output, /not_found/);
});

test("tenants and keys: a tenant key made by the CLI sees only its tenant", async () => {
  const tenant = await ctlJson(["tenants", "create", "cli-tenant"]);
  const tenantId: string = tenant.tenant.tenantId;
  const key = await ctlJson(["keys", "create", "--tenant", tenantId]);
  assert.match(key.key, /^whk_/);

  const asTenant = { WEBHOOKD_API_KEY: key.key };
  const own = await ctlJson(["webhooks", "create", "--url", receiver.url("/tenant"), "--events", "a.b"], asTenant);
  const adminView = await ctlJson(["webhooks", "list"]);
  assert.ok(!(adminView.webhooks ?? []).some((w: { webhookId: string }) => w.webhookId === own.webhook.webhookId));
  const tenantView = await ctlJson(["--tenant", tenantId, "webhooks", "list"]);
  assert.ok(tenantView.webhooks.some((w: { webhookId: string }) => w.webhookId === own.webhook.webhookId));

  const denied = await ctl(["tenants", "create", "nope"], asTenant);
  assert.equal(denied.code, 1);
  assert.match(denied.output, /permission_denied/);

  const revoked = await ctl(["keys", "revoke", key.apiKey.keyId]);
  assert.equal(revoked.code, 0, revoked.output);
  const tenants = await ctl(["tenants", "list"]);
  assert.match(tenants.output, /cli-tenant/);
});

test("bad input from the CLI is refused with a message and changes nothing", async () => {
  const before = (await ctlJson(["webhooks", "list"])).webhooks?.length ?? 0;
  const bad = await ctl(["webhooks", "create", "--url", "https://10.0.0.1/x", "--events", "a.b"]);
  assert.equal(bad.code, 1);
  assert.match(bad.output, /invalid_argument/);
  assert.match(bad.output, /10\.0\.0\.1/);
  const badTypes = await ctl(["webhooks", "create", "--url", receiver.url("/x"), "--events", "a..b"]);
  assert.equal(badTypes.code, 1);
  assert.match(badTypes.output, /event/);
  const after = (await ctlJson(["webhooks", "list"])).webhooks?.length ?? 0;
  assert.equal(after, before);
  const wrongKey = await ctl(["webhooks", "list"], { WEBHOOKD_API_KEY: "whk_wrong" });
  assert.equal(wrongKey.code, 1);
  assert.match(wrongKey.output, /unauthenticated/);
});
