import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, verifyDelivery } from "../support/receiver.js";
import { loadConfig, ConfigError } from "../../src/config.js";
import { startWebhookd, StartupError } from "../../src/app.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;

before(async () => {
  db = await createTestDatabase("secrets");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_API_RATE_LIMIT: "5" });
  receiver = await startReceiver();
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

test("signing secrets are sealed in the database and still sign every delivery", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  const created = await api("POST", "/webhooks", { url: receiver.url("/sealed"), event_types: ["a.b"] });
  assert.equal(created.status, 201);
  const rotated = await api("POST", `/webhooks/${created.body.webhook_id}/rotate-secret`);
  assert.equal(rotated.status, 200);

  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    const { rows } = await client.query("select signing_secrets::text as s from webhooks where id = $1", [created.body.webhook_id]);
    const stored: string = rows[0].s;
    assert.ok(!stored.includes(created.body.secret.slice(6)), "the first secret is in the table in the clear");
    assert.ok(!stored.includes(rotated.body.secret.slice(6)), "the rotated secret is in the table in the clear");
    assert.ok(!stored.includes("whsec_"));
    assert.match(stored, /enc:v1:/);
  } finally {
    await client.end();
  }

  assert.equal((await api("POST", "/events", { event_type: "a.b", payload: { k: 1 } })).status, 201);
  await receiver.waitFor(() => receiver.forPath("/sealed").length === 1, 15_000, "the delivery");
  const entry = receiver.forPath("/sealed")[0]!;
  // Both secrets sign during the grace period, each verifiable on its own.
  verifyDelivery(entry, rotated.body.secret);
  verifyDelivery(entry, created.body.secret);
  assert.equal(String(entry.headers["webhook-signature"]).split(" ").length, 2);
});

test("an API key over its rate limit gets 429 with retry-after, and nothing is written", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  await new Promise((r) => setTimeout(r, 2_100)); // the bucket (5/s, burst 10) refills
  // 20 calls at once. The bucket admits its burst of 10 plus 5 per second of the time they took to arrive, so
  // the bound is computed from the measured time: on a busy machine the calls may spread over a second.
  const started = performance.now();
  const answers = await Promise.all(Array.from({ length: 20 }, () => fetch(`${server.url}/webhooks`, { headers: { authorization: `Bearer ${TEST_ADMIN_KEY}` } })));
  const seconds = (performance.now() - started) / 1000;
  const statuses = answers.map((r) => r.status);
  const admitted = statuses.filter((s) => s === 200).length;
  const limited = answers.filter((r) => r.status === 429);
  assert.equal(admitted + limited.length, 20, `every call is answered 200 or 429, got ${statuses.join(",")}`);
  assert.ok(seconds < 2, `the 20 calls took ${seconds.toFixed(2)} s; the bucket refills fully in 2 s, so nothing here could be limited`);
  assert.ok(admitted <= 10 + Math.ceil(5 * seconds), `${admitted} of 20 calls admitted within ${seconds.toFixed(2)} s at 5/s, burst 10`);
  assert.ok(limited.length >= 1, `no call was limited: ${statuses.join(",")}`);
  assert.ok(Number(limited[0]!.headers.get("retry-after")) >= 1);
  const body = (await limited[0]!.json()) as { error: { code: string; message: string } };
  assert.equal(body.error.code, "resource_exhausted");
  assert.match(body.error.message, /limit of 5 requests per second/);

  const refused = await api("POST", "/webhooks", { url: receiver.url("/never"), event_types: ["x.y"] });
  if (refused.status === 429) {
    await new Promise((r) => setTimeout(r, 2_100));
    const list = await api("GET", "/webhooks");
    assert.ok(!list.body.webhooks.some((w: { url: string }) => w.url.endsWith("/never")));
  }
});

test("with DATABASE_URL and no encryption key, webhookd refuses to start and says why", async () => {
  const config = loadConfig({ DATABASE_URL: db.url, WEBHOOKD_LISTEN: "127.0.0.1:0" });
  await assert.rejects(startWebhookd(config, { roles: ["api"] }), (err: Error) => err instanceof StartupError && /WEBHOOKD_ENCRYPTION_KEY/.test(err.message));
  assert.throws(() => loadConfig({ WEBHOOKD_ENCRYPTION_KEY: "too-short" }), (err: Error) => err instanceof ConfigError && /WEBHOOKD_ENCRYPTION_KEY/.test(err.message));
});
