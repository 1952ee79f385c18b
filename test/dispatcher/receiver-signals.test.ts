import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
let gone = true;

before(async () => {
  db = await createTestDatabase("signals");
  // A schedule far longer than any Retry-After used here, so a quick retry can only come from the header.
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_RETRY_SCHEDULE: "30s,30s" });
  receiver = await startReceiver((req, count) => {
    if (req.path === "/gone") return gone ? { status: 410 } : undefined;
    if (req.path === "/busy" && count === 1) return { status: 503, headers: { "retry-after": "1" } };
    return undefined;
  });
  api = restClient(server.url, TEST_ADMIN_KEY);
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});


test("410 Gone disables the webhook, keeps its deliveries pending, and resuming delivers them in order", async () => {
  const created = await api("POST", "/webhooks", { url: receiver.url("/gone"), event_types: ["g.x"] });
  const id = created.body.webhook_id;
  // One batch, so both are queued before the first answer disables the webhook (a disabled webhook
  // takes no new events).
  await api("POST", "/events/batch", { events: [{ event_type: "g.x", payload: { n: 1 } }, { event_type: "g.x", payload: { n: 2 } }] });

  await eventually(() => api("GET", `/webhooks/${id}`), (r) => r.body.status === "disabled", "the webhook to be disabled");
  await new Promise((r) => setTimeout(r, 1_500));
  assert.equal(receiver.forPath("/gone").length, 1, "nothing more is sent to an endpoint that said 410");
  const deliveries = (await api("GET", `/webhooks/${id}/deliveries`)).body.deliveries;
  assert.deepEqual(
    deliveries.map((d: { status: string }) => d.status),
    ["pending", "pending"],
  );
  assert.equal(deliveries[0].last_response_code, 410);

  const audit = await fetch(`${server.url}/webhook.v1.AdminService/ListAuditLog`, {
    method: "POST",
    headers: { authorization: `Bearer ${TEST_ADMIN_KEY}`, "content-type": "application/json" },
    body: "{}",
  }).then((r) => r.json() as Promise<{ entries: { action: string; resourceId: string; actor: string }[] }>);
  assert.ok(audit.entries.some((e) => e.action === "webhook.disable" && e.resourceId === id && e.actor === "dispatcher"));

  gone = false;
  assert.equal((await api("PUT", `/webhooks/${id}`, { status: "active" })).status, 200);
  await receiver.waitFor(() => receiver.forPath("/gone").length === 3, 15_000, "both deliveries after re-enabling");
  const payloads = receiver.forPath("/gone").map((r) => JSON.parse(r.body).payload.n);
  assert.deepEqual(payloads, [1, 1, 2]);
});

test("503 with Retry-After retries after the receiver's delay, not the schedule's", async () => {
  await api("POST", "/webhooks", { url: receiver.url("/busy"), event_types: ["b.x"] });
  await api("POST", "/events", { event_type: "b.x", payload: { n: 1 } });
  await receiver.waitFor(() => receiver.forPath("/busy").length === 2, 10_000, "the retry");
  const [first, second] = receiver.forPath("/busy");
  const gap = second!.at - first!.at;
  assert.ok(gap >= 900 && gap < 5_000, `retried after ${gap} ms for Retry-After: 1`);
  assert.equal(first!.headers["webhook-id"], second!.headers["webhook-id"], "the same webhook-id on every attempt");
});

test("a webhook's own retry schedule replaces the server's, and 'none' fails at the first error", async () => {
  const quick = await api("POST", "/webhooks", { url: receiver.url("/down-quick"), event_types: ["q.x"], retry_schedule: "200ms,300ms" });
  assert.equal(quick.status, 201);
  assert.equal(quick.body.retry_schedule, "200ms,300ms");
  const none = await api("POST", "/webhooks", { url: receiver.url("/down-none"), event_types: ["n.x"], retry_schedule: "none" });
  assert.equal(none.body.retry_schedule, "none");
  receiver.setBehaviour((req) => (req.path.startsWith("/down-") ? { status: 500 } : undefined));
  await api("POST", "/events", { event_type: "q.x", payload: {} });
  await api("POST", "/events", { event_type: "n.x", payload: {} });

  const [quickDelivery] = (
    await eventually(() => api("GET", `/webhooks/${quick.body.webhook_id}/deliveries`), (r) => r.body.deliveries[0]?.status === "failed", "the quick schedule to run out")
  ).body.deliveries;
  assert.equal(quickDelivery.attempts, 3, "one attempt and the two retries of the webhook's schedule");
  const [noneDelivery] = (
    await eventually(() => api("GET", `/webhooks/${none.body.webhook_id}/deliveries`), (r) => r.body.deliveries[0]?.status === "failed", "the first failure to be final")
  ).body.deliveries;
  assert.equal(noneDelivery.attempts, 1);

  const bad = await api("POST", "/webhooks", { url: receiver.url("/x"), event_types: ["q.x"], retry_schedule: "5x" });
  assert.equal(bad.status, 400);
  assert.match(bad.body.error.message, /retry_schedule/);
  const reset = await api("PUT", `/webhooks/${quick.body.webhook_id}`, { retry_schedule: "" });
  assert.equal(reset.body.webhook.retry_schedule, undefined, "back to the server's schedule");
});
