// A feed whose subscriptions are slow to make (JetStream up but without quorum: each request waits for
// its timeout) must not hold up the lease tick: subscribing the shards just claimed inside it kept the
// renewals waiting past the TTL, the leases lapsed, and every delivery stopped. Real Postgres, the real
// Dispatcher; the embedded feed with each subscription made 1.5 s late.
import { test } from "node:test";
import assert from "node:assert/strict";
import pino from "pino";
import { sql } from "kysely";
import { SecretBox } from "../../src/core/secret-box.js";
import { Dispatcher } from "../../src/dispatcher/dispatcher.js";
import type { Sender } from "../../src/dispatcher/sender.js";
import { createEmbeddedFeed } from "../../src/queue/embedded.js";
import type { DeliveryFeed } from "../../src/queue/feed.js";
import { TEST_ENCRYPTION_KEY } from "../support/app.js";
import { suiteStore } from "../support/store.js";
import { sleep } from "../support/wait.js";

const suite = suiteStore("postgres", "slow_subscribe", { poolSize: 8 });
const SHARDS = 8;

test("subscriptions that take 1.5 s each never let the leases lapse; every shard is subscribed in the end", async () => {
  const db = suite().db;
  const embedded = createEmbeddedFeed();
  let subscribed = 0;
  const feed: DeliveryFeed = {
    ...embedded,
    kind: embedded.kind,
    publish: (jobs) => embedded.publish(jobs),
    healthy: () => embedded.healthy(),
    close: () => embedded.close(),
    consume: async (shard, onJob) => {
      await sleep(1_500);
      subscribed++;
      return embedded.consume(shard, onJob);
    },
  };
  const sender: Sender = { send: async () => ({ kind: "response", status: 200, body: "", retryAfter: undefined, durationMs: 1 }), close: async () => undefined };
  const dispatcher = new Dispatcher({
    db, feed, sender, log: pino({ level: "silent" }), shardCount: SHARDS, retrySchedule: [5_000], maxInFlight: 10, maxInFlightPerEndpoint: 4,
    secretBox: SecretBox.fromEncodedKey(TEST_ENCRYPTION_KEY), circuitPolicy: { failureThreshold: 5, cooldownMs: 1_000, maxCooldownMs: 10_000 },
    autoDisableAfterMs: 0, eventTtlMs: 3_600_000, leaseTtlMs: 2_000, leaseIntervalMs: 400, sweepIntervalMs: 500, housekeepingIntervalMs: 3_600_000,
  });
  const live = async () => (await sql<{ n: number }>`select count(*)::int as n from shard_leases where owner = ${dispatcher.id} and expires_at > now()`.execute(db)).rows[0]!.n;
  try {
    await dispatcher.start();
    const samples: number[] = [];
    // Long enough for the leases to lapse twice over had the tick waited for the 8 × 1.5 s of subscriptions.
    for (let t = 0; t < 5_000; t += 250) {
      samples.push(await live());
      await sleep(250);
    }
    assert.ok(samples.every((n) => n === SHARDS), `live leases of the dispatcher over 5 s: ${samples.join(" ")}`);
    for (let t = 0; subscribed < SHARDS && t < 15_000; t += 250) await sleep(250);
    assert.equal(subscribed, SHARDS, "every shard subscribed in the end");
  } finally {
    await dispatcher.stop();
    await feed.close();
  }
});
