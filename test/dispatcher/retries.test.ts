import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, type Received } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";
import { insertDeliveries, insertEvents } from "../support/rows.js";
import { newId } from "../../src/core/ids.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";

/**
 * Retries against a real receiver, Postgres and dispatcher: the order they keep, the schedule they follow,
 * the final states, pausing, and the per-webhook rate limit as measured at the receiver.
 */

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
const healthy = new Set<string>();

const SCHEDULE = [300, 600];

before(async () => {
  db = await createTestDatabase("retries");
  // The breaker off: these endpoints fail on purpose, and it is the schedule under test here.
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_RETRY_SCHEDULE: "300ms,600ms", WEBHOOKD_CIRCUIT_FAILURES: "0" });
  receiver = await startReceiver((req) => {
    const n = JSON.parse(req.body).payload.n as number;
    // Earlier attempts of this event (the one being answered is recorded after this answer).
    if (req.path === "/twice") return attemptsOf("/twice", n).length < 2 ? { status: 500 } : undefined;
    if (req.path === "/down") return healthy.has("/down") ? undefined : { status: 503 };
    if (req.path === "/keys-unfed") return JSON.parse(req.body).payload.key === "A" ? { status: 500 } : undefined;
    return undefined;
  });
  api = restClient(server.url, TEST_ADMIN_KEY);
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

function attemptsOf(path: string, n: number): Received[] {
  return receiver.received.filter((r) => r.path === path && JSON.parse(r.body).payload.n === n);
}

async function webhook(path: string, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await api("POST", "/webhooks", { url: receiver.url(path), event_types: [`r${path.replace("/", ".")}`], ...extra });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.webhook_id;
}

async function publish(path: string, count: number): Promise<void> {
  const events = Array.from({ length: count }, (_, i) => ({ event_type: `r${path.replace("/", ".")}`, payload: { n: i + 1 } }));
  assert.equal((await api("POST", "/events/batch", { events })).status, 201);
}

test("an endpoint failing twice per event: every event arrives, in order, each tried only after its predecessor succeeded, on schedule", async () => {
  const id = await webhook("/twice");
  await publish("/twice", 4);
  await receiver.waitFor(() => receiver.forPath("/twice").length >= 12, 30_000, "3 attempts of each of 4 events");
  await sleep(300);
  const seen = receiver.forPath("/twice").map((r) => ({ n: JSON.parse(r.body).payload.n as number, at: r.at }));
  assert.equal(seen.length, 12, "exactly three attempts per event");
  // Order: all attempts of event n come before any of n + 1.
  assert.deepEqual(
    seen.map((s) => s.n),
    [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4],
  );
  for (let n = 1; n <= 4; n++) {
    const times = seen.filter((s) => s.n === n).map((s) => s.at);
    for (let k = 0; k < SCHEDULE.length; k++) {
      const gap = times[k + 1]! - times[k]!;
      // ±20 % jitter, plus the time it takes to record an attempt and pick the lane up again.
      assert.ok(gap >= SCHEDULE[k]! * 0.8 - 20, `event ${n}: retry ${k + 1} came ${gap} ms after the failure; the schedule says ${SCHEDULE[k]} ms ±20 %`);
      assert.ok(gap <= SCHEDULE[k]! * 1.2 + 700, `event ${n}: retry ${k + 1} came ${gap} ms late for a ${SCHEDULE[k]} ms delay`);
    }
  }
  const deliveries = await eventually(
    () => api("GET", `/webhooks/${id}/deliveries`),
    (r) => r.body.deliveries.every((d: { status: string }) => d.status === "succeeded"),
    "every delivery succeeded",
  );
  assert.deepEqual(
    deliveries.body.deliveries.map((d: { attempts: number }) => d.attempts),
    [3, 3, 3, 3],
  );
});

test("an endpoint answering 503: each delivery fails after 1 + len(schedule) attempts and the next one proceeds; a retry by hand delivers once it heals", async () => {
  const id = await webhook("/down");
  await publish("/down", 3);
  const list = await eventually(
    () => api("GET", `/webhooks/${id}/deliveries`),
    (r) => r.body.deliveries.length === 3 && r.body.deliveries.every((d: { status: string }) => d.status === "failed"),
    "all three deliveries failed",
    30_000,
  );
  const byEvent = [1, 2, 3].map((n) => attemptsOf("/down", n));
  assert.deepEqual(
    byEvent.map((a) => a.length),
    [3, 3, 3],
    "1 + len(schedule) attempts each",
  );
  // The next delivery starts only after its predecessor's last attempt.
  assert.ok(byEvent[1]![0]!.at >= byEvent[0]![2]!.at && byEvent[2]![0]!.at >= byEvent[1]![2]!.at);
  for (const d of list.body.deliveries) {
    assert.equal(d.attempts, 3);
    assert.equal(d.last_response_code, 503);
    const attempts = (await api("GET", `/deliveries/${d.delivery_id}/attempts`)).body.attempts;
    assert.deepEqual(
      attempts.map((a: { response_code: number }) => a.response_code),
      [503, 503, 503],
    );
    assert.ok(attempts.every((a: { error?: string }) => a.error === "HTTP 503"));
  }

  healthy.add("/down");
  const first = list.body.deliveries[0].delivery_id;
  const retried = await api("POST", `/deliveries/${first}/retry`);
  assert.equal(retried.status, 202);
  assert.equal(retried.body.status, "pending");
  await eventually(() => api("GET", `/deliveries/${first}`), (r) => r.body.status === "succeeded", "the retried delivery to succeed");
  assert.equal(attemptsOf("/down", 1).length, 4);
  assert.equal(attemptsOf("/down", 1).at(-1)!.headers["webhook-id"], attemptsOf("/down", 1)[0]!.headers["webhook-id"], "the same event id on every try");
  // Retrying something that did not fail is refused and changes nothing.
  const again = await api("POST", `/deliveries/${first}/retry`);
  assert.equal(again.status, 409);
});

test("a paused webhook holds its deliveries without failing them; resuming sends them in order", async () => {
  const id = await webhook("/paused");
  assert.equal((await api("PUT", `/webhooks/${id}`, { status: "paused" })).status, 200);
  await publish("/paused", 5);
  await sleep(1_500);
  assert.equal(receiver.forPath("/paused").length, 0, "nothing is sent while paused");
  const held = (await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries;
  assert.deepEqual(
    held.map((d: { status: string; attempts: number }) => `${d.status}/${d.attempts}`),
    Array(5).fill("pending/0"),
  );
  assert.equal((await api("PUT", `/webhooks/${id}`, { status: "active" })).status, 200);
  await receiver.waitFor(() => receiver.forPath("/paused").length === 5, 15_000, "the held deliveries");
  assert.deepEqual(
    receiver.forPath("/paused").map((r) => JSON.parse(r.body).payload.n),
    [1, 2, 3, 4, 5],
  );
});

test("a webhook's rate limit holds at the receiver within 10 %", async () => {
  const rate = 8;
  await webhook("/limited", { rate_limit_per_second: rate });
  await publish("/limited", 40);
  await receiver.waitFor(() => receiver.forPath("/limited").length === 40, 20_000, "40 rate-limited deliveries");
  const times = receiver.forPath("/limited").map((r) => r.at);
  // The bucket holds one second's worth at first; past that burst the pace is the limit.
  const steady = times.slice(rate);
  const measured = ((steady.length - 1) * 1000) / (steady.at(-1)! - steady[0]!);
  assert.ok(Math.abs(measured - rate) / rate <= 0.1, `measured ${measured.toFixed(2)}/s against a limit of ${rate}/s`);
});

test("ordered by key: a delivery committed but never fed (the API died before publishing) goes beside another key's head that waits an hour for its retry", async () => {
  const id = await webhook("/keys-unfed", { ordered_by_key: true, retry_schedule: "1h" });
  const res = await api("POST", "/events", { event_type: "r.keys-unfed", ordering_key: "A", payload: { n: 1, key: "A" } });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  await receiver.waitFor(() => receiver.forPath("/keys-unfed").length === 1, 10_000, "key A's first attempt, which fails");

  // Key B's event as a commit whose publish never happened: its rows, the webhook's seq counter moved on.
  const { db: store } = server.app.store;
  const webhookRow = await store.selectFrom("webhooks").select(["shard", "last_seq"]).where("id", "=", id).executeTakeFirstOrThrow();
  const now = new Date();
  const eventId = newId("evt");
  await insertEvents(store, [
    { id: eventId, tenant_id: DEFAULT_TENANT_ID, event_type: "r.keys-unfed", payload: JSON.stringify({ n: 2, key: "B" }), idempotency_key: null, ordering_key: "B", delivery_count: 1, created_at: now },
  ]);
  await insertDeliveries(store, [
    {
      id: newId("dlv"), tenant_id: DEFAULT_TENANT_ID, webhook_id: id, event_id: eventId, seq: webhookRow.last_seq + 1, shard: webhookRow.shard,
      ordering_key: "B", status: "pending", next_attempt_at: now, expires_at: new Date(now.getTime() + 3_600_000), created_at: now,
    },
  ]);
  await store.updateTable("webhooks").set({ last_seq: webhookRow.last_seq + 1 }).where("id", "=", id).execute();

  await receiver.waitFor(() => receiver.forPath("/keys-unfed").some((r) => JSON.parse(r.body).payload.key === "B"), 10_000, "key B's delivery, found by the sweep");
  assert.deepEqual(receiver.forPath("/keys-unfed").map((r) => JSON.parse(r.body).payload.key), ["A", "B"], "A waits for its retry; B went beside it");
});
