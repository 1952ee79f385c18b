import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { createTestDatabase } from '../support/postgres.js';
import { NATS_URL, natsPrefix, startNatsServer } from '../support/nats.js';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { eventually, sleep } from '../support/wait.js';
import { withTimeout } from '../../src/core/timeout.js';
import { restClient, startTestApp, TEST_ADMIN_KEY } from '../support/app.js';
import { webhookdProcesses, type Spawned } from '../support/processes.js';
import { startReceiver } from '../support/receiver.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { checkReceived, createHooks, expectEachOnce, publishRound, waitAllSucceeded } from '../support/hooks.js';

/**
 * Invariants 1–3 and 5 across crashes: a SIGKILLed dispatcher, an API that committed but never published,
 * a NATS server killed and restarted. Postgres is the record; the feed is only the fast path.
 */

describe('failover', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let client: pg.Client;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    db = await createTestDatabase('failover');
    client = new pg.Client({ connectionString: db.url });
    await client.connect();
  });

  // After each scenario, passed or failed: a failed one's processes left running would hold shards in
  // the next one. One cleanup that hangs must not keep the rest from running.
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await withTimeout(cleanup(), 15_000).catch((err) => console.error('cleanup failed', err));
    await resetDatabase();
  });

  after(async () => {
    await client?.end();
    await db?.drop();
  });

  /** Live leases per owner: dispatcher id → shards held. */
  async function leaseCounts(): Promise<Record<string, number>> {
    const { rows } = await client.query<{ owner: string; n: number }>('select owner, count(*)::int as n from shard_leases where expires_at > now() group by owner');
    return Object.fromEntries(rows.map((r) => [r.owner, r.n]));
  }

  async function resetDatabase(): Promise<void> {
    // Each scenario starts from empty tables (the schema stays; migrations ran once).
    await client.query('truncate events, deliveries, delivery_attempts, shard_leases, dispatchers').catch(() => undefined);
    await client.query("delete from webhooks").catch(() => undefined);
  }

  test('a dispatcher SIGKILLed mid-stream: its shards are taken over, nothing lost, order kept', async () => {
    const nats = natsPrefix('failover');
    cleanups.push(() => nats.cleanup());
    const receiver = await startReceiver(() => ({ delayMs: 20 }));
    cleanups.push(() => receiver.close());
    const env = {
      DATABASE_URL: db.url,
      NATS_URL,
      WEBHOOKD_NATS_PREFIX: nats.prefix,
      WEBHOOKD_ALLOW_HTTP: 'true',
      WEBHOOKD_ALLOWED_CIDRS: '127.0.0.0/8',
      WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY,
      // The default lease TTL (10 s): the issue asks for a dead process's shards to be taken within 15 s.
      WEBHOOKD_LOG_LEVEL: 'info',
    };
    const t0 = Date.now();
    const mark = (what: string) => console.log(`# ${Date.now() - t0} ms: ${what}`);
    const processes = webhookdProcesses(env);
    cleanups.push(() => processes.killAll('SIGKILL'));
    const { url: apiUrl } = await processes.api();
    mark('api up');
    const dispatchers = await Promise.all([processes.dispatcher(), processes.dispatcher()]);
    const ids = dispatchers.map((d) => d.id);
    mark('dispatchers up');
    // Both hold shards before the stream starts.
    const deadline = Date.now() + 15_000;
    for (;;) {
      const owners = await leaseCounts();
      if (Object.keys(owners).length === 2 && Object.values(owners).reduce((a, b) => a + b, 0) === 64) break;
      if (Date.now() > deadline) throw new Error(`shards not balanced: ${JSON.stringify(owners)}`);
      await sleep(100);
    }

    mark('balanced');
    const rest = restClient(apiUrl, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 20, 'fo');
    const { rows: shardRows } = await client.query<{ id: string; shard: number }>('select id, shard from webhooks');
    const shardOf = new Map(shardRows.map((r) => [r.id, r.shard]));

    const ROUNDS = 60;
    const victim = dispatchers[0]!.proc;
    let victimShards = new Set<number>();
    let killedAt = 0;
    for (let round = 0; round < ROUNDS; round++) {
      await publishRound(rest, hooks, round);
      if (round === 25) {
        const { rows } = await client.query<{ shard: number }>('select shard from shard_leases where owner = $1', [ids[0]]);
        victimShards = new Set(rows.map((r) => r.shard));
        assert.ok(victimShards.size > 0, 'the victim owns shards');
        await victim.kill('SIGKILL');
        killedAt = Date.now();
        mark(`killed the dispatcher holding ${victimShards.size} shards`);
      }
      await sleep(50);
    }
    mark('published');
    for (;;) {
      const { rows } = await client.query<{ n: string }>('select count(*) as n from shard_leases where owner = $1 and expires_at > now()', [ids[1]]);
      if (Number(rows[0]!.n) === 64) break;
      assert.ok(Date.now() - killedAt < 15_000, `the survivor holds ${rows[0]!.n} of 64 shards 15 s after the kill`);
      await sleep(100);
    }
    mark(`every shard taken over, ${Date.now() - killedAt} ms after the kill`);
    const total = hooks.length * ROUNDS;
    await receiver.waitFor(() => new Set(receiver.received.map((r) => `${r.path} ${r.headers['webhook-id']}`)).size >= total, 60_000, `${total} distinct deliveries`);
    mark('received');
    await waitAllSucceeded(client, total);
    await sleep(500);

    const duplicates = checkReceived(receiver, hooks);
    const victimHooks = hooks.filter((h) => victimShards.has(shardOf.get(h.id)!));
    assert.ok(victimHooks.length > 0, 'some webhooks were on the victim');
    for (const hook of hooks) {
      const dup = duplicates.get(hook.path)!;
      if (victimShards.has(shardOf.get(hook.id)!)) assert.ok(dup <= 1, `${hook.path}: ${dup} duplicates; only the head in flight at the kill may repeat`);
      else assert.equal(dup, 0, `${hook.path} was on the survivor: no duplicates`);
    }
    const { rows: owners } = await client.query<{ owner: string }>('select distinct owner from shard_leases where expires_at > now()');
    assert.deepEqual(
      owners.map((r) => r.owner),
      [ids[1]],
      'the survivor holds every shard',
    );
    console.log(`# sigkill: ${total} events, ${[...duplicates.values()].reduce((a, b) => a + b, 0)} duplicates over ${victimHooks.length} webhooks on the victim`);
    await processes.killAll('SIGTERM');
  });

  test('a dispatcher cut off from Postgres past its lease TTL does not send beside the one that took its shards', async () => {
    const nats = natsPrefix('partition');
    cleanups.push(() => nats.cleanup());
    const proxy = await startTcpProxy(db.url);
    cleanups.push(() => proxy.close());
    const receiver = await startReceiver(() => ({ delayMs: 20 }));
    cleanups.push(() => receiver.close());
    const env = { NATS_URL, WEBHOOKD_NATS_PREFIX: nats.prefix };
    // Lease ticks as far apart as the TTL allows (production: TTL / 5): between two of them a process
    // goes on with what it believes it holds.
    const timings = { dispatcherTimings: { leaseTtlMs: 3_000, leaseIntervalMs: 1_500, sweepIntervalMs: 500, sweepGraceMs: 500 } };
    const { app: api, url } = await startTestApp({ ...env, DATABASE_URL: db.url }, ['api']);
    cleanups.push(() => api.stop());
    const { app: cutOff } = await startTestApp({ ...env, DATABASE_URL: proxy.url }, ['dispatcher'], timings);
    cleanups.push(() => cutOff.stop());
    const { app: survivor } = await startTestApp({ ...env, DATABASE_URL: db.url }, ['dispatcher'], timings);
    cleanups.push(() => survivor.stop());
    const held = async () => (await client.query<{ n: number }>('select count(*)::int as n from shard_leases where owner = $1 and expires_at > now()', [survivor.dispatcher!.id])).rows[0]!.n;
    await eventually(held, (n) => n === 32, 'the shards split between the two', 15_000);
    const rest = restClient(url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 20, 'pt');
    const cutOffShards = new Set(cutOff.dispatcher!.shards);
    const shards = new Map((await client.query<{ id: string; shard: number }>('select id, shard from webhooks')).rows.map((r) => [r.id, r.shard]));
    assert.ok(hooks.some((h) => cutOffShards.has(shards.get(h.id)!)), 'some webhooks are on the process to be cut off');

    let round = 0;
    for (; round < 5; round++) await publishRound(rest, hooks, round);
    proxy.block();
    // The survivor takes every shard once the cut-off process's leases lapse, and sends their lanes.
    await eventually(held, (n) => n === 64, 'the survivor holding every shard', 15_000);
    for (; round < 15; round++) {
      await publishRound(rest, hooks, round);
      await sleep(50);
    }
    // Back in touch: its attempt records go through at once; its lanes must not go on before it learns,
    // at its next lease tick, that the shards are not its own any more.
    proxy.unblock();
    for (; round < 25; round++) {
      await publishRound(rest, hooks, round);
      await sleep(50);
    }
    const total = hooks.length * round;
    await receiver.waitFor(() => new Set(receiver.received.map((r) => `${r.path} ${r.headers['webhook-id']}`)).size >= total, 30_000, `${total} distinct deliveries`);
    await waitAllSucceeded(client, total);
    await sleep(2_000);
    const duplicates = checkReceived(receiver, hooks);
    for (const hook of hooks) {
      const dup = duplicates.get(hook.path)!;
      if (cutOffShards.has(shards.get(hook.id)!)) assert.ok(dup <= 1, `${hook.path}: ${dup} repeats; only the head in flight at the cut may repeat`);
      else assert.equal(dup, 0, `${hook.path} was the survivor's throughout: no repeats`);
    }
    // Back in touch, it takes its share again.
    await eventually(async () => cutOff.dispatcher!.shards.length, (n) => n === 32, 'the two sharing the shards again', 15_000);
    await survivor.stop();
    await cutOff.stop();
    await api.stop();
  });

  test('dispatchers joining mid-stream: the shards spread over all of them, and each handed over repeats, loses and reorders nothing', async () => {
    const nats = natsPrefix('join');
    cleanups.push(() => nats.cleanup());
    // While the shards move, each attempt takes longer than a lease tick (500 ms in tests): every shard
    // is handed over with attempts in flight, and one released before they are recorded would be
    // claimed, and its heads sent again, before they are.
    let slow = false;
    const receiver = await startReceiver(() => ({ delayMs: slow ? 1_000 : 20 }));
    cleanups.push(() => receiver.close());
    const env = { DATABASE_URL: db.url, NATS_URL, WEBHOOKD_NATS_PREFIX: nats.prefix };
    const { app: api, url } = await startTestApp(env, ['api']);
    cleanups.push(() => api.stop());
    const { app: first } = await startTestApp(env, ['dispatcher']);
    cleanups.push(() => first.stop());
    await eventually(async () => first.dispatcher!.shards.length, (n) => n === 64, 'the first dispatcher holding every shard', 15_000);
    const rest = restClient(url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 20, 'jn');
    let round = 0;
    const publish = async () => {
      await publishRound(rest, hooks, round++);
      await sleep(50);
    };
    while (round < 10) await publish();

    const dispatchers = [first];
    slow = true;
    for (let i = 0; i < 2; i++) {
      const { app } = await startTestApp(env, ['dispatcher']);
      cleanups.push(() => app.stop());
      dispatchers.push(app);
    }
    // Publishing goes on while the shards move, until each process holds its share (at most 22 each, so
    // 22, 22, 20 is as balanced as 22, 21, 21), and a little after.
    const counts = () => dispatchers.map((d) => d.dispatcher!.shards.length);
    const deadline = Date.now() + 20_000;
    while (!(counts().every((n) => n >= 20 && n <= 22) && counts().reduce((a, b) => a + b) === 64)) {
      assert.ok(Date.now() < deadline, `shards held: ${counts().join(', ')}`);
      await publish();
    }
    const movedDuring = round;
    slow = false;
    for (const end = round + 5; round < end; ) await publish();
    assert.ok(movedDuring > 10, 'events were published while the shards moved');

    await expectEachOnce(client, receiver, hooks, 30_000, `${hooks.length * round} deliveries`, 'a shard handed over repeats nothing');
    const held = dispatchers.map((d) => d.dispatcher!.shards);
    assert.equal(new Set(held.flat()).size, 64, 'every shard held, by one process each');
    assert.equal(held.flat().length, 64);
    assert.deepEqual(
      await leaseCounts(),
      Object.fromEntries(dispatchers.map((d) => [d.dispatcher!.id, d.dispatcher!.shards.length])),
      'the leases say the same',
    );
    for (const d of [...dispatchers].reverse()) await d.stop();
    await api.stop();
  });

  test('a shard whose release fails once while the shards move is released at the next tick and worked by the newcomer', async () => {
    // The lease of a shard let go was renewed with the ones still worked, for as long as the process
    // lived: with its one release lost (a reset connection, a lock timeout), nobody worked that shard.
    const nats = natsPrefix('orphan');
    cleanups.push(() => nats.cleanup());
    const env = { DATABASE_URL: db.url, NATS_URL, WEBHOOKD_NATS_PREFIX: nats.prefix };
    const { app: first } = await startTestApp(env, ['dispatcher']);
    cleanups.push(() => first.stop());
    await eventually(async () => first.dispatcher!.shards.length, (n) => n === 64, 'the first dispatcher holding every shard', 15_000);
    // The first lease deleted fails, once: nextval is not rolled back with the failed statement.
    await client.query('create sequence fail_once');
    await client.query(`create function fail_release() returns trigger language plpgsql as $$
      begin
        if nextval('fail_once') = 1 then raise exception 'transient failure'; end if;
        return old;
      end $$`);
    await client.query('create trigger fail_release before delete on shard_leases for each row execute function fail_release()');
    cleanups.push(() => client.query('drop trigger fail_release on shard_leases; drop function fail_release(); drop sequence fail_once'));

    const { app: second } = await startTestApp(env, ['dispatcher']);
    cleanups.push(() => second.stop());
    const t0 = Date.now();
    const split = () => [first, second].map((d) => d.dispatcher!.shards.length);
    await eventually(async () => split(), ([a, b]) => a === 32 && b === 32, 'the shards split 32 / 32 with one release failed', 15_000);
    console.log(`# split 32 / 32 ${Date.now() - t0} ms after the second dispatcher started`);
    assert.equal(Number((await client.query('select last_value from fail_once')).rows[0].last_value) >= 1, true, 'a release failed');
    // A lease tick later, the table agrees: each shard leased to the one that works it.
    await sleep(1_000);
    const { rows } = await client.query<{ shard: number; owner: string }>('select shard, owner from shard_leases where expires_at > now() order by shard');
    assert.deepEqual(
      new Map(rows.map((r) => [r.shard, r.owner])),
      new Map([first, second].flatMap((d) => d.dispatcher!.shards.map((s) => [s, d.dispatcher!.id] as const)).sort(([a], [b]) => a - b)),
      'every live lease is held by the process working its shard',
    );
    await second.stop();
    await first.stop();
  });

  test('a rolling restart (SIGTERM one dispatcher, start its replacement, SIGTERM the other): shards handed back at once, every event once, in order', async () => {
    const nats = natsPrefix('rolling');
    cleanups.push(() => nats.cleanup());
    // While a process stops, each attempt takes longer than a lease tick (2 s): it stops with attempts in
    // flight, and must record them before it hands their shards back, or the other would take the
    // shards and send those heads again.
    let slow = false;
    const receiver = await startReceiver(() => ({ delayMs: slow ? 2_500 : 20 }));
    cleanups.push(() => receiver.close());
    const env = {
      DATABASE_URL: db.url,
      NATS_URL,
      WEBHOOKD_NATS_PREFIX: nats.prefix,
      WEBHOOKD_ALLOW_HTTP: 'true',
      WEBHOOKD_ALLOWED_CIDRS: '127.0.0.0/8',
      WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY,
      WEBHOOKD_LOG_LEVEL: 'info',
    };
    const processes = webhookdProcesses(env);
    cleanups.push(() => processes.killAll('SIGKILL'));
    const rest = restClient((await processes.api()).url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 20, 'rr');
    let round = 0;
    const publish = async () => {
      await publishRound(rest, hooks, round++);
      await sleep(50);
    };
    /** Publishes until `done` holds (checked between rounds), or fails naming `what` after `ms`. */
    const publishUntil = async (done: (owners: Record<string, number>) => boolean, what: string, ms: number) => {
      const deadline = Date.now() + ms;
      for (let owners = await leaseCounts(); !done(owners); owners = await leaseCounts()) {
        assert.ok(Date.now() < deadline, `${what} within ${ms} ms; leases: ${JSON.stringify(owners)}`);
        await publish();
      }
    };
    /** SIGTERMs `leaving` with attempts in flight while publishing goes on; `staying` must hold every shard soon after. */
    const stopOne = async (leaving: { proc: Spawned; id: string }, staying: { id: string }) => {
      slow = true;
      // Every lane has a slow attempt in flight before the signal.
      for (let i = 0; i < 3; i++) await publish();
      await sleep(200);
      const stopping = leaving.proc.kill('SIGTERM');
      const signalledAt = Date.now();
      let exit: number | null | undefined;
      void stopping.then((code) => (exit = code));
      while (exit === undefined) await publish();
      const stoppedIn = Date.now() - signalledAt;
      assert.equal(exit, 0, `the dispatcher stopped cleanly:\n${leaving.proc.output().slice(-2_000)}`);
      assert.ok(stoppedIn >= 1_000, `it waited for its attempts in flight (${stoppedIn} ms)`);
      slow = false;
      // Handed back, not left to lapse: taken within two lease ticks (2 s each), not the 10 s TTL.
      const exitedAt = Date.now();
      await publishUntil((owners) => owners[staying.id] === 64, 'the other dispatcher holding every shard', 9_000);
      const takenIn = Date.now() - exitedAt;
      assert.ok(takenIn < 6_000, `taken over ${takenIn} ms after the exit`);
      console.log(`# rolling: SIGTERM to exit ${stoppedIn} ms, exit to every shard held by the other ${takenIn} ms`);
    };

    const a = await processes.dispatcher();
    const b = await processes.dispatcher();
    await publishUntil((owners) => owners[a.id] === 32 && owners[b.id] === 32, 'the two sharing the shards', 15_000);
    while (round < 5) await publish();
    await stopOne(a, b);
    const c = await processes.dispatcher();
    await publishUntil((owners) => owners[b.id] === 32 && owners[c.id] === 32, 'the replacement taking its share', 15_000);
    await stopOne(b, c);
    for (const end = round + 5; round < end; ) await publish();

    await expectEachOnce(client, receiver, hooks, 30_000, `${hooks.length * round} deliveries`, 'a dispatcher stopped with attempts in flight repeats nothing');
    await processes.killAll('SIGTERM');
  });

  test('the API process SIGKILLed between commit and publish: the orphans are delivered from Postgres, in order', async () => {
    const nats = natsPrefix('outbox');
    cleanups.push(() => nats.cleanup());
    // With `hold()`, what the API publishes from then on never reaches NATS: a process that commits and
    // dies before its publish gets there, made exact.
    const proxy = await startTcpProxy(NATS_URL);
    cleanups.push(() => proxy.close());
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    const env = {
      DATABASE_URL: db.url,
      WEBHOOKD_NATS_PREFIX: nats.prefix,
      WEBHOOKD_ALLOW_HTTP: 'true',
      WEBHOOKD_ALLOWED_CIDRS: '127.0.0.0/8',
      WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY,
    };
    const processes = webhookdProcesses(env);
    cleanups.push(() => processes.killAll('SIGKILL'));
    // The API reaches NATS through the proxy; the dispatcher directly.
    const first = await processes.api({ NATS_URL: proxy.url });
    const { app: dispatcher } = await startTestApp({ ...env, NATS_URL }, ['dispatcher']);
    cleanups.push(() => dispatcher.stop());
    let rest = restClient(first.url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 10, 'ob');
    for (let round = 0; round < 5; round++) await publishRound(rest, hooks, round);
    await receiver.waitFor(() => receiver.received.length >= 50, 20_000, 'the first 50 through the feed');

    // From here the API's publishes never reach NATS. Its next batch commits, then waits on the flush;
    // it is killed as soon as the commit shows in Postgres, before it can answer.
    proxy.hold();
    const orphan = rest('POST', '/events/batch', { events: hooks.map((h) => ({ event_type: h.type, payload: { round: 5 } })) }).catch((err: Error) => err);
    const deadline = Date.now() + 5_000;
    let committed: string[] = [];
    while (committed.length < hooks.length) {
      assert.ok(Date.now() < deadline, 'the orphan batch committed');
      const { rows } = await client.query<{ id: string; event_type: string }>("select id, event_type from events where payload::jsonb->>'round' = '5'");
      committed = hooks.map((h) => rows.find((r) => r.event_type === h.type)?.id ?? '').filter(Boolean);
      await sleep(10);
    }
    await first.proc.kill('SIGKILL');
    const answer = await orphan;
    assert.ok(answer instanceof Error, `the killed API never answered: ${JSON.stringify(answer)}`);
    hooks.forEach((h, i) => h.published.push(committed[i]!));

    // A new API, straight to NATS: later events go through the feed and wait behind the orphans, which come
    // from Postgres (the owner's sweep, or the lane reading its gap). With neither, they never arrive:
    // nothing of them reached NATS.
    const second = await processes.api({ NATS_URL });
    rest = restClient(second.url, TEST_ADMIN_KEY);
    for (let round = 6; round < 10; round++) await publishRound(rest, hooks, round);
    await expectEachOnce(client, receiver, hooks, 30_000, '100 deliveries');
    await dispatcher.stop();
    await processes.killAll('SIGTERM');
  });

  test('webhookd started before NATS: accepts and delivers from the start, and takes up the feed when NATS comes', async () => {
    const nats = await startNatsServer({ started: false });
    cleanups.push(() => nats.stop());
    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    const env = { DATABASE_URL: db.url, NATS_URL: nats.url, WEBHOOKD_NATS_PREFIX: 'LATENATS' };
    const { app: api, url } = await startTestApp(env, ['api']);
    cleanups.push(() => api.stop());
    const { app: dispatcher } = await startTestApp(env, ['dispatcher']);
    cleanups.push(() => dispatcher.stop());
    assert.equal(api.feed.healthy(), false);
    const rest = restClient(url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 5, 'ln');
    for (let round = 0; round < 3; round++) await publishRound(rest, hooks, round);
    await receiver.waitFor(() => receiver.received.length >= 15, 20_000, 'the first 15 from Postgres alone');

    await nats.start();
    await eventually(async () => api.feed.healthy() && dispatcher.feed.healthy(), (up) => up, 'both feeds on', 15_000);
    // The dispatcher subscribes its shards on its next lease tick: one consumer per shard.
    const nc = await connect({ servers: nats.url });
    cleanups.push(() => nc.close());
    const jsm = await jetstreamManager(nc);
    await eventually(async () => (await jsm.streams.info('LATENATS_DELIVERIES')).state.consumer_count, (n) => n === 64, 'a consumer per shard', 15_000);
    for (let round = 3; round < 6; round++) await publishRound(rest, hooks, round);
    await expectEachOnce(client, receiver, hooks, 20_000, '30 deliveries');
    await dispatcher.stop();
    await api.stop();
  });

  test('NATS killed and restarted mid-run: ingest keeps answering 201 and everything is delivered', async () => {
    const nats = await startNatsServer();
    cleanups.push(() => nats.stop());

    const receiver = await startReceiver();
    cleanups.push(() => receiver.close());
    const env = { DATABASE_URL: db.url, NATS_URL: nats.url, WEBHOOKD_NATS_PREFIX: 'NATSRESTART' };
    const { app: api, url } = await startTestApp(env, ['api']);
    cleanups.push(() => api.stop());
    const { app: dispatcher } = await startTestApp(env, ['dispatcher']);
    cleanups.push(() => dispatcher.stop());
    const rest = restClient(url, TEST_ADMIN_KEY);
    const hooks = await createHooks(rest, receiver, 10, 'nr');

    let round = 0;
    for (; round < 10; round++) {
      await publishRound(rest, hooks, round);
      await sleep(30);
    }
    await receiver.waitFor(() => receiver.received.length >= 100, 20_000, 'the first 100 via NATS');

    await nats.kill();
    const slowest: number[] = [];
    for (; round < 20; round++) {
      slowest.push(await publishRound(rest, hooks, round));
      await sleep(30);
    }
    assert.ok(Math.max(...slowest) < 3_000, `ingest kept answering while NATS was down (slowest ${Math.max(...slowest)} ms)`);
    // Postgres is the record: the owner's sweep delivers these without NATS.
    await receiver.waitFor(() => receiver.received.length >= 200, 30_000, '100 more with NATS down');

    await nats.start();
    for (; round < 30; round++) {
      await publishRound(rest, hooks, round);
      await sleep(30);
    }
    await expectEachOnce(client, receiver, hooks, 30_000, 'all 300 after NATS came back', 'no duplicates: no dispatcher crashed');
    await dispatcher.stop();
    await api.stop();
  });
});
