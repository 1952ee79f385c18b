// The owners' sweep reads a page of webhooks at a time and goes on to the next: cut at its limit, it
// left the webhooks past it to the feed alone, and behind enough paused webhooks with a backlog (or
// lanes held by open circuits) a delivery whose feed message was lost was never sent. Real Postgres, a
// real receiver, a page of two webhooks.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
const apps: Awaited<ReturnType<typeof startTestApp>>["app"][] = [];

before(async () => {
  db = await createTestDatabase("sweep");
  receiver = await startReceiver();
});

after(async () => {
  for (const app of apps) await app.stop();
  await receiver?.close();
  await db?.drop();
});

test("a delivery the feed never brought is sent, however many webhooks with held work come before it", async () => {
  // The api alone: what it publishes to its in-process feed reaches no dispatcher, as if the message were lost.
  const api = await startTestApp({ DATABASE_URL: db.url }, ["api"]);
  apps.push(api.app);
  const rest = restClient(api.url, TEST_ADMIN_KEY);
  const ids: string[] = [];
  for (const name of ["held-1", "held-2", "live"]) {
    const res = await rest("POST", "/webhooks", { url: receiver.url(`/${name}`), event_types: [`sweep.${name}`] });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    ids.push(res.body.webhook_id);
    await sleep(5); // ids are time-ordered: the held webhooks come first in the sweep's walk
  }
  assert.ok(ids[0]! < ids[1]! && ids[1]! < ids[2]!, `webhook ids in creation order: ${ids.join(", ")}`);
  for (const id of ids.slice(0, 2)) assert.equal((await rest("PUT", `/webhooks/${id}`, { status: "paused" })).status, 200);
  for (const name of ["held-1", "held-2", "live"]) {
    assert.equal((await rest("POST", "/events", { event_type: `sweep.${name}`, payload: { name } })).status, 201);
  }

  const dispatcher = await startTestApp({ DATABASE_URL: db.url }, ["dispatcher"], {
    dispatcherTimings: { leaseTtlMs: 3_000, leaseIntervalMs: 500, sweepIntervalMs: 500, sweepGraceMs: 500, sweepPageSize: 2 },
  });
  apps.push(dispatcher.app);
  await eventually(async () => receiver.forPath("/live").length, (n) => n === 1, "the live webhook's delivery", 15_000);
  assert.equal(receiver.forPath("/held-1").length + receiver.forPath("/held-2").length, 0, "paused webhooks receive nothing");
});
