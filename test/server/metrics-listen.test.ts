// A dispatcher process has no API; WEBHOOKD_METRICS_LISTEN serves its health, readiness and metrics.
// Without it a deployment of separate api and dispatcher processes showed its delivery metrics nowhere
// (the api's read zero). The real binary, real Postgres, a real receiver.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY, TEST_ENCRYPTION_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { spawnBin, type Spawned } from "../support/processes.js";
import { eventually } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: Awaited<ReturnType<typeof startTestApp>>;
let dispatcher: Spawned | undefined;

before(async () => {
  db = await createTestDatabase("metrics_listen");
  receiver = await startReceiver();
  api = await startTestApp({ DATABASE_URL: db.url }, ["api"]);
});

after(async () => {
  await dispatcher?.kill("SIGTERM");
  await api?.app.stop();
  await receiver?.close();
  await db?.drop();
});

test("a dispatcher with WEBHOOKD_METRICS_LISTEN serves /healthz, /readyz and its delivery metrics, and nothing else", async () => {
  dispatcher = spawnBin("webhookd", ["dispatcher"], {
    DATABASE_URL: db.url,
    WEBHOOKD_ENCRYPTION_KEY: TEST_ENCRYPTION_KEY,
    WEBHOOKD_ALLOW_HTTP: "true",
    WEBHOOKD_ALLOWED_CIDRS: "127.0.0.0/8",
    WEBHOOKD_METRICS_LISTEN: "127.0.0.1:0",
  });
  const [, metricsUrl] = await dispatcher.waitFor(/health and metrics on (http:\/\/\S+)/);
  const rest = restClient(api.url, TEST_ADMIN_KEY);
  assert.equal((await rest("POST", "/webhooks", { url: receiver.url("/m"), event_types: ["m.x"] })).status, 201);
  assert.equal((await rest("POST", "/events", { event_type: "m.x", payload: {} })).status, 201);
  await receiver.waitFor(() => receiver.forPath("/m").length === 1, 15_000, "the delivery");

  const metrics = await eventually(
    async () => (await fetch(`${metricsUrl}/metrics`)).text(),
    (text) => /^webhookd_delivery_attempts_total\{status="succeeded"\} 1$/m.test(text),
    "the dispatcher's attempt counter",
    5_000,
  );
  assert.match(metrics, /^webhookd_delivery_attempt_duration_seconds_count 1$/m);
  assert.equal((await fetch(`${metricsUrl}/healthz`)).status, 200);
  const ready = await fetch(`${metricsUrl}/readyz`);
  assert.equal(ready.status, 200);
  assert.deepEqual(((await ready.json()) as { checks: unknown }).checks, { store: true, queue: true });
  assert.equal((await fetch(`${metricsUrl}/webhooks`, { headers: { authorization: `Bearer ${TEST_ADMIN_KEY}` } })).status, 404, "no API there");
});
