// WEBHOOKD_DELIVERY_TIMEOUT, as the binary's configuration reads it, ends an attempt that runs past it.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let app: Awaited<ReturnType<typeof startTestApp>>["app"];
let rest: ReturnType<typeof restClient>;

before(async () => {
  db = await createTestDatabase("delivery_timeout");
  // Far longer than the timeout: an attempt that ends before this answer was ended by the timeout.
  receiver = await startReceiver(() => ({ delayMs: 10_000 }));
  ({ app } = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_DELIVERY_TIMEOUT: "1s", WEBHOOKD_RETRY_SCHEDULE: "1m" }));
  rest = restClient(app.url!, TEST_ADMIN_KEY);
});

after(async () => {
  await receiver?.close();
  await app?.stop();
  await db?.drop();
});

test("an attempt past WEBHOOKD_DELIVERY_TIMEOUT is ended, recorded as a timeout, and retried on schedule", async () => {
  const hook = await rest("POST", "/webhooks", { url: receiver.url("/hang"), event_types: ["slow.created"] });
  assert.equal(hook.status, 201, JSON.stringify(hook.body));
  const published = await rest("POST", "/events", { event_type: "slow.created", payload: { n: 1 } });
  assert.equal(published.status, 201);
  const listed = await eventually(
    async () => (await rest("GET", `/webhooks/${hook.body.webhook_id}/deliveries`)).body.deliveries,
    (d: { delivery_id: string; status: string; attempts: number }[]) => d.length === 1 && d[0]!.attempts === 1,
    "one attempt recorded",
    8_000,
  );
  const delivery = listed[0]!;
  assert.equal(delivery.status, "pending", "retried on the schedule, a minute on");
  const attempts = await rest("GET", `/deliveries/${delivery.delivery_id}/attempts`);
  const [attempt] = attempts.body.attempts;
  assert.match(attempt.error, /timed out after 1000 ms/);
  assert.equal(attempt.response_code, undefined);
  assert.ok(attempt.duration_ms >= 1_000 && attempt.duration_ms < 8_000, `duration ${attempt.duration_ms} ms`);
});
