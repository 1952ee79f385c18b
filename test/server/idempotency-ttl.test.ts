// An idempotency key holds for the event TTL and no longer: reused after it, the key makes a new event
// (and claims the key for it), whether or not housekeeping has forgotten the old claim yet. Real API on
// real Postgres, a 1 s TTL.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { sleep } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let api: ReturnType<typeof restClient>;

before(async () => {
  db = await createTestDatabase("idempotency_ttl");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_EVENT_TTL: "1s" }, ["api"]);
  api = restClient(server.url, TEST_ADMIN_KEY);
});

after(async () => {
  await server?.app.stop();
  await db?.drop();
});

test("a key reused within the TTL returns the first event; after it, a new event that the key then names", async () => {
  const publish = () => api("POST", "/events", { event_type: "ttl.x", payload: { n: 1 }, idempotency_key: "order-7" });
  const first = await publish();
  assert.equal(first.status, 201, JSON.stringify(first.body));
  const again = await publish();
  assert.equal(again.body.event_id, first.body.event_id, "within the TTL: the first event");
  await sleep(1_300);
  const later = await publish();
  assert.equal(later.status, 201, JSON.stringify(later.body));
  assert.notEqual(later.body.event_id, first.body.event_id, "past the TTL: a new event");
  const repeat = await publish();
  assert.equal(repeat.body.event_id, later.body.event_id, "the key now names the new event");
  // Concurrent reuses past the TTL agree on one new event.
  await sleep(1_300);
  const racing = await Promise.all(Array.from({ length: 8 }, publish));
  const ids = new Set(racing.map((r) => r.body.event_id));
  assert.equal(ids.size, 1, JSON.stringify(racing.map((r) => [r.status, r.body])));
  assert.ok(!ids.has(later.body.event_id));
});
