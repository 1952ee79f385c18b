import { afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { LaneEngine, type LaneEngineDeps } from '../../src/dispatcher/lanes.js';
import { FakeRecord, flaky, retriesWhen, sleep, until } from './fake-record.js';

/**
 * LaneEngine is pure logic behind injected functions; here they are answered by an in-memory stand-in
 * for the delivery table ("the record", fake-record.ts) so each ordering rule can be driven step by step.
 */

/**
 * Makes the webhook's lane and waits until its first read of the record is done, so that jobs offered
 * next come to a loaded lane, as the feed's do in production.
 */
async function laneLoaded(engine: LaneEngine, record: FakeRecord, webhookId: string): Promise<void> {
  const loads = record.loads.length;
  engine.wake(webhookId, 0);
  await until(() => record.loads.length === loads + 1, 'the initial load');
  await sleep(10);
}

describe('LaneEngine', () => {
  const engines: LaneEngine[] = [];
  const records: FakeRecord[] = [];
  const newEngine = (deps: LaneEngineDeps) => {
    const engine = new LaneEngine(deps);
    engines.push(engine);
    return engine;
  };
  const newRecord = () => {
    const record = new FakeRecord();
    records.push(record);
    return record;
  };
  /**
   * A lane whose reads fail from now on: seq 1's feed message is lost, seq 2 is held ahead of the gap,
   * and the gap timer's read of the record fails (Postgres down).
   */
  const behindFailingReads = async (webhookId: string, overrides: Partial<LaneEngineDeps>) => {
    const record = newRecord();
    record.addWebhook(webhookId);
    const { state, deps } = flaky(record, { gapWaitMs: 20, ...overrides });
    const engine = newEngine(deps);
    await laneLoaded(engine, record, webhookId);
    record.commit(webhookId);
    const second = record.commit(webhookId);
    state.failNext = 1_000;
    engine.offer(record.copy(second));
    return { record, state, engine };
  };
  afterEach(async () => {
    // Close the lanes first, then let whatever is held finish, so stop() can see nothing in flight.
    const stopping = engines.splice(0).map((engine) => engine.stop());
    for (const record of records) for (const call of record.calls) call.finish();
    await Promise.all(stopping);
    for (const record of records.splice(0)) assert.deepEqual(record.violations, [], 'the ordering invariant held');
  });

  test('a job that arrives ahead of its predecessor waits for it (seq 3 before 2)', async () => {
    const record = newRecord();
    record.addWebhook('wh_a');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ gapWaitMs: 10_000 }));
    const j1 = record.commit('wh_a');
    const j2 = record.commit('wh_a');
    const j3 = record.commit('wh_a');
    // The lane is made by the first job; its load sees all three, so make the lane first and empty.
    record.rows.get('wh_a')!.splice(0);
    record.lastSeq.set('wh_a', 0);
    await laneLoaded(engine, record, 'wh_a');
    // Now commit for real and offer out of order: 1, 3, then 2.
    for (const j of [j1, j2, j3]) record.rows.get('wh_a')!.push({ job: { ...j }, status: 'pending' });
    record.lastSeq.set('wh_a', 3);
    engine.offer(record.copy(j1));
    await until(() => record.calls.length === 1, 'seq 1 sent');
    // seq 1 stays in flight while seq 3 overtakes seq 2 on the feed.
    engine.offer(record.copy(j3));
    await sleep(80);
    assert.deepEqual(record.sent('wh_a'), [1], 'seq 3 must not be sent while seq 2 is missing');
    engine.offer(record.copy(j2));
    await sleep(30);
    assert.deepEqual(record.sent('wh_a'), [1], 'nothing overtakes the head in flight');
    record.calls[0]!.finish();
    await until(() => record.calls.length === 2, 'seq 2 sent');
    assert.equal(record.calls[1]!.seq, 2);
    record.calls[1]!.finish();
    await until(() => record.calls.length === 3, 'seq 3 sent');
    assert.equal(record.calls[2]!.seq, 3);
    record.calls[2]!.finish();
    await sleep(30);
    assert.deepEqual(record.sent('wh_a'), [1, 2, 3]);
    // seq 2 came from the feed before the gap timer, so no read of the record was needed beyond the lane's first.
    assert.equal(record.loads.length, 1, `loads: ${JSON.stringify(record.loads)}`);
  });

  test('out of order with nothing in flight: seq 3 never goes before seq 2', async () => {
    const record = newRecord();
    record.addWebhook('wh_b');
    const engine = newEngine(record.deps({ gapWaitMs: 10_000 }));
    await laneLoaded(engine, record, 'wh_b');
    const j1 = record.commit('wh_b');
    const j2 = record.commit('wh_b');
    const j3 = record.commit('wh_b');
    const j4 = record.commit('wh_b');
    for (const j of [j3, j1, j4, j2]) engine.offer(record.copy(j));
    await until(() => record.calls.length === 4, 'all four sent');
    await sleep(30);
    assert.deepEqual(record.sent('wh_b'), [1, 2, 3, 4]);
  });

  test('a gap that the feed never fills is read from the record after gapWaitMs', async () => {
    const record = newRecord();
    record.addWebhook('wh_gap');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ gapWaitMs: 150 }));
    await laneLoaded(engine, record, 'wh_gap');
    const j1 = record.commit('wh_gap');
    record.commit('wh_gap'); // seq 2: its feed message is lost
    const j3 = record.commit('wh_gap');
    engine.offer(record.copy(j1));
    await until(() => record.calls.length === 1, 'seq 1 sent');
    const offeredAt = Date.now();
    engine.offer(record.copy(j3));
    // seq 1 stays in flight: only the gap timer can find seq 2.
    await until(() => record.loads.length === 2, 'the gap read', 2_000);
    const gapLoad = record.loads[1]!;
    assert.ok(gapLoad.at - offeredAt >= 140, `gap read after ${gapLoad.at - offeredAt} ms, expected ≥ gapWaitMs`);
    assert.equal(gapLoad.afterSeq, 1, 'the gap read starts past what the lane already knows');
    await sleep(20);
    assert.deepEqual(record.sent('wh_gap'), [1], 'nothing overtakes the head in flight');
    record.calls[0]!.finish();
    await until(() => record.calls.length === 2, 'seq 2 sent');
    record.calls[1]!.finish();
    await until(() => record.calls.length === 3, 'seq 3 sent');
    record.calls[2]!.finish();
    await sleep(20);
    assert.deepEqual(record.sent('wh_gap'), [1, 2, 3]);
  });

  test('duplicates from the feed are ignored, in flight and after the delivery is final', async () => {
    const record = newRecord();
    record.addWebhook('wh_dup');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps());
    await laneLoaded(engine, record, 'wh_dup');
    const j1 = record.commit('wh_dup');
    const j2 = record.commit('wh_dup');
    engine.offer(record.copy(j1));
    engine.offer(record.copy(j1));
    engine.offer(record.copy(j2));
    engine.offer(record.copy(j2));
    await until(() => record.calls.length === 1, 'seq 1 sent');
    engine.offer(record.copy(j1)); // redelivered while in flight
    await sleep(30);
    assert.deepEqual(record.sent('wh_dup'), [1]);
    record.calls[0]!.finish();
    await until(() => record.calls.length === 2, 'seq 2 sent');
    engine.offer(record.copy(j1)); // redelivered after it is final
    engine.offer(record.copy(j2)); // and the head again
    record.calls[1]!.finish();
    await sleep(60);
    engine.offer(record.copy(j1));
    engine.offer(record.copy(j2));
    await sleep(60);
    assert.deepEqual(record.sent('wh_dup'), [1, 2], 'each delivery attempted once');
  });

  test('a retry outcome holds the lane until nextAttemptAt, then the head goes again first', async () => {
    const record = newRecord();
    record.addWebhook('wh_retry');
    const retryDelay = 300;
    let retryAt = 0;
    record.responder = (call) => {
      if (call.seq === 1 && call.attempts === 0) {
        retryAt = Date.now() + retryDelay;
        return { final: false, nextAttemptAt: retryAt, signal: 'failure' };
      }
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps());
    const jobs = [1, 2, 3].map(() => record.commit('wh_retry'));
    for (const j of jobs) engine.offer(record.copy(j));
    await until(() => record.calls.length === 4, 'every delivery done');
    await sleep(30);
    assert.deepEqual(
      record.calls.map((c) => [c.seq, c.attempts]),
      [
        [1, 0],
        [1, 1],
        [2, 0],
        [3, 0],
      ],
    );
    assert.ok(record.calls[1]!.at >= retryAt - 5, `retry ran ${retryAt - record.calls[1]!.at} ms early`);
    assert.ok(record.calls[2]!.at >= record.calls[1]!.at, 'seq 2 only after seq 1 is final');
  });

  test('ordered_by_key: different keys go concurrently, one key stays in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_keys', { orderedByKey: true });
    record.addWebhook('wh_fifo', { orderedByKey: false });
    record.responder = () => 'hold';
    const engine = newEngine(record.deps());
    const keys = ['a', 'b', 'a', 'b', 'c', 'a'];
    for (const id of ['wh_keys', 'wh_fifo']) for (const key of keys) engine.offer(record.copy(record.commit(id, key)));
    await until(() => record.sent('wh_keys').length === 3, 'one head per key');
    await sleep(40);
    assert.deepEqual(record.sent('wh_keys'), [1, 2, 5], 'the first of a, b and c at once');
    assert.deepEqual(record.sent('wh_fifo'), [1], 'a FIFO webhook sends its head only');

    // Drive to completion, finishing whatever is in flight, and check order per key.
    const finishOpen = () => {
      for (const call of record.calls) call.finish();
    };
    await until(
      () => {
        finishOpen();
        return record.sent('wh_keys').length === 6 && record.sent('wh_fifo').length === 6;
      },
      'every delivery done',
    );
    finishOpen();
    const byKey = new Map<string, number[]>();
    for (const call of record.calls.filter((c) => c.webhookId === 'wh_keys')) {
      byKey.set(call.key, [...(byKey.get(call.key) ?? []), call.seq]);
    }
    assert.deepEqual(Object.fromEntries(byKey), { a: [1, 3, 6], b: [2, 4], c: [5] });
    assert.deepEqual(record.sent('wh_fifo'), [1, 2, 3, 4, 5, 6]);
  });

  test('ordered_by_key: a second job of a busy key is not started beside the first', async () => {
    const record = newRecord();
    record.addWebhook('wh_k2', { orderedByKey: true });
    record.responder = () => 'hold';
    const engine = newEngine(record.deps());
    for (const key of ['a', 'a', 'b']) engine.offer(record.copy(record.commit('wh_k2', key)));
    await until(() => record.calls.length === 2, 'a1 and b');
    record.calls.find((c) => c.seq === 3)!.finish(); // b done; a1 still in flight
    await sleep(60);
    assert.deepEqual(record.sent('wh_k2'), [1, 3]);
    record.calls[0]!.finish();
    await until(() => record.calls.length === 3, 'a2');
    assert.equal(record.calls[2]!.seq, 2);
  });

  test('one endpoint never has more than maxInFlightPerLane attempts out, however many keys wait', async () => {
    const record = newRecord();
    record.addWebhook('wh_wide', { orderedByKey: true });
    record.addWebhook('wh_other');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ maxInFlightPerLane: 4 }));
    for (let k = 0; k < 20; k++) engine.offer(record.copy(record.commit('wh_wide', `key${k}`)));
    engine.offer(record.copy(record.commit('wh_other')));
    await until(() => record.sent('wh_wide').length === 4 && record.sent('wh_other').length === 1, 'four keys and the other webhook');
    await sleep(50);
    assert.equal(record.sent('wh_wide').length, 4, 'a hanging endpoint holds four attempts, no more');
    record.calls.find((c) => c.webhookId === 'wh_wide')!.finish();
    await until(() => record.sent('wh_wide').length === 5, 'one more once one ends');
    await sleep(30);
    assert.equal(record.sent('wh_wide').length, 5);
  });

  test('maxInFlight is respected across all lanes, and every lane finishes', async () => {
    const record = newRecord();
    const webhooks = Array.from({ length: 12 }, (_, i) => `wh_m${i}`);
    for (const id of webhooks) record.addWebhook(id);
    record.responder = () => new Promise((resolve) => setTimeout(() => resolve({ final: true, signal: 'success' }), 15));
    const engine = newEngine(record.deps({ maxInFlight: 3 }));
    for (let n = 0; n < 5; n++) for (const id of webhooks) engine.offer(record.copy(record.commit(id)));
    await until(() => record.calls.length === 60, 'all 60 deliveries', 10_000);
    await until(() => engine.activeAttempts === 0, 'nothing in flight');
    assert.equal(record.maxInFlight, 3);
    for (const id of webhooks) assert.deepEqual(record.sent(id), [1, 2, 3, 4, 5], id);
  });

  test('a paused webhook holds everything, then resumes in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_p', { status: 'paused' });
    const engine = newEngine(record.deps({ holdRecheckMs: 30 }));
    for (let n = 0; n < 5; n++) engine.offer(record.copy(record.commit('wh_p')));
    await sleep(250);
    assert.deepEqual(record.sent('wh_p'), [], 'nothing is sent while paused');
    assert.ok(record.rows.get('wh_p')!.every((r) => r.status === 'pending'), 'nothing is failed while paused');
    record.webhooks.get('wh_p')!.status = 'active';
    await until(() => record.sent('wh_p').length === 5, 'all five after resuming');
    assert.deepEqual(record.sent('wh_p'), [1, 2, 3, 4, 5]);
  });

  test('without a confirmed lease nothing starts, not even after the head in flight is recorded; confirmed again, the lane goes on in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_l');
    let confirmed = true;
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ mayStart: () => confirmed }));
    for (let n = 0; n < 4; n++) engine.offer(record.copy(record.commit('wh_l')));
    await until(() => record.calls.length === 1, 'the head in flight');
    // The lease lapses unconfirmed (Postgres out of reach) while the head is in flight; its record lands.
    confirmed = false;
    record.responder = () => ({ final: true, signal: 'success' });
    record.calls[0]!.finish();
    await sleep(100);
    assert.deepEqual(record.sent('wh_l'), [1], 'seq 2 waits for the lease');
    confirmed = true;
    engine.leasesConfirmed();
    await until(() => record.sent('wh_l').length === 4, 'the rest once confirmed');
    assert.deepEqual(record.sent('wh_l'), [1, 2, 3, 4]);
  });

  test('a lease that lapses while the lane waits for its webhook (Postgres out of reach): nothing starts until it is confirmed again', async () => {
    const record = newRecord();
    record.addWebhook('wh_lw');
    let confirmed = true;
    let blocking = true;
    const waiting: (() => void)[] = [];
    const base = record.deps();
    const engine = newEngine(
      record.deps({
        mayStart: () => confirmed,
        getWebhook: async (id) => {
          if (blocking) await new Promise<void>((resolve) => waiting.push(resolve));
          return base.getWebhook(id);
        },
      }),
    );
    for (let n = 0; n < 3; n++) engine.offer(record.copy(record.commit('wh_lw')));
    await until(() => waiting.length > 0, 'the lane waiting for its webhook, its lease confirmed');
    // Meanwhile the lease lapsed unconfirmed; then the webhook's read answers.
    confirmed = false;
    blocking = false;
    waiting.splice(0).forEach((resolve) => resolve());
    await sleep(100);
    assert.deepEqual(record.sent('wh_lw'), [], 'nothing starts on a lease that lapsed during the wait');
    confirmed = true;
    engine.leasesConfirmed();
    await until(() => record.sent('wh_lw').length === 3, 'all three once confirmed');
    assert.deepEqual(record.sent('wh_lw'), [1, 2, 3]);
  });

  test('an attempt that was not started (the lease lapsed before the request went) leaves the head untouched until the lease is confirmed', async () => {
    const record = newRecord();
    record.addWebhook('wh_ns');
    let confirmed = true;
    // The first call finds the lease lapsed at the last moment, as the dispatcher's execute can.
    record.responder = () => {
      if (record.calls.length === 1) {
        confirmed = false;
        return { notStarted: true };
      }
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ mayStart: () => confirmed }));
    for (let n = 0; n < 3; n++) engine.offer(record.copy(record.commit('wh_ns')));
    await until(() => record.calls.length === 1, 'the first call');
    await sleep(100);
    assert.equal(record.calls.length, 1, 'nothing more while the lease is unconfirmed');
    assert.equal(record.rows.get('wh_ns')![0]!.job.attempts, 0, 'no attempt counted');
    confirmed = true;
    engine.leasesConfirmed();
    await until(() => record.sent('wh_ns').length === 4, 'the head again, then the rest');
    assert.deepEqual(record.sent('wh_ns'), [1, 1, 2, 3]);
    assert.deepEqual(record.calls.map((c) => c.attempts), [0, 0, 0, 0], 'the head goes again as its first attempt');
  });

  test('a webhook rate limit paces its lane: after a one-second burst, the limit to within 10 %', async () => {
    const record = newRecord();
    record.addWebhook('wh_rate', { rateLimitPerSecond: 20 });
    const engine = newEngine(record.deps());
    const started = Date.now();
    for (let n = 0; n < 50; n++) engine.offer(record.copy(record.commit('wh_rate')));
    await until(() => record.sent('wh_rate').length === 50, 'all fifty', 10_000);
    const elapsed = (Date.now() - started) / 1000;
    // 20 go at once (the burst), the other 30 at 20/s: 1.5 s.
    const rate = 30 / elapsed;
    assert.ok(rate <= 22 && rate >= 18, `paced at ${rate.toFixed(1)}/s for a limit of 20/s`);
    assert.deepEqual(record.sent('wh_rate'), Array.from({ length: 50 }, (_, i) => i + 1));
  });

  test('a deleted webhook drops its lane without sending', async () => {
    const record = newRecord();
    record.addWebhook('wh_del', { status: 'deleted' });
    const engine = newEngine(record.deps());
    engine.offer(record.copy(record.commit('wh_del')));
    await until(() => !engine.has('wh_del'), 'the lane removed');
    assert.deepEqual(record.sent('wh_del'), []);
  });

  test('a lane with a small capacity drains a long backlog from the record in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_cap');
    const engine = newEngine(record.deps({ laneCapacity: 4, gapWaitMs: 50 }));
    // 10 committed before the lane exists (a backlog), 30 more arriving through the feed meanwhile.
    for (let n = 0; n < 10; n++) record.commit('wh_cap');
    engine.wake('wh_cap', 0);
    for (let n = 0; n < 30; n++) {
      engine.offer(record.copy(record.commit('wh_cap')));
      if (n % 5 === 0) await sleep(3);
    }
    await until(() => record.sent('wh_cap').length >= 40, 'all 40 deliveries', 10_000);
    await sleep(50);
    assert.deepEqual(record.sent('wh_cap'), Array.from({ length: 40 }, (_, i) => i + 1));
  });

  test('a job at or below knownThrough that is pending again (a manual retry) is put back in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_again');
    const engine = newEngine(record.deps());
    const j1 = record.commit('wh_again');
    const j2 = record.commit('wh_again');
    engine.offer(record.copy(j1));
    engine.offer(record.copy(j2));
    await until(() => record.sent('wh_again').length === 2, 'both sent');
    await sleep(20);
    // An operator puts seq 1 back (requeue): pending again, published again.
    const row = record.row(j1.deliveryId)!;
    row.status = 'pending';
    row.job.attempts = 1;
    engine.offer({ ...row.job });
    await until(() => record.sent('wh_again').length === 3, 'seq 1 again');
    assert.deepEqual(record.sent('wh_again'), [1, 2, 1]);
  });
  test('deliveries put back behind a busy lane (a replay) are read from the lowest pending seq and sent in order', async () => {
    const record = newRecord();
    record.addWebhook('wh_back');
    const engine = newEngine(record.deps());
    const done = Array.from({ length: 4 }, () => record.commit('wh_back'));
    for (const job of done) engine.offer(record.copy(job));
    await until(() => record.sent('wh_back').length === 4, 'the first four');
    // The lane is busy further on: seq 5 is in flight when seqs 2..4 are put back, 2 not yet due.
    record.responder = () => 'hold';
    engine.offer(record.copy(record.commit('wh_back')));
    await until(() => record.sent('wh_back').length === 5, 'seq 5 in flight');
    for (const [i, job] of done.slice(1).entries()) {
      const row = record.row(job.deliveryId)!;
      row.status = 'pending';
      row.job.nextAttemptAt = Date.now() + (i === 0 ? 150 : 0);
    }
    // The sweep sees 3 and 4 due and names the webhook's lowest pending seq, 2.
    engine.wake('wh_back', 0, 2);
    record.responder = () => ({ final: true, signal: 'success' });
    record.calls.find((c) => c.seq === 5)!.finish();
    await until(() => record.sent('wh_back').length === 8, 'the three put back');
    assert.deepEqual(record.sent('wh_back').slice(5), [2, 3, 4], 'in seq order, 2 waiting for its time first');
    assert.deepEqual(record.violations, []);
  });

  test('a sweep that read a seq the lane has finished since causes no read of the record; one read before it does', async () => {
    const record = newRecord();
    record.addWebhook('wh_stale');
    const engine = newEngine(record.deps());
    record.responder = () => 'hold';
    for (let i = 0; i < 3; i++) engine.offer(record.copy(record.commit('wh_stale')));
    engine.wake('wh_stale', 0);
    await until(() => record.sent('wh_stale').length === 1, 'seq 1 in flight');
    await sleep(20);
    // The sweep's query goes out while seq 1 is pending and answers after the lane has finished it.
    const readAt = Date.now();
    await sleep(2);
    record.calls[0]!.finish();
    await until(() => record.sent('wh_stale').length === 2, 'seq 2 in flight');
    const loads = record.loads.length;
    engine.wake('wh_stale', 0, 1, readAt);
    await sleep(30);
    assert.equal(record.loads.length, loads, 'a stale answer is not a delivery put back');
    // Read after seq 1 was finished, the same answer means seq 1 is pending again: the lane reads from there.
    engine.wake('wh_stale', 0, 1, Date.now());
    await until(() => record.loads.length === loads + 1, 'the read from seq 0');
    assert.equal(record.loads.at(-1)!.afterSeq, 0);
  });

  test('jobs the feed brings while the first load runs, beyond what the lane can hold, are read later', async () => {
    const record = newRecord();
    record.addWebhook('wh_over');
    record.loadDelayMs = 100;
    const engine = newEngine(record.deps({ laneCapacity: 2, gapWaitMs: 50 }));
    engine.wake('wh_over', 0); // the load's snapshot is empty
    await sleep(10);
    // A burst arrives before the load answers: two fit beside the lane, three are dropped for now.
    for (let n = 0; n < 5; n++) engine.offer(record.copy(record.commit('wh_over')));
    // No sweep runs here: the lane alone must find seqs 3..5 in the record.
    await until(() => record.sent('wh_over').length === 5, 'all five, without a sweep', 3_000);
    assert.deepEqual(record.sent('wh_over'), [1, 2, 3, 4, 5]);
  });

  test('a delivery that becomes final while a read of the record is in flight is not sent again', async () => {
    const record = newRecord();
    record.addWebhook('wh_race');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ gapWaitMs: 30 }));
    await laneLoaded(engine, record, 'wh_race');
    record.loadDelayMs = 300;
    const j1 = record.commit('wh_race');
    const j2 = record.commit('wh_race');
    const j3 = record.commit('wh_race');
    engine.offer(record.copy(j1));
    await until(() => record.calls.length === 1, 'seq 1 sent');
    engine.offer(record.copy(j3)); // ahead of seq 2: the gap timer reads the record (snapshot: 2 and 3 pending)
    await until(() => record.loads.length === 2, 'the gap read');
    engine.offer(record.copy(j2)); // seq 2 turns up on the feed after all
    record.calls[0]!.finish();
    await until(() => record.calls.length === 2, 'seq 2 sent');
    record.calls[1]!.finish(); // seq 2 is final before the gap read answers
    await until(() => record.calls.length === 3, 'seq 3 sent');
    await sleep(400); // the gap read answers, still listing seq 2 as pending
    record.calls[2]!.finish();
    await sleep(100);
    assert.deepEqual(record.sent('wh_race'), [1, 2, 3], 'seq 2 must not be sent again after seq 3');
  });

  test('a lane keeps payloads only for the jobs about to go, reads the next one ahead, and a retry lets its own go', async () => {
    const record = newRecord();
    record.addWebhook('wh_mem');
    record.responder = () => 'hold';
    const prefetched: number[] = [];
    const seen: { seq: number; payload: string | undefined }[] = [];
    const deps = record.deps({
      prefetch: (job) => {
        prefetched.push(job.seq);
        job.payload ??= `{"read":${job.seq}}`;
      },
    });
    const execute = deps.execute;
    deps.execute = (job, webhook) => {
      seen.push({ seq: job.seq, payload: job.payload });
      return execute(job, webhook);
    };
    const engine = newEngine(deps);
    await laneLoaded(engine, record, 'wh_mem');
    const offered = Array.from({ length: 50 }, () => record.copy(record.commit('wh_mem')));
    for (const job of offered) engine.offer(job);
    await until(() => record.calls.length === 1, 'seq 1 sent');

    // Seq 1 is in flight with its payload, seq 2 keeps the one it came with; the other 48 wait without.
    assert.deepEqual(offered.flatMap((j) => (j.payload === undefined ? [] : [j.seq])), [1, 2]);
    assert.deepEqual(seen, [{ seq: 1, payload: '{"seq":1}' }]);
    assert.deepEqual(prefetched, [2], 'the next job is made ready while seq 1 is in flight');

    record.calls[0]!.finish();
    await until(() => record.calls.length === 2, 'seq 2 sent');
    record.calls[1]!.finish();
    await until(() => record.calls.length === 3, 'seq 3 sent');
    assert.deepEqual(seen.slice(1), [{ seq: 2, payload: '{"seq":2}' }, { seq: 3, payload: '{"read":3}' }]);
    assert.deepEqual(prefetched, [2, 3, 4]);

    // A retry lets its payload go: it may be hours away, and reads it again when it comes due.
    record.calls[2]!.finish({ final: false, nextAttemptAt: Date.now() + 50, signal: 'failure' });
    await until(() => record.calls.length === 4, 'seq 3 tried again');
    assert.deepEqual(seen[3], { seq: 3, payload: undefined });
    assert.equal(offered.filter((j) => j.payload !== undefined).length <= 3, true, 'seq 3 (in flight) and at most the next two hold payloads');
  });

  test('a replay of more deliveries than the lane holds: a live event published meanwhile waits for every replayed one', async () => {
    const record = newRecord();
    record.addWebhook('wh_r');
    const engine = newEngine(record.deps({ laneCapacity: 4, gapWaitMs: 50 }));
    const done = Array.from({ length: 10 }, () => record.commit('wh_r'));
    for (const job of done) engine.offer(record.copy(job));
    await until(() => record.sent('wh_r').length === 10, 'the first ten');
    // The replay puts seqs 1..8 back, due now; the sweep names the lowest pending seq, 1. The lane can
    // hold 4: its read from seq 1 is cut at 4, below its position (10).
    record.responder = () => 'hold';
    for (const job of done.slice(0, 8)) {
      const row = record.row(job.deliveryId)!;
      row.status = 'pending';
      row.job.nextAttemptAt = Date.now();
    }
    // Swept until the lane takes it up: a sweep that finds the lane reading its record leaves it be.
    const sweeps = setInterval(() => engine.wake('wh_r', 0, 1, Date.now()), 50);
    try {
      await until(() => record.sent('wh_r').length === 11, 'replayed seq 1 in flight');
    } finally {
      clearInterval(sweeps);
    }
    engine.offer(record.copy(record.commit('wh_r')));
    await sleep(100);
    record.responder = () => ({ final: true, signal: 'success' });
    for (const call of record.calls) call.finish();
    await until(() => record.sent('wh_r').includes(11), 'seq 11 sent', 5_000);
    assert.deepEqual(record.sent('wh_r').slice(10), [1, 2, 3, 4, 5, 6, 7, 8, 11]);
  });

  test('an event published right after a replay (no sweep yet) waits for every delivery it put back, more than the lane holds', async () => {
    const record = newRecord();
    record.addWebhook('wh_rq');
    const engine = newEngine(record.deps({ laneCapacity: 4 }));
    const done = Array.from({ length: 10 }, () => record.commit('wh_rq'));
    for (const job of done) engine.offer(record.copy(job));
    await until(() => record.sent('wh_rq').length === 10, 'the first ten');
    const loads = record.loads.length;
    // The replay puts seqs 2..8 back and commits; the next ingest carries the webhook's new count. The
    // feed brings nothing of the replay, and no sweep runs.
    record.requeue('wh_rq', [2, 3, 4, 5, 6, 7, 8]);
    engine.offer(record.copy(record.commit('wh_rq')));
    await until(() => record.sent('wh_rq').includes(11), 'seq 11 sent');
    assert.deepEqual(record.sent('wh_rq').slice(10), [2, 3, 4, 5, 6, 7, 8, 11]);
    assert.equal(record.loads[loads]!.afterSeq, 0, 'read from the start');
    // The count is known now: later events cost no read.
    const reads = record.loads.length;
    for (let i = 0; i < 3; i++) engine.offer(record.copy(record.commit('wh_rq')));
    await until(() => record.sent('wh_rq').length >= 21, 'three more');
    assert.deepEqual(record.sent('wh_rq').slice(18), [12, 13, 14]);
    assert.equal(record.loads.length, reads);
  });

  test('a retry by hand of a delivery the lane passed: the next event waits for it, behind a read that failed once (no busy loop)', async () => {
    const record = newRecord();
    record.addWebhook('wh_rh');
    const { state, deps } = flaky(record);
    const engine = newEngine(deps);
    for (let i = 0; i < 3; i++) engine.offer(record.copy(record.commit('wh_rh')));
    await until(() => record.sent('wh_rh').length === 3, 'the first three');
    state.failNext = 1_000;
    const loads = record.loads.length;
    const asked = Date.now();
    record.requeue('wh_rh', [2]);
    engine.offer(record.copy(record.commit('wh_rh')));
    await sleep(300);
    assert.deepEqual(record.sent('wh_rh'), [1, 2, 3], 'nothing sent while the record cannot be read');
    state.failNext = 0;
    await until(() => record.sent('wh_rh').length === 5, 'seq 2 again, then 4');
    assert.deepEqual(record.sent('wh_rh').slice(3), [2, 4]);
    // One failed read, then one a second later: not a read per turn of the event loop.
    assert.equal(state.failures, 1);
    assert.ok(Date.now() - asked >= 900, 'read again after a second');
    assert.equal(record.loads.length - loads, 1);
  });

  test("ordering keys: word of a replay that names a head the lane holds (another key's, waiting for its retry) has the lane read at once", async () => {
    const record = newRecord();
    record.addWebhook('wh_word', { orderedByKey: true });
    // Key A's seq 1 fails and waits an hour for its retry; key B's seqs 2 and 3 succeed.
    record.responder = retriesWhen((call) => call.seq === 1, () => Date.now() + 3_600_000);
    const engine = newEngine(record.deps());
    engine.offer(record.copy(record.commit('wh_word', 'A')));
    engine.offer(record.copy(record.commit('wh_word', 'B')));
    engine.offer(record.copy(record.commit('wh_word', 'B')));
    await until(() => record.sent('wh_word').length === 3, 'seqs 1, 2, 3 once each');
    await sleep(50);
    // A replay puts B's seq 2 back and publishes the webhook's lowest pending delivery with the new count,
    // as replay-service.ts does: A's seq 1, queued in the lane already.
    record.requeue('wh_word', [2]);
    engine.offer({ ...record.copy(record.row(record.rows.get('wh_word')![0]!.job.deliveryId)!.job), requeues: 1 });
    await until(() => record.sent('wh_word').length === 4, "B's seq 2 again, not at the next sweep");
    assert.deepEqual(record.sent('wh_word'), [1, 2, 3, 2]);
  });

  test('ordering keys: an event carrying a new count, offered while a pump waits for its webhook, does not start before what was put back', async () => {
    const record = newRecord();
    record.addWebhook('wh_race', { orderedByKey: true });
    const deps = record.deps();
    let webhookDelayMs = 0;
    const engine = newEngine({
      ...deps,
      // The webhook cache's confirmation, a read of Postgres once a second, which the pump waits for.
      getWebhook: async (id) => {
        const answer = await deps.getWebhook(id);
        if (webhookDelayMs) await sleep(webhookDelayMs);
        return answer;
      },
    });
    for (const key of ['B', 'B', 'A', 'A']) engine.offer(record.copy(record.commit('wh_race', key)));
    await until(() => record.sent('wh_race').length === 4, 'seqs 1..4');
    await sleep(50);
    webhookDelayMs = 100;
    // Event 5 (key A), published before the replay: its pump waits for the webhook.
    engine.offer(record.copy(record.commit('wh_race', 'A')));
    await sleep(20);
    // The replay puts B's seq 1 back; event 6 (key B) comes right after it, with the count.
    record.requeue('wh_race', [1]);
    engine.offer(record.copy(record.commit('wh_race', 'B')));
    await until(() => record.sent('wh_race').length >= 7, 'seqs 5, 1, 6');
    const sent = record.sent('wh_race');
    assert.ok(sent.indexOf(1, 4) < sent.indexOf(6), `B's seq 1 again before 6: ${JSON.stringify(sent)}`);
  });

  test('a job kept past the lane\'s position (in flight when a cut read moved it back) and then given a retry waits for the deliveries between', async () => {
    const record = newRecord();
    record.addWebhook('wh_past');
    // 6's first attempt is held (in flight); everything else succeeds.
    record.responder = (call) => (call.seq === 6 && call.attempts === 0 ? 'hold' : { final: true, signal: 'success' });
    const engine = newEngine(record.deps({ laneCapacity: 4 }));
    await laneLoaded(engine, record, 'wh_past');
    const jobs = [1, 2, 3, 4, 5, 6].map(() => record.commit('wh_past'));
    for (const job of jobs) engine.offer(record.copy(job));
    await until(() => record.calls.some((c) => c.seq === 6), 'seq 6 in flight');
    // A replay of 1..5 and its word: the read from the start (room for 3) is cut at 3, and the lane keeps 6,
    // in flight, past its position.
    record.requeue('wh_past', [1, 2, 3, 4, 5]);
    engine.offer({ ...record.copy(record.row(jobs[0]!.deliveryId)!.job), requeues: 1 });
    await until(() => record.loads.some((l) => l.afterSeq === 0 && l.limit === 3), 'the read from the start');
    await sleep(10);
    // 6's attempt ends with a retry, due at once: it went before 4 and 5.
    record.calls.find((c) => c.seq === 6)!.finish({ final: false, nextAttemptAt: Date.now(), signal: 'failure' });
    await until(() => record.sent('wh_past').length === 12, 'everything sent again');
    assert.deepEqual(record.sent('wh_past').slice(6), [1, 2, 3, 4, 5, 6]);
  });

  test('a lane whose reads fail (Postgres down) reads again after a second, not at once: a read a millisecond', async () => {
    const { record, state } = await behindFailingReads('wh_down', {});
    await sleep(1_000);
    assert.ok(state.failures >= 1 && state.failures <= 2, `${state.failures} reads in a second`);
    state.failNext = 0;
    await until(() => record.sent('wh_down').length === 2, 'both sent once Postgres is back');
    assert.deepEqual(record.sent('wh_down'), [1, 2]);
  });

  for (const readMs of [1, 40]) {
    test(`a retry by hand committed between a delivery's outcome and the lane hearing of it is sent before the next (read answering ${readMs === 1 ? 'before' : 'after'} the outcome)`, async () => {
      const record = newRecord();
      record.addWebhook('wh_window');
      record.notifyDelayMs = 20;
      record.loadDelayMs = readMs;
      // Seq 1's first attempt ends final; seq 2 is held once started.
      record.responder = (call) => (call.seq === 2 ? 'hold' : { final: true, signal: call.attempts === 0 ? 'failure' : 'success' });
      const engine = newEngine(record.deps());
      await laneLoaded(engine, record, 'wh_window');
      const first = record.commit('wh_window');
      engine.offer(record.copy(first));
      engine.offer(record.copy(record.commit('wh_window')));
      // Seq 1's outcome is committed; the lane hears of it 20 ms later. A retry by hand puts it back
      // meanwhile, and its word (the delivery, with the count) reaches the lane first.
      await until(() => record.row(first.deliveryId)!.status !== 'pending', "seq 1's outcome committed");
      record.requeue('wh_window', [1]);
      engine.offer({ ...record.copy(record.row(first.deliveryId)!.job), requeues: 1 });
      await until(() => record.calls.length >= 3, 'two more attempts');
      assert.deepEqual(record.sent('wh_window'), [1, 1, 2]);
    });
  }

  test('a sweep naming a put-back below the position within a second of a failed read has it read at once: the next delivery went first', async () => {
    const record = newRecord();
    record.addWebhook('wh_p');
    const { state, deps } = flaky(record, { gapWaitMs: 20 });
    const engine = newEngine(deps);
    await laneLoaded(engine, record, 'wh_p');
    // Seq 1's first attempt succeeds; every other attempt is held until finished here.
    record.responder = (call) => (call.seq === 1 && record.calls.filter((c) => c.seq === 1).length === 1 ? { final: true, signal: 'success' } : 'hold');
    const first = record.commit('wh_p');
    engine.offer(record.copy(first));
    await until(() => record.row(first.deliveryId)!.status === 'succeeded', 'seq 1 final');
    for (const job of [record.commit('wh_p'), record.commit('wh_p'), record.commit('wh_p')]) engine.offer(record.copy(job));
    await until(() => record.calls.some((c) => c.seq === 2), 'seq 2 in flight');
    // Seq 5's feed message is lost; 6 waits ahead, and the gap timer's read fails (a Postgres blip).
    record.commit('wh_p');
    const sixth = record.commit('wh_p');
    state.failNext = 1;
    engine.offer(record.copy(sixth));
    await until(() => state.failures === 1, 'the failed read');
    // Postgres is back. A retry by hand puts seq 1 back, its word lost; the sweep finds it.
    record.requeue('wh_p', [1]);
    await sleep(100);
    engine.wake('wh_p', 0, 1, Date.now());
    await sleep(30);
    record.calls.find((c) => c.seq === 2)!.finish();
    await until(() => record.calls.length >= 3, 'the attempt after seq 2');
    assert.deepEqual(record.sent('wh_p'), [1, 2, 1]);
  });

  test("a lane whose first read failed reads again: a second later, and at once when the sweep wakes it", async () => {
    for (const wakes of [false, true]) {
      const record = newRecord();
      record.addWebhook('wh_u');
      const { state, deps } = flaky(record);
      const engine = newEngine(deps);
      state.failNext = 1;
      // The feed's job makes the lane; its first read fails.
      engine.offer(record.copy(record.commit('wh_u')));
      await until(() => state.failures === 1, 'the failed first read');
      const failedAt = Date.now();
      await sleep(300);
      // Postgres is back: the sweep's query answered, and it wakes the lane.
      if (wakes) engine.wake('wh_u', 0, 1, Date.now());
      await until(() => record.sent('wh_u').length === 1, 'seq 1 sent');
      const after = Date.now() - failedAt;
      assert.ok(wakes ? after < 900 : after >= 900, `sent ${after} ms after the failure`);
    }
  });

  test('ordering keys: a job in flight past the position (a cut read of a replay moved it back) costs no read per round trip', async () => {
    const record = newRecord();
    record.addWebhook('wh_k', { orderedByKey: true });
    let replayed = false;
    // Key a's delivery is held in flight; key b's succeed, until the replay, whose attempts are held.
    record.responder = (call) => (call.key === 'a' || replayed ? 'hold' : { final: true, signal: 'success' });
    const engine = newEngine(record.deps({ laneCapacity: 4 }));
    await laneLoaded(engine, record, 'wh_k');
    const jobs = Array.from({ length: 200 }, () => record.commit('wh_k', 'b'));
    const a = record.commit('wh_k', 'a');
    for (const job of [...jobs, a]) engine.offer(record.copy(job));
    await until(() => record.rows.get('wh_k')!.filter((r) => r.status === 'pending').length === 1 && record.sent('wh_k').length === 201, 'b done, a in flight', 10_000);
    // A replay of b's 200 and its word: the read from the start is cut, and a's stays, in flight, past the position.
    replayed = true;
    record.requeue('wh_k', jobs.map((j) => j.seq));
    const loads = record.loads.length;
    engine.offer({ ...record.copy(record.row(jobs[0]!.deliveryId)!.job), requeues: 1 });
    await sleep(500);
    // It read one row a time, 198 reads, holding 201 jobs in a lane of 4.
    assert.ok(record.loads.length - loads <= 3, `${record.loads.length - loads} reads`);
    // a's attempt ends with a retry: the lane reads it again in its turn.
    record.calls.find((c) => c.key === 'a')!.finish({ final: false, nextAttemptAt: Date.now(), signal: 'failure' });
    record.responder = () => ({ final: true, signal: 'success' });
    for (const call of record.calls) call.finish();
    await until(() => record.sent('wh_k').length === 402, 'the replayed 200 and a again', 10_000);
    assert.deepEqual(record.sent('wh_k').filter((seq) => seq === 201), [201, 201]);
  });

  test('ordering keys: a gap read that failed is made again a second later, while a head waits an hour for its retry', async () => {
    const record = newRecord();
    record.addWebhook('wh_g', { orderedByKey: true });
    const { state, deps } = flaky(record, { gapWaitMs: 20 });
    const engine = newEngine(deps);
    await laneLoaded(engine, record, 'wh_g');
    record.responder = retriesWhen((call) => call.key === 'a', () => Date.now() + 3_600_000);
    const a = record.commit('wh_g', 'a');
    engine.offer(record.copy(a));
    await until(() => record.row(a.deliveryId)!.job.attempts === 1, "a's retry scheduled");
    // Key b: seq 2's feed message is lost; 3 waits ahead, and the gap timer's read fails.
    record.commit('wh_g', 'b');
    const third = record.commit('wh_g', 'b');
    state.failNext = 1;
    engine.offer(record.copy(third));
    await until(() => state.failures === 1, 'the failed gap read');
    await until(() => record.sent('wh_g').length === 3, "b's two deliveries once Postgres is back");
    assert.deepEqual(record.sent('wh_g'), [1, 2, 3]);
  });

  test('reads that keep failing (a long outage) are made again 1 s, then 2 s, then 4 s later, with one warning', async () => {
    const warnings: string[] = [];
    const { record, state, engine } = await behindFailingReads('wh_out', { log: pino({ level: 'warn' }, { write: (line: string) => void warnings.push(line) }) });
    await until(() => state.failures === 1, 'the first failed read');
    await sleep(3_500);
    assert.equal(state.failures, 3, 'at 0, 1 and 3 s; the next at 7 s');
    assert.equal(warnings.length, 1);
    state.failNext = 0;
    // Postgres is back, and the sweep's query says so: the lane reads at once.
    engine.wake('wh_out', 0, 1, Date.now());
    await until(() => record.sent('wh_out').length === 2, 'both sent');
  });

  test('a job whose count the record never reaches (a database restored from a backup) costs one read from the start, not a read for ever', async () => {
    const record = newRecord();
    record.addWebhook('wh_rb');
    const engine = newEngine(record.deps());
    await laneLoaded(engine, record, 'wh_rb');
    const loads = record.loads.length;
    engine.offer({ ...record.copy(record.commit('wh_rb')), requeues: 7 });
    await until(() => record.sent('wh_rb').length === 1, 'sent');
    await sleep(50);
    assert.deepEqual(record.loads.slice(loads).map((l) => l.afterSeq), [0]);
  });

  test("a lane made after a replay (a restart, an idle lane evicted) takes the webhook's count from its first read: no second read", async () => {
    const record = newRecord();
    record.addWebhook('wh_rn');
    record.requeue('wh_rn', []);
    record.requeue('wh_rn', []);
    const engine = newEngine(record.deps());
    engine.offer(record.copy(record.commit('wh_rn')));
    engine.offer(record.copy(record.commit('wh_rn')));
    await until(() => record.sent('wh_rn').length === 2, 'both sent');
    assert.equal(record.loads.length, 1);
  });

  test('a half-open probe that never went (the lease lapsed first) is given back: the lane probes again once the lease is confirmed', async () => {
    const record = newRecord();
    record.addWebhook('wh_probe');
    let confirmed = true;
    record.responder = () => {
      if (record.calls.length === 1) return { final: false, nextAttemptAt: Date.now(), signal: 'failure' };
      if (record.calls.length === 2) {
        confirmed = false;
        return { notStarted: true };
      }
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ mayStart: () => confirmed, circuitPolicy: { failureThreshold: 1, cooldownMs: 100, maxCooldownMs: 100 } }));
    engine.offer(record.copy(record.commit('wh_probe')));
    await until(() => record.calls.length === 2, 'the failure that opens the circuit, then the probe');
    await sleep(50);
    confirmed = true;
    engine.leasesConfirmed();
    await until(() => record.calls.length === 3, 'the probe, sent this time', 3_000);
  });

  test('ordered_by_key switched on while the head is in flight: that delivery is not started again beside itself', async () => {
    const record = newRecord();
    record.addWebhook('wh_flip', { orderedByKey: false });
    record.responder = () => 'hold';
    const engine = newEngine(record.deps());
    engine.offer(record.copy(record.commit('wh_flip', 'a')));
    engine.offer(record.copy(record.commit('wh_flip', 'b')));
    await until(() => record.calls.length === 1, 'seq 1 in flight');
    record.webhooks.get('wh_flip')!.orderedByKey = true;
    engine.offer(record.copy(record.commit('wh_flip', 'c')));
    await until(() => record.calls.length === 3, 'keys b and c started beside a');
    await sleep(100);
    assert.deepEqual(record.calls.map((c) => c.seq), [1, 2, 3], 'seq 1 once; b and c go under the new setting');
  });

  test('a free slot offered to a lane that does not take it (paused meanwhile) goes on to the next lane waiting', async () => {
    const record = newRecord();
    for (const id of ['wh_x', 'wh_b', 'wh_c']) record.addWebhook(id);
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ maxInFlight: 1, holdRecheckMs: 10_000 }));
    engine.offer(record.copy(record.commit('wh_x')));
    await until(() => record.calls.length === 1, 'x in flight');
    engine.offer(record.copy(record.commit('wh_b')));
    engine.offer(record.copy(record.commit('wh_c')));
    await sleep(50);
    record.webhooks.get('wh_b')!.status = 'paused';
    record.responder = () => ({ final: true, signal: 'success' });
    record.calls[0]!.finish();
    await until(() => record.sent('wh_c').length === 1, 'wh_c sent with the slot wh_b let go', 1_000);
    assert.deepEqual(record.sent('wh_b'), [], 'the paused one holds');
  });

  test('ordering keys: a delivery whose feed message was lost goes beside a head that waits for its retry, once the sweep names the last seq', async () => {
    const record = newRecord();
    record.addWebhook('wh_keys', { orderedByKey: true });
    record.responder = retriesWhen((call) => call.key === 'A', () => Date.now() + 3_600_000);
    const engine = newEngine(record.deps());
    engine.offer(record.copy(record.commit('wh_keys', 'A')));
    await until(() => record.calls.length === 1, 'key A tried, its retry an hour away');
    record.commit('wh_keys', 'B'); // committed, its feed message lost
    // The sweeps: seq 2 is due; the lowest pending seq is 1 (A's head, in the lane), the last seq 2. Each
    // sweep while A's attempt is still being recorded finds the lane busy and leaves it be.
    const sweeps = setInterval(() => engine.wake('wh_keys', 0, 1, Date.now()), 50);
    try {
      await until(() => record.sent('wh_keys').includes(2), "key B's delivery", 2_000);
    } finally {
      clearInterval(sweeps);
    }
    assert.deepEqual(record.sent('wh_keys'), [1, 2]);
  });

  test('a head due months from now (a very slow replay, a long retry schedule) does not spin its lane: Node runs a timer past 24.8 days at once', async () => {
    const record = newRecord();
    record.addWebhook('wh_far');
    const job = record.commit('wh_far');
    const far = Date.now() + 100 * 86_400_000;
    record.row(job.deliveryId)!.job.nextAttemptAt = far;
    let reads = 0;
    const deps = record.deps();
    const engine = newEngine({ ...deps, getWebhook: (id) => (reads++, deps.getWebhook(id)) });
    engine.offer({ ...record.copy(job), nextAttemptAt: far });
    await sleep(500);
    assert.deepEqual(record.sent('wh_far'), []);
    assert.ok(reads <= 2, `the lane looked at its webhook ${reads} times in 500 ms`);
  });

  test("a read whose snapshot predates a job the feed brought meanwhile keeps the lane's position: a repeat of that job in flight is not sent again", async () => {
    const record = newRecord();
    record.addWebhook('wh_snap');
    record.responder = () => 'hold';
    const engine = newEngine(record.deps({ gapWaitMs: 10_000 }));
    await laneLoaded(engine, record, 'wh_snap');
    const first = record.commit('wh_snap');
    engine.offer(record.copy(first));
    await until(() => record.calls.length === 1, 'seq 1 sent');
    record.calls[0]!.finish();
    await sleep(20);
    // The sweep pokes the idle lane; its read of the record is slow, and its snapshot comes before seq 2.
    record.loadDelayMs = 100;
    engine.wake('wh_snap', 0);
    await sleep(10);
    const second = record.commit('wh_snap');
    engine.offer(record.copy(second));
    await until(() => record.calls.length === 2, 'seq 2 sent from the feed');
    await sleep(150);
    engine.offer(record.copy(second)); // redelivered by the feed while in flight
    await sleep(20);
    record.calls[1]!.finish();
    await sleep(50);
    const third = record.commit('wh_snap');
    engine.offer(record.copy(third));
    await until(() => record.calls.length === 3, 'seq 3 sent');
    assert.deepEqual(record.sent('wh_snap'), [1, 2, 3], 'seq 2 once, and seq 3 after it');
  });

  test('ordering keys: a late feed copy of a delivery finished after a cut read moved the lane back is not sent again', async () => {
    const record = newRecord();
    record.addWebhook('wh_late', { orderedByKey: true });
    record.responder = retriesWhen((call) => call.key === 'A', () => Date.now() + 3_600_000);
    const engine = newEngine(record.deps({ laneCapacity: 3, gapWaitMs: 30 }));
    await laneLoaded(engine, record, 'wh_late');
    engine.offer(record.copy(record.commit('wh_late', 'A')));
    await until(() => record.calls.length === 1, 'A1 tried; its retry an hour away');
    const b2 = record.commit('wh_late', 'B'); // its feed message lags
    engine.offer(record.copy(record.commit('wh_late', 'A')));
    engine.offer(record.copy(record.commit('wh_late', 'A')));
    engine.offer(record.copy(record.commit('wh_late', 'A')));
    await until(() => record.sent('wh_late').includes(2), 'B2 read from the record and sent');
    await sleep(30);
    // The sweep: the lane is over its capacity, its read from 0 is cut and moves its position back.
    engine.wake('wh_late', 0, 1, Date.now());
    await sleep(30);
    engine.offer(record.copy(b2)); // B2's feed message, at last
    await sleep(100);
    assert.equal(record.calls.filter((c) => c.seq === 2).length, 1, 'B2 sent once');
  });

  test('a pending check that answers after a sweep sent the delivery does not put it back', async () => {
    const record = newRecord();
    record.addWebhook('wh_check');
    const engine = newEngine(record.deps());
    const first = record.commit('wh_check');
    engine.offer(record.copy(first));
    engine.offer(record.copy(record.commit('wh_check')));
    await until(() => record.sent('wh_check').length === 2, 'both sent');
    await sleep(20);
    // Seq 1 put back by a retry by hand: pending again, published again, and found by a sweep.
    const row = record.row(first.deliveryId)!;
    row.status = 'pending';
    row.job.attempts = 1;
    record.isPendingDelayMs = 200;
    engine.offer({ ...row.job });
    engine.wake('wh_check', 0, 1, Date.now());
    await until(() => record.sent('wh_check').length === 3, 'the retry sent, from the sweep');
    await sleep(300);
    assert.deepEqual(record.sent('wh_check'), [1, 2, 1], 'the retry by hand is sent once');
  });

  /**
   * A lane of 8 given 20 deliveries of key A, whose head fails its first attempt (tried again after
   * `retryMs`), then `more` of key B; everything else succeeds.
   */
  function twentyOfABehindAFailingHead(webhookId: string, retryMs: number, more: number) {
    const record = newRecord();
    const webhook = record.addWebhook(webhookId, { orderedByKey: true });
    record.responder = retriesWhen((call) => call.seq === 1 && call.attempts === 0, () => Date.now() + retryMs);
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    for (let i = 0; i < 20; i++) engine.offer(record.copy(record.commit(webhookId, 'A')));
    for (let i = 0; i < more; i++) engine.offer(record.copy(record.commit(webhookId, 'B')));
    return { record, webhook, engine };
  }

  test('ordering keys: a key whose head waits for its retry, with more deliveries behind it than the lane holds, does not hold up the other keys', async () => {
    const { record } = twentyOfABehindAFailingHead('wh_park', 800, 5);
    await until(() => record.sent('wh_park').length === 6, "B's five beside A's waiting head", 600);
    assert.deepEqual(record.sent('wh_park'), [1, 21, 22, 23, 24, 25]);
    assert.ok(record.loads.some((l) => l.leaveOutKeys.includes('A')), "A's deliveries behind its head were left in the record");
    // A's head goes again and succeeds: the rest of A follows from the record, in order.
    await until(() => record.sent('wh_park').length === 26, 'all of A', 3_000);
    assert.deepEqual(record.sent('wh_park').slice(6), Array.from({ length: 20 }, (_, i) => i + 1));
    await sleep(50);
    assert.equal(record.calls.length, 26, 'nothing sent twice');
  });

  test('ordering keys switched off while a key is parked: one order again, a later delivery waits for every parked one', async () => {
    const { record, webhook, engine } = twentyOfABehindAFailingHead('wh_unkey', 500, 3);
    await until(() => record.sent('wh_unkey').length === 4, "B's three beside A's waiting head", 450);
    webhook.orderedByKey = false;
    engine.offer(record.copy(record.commit('wh_unkey', 'B')));
    // The record's check (execute) now holds every delivery to the webhook's one order.
    await until(() => record.sent('wh_unkey').length === 25, 'everything', 3_000);
    assert.deepEqual(record.sent('wh_unkey'), [1, 21, 22, 23, ...Array.from({ length: 20 }, (_, i) => i + 1), 24]);
  });

  test("ordering keys: a delivery put back below a parked key's head (a retry by hand, its feed message lost) goes before it", async () => {
    const record = newRecord();
    record.addWebhook('wh_putback', { orderedByKey: true });
    record.responder = retriesWhen((call) => call.key === 'A' && call.seq === 2 && call.attempts === 0, () => Date.now() + 700);
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    const first = record.commit('wh_putback', 'A');
    engine.offer(record.copy(first));
    await until(() => record.sent('wh_putback').length === 1, 'A1 delivered');
    for (let i = 0; i < 20; i++) engine.offer(record.copy(record.commit('wh_putback', 'A')));
    engine.offer(record.copy(record.commit('wh_putback', 'B')));
    await until(() => record.sent('wh_putback').includes(22), "B beside A's waiting head", 500);
    // A1 is pending again; only the sweep knows it: the lowest pending seq is 1.
    const row = record.row(first.deliveryId)!;
    row.status = 'pending';
    row.job.attempts = 1;
    engine.wake('wh_putback', 0, 1, Date.now());
    await until(() => record.sent('wh_putback').length === 4, 'A1 again', 500);
    assert.deepEqual(record.sent('wh_putback'), [1, 2, 22, 1], "A1 goes again before A2's retry");
    await until(() => record.sent('wh_putback').length === 24, 'the rest of A', 3_000);
    assert.deepEqual(record.sent('wh_putback').slice(4), Array.from({ length: 20 }, (_, i) => i + 2));
  });

  /**
   * Seq 1 (of `putBackKey`) is delivered, then A's head, seq 2, fails (retry in `retryMs`). Seq 1 is put
   * back by hand with its feed message lost, so only the sweep knows; while its read from below is out
   * (`readDelayMs`), seven more of A fill the lane (8), which would park A behind its waiting head.
   */
  async function putBackWhileAFills(webhookId: string, putBackKey: string, retryMs: number, readDelayMs: number): Promise<{ record: FakeRecord; engine: LaneEngine }> {
    const record = newRecord();
    record.addWebhook(webhookId, { orderedByKey: true });
    record.responder = retriesWhen((call) => call.key === 'A' && call.seq === 2 && call.attempts === 0, () => Date.now() + retryMs);
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    const first = record.commit(webhookId, putBackKey);
    engine.offer(record.copy(first));
    await until(() => record.sent(webhookId).length === 1, 'seq 1 delivered');
    engine.offer(record.copy(record.commit(webhookId, 'A')));
    await until(() => record.sent(webhookId).length === 2, "A2's first attempt");
    await sleep(30);
    const row = record.row(first.deliveryId)!;
    row.status = 'pending';
    row.job.attempts = 1;
    record.loadDelayMs = readDelayMs;
    engine.wake(webhookId, 0, 1, Date.now());
    await until(() => record.loads.at(-1)!.afterSeq === 0, 'the read from below');
    for (let i = 0; i < 7; i++) engine.offer(record.copy(record.commit(webhookId, 'A')));
    return { record, engine };
  }

  test('ordering keys: a put-back the sweep found is not lost when a key is parked and let go while the read from below is out', async () => {
    const { record, engine } = await putBackWhileAFills('wh_lost', 'C', 300, 500);
    // A2's retry comes due during the read and succeeds (a park then would have been let go, the read stale).
    await until(() => record.sent('wh_lost').filter((s) => s === 2).length === 2, "A2's retry", 1_000);
    record.loadDelayMs = 1;
    await sleep(800);
    engine.offer(record.copy(record.commit('wh_lost', 'C')));
    await sleep(300);
    const sent = record.sent('wh_lost');
    assert.ok(sent.lastIndexOf(1) > 0, 'C1 (put back) was sent again');
    assert.ok(sent.lastIndexOf(1) < sent.indexOf(10), 'C1 goes before C10');
  });

  test('ordering keys: no key is parked while a read is out: a put-back below the head, in a read from below, is not skipped', async () => {
    const { record } = await putBackWhileAFills('wh_skipped', 'A', 400, 150);
    // The read answers (with A1) before A2's retry comes due.
    await sleep(1_000);
    const sent = record.sent('wh_skipped');
    assert.ok(sent.lastIndexOf(1) > 0, 'A1 (put back) was sent again');
    assert.ok(sent.lastIndexOf(1) < sent.lastIndexOf(2), "A1 goes before A2's retry");
  });

  test('ordering keys: parking keeps a job in flight in the queue, wherever it stands: read again while in flight, it was sent twice', async () => {
    const record = newRecord();
    record.addWebhook('wh_f3', { orderedByKey: true });
    record.responder = (call) => {
      // A2 fails its first attempt (retry in 200 ms); its retry is held (in flight) until the test says.
      if (call.key === 'A' && call.seq === 2) return call.attempts === 0 ? { final: false, nextAttemptAt: Date.now() + 200, signal: 'failure' } : 'hold';
      // C10 fails its first attempt (retry in 600 ms).
      if (call.key === 'C' && call.seq === 10 && call.attempts === 0) return { final: false, nextAttemptAt: Date.now() + 600, signal: 'failure' };
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    const a1 = record.commit('wh_f3', 'A');
    engine.offer(record.copy(a1));
    await until(() => record.sent('wh_f3').length === 1, 'A1 delivered');
    engine.offer(record.copy(record.commit('wh_f3', 'A')));
    await until(() => record.sent('wh_f3').length === 2, "A2's first attempt");
    // Seven more of A fill the lane (8): A is parked behind its waiting head A2.
    for (let i = 0; i < 7; i++) engine.offer(record.copy(record.commit('wh_f3', 'A')));
    await sleep(30);
    engine.offer(record.copy(record.commit('wh_f3', 'C')));
    await until(() => record.sent('wh_f3').includes(10), "C10's first attempt");
    // A2's retry goes, and is held in flight.
    await until(() => record.sent('wh_f3').filter((s) => s === 2).length === 2, "A2's retry in flight", 1_000);
    const a2Retry = record.calls.at(-1)!;
    // A1 is retried by hand; the feed brings it: it is queued ahead of A2 (A2 in flight).
    const row = record.row(a1.deliveryId)!;
    row.status = 'pending';
    row.job.attempts = 1;
    // As the retry's word is published: read from the record (a copy from before A1's attempt is stale).
    engine.offer(record.copy(row.job));
    await sleep(30);
    // More of C fill the lane: C is parked behind its waiting head, and A2 (in flight) leaves the queue with the rest of A.
    for (let i = 0; i < 6; i++) engine.offer(record.copy(record.commit('wh_f3', 'C')));
    // C10's retry succeeds: the keys are let go and the lane reads again from below: A2 is pending (in flight) there.
    await until(() => record.sent('wh_f3').filter((s) => s === 10).length === 2, "C10's retry", 1_500);
    await sleep(100);
    a2Retry.finish();
    await sleep(400);
    assert.equal(record.sent('wh_f3').filter((s) => s === 2).length, 2, 'A2 sent twice (fail, success), no more');
  });

  test("ordering keys: a paced replay of one key, larger than the lane, is not parked: each delivery read the lane's window again", async () => {
    const record = newRecord();
    record.addWebhook('wh_f4', { orderedByKey: true });
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    await laneLoaded(engine, record, 'wh_f4');
    // A replay at 50/s puts back 40 deliveries of key A: the n-th due n × 20 ms from now (as startReplay does).
    const now = Date.now();
    for (let n = 0; n < 40; n++) {
      record.commit('wh_f4', 'A');
      const row = record.rows.get('wh_f4')!.at(-1)!;
      row.job.nextAttemptAt = now + n * 20;
      row.job.paceMs = 20;
    }
    const loadsBefore = record.loads.length;
    // The sweep wakes the idle lane.
    engine.wake('wh_f4', 0, 1, Date.now());
    await until(() => record.sent('wh_f4').length === 40, 'the whole replay', 5_000);
    const loads = record.loads.slice(loadsBefore);
    assert.deepEqual(record.sent('wh_f4'), Array.from({ length: 40 }, (_, i) => i + 1));
    assert.ok(loads.length <= 20, `${loads.length} reads for 40 deliveries`);
  });

  test("ordering keys: a pending check that answers after the lane's position moved back does not queue the job past it", async () => {
    const record = newRecord();
    record.addWebhook('wh_f5', { orderedByKey: true });
    // A1 fails its first attempt (retry in 150 ms); its retry is held in flight until the test says.
    record.responder = (call) =>
      call.key === 'A' && call.seq === 1 ? (call.attempts === 0 ? { final: false, nextAttemptAt: Date.now() + 150, signal: 'failure' } : 'hold') : { final: true, signal: 'success' };
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    const jobs = [record.commit('wh_f5', 'A')];
    engine.offer(record.copy(jobs[0]!));
    await until(() => record.sent('wh_f5').length === 1, "A1's first attempt");
    for (let i = 0; i < 19; i++) jobs.push(record.commit('wh_f5', 'A'));
    // The feed brings A2..A8: the lane is full (8) of A behind its waiting head, and A is parked.
    for (let i = 1; i < 8; i++) engine.offer(record.copy(jobs[i]!));
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('A')), 'A parked');
    await until(() => record.sent('wh_f5').length === 2, "A1's retry in flight", 1_000);
    const retry = record.calls.at(-1)!;
    // A late (or repeated) feed copy of A15: at or below the lane's position, so its pending state is asked.
    record.isPendingDelayMs = 100;
    engine.offer(record.copy(jobs[14]!));
    await sleep(5);
    // A1 succeeds meanwhile: A is let go, the position goes back to 1, and the read from there is cut at A9.
    retry.finish();
    await until(() => record.loads.at(-1)!.afterSeq === 1, 'the read from below A2');
    // The read that continues from A9 is slow (a loaded database).
    record.loadDelayMs = 300;
    await sleep(600);
    const sent = record.sent('wh_f5');
    assert.ok(!sent.includes(15) || sent.indexOf(15) > sent.indexOf(14), 'A15 only after A14');
  });

  test("ordering keys: the feed's late copies of a parked key's deliveries cost no pending check and no read", async () => {
    const record = newRecord();
    record.addWebhook('wh_f6', { orderedByKey: true });
    // A1 fails (retry in 10 s), everything else succeeds.
    record.responder = retriesWhen((call) => call.key === 'A' && call.seq === 1, () => Date.now() + 10_000);
    let pendingChecks = 0;
    const deps = record.deps({ laneCapacity: 8 });
    const isPending = deps.isPending;
    deps.isPending = (id) => {
      pendingChecks++;
      return isPending(id);
    };
    const engine = newEngine(deps);
    // 40 of A are in the record before the lane reads it (the feed is behind): the lane reads A1..A8.
    const jobs = Array.from({ length: 40 }, () => record.commit('wh_f6', 'A'));
    engine.wake('wh_f6', 0, 1, Date.now());
    await until(() => record.sent('wh_f6').length === 1, "A1's attempt");
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('A')), 'A parked');
    await sleep(50);
    const loadsBefore = record.loads.length;
    // Now the feed catches up: its copies of A1..A40 come, late.
    for (const job of jobs) engine.offer(record.copy(job));
    await sleep(500);
    const loads = record.loads.length - loadsBefore;
    assert.equal(record.sent('wh_f6').length, 1, 'nothing but A1 sent');
    assert.ok(pendingChecks <= 5 && loads <= 2, `${pendingChecks} pending checks and ${loads} reads for 40 late feed copies`);
  });

  test("ordering keys: a lane made from the record (a restart, a takeover) parks a key whose head waits for a retry that failed before", async () => {
    const record = newRecord();
    record.addWebhook('wh_rebuilt', { orderedByKey: true });
    // In the record: A1 failed once on the previous owner, its retry 5 s away; 19 more of A; then 5 of B.
    const a1 = record.commit('wh_rebuilt', 'A');
    const row = record.row(a1.deliveryId)!;
    row.job.attempts = 1;
    row.job.nextAttemptAt = Date.now() + 5_000;
    for (let i = 0; i < 19; i++) record.commit('wh_rebuilt', 'A');
    for (let i = 0; i < 5; i++) record.commit('wh_rebuilt', 'B');
    // This process claims the shard: the sweep wakes the lane (lowest pending seq 1, last seq 25).
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    engine.wake('wh_rebuilt', 0, 1, Date.now());
    await until(() => record.sent('wh_rebuilt').length === 5, "B's five beside A's waiting head", 1_500);
    assert.deepEqual(record.sent('wh_rebuilt'), [21, 22, 23, 24, 25]);
  });

  test("ordering keys: a parked key let go with another (the other's head done) is parked again: its head, read again, still waits for its retry", async () => {
    const record = newRecord();
    record.addWebhook('wh_again', { orderedByKey: true });
    const t0 = Date.now();
    // A1 fails once (retry in 300 ms); B's head fails once (retry at 6 s); everything else succeeds.
    record.responder = (call) => {
      if (call.seq === 1 && call.attempts === 0) return { final: false, nextAttemptAt: Date.now() + 300, signal: 'failure' };
      if (call.seq === 21 && call.attempts === 0) return { final: false, nextAttemptAt: t0 + 6_000, signal: 'failure' };
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    for (let i = 0; i < 20; i++) engine.offer(record.copy(record.commit('wh_again', 'A')));
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('A')), 'A parked');
    for (let i = 0; i < 20; i++) engine.offer(record.copy(record.commit('wh_again', 'B')));
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('B')), 'B parked too');
    // A1's retry succeeds: both keys are let go, and the lane reads A and B again from seq 1.
    await until(() => record.sent('wh_again').filter((x) => x <= 20).length === 21, 'all of A', 2_000);
    for (let i = 0; i < 3; i++) engine.offer(record.copy(record.commit('wh_again', 'C')));
    await until(() => record.sent('wh_again').filter((x) => x > 40).length === 3, "C's three beside B's waiting head", 1_500);
    assert.deepEqual(record.sent('wh_again').filter((x) => x > 40), [41, 42, 43]);
  });

  test("ordering keys: sweeps of an idle lane with a parked key leave it parked or park it again: other keys' retries go when due", async () => {
    const record = newRecord();
    record.addWebhook('wh_swept', { orderedByKey: true });
    const t0 = Date.now();
    // At first everything fails: A1's retry is at 4 s, each X's 600 ms after its try; X's second try succeeds.
    record.responder = (call) => {
      if (call.key === 'A' && call.attempts === 0) return { final: false, nextAttemptAt: t0 + 4_000, signal: 'failure' };
      if (call.key.startsWith('X') && call.attempts === 0) return { final: false, nextAttemptAt: Date.now() + 600, signal: 'failure' };
      return { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    for (let i = 0; i < 20; i++) engine.offer(record.copy(record.commit('wh_swept', 'A')));
    // Ten more keys with one delivery each (seqs 21..30).
    for (let i = 0; i < 10; i++) engine.offer(record.copy(record.commit('wh_swept', `X${i}`)));
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('A')), 'A parked');
    await until(() => record.sent('wh_swept').filter((x) => x > 20).length >= 7, "seven X's tried once", 1_000);
    // The sweep, every 200 ms (2 s in production): lowest pending seq 1 (A1, in the lane), last seq 30.
    const sweeps = setInterval(() => engine.wake('wh_swept', 0, 1, Date.now()), 200);
    try {
      const xDone = () => record.rows.get('wh_swept')!.filter((r) => r.job.orderingKey.startsWith('X') && r.status === 'succeeded').length;
      await until(() => xDone() === 10, 'every X delivered before A1 is due again (their retries come due at ~0.6 s)', 2_500);
    } finally {
      clearInterval(sweeps);
    }
  });

  for (const sweeping of [false, true]) {
    test(`ordering keys: a read from the lane's position that ends below it (the feed moved it on past a parked key's job meanwhile) is not taken for a cut read from below${sweeping ? ', with sweeps' : ''}`, async () => {
      const record = newRecord();
      record.addWebhook('wh_cut', { orderedByKey: true });
      record.addWebhook('wh_hog');
      const t0 = Date.now();
      record.responder = (call) => {
        if (call.webhookId === 'wh_hog') return 'hold';
        if (call.key === 'K' && call.seq === 1 && call.attempts === 0) return { final: false, nextAttemptAt: t0 + 6_000, signal: 'failure' };
        return { final: true, signal: 'success' };
      };
      // One global slot, which another webhook's slow endpoint holds for a while.
      const engine = newEngine(record.deps({ laneCapacity: 8, maxInFlight: 1 }));
      engine.offer(record.copy(record.commit('wh_cut', 'K')));
      await until(() => record.sent('wh_cut').length === 1, "K1's first attempt");
      await sleep(30);
      engine.offer(record.copy(record.commit('wh_hog')));
      await until(() => record.sent('wh_hog').length === 1, 'the other webhook holds the slot');
      const k = Array.from({ length: 7 }, () => record.commit('wh_cut', 'K')); // seqs 2..8
      const rest = [...Array.from({ length: 7 }, () => record.commit('wh_cut', 'B')), record.commit('wh_cut', 'K'), record.commit('wh_cut', 'B'), record.commit('wh_cut', 'B')]; // 9..18
      record.loadDelayMs = 300;
      // The lane fills with K behind its waiting head: K is parked, and the lane reads past it.
      for (const job of k) engine.offer(record.copy(job));
      await until(() => record.loads.some((l) => l.leaveOutKeys.includes('K')), 'K parked');
      // Meanwhile the feed brings the rest, in order: K16 moves the position past the read's end.
      for (const job of rest) engine.offer(record.copy(job));
      await sleep(400);
      record.loadDelayMs = 1;
      record.calls.find((c) => c.webhookId === 'wh_hog')!.finish();
      const sweeps = sweeping ? setInterval(() => engine.wake('wh_cut', 0, 1, Date.now()), 200) : undefined;
      try {
        await until(() => record.sent('wh_cut').length === 10, "B's nine beside K's waiting head (K1's retry is 6 s away)", 2_500);
      } finally {
        clearInterval(sweeps);
      }
      assert.deepEqual(record.sent('wh_cut'), [1, 9, 10, 11, 12, 13, 14, 15, 17, 18]);
    });
  }

  test("ordering keys: a replayed delivery of key B above key A's waiting head (parked or not) is read by the sweep and goes before B's later ones", async () => {
    for (const more of [0, 9]) {
      const webhookId = `wh_replayed_${more}`;
      const record = newRecord();
      record.addWebhook(webhookId, { orderedByKey: true });
      const t0 = Date.now();
      // A1 fails its first attempt; its retry is 4 s away. Everything else succeeds.
      record.responder = retriesWhen((call) => call.seq === 1 && call.attempts === 0, () => t0 + 4_000);
      const engine = newEngine(record.deps({ laneCapacity: 8 }));
      engine.offer(record.copy(record.commit(webhookId, 'A')));
      await until(() => record.sent(webhookId).length === 1, "A1's first attempt");
      const b2 = record.commit(webhookId, 'B');
      engine.offer(record.copy(b2));
      engine.offer(record.copy(record.commit(webhookId, 'B')));
      await until(() => record.sent(webhookId).length === 3, 'B2 and B3 delivered');
      // With nine more of A behind A1's waiting head, A is parked.
      for (let i = 0; i < more; i++) engine.offer(record.copy(record.commit(webhookId, 'A')));
      await sleep(100);
      // A replay puts B2 back, due now: it publishes nothing, and the sweep names seq 1 (A1, held).
      const row = record.row(b2.deliveryId)!;
      row.status = 'pending';
      row.job.nextAttemptAt = Date.now();
      const sweeps = setInterval(() => engine.wake(webhookId, 0, 1, Date.now()), 100);
      try {
        await until(() => record.sent(webhookId).filter((s) => s === 2).length === 2, 'B2 sent again, A1 still waiting', 1_500);
        engine.offer(record.copy(record.commit(webhookId, 'B')));
        await until(() => record.sent(webhookId).includes(4 + more), 'a live B after it', 1_000);
      } finally {
        clearInterval(sweeps);
      }
    }
  });

  test('one order again (ordered_by_key switched off while a key is parked): a replayed delivery above the parked head goes before every later one', async () => {
    const record = newRecord();
    const webhook = record.addWebhook('wh_replayed_fifo', { orderedByKey: true });
    const t0 = Date.now();
    record.responder = retriesWhen((call) => call.seq === 1 && call.attempts === 0, () => t0 + 1_500);
    const engine = newEngine(record.deps({ laneCapacity: 8 }));
    engine.offer(record.copy(record.commit('wh_replayed_fifo', 'A')));
    await until(() => record.sent('wh_replayed_fifo').length === 1, "A1's first attempt");
    const b2 = record.commit('wh_replayed_fifo', 'B');
    engine.offer(record.copy(b2));
    engine.offer(record.copy(record.commit('wh_replayed_fifo', 'C')));
    await until(() => record.sent('wh_replayed_fifo').length === 3, 'B2 and C3 delivered');
    for (let i = 0; i < 9; i++) engine.offer(record.copy(record.commit('wh_replayed_fifo', 'A'))); // 4..12
    await sleep(100);
    webhook.orderedByKey = false;
    const row = record.row(b2.deliveryId)!;
    row.status = 'pending';
    row.job.nextAttemptAt = Date.now();
    const sweeps = setInterval(() => engine.wake('wh_replayed_fifo', 0, 1, Date.now()), 100);
    try {
      // The record's check (execute) fails anything after seq 2 started before the replayed seq 2 was final.
      await until(() => record.sent('wh_replayed_fifo').length >= 13, 'A1 again, B2 and A4..A12', 4_000);
    } finally {
      clearInterval(sweeps);
    }
  });

  test('a paused lane with a parked key does not grow past its capacity, sweep after sweep', async () => {
    const record = newRecord();
    const webhook = record.addWebhook('wh_grow', { orderedByKey: true });
    record.responder = retriesWhen((call) => call.seq === 1, () => Date.now() + 3_600_000);
    const engine = newEngine(record.deps({ laneCapacity: 8, holdRecheckMs: 50 }));
    for (let i = 0; i < 12; i++) engine.offer(record.copy(record.commit('wh_grow', 'A')));
    await until(() => record.loads.some((l) => l.leaveOutKeys.includes('A')), 'A parked');
    // The webhook is paused; events of other keys keep coming.
    webhook.status = 'paused';
    for (let i = 0; i < 300; i++) engine.offer(record.copy(record.commit('wh_grow', `K${i % 50}`)));
    await sleep(100);
    // A hundred sweeps (200 s in production), each naming A1 (held) as the lowest pending seq.
    for (let i = 0; i < 100; i++) {
      engine.wake('wh_grow', 0, 1, Date.now());
      await sleep(10);
    }
    const held = (engine as unknown as { lanes: Map<string, { queue: unknown[] }> }).lanes.get('wh_grow')!.queue.length;
    assert.ok(held <= 16, `the lane holds ${held} jobs (capacity 8); it grew by one a sweep`);
  });

  test('sweeps of an idle lane behind a head waiting for its retry read no more than its room each', async () => {
    const record = newRecord();
    record.addWebhook('wh_idle');
    record.responder = retriesWhen((call) => call.seq === 1, () => Date.now() + 3_600_000);
    const deps = record.deps({ laneCapacity: 256 });
    let rows = 0;
    const loadPending = deps.loadPending;
    deps.loadPending = async (...args) => {
      const load = await loadPending(...args);
      rows += load.jobs.length;
      return load;
    };
    const engine = newEngine(deps);
    for (let i = 0; i < 1000; i++) record.commit('wh_idle');
    engine.wake('wh_idle', 0, 1, Date.now());
    await until(() => record.calls.length === 1, 'seq 1 tried');
    await sleep(100);
    rows = 0;
    // Twenty sweeps (40 s in production): a whole lane each would be 5,120 rows.
    for (let i = 0; i < 20; i++) {
      engine.wake('wh_idle', 0, 1, Date.now());
      await sleep(20);
    }
    assert.ok(rows <= 20 * 128 + 20, `${rows} rows read by 20 sweeps`);
  });

  test("a read whose snapshot predates a retry's outcome does not bring the delivery back due at once", async () => {
    const record = newRecord();
    record.addWebhook('wh_snap', { orderedByKey: true });
    const engine = newEngine(record.deps({ laneCapacity: 3 }));
    // Key y's seqs 1..6 sent and final; the lane's position is 6.
    for (let i = 0; i < 6; i++) engine.offer(record.copy(record.commit('wh_snap', 'y')));
    await until(() => record.sent('wh_snap').length === 6, 'the first six');
    // Key x's seq 7 goes and is held in flight.
    record.responder = (call) => (call.seq === 7 && call.attempts === 0 ? 'hold' : { final: true, signal: 'success' });
    const seven = record.commit('wh_snap', 'x');
    engine.offer(record.copy(seven));
    await until(() => record.calls.some((c) => c.seq === 7), 'seq 7 in flight');
    // A replay puts 1 and 2 back; its word has the lane read from the start with room for 2: cut at 2, the
    // position moves back to 2, and 7 stays in flight past it.
    record.requeue('wh_snap', [1, 2]);
    engine.offer({ ...record.copy(record.rows.get('wh_snap')![0]!.job), requeues: 1 });
    await until(() => record.loads.some((l) => l.afterSeq === 0 && l.limit === 2), 'the read from the start');
    // 1 and 2 go again, and the lane reads on from 2, slowly: the snapshot has 7 as it is now, never tried.
    record.loadDelayMs = 200;
    await until(() => record.loads.some((l) => l.afterSeq === 2), 'the read on from 2');
    assert.deepEqual(record.sent('wh_snap'), [1, 2, 3, 4, 5, 6, 7, 1, 2]);
    // Meanwhile 7's attempt ends in a retry an hour away, committed; 7 leaves the queue (past the position).
    const retryAt = Date.now() + 3_600_000;
    record.calls.find((c) => c.seq === 7)!.finish({ final: false, nextAttemptAt: retryAt, signal: 'failure' });
    await sleep(400);
    assert.deepEqual(record.sent('wh_snap'), [1, 2, 3, 4, 5, 6, 7, 1, 2], 'seq 7 waits for its retry, an hour away');
  });

  test("a late copy of a delivery's feed message, once the lane's position moved back below it, keeps its retry's schedule", async () => {
    const record = newRecord();
    record.addWebhook('wh_late');
    const retryAt = Date.now() + 3_600_000;
    let replayed = false;
    // Seq 3's first attempt gets a retry in an hour; the replayed attempts are held; everything else succeeds.
    record.responder = (call) => {
      if (replayed && call.seq < 3) return 'hold';
      return call.seq === 3 && call.attempts === 0 ? { final: false, nextAttemptAt: retryAt, signal: 'failure' } : { final: true, signal: 'success' };
    };
    const engine = newEngine(record.deps({ laneCapacity: 3 }));
    const jobs = [1, 2, 3].map(() => record.commit('wh_late'));
    for (const job of jobs) engine.offer(record.copy(job));
    await until(() => record.row(jobs[2]!.deliveryId)!.job.attempts === 1, "seq 3's retry recorded");
    await sleep(20);
    // A replay puts 1 and 2 back; its word has the lane read from the start with room for 2: cut at 2, the
    // position moves back to 2, and 3 (waiting for its retry) leaves the queue for the record.
    replayed = true;
    record.requeue('wh_late', [1, 2]);
    engine.offer({ ...record.copy(record.row(jobs[0]!.deliveryId)!.job), requeues: 1 });
    await until(() => record.calls.length === 4, 'replayed seq 1 in flight');
    // The feed redelivers seq 3's first message (its ack was lost): never tried, due when committed.
    engine.offer(record.copy(jobs[2]!));
    await sleep(20);
    replayed = false;
    for (const call of record.calls) call.finish();
    await sleep(100);
    assert.deepEqual(record.sent('wh_late'), [1, 2, 3, 1, 2], 'seq 3 waits for its retry, an hour away');
  });

  test("a late feed copy of a delivery final elsewhere, past a cut read's position, is left to the record, not sent again", async () => {
    const record = newRecord();
    record.addWebhook('wh_cut');
    // The shard's former owner sent seqs 1..3; the feed message of seq 3 comes again later (its ack was lost).
    const jobs = [1, 2, 3].map(() => record.commit('wh_cut'));
    for (const row of record.rows.get('wh_cut')!) row.status = 'succeeded';
    const engine = newEngine(record.deps({ laneCapacity: 2 }));
    await laneLoaded(engine, record, 'wh_cut');
    // A replay puts 1 and 2 back; its word has the lane read from the start with room for 2: cut at 2.
    record.responder = (call) => (call.seq === 2 ? 'hold' : { final: true, signal: 'success' });
    record.requeue('wh_cut', [1, 2]);
    engine.offer({ ...record.copy(record.rows.get('wh_cut')![0]!.job), requeues: 1 });
    await until(() => record.sent('wh_cut').length === 2, 'replayed 1 sent, 2 in flight');
    engine.offer(record.copy(jobs[2]!));
    await sleep(20);
    for (const call of record.calls) call.finish();
    await sleep(60);
    assert.deepEqual(record.sent('wh_cut'), [1, 2], 'seq 3 is final and was not put back');
  });

  test('a shard claimed again while its dropped lanes have an attempt in flight: its new lane waits for that outcome', async () => {
    const record = newRecord();
    record.addWebhook('wh_again');
    record.responder = (call) => (call.seq === 1 && call.attempts === 0 ? 'hold' : { final: true, signal: 'success' });
    const engine = newEngine(record.deps());
    for (let i = 0; i < 2; i++) engine.offer(record.copy(record.commit('wh_again')));
    await until(() => record.calls.length === 1, 'seq 1 in flight');
    // The lease lost: the lanes go; then the shard is claimed again and its sweep makes a new lane, whose
    // read has seq 1 pending (its attempt is not recorded yet).
    const dropping = engine.dropShard(0);
    engine.wake('wh_again', 0, 1);
    await sleep(50);
    assert.deepEqual(record.sent('wh_again'), [1], 'nothing starts beside the attempt in flight');
    record.calls[0]!.finish();
    await dropping;
    await until(() => record.sent('wh_again').length === 2, 'seq 2 sent');
    await sleep(50);
    assert.deepEqual(record.sent('wh_again'), [1, 2], 'seq 1 went once: the new lane read its outcome');
  });

  test("a stale feed copy of a delivery a paced replay put back waits for its turn, after the replay's earlier ones", async () => {
    const record = newRecord();
    record.addWebhook('wh_paced');
    const engine = newEngine(record.deps());
    const jobs = [1, 2, 3].map(() => record.commit('wh_paced'));
    for (const job of jobs) engine.offer(record.copy(job));
    await until(() => record.rows.get('wh_paced')!.every((r) => r.status === 'succeeded'), 'seqs 1..3 sent and final');
    await sleep(20);
    // A replay of 1..3 at one a second: 1 due now, 2 in 1 s, 3 in 2 s; its word is not out yet.
    record.requeue('wh_paced', [1, 2, 3]);
    for (const [i, row] of record.rows.get('wh_paced')!.entries()) {
      row.job.attempts = 1;
      row.job.nextAttemptAt = Date.now() + 1_000 * i;
      row.job.paceMs = 1_000;
    }
    // Meanwhile the feed repeats seq 3's ingest message (never tried, due at once): the record says pending.
    engine.offer(record.copy(jobs[2]!));
    await sleep(100);
    assert.ok(!record.sent('wh_paced').slice(3).includes(3), `seq 3 went 2 s early, before 1 and 2: ${record.sent('wh_paced')}`);
  });
});
