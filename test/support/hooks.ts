import assert from "node:assert/strict";
import type pg from "pg";
import type { restClient } from "./app.js";
import { verifyDelivery, type startReceiver } from "./receiver.js";
import { sleep } from "./wait.js";

/**
 * Scenarios of many webhooks on one receiver, each webhook with its own event type and path: publish
 * rounds (one event per webhook), then check what arrived against what was published.
 */

export type Receiver = Awaited<ReturnType<typeof startReceiver>>;
export type Rest = ReturnType<typeof restClient>;

export interface Hook {
  id: string;
  secret: string;
  path: string;
  type: string;
  /** Event ids in publish order. */
  published: string[];
}

export async function createHooks(rest: Rest, receiver: Receiver, count: number, label: string): Promise<Hook[]> {
  const hooks: Hook[] = [];
  for (let i = 0; i < count; i++) {
    const type = `${label}${i}.created`;
    const res = await rest("POST", "/webhooks", { url: receiver.url(`/${label}${i}`), event_types: [type] });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    hooks.push({ id: res.body.webhook_id, secret: res.body.secret, path: `/${label}${i}`, type, published: [] });
  }
  return hooks;
}

/** One event per webhook, in one batch; a webhook's events are published strictly one after another. */
export async function publishRound(rest: Rest, hooks: Hook[], round: number): Promise<number> {
  const started = Date.now();
  const res = await rest("POST", "/events/batch", { events: hooks.map((h) => ({ event_type: h.type, payload: { round } })) });
  assert.equal(res.status, 201, `round ${round}: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
  res.body.events.forEach((e: { event_id: string; delivery_count: number }, i: number) => {
    assert.equal(e.delivery_count, 1);
    hooks[i]!.published.push(e.event_id);
  });
  return Date.now() - started;
}

/**
 * publishRound as a producer does it when the API may be unavailable: each event carries an idempotency
 * key of its webhook and round, and the batch is sent again until it is accepted (a retry of a batch
 * that did commit returns the same events). Returns the refusals met on the way, as "status code".
 */
export async function publishRoundUntilAccepted(rest: Rest, hooks: Hook[], round: number, timeoutMs: number): Promise<string[]> {
  const refusals: string[] = [];
  const deadline = Date.now() + timeoutMs;
  const events = hooks.map((h) => ({ event_type: h.type, payload: { round }, idempotency_key: `${h.path}:${round}` }));
  for (;;) {
    const res = await rest("POST", "/events/batch", { events }).catch((err: Error) => ({ status: 0, body: err.message }));
    if (res.status === 201) {
      res.body.events.forEach((e: { event_id: string }, i: number) => hooks[i]!.published.push(e.event_id));
      return refusals;
    }
    refusals.push(`${res.status} ${res.body?.error?.code ?? JSON.stringify(res.body).slice(0, 200)}`);
    if (Date.now() > deadline) throw new Error(`round ${round} not accepted within ${timeoutMs} ms: ${refusals.slice(-3).join("; ")}`);
    await sleep(100);
  }
}

/**
 * Every event reached every webhook; per webhook the order of first receipt is publish order; each
 * duplicate is a repeat of an event already received (never an event arriving ahead of its
 * predecessor). Returns the number of duplicates per webhook path.
 */
export function checkReceived(receiver: Receiver, hooks: Hook[]): Map<string, number> {
  const duplicates = new Map<string, number>();
  for (const hook of hooks) {
    const got = receiver.forPath(hook.path);
    const firstSeen: string[] = [];
    const seen = new Map<string, number>();
    for (const entry of got) {
      const verified = verifyDelivery(entry, hook.secret);
      assert.equal(entry.headers["webhook-id"], verified.event_id);
      const id = verified.event_id;
      const times = (seen.get(id) ?? 0) + 1;
      seen.set(id, times);
      if (times === 1) {
        // The next new event must be exactly the next one published.
        assert.equal(id, hook.published[firstSeen.length], `${hook.path}: first receipt #${firstSeen.length} is out of publish order`);
        firstSeen.push(id);
      } else {
        // A repeat may only be of the event most recently first-received (the head that was in flight).
        assert.equal(id, firstSeen.at(-1), `${hook.path}: ${id} repeated after a later event had been received`);
      }
    }
    assert.deepEqual(firstSeen, hook.published, `${hook.path}: every event received`);
    for (const [id, times] of seen) assert.ok(times <= 2, `${hook.path}: ${id} arrived ${times} times`);
    duplicates.set(hook.path, got.length - firstSeen.length);
  }
  return duplicates;
}

export async function waitAllSucceeded(client: pg.Client, expected: number, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { rows } = await client.query<{ status: string; n: string }>("select status, count(*) as n from deliveries group by status");
    const byStatus = Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
    if (byStatus.succeeded === expected && rows.length === 1) return;
    if (Date.now() > deadline) throw new Error(`deliveries not all succeeded: ${JSON.stringify(byStatus)} (expected ${expected})`);
    await sleep(200);
  }
}

/**
 * Every event published to the hooks arrives exactly once, in publish order per webhook, and the record
 * says every delivery succeeded.
 */
export async function expectEachOnce(client: pg.Client, receiver: Receiver, hooks: Hook[], timeoutMs: number, what: string, noDuplicates = "no duplicates"): Promise<void> {
  const total = hooks.reduce((n, h) => n + h.published.length, 0);
  await receiver.waitFor(() => receiver.received.length >= total, timeoutMs, what);
  await waitAllSucceeded(client, total);
  // Anything extra (a duplicate) would show up now.
  await sleep(300);
  const duplicates = checkReceived(receiver, hooks);
  assert.equal([...duplicates.values()].reduce((a, b) => a + b, 0), 0, noDuplicates);
}
