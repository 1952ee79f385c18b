import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Webhook as SvixWebhook } from 'svix';
import { createTestDatabase } from '../support/postgres.js';
import { NATS_URL, natsPrefix } from '../support/nats.js';
import { connectClient, startTestApp, restClient, TEST_ADMIN_KEY } from '../support/app.js';
import { startReceiver, verifyDelivery } from '../support/receiver.js';
import { eventually, sleep } from '../support/wait.js';

/**
 * The delivery pipeline's conformance suite: one body, run against both feeds behind the DeliveryFeed
 * interface — the embedded in-process feed and JetStream — on a real Postgres.
 */

const WEBHOOKS = 50;
const EVENTS_PER_WEBHOOK = 100;
const BATCH = 10;


type Feed = 'embedded' | 'jetstream';

function conformance(feed: Feed) {
  describe(`delivery pipeline conformance (${feed} feed)`, () => {
    let db: Awaited<ReturnType<typeof createTestDatabase>>;
    let nats: ReturnType<typeof natsPrefix> | undefined;
    let receiver: Awaited<ReturnType<typeof startReceiver>>;
    let app: Awaited<ReturnType<typeof startTestApp>>['app'];
    let rest: ReturnType<typeof restClient>;
    let rpc: ReturnType<typeof connectClient>;
    /** Per receiver path: [in flight now, most at once]. */
    const concurrency = new Map<string, { now: number; max: number; perKey: Map<string, number>; keyOverlap: number }>();
    const delays = new Map<string, number>();
    /** Per receiver path: the ordering key whose deliveries it answers with a 500. */
    const failingKey = new Map<string, string>();

    before(async () => {
      db = await createTestDatabase(`conf_${feed}`);
      const env: Record<string, string> = { DATABASE_URL: db.url };
      if (feed === 'jetstream') {
        nats = natsPrefix(`conf`);
        Object.assign(env, { NATS_URL, WEBHOOKD_NATS_PREFIX: nats.prefix });
      }
      receiver = await startReceiver((req) => {
        const failing = failingKey.get(req.path);
        if (failing !== undefined && (JSON.parse(req.body) as { payload: { key?: string } }).payload.key === failing) return { status: 500 };
        const delayMs = delays.get(req.path) ?? 0;
        if (delayMs === 0) return undefined;
        let c = concurrency.get(req.path);
        if (!c) concurrency.set(req.path, (c = { now: 0, max: 0, perKey: new Map(), keyOverlap: 0 }));
        const key = String((JSON.parse(req.body) as { payload: { key?: string } }).payload.key ?? '');
        c.now++;
        c.max = Math.max(c.max, c.now);
        const open = c.perKey.get(key) ?? 0;
        if (open > 0) c.keyOverlap++;
        c.perKey.set(key, open + 1);
        setTimeout(() => {
          c!.now--;
          c!.perKey.set(key, c!.perKey.get(key)! - 1);
        }, delayMs);
        return { delayMs };
      });
      const started = await startTestApp(env);
      app = started.app;
      assert.equal(app.feed.kind, feed);
      rest = restClient(started.url, TEST_ADMIN_KEY);
      rpc = connectClient(started.url, TEST_ADMIN_KEY);
    });

    after(async () => {
      await app?.stop();
      await receiver?.close();
      await nats?.cleanup();
      await db?.drop();
    });

    async function createWebhook(path: string, eventTypes: string[], extra: Record<string, unknown> = {}) {
      const res = await rest('POST', '/webhooks', { url: receiver.url(path), event_types: eventTypes, ...extra });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.match(res.body.webhook_id, /^wh_/);
      assert.match(res.body.secret, /^whsec_/);
      return { id: res.body.webhook_id as string, secret: res.body.secret as string, path };
    }

    test(`${WEBHOOKS} webhooks × ${EVENTS_PER_WEBHOOK} events: all delivered, in order, signed, in the contract's shape`, async () => {
      const hooks = [];
      for (let i = 0; i < WEBHOOKS; i++) hooks.push(await createWebhook(`/w${i}`, [`t${i}.created`]));
      const eventIds = hooks.map(() => [] as string[]);
      const started = Date.now();

      // Publishing is concurrent across webhooks and sequential within one, so publish order is defined
      // per webhook. Even webhooks get Connect PublishEvents batches, odd ones REST POST /events/batch
      // (single POST /events is exercised by the tests below).
      await Promise.all(
        hooks.map(async (_hook, i) => {
          if (i % 2 === 0) {
            for (let from = 0; from < EVENTS_PER_WEBHOOK; from += BATCH) {
              const events = Array.from({ length: BATCH }, (_, k) => ({ eventType: `t${i}.created`, payload: { webhook: i, n: from + k, note: 'ü€' } }));
              const res = await rpc('EventService', 'PublishEvents', { events });
              assert.equal(res.status, 200, JSON.stringify(res.body));
              assert.equal(res.body.events.length, BATCH);
              for (const r of res.body.events) {
                assert.equal(r.event.deliveryCount, 1);
                // CONTRACT.md: the events in order, each with its eventId.
                assert.match(r.eventId, /^evt_/);
                assert.equal(r.eventId, r.event.eventId);
                eventIds[i]!.push(r.eventId);
              }
            }
          } else {
            for (let from = 0; from < EVENTS_PER_WEBHOOK; from += BATCH) {
              const events = Array.from({ length: BATCH }, (_, k) => ({ event_type: `t${i}.created`, payload: { webhook: i, n: from + k, note: 'ü€' } }));
              const res = await rest('POST', '/events/batch', { events });
              assert.equal(res.status, 201, JSON.stringify(res.body));
              for (const e of res.body.events) {
                assert.match(e.event_id, /^evt_/);
                assert.equal(e.delivery_count, 1);
                eventIds[i]!.push(e.event_id);
              }
            }
          }
        }),
      );
      const published = Date.now();
      const total = WEBHOOKS * EVENTS_PER_WEBHOOK;
      await receiver.waitFor(() => receiver.received.filter((r) => /^\/w\d+$/.test(r.path)).length >= total, 90_000, `${total} deliveries`);
      const delivered = Date.now();
      await sleep(300); // anything extra (a duplicate) would show up now
      console.log(`# ${feed}: published ${total} in ${published - started} ms, all delivered ${delivered - started} ms after the first publish`);

      let svixChecked = 0;
      const svix = new Map(hooks.map((h) => [h.secret, new SvixWebhook(h.secret)]));
      for (const [i, hook] of hooks.entries()) {
        const got = receiver.forPath(hook.path);
        assert.equal(got.length, EVENTS_PER_WEBHOOK, `${hook.path}: ${got.length} requests (no duplicates without a crash)`);
        const seen: number[] = [];
        for (const entry of got) {
          assert.equal(entry.headers['content-type'], 'application/json');
          const verified = verifyDelivery(entry, hook.secret);
          const body = JSON.parse(entry.body) as Record<string, unknown>;
          assert.deepEqual(Object.keys(body).sort(), ['event_id', 'event_type', 'payload', 'timestamp']);
          assert.equal(verified.event_id, body.event_id);
          assert.equal(entry.headers['webhook-id'], body.event_id, 'webhook-id is the event id');
          assert.equal(body.event_type, `t${i}.created`);
          assert.match(String(body.timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
          assert.ok(!Number.isNaN(Date.parse(String(body.timestamp))));
          assert.match(String(entry.headers['webhook-timestamp']), /^\d+$/);
          assert.ok(Math.abs(Number(entry.headers['webhook-timestamp']) - Date.now() / 1000) < 300);
          const payload = body.payload as { webhook: number; n: number; note: string };
          assert.deepEqual(payload, { webhook: i, n: payload.n, note: 'ü€' });
          assert.equal(body.event_id, eventIds[i]![payload.n], `${hook.path}: event ${payload.n} carries the id publish answered`);
          seen.push(payload.n);
          // The issue asks for both reference verifiers on every delivery.
          svix.get(hook.secret)!.verify(entry.body, {
            'webhook-id': String(entry.headers['webhook-id']),
            'webhook-timestamp': String(entry.headers['webhook-timestamp']),
            'webhook-signature': String(entry.headers['webhook-signature']),
          });
          svixChecked++;
        }
        assert.deepEqual(seen, Array.from({ length: EVENTS_PER_WEBHOOK }, (_, n) => n), `${hook.path} received in publish order`);
      }
      assert.equal(svixChecked, total, 'svix verified every delivery');

      // The record agrees: every delivery succeeded on its first attempt.
      const hook = hooks[7]!;
      const list = await eventually(
        () => rest('GET', `/webhooks/${hook.id}/deliveries?status=succeeded&page_size=100`),
        (r) => r.status === 200 && r.body.deliveries.length === EVENTS_PER_WEBHOOK,
        'succeeded deliveries listed',
      );
      for (const d of list.body.deliveries) {
        assert.match(d.delivery_id, /^dlv_/);
        assert.equal(d.webhook_id, hook.id);
        assert.equal(d.status, 'succeeded');
        assert.equal(d.attempts, 1);
        assert.equal(d.last_response_code, 200);
        assert.ok(d.delivered_at, 'delivered_at set');
        assert.ok(d.created_at, 'created_at set');
        assert.ok(!('next_attempt_at' in d), 'a final delivery has no next attempt');
      }
      assert.deepEqual(new Set(list.body.deliveries.map((d: { event_id: string }) => d.event_id)), new Set(eventIds[7]));
      const attempts = await rest('GET', `/deliveries/${list.body.deliveries[0].delivery_id}/attempts`);
      assert.equal(attempts.status, 200);
      assert.equal(attempts.body.attempts.length, 1);
      assert.equal(attempts.body.attempts[0].response_code, 200);
      assert.equal(typeof attempts.body.attempts[0].duration_ms, 'number');
      assert.ok(attempts.body.attempts[0].attempted_at);
      const pending = await rest('GET', `/webhooks/${hook.id}/deliveries?status=pending`);
      assert.deepEqual(pending.body.deliveries, []);

      // And across all webhooks, straight from Postgres.
      const counts = await eventually(
        () => app.store.db.selectFrom('deliveries').select(['status']).select((eb) => eb.fn.countAll<string>().as('n')).groupBy('status').execute(),
        (rows) => rows.length === 1 && rows[0]!.status === 'succeeded',
        'every delivery succeeded in Postgres',
      );
      assert.equal(Number(counts[0]!.n), total);
    });

    test('an idempotency key reused returns the first event_id and creates no second delivery', async () => {
      const hook = await createWebhook('/idem', ['idem.created']);
      const first = await rest('POST', '/events', { event_type: 'idem.created', payload: { a: 1 }, idempotency_key: 'order-42' });
      assert.equal(first.status, 201);
      assert.equal(first.body.duplicate, false);
      const again = await rest('POST', '/events', { event_type: 'idem.created', payload: { a: 2 }, idempotency_key: 'order-42' });
      assert.equal(again.status, 200);
      assert.equal(again.body.event_id, first.body.event_id);
      assert.equal(again.body.duplicate, true);
      const viaRpc = await rpc('EventService', 'PublishEvent', { eventType: 'idem.created', payload: { a: 3 }, idempotencyKey: 'order-42' });
      assert.equal(viaRpc.status, 200);
      assert.equal(viaRpc.body.event.eventId, first.body.event_id);
      assert.equal(viaRpc.body.eventId, first.body.event_id);
      assert.equal(viaRpc.body.duplicate, true);
      // Inside one batch too.
      const batch = await rpc('EventService', 'PublishEvents', {
        events: [
          { eventType: 'idem.created', payload: { b: 1 }, idempotencyKey: 'batch-1' },
          { eventType: 'idem.created', payload: { b: 2 }, idempotencyKey: 'batch-1' },
        ],
      });
      assert.equal(batch.status, 200);
      assert.equal(batch.body.events[0].event.eventId, batch.body.events[1].event.eventId);
      assert.equal(batch.body.events[1].eventId, batch.body.events[0].eventId, 'the duplicate answers with the first event id');
      await receiver.waitFor(() => receiver.forPath('/idem').length >= 2, 10_000, 'two idempotent deliveries');
      await sleep(1_000);
      assert.equal(receiver.forPath('/idem').length, 2, 'one delivery per distinct event');
      assert.deepEqual(JSON.parse(receiver.forPath('/idem')[0]!.body).payload, { a: 1 }, 'the first payload is the one kept');
      const list = await rest('GET', `/webhooks/${hook.id}/deliveries`);
      assert.equal(list.body.deliveries.length, 2);
    });

    test('an event type nobody subscribes to is accepted with delivery_count 0', async () => {
      const res = await rest('POST', '/events', { event_type: 'nobody.listens', payload: { x: 1 } });
      assert.equal(res.status, 201, JSON.stringify(res.body));
      assert.equal(res.body.delivery_count, 0);
      const got = await rest('GET', `/events/${res.body.event_id}`);
      assert.equal(got.status, 200);
      assert.equal(got.body.delivery_count, 0);
      const rows = await app.store.db.selectFrom('deliveries').select('id').where('event_id', '=', res.body.event_id).execute();
      assert.equal(rows.length, 0);
    });

    test('the very next event sees a webhook added, re-subscribed or deleted', async () => {
      // The API plans an ingest from the subscribers it last saw; each change below must reach the next publish.
      const publish = async (expected: number, step: string) => {
        const res = await rest('POST', '/events', { event_type: 'plan.made', payload: { step } });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.delivery_count, expected, step);
        const rows = await app.store.db.selectFrom('deliveries').select('webhook_id').where('event_id', '=', res.body.event_id).execute();
        return rows.map((r) => r.webhook_id).sort();
      };
      assert.deepEqual(await publish(0, 'nobody subscribed yet'), []);
      assert.deepEqual(await publish(0, 'still nobody'), []);
      const exact = await createWebhook('/plan-exact', ['plan.made']);
      assert.deepEqual(await publish(1, 'one webhook added'), [exact.id]);
      const wildcard = await createWebhook('/plan-wildcard', ['plan.*']);
      assert.deepEqual(await publish(2, 'a wildcard added'), [exact.id, wildcard.id].sort());
      assert.equal((await rest('PUT', `/webhooks/${exact.id}`, { event_types: ['plan.other'] })).status, 200);
      assert.deepEqual(await publish(1, 'the exact one re-subscribed elsewhere'), [wildcard.id]);
      assert.equal((await rest('DELETE', `/webhooks/${wildcard.id}`)).status, 200);
      assert.deepEqual(await publish(0, 'the wildcard deleted'), []);
      assert.equal((await rest('PUT', `/webhooks/${exact.id}`, { event_types: ['plan.made'] })).status, 200);
      assert.deepEqual(await publish(1, 'subscribed back'), [exact.id]);
      await receiver.waitFor(() => receiver.forPath('/plan-exact').length >= 2, 10_000, 'the exact webhook\'s two deliveries');
    });

    test('a payload over 256 KB is refused: REST 413, Connect invalid_argument naming the limit; nothing written', async () => {
      await createWebhook('/big', ['big.created']);
      const payload = { blob: 'x'.repeat(270 * 1024) };
      const res = await rest('POST', '/events', { event_type: 'big.created', payload });
      assert.equal(res.status, 413, JSON.stringify(res.body).slice(0, 300));
      assert.equal(res.body.error.code, 'payload_too_large');
      assert.match(res.body.error.message, /262144 bytes|256 KB/);
      const huge = await rest('POST', '/events', { event_type: 'big.created', payload: { blob: 'x'.repeat(400 * 1024) } });
      assert.equal(huge.status, 413);
      assert.match(huge.body.error.message, /payload is \d+ bytes; the limit is 262144 bytes \(256 KB\)/);
      // Past what the API reads of any request (as much as Connect reads: 100 events' worth), the body is
      // refused before it is read, and the answer names that limit.
      const hugeBatch = await rest('POST', '/events/batch', { events: [{ event_type: 'big.created', payload: { blob: 'x'.repeat(33_000_000) } }] });
      assert.equal(hugeBatch.status, 413);
      assert.match(hugeBatch.body.error.message, /request body is \d+ bytes; the limit is \d+ bytes: the most the API reads of a request; split the batch/);
      const viaRpc = await rpc('EventService', 'PublishEvent', { eventType: 'big.created', payload });
      assert.equal(viaRpc.status, 400);
      assert.equal(viaRpc.body.code, 'invalid_argument');
      assert.match(viaRpc.body.message, /262144 bytes|256 KB/);
      const batch = await rpc('EventService', 'PublishEvents', { events: [{ eventType: 'big.created', payload: { ok: true } }, { eventType: 'big.created', payload }] });
      assert.equal(batch.body.code, 'invalid_argument');
      assert.match(batch.body.message, /events\[1\]\.payload/);
      // Just under the limit is fine.
      const fits = await rest('POST', '/events', { event_type: 'big.created', payload: { blob: 'x'.repeat(200 * 1024) } });
      assert.equal(fits.status, 201);
      const rows = await app.store.db.selectFrom('events').select('id').where('event_type', '=', 'big.created').execute();
      assert.equal(rows.length, 1, 'only the event that fits was written');
      await receiver.waitFor(() => receiver.forPath('/big').length === 1, 10_000, 'the 200 KB delivery');
    });

    test('malformed requests answer 400 and write nothing', async () => {
      const before = await app.store.db.selectFrom('events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow();
      const bad: [string, string, unknown][] = [
        ['POST', '/events', { payload: { a: 1 } }],
        ['POST', '/events', { event_type: 'a.b', payload: [1, 2] }],
        ['POST', '/events', { event_type: 'a.b', payload: 'text' }],
        ['POST', '/events', { event_type: 'a.*', payload: {} }],
        ['POST', '/events', { event_type: '', payload: {} }],
        ['POST', '/events', 'not json'],
        ['POST', '/events/batch', { events: Array.from({ length: 101 }, (_, n) => ({ event_type: 'a.b', payload: { n } })) }],
      ];
      for (const [method, path, body] of bad) {
        const res = await rest(method, path, body);
        assert.equal(res.status, 400, `${path} ${JSON.stringify(body).slice(0, 80)} → ${res.status}`);
        assert.equal(res.body.error.code, 'invalid_argument');
        assert.ok(res.body.error.message.length > 0);
      }
      const tooMany = await rpc('EventService', 'PublishEvents', { events: Array.from({ length: 101 }, (_, n) => ({ eventType: 'a.b', payload: { n } })) });
      assert.equal(tooMany.status, 400);
      assert.equal(tooMany.body.code, 'invalid_argument');
      assert.match(tooMany.body.message, /101.*100/);
      const noType = await rpc('EventService', 'PublishEvent', { payload: { a: 1 } });
      assert.equal(noType.body.code, 'invalid_argument');
      const afterCount = await app.store.db.selectFrom('events').select((eb) => eb.fn.countAll<string>().as('n')).executeTakeFirstOrThrow();
      assert.equal(Number(afterCount.n), Number(before.n));
    });

    test('ordering_key: with ordered_by_key different keys go concurrently, one key stays ordered', async () => {
      const keyed = await createWebhook('/okk', ['ok.created'], { ordered_by_key: true });
      await createWebhook('/okf', ['ok.created']);
      const got = await rest('GET', `/webhooks/${keyed.id}`);
      assert.equal(got.body.ordered_by_key, true);
      delays.set('/okk', 200);
      delays.set('/okf', 50);
      const keys = ['a', 'b', 'a', 'b', 'a', 'b', 'c', 'a'];
      const res = await rpc('EventService', 'PublishEvents', {
        events: keys.map((key, n) => ({ eventType: 'ok.created', payload: { key, n }, orderingKey: key })),
      });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      await receiver.waitFor(() => receiver.forPath('/okk').length === keys.length && receiver.forPath('/okf').length === keys.length, 20_000, 'keyed deliveries');
      const keyedStats = concurrency.get('/okk')!;
      const fifoStats = concurrency.get('/okf')!;
      assert.ok(keyedStats.max >= 2, `keys a, b, c went at once (max in flight ${keyedStats.max})`);
      assert.equal(keyedStats.keyOverlap, 0, 'never two of one key at once');
      assert.equal(fifoStats.max, 1, 'a FIFO webhook has one in flight');
      const byKey = (path: string) => {
        const order = new Map<string, number[]>();
        for (const r of receiver.forPath(path)) {
          const p = JSON.parse(r.body).payload as { key: string; n: number };
          order.set(p.key, [...(order.get(p.key) ?? []), p.n]);
        }
        return Object.fromEntries(order);
      };
      assert.deepEqual(byKey('/okk'), { a: [0, 2, 4, 7], b: [1, 3, 5], c: [6] });
      assert.deepEqual(
        receiver.forPath('/okf').map((r) => JSON.parse(r.body).payload.n),
        keys.map((_, n) => n),
      );
      // Concurrency shows in the clock too: the keyed webhook finished well before 8 × 200 ms.
      const times = receiver.forPath('/okk').map((r) => r.at);
      assert.ok(Math.max(...times) - Math.min(...times) < 7 * 200, `keyed span ${Math.max(...times) - Math.min(...times)} ms`);
    });

    test('ordering_key: a key whose head waits for its retry, with more deliveries behind it than a lane holds, does not hold up another key', async () => {
      await createWebhook('/parked', ['park.created'], { ordered_by_key: true, retry_schedule: Array.from({ length: 10 }, () => '2s').join(',') });
      failingKey.set('/parked', 'A');
      const ofKey = (key: string) =>
        receiver.forPath('/parked').map((r) => JSON.parse(r.body).payload as { key: string; n: number }).filter((p) => p.key === key).map((p) => p.n);
      // A lane holds 256 deliveries: A's head fails, and 299 more of A wait behind it.
      const A = 300;
      const publish = async (key: string, from: number, count: number) => {
        const res = await rpc('EventService', 'PublishEvents', {
          events: Array.from({ length: count }, (_, k) => ({ eventType: 'park.created', payload: { key, n: from + k }, orderingKey: key })),
        });
        assert.equal(res.status, 200, JSON.stringify(res.body));
      };
      for (let from = 0; from < A; from += 100) await publish('A', from, 100);
      await publish('B', 0, 3);
      await receiver.waitFor(() => ofKey('B').length === 3, 20_000, "key B's deliveries while A's head fails");
      assert.deepEqual([...new Set(ofKey('A'))], [0], "only A's head was tried");
      failingKey.delete('/parked');
      await receiver.waitFor(() => ofKey('A').filter((n) => n > 0).length === A - 1, 60_000, 'the rest of A once its head succeeds');
      const tries = ofKey('A').filter((n) => n === 0).length;
      assert.deepEqual(ofKey('A'), [...Array.from({ length: tries }, () => 0), ...Array.from({ length: A - 1 }, (_, n) => n + 1)], 'A in publish order');
      assert.deepEqual(ofKey('B'), [0, 1, 2]);
    });

    test('an event published right after a retry by hand, or a replay, goes after the deliveries put back, not before the sweep finds them', async () => {
      const hook = await createWebhook('/requeued', ['rq.created'], { retry_schedule: '100ms' });
      const since = new Date(Date.now() - 1_000).toISOString();
      // Event 2 fails (twice: final) until the endpoint heals.
      failingKey.set('/requeued', 'F');
      const publish = async (n: number) => {
        const res = await rest('POST', '/events', { event_type: 'rq.created', payload: { key: n === 2 ? 'F' : '', n } });
        assert.equal(res.status, 201, JSON.stringify(res.body));
      };
      const received = () => receiver.forPath('/requeued').map((r) => JSON.parse(r.body).payload.n as number);
      for (const n of [1, 2, 3]) await publish(n);
      const list = await eventually(
        () => rest('GET', `/webhooks/${hook.id}/deliveries`),
        (r) => r.body.deliveries.length === 3 && r.body.deliveries.every((d: { status: string }) => d.status !== 'pending'),
        'event 2 failed, 1 and 3 succeeded',
        20_000,
      );
      assert.deepEqual(received(), [1, 2, 2, 3]);
      failingKey.delete('/requeued');
      const failed = list.body.deliveries.find((d: { status: string }) => d.status === 'failed').delivery_id;
      // The sweep runs every 500 ms here: without the count on the next event's job, event 4 went first.
      assert.equal((await rest('POST', `/deliveries/${failed}/retry`)).status, 202);
      await publish(4);
      await receiver.waitFor(() => received().includes(4), 10_000, 'event 4');
      assert.deepEqual(received().slice(4), [2, 4], 'event 2 again, then event 4');
      // Received is not yet recorded: a replay of final deliveries leaves out one still pending.
      await eventually(
        () => rest('GET', `/webhooks/${hook.id}/deliveries`),
        (r) => r.body.deliveries.length === 4 && r.body.deliveries.every((d: { status: string }) => d.status === 'succeeded'),
        'all four recorded as succeeded',
        10_000,
      );

      const replay = await rest('POST', `/webhooks/${hook.id}/replay`, { since, scope: 'all', rate_per_second: 10_000 });
      assert.equal(replay.status, 202, JSON.stringify(replay.body));
      assert.equal(replay.body.total, 4);
      await publish(5);
      await receiver.waitFor(() => received().includes(5), 10_000, 'event 5');
      assert.deepEqual(received().slice(6), [1, 2, 3, 4, 5], 'the four replayed, in order, then event 5');
      for (const r of receiver.forPath('/requeued')) verifyDelivery(r, hook.secret);
    });
  });
}

conformance('embedded');
conformance('jetstream');
