import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { LaneEngine, type LaneEngineDeps, type LaneOutcome } from '../../src/dispatcher/lanes.js';
import type { DeliveryJob } from '../../src/queue/job.js';
import type { LaneLoad } from '../../src/store/deliveries.js';
import { FakeRecord, sleep } from './fake-record.js';

/**
 * LaneEngine driven by seeded random scenarios against the in-memory record (fake-record.ts): a few
 * webhooks, FIFO and ordered by key, commits arriving over time through a feed that loses, duplicates,
 * delays and reorders; endpoints that fail and are retried, answer slowly or hold a call; replays and
 * retries by hand with their word on the feed; reads of the record failing for a while (Postgres down);
 * the lease unconfirmed, a webhook paused, the event loop stalling; and the sweep waking lanes as the
 * dispatcher's does. Then everything settles and the invariants are checked (see `check`).
 *
 * Time is virtual (node:test's mock timers, Date included), advanced a millisecond at a time with the
 * promises flushed in between, so a seed replays exactly: the same seed makes the same run.
 *
 *   LANES_SEEDS=500 node --import tsx --test test/dispatcher/lanes-randomized.test.ts   (seeds 1..500)
 *   LANES_SEED=17 LANES_TRACE=1 node --import tsx --test test/dispatcher/lanes-randomized.test.ts
 *     (seed 17 alone, printing its whole trace)
 */

/** Seeds run by default (CI): 1..DEFAULT_SEEDS, fixed so a run is reproducible. */
const DEFAULT_SEEDS = 1_200;
/** The virtual time a seed may take to settle once the feed stops, before what is pending counts as stuck. */
const SETTLE_LIMIT_MS = 30_000;
/** Quiet virtual time after everything is final, to catch a late second send. */
const QUIET_MS = 300;
const TRACE_TAIL = 70;

// ---------------------------------------------------------------------------------------------------------
// The seeded PRNG.

/** mulberry32: tiny, fast, and good enough to pick scenarios. */
class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = (seed * 0x9e3779b1) >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return p > 0 && this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}

// ---------------------------------------------------------------------------------------------------------
// A scenario's parameters, drawn from its seed.

interface Params {
  webhooks: { id: string; orderedByKey: boolean; keys: string[]; rateLimitPerSecond: number }[];
  laneCapacity: number;
  gapWaitMs: number;
  maxInFlight: number;
  maxInFlightPerLane: number;
  holdRecheckMs: number;
  circuit: { failureThreshold: number; cooldownMs: number; maxCooldownMs: number };
  loadDelayMs: number;
  isPendingDelayMs: number;
  notifyDelayMs: number;
  /** Per ms of the ingest phase: the odds the record's read latencies change. */
  delayChangeP: number;
  ingestMs: number;
  commitP: number;
  burstP: number;
  feed: { lossP: number; dupP: number; maxDelayMs: number; lateP: number };
  failP: number;
  maxFailuresInRow: number;
  retryDelayMaxMs: number;
  respondDelayMaxMs: number;
  holdP: number;
  notStartedP: number;
  requeueP: number;
  /** Odds that a requeue's word is never published (the API died after the commit). */
  wordUnpublishedP: number;
  pacedP: number;
  sweepEveryMs: number;
  sweepGraceMs: number;
  sweepLatencyMs: number;
  outageP: number;
  leaseLapseP: number;
  leaseTickMs: number;
  pauseP: number;
  stallP: number;
}

function drawParams(rng: Rng): Params {
  const webhooks = Array.from({ length: rng.int(1, 3) }, (_, i) => ({
    id: `wh${i + 1}`,
    orderedByKey: rng.chance(0.5),
    // A FIFO webhook's events may carry keys too: its lane ignores them.
    keys: ['a', 'b', 'c'].slice(0, rng.int(1, 3)),
    rateLimitPerSecond: rng.chance(0.15) ? rng.int(100, 500) : 0,
  }));
  const sweepEveryMs = rng.int(10, 80);
  return {
    webhooks,
    laneCapacity: rng.chance(0.8) ? rng.int(3, 8) : rng.pick([2, 256]),
    gapWaitMs: rng.int(2, 60),
    maxInFlight: rng.int(1, 8),
    maxInFlightPerLane: rng.int(1, 4),
    holdRecheckMs: rng.int(5, 40),
    circuit: rng.chance(0.3) ? { failureThreshold: rng.int(2, 5), cooldownMs: rng.int(5, 40), maxCooldownMs: 80 } : { failureThreshold: 0, cooldownMs: 1_000, maxCooldownMs: 1_000 },
    loadDelayMs: rng.int(0, 25),
    isPendingDelayMs: rng.int(0, 25),
    notifyDelayMs: rng.chance(0.5) ? 0 : rng.int(1, 20),
    delayChangeP: rng.pick([0, 0.005]),
    ingestMs: rng.int(300, 900),
    commitP: rng.pick([0.02, 0.05, 0.1]),
    burstP: rng.pick([0, 0.2]),
    feed: { lossP: rng.pick([0, 0.05, 0.2, 0.5]), dupP: rng.pick([0, 0.1, 0.3]), maxDelayMs: rng.int(0, 30), lateP: rng.pick([0, 0.05, 0.15]) },
    failP: rng.pick([0, 0.1, 0.3, 0.5]),
    maxFailuresInRow: rng.int(1, 3),
    retryDelayMaxMs: rng.pick([0, 20, 100, 400]),
    respondDelayMaxMs: rng.int(0, 15),
    holdP: rng.pick([0, 0.02, 0.05]),
    notStartedP: rng.pick([0, 0, 0.03]),
    requeueP: rng.pick([0, 0.003, 0.01]),
    wordUnpublishedP: rng.pick([0, 0.3]),
    pacedP: rng.pick([0, 0.5]),
    sweepEveryMs,
    sweepGraceMs: rng.int(0, 40),
    sweepLatencyMs: rng.int(0, 10),
    outageP: rng.pick([0, 0.002, 0.005]),
    leaseLapseP: rng.pick([0, 0.002]),
    leaseTickMs: rng.int(10, 60),
    pauseP: rng.pick([0, 0.002]),
    stallP: rng.pick([0, 0.003]),
  };
}

// ---------------------------------------------------------------------------------------------------------
// One seed's run.

interface RunResult {
  seed: number;
  params: Params;
  problems: string[];
  /** The webhook the first problem is about, to narrow the trace. */
  focus: string | undefined;
  problemAt: number | undefined;
  trace: string[];
  commits: number;
  calls: number;
  requeues: number;
  virtualMs: number;
}

/** One seed on the virtual clock, which is the real one again afterwards. */
async function runSeedOnVirtualClock(t: TestContext, seed: number): Promise<RunResult> {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_750_000_000_000 });
  try {
    return await runSeed(t, seed);
  } finally {
    t.mock.timers.reset();
  }
}

async function runSeed(t: TestContext, seed: number): Promise<RunResult> {
  const flush = () => new Promise<void>((resolve) => setImmediate(resolve));
  const rng = new Rng(seed);
  const p = drawParams(rng);
  const t0 = Date.now();
  const trace: string[] = [];
  const note = (line: string) => void trace.push(`${String(Date.now() - t0).padStart(5)}  ${line}`);
  const problems: string[] = [];
  let focus: string | undefined;
  /** Where in the trace the first problem was seen, when it was seen as it happened. */
  let problemAt: number | undefined;
  const problem = (webhookId: string | undefined, text: string, now = false) => {
    if (problems.length === 0) {
      focus = webhookId;
      if (now) problemAt = trace.length;
    }
    problems.push(text);
  };

  const record = new FakeRecord();
  record.loadDelayMs = p.loadDelayMs;
  record.isPendingDelayMs = p.isPendingDelayMs;
  record.notifyDelayMs = p.notifyDelayMs;
  for (const w of p.webhooks) record.addWebhook(w.id, { orderedByKey: w.orderedByKey, rateLimitPerSecond: w.rateLimitPerSecond });
  const label = (job: Pick<DeliveryJob, 'webhookId' | 'seq'>) => `${job.webhookId}#${job.seq}`;

  // The world the driver keeps.
  let downUntil = -Infinity;
  const down = () => Date.now() < downUntil;
  let leaseOk = true;
  let leaseBackAt = -Infinity;
  let feedOpen = true;
  let inTransit = 0;
  const outcomes: LaneOutcome[] = [];
  /** Requeues as they were made: `at` is the number of calls started before it. */
  const requeueLog: { webhookId: string; seqs: number[]; at: number; count: number }[] = [];
  const requeuedTimes = new Map<string, number>();
  const failuresInRow = new Map<string, number>();
  const openPerWebhook = new Map<string, number>();
  const errors: string[] = [];
  /**
   * The highest count of requeues each webhook's lane has had word of: on a job offered to it, or in an
   * answer of the record it took in. Until then a delivery that requeue put back may be passed by the
   * jobs the lane holds, published before it: they went first in production too (see Lane.readFirst).
   */
  const known = new Map<string, number>();
  const learn = (webhookId: string, requeues: number | undefined) => {
    if (requeues !== undefined && requeues > (known.get(webhookId) ?? 0)) known.set(webhookId, requeues);
  };
  /** The word each attempt's lane had at its start. */
  const knownAtStart: number[] = [];
  record.excuseEarlier = (earlier, job) => {
    const excused = earlier.requeuedAs !== undefined && (known.get(job.webhookId) ?? 0) < earlier.requeuedAs;
    if (excused) note(`${label(job)} goes before ${label(earlier.job)}, put back by requeues=${earlier.requeuedAs}: no word of it yet`);
    return excused;
  };

  // The feed: each publish is one message (a webhook's jobs of one ingest), lost, late, or repeated.
  const publish = (jobs: DeliveryJob[], what: string) => {
    if (!feedOpen || jobs.length === 0) return;
    const names = jobs.map(label).join(',');
    if (rng.chance(p.feed.lossP)) return note(`feed LOST ${what} ${names}`);
    const copies = 1 + (rng.chance(p.feed.dupP) ? rng.int(1, 2) : 0);
    for (let i = 0; i < copies; i++) {
      // Late: JetStream redelivering a message whose ack was lost, long after the lane went past it.
      const delay = rng.chance(p.feed.lateP) ? rng.int(50, 600) : rng.int(0, p.feed.maxDelayMs);
      const message = jobs.map((job) => record.copy(job));
      inTransit++;
      setTimeout(() => {
        inTransit--;
        note(`feed → ${what} ${names}${message[0]!.requeues ? ` requeues=${message[0]!.requeues}` : ''}${i > 0 ? ' (dup)' : ''}`);
        for (const job of message) {
          engine.offer(job);
          learn(job.webhookId, job.requeues);
        }
      }, delay);
    }
  };

  record.responder = (call) => {
    const index = record.calls.length - 1;
    const name = `${call.webhookId}#${call.seq}`;
    const webhook = record.webhooks.get(call.webhookId)!;
    let outcome: LaneOutcome;
    let why = '';
    if (!leaseOk || webhook.status !== 'active' || rng.chance(p.notStartedP)) {
      // As the dispatcher's execute: the lease checked again before the request goes, or the sender's
      // guard withdrew it (paused meanwhile), or the job's schedule was stale.
      outcome = { notStarted: true };
      why = !leaseOk ? ' (lease)' : webhook.status !== 'active' ? ' (paused)' : '';
    } else if ((failuresInRow.get(name) ?? 0) < p.maxFailuresInRow && rng.chance(p.failP)) {
      failuresInRow.set(name, (failuresInRow.get(name) ?? 0) + 1);
      outcome = { final: false, nextAttemptAt: Date.now() + rng.int(0, p.retryDelayMaxMs), signal: 'failure' };
    } else {
      failuresInRow.delete(name);
      outcome = { final: true, signal: 'success' };
    }
    outcomes[index] = outcome;
    const delay = rng.chance(p.holdP) ? rng.int(50, 400) : rng.int(0, p.respondDelayMaxMs);
    const shown = 'notStarted' in outcome ? `notStarted${why}` : outcome.final ? 'success' : `retry@+${outcome.nextAttemptAt - Date.now()}`;
    note(`call[${index}] ${name} key=${call.key || '-'} attempts=${call.attempts} → ${shown} in ${delay + 2}ms`);
    return delay === 0 ? outcome : sleep(delay).then(() => outcome);
  };

  const base = record.deps({
    laneCapacity: p.laneCapacity,
    gapWaitMs: p.gapWaitMs,
    maxInFlight: p.maxInFlight,
    maxInFlightPerLane: p.maxInFlightPerLane,
    holdRecheckMs: p.holdRecheckMs,
    circuitPolicy: p.circuit,
    mayStart: () => leaseOk,
    // Errors only: a pump that threw or an attempt that failed to run is a bug here.
    log: pino({ level: 'error' }, { write: (line: string) => void errors.push(line) }),
  });
  const deps: LaneEngineDeps = {
    ...base,
    loadPending: (webhookId, afterSeq, limit, leaveOutKeys = []) => {
      const asked = `load ${webhookId} after=${afterSeq} limit=${limit}${leaveOutKeys.length ? ` leaveOut=${leaveOutKeys.join('')}` : ''}`;
      const sent = Date.now() - t0;
      const answering = (async () => {
        if (down()) {
          await sleep(1);
          note(`${asked} FAILED (down)`);
          throw new Error('connect ECONNREFUSED');
        }
        const answer = await base.loadPending(webhookId, afterSeq, limit, leaveOutKeys);
        note(`${asked} (sent at ${sent}) → [${answer.jobs.map((j) => j.seq).join(',')}] lastSeq=${answer.lastSeq} requeues=${answer.requeues}`);
        return answer;
      })();
      // The lane has word of the answer's count once its handler has run, not when the answer is made.
      const then = answering.then.bind(answering);
      answering.then = ((onAnswer?: (answer: LaneLoad) => unknown, onFailure?: (err: unknown) => unknown) =>
        then(
          onAnswer &&
            ((answer) => {
              const result = onAnswer(answer);
              learn(webhookId, answer.requeues);
              return result;
            }),
          onFailure,
        )) as typeof answering.then;
      return answering;
    },
    isPending: async (deliveryId) => {
      const name = record.row(deliveryId) ? label(record.row(deliveryId)!.job) : deliveryId;
      if (down()) {
        await sleep(1);
        note(`isPending ${name} FAILED (down)`);
        throw new Error('connect ECONNREFUSED');
      }
      const pending = await base.isPending(deliveryId);
      note(`isPending ${name} → ${pending}`);
      return pending;
    },
    execute: (job, webhook) => {
      const open = (openPerWebhook.get(job.webhookId) ?? 0) + 1;
      if (open > p.maxInFlightPerLane) problem(job.webhookId, `${job.webhookId}: ${open} attempts in flight at once, maxInFlightPerLane is ${p.maxInFlightPerLane}`, true);
      openPerWebhook.set(job.webhookId, open);
      knownAtStart[record.calls.length] = known.get(job.webhookId) ?? 0;
      // Not before it is due: its retry's time, or its turn in a paced replay, as the record has it.
      const due = record.row(job.deliveryId)?.job.nextAttemptAt ?? -Infinity;
      if (due > Date.now()) {
        note(`EARLY ${label(job)} started ${due - Date.now()}ms before it is due`);
        problem(job.webhookId, `${label(job)} started ${due - Date.now()}ms before the record has it due`, true);
      }
      const violations = record.violations.length;
      const attempt = base.execute(job, webhook);
      for (const v of record.violations.slice(violations)) {
        note(`VIOLATION ${v}`);
        problem(job.webhookId, `ordering violation: ${v}`, true);
      }
      return attempt.finally(() => openPerWebhook.set(job.webhookId, openPerWebhook.get(job.webhookId)! - 1));
    },
  };
  const engine = new LaneEngine(deps);

  // The sweep: reads the webhooks with work due (past its grace, or coming due within the lookahead) and
  // their lowest pending seq, and wakes their lanes when its query answers, with the time it was sent.
  const sweeper = setInterval(() => {
    if (down()) return; // its query fails too
    const readAt = Date.now();
    const found: { webhookId: string; firstSeq: number }[] = [];
    for (const [webhookId, rows] of record.rows) {
      const pending = rows.filter((r) => r.status === 'pending');
      const due = pending.some((r) => r.job.nextAttemptAt <= readAt - p.sweepGraceMs || (r.job.nextAttemptAt > readAt && r.job.nextAttemptAt <= readAt + p.sweepEveryMs + 10));
      if (due) found.push({ webhookId, firstSeq: Math.min(...pending.map((r) => r.job.seq)) });
    }
    if (found.length === 0) return;
    setTimeout(() => {
      for (const { webhookId, firstSeq } of found) {
        note(`sweep wakes ${webhookId} first=${firstSeq} (read at ${readAt - t0})`);
        engine.wake(webhookId, 0, firstSeq, readAt);
      }
    }, p.sweepLatencyMs);
  }, p.sweepEveryMs);
  // The lease tick: renews, and once the lease is confirmed again the lanes that waited for it go on.
  const leaseTicker = setInterval(() => {
    if (!leaseOk && Date.now() >= leaseBackAt) {
      leaseOk = true;
      note('lease confirmed again');
    }
    if (leaseOk) engine.leasesConfirmed();
  }, p.leaseTickMs);

  const commit = () => {
    const w = rng.pick(p.webhooks);
    const jobs = Array.from({ length: rng.chance(p.burstP) ? rng.int(2, 5) : 1 }, () => record.commit(w.id, rng.pick(w.keys)));
    note(`commit ${jobs.map((j) => `${label(j)}/${j.orderingKey}`).join(',')}${jobs[0]!.requeues ? ` requeues=${jobs[0]!.requeues}` : ''}`);
    publish(jobs, 'ingest');
  };

  const lastFinal = (webhookId: string) => {
    for (let i = record.calls.length - 1; i >= 0; i--) {
      const call = record.calls[i]!;
      if (call.webhookId !== webhookId) continue;
      const row = record.rows.get(webhookId)!.find((r) => r.job.seq === call.seq)!;
      if (row.status !== 'pending') return row;
    }
    return undefined;
  };

  /** A replay (a contiguous range of final deliveries, maybe paced) or a retry by hand (one), and its word. */
  const requeue = () => {
    const w = rng.pick(p.webhooks);
    const rows = record.rows.get(w.id)!;
    const finals = rows.filter((r) => r.status !== 'pending');
    if (finals.length === 0) return;
    const byHand = rng.chance(0.5);
    let chosen: typeof rows;
    // Often the delivery that went final last: its outcome may be committed while the lane has not heard yet.
    if (byHand) chosen = [rng.chance(0.5) ? lastFinal(w.id) ?? rng.pick(finals) : rng.pick(finals)];
    else {
      const from = rng.int(1, record.lastSeq.get(w.id)!);
      const to = Math.min(record.lastSeq.get(w.id)!, from + rng.int(0, 5));
      chosen = rows.filter((r) => r.status !== 'pending' && r.job.seq >= from && r.job.seq <= to);
      if (chosen.length === 0) return;
    }
    const seqs = chosen.map((r) => r.job.seq).sort((a, b) => a - b);
    record.requeue(w.id, seqs);
    // What the statement does besides: a retry by hand is due now and leaves any replay's pace; a
    // replay's n-th delivery is due n paces from now.
    const paceMs = !byHand && rng.chance(p.pacedP) ? rng.int(1, 15) : undefined;
    for (const [i, row] of chosen.sort((a, b) => a.job.seq - b.job.seq).entries()) {
      row.job.nextAttemptAt = Date.now() + (paceMs ?? 0) * i;
      if (paceMs === undefined) delete row.job.paceMs;
      else row.job.paceMs = paceMs;
      requeuedTimes.set(label(row.job), (requeuedTimes.get(label(row.job)) ?? 0) + 1);
      failuresInRow.delete(label(row.job));
    }
    const count = record.requeues.get(w.id)!;
    requeueLog.push({ webhookId: w.id, seqs, at: record.calls.length, count });
    note(`${byHand ? 'retry by hand' : 'replay'} ${w.id} [${seqs.join(',')}]${paceMs ? ` paced ${paceMs}ms` : ''} → requeues=${count}`);
    if (rng.chance(p.wordUnpublishedP)) return note(`word of requeues=${count} never published`);
    // The word, read after the commit and published: the delivery retried (if still pending), or the
    // webhook's lowest pending delivery (a replay), with the webhook's count.
    setTimeout(() => {
      const pending = rows.filter((r) => r.status === 'pending').sort((a, b) => a.job.seq - b.job.seq);
      const word = byHand ? pending.filter((r) => r.job.deliveryId === chosen[0]!.job.deliveryId) : pending.slice(0, 1);
      const requeues = record.requeues.get(w.id)!;
      publish(word.map((r) => ({ ...r.job, requeues })), byHand ? 'word of retry' : 'word of replay');
    }, rng.int(0, 5));
  };

  const ageOf = () => Date.now() - t0;
  // The ingest phase: things happen.
  while (ageOf() < p.ingestMs) {
    if (rng.chance(p.commitP)) commit();
    if (rng.chance(p.requeueP)) requeue();
    if (!down() && rng.chance(p.outageP)) {
      const ms = rng.chance(0.15) ? rng.int(800, 2_500) : rng.int(5, 200);
      downUntil = Date.now() + ms;
      note(`Postgres DOWN for ${ms}ms`);
    }
    if (leaseOk && rng.chance(p.leaseLapseP)) {
      leaseOk = false;
      leaseBackAt = Date.now() + rng.int(10, 150);
      note(`lease unconfirmed until ${leaseBackAt - t0}`);
    }
    if (rng.chance(p.pauseP)) {
      const w = record.webhooks.get(rng.pick(p.webhooks).id)!;
      if (w.status === 'active') {
        const ms = rng.int(10, 150);
        w.status = 'paused';
        note(`${w.id} paused for ${ms}ms`);
        setTimeout(() => {
          w.status = 'active';
          note(`${w.id} active again`);
        }, ms);
      }
    }
    if (rng.chance(p.delayChangeP)) {
      record.loadDelayMs = rng.int(0, 25);
      record.isPendingDelayMs = rng.int(0, 25);
      note(`reads now take ${record.loadDelayMs}ms, pending checks ${record.isPendingDelayMs}ms`);
    }
    const stall = rng.chance(p.stallP) ? rng.int(5, 60) : 1;
    if (stall > 1) note(`event loop stalls ${stall}ms`);
    t.mock.timers.tick(stall);
    await flush();
  }

  // The settling phase: no more commits, requeues or outages; the feed stops (what is in transit still
  // comes); the sweep goes on, as in production, and finds what the feed lost.
  feedOpen = false;
  note('--- ingest stops; settling');
  const settleStart = Date.now();
  const allFinal = () => [...record.rows.values()].every((rows) => rows.every((r) => r.status !== 'pending'));
  let quietSince: number | undefined;
  while (Date.now() - settleStart < SETTLE_LIMIT_MS) {
    const quiet = allFinal() && record.inFlight === 0 && engine.activeAttempts === 0 && inTransit === 0;
    if (!quiet) quietSince = undefined;
    else if (quietSince === undefined) quietSince = Date.now();
    else if (Date.now() - quietSince >= QUIET_MS) break;
    t.mock.timers.tick(1);
    await flush();
  }
  clearInterval(sweeper);
  clearInterval(leaseTicker);
  const virtualMs = Date.now() - t0;
  note('--- settled (or gave up)');

  check();

  // Let whatever is still held finish, then stop the engine.
  const stopping = engine.stop();
  for (let i = 0; i < 3_000 && engine.activeAttempts > 0; i++) {
    t.mock.timers.tick(1);
    await flush();
  }
  await stopping;
  return { seed, params: p, problems, focus, problemAt, trace, commits: [...record.lastSeq.values()].reduce((a, b) => a + b, 0), calls: record.calls.length, requeues: requeueLog.length, virtualMs };

  function check(): void {
    for (const e of errors) problem(undefined, `error logged: ${e.trim().slice(0, 300)}`);
    if (record.maxInFlight > p.maxInFlight) problem(undefined, `${record.maxInFlight} attempts in flight at once, maxInFlight is ${p.maxInFlight}`);
    // Every delivery final: nothing stuck pending.
    for (const [webhookId, rows] of record.rows) {
      for (const r of rows) if (r.status === 'pending') problem(webhookId, `stuck pending: ${label(r.job)} key=${r.job.orderingKey} attempts=${r.job.attempts} (after ${SETTLE_LIMIT_MS}ms of settling)`);
    }
    // Each delivery succeeded once, and once more per requeue: never twice without one between.
    const successes = new Map<string, number>();
    record.calls.forEach((call, i) => {
      const outcome = outcomes[i];
      if (outcome && 'final' in outcome && outcome.final) successes.set(`${call.webhookId}#${call.seq}`, (successes.get(`${call.webhookId}#${call.seq}`) ?? 0) + 1);
    });
    for (const [name, n] of successes) {
      const allowed = 1 + (requeuedTimes.get(name) ?? 0);
      if (n > allowed) problem(name.split('#')[0], `${name} succeeded ${n} times with ${allowed - 1} requeue(s) of it`);
    }
    // Per lane (webhook, and key when ordered by key), successes in seq order: a success of seq s after
    // one of a higher seq needs a requeue of s that the lane had no word of when the other started.
    const lanes = new Map<string, { index: number; seq: number; webhookId: string }[]>();
    record.calls.forEach((call, index) => {
      const outcome = outcomes[index];
      if (!outcome || !('final' in outcome) || !outcome.final) return;
      const lane = `${call.webhookId}/${call.key}`;
      if (!lanes.has(lane)) lanes.set(lane, []);
      lanes.get(lane)!.push({ index, seq: call.seq, webhookId: call.webhookId });
    });
    for (const [lane, list] of lanes) {
      for (const [j, b] of list.entries()) {
        const putBack = requeueLog.filter((r) => r.webhookId === b.webhookId && r.seqs.includes(b.seq) && r.at <= b.index).at(-1);
        const overtaken = list.slice(0, j).find((a) => a.seq > b.seq && !(putBack && (putBack.at > a.index || knownAtStart[a.index]! < putBack.count)));
        if (overtaken) {
          problem(b.webhookId, `lane ${lane}: seq ${b.seq} succeeded (call[${b.index}]) after seq ${overtaken.seq} (call[${overtaken.index}]), with no requeue of ${b.seq} unknown to the lane between`);
          break;
        }
      }
    }
  }
}

function report(result: RunResult): string {
  const { seed, params, problems, focus, problemAt, trace } = result;
  // Up to a little past the first problem, when it was seen as it happened.
  const upTo = problemAt === undefined ? trace : trace.slice(0, problemAt + 10);
  const lines = focus ? upTo.filter((line) => !/\bwh\d+\b/.test(line) || new RegExp(`\\b${focus}\\b`).test(line)) : upTo;
  return [
    `seed ${seed}: ${problems.length} problem(s)`,
    ...problems.slice(0, 10).map((p) => `  - ${p}`),
    `params: ${JSON.stringify(params)}`,
    `trace (virtual ms; last ${Math.min(TRACE_TAIL, lines.length)} of ${lines.length} lines${focus ? ` touching ${focus}` : ''}):`,
    ...lines.slice(-TRACE_TAIL).map((line) => `  ${line}`),
    `replay: LANES_SEED=${seed} LANES_TRACE=1 node --import tsx --test test/dispatcher/lanes-randomized.test.ts`,
  ].join('\n');
}

function seedsToRun(): number[] {
  if (process.env.LANES_SEED) return process.env.LANES_SEED.split(',').map(Number);
  const count = Number(process.env.LANES_SEEDS ?? DEFAULT_SEEDS);
  return Array.from({ length: count }, (_, i) => i + 1);
}

/** Seeds per test: a failure names every failing seed of its block and reports the first two. */
const BLOCK = 100;

describe('LaneEngine under random scenarios (seeded, virtual time)', () => {
  const seeds = seedsToRun();
  const size = process.env.LANES_SEED ? 1 : BLOCK;
  for (let i = 0; i < seeds.length; i += size) {
    const block = seeds.slice(i, i + size);
    test(block.length === 1 ? `seed ${block[0]}` : `seeds ${block[0]}..${block.at(-1)}`, async (t) => {
      const failed: RunResult[] = [];
      for (const seed of block) {
        const result = await runSeedOnVirtualClock(t, seed);
        if (process.env.LANES_TRACE) {
          console.log(`seed ${seed}: ${result.commits} deliveries, ${result.calls} calls, ${result.requeues} requeues, ${result.virtualMs} virtual ms`);
          console.log(`params: ${JSON.stringify(result.params)}`);
          console.log(result.trace.join('\n'));
        }
        if (result.problems.length > 0) failed.push(result);
      }
      assert.ok(failed.length === 0, [`${failed.length} seed(s) failed: ${failed.map((r) => r.seed).join(', ')}`, ...failed.slice(0, 2).map(report)].join('\n\n'));
    });
  }
});
