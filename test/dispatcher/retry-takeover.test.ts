// A dispatcher killed while a delivery waits for its retry: the retry still happens on time after
// another dispatcher takes over its shards. Real processes (api, dispatchers), real Postgres and NATS.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { NATS_URL, natsPrefix } from "../support/nats.js";
import { restClient, TEST_ADMIN_KEY } from "../support/app.js";
import { webhookdProcesses } from "../support/processes.js";
import { startReceiver, verifyDelivery, type Received } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";
import { publishRound, type Hook as BaseHook, type Receiver, type Rest } from "../support/hooks.js";

const RETRY_MS = 6_000;
const JITTER = 0.2;
const LEASE_TTL_MS = 3_000;
/** Process scheduling, the sweep's period and grace, a batch commit: what "on time" may be late by. */
const SLACK_MS = 3_000;
const SHARDS = 64;

/** A webhook of the scenario, with the shard it hashes to. */
interface Hook extends BaseHook {
  shard: number;
}

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => console.error("cleanup failed", err));
});

/** Answers 503 to the first attempt of each event and 200 to every later one. */
async function failFirstReceiver(): Promise<Receiver> {
  const seen = new Map<string, number>();
  const receiver = await startReceiver((req) => {
    const id = String(req.headers["webhook-id"]);
    const n = (seen.get(id) ?? 0) + 1;
    seen.set(id, n);
    return n === 1 ? { status: 503, body: "try again" } : undefined;
  });
  cleanups.push(() => receiver.close());
  return receiver;
}

async function startCluster(label: string) {
  const database = await createTestDatabase(label);
  cleanups.push(() => database.drop());
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  cleanups.push(() => client.end());
  const nats = natsPrefix(label);
  cleanups.push(() => nats.cleanup());
  const env = {
    DATABASE_URL: database.url,
    NATS_URL,
    WEBHOOKD_NATS_PREFIX: nats.prefix,
    WEBHOOKD_ALLOW_HTTP: "true",
    WEBHOOKD_ALLOWED_CIDRS: "127.0.0.0/8",
    WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY,
    WEBHOOKD_LEASE_TTL: `${LEASE_TTL_MS / 1000}s`,
    WEBHOOKD_RETRY_SCHEDULE: `${RETRY_MS / 1000}s`,
    WEBHOOKD_LOG_LEVEL: "info",
  };
  const processes = webhookdProcesses(env);
  cleanups.push(() => processes.killAll("SIGKILL"));
  const { url: apiUrl } = await processes.api();
  const leases = async () => {
    const { rows } = await client.query<{ owner: string; n: string }>("select owner, count(*) as n from shard_leases where expires_at > now() group by owner");
    return Object.fromEntries(rows.map((r) => [r.owner, Number(r.n)]));
  };
  const ownerOf = async (shard: number) =>
    (await client.query<{ owner: string }>("select owner from shard_leases where shard = $1 and expires_at > now()", [shard])).rows[0]?.owner;
  return { client, rest: restClient(apiUrl, TEST_ADMIN_KEY), startDispatcher: processes.dispatcher, leases, ownerOf, stopAll: () => processes.killAll("SIGTERM") };
}

async function createHook(rest: Rest, client: pg.Client, receiver: Receiver, label: string): Promise<Hook> {
  const type = `${label}.created`;
  const res = await rest("POST", "/webhooks", { url: receiver.url(`/${label}`), event_types: [type] });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  const { rows } = await client.query<{ shard: number }>("select shard from webhooks where id = $1", [res.body.webhook_id]);
  return { id: res.body.webhook_id, secret: res.body.secret, path: `/${label}`, type, shard: rows[0]!.shard, published: [] };
}

interface Deliveries {
  byEvent: Map<string, { id: string; status: string; attempts: number; next_attempt_at: Date }>;
}

async function readDeliveries(client: pg.Client): Promise<Deliveries> {
  const { rows } = await client.query("select id, event_id, status, attempts, next_attempt_at from deliveries");
  return { byEvent: new Map(rows.map((r) => [r.event_id, r])) };
}

/**
 * Every webhook received each event exactly twice (the failed first attempt, then the retry), in publish
 * order, signed; each retry came no earlier than its schedule allows and no later than the schedule's
 * latest plus a lease TTL and some slack. Returns each retry's lateness past its stored next_attempt_at.
 */
function checkReceipts(receiver: Receiver, hooks: Hook[], scheduled: Map<string, number>, extraMs = 0): Map<string, number> {
  const latest = RETRY_MS * (1 + JITTER) + LEASE_TTL_MS + SLACK_MS + extraMs;
  const lateness = new Map<string, number>();
  for (const hook of hooks) {
    const got = receiver.forPath(hook.path);
    const ids = got.map((entry) => verifyDelivery(entry, hook.secret).event_id);
    assert.deepEqual(ids, hook.published.flatMap((id) => [id, id]), `${hook.path}: each event twice, in publish order`);
    for (let i = 0; i < hook.published.length; i++) {
      const first = got[2 * i] as Received;
      const retry = got[2 * i + 1] as Received;
      const gap = retry.at - first.at;
      assert.ok(gap >= RETRY_MS * (1 - JITTER), `${hook.path} event ${i}: retry ${gap} ms after the first attempt, earlier than the schedule allows`);
      assert.ok(gap <= latest, `${hook.path} event ${i}: retry ${gap} ms after the first attempt, later than ${latest} ms`);
      const at = scheduled.get(hook.published[i]!);
      if (at !== undefined) {
        // The retry never goes before the time stored with the first attempt's outcome.
        assert.ok(retry.at >= at - 20, `${hook.path} event ${i}: retried ${at - retry.at} ms before its next_attempt_at`);
        lateness.set(hook.published[i]!, retry.at - at);
      }
    }
  }
  return lateness;
}

async function waitAllSucceeded(client: pg.Client, expected: number, timeoutMs: number): Promise<void> {
  await eventually(
    async () => (await client.query<{ status: string; attempts: number; n: number }>("select status, attempts, count(*)::int as n from deliveries group by status, attempts")).rows,
    (rows) => rows.length === 1 && rows[0]!.status === "succeeded" && rows[0]!.n === expected,
    `${expected} deliveries succeeded`,
    timeoutMs,
  );
  const { rows } = await client.query("select status, attempts, count(*)::int as n from deliveries group by status, attempts");
  assert.deepEqual(rows, [{ status: "succeeded", attempts: 2, n: expected }], "each delivery succeeded on its second attempt");
  const { rows: attempts } = await client.query(
    "select d.id, array_agg(a.response_code order by a.id) as codes from deliveries d join delivery_attempts a on a.delivery_id = d.id group by d.id",
  );
  assert.equal(attempts.length, expected);
  for (const a of attempts) assert.deepEqual(a.codes, [503, 200], `${a.id}: attempts recorded`);
}

describe("retry takeover", () => {
  test("a dispatcher SIGKILLed while its retries wait: the surviving one sends them on time", async () => {
    const t0 = Date.now();
    const mark = (what: string) => console.log(`# ${Date.now() - t0} ms: ${what}`);
    const cluster = await startCluster("retrytakeover");
    const { client, rest } = cluster;
    const receiver = await failFirstReceiver();
    mark("api up");
    const [a, b] = await Promise.all([cluster.startDispatcher(), cluster.startDispatcher()]);
    mark("dispatchers up");
    await eventually(cluster.leases, (l) => Object.keys(l).length === 2 && Object.values(l).reduce((s, n) => s + n, 0) === SHARDS, "shards split between both", 15_000);
    mark("shards split");

    // Webhooks until four sit on A's shards and two on B's.
    const onA: Hook[] = [];
    const onB: Hook[] = [];
    for (let i = 0; (onA.length < 4 || onB.length < 2) && i < 60; i++) {
      const hook = await createHook(rest, client, receiver, `rt${i}`);
      const owner = await cluster.ownerOf(hook.shard);
      if (owner === a.id && onA.length < 4) onA.push(hook);
      else if (owner === b.id && onB.length < 2) onB.push(hook);
    }
    assert.equal(onA.length, 4, "four webhooks on the victim's shards");
    assert.equal(onB.length, 2, "two webhooks on the survivor's shards");
    const hooks = [...onA, ...onB];

    // Half the webhooks get a second event, which waits behind the head; the others have only the head.
    await publishRound(rest, hooks, 0);
    const twoEvents = [onA[0]!, onA[1]!, onB[0]!];
    await publishRound(rest, twoEvents, 1);
    const heads = hooks.map((h) => h.published[0]!);
    // The first attempts failed and their outcome is durable: each head waits in Postgres for its retry.
    const waiting = await eventually(
      () => readDeliveries(client),
      (d) => heads.every((id) => d.byEvent.get(id)?.attempts === 1),
      "the first attempts to be recorded",
      10_000,
    );
    const scheduled = new Map<string, number>();
    for (const id of heads) {
      const row = waiting.byEvent.get(id)!;
      assert.equal(row.status, "pending");
      scheduled.set(id, row.next_attempt_at.getTime());
    }
    for (const hook of hooks) {
      const first = receiver.forPath(hook.path);
      assert.equal(first.length, 1, `${hook.path}: only the head's first attempt so far`);
      const delay = scheduled.get(hook.published[0]!)! - first[0]!.at;
      assert.ok(delay >= RETRY_MS * (1 - JITTER) && delay <= RETRY_MS * (1 + JITTER) + 500, `${hook.path}: retry scheduled ${delay} ms out`);
    }
    for (const hook of onA) assert.equal(await cluster.ownerOf(hook.shard), a.id, `${hook.path} is still on the victim`);
    for (const hook of twoEvents) assert.equal(waiting.byEvent.get(hook.published[1]!)?.attempts, 0, `${hook.path}: the second event waits behind its head`);

    await a.proc.kill("SIGKILL");
    mark("killed the dispatcher holding the victim webhooks' retries");

    await waitAllSucceeded(client, hooks.length + twoEvents.length, 40_000);
    mark("all delivered");
    await sleep(300);
    const lateness = checkReceipts(receiver, hooks, scheduled);
    const owners = await cluster.leases();
    assert.deepEqual(Object.keys(owners), [b.id], "the survivor holds every shard");
    assert.equal(owners[b.id], SHARDS);
    // The new owner loads the lanes of retries coming due when it claims the shards, so a retry not yet
    // due at the takeover goes on time, not a sweep period late.
    for (const [eventId, ms] of lateness) assert.ok(ms <= 1_000, `the retry of ${eventId} came ${ms} ms after its next_attempt_at`);
    const late = (list: Hook[]) => list.map((h) => `${h.path}:${lateness.get(h.published[0]!)}`).join(" ");
    console.log(
      `# retry lateness past next_attempt_at (ms): taken over, a second event queued ${late([onA[0]!, onA[1]!])}; taken over, head only ${late([onA[2]!, onA[3]!])}; survivor's own ${late(onB)}`,
    );
    await cluster.stopAll();
  });

  test("the only dispatcher SIGKILLed after its retries came due: a dispatcher started afterwards sends them at takeover", async () => {
    const t0 = Date.now();
    const mark = (what: string) => console.log(`# ${Date.now() - t0} ms: ${what}`);
    const cluster = await startCluster("retrylate");
    const { client, rest } = cluster;
    const receiver = await failFirstReceiver();
    const a = await cluster.startDispatcher();
    await eventually(cluster.leases, (l) => l[a.id] === SHARDS, "the one dispatcher to hold every shard", 15_000);
    mark("api and one dispatcher up");

    const hooks: Hook[] = [];
    for (let i = 0; i < 3; i++) hooks.push(await createHook(rest, client, receiver, `rl${i}`));
    await publishRound(rest, hooks, 0);
    const heads = hooks.map((h) => h.published[0]!);
    const waiting = await eventually(
      () => readDeliveries(client),
      (d) => heads.every((id) => d.byEvent.get(id)?.attempts === 1),
      "the first attempts to be recorded",
      10_000,
    );
    const scheduled = new Map(heads.map((id) => [id, waiting.byEvent.get(id)!.next_attempt_at.getTime()]));
    const earliest = Math.min(...scheduled.values());
    const latest = Math.max(...scheduled.values());
    // Killed a moment before the earliest retry; the next dispatcher starts once every retry is due, so
    // the retries come due while nobody owns their shards and all are due when it takes over.
    await sleep(Math.max(0, earliest - 300 - Date.now()));
    assert.ok(hooks.every((h) => receiver.forPath(h.path).length === 1), "no retry before the kill");
    await a.proc.kill("SIGKILL");
    const killedAt = Date.now();
    mark("killed the only dispatcher");
    await sleep(Math.max(0, latest + 100 - Date.now()));
    const b = await cluster.startDispatcher();
    const readyAt = Date.now();
    mark("second dispatcher up");

    await waitAllSucceeded(client, hooks.length, 30_000);
    mark("all delivered");
    await sleep(300);
    // The bound allows a lease TTL after the kill for the takeover; a dispatcher that came up later than
    // that (started late on purpose, then loading the sources) adds the test's own delay.
    const slowStart = Math.max(0, readyAt - (killedAt + LEASE_TTL_MS));
    const lateness = checkReceipts(receiver, hooks, scheduled, slowStart);
    // The shards are free a lease TTL after the kill at the latest: the due retries go as soon as the new
    // dispatcher has them (its claim sweeps for due work at once), not a sweep period later.
    const takeover = Math.max(readyAt, killedAt + LEASE_TTL_MS);
    for (const hook of hooks) {
      const retryAt = receiver.forPath(hook.path)[1]!.at;
      assert.ok(retryAt >= killedAt, `${hook.path}: retried after the kill`);
      assert.ok(retryAt <= takeover + 1_500, `${hook.path}: retried ${retryAt - takeover} ms after the takeover`);
    }
    const owners = await cluster.leases();
    assert.deepEqual(owners, { [b.id]: SHARDS }, "the new dispatcher holds every shard");
    console.log(`# second dispatcher ready ${readyAt - killedAt} ms after the kill; retry lateness past next_attempt_at (ms): ${[...lateness.values()].join(", ")}`);
    await cluster.stopAll();
  });
});
