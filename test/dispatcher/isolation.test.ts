import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createTestDatabase } from '../support/postgres.js';
import { NATS_URL, natsPrefix } from '../support/nats.js';
import { restClient, startTestApp, TEST_ADMIN_KEY } from '../support/app.js';
import { startReceiver, verifyDelivery } from '../support/receiver.js';

/**
 * Invariant 4 (a slow endpoint delays only its own lane) and what an attempt records: redirects are not
 * followed, response bodies are kept cut at 4 KB, and no response can wedge the attempt log.
 */

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

describe('isolation and the attempt log', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let nats: ReturnType<typeof natsPrefix>;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  let app: Awaited<ReturnType<typeof startTestApp>>['app'];
  let rest: ReturnType<typeof restClient>;
  /** Requests as they arrive (the receiver records them only when it answers). */
  const arrivals = new Map<string, number>();
  const answers = new Map<string, { status?: number; delayMs?: number; headers?: Record<string, string>; body?: string }>();

  before(async () => {
    db = await createTestDatabase('isolation');
    nats = natsPrefix('isolation');
    receiver = await startReceiver((req) => {
      arrivals.set(req.path, (arrivals.get(req.path) ?? 0) + 1);
      return answers.get(req.path);
    });
    ({ app } = await startTestApp({
      DATABASE_URL: db.url,
      NATS_URL,
      WEBHOOKD_NATS_PREFIX: nats.prefix,
      WEBHOOKD_DELIVERY_TIMEOUT: '10s',
      // One retry, a minute away: a failed attempt stays visibly scheduled for the whole test.
      WEBHOOKD_RETRY_SCHEDULE: '1m',
    }));
    rest = restClient(app.url!, TEST_ADMIN_KEY);
  });

  after(async () => {
    // The receiver goes first so the slow attempt in flight ends now rather than after its 5 s.
    await receiver?.close();
    await app?.stop();
    await nats?.cleanup();
    await db?.drop();
  });

  async function createWebhook(path: string, type: string) {
    const res = await rest('POST', '/webhooks', { url: receiver.url(path), event_types: [type] });
    assert.equal(res.status, 201, JSON.stringify(res.body));
    return { id: res.body.webhook_id as string, secret: res.body.secret as string };
  }

  async function onlyDelivery(webhookId: string, done: (d: any) => boolean, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const res = await rest('GET', `/webhooks/${webhookId}/deliveries`);
      assert.equal(res.status, 200);
      const d = res.body.deliveries[0];
      if (d && done(d)) {
        assert.equal(res.body.deliveries.length, 1);
        return d;
      }
      if (Date.now() > deadline) throw new Error(`delivery not settled: ${JSON.stringify(res.body)}`);
      await sleep(100);
    }
  }

  test('a 5 s endpoint does not hold up a healthy one on the same dispatcher', async () => {
    answers.set('/slow', { delayMs: 5_000 });
    const slow = await createWebhook('/slow', 'slow.created');
    const fast = await createWebhook('/fast', 'fast.created');
    const events = [];
    for (let n = 0; n < 20; n++) events.push({ event_type: 'slow.created', payload: { n } }, { event_type: 'fast.created', payload: { n } });
    const publishedAt = Date.now();
    const res = await rest('POST', '/events/batch', { events });
    assert.equal(res.status, 201);
    await receiver.waitFor(() => receiver.forPath('/fast').length === 20, 4_000, '20 healthy deliveries');
    const took = Date.now() - publishedAt;
    console.log(`# healthy webhook: 20 deliveries ${took} ms after publishing, beside a 5 s endpoint`);
    assert.ok(took < 2_500, `the healthy webhook took ${took} ms for 20 deliveries`);
    assert.deepEqual(
      receiver.forPath('/fast').map((r) => verifyDelivery(r, fast.secret).payload.n),
      Array.from({ length: 20 }, (_, n) => n),
    );
    assert.equal(arrivals.get('/slow'), 1, 'the slow webhook is still on its first request');
    assert.equal(receiver.forPath('/slow').length, 0, 'and that request has not been answered yet');
    // Its head completes after ~5 s and the second request follows, still in order.
    await receiver.waitFor(() => (arrivals.get('/slow') ?? 0) >= 2, 8_000, 'the slow webhook\'s second request');
    assert.equal(verifyDelivery(receiver.forPath('/slow')[0]!, slow.secret).payload.n, 0);
    answers.delete('/slow');
  });

  test('a redirect is not followed: the 302 is a failed attempt with a retry scheduled', async () => {
    answers.set('/redirect', { status: 302, headers: { location: receiver.url('/target') }, body: 'moved' });
    const hook = await createWebhook('/redirect', 'redirect.created');
    const res = await rest('POST', '/events', { event_type: 'redirect.created', payload: { a: 1 } });
    assert.equal(res.status, 201);
    const delivery = await onlyDelivery(hook.id, (d) => d.attempts === 1);
    assert.equal(delivery.status, 'pending');
    assert.equal(delivery.last_response_code, 302);
    const next = Date.parse(delivery.next_attempt_at);
    assert.ok(next > Date.now() + 30_000, `the retry is scheduled by the schedule (next_attempt_at ${delivery.next_attempt_at})`);
    const attempts = await rest('GET', `/deliveries/${delivery.delivery_id}/attempts`);
    assert.equal(attempts.body.attempts.length, 1);
    assert.equal(attempts.body.attempts[0].response_code, 302);
    assert.match(attempts.body.attempts[0].error, /302/);
    assert.equal(attempts.body.attempts[0].response_body, 'moved');
    await sleep(300);
    assert.equal(arrivals.get('/redirect'), 1, 'one attempt, no retry yet');
    assert.equal(arrivals.get('/target'), undefined, 'the redirect target was never contacted');
  });

  test('a response body over 4 KB is stored cut at 4 KB', async () => {
    answers.set('/big-ascii', { body: 'x'.repeat(10_000) });
    answers.set('/big-utf8', { body: '€'.repeat(3_000) }); // 3 bytes a character: 4096 falls mid-character
    answers.set('/huge', { body: 'y'.repeat(300_000) });
    for (const path of ['/big-ascii', '/big-utf8', '/huge']) {
      const hook = await createWebhook(path, `${path.slice(1)}.created`);
      const res = await rest('POST', '/events', { event_type: `${path.slice(1)}.created`, payload: {} });
      assert.equal(res.status, 201);
      const delivery = await onlyDelivery(hook.id, (d) => d.status !== 'pending');
      assert.equal(delivery.status, 'succeeded', path);
      const attempts = await rest('GET', `/deliveries/${delivery.delivery_id}/attempts`);
      const body: string = attempts.body.attempts[0].response_body;
      const full = answers.get(path)!.body!;
      assert.ok(Buffer.byteLength(body) <= 4096, `${path}: ${Buffer.byteLength(body)} bytes kept`);
      assert.ok(Buffer.byteLength(body) > 4090, `${path}: ${Buffer.byteLength(body)} bytes kept`);
      assert.ok(full.startsWith(body), `${path}: the kept body is the start of the response, whole characters only`);
    }
  });

  test('a response body that Postgres text cannot hold (NUL bytes) does not wedge the attempt log', async () => {
    answers.set('/nul', { body: 'ok\u0000\u0000then more' });
    const nul = await createWebhook('/nul', 'nul.created');
    const after = await createWebhook('/after-nul', 'afternul.created');
    const res = await rest('POST', '/events/batch', {
      events: [
        { event_type: 'nul.created', payload: { n: 0 } },
        { event_type: 'nul.created', payload: { n: 1 } },
        { event_type: 'afternul.created', payload: { n: 0 } },
      ],
    });
    assert.equal(res.status, 201);
    const deadline = Date.now() + 10_000;
    let rows: { status: string; attempts: number }[] = [];
    while (Date.now() < deadline) {
      rows = (await rest('GET', `/webhooks/${nul.id}/deliveries`)).body.deliveries;
      if (rows.length === 2 && rows.every((d) => d.status === 'succeeded')) break;
      await sleep(100);
    }
    assert.deepEqual(rows.map((d) => d.status), ['succeeded', 'succeeded'], 'both NUL-answered deliveries recorded');
    assert.equal(arrivals.get('/nul'), 2, 'each sent once');
    const attempts = await rest('GET', `/deliveries/${(rows[0] as any).delivery_id}/attempts`);
    assert.equal(attempts.body.attempts[0].response_code, 200);
    assert.match(attempts.body.attempts[0].response_body, /^ok.*then more$/);
    await onlyDelivery(after.id, (d) => d.status === 'succeeded');
  });
});
