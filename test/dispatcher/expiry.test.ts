// A delivery that a lane holds (its webhook paused) while housekeeping expires it, then put back by hand
// with a fresh TTL: the lane's copy, with the old TTL, must not expire it again unsent. Nor may an attempt
// under way when the TTL ends be left recorded as expired untried, nor one under way when its webhook is
// deleted be left cancelled with no attempt counted. Real Postgres,
// the embedded feed, a real receiver, a 5 s event TTL and housekeeping every 500 ms.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
/** Paths of requests as they arrive (the receiver lists them once answered). */
const arrivals: string[] = [];

before(async () => {
  db = await createTestDatabase("expiry");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_EVENT_TTL: "5s" }, ["api", "dispatcher"], {
    dispatcherTimings: { leaseTtlMs: 3_000, leaseIntervalMs: 500, sweepIntervalMs: 500, sweepGraceMs: 500, housekeepingIntervalMs: 500 },
  });
  // Answers /slow after 6.5 s: an attempt that starts inside the 5 s TTL ends after it; /deleted after 2 s.
  receiver = await startReceiver((req) => {
    arrivals.push(req.path);
    return req.path === "/slow" ? { status: 200, delayMs: 6_500 } : req.path === "/deleted" ? { status: 200, delayMs: 2_000 } : undefined;
  });
  api = restClient(server.url, TEST_ADMIN_KEY);
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

test("a delivery housekeeping expired while its lane held it, retried by hand, is delivered once the webhook is resumed", async () => {
  const id = (await api("POST", "/webhooks", { url: receiver.url("/held"), event_types: ["held.x"] })).body.webhook_id;
  assert.equal((await api("PUT", `/webhooks/${id}`, { status: "paused" })).status, 200);
  await sleep(1_200); // the dispatcher's webhook cache sees the pause
  assert.equal((await api("POST", "/events", { event_type: "held.x", payload: { n: 1 } })).status, 201);
  const [expired] = await eventually(
    async () => (await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries,
    (list: { status: string; delivery_id: string }[]) => list[0]?.status === "expired",
    "housekeeping to expire the held delivery after its 5 s TTL",
    15_000,
  );
  const retry = await api("POST", `/deliveries/${expired.delivery_id}/retry`);
  assert.equal(retry.status, 202, JSON.stringify(retry.body));
  assert.equal((await api("PUT", `/webhooks/${id}`, { status: "active" })).status, 200);
  const ended = await eventually(
    async () => (await api("GET", `/deliveries/${expired.delivery_id}`)).body,
    (d: { status: string }) => d.status !== "pending",
    "the retried delivery to end",
    15_000,
  );
  assert.equal(ended.status, "succeeded", JSON.stringify(ended));
  assert.equal(receiver.forPath("/held").length, 1, "sent once, after the retry");
});

test("an attempt under way when housekeeping expires its delivery is recorded as its answer says, and a replay of the failed ones leaves it", async () => {
  const since = new Date(Date.now() - 1_000).toISOString();
  const id = (await api("POST", "/webhooks", { url: receiver.url("/slow"), event_types: ["slow.x"] })).body.webhook_id;
  await sleep(1_200); // the dispatcher's webhook cache sees the webhook
  assert.equal((await api("POST", "/events", { event_type: "slow.x", payload: { n: 1 } })).status, 201);
  await receiver.waitFor(() => receiver.forPath("/slow").length === 1, 20_000, "the slow answer");
  // Housekeeping expired it meanwhile; the answer's record comes after.
  const [delivery] = await eventually(
    async () => (await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries,
    (list: { status: string; attempts: number }[]) => list[0] !== undefined && list[0].attempts > 0,
    "the attempt's record",
    5_000,
  ).catch(async (err) => {
    throw new Error(`${err.message}: ${JSON.stringify((await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries)}`);
  });
  assert.equal(delivery.status, "succeeded", JSON.stringify(delivery));
  assert.equal(delivery.attempts, 1);
  const replay = await api("POST", `/webhooks/${id}/replay`, { since, scope: "failed" });
  assert.equal(replay.status, 202, JSON.stringify(replay.body));
  assert.equal(replay.body.total, 0, JSON.stringify(replay.body));
});

test("an attempt under way when its webhook is deleted is counted on the cancelled delivery, with its answer", async () => {
  const id = (await api("POST", "/webhooks", { url: receiver.url("/deleted"), event_types: ["deleted.x"] })).body.webhook_id;
  await sleep(1_200); // the dispatcher's webhook cache sees the webhook
  const published = await api("POST", "/events", { event_type: "deleted.x", payload: { n: 1 } });
  assert.equal(published.status, 201);
  await eventually(async () => arrivals.includes("/deleted"), Boolean, "the attempt to arrive", 10_000);
  const [delivery] = (await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries;
  assert.equal((await api("DELETE", `/webhooks/${id}`)).status, 200);
  assert.equal((await api("GET", `/deliveries/${delivery.delivery_id}`)).body.status, "cancelled", "cancelled by the delete");
  const ended = await eventually(
    async () => (await api("GET", `/deliveries/${delivery.delivery_id}`)).body,
    (d: { status: string; attempts: number; last_response_code?: number }) => d.attempts > 0,
    "the attempt's record",
    10_000,
  ).catch(async (err) => {
    throw new Error(`${err.message}: ${JSON.stringify((await api("GET", `/deliveries/${delivery.delivery_id}`)).body)}`);
  });
  assert.equal(ended.status, "cancelled", JSON.stringify(ended));
  assert.equal(ended.attempts, 1, JSON.stringify(ended));
  assert.equal(ended.last_response_code, 200, JSON.stringify(ended));
  const attempts = (await api("GET", `/deliveries/${delivery.delivery_id}/attempts`)).body.attempts;
  assert.equal(attempts.length, 1, JSON.stringify(attempts));
});
