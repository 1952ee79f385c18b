// A feed whose subscriptions are slow to make (JetStream up but without quorum: each request waits for
// its timeout) must not hold up the lease tick: subscribing the shards just claimed inside it kept the
// renewals waiting past the TTL, the leases lapsed, and every delivery stopped. Real Postgres, the real
// Dispatcher; the embedded feed with each subscription made 1.5 s late.
import { test } from "node:test";
import assert from "node:assert/strict";
import { sql } from "kysely";
import { createEmbeddedFeed } from "../../src/queue/embedded.js";
import type { DeliveryFeed } from "../../src/queue/feed.js";
import { countingSender, testDispatcher } from "../support/dispatcher.js";
import { suiteStore } from "../support/store.js";
import { sleep } from "../support/wait.js";

const suite = suiteStore("postgres", "slow_subscribe", { poolSize: 8 });
const SHARDS = 8;

test("subscriptions that take 1.5 s each never let the leases lapse; the start returns once every shard is subscribed", async () => {
  const db = suite().db;
  const embedded = createEmbeddedFeed();
  let subscribed = 0;
  const feed: DeliveryFeed = {
    ...embedded,
    consume: async (shard, onJob) => {
      await sleep(1_500);
      subscribed++;
      return embedded.consume(shard, onJob);
    },
  };
  const dispatcher = testDispatcher({ db, feed, sender: countingSender(), shardCount: SHARDS, leaseTtlMs: 2_000, leaseIntervalMs: 400 });
  const live = async () => (await sql<{ n: number }>`select count(*)::int as n from shard_leases where owner = ${dispatcher.id} and expires_at > now()`.execute(db)).rows[0]!.n;
  try {
    // The start waits for its first subscriptions (12 s of them); the leases must hold meanwhile.
    const started = dispatcher.start();
    for (let t = 0; (await live()) < SHARDS && t < 5_000; t += 50) await sleep(50);
    const samples: number[] = [];
    // Long enough for the leases to lapse twice over had the tick waited for the 8 × 1.5 s of subscriptions.
    for (let t = 0; t < 5_000; t += 250) {
      samples.push(await live());
      await sleep(250);
    }
    assert.ok(samples.every((n) => n === SHARDS), `live leases of the dispatcher over 5 s: ${samples.join(" ")}`);
    await started;
    assert.equal(subscribed, SHARDS, "every shard subscribed once the start is done");
  } finally {
    await dispatcher.stop();
    await feed.close();
  }
});
