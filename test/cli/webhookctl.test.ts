import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, verifyDelivery } from "../support/receiver.js";
import { runBin, spawnBin } from "../support/processes.js";
import { eventually } from "../support/wait.js";

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

// ---------------------------------------------------------------------------------------------------------
// deliveries get / list --status, events publish --ordering-key and --data @file, bad --data

/** Runs the real binary with stdout and stderr kept apart (runBin merges them). */
async function ctlSplit(args: string[], extraEnv: Record<string, string> = {}) {
  const p = spawnBin("webhookctl", args, { ...env, ...extraEnv });
  let stdout = "";
  let stderr = "";
  p.child.stdout!.on("data", (c: Buffer) => (stdout += c.toString()));
  p.child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  const code = await new Promise<number | null>((resolve) => p.child.once("close", (c) => resolve(c)));
  return { code, stdout, stderr };
}

/** Every event of the tenant, through the CLI. */
async function eventCount(): Promise<number> {
  return ((await ctlJson(["events", "list", "--all"])).events ?? []).length;
}

/** The webhook's deliveries once `ok` holds for them. */
type ListedDelivery = { deliveryId: string; eventId: string; status: string; attempts?: number };

async function deliveriesWhen(webhookId: string, ok: (d: ListedDelivery[]) => boolean, what: string): Promise<ListedDelivery[]> {
  return eventually(async () => (await ctlJson(["deliveries", "list", "--webhook", webhookId])).deliveries ?? [], ok, what, 20_000);
}

test("deliveries get shows one delivery as a table and as JSON", async () => {
  const hook = await ctlJson(["webhooks", "create", "--url", receiver.url("/cli-get"), "--events", "cliget.done"]);
  const webhookId: string = hook.webhook.webhookId;
  const published = await ctlJson(["events", "publish", "--type", "cliget.done", "--data", '{"k": "v"}']);
  const eventId: string = published.event.eventId;
  const [listed] = await deliveriesWhen(webhookId, (d) => d[0]?.status === "succeeded", "the /cli-get delivery succeeded");
  const deliveryId = listed!.deliveryId;
  assert.match(deliveryId, /^dlv_[0-9a-z]{26}$/);

  const table = await ctlSplit(["deliveries", "get", deliveryId]);
  assert.equal(table.code, 0, table.stderr);
  assert.equal(table.stderr, "");
  assert.match(table.stdout, new RegExp(`^delivery_id:\\s+${deliveryId}$`, "m"));
  assert.match(table.stdout, new RegExp(`^event_id:\\s+${eventId}$`, "m"));
  assert.match(table.stdout, new RegExp(`^webhook_id:\\s+${webhookId}$`, "m"));
  assert.match(table.stdout, /^status:\s+succeeded$/m);
  assert.match(table.stdout, /^attempts:\s+1$/m);
  assert.match(table.stdout, /^last_response_code:\s+200$/m);
  assert.match(table.stdout, /^delivered_at:\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m);

  const json = await ctlSplit(["deliveries", "get", deliveryId, "--json"]);
  assert.equal(json.code, 0, json.stderr);
  const { delivery } = JSON.parse(json.stdout);
  assert.equal(delivery.deliveryId, deliveryId);
  assert.equal(delivery.eventId, eventId);
  assert.equal(delivery.webhookId, webhookId);
  assert.equal(delivery.eventType, "cliget.done");
  assert.equal(delivery.status, "succeeded");
  assert.equal(delivery.attempts, 1);
  assert.equal(delivery.lastResponseCode, 200);
  assert.ok(Date.parse(delivery.deliveredAt) >= Date.parse(delivery.createdAt), JSON.stringify(delivery));

  const missing = await ctlSplit(["deliveries", "get", "dlv_00000000000000000000000000"]);
  assert.equal(missing.code, 1);
  assert.equal(missing.stdout, "");
  assert.match(missing.stderr, /not_found/);
  assert.match(missing.stderr, /dlv_00000000000000000000000000/);
});

test("deliveries list --status succeeded --json lists only the succeeded ones", async () => {
  // One retry, an hour away: the third delivery, answered 500, stays pending for the rest of the test.
  const hook = await ctlJson(["webhooks", "create", "--url", receiver.url("/cli-status"), "--events", "clistatus.done", "--retry-schedule", "1h"]);
  const webhookId: string = hook.webhook.webhookId;
  const done: string[] = [];
  for (const n of [1, 2]) done.push((await ctlJson(["events", "publish", "--type", "clistatus.done", "--data", JSON.stringify({ n })])).event.eventId);
  await deliveriesWhen(webhookId, (d) => d.length === 2 && d.every((x) => x.status === "succeeded"), "two /cli-status deliveries succeeded");
  receiver.setBehaviour((req) => (req.path === "/cli-status" ? { status: 500, body: "down" } : undefined));
  let held: string;
  try {
    held = (await ctlJson(["events", "publish", "--type", "clistatus.done", "--data", '{"n": 3}'])).event.eventId;
    await receiver.waitFor(() => receiver.forPath("/cli-status").length >= 3, 15_000, "the failing attempt");
    await deliveriesWhen(webhookId, (d) => d[2]?.attempts === 1, "the failed attempt recorded");
  } finally {
    receiver.setBehaviour(() => undefined);
  }

  const succeeded = await ctlJson(["deliveries", "list", "--webhook", webhookId, "--status", "succeeded"]);
  assert.deepEqual(succeeded.deliveries.map((d: { eventId: string }) => d.eventId), done);
  assert.ok(succeeded.deliveries.every((d: { status: string }) => d.status === "succeeded"), JSON.stringify(succeeded));

  const pending = await ctlJson(["deliveries", "list", "--webhook", webhookId, "--status", "pending"]);
  assert.deepEqual(pending.deliveries.map((d: { eventId: string; status: string }) => [d.eventId, d.status]), [[held, "pending"]]);
  assert.equal(pending.deliveries[0].lastResponseCode, 500);

  const all = await ctlJson(["deliveries", "list", "--webhook", webhookId]);
  assert.deepEqual(all.deliveries.map((d: { eventId: string }) => d.eventId), [...done, held]);

  const bogus = await ctlSplit(["deliveries", "list", "--webhook", webhookId, "--status", "bogus", "--json"]);
  assert.equal(bogus.code, 1);
  assert.equal(bogus.stdout, "");
  assert.match(bogus.stderr, /invalid_argument/);
  assert.match(bogus.stderr, /"bogus"/);
  assert.equal(receiver.forPath("/cli-status").length, 3, "no retry before the hour is up");
});

test("events publish --ordering-key: the event and its delivery carry the key", async () => {
  const hook = await ctlJson(["webhooks", "create", "--url", receiver.url("/cli-key"), "--events", "clikey.done", "--ordered-by-key"]);
  const published = await ctlSplit(["events", "publish", "--type", "clikey.done", "--data", '{"n": 1}', "--ordering-key", "customer-42", "--json"]);
  assert.equal(published.code, 0, published.stderr);
  const { event } = JSON.parse(published.stdout);
  assert.match(event.eventId, /^evt_/);
  assert.equal(event.orderingKey, "customer-42");
  assert.equal(event.eventType, "clikey.done");
  assert.equal(event.deliveryCount, 1);

  const read = await ctlJson(["events", "get", event.eventId]);
  assert.equal(read.event.orderingKey, "customer-42");
  assert.deepEqual(read.event.payload, { n: 1 });
  const table = await ctl(["events", "get", event.eventId]);
  assert.match(table.output, /^ordering_key:\s+customer-42$/m);

  // Without the flag there is no key.
  const plain = await ctlJson(["events", "publish", "--type", "clikey.done", "--data", '{"n": 2}']);
  assert.equal(plain.event.orderingKey, undefined);

  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    const { rows } = await pool.query("select event_id, ordering_key from deliveries where webhook_id = $1 order by id", [hook.webhook.webhookId]);
    // The delivery keeps the key its lane orders by; one without a key has none (stored as "" or null).
    assert.deepEqual(rows.map((r) => r.event_id), [event.eventId, plain.event.eventId]);
    assert.equal(rows[0].ordering_key, "customer-42");
    assert.ok(!rows[1].ordering_key, JSON.stringify(rows[1]));
  } finally {
    await pool.end();
  }
});

test("events publish prints the payload it sent, as events get does; a duplicate prints none", async () => {
  const data = { id: 42, note: "ü" };
  const published = await ctl(["events", "publish", "--type", "clipayload.done", "--data", JSON.stringify(data), "--idempotency-key", "cli-payload-1"]);
  assert.equal(published.code, 0, published.output);
  const eventId = /^event_id:\s+(evt_\S+)$/m.exec(published.output)?.[1];
  assert.ok(eventId, published.output);
  // The publish answer leaves the payload out (the caller has it): it used to print as {}.
  assert.match(published.output, /^payload:\s+\{"id":42,"note":"ü"\}$/m);
  const read = await ctl(["events", "get", eventId]);
  assert.equal(/^payload:.*$/m.exec(read.output)?.[0], /^payload:.*$/m.exec(published.output)?.[0]);

  // A duplicate shows the earlier event, whose payload the answer does not carry: no payload line at all.
  const again = await ctl(["events", "publish", "--type", "clipayload.done", "--data", '{"id": 43}', "--idempotency-key", "cli-payload-1"]);
  assert.equal(again.code, 0, again.output);
  assert.match(again.output, new RegExp(`^event_id:\\s+${eventId}$`, "m"));
  assert.match(again.output, /^duplicate:\s+true$/m);
  assert.doesNotMatch(again.output, /^payload:/m);
});

test("events publish --data @file reads the payload from a file", async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookctl-data-"));
  try {
    const payload = { order: { id: "ord_1", lines: [{ sku: "A-1", qty: 2 }], note: "ü€ \"quoted\"" }, paid: true, total: 12.5, gift: null };
    const file = path.join(dir, "payload.json");
    await fs.writeFile(file, `${JSON.stringify(payload, null, 2)}\n`);
    const hook = await ctlJson(["webhooks", "create", "--url", receiver.url("/cli-file"), "--events", "clifile.done"]);

    // The publish answer leaves the payload out (the caller has it); reading the event back shows it.
    const published = await ctlJson(["events", "publish", "--type", "clifile.done", "--data", `@${file}`]);
    assert.match(published.event.eventId, /^evt_/);
    assert.equal(published.event.deliveryCount, 1);
    const read = await ctlJson(["events", "get", published.event.eventId]);
    assert.deepEqual(read.event.payload, payload);
    await receiver.waitFor(() => receiver.forPath("/cli-file").length >= 1, 15_000, "the /cli-file delivery");
    const body = verifyDelivery(receiver.forPath("/cli-file")[0]!, hook.secret);
    assert.equal(body.event_id, published.event.eventId);
    assert.deepEqual(body.payload, payload);

    // A file that is not there, and a file that is not JSON: exit 2, the reason on stderr, nothing published.
    const before = await eventCount();
    const missing = path.join(dir, "missing.json");
    const gone = await ctlSplit(["events", "publish", "--type", "clifile.done", "--data", `@${missing}`]);
    assert.equal(gone.code, 2);
    assert.equal(gone.stdout, "");
    assert.match(gone.stderr, /--data: cannot read/);
    assert.ok(gone.stderr.includes(missing), gone.stderr);
    const broken = path.join(dir, "broken.json");
    await fs.writeFile(broken, '{"a": 1,');
    const bad = await ctlSplit(["events", "publish", "--type", "clifile.done", "--data", `@${broken}`]);
    assert.equal(bad.code, 2);
    assert.equal(bad.stdout, "");
    assert.ok(bad.stderr.includes(`--data @${broken} is not valid JSON`), bad.stderr);
    assert.equal(await eventCount(), before);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
  // runBin/spawnBin give the child no stdin, so `--data @-` is not exercised here.
});

test("a bad --data is refused before anything is sent: non-zero exit, the problem on stderr", async () => {
  const before = await eventCount();
  const invalid = await ctlSplit(["events", "publish", "--type", "clibad.done", "--data", '{"n": 1', "--json"]);
  assert.equal(invalid.code, 2);
  assert.equal(invalid.stdout, "");
  assert.match(invalid.stderr, /^error: --data is not valid JSON: /);

  const array = await ctlSplit(["events", "publish", "--type", "clibad.done", "--data", "[1, 2]"]);
  assert.equal(array.code, 2);
  assert.equal(array.stdout, "");
  assert.match(array.stderr, /--data must be a JSON object \(the event payload\), got an array/);

  const scalar = await ctlSplit(["events", "publish", "--type", "clibad.done", "--data", "42"]);
  assert.equal(scalar.code, 2);
  assert.match(scalar.stderr, /--data must be a JSON object .*got a number/);

  const absent = await ctlSplit(["events", "publish", "--type", "clibad.done"]);
  assert.equal(absent.code, 2);
  assert.match(absent.stderr, /--data/);

  assert.equal(await eventCount(), before, "nothing was published");
});
