import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, verifyDelivery, type Received } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";
import { NATS_URL, natsPrefix } from "../support/nats.js";

/**
 * ReplayWebhook end to end: real Postgres, the embedded feed, a real receiver. Failed attempts are final
 * (WEBHOOKD_RETRY_SCHEDULE empty) and the circuit breaker is off, so a run of 500s fails every delivery
 * at once instead of opening the circuit and holding the rest pending.
 */

/** A replay tells the lane through the feed, and nothing here waits for a sweep (without that word, half of these failed). */
const SWEEP_ONCE_A_MINUTE = { leaseTtlMs: 3_000, leaseIntervalMs: 500, sweepIntervalMs: 60_000, sweepGraceMs: 500 };

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let api: ReturnType<typeof restClient>;
let sqlClient: pg.Client;
/** Paths the receiver answers 500 on, until a test heals them. */
const failing = new Set<string>();

before(async () => {
  db = await createTestDatabase("replay");
  server = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_RETRY_SCHEDULE: "", WEBHOOKD_CIRCUIT_FAILURES: "0" }, ["api", "dispatcher"], {
    dispatcherTimings: SWEEP_ONCE_A_MINUTE,
  });
  receiver = await startReceiver((req) => (failing.has(req.path) ? { status: 500 } : undefined));
  api = restClient(server.url, TEST_ADMIN_KEY);
  sqlClient = new pg.Client({ connectionString: db.url });
  await sqlClient.connect();
});

after(async () => {
  await sqlClient?.end();
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

interface DeliveryJson {
  delivery_id: string;
  event_id: string;
  seq: number;
  status: string;
  attempts: number;
}

async function createWebhook(path: string, eventType: string): Promise<{ id: string; secret: string }> {
  const res = await api("POST", "/webhooks", { url: receiver.url(path), event_types: [eventType] });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return { id: res.body.webhook_id, secret: res.body.secret };
}

/** One batch: the deliveries' seqs follow the order of `ns`. */
async function publish(eventType: string, ns: number[]): Promise<string[]> {
  const res = await api("POST", "/events/batch", { events: ns.map((n) => ({ event_type: eventType, payload: { n } })) });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.events.map((e: { event_id: string }) => e.event_id);
}

async function deliveries(webhookId: string): Promise<DeliveryJson[]> {
  const res = await api("GET", `/webhooks/${webhookId}/deliveries?page_size=100`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.deliveries;
}

async function waitForStatuses(webhookId: string, count: number, status: string, what: string): Promise<DeliveryJson[]> {
  return eventually(
    () => deliveries(webhookId),
    (list) => list.length === count && list.every((d) => d.status === status),
    what,
    20_000,
  );
}

const n = (r: Received): number => JSON.parse(r.body).payload.n;
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

async function replay(webhookId: string, body: unknown) {
  return api("POST", `/webhooks/${webhookId}/replay`, body);
}

async function getReplay(webhookId: string, replayId: string) {
  const res = await api("GET", `/webhooks/${webhookId}/replays/${replayId}`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body;
}

async function connect(service: string, method: string, body: unknown, apiKey = TEST_ADMIN_KEY) {
  const res = await fetch(`${server.url}/webhook.v1.${service}/${method}`, {
    method: "POST",
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as any };
}

async function replayAudit(webhookId: string): Promise<{ action: string; resourceId: string; actor: string; details: string }[]> {
  const res = await connect("AdminService", "ListAuditLog", { pageSize: 100 });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return (res.body.entries ?? []).filter((e: { action: string; resourceId: string }) => e.action === "webhook.replay" && e.resourceId === webhookId);
}

async function replayRows(webhookId: string): Promise<number> {
  const res = await sqlClient.query<{ n: number }>("select count(*)::int as n from replays where webhook_id = $1", [webhookId]);
  return res.rows[0]!.n;
}

test("failed deliveries are replayed in publish order, paced at the rate, with their original webhook-id", async () => {
  const path = "/ordered";
  failing.add(path);
  const { id, secret } = await createWebhook(path, "ord.x");
  const since = new Date().toISOString();
  const eventIds = await publish("ord.x", range(1, 10));

  const failed = await waitForStatuses(id, 10, "failed", "all ten deliveries to fail");
  assert.ok(failed.every((d) => d.attempts === 1), "no retries: one attempt each");
  assert.equal(receiver.forPath(path).length, 10);
  const originals = receiver.forPath(path);

  failing.delete(path);
  const calledAt = Date.now();
  const res = await replay(id, { since, rate_per_second: 5 });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const r = res.body;
  assert.match(r.replay_id, /^rpl_[0-9a-z]{26}$/);
  assert.equal(r.webhook_id, id);
  assert.equal(r.scope, "failed", "failed is the default scope");
  assert.equal(r.since, since);
  assert.ok(Date.parse(r.until) >= calledAt - 1_000 && Date.parse(r.until) <= Date.now() + 1_000, `until defaults to now (got ${r.until})`);
  assert.equal(r.rate_per_second, 5);
  assert.equal(r.total, 10);
  assert.equal(r.pending, 10);
  assert.equal(r.succeeded, 0);
  assert.equal(r.failed, 0);
  assert.ok(r.created_at);

  await receiver.waitFor(() => receiver.forPath(path).length >= 20, 20_000, "the ten replayed deliveries");
  const replayed = receiver.forPath(path).slice(10);
  assert.deepEqual(replayed.map(n), range(1, 10), "replayed in publish (seq) order");

  // Pacing: the k-th is due k/rate s after the call, so it cannot arrive before (lower bounds only).
  const offsets = JSON.stringify(replayed.map((e) => e.at - calledAt));
  replayed.forEach((entry, k) => {
    assert.ok(entry.at >= calledAt + k * 200 - 100, `replay #${k + 1} arrived ${entry.at - calledAt} ms after the call, before its turn at ${k * 200} ms`);
  });
  const span = replayed.at(-1)!.at - replayed[0]!.at;
  assert.ok(span >= ((10 - 1) / 5) * 1000 * 0.8, `ten replays at 5/s took only ${span} ms from first to last (ms after the call: ${offsets})`);
  const gaps = replayed.slice(1).map((e, k) => e.at - replayed[k]!.at);
  assert.ok(Math.min(...gaps) >= 100, `replays at 5/s came ${Math.min(...gaps)} ms apart, faster than the rate allows (ms after the call: ${offsets})`);

  // Standard Webhooks: the same message id (the event id) as the original attempt, signed with the secret.
  replayed.forEach((entry, k) => {
    const original = originals.find((o) => n(o) === k + 1)!;
    assert.equal(entry.headers["webhook-id"], original.headers["webhook-id"], `webhook-id of n=${k + 1}`);
    assert.equal(entry.headers["webhook-id"], eventIds[k]);
    const verified = verifyDelivery(entry, secret);
    assert.equal(verified.event_id, eventIds[k]);
  });

  const done = await eventually(() => getReplay(id, r.replay_id), (g) => g.pending === 0, "the replay to finish");
  assert.equal(done.total, 10);
  assert.equal(done.succeeded, 10);
  assert.equal(done.failed, 0);
  const after = await deliveries(id);
  assert.deepEqual(after.map((d) => d.status), Array(10).fill("succeeded"));
  assert.ok(after.every((d) => d.attempts === 2), "one more attempt each");

  const audit = await replayAudit(id);
  assert.equal(audit.length, 1, "one webhook.replay audit entry");
  assert.equal(audit[0]!.actor, "bootstrap");
  const details = JSON.parse(audit[0]!.details);
  assert.equal(details.replay_id, r.replay_id);
  assert.equal(details.total, 10);
  assert.equal(details.scope, "failed");

  await sleep(800);
  assert.equal(receiver.forPath(path).length, 20, "each delivery is replayed once");
});

test("scope all replays succeeded deliveries too; scope failed on a healthy webhook replays nothing", async () => {
  const path = "/healthy";
  const { id } = await createWebhook(path, "ok.x");
  const since = new Date().toISOString();
  await publish("ok.x", range(1, 5));
  await waitForStatuses(id, 5, "succeeded", "the five deliveries to succeed");
  await receiver.waitFor(() => receiver.forPath(path).length === 5, 5_000, "five deliveries");

  const none = await replay(id, { since, scope: "failed" });
  assert.equal(none.status, 202, JSON.stringify(none.body));
  assert.equal(none.body.total, 0);
  assert.equal(none.body.pending, 0);
  const noneLater = await getReplay(id, none.body.replay_id);
  assert.equal(noneLater.total, 0);
  assert.equal(noneLater.succeeded, 0);

  // The Connect API this time.
  const all = await connect("WebhookService", "ReplayWebhook", { webhookId: id, since, scope: "all", ratePerSecond: 50 });
  assert.equal(all.status, 200, JSON.stringify(all.body));
  assert.equal(all.body.replay.scope, "all");
  assert.equal(all.body.replay.total, 5);
  assert.equal(all.body.replay.pending, 5);
  assert.equal(all.body.replay.ratePerSecond, 50);

  await receiver.waitFor(() => receiver.forPath(path).length >= 10, 15_000, "the five deliveries a second time");
  assert.deepEqual(receiver.forPath(path).map(n), [...range(1, 5), ...range(1, 5)]);

  const got = await eventually(
    () => connect("WebhookService", "GetReplay", { webhookId: id, replayId: all.body.replay.replayId }),
    (g) => g.status === 200 && g.body.replay.succeeded === 5,
    "the scope-all replay to finish",
  );
  assert.equal(got.body.replay.total, 5);
  assert.equal(got.body.replay.pending ?? 0, 0);
  await sleep(600);
  assert.equal(receiver.forPath(path).length, 10, "the empty replay sent nothing");
});

test("since and until select only the deliveries created in between", async () => {
  const path = "/window";
  failing.add(path);
  const { id } = await createWebhook(path, "win.x");
  await publish("win.x", range(1, 3));
  await sleep(60);
  const since = new Date().toISOString();
  await sleep(60);
  await publish("win.x", range(4, 6));
  await sleep(60);
  const until = new Date().toISOString();
  await sleep(60);
  await publish("win.x", range(7, 9));
  await waitForStatuses(id, 9, "failed", "all nine deliveries to fail");
  assert.equal(receiver.forPath(path).length, 9);

  failing.delete(path);
  const res = await replay(id, { since, until, rate_per_second: 50 });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.total, 3);
  assert.equal(res.body.since, since);
  assert.equal(res.body.until, until);

  await receiver.waitFor(() => receiver.forPath(path).length >= 12, 15_000, "the three middle deliveries");
  await eventually(() => getReplay(id, res.body.replay_id), (g) => g.pending === 0 && g.succeeded === 3, "the replay to finish");
  await sleep(800);
  assert.deepEqual(receiver.forPath(path).slice(9).map(n), [4, 5, 6], "only the middle group, in order");
  const statuses = (await deliveries(id)).map((d) => d.status);
  assert.deepEqual(statuses, ["failed", "failed", "failed", "succeeded", "succeeded", "succeeded", "failed", "failed", "failed"]);
});

test("the range is on created_at, the time the API shows, not on the time in the delivery's id", async () => {
  const path = "/created";
  const { id } = await createWebhook(path, "created.x");
  await publish("created.x", [1]);
  const [delivery] = await waitForStatuses(id, 1, "succeeded", "the delivery");
  // A slow ingest: the delivery's id (made after the subscribers were read) is 5 s later than its created_at.
  await sqlClient.query("update deliveries set created_at = created_at - interval '5 seconds' where id = $1", [delivery!.delivery_id]);
  const createdAt = Date.parse((await api("GET", `/deliveries/${delivery!.delivery_id}`)).body.created_at);
  const inside = await replay(id, { since: new Date(createdAt - 1_000).toISOString(), until: new Date(createdAt + 1).toISOString(), scope: "all" });
  assert.equal(inside.status, 202, JSON.stringify(inside.body));
  assert.equal(inside.body.total, 1, "created inside the range");
  await eventually(() => getReplay(id, inside.body.replay_id), (g) => g.pending === 0, "the replay to finish");
  const after = await replay(id, { since: new Date(createdAt + 1).toISOString(), scope: "all" });
  assert.equal(after.status, 202, JSON.stringify(after.body));
  assert.equal(after.body.total, 0, "created before the range");
});

test("a replay from before 1970 takes everything from the start", async () => {
  const { id } = await createWebhook("/epoch", "epoch.x");
  await publish("epoch.x", [1, 2]);
  await waitForStatuses(id, 2, "succeeded", "both deliveries");
  const res = await replay(id, { since: "1969-12-31T00:00:00Z", scope: "all" });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.total, 2);
});

test("a paced replay gives each delivery its TTL from its turn; one that would come due after its records go is refused", async () => {
  const path = "/paced";
  const { id } = await createWebhook(path, "paced.x");
  const since = new Date(Date.now() - 60_000).toISOString();
  await publish("paced.x", [1, 2, 3, 4]);
  await waitForStatuses(id, 4, "succeeded", "the four deliveries");

  // One every 11.6 days: the fourth would come due 35 days on, after the retention of its records.
  const tooSlow = await replay(id, { since, scope: "all", rate_per_second: 0.000001 });
  assert.equal(tooSlow.status, 409, JSON.stringify(tooSlow.body));
  assert.match(tooSlow.body.error.message, /at 0\.000001 per second, 1 of the 4 deliveries would come due after their records are removed/);
  assert.deepEqual((await deliveries(id)).map((d) => d.status), ["succeeded", "succeeded", "succeeded", "succeeded"], "nothing put back");
  assert.equal(await replayRows(id), 0);

  // One every 100 s: each keeps the whole TTL from its turn (from the replay's start, the tail expired unsent).
  const slow = await replay(id, { since, scope: "all", rate_per_second: 0.01 });
  assert.equal(slow.status, 202, JSON.stringify(slow.body));
  const { rows } = await sqlClient.query<{ seq: number; ttl_ms: number }>(
    "select seq, extract(epoch from expires_at - next_attempt_at) * 1000 as ttl_ms from deliveries where webhook_id = $1 order by seq",
    [id],
  );
  const ttls = rows.map((r) => Math.round(Number(r.ttl_ms)));
  assert.equal(new Set(ttls).size, 1, `the same TTL from each one's turn: ${ttls.join(", ")}`);
  assert.equal(ttls[0], server.config.eventTtlMs);
  // Cancelled rather than left to come due during the other tests.
  await sqlClient.query("update deliveries set status = 'cancelled' where webhook_id = $1 and status = 'pending'", [id]);
});

test("bad replay requests are refused with 400 naming the problem, and write nothing", async () => {
  const path = "/refused";
  failing.add(path);
  const { id } = await createWebhook(path, "bad.x");
  const since = new Date(Date.now() - 60_000).toISOString();
  await publish("bad.x", [1, 2]);
  await waitForStatuses(id, 2, "failed", "both deliveries to fail");
  failing.delete(path);

  const future = new Date(Date.now() + 3_600_000).toISOString();
  const cases: { name: string; body: unknown; message: RegExp }[] = [
    { name: "since missing", body: {}, message: /since is required/ },
    { name: "since missing, other fields set", body: { scope: "all", rate_per_second: 5 }, message: /since/ },
    { name: "since not RFC 3339", body: { since: "yesterday" }, message: /since must be an RFC 3339 time/ },
    { name: "since a date only", body: { since: "2026-01-01" }, message: /since/ },
    { name: "since not a string", body: { since: 1700000000 }, message: /since must be a string/ },
    { name: "since in the future", body: { since: future }, message: /since is in the future/ },
    { name: "until equal to since", body: { since, until: since }, message: /until .* must be after since/ },
    { name: "until before since", body: { since, until: new Date(Date.now() - 120_000).toISOString() }, message: /until .* must be after since/ },
    { name: "until not RFC 3339", body: { since, until: "now" }, message: /until must be an RFC 3339 time/ },
    { name: "unknown scope", body: { since, scope: "succeeded" }, message: /scope must be "failed".*"all".*succeeded/ },
    { name: "negative rate", body: { since, rate_per_second: -1 }, message: /rate_per_second .*-1/ },
    { name: "rate over 10000", body: { since, rate_per_second: 10_001 }, message: /rate_per_second .*10000/ },
    { name: "rate under one in 11.6 days", body: { since, rate_per_second: 1e-14 }, message: /rate_per_second must be from 0\.000001 to 10000, or 0 for the server's default \(got 1e-14\)/ },
    { name: "rate as a string", body: { since, rate_per_second: "fast" }, message: /rate_per_second must be a number/ },
    { name: "unknown field", body: { since, speed: 3 }, message: /unknown field speed/ },
    { name: "camelCase field over REST", body: { since, ratePerSecond: 3 }, message: /unknown field ratePerSecond/ },
    { name: "not JSON", body: "{since:", message: /not valid JSON/ },
    { name: "not an object", body: [since], message: /JSON object/ },
  ];
  for (const c of cases) {
    const res = await replay(id, c.body);
    assert.equal(res.status, 400, `${c.name}: ${JSON.stringify(res.body)}`);
    assert.equal(res.body.error?.code, "invalid_argument", c.name);
    assert.match(res.body.error.message, c.message, c.name);
  }

  // Over Connect too: the same checks, the contract's code.
  const connectBad = await connect("WebhookService", "ReplayWebhook", { webhookId: id, since, ratePerSecond: -5 });
  assert.equal(connectBad.status, 400);
  assert.equal(connectBad.body.code, "invalid_argument");
  assert.match(connectBad.body.message, /rate_per_second/);
  const connectNoSince = await connect("WebhookService", "ReplayWebhook", { webhookId: id });
  assert.equal(connectNoSince.body.code, "invalid_argument");
  assert.match(connectNoSince.body.message, /since is required/);

  // Unknown webhooks: well-formed but absent, malformed, and another tenant's.
  const missing = await replay("wh_00000000000000000000000000", { since });
  assert.equal(missing.status, 404, JSON.stringify(missing.body));
  assert.equal(missing.body.error.code, "not_found");
  assert.equal((await replay("nonsense", { since })).status, 404);

  const tenant = await connect("AdminService", "CreateTenant", { name: `replay-other-${Date.now()}` });
  assert.equal(tenant.status, 200, JSON.stringify(tenant.body));
  const key = await connect("AdminService", "CreateApiKey", { tenantId: tenant.body.tenant.tenantId });
  assert.equal(key.status, 200, JSON.stringify(key.body));
  const asOther = restClient(server.url, key.body.key);
  const foreign = await asOther("POST", `/webhooks/${id}/replay`, { since, scope: "all" });
  assert.equal(foreign.status, 404, JSON.stringify(foreign.body));
  assert.equal(foreign.body.error.code, "not_found");
  const foreignConnect = await connect("WebhookService", "ReplayWebhook", { webhookId: id, since, scope: "all" }, key.body.key);
  assert.equal(foreignConnect.status, 404, JSON.stringify(foreignConnect.body));

  // Nothing was written: no replay, no audit entry, the deliveries untouched, nothing sent.
  assert.equal(await replayRows(id), 0);
  assert.equal((await replayAudit(id)).length, 0);
  const after = await deliveries(id);
  assert.deepEqual(after.map((d) => [d.status, d.attempts]), [["failed", 1], ["failed", 1]]);
  const replayIds = await sqlClient.query("select count(*)::int as n from deliveries where webhook_id = $1 and replay_id is not null", [id]);
  assert.equal(replayIds.rows[0].n, 0);

  // A good request afterwards is accepted, and its replay is not visible to the other tenant.
  const ok = await replay(id, { since, rate_per_second: 10_000 });
  assert.equal(ok.status, 202, JSON.stringify(ok.body));
  assert.equal(ok.body.total, 2);
  assert.equal((await asOther("GET", `/webhooks/${id}/replays/${ok.body.replay_id}`)).status, 404);
  assert.equal((await api("GET", `/webhooks/${id}/replays/rpl_00000000000000000000000000`)).status, 404);
  assert.equal((await api("GET", `/webhooks/${id}/replays/junk`)).status, 404);
  await eventually(() => getReplay(id, ok.body.replay_id), (g) => g.succeeded === 2, "the accepted replay to finish");
  assert.equal(await replayRows(id), 1);
  assert.equal((await replayAudit(id)).length, 1);
});

test("a replay while live events keep arriving delivers the replayed and the live ones, losing nothing", async () => {
  const path = "/live";
  failing.add(path);
  const { id } = await createWebhook(path, "live.x");
  const since = new Date().toISOString();
  await publish("live.x", range(1, 10));
  await waitForStatuses(id, 10, "failed", "the ten old deliveries to fail");
  failing.delete(path);

  // Live events 11..40, one every ~40 ms; the replay starts once a few of them are out.
  const live = (async () => {
    for (const k of range(11, 40)) {
      const res = await api("POST", "/events", { event_type: "live.x", payload: { n: k } });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      await sleep(40);
    }
  })();
  await receiver.waitFor(() => receiver.forPath(path).some((r) => n(r) === 13), 10_000, "the first live deliveries");
  const res = await replay(id, { since, rate_per_second: 20 });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.total, 10, "only the ten failed ones; the live ones are pending or succeeded");
  await live;

  const all = await waitForStatuses(id, 40, "succeeded", "all forty deliveries to succeed");
  assert.deepEqual(all.map((d) => d.seq), range(1, 40));
  const done = await getReplay(id, res.body.replay_id);
  assert.equal(done.pending, 0);
  assert.equal(done.succeeded, 10);

  await sleep(500);
  const afterHeal = receiver.forPath(path).slice(10).map(n);
  const replayedOrder = afterHeal.filter((k) => k <= 10);
  const liveOrder = afterHeal.filter((k) => k > 10);
  assert.deepEqual(replayedOrder, range(1, 10), "every old delivery replayed once, in order");
  assert.deepEqual(liveOrder, range(11, 40), "every live delivery once, in order");
});

test("a replay of more deliveries than a lane holds: a live event published during it waits for all of them", async () => {
  // 300 put back, past the 256 a lane holds: its read from the first is cut below its position.
  const path = "/replay-past-capacity";
  const { id } = await createWebhook(path, "big.x");
  const since = new Date().toISOString();
  for (let b = 0; b < 3; b++) await publish("big.x", range(b * 100 + 1, b * 100 + 100));
  await receiver.waitFor(() => receiver.forPath(path).length === 300, 30_000, "the 300 originals");
  // Received is not yet recorded: a replay takes final deliveries only.
  await eventually(
    async () => (await sqlClient.query<{ n: number }>("select count(*)::int as n from deliveries where webhook_id = $1 and status = 'succeeded'", [id])).rows[0]!.n,
    (n) => n === 300,
    "the 300 originals recorded",
  );
  const res = await replay(id, { since, scope: "all", rate_per_second: 300 });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.total, 300);
  await receiver.waitFor(() => receiver.forPath(path).length >= 305, 20_000, "the replay under way");
  const live = await api("POST", "/events", { event_type: "big.x", payload: { n: 301 } });
  assert.equal(live.status, 201, JSON.stringify(live.body));
  await receiver.waitFor(() => receiver.forPath(path).length >= 601, 30_000, "the replay and the live event");
  assert.deepEqual(receiver.forPath(path).slice(300).map(n), range(1, 301), "the replayed ones in seq order, then the live one");
});

test("with the JetStream feed: the replay's word and the live events come through NATS, in one ordered lane (no sweep)", async () => {
  const natsDb = await createTestDatabase("replay_nats");
  const nats = natsPrefix("replay");
  let app: Awaited<ReturnType<typeof startTestApp>> | undefined;
  try {
    app = await startTestApp({
      DATABASE_URL: natsDb.url,
      NATS_URL,
      WEBHOOKD_NATS_PREFIX: nats.prefix,
      WEBHOOKD_RETRY_SCHEDULE: "",
      WEBHOOKD_CIRCUIT_FAILURES: "0",
      WEBHOOKD_REPLAY_RATE: "25",
    }, ["api", "dispatcher"], { dispatcherTimings: SWEEP_ONCE_A_MINUTE });
    const natsApi = restClient(app.url, TEST_ADMIN_KEY);
    const path = "/nats";
    failing.add(path);
    const created = await natsApi("POST", "/webhooks", { url: receiver.url(path), event_types: ["nats.x"] });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id: string = created.body.webhook_id;
    const since = new Date().toISOString();
    const batch = await natsApi("POST", "/events/batch", { events: range(1, 6).map((k) => ({ event_type: "nats.x", payload: { n: k } })) });
    assert.equal(batch.status, 201, JSON.stringify(batch.body));
    await eventually(
      () => natsApi("GET", `/webhooks/${id}/deliveries`),
      (r) => r.body.deliveries?.length === 6 && r.body.deliveries.every((d: DeliveryJson) => d.status === "failed"),
      "the six deliveries to fail",
    );
    failing.delete(path);

    // No rate given: the server's WEBHOOKD_REPLAY_RATE.
    const res = await natsApi("POST", `/webhooks/${id}/replay`, { since });
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.rate_per_second, 25);
    assert.equal(res.body.total, 6);
    for (const k of range(7, 12)) {
      assert.equal((await natsApi("POST", "/events", { event_type: "nats.x", payload: { n: k } })).status, 201);
      await sleep(50);
    }

    await receiver.waitFor(() => receiver.forPath(path).length >= 18, 20_000, "six replayed and six live deliveries");
    await eventually(
      () => natsApi("GET", `/webhooks/${id}/replays/${res.body.replay_id}`),
      (r) => r.body.pending === 0 && r.body.succeeded === 6,
      "the replay to finish",
    );
    await sleep(500);
    const afterHeal = receiver.forPath(path).slice(6).map(n);
    assert.deepEqual(afterHeal.filter((k) => k <= 6), range(1, 6), "replayed once each, in order");
    assert.deepEqual(afterHeal.filter((k) => k > 6), range(7, 12), "live once each, in order");
    const final = await natsApi("GET", `/webhooks/${id}/deliveries`);
    assert.deepEqual(final.body.deliveries.map((d: DeliveryJson) => d.status), Array(12).fill("succeeded"));
  } finally {
    await app?.app.stop();
    await nats.cleanup().catch(() => undefined);
    await natsDb.drop();
  }
});
