import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, type Received } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";
import type { Resolver } from "../../src/dispatcher/guarded-lookup.js";

/**
 * Per-endpoint health in the dispatcher, end to end: a real webhookd (API + dispatcher in this
 * process) on a real Postgres, delivering to a real HTTP receiver on loopback. Covers the circuit
 * breaker (open → half-open → closed), the 429 slow-down, auto-disable after failing too long, and
 * that an SSRF-refused destination says nothing about the endpoint's health.
 */

type Rest = ReturnType<typeof restClient>;

interface Health {
  circuit_state: "closed" | "open" | "half_open";
  circuit_open_until?: string;
  consecutive_failures: number;
  failing_since?: string;
  throttle_ms: number;
}

interface DeliveryJson {
  delivery_id: string;
  seq: number;
  status: string;
  attempts: number;
  last_response_code?: number;
  last_error?: string;
}

interface AuditEntry {
  action: string;
  actor: string;
  resourceId: string;
  details: string;
  createdAt: string;
}

async function createWebhook(api: Rest, body: Record<string, unknown>): Promise<string> {
  const res = await api("POST", "/webhooks", body);
  assert.equal(res.status, 201, `creating webhook: ${JSON.stringify(res.body)}`);
  return res.body.webhook_id as string;
}

async function publishBatch(api: Rest, events: Record<string, unknown>[]): Promise<void> {
  const res = await api("POST", "/events/batch", { events });
  assert.equal(res.status, 201, `publishing: ${JSON.stringify(res.body)}`);
}

async function getWebhook(api: Rest, id: string): Promise<{ status: string; health: Health }> {
  const res = await api("GET", `/webhooks/${id}`);
  assert.equal(res.status, 200, `GET /webhooks/${id}: ${JSON.stringify(res.body)}`);
  return res.body;
}

async function deliveriesOf(api: Rest, id: string): Promise<DeliveryJson[]> {
  const res = await api("GET", `/webhooks/${id}/deliveries?page_size=100`);
  assert.equal(res.status, 200);
  return (res.body.deliveries as DeliveryJson[]).slice().sort((a, b) => a.seq - b.seq);
}

/**
 * Every attempt of the webhook's deliveries, by start time. `attempted_at` is taken as the gate lets
 * the attempt go, so its spacing is the gate's, free of the in-process receiver's event-loop lag.
 */
async function attemptStarts(api: Rest, webhookId: string): Promise<{ at: number; code: number | undefined }[]> {
  const starts: { at: number; code: number | undefined }[] = [];
  for (const d of await deliveriesOf(api, webhookId)) {
    const res = await api("GET", `/deliveries/${d.delivery_id}/attempts`);
    assert.equal(res.status, 200);
    for (const a of res.body.attempts as { attempted_at: string; response_code?: number }[]) {
      starts.push({ at: Date.parse(a.attempted_at), code: a.response_code });
    }
  }
  return starts.sort((a, b) => a.at - b.at);
}

async function auditLog(baseUrl: string): Promise<AuditEntry[]> {
  const res = await fetch(`${baseUrl}/webhook.v1.AdminService/ListAuditLog`, {
    method: "POST",
    headers: { authorization: `Bearer ${TEST_ADMIN_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ pageSize: 100 }),
  });
  assert.equal(res.status, 200);
  return ((await res.json()) as { entries?: AuditEntry[] }).entries ?? [];
}

const payloadN = (r: Received): number => (JSON.parse(r.body) as { payload: { n: number } }).payload.n;
const gapsOf = (list: { at: number }[]): number[] => list.slice(1).map((r, i) => r.at - list[i]!.at);
const schedule = (delay: string, times: number) => Array.from({ length: times }, () => delay).join(",");

// -------------------------------------------------------------------------------------------------

describe("circuit breaker and 429 slow-down (WEBHOOKD_CIRCUIT_FAILURES=3, cool-down 1500 ms, no retries)", () => {
  const COOLDOWN_MS = 1_500;
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let server: Awaited<ReturnType<typeof startTestApp>>;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let api: Rest;
  /** /circuit answers 500 until this is set; then its first success is held 1 s, so the probe is seen out. */
  let circuitHealthy = false;
  let circuitHealthyFrom = Infinity;
  const SLOW_429S = 5;

  before(async () => {
    db = await createTestDatabase("endpoint_health_circuit");
    server = await startTestApp({
      DATABASE_URL: db.url,
      WEBHOOKD_CIRCUIT_FAILURES: "3",
      WEBHOOKD_CIRCUIT_COOLDOWN: `${COOLDOWN_MS}ms`,
      // Set and empty: no retries, so each failed delivery is final at once and the lane moves on.
      WEBHOOKD_RETRY_SCHEDULE: "",
    });
    receiver = await startReceiver((req, count) => {
      if (req.path === "/circuit") {
        if (!circuitHealthy) return { status: 500 };
        if (circuitHealthyFrom === Infinity) circuitHealthyFrom = count;
        return count === circuitHealthyFrom ? { delayMs: 1_000 } : undefined;
      }
      if (req.path === "/slow") return count <= SLOW_429S ? { status: 429 } : undefined;
      return undefined;
    });
    api = restClient(server.url, TEST_ADMIN_KEY);
  });

  after(async () => {
    await server?.app.stop();
    await receiver?.close();
    await db?.drop();
  });

  test("failures open the circuit, deliveries wait without failing, a failed probe doubles the cool-down, a good probe closes it", async () => {
    const id = await createWebhook(api, { url: receiver.url("/circuit"), event_types: ["circuit.x"] });
    const fresh = await getWebhook(api, id);
    assert.deepEqual(fresh.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 });

    // One batch, so all ten are queued before the first answer comes back.
    await publishBatch(api, Array.from({ length: 10 }, (_, i) => ({ event_type: "circuit.x", payload: { n: i + 1 } })));

    // --- three failures open the circuit
    await receiver.waitFor(() => receiver.forPath("/circuit").length >= 3, 15_000, "three failed attempts");
    const opened = await eventually(
      () => getWebhook(api, id),
      (w) => w.health.circuit_state === "open",
      "the circuit to open",
    );
    assert.equal(opened.status, "active", "an open circuit is not a disabled webhook");
    assert.equal(opened.health.consecutive_failures, 3);
    assert.ok(opened.health.failing_since, "failing_since is set by the failures");
    assert.ok(opened.health.circuit_open_until, "an open circuit says until when");
    const openUntil1 = Date.parse(opened.health.circuit_open_until!);
    assert.ok(openUntil1 > Date.now(), `circuit_open_until ${opened.health.circuit_open_until} is in the future`);
    const third = receiver.forPath("/circuit")[2]!;
    const firstOpenMs = openUntil1 - third.at;
    assert.ok(firstOpenMs >= COOLDOWN_MS - 5 && firstOpenMs < 2 * COOLDOWN_MS, `first open lasts the cool-down (${firstOpenMs} ms after the 3rd attempt)`);
    assert.equal(receiver.forPath("/circuit").length, 3, "exactly three attempts before the circuit opened");

    const afterOpen = await deliveriesOf(api, id);
    assert.deepEqual(
      afterOpen.map((d) => d.status),
      ["failed", "failed", "failed", ...Array(7).fill("pending")],
      "the three failed deliveries are final (no retries); the rest wait",
    );
    for (const d of afterOpen.slice(0, 3)) assert.equal(d.last_response_code, 500);
    for (const d of afterOpen.slice(3)) assert.equal(d.attempts, 0, "nothing was attempted for the waiting deliveries");

    // --- during the cool-down: nothing is sent, nothing is failed
    await sleep(Math.max(0, openUntil1 - Date.now() - 200));
    assert.equal(receiver.forPath("/circuit").length, 3, "no attempt while the circuit is open");
    const duringCooldown = await deliveriesOf(api, id);
    assert.deepEqual(
      duringCooldown.map((d) => d.status),
      ["failed", "failed", "failed", ...Array(7).fill("pending")],
      "an open circuit fails nothing",
    );

    // --- the cool-down ends: one probe, it fails, the circuit opens for twice as long
    await receiver.waitFor(() => receiver.forPath("/circuit").length >= 4, 10_000, "the first probe");
    const probe1 = receiver.forPath("/circuit")[3]!;
    assert.ok(probe1.at >= openUntil1, `the probe waited for the cool-down (${openUntil1 - probe1.at} ms early)`);
    assert.equal(payloadN(probe1), 4, "the probe is the lane's head");
    const reopened = await eventually(
      () => getWebhook(api, id),
      (w) => w.health.circuit_state === "open" && w.health.consecutive_failures === 4,
      "the failed probe to open the circuit again",
    );
    const openUntil2 = Date.parse(reopened.health.circuit_open_until!);
    assert.ok(openUntil2 > openUntil1 + COOLDOWN_MS, "circuit_open_until moved further on");
    const secondOpenMs = openUntil2 - probe1.at;
    assert.ok(
      secondOpenMs >= 2 * COOLDOWN_MS - 5 && secondOpenMs < 3 * COOLDOWN_MS,
      `the second open lasts twice the cool-down (${secondOpenMs} ms after the probe)`,
    );
    assert.equal(reopened.health.failing_since, opened.health.failing_since, "failing_since stays at the first failure");
    const afterProbe1 = await deliveriesOf(api, id);
    assert.deepEqual(
      afterProbe1.map((d) => d.status),
      [...Array(4).fill("failed"), ...Array(6).fill("pending")],
      "the failed probe's delivery is final (no retries); the others still wait",
    );

    // --- the endpoint recovers; the second cool-down still holds the lane
    circuitHealthy = true;
    await sleep(Math.max(0, openUntil2 - Date.now() - 200));
    assert.equal(receiver.forPath("/circuit").length, 4, "no attempt during the second, longer cool-down");

    // The probe is held 1 s by the receiver: meanwhile the circuit shows half_open.
    const halfOpen = await eventually(
      () => getWebhook(api, id),
      (w) => w.health.circuit_state !== "open",
      "the cool-down to end",
    );
    assert.equal(halfOpen.health.circuit_state, "half_open", "between the cool-down's end and the probe's answer the circuit is half_open");
    await receiver.waitFor(() => receiver.forPath("/circuit").length >= 5, 10_000, "the second probe");
    const probe2 = receiver.forPath("/circuit")[4]!;
    assert.ok(probe2.at >= openUntil2, `the second probe waited for the doubled cool-down (${openUntil2 - probe2.at} ms early)`);

    // --- the probe succeeds: closed, and the rest go in publish order
    await receiver.waitFor(() => receiver.forPath("/circuit").length >= 10, 15_000, "the remaining deliveries");
    const closed = await eventually(
      () => getWebhook(api, id),
      (w) => w.health.circuit_state === "closed",
      "the circuit to close",
    );
    assert.deepEqual(closed.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 }, "a success makes the endpoint healthy");
    const final = await eventually(
      () => deliveriesOf(api, id),
      (list) => list.every((d) => d.status !== "pending"),
      "every delivery to be final",
    );
    assert.deepEqual(final.map((d) => d.status), [...Array(4).fill("failed"), ...Array(6).fill("succeeded")]);
    const circuitRequests = receiver.forPath("/circuit");
    assert.equal(circuitRequests.length, 10, "one attempt per delivery, nothing sent twice");
    assert.deepEqual(circuitRequests.map(payloadN), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "attempted and delivered in publish order");
    // The probe went alone: the next attempt started only after its (held) answer.
    assert.ok(circuitRequests[5]!.at - probe2.at >= 900, "nothing went beside the half-open probe");
  });

  test("repeated 429s space attempts out (not counting toward the circuit), successes bring the spacing back down", async () => {
    const retries = schedule("100ms", 10);
    // Baseline: the same load on an endpoint that never says 429 goes out together.
    const fastId = await createWebhook(api, { url: receiver.url("/fast"), event_types: ["fast.x"], ordered_by_key: true, retry_schedule: retries });
    await publishBatch(api, [1, 2, 3].map((n) => ({ event_type: "fast.x", payload: { n }, ordering_key: `k${n}` })));
    await eventually(() => deliveriesOf(api, fastId), (l) => l.length === 3 && l.every((d) => d.status === "succeeded"), "the baseline deliveries");
    const fast = await attemptStarts(api, fastId);
    const baselineSpread = fast.at(-1)!.at - fast[0]!.at;
    assert.equal((await getWebhook(api, fastId)).health.throttle_ms, 0);

    const id = await createWebhook(api, { url: receiver.url("/slow"), event_types: ["slow.x"], ordered_by_key: true, retry_schedule: retries });
    await publishBatch(api, [1, 2, 3].map((n) => ({ event_type: "slow.x", payload: { n }, ordering_key: `k${n}` })));

    // Sample the health while the 429s come and go: the circuit (threshold 3) must never move.
    const samples: Health[] = [];
    const delivered = await eventually(
      async () => {
        const w = await getWebhook(api, id);
        samples.push(w.health);
        return deliveriesOf(api, id);
      },
      (list) => list.length === 3 && list.every((d) => d.status === "succeeded"),
      "the three deliveries to get through",
      30_000,
    );
    const slow = receiver.forPath("/slow");
    // 5 × 429 (three at once, then two retries), then one success per delivery.
    assert.equal(slow.length, SLOW_429S + 3, `requests: ${slow.length}`);
    assert.equal(delivered.reduce((sum, d) => sum + d.attempts, 0), SLOW_429S + 3);

    const maxThrottle = Math.max(...samples.map((h) => h.throttle_ms));
    assert.ok(maxThrottle >= 800, `throttle_ms rose with the 429s (max seen ${maxThrottle})`);
    for (const h of samples) {
      assert.equal(h.circuit_state, "closed", `a 429 does not open the circuit: ${JSON.stringify(h)}`);
      assert.equal(h.consecutive_failures, 0, `a 429 is not a failure for the circuit: ${JSON.stringify(h)}`);
    }
    assert.ok(
      samples.some((h) => h.throttle_ms > 0 && h.failing_since),
      "a 429 counts toward auto-disable (documented): failing_since is set while throttled",
    );

    // Spacing between attempt starts: after three 429s at least 400 ms, then 800, then 1600 (lower bounds only).
    const starts = await attemptStarts(api, id);
    assert.deepEqual(
      starts.map((a) => a.code),
      [...Array(SLOW_429S).fill(429), 200, 200, 200],
      "the attempt log holds the 429s, then one success per delivery",
    );
    const gaps = gapsOf(starts);
    // gaps[k] is the wait before request k + 2 (1-based).
    const [, , g4, g5, g6, g7, g8] = gaps;
    assert.ok(g4! >= 350, `after three 429s the next start waited ${g4} ms (throttle 400)`);
    assert.ok(g5! >= 700, `after four 429s the next start waited ${g5} ms (throttle 800)`);
    assert.ok(g6! >= 1_400, `after five 429s the next start waited ${g6} ms (throttle 1600)`);
    assert.ok(g7! >= 700 && g8! >= 350, `the spacing halves per success, never dropping at once (${g7}, ${g8} ms)`);
    assert.ok(g6! > baselineSpread, `throttled spacing (${g6} ms) vs the same load without 429s (${baselineSpread} ms spread)`);

    // Successes halve the spacing: two more events bring it from 200 to 100 to 0.
    const afterBurst = await getWebhook(api, id);
    assert.ok(afterBurst.health.throttle_ms > 0 && afterBurst.health.throttle_ms <= 400, `still slowed after the burst: ${afterBurst.health.throttle_ms}`);
    assert.equal(afterBurst.health.failing_since, undefined, "a success clears failing_since");
    await publishBatch(api, [4, 5].map((n) => ({ event_type: "slow.x", payload: { n }, ordering_key: `k${n}` })));
    const recovered = await eventually(
      () => getWebhook(api, id),
      (w) => w.health.throttle_ms === 0,
      "throttle_ms to return to 0",
    );
    assert.deepEqual(recovered.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 });
    await receiver.waitFor(() => receiver.forPath("/slow").length >= SLOW_429S + 5, 10_000, "the two later deliveries");
  });
});

// -------------------------------------------------------------------------------------------------

describe("auto-disable (WEBHOOKD_AUTO_DISABLE_AFTER=2s, circuit off)", () => {
  const BLOCKED_HOST = "hooks.blocked-destination.example.com";
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let server: Awaited<ReturnType<typeof startTestApp>>;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let api: Rest;
  let downUp = false;
  /** Made-up names for the test; unknown names do not exist. Only loopback addresses are ever answered. */
  const dns = new Map<string, string[]>();
  const dnsCalls: string[] = [];
  const resolve: Resolver = async (hostname) => {
    const name = hostname.toLowerCase().replace(/\.+$/, "");
    dnsCalls.push(name);
    const list = dns.get(name);
    if (!list) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND", hostname });
    return list.map((address) => ({ address, family: net.isIP(address) }));
  };

  before(async () => {
    db = await createTestDatabase("endpoint_health_disable");
    server = await startTestApp(
      {
        DATABASE_URL: db.url,
        WEBHOOKD_AUTO_DISABLE_AFTER: "2s",
        WEBHOOKD_CIRCUIT_FAILURES: "0",
        // Only the receiver's own address: 127.0.0.2 (still this machine, harmless) is refused.
        WEBHOOKD_ALLOWED_CIDRS: "127.0.0.1/32",
      },
      ["api", "dispatcher"],
      { resolve },
    );
    receiver = await startReceiver((req) => {
      if (req.path === "/down") return downUp ? undefined : { status: 503 };
      if (req.path === "/always-down") return { status: 503 };
      if (req.path === "/always-busy") return { status: 429 };
      return undefined;
    });
    api = restClient(server.url, TEST_ADMIN_KEY);
  });

  after(async () => {
    await server?.app.stop();
    await receiver?.close();
    await db?.drop();
  });

  test("an endpoint failing longer than the window is disabled, audited, keeps its delivery pending; re-enabling resets health and delivers", async () => {
    const id = await createWebhook(api, { url: receiver.url("/down"), event_types: ["down.x"], retry_schedule: schedule("300ms", 20) });
    await publishBatch(api, [{ event_type: "down.x", payload: { n: 1 } }]);

    const disabled = await eventually(
      () => getWebhook(api, id),
      (w) => w.status === "disabled",
      "the failing webhook to be disabled",
      15_000,
    );
    const sentBeforeDisable = receiver.forPath("/down").length;
    assert.ok(disabled.health.failing_since, "failing_since is set");
    const failingSince = Date.parse(disabled.health.failing_since!);
    const down = receiver.forPath("/down");
    assert.ok(failingSince >= down[0]!.at, "failing_since is the first failed attempt");
    assert.ok(failingSince < down[1]!.at, "failing_since is not moved by later failures");
    assert.equal(disabled.health.circuit_state, "closed", "the breaker is off");
    assert.equal(disabled.health.consecutive_failures, sentBeforeDisable, "every 503 counted as a failure");

    const [delivery] = await deliveriesOf(api, id);
    assert.equal(delivery!.status, "pending", "disabling fails nothing");
    assert.equal(delivery!.attempts, sentBeforeDisable);
    assert.equal(delivery!.last_response_code, 503);

    const entries = (await auditLog(server.url)).filter((e) => e.resourceId === id && e.action === "webhook.disable");
    assert.equal(entries.length, 1, `one webhook.disable entry: ${JSON.stringify(entries)}`);
    assert.equal(entries[0]!.actor, "dispatcher");
    const details = JSON.parse(entries[0]!.details) as { reason: string; failing_since?: string };
    assert.match(details.reason, /fail/i);
    assert.equal(details.failing_since, disabled.health.failing_since);
    const disabledAfter = Date.parse(entries[0]!.createdAt) - failingSince;
    assert.ok(disabledAfter >= 1_990, `not disabled before the window: ${disabledAfter} ms after failing_since`);
    assert.ok(sentBeforeDisable >= 2, `several attempts failed first (${sentBeforeDisable})`);

    await sleep(1_500);
    assert.equal(receiver.forPath("/down").length, sentBeforeDisable, "nothing is sent to a disabled webhook");
    assert.equal((await deliveriesOf(api, id))[0]!.status, "pending");

    downUp = true;
    const put = await api("PUT", `/webhooks/${id}`, { status: "active" });
    assert.equal(put.status, 200);
    assert.equal(put.body.webhook.status, "active");
    assert.deepEqual(put.body.webhook.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 }, "re-enabling resets health");

    await receiver.waitFor(() => receiver.forPath("/down").length === sentBeforeDisable + 1, 15_000, "the delivery after re-enabling");
    const done = await eventually(() => deliveriesOf(api, id), (list) => list[0]?.status === "succeeded", "the delivery to succeed");
    assert.equal(done[0]!.attempts, sentBeforeDisable + 1);
    const healthy = await getWebhook(api, id);
    assert.equal(healthy.status, "active");
    assert.deepEqual(healthy.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 });
  });

  test("re-enabled while its head waits for a retry, a webhook starts afresh: one more failure does not disable it again", async () => {
    // The lane never sees the webhook disabled (no pump while its head waits 4 s), so only the
    // re-enable tells it that the saved health was reset.
    const path = "/always-down";
    const created = await api("POST", "/webhooks", { url: receiver.url(path), event_types: ["down.again"], retry_schedule: "4s,4s,4s,4s,4s,4s" });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const id = created.body.webhook_id;
    await api("POST", "/events", { event_type: "down.again", payload: { n: 1 } });
    await eventually(async () => (await api("GET", `/webhooks/${id}`)).body, (w: any) => w.status === "disabled", "auto-disable after two failures 4 s apart", 20_000);
    const put = await api("PUT", `/webhooks/${id}`, { status: "active" });
    assert.equal(put.status, 200, JSON.stringify(put.body));
    const reenabledAt = Date.now();
    const seen = receiver.forPath(path).length;
    await receiver.waitFor(() => receiver.forPath(path).length > seen, 15_000, "the retry after re-enabling");
    const w = await eventually(async () => (await api("GET", `/webhooks/${id}`)).body, (w: any) => w.health.consecutive_failures === 1, "the failure saved", 5_000);
    assert.equal(w.status, "active", "one failure after re-enabling, 0 s into a new failing streak");
    assert.ok(Date.parse(w.health.failing_since) >= reenabledAt, `failing_since ${w.health.failing_since} is after the re-enable`);
  });

  test("a disabled webhook re-enabled through paused starts afresh too", async () => {
    const created = await api("POST", "/webhooks", { url: receiver.url("/via-paused"), event_types: ["via.paused"] });
    const id = created.body.webhook_id;
    await server.app.store.db
      .updateTable("webhooks")
      .set({ status: "disabled", consecutive_failures: 7, failing_since: new Date(Date.now() - 3_600_000) })
      .where("id", "=", id)
      .execute();
    assert.equal((await api("PUT", `/webhooks/${id}`, { status: "paused" })).status, 200);
    const paused = await getWebhook(api, id);
    assert.equal(paused.status, "paused");
    assert.deepEqual(paused.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 });
  });

  test("an endpoint answering 429 to everything is disabled once the window passes, the slow-down at its cap or not", async () => {
    const created = await api("POST", "/webhooks", { url: receiver.url("/always-busy"), event_types: ["busy.x"], retry_schedule: "none" });
    const id = created.body.webhook_id;
    // The state after a dozen 429s in a row: the slow-down at its 60 s cap, failing for an hour. Another
    // 429 then changes nothing in the health, and no save used to follow to check the window.
    await server.app.store.db.updateTable("webhooks").set({ throttle_ms: 60_000, failing_since: new Date(Date.now() - 3_600_000) }).where("id", "=", id).execute();
    await sleep(1_200); // the dispatcher's cache takes the row
    await api("POST", "/events", { event_type: "busy.x", payload: { n: 1 } });
    await receiver.waitFor(() => receiver.forPath("/always-busy").length === 1, 10_000, "the 429");
    await eventually(async () => (await api("GET", `/webhooks/${id}`)).body, (w: any) => w.status === "disabled", "auto-disable", 5_000);
  });

  test("an SSRF-refused destination counts for nothing: no failing_since, no auto-disable past the window", async () => {
    // Unresolvable when registered (accepted: every dispatch checks again); 127.0.0.2 when sent to.
    const id = await createWebhook(api, { url: `http://${BLOCKED_HOST}:${receiver.port}/ssrf`, event_types: ["ssrf.x"] });
    dns.set(BLOCKED_HOST, ["127.0.0.2"]);

    const sendOne = async (n: number) => {
      await publishBatch(api, [{ event_type: "ssrf.x", payload: { n } }]);
      const list = await eventually(
        () => deliveriesOf(api, id),
        (l) => l.length === n && l[n - 1]!.status !== "pending",
        `delivery ${n} to be refused`,
      );
      const d = list[n - 1]!;
      assert.equal(d.status, "failed", "a refused destination fails at once");
      assert.equal(d.attempts, 1);
      assert.match(d.last_error ?? "", /blocked/, `refused by the guard: ${d.last_error}`);
    };

    await sendOne(1);
    const first = await getWebhook(api, id);
    assert.equal(first.status, "active");
    assert.deepEqual(first.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 }, "a refused attempt is neither a failure nor a success");

    // Past the auto-disable window since that first refusal; a counted failure would now disable it.
    await sleep(2_300);
    await sendOne(2);
    await sleep(300);
    const second = await getWebhook(api, id);
    assert.equal(second.status, "active", "never disabled for refused attempts");
    assert.deepEqual(second.health, { circuit_state: "closed", consecutive_failures: 0, throttle_ms: 0 });
    assert.ok(dnsCalls.includes(BLOCKED_HOST), "the dispatcher did resolve the name at send time");
    assert.equal(receiver.forPath("/ssrf").length, 0, "nothing reached any receiver");
    assert.ok(!(await auditLog(server.url)).some((e) => e.resourceId === id && e.action === "webhook.disable"));
  });
});
