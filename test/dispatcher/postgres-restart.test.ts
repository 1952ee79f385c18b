// Invariant 1 across a Postgres crash: a server of the test's own is shut down immediately (every backend
// killed, no checkpoint) while deliveries are in flight and queued, and started again (crash recovery).
// Nothing accepted is lost, each webhook's order holds, publishes during the outage get a clear 503 (a
// producer retrying with idempotency keys gets every event in once), and the processes live through it.
// Real Postgres, real NATS, a real receiver.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { withTimeout } from "../../src/core/timeout.js";
import { connectClient, restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { checkReceived, createHooks, publishRound, publishRoundUntilAccepted, waitAllSucceeded } from "../support/hooks.js";
import { NATS_URL, natsPrefix } from "../support/nats.js";
import { startPostgresServer } from "../support/postgres.js";
import { startReceiver } from "../support/receiver.js";
import { collectUncaught } from "../support/uncaught.js";
import { sleep } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await withTimeout(cleanup(), 15_000).catch((err) => console.error("cleanup failed", err));
});

test("Postgres crashed and restarted mid-run: publishes in the outage get 503, nothing accepted is lost, order holds", async () => {
  const server = await startPostgresServer();
  cleanups.push(() => server.stop());
  const nats = natsPrefix("pgrestart");
  cleanups.push(() => nats.cleanup());
  // A little time per request, so that attempts are in flight when the server goes.
  const receiver = await startReceiver(() => ({ delayMs: 5 }));
  cleanups.push(() => receiver.close());
  const uncaught = collectUncaught();
  cleanups.push(uncaught.stop);

  const env = { DATABASE_URL: server.url, NATS_URL, WEBHOOKD_NATS_PREFIX: nats.prefix };
  const { app: api, url } = await startTestApp(env, ["api"]);
  cleanups.push(() => api.stop());
  const { app: dispatcher } = await startTestApp(env, ["dispatcher"]);
  cleanups.push(() => dispatcher.stop());
  const rest = restClient(url, TEST_ADMIN_KEY);
  const hooks = await createHooks(rest, receiver, 10, "pr");

  for (let round = 0; round < 5; round++) await publishRound(rest, hooks, round);
  await receiver.waitFor(() => receiver.received.length >= 50, 20_000, "the first 50");

  // A producer goes on publishing through the outage, as producers do: each round is sent again until
  // accepted, with idempotency keys, so a batch whose commit the crash hid is not published twice.
  const refusals: string[] = [];
  const producer = (async () => {
    for (let round = 5; round < 30; round++) {
      refusals.push(...(await publishRoundUntilAccepted(rest, hooks, round, 30_000)));
      await sleep(20);
    }
  })();
  await sleep(300);
  await server.crash();
  const down = Date.now();
  const answered = await rest("POST", "/events", { event_type: hooks[0]!.type, payload: {} });
  const answeredMs = Date.now() - down;
  assert.equal(answered.status, 503, JSON.stringify(answered.body));
  assert.deepEqual(answered.body, { error: { code: "unavailable", message: "the database is unavailable; try again shortly" } });
  assert.ok(answeredMs < 2_000, `the API answered at once while Postgres was down (${answeredMs} ms)`);
  const rpc = await connectClient(url, TEST_ADMIN_KEY)("EventService", "PublishEvent", { eventType: hooks[0]!.type, payload: {} });
  assert.deepEqual([rpc.status, rpc.body], [503, { code: "unavailable", message: "the database is unavailable; try again shortly" }], "the same over Connect");
  // Longer than the lease TTL (3 s here): the dispatcher's shards lapse in the outage.
  await sleep(4_000);
  await server.start();
  const up = Date.now();

  await producer;
  assert.ok(refusals.length > 0, "the producer met the outage");
  assert.deepEqual(new Set(refusals), new Set(["503 unavailable"]), "every refusal in the outage was a 503 'unavailable'");
  const total = hooks.reduce((n, h) => n + h.published.length, 0);
  assert.equal(total, 300);
  const distinct = () => new Set(receiver.received.map((r) => r.headers["webhook-id"])).size;
  await receiver.waitFor(() => distinct() >= total, 30_000, `all ${total} events`);
  const resumedMs = Date.now() - up;
  const client = new pg.Client({ connectionString: server.url });
  client.on("error", () => undefined);
  await client.connect();
  cleanups.push(() => client.end());
  await waitAllSucceeded(client, total);
  // Order per webhook, every signature, and a repeat only of a head whose record the crash cut off.
  const duplicates = [...checkReceived(receiver, hooks).values()].reduce((a, b) => a + b, 0);
  assert.deepEqual(uncaught.errors.map((e) => e.message), [], "no uncaught exception in the api or the dispatcher");
  console.log(`outage ${up - down} ms; ${refusals.length} refusals; all ${total} delivered ${resumedMs} ms after Postgres was back; ${duplicates} repeats`);
  await dispatcher.stop();
  await api.stop();
});
