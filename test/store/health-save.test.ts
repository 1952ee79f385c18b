// The dispatcher saves endpoint health after each change; the API resets it (a webhook re-enabled, a new
// URL). A save the lane made from what it knew before the reset, landing after it, must not bring the old
// failures back: the lane would keep them, and the next failure would disable the webhook again at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HEALTHY, type EndpointHealth } from "../../src/core/endpoint-gate.js";
import { healthOf, saveEndpointHealth, updateWebhook } from "../../src/store/webhooks.js";
import { suiteStore } from "../support/store.js";
import { insertTestWebhook } from "../support/rows.js";

const suite = suiteStore("postgres", "health_save", { poolSize: 2 });

/** Where insertTestWebhook points a webhook. */
const URL = "http://127.0.0.1:9/unused";
const failing = (n: number): EndpointHealth => ({ ...HEALTHY, consecutiveFailures: n, failingSince: Date.now() - 60_000 });

async function row(id: string) {
  const w = await suite().db.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirstOrThrow();
  return { health: healthOf(w), changedAt: w.updated_at.getTime() };
}

test("a save made before a reset the lane has not seen changes nothing; one made after seeing it is saved", async () => {
  await insertTestWebhook(suite().db, { id: "wh_reset", shard: 1 });
  const seen = (await row("wh_reset")).changedAt;
  assert.equal(await saveEndpointHealth(suite().db, "wh_reset", failing(3), { url: URL, changedAt: seen, previous: failing(2) }), true);
  assert.equal((await row("wh_reset")).health.consecutiveFailures, 3);

  await new Promise((resolve) => setTimeout(resolve, 5));
  await updateWebhook(suite().db, "wh_reset", { status: "active", health: HEALTHY });
  // The lane's save of its fourth failure, queued before the reset, lands after it.
  assert.equal(await saveEndpointHealth(suite().db, "wh_reset", failing(4), { url: URL, changedAt: seen, previous: failing(3) }), false);
  assert.deepEqual((await row("wh_reset")).health, HEALTHY);

  // Once the lane has seen the reset (its gate started afresh), its saves go in again.
  const now = (await row("wh_reset")).changedAt;
  assert.equal(await saveEndpointHealth(suite().db, "wh_reset", failing(1), { url: URL, changedAt: now, previous: HEALTHY }), true);
  assert.equal((await row("wh_reset")).health.consecutiveFailures, 1);
});

test("a change by the API that did not reset the health does not hold a save back", async () => {
  await insertTestWebhook(suite().db, { id: "wh_described", shard: 1 });
  const seen = (await row("wh_described")).changedAt;
  assert.equal(await saveEndpointHealth(suite().db, "wh_described", failing(2), { url: URL, changedAt: seen, previous: failing(1) }), true);
  await new Promise((resolve) => setTimeout(resolve, 5));
  await updateWebhook(suite().db, "wh_described", { description: "renamed" });
  assert.equal(await saveEndpointHealth(suite().db, "wh_described", failing(3), { url: URL, changedAt: seen, previous: failing(2) }), true);
  assert.equal((await row("wh_described")).health.consecutiveFailures, 3);
});

test("the first failure after an edit of a healthy webhook is saved: the row reads healthy because the lane was", async () => {
  await insertTestWebhook(suite().db, { id: "wh_first", shard: 1 });
  const seen = (await row("wh_first")).changedAt;
  await new Promise((resolve) => setTimeout(resolve, 5));
  await updateWebhook(suite().db, "wh_first", { description: "edited while the attempt was out" });
  assert.equal(await saveEndpointHealth(suite().db, "wh_first", failing(1), { url: URL, changedAt: seen, previous: HEALTHY }), true);
  assert.equal((await row("wh_first")).health.consecutiveFailures, 1);
});

test("a failure of the old URL, saved after the webhook was pointed elsewhere, changes nothing, whatever the lane knew", async () => {
  await insertTestWebhook(suite().db, { id: "wh_repointed", shard: 1 });
  const seen = (await row("wh_repointed")).changedAt;
  await new Promise((resolve) => setTimeout(resolve, 5));
  await updateWebhook(suite().db, "wh_repointed", { url: "http://127.0.0.1:9/elsewhere", health: HEALTHY });
  // The lane was healthy: a description edit would not hold this save back, but a new URL is a new endpoint.
  assert.equal(await saveEndpointHealth(suite().db, "wh_repointed", failing(1), { url: URL, changedAt: seen, previous: HEALTHY }), false);
  assert.deepEqual((await row("wh_repointed")).health, HEALTHY);
});
