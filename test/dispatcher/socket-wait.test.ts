// An attempt that waits for a socket behind the origin's cap (another webhook's slow endpoint on the same
// host holds them all) is checked again when its socket comes: a webhook deleted or paused meanwhile gets
// nothing. Checked only before the wait, the request went out seconds after the DELETE or the pause had
// been answered. Real Postgres, the embedded feed, a real receiver, two sockets per origin.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";

const HOLD_MS = 3_000;
let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
/** Every request as it arrives (the receiver records them only when it answers). */
const arrivals: { path: string; at: number }[] = [];

before(async () => {
  db = await createTestDatabase("socket_wait");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_CONNECTIONS_PER_ORIGIN: "2" });
  receiver = await startReceiver((req) => {
    arrivals.push({ path: req.path, at: Date.now() });
    return req.path === "/slow" ? { status: 200, delayMs: HOLD_MS } : undefined;
  });
  api = restClient(server.url, TEST_ADMIN_KEY);
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

const arrived = (path: string) => arrivals.filter((a) => a.path === path);

test("a webhook deleted or paused while its attempt waits for a socket receives nothing; resumed, it receives the delivery once", async () => {
  const create = async (path: string, type: string, extra: Record<string, unknown> = {}) => {
    const res = await api("POST", "/webhooks", { url: receiver.url(path), event_types: [type], ...extra });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return res.body.webhook_id as string;
  };
  await create("/slow", "busy.x", { ordered_by_key: true });
  const deleted = await create("/deleted", "deleted.x");
  const paused = await create("/paused", "paused.x");
  await sleep(1_200); // the dispatcher's webhook cache sees them

  // Two keys in flight to the slow endpoint take the origin's two sockets for 3 s.
  assert.equal((await api("POST", "/events/batch", { events: ["a", "b"].map((k) => ({ event_type: "busy.x", ordering_key: k, payload: { k } })) })).status, 201);
  await eventually(async () => arrived("/slow").length, (n) => n === 2, "both sockets taken", 5_000);
  for (const type of ["deleted.x", "paused.x"]) assert.equal((await api("POST", "/events", { event_type: type, payload: {} })).status, 201);
  await sleep(300);
  assert.equal(arrived("/deleted").length + arrived("/paused").length, 0, "their attempts wait for a socket");

  assert.equal((await api("DELETE", `/webhooks/${deleted}`)).status, 200);
  assert.equal((await api("PUT", `/webhooks/${paused}`, { status: "paused" })).status, 200);
  const changedAt = Date.now();
  await sleep(HOLD_MS + 1_000);
  assert.deepEqual(
    [...arrived("/deleted"), ...arrived("/paused")].map((a) => `${a.path} ${a.at - changedAt} ms after`),
    [],
    "nothing reaches them after the DELETE and the pause were answered",
  );

  assert.equal((await api("PUT", `/webhooks/${paused}`, { status: "active" })).status, 200);
  await eventually(async () => arrived("/paused").length, (n) => n === 1, "the resumed webhook's delivery", 10_000);
  const [delivery] = (await api("GET", `/webhooks/${paused}/deliveries`)).body.deliveries;
  assert.equal(delivery.status, "succeeded");
  assert.equal(delivery.attempts, 1, "the withdrawn request was not an attempt");
  await sleep(300);
  assert.equal(arrived("/paused").length, 1);
});
