import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { LaneEngine, type LaneEngineDeps, type LaneOutcome, type LaneWebhook } from '../../src/dispatcher/lanes.js';
import type { DeliveryJob } from '../../src/queue/job.js';
import type { LaneLoad } from '../../src/store/deliveries.js';
import { FakeRecord, sleep, type Call, type Row } from './fake-record.js';

/**
 * LaneEngine driven by seeded random scenarios against the in-memory record (fake-record.ts): a few
 * webhooks, FIFO and ordered by key (switched on and off as they run), commits arriving over time through a
 * feed that loses, duplicates, delays and reorders; endpoints that fail and are retried on the webhook's or
 * the server's schedule until it is exhausted (failed) or the TTL is near (expired), answer slowly or hold
 * a call; deliveries past their TTL expired by the attempt that finds them so (or answered `notStarted`
 * with the record's schedule) and by housekeeping; replays and retries by hand with their word on the
 * feed; reads of the record failing for a while (Postgres down); the lease unconfirmed, a webhook paused,
 * the event loop stalling; and the sweep waking lanes as the dispatcher's does.
 *
 * One or two dispatcher processes (a LaneEngine each) share the record and one or two shards: a shard
 * changes hands by a rebalance's release (dropShard drains, then the next owner claims) or by a lease lost
 * (its owner cut off from Postgres stops starting attempts, the other claims the shard while the first
 * one's attempts finish, and the first drops its lanes once it is back); the new owner's claim sweep wakes
 * the lanes, and its feed subscription gets what came meanwhile. Some seeds pause the traffic for a minute
 * or more of virtual time, long enough for idle lanes to be evicted (IDLE_EVICT_MS), and then go on, with
 * stale feed messages redelivered. Then everything settles and the invariants are checked (see `check`):
 * every delivery final (succeeded, failed or expired), none sent to a final outcome twice without a
 * requeue between, none started early or beside another of its ordering lane, none before an earlier one
 * of its lane is final.
 *
 * Time is virtual (node:test's mock timers, Date included), advanced a millisecond at a time with the
 * promises flushed in between (in steps while a lull is quiet), so a seed replays exactly: the same seed
 * makes the same run.
 *
 *   LANES_SEEDS=500 node --import tsx --test test/dispatcher/lanes-randomized.test.ts   (seeds 1..500)
 *   LANES_SEEDS=2000 LANES_FIRST=5001 ...     (seeds 5001..7000)
 *   LANES_SEED=17 LANES_TRACE=1 node --import tsx --test test/dispatcher/lanes-randomized.test.ts
 *     (seed 17 alone, printing its whole trace)
 *   LANES_STATS=1 ...                          (what the seeds of each block exercised)
 */

/** Seeds run by default (CI): 1..DEFAULT_SEEDS, fixed so a run is reproducible. */
const DEFAULT_SEEDS = 1_200;
/**
 * Once the feed stops, what is pending counts as stuck when nothing moves for SETTLE_STALL_MS (no attempt
 * starts, no delivery goes final), or when it is still pending after SETTLE_LIMIT_MS of virtual time.
 * A backlog behind a failing endpoint (schedules of up to four retries of 400 ms, an open circuit) moves
 * slowly: a limit alone was too short for a hundred such deliveries.
 */
const SETTLE_STALL_MS = 20_000;
const SETTLE_LIMIT_MS = 180_000;
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

interface WebhookParams {
  id: string;
  orderedByKey: boolean;
  keys: string[];
  rateLimitPerSecond: number;
  shard: number;
  /** The webhook's own retry delays; null: the server's (`Params.serverSchedule`). */
  retrySchedule: number[] | null;
}

interface Params {
  webhooks: WebhookParams[];
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
  /** Odds that an attempt fails (the retry schedule, the TTL and the attempt count decide what follows). */
  failP: number;
  retryDelayMaxMs: number;
  /** Retry delays of webhooks without their own schedule; its length is the number of retries. */
  serverSchedule: number[];
  /** A delivery's TTL from its creation (or from when a requeue makes it due). */
  ttlMs: number;
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
  /** Per ms: a webhook's `ordered_by_key` is switched (the API's update; the lane reads it each pump). */
  toggleKeysP: number;
  /** Per ms: housekeeping expires the pending deliveries past their TTL, whatever lane holds them. */
  housekeepP: number;
  /** Dispatcher processes, each a LaneEngine, sharing the record and the shards. */
  processes: 1 | 2;
  shardCount: number;
  /** Per ms: a shard changes hands (a rebalance's release, or a lease lost to another process). */
  handoverP: number;
  /** The share of handovers that are a lease lost (its owner cut off from Postgres), not a release. */
  lapsedP: number;
  /** A pause in the traffic long enough for idle lanes to be evicted, at `at` ms of the ingest phase. */
  lull: { at: number; ms: number; redeliveries: number } | undefined;
}

function drawParams(rng: Rng): Params {
  const shardCount = rng.int(1, 2);
  const retryDelayMaxMs = rng.pick([0, 20, 100, 400]);
  const schedule = (length: number) => Array.from({ length }, () => rng.int(0, retryDelayMaxMs));
  const webhooks = Array.from({ length: rng.int(1, 3) }, (_, i) => ({
    id: `wh${i + 1}`,
    orderedByKey: rng.chance(0.5),
    // A FIFO webhook's events may carry keys too: its lane ignores them.
    keys: ['a', 'b', 'c'].slice(0, rng.int(1, 3)),
    rateLimitPerSecond: rng.chance(0.15) ? rng.int(100, 500) : 0,
    shard: rng.int(0, shardCount - 1),
    retrySchedule: rng.chance(0.4) ? schedule(rng.int(0, 3)) : null,
  }));
  const sweepEveryMs = rng.int(10, 80);
  const ingestMs = rng.int(300, 900);
  const processes = rng.chance(0.5) ? 2 : 1;
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
    ingestMs,
    commitP: rng.pick([0.02, 0.05, 0.1]),
    burstP: rng.pick([0, 0.2]),
    feed: { lossP: rng.pick([0, 0.05, 0.2, 0.5]), dupP: rng.pick([0, 0.1, 0.3]), maxDelayMs: rng.int(0, 30), lateP: rng.pick([0, 0.05, 0.15]) },
    failP: rng.pick([0, 0.1, 0.3, 0.5]),
    retryDelayMaxMs,
    serverSchedule: schedule(rng.int(1, 4)),
    ttlMs: rng.chance(0.5) ? 3_600_000 : rng.int(100, 1_500),
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
    toggleKeysP: rng.pick([0, 0, 0.003]),
    housekeepP: rng.pick([0, 0.002, 0.01]),
    processes,
    shardCount,
    handoverP: rng.pick([0, 0.003, 0.006]),
    lapsedP: processes === 2 ? rng.pick([0.3, 0.7]) : 0,
    // Lanes idle for IDLE_EVICT_MS go at the engine's next eviction run (every 30 s from its start): about
    // half the lulls are long enough.
    lull: rng.chance(0.12) ? { at: rng.int(50, ingestMs - 50), ms: rng.int(60_000, 125_000), redeliveries: rng.int(0, 3) } : undefined,
  };
}

// ---------------------------------------------------------------------------------------------------------
// One seed's run.

interface Stats {
  finals: { succeeded: number; failed: number; expired: number };
  /** Deliveries expired by an attempt past their TTL (the dispatcher's execute) or by housekeeping. */
  expiredUntried: number;
  /** Attempts past their TTL in the lane's copy answered `notStarted` with the record's schedule. */
  rescheduled: number;
  toggles: number;
  handovers: { released: number; lapsed: number };
  /** Attempts still in flight when the next owner claimed their shard (after a lapsed lease). */
  zombies: number;
  /** Lanes evicted while idle during a lull, and lanes made again for them afterwards. */
  evicted: number;
  revived: number;
}

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
  stats: Stats;
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

/** What the dispatcher's execute throws when Postgres fails the statement that expires a job: the lane tries again. */
const EXPIRY_STATEMENT_FAILED = 'connect ECONNREFUSED (expiring a job past its TTL)';
/** The dispatcher's EXPIRY_RECHECK_MS. */
const EXPIRY_RECHECK_MS = 1_000;
/** The dispatcher's CLAIM_LOOKAHEAD_MS: a new owner's sweep wakes the lanes of retries due within it. */
const CLAIM_LOOKAHEAD_MS = 60_000;
/** How long the quiet before a lull may take to come, and the steps time takes once it has. */
const LULL_SETTLE_LIMIT_MS = 5_000;
const LULL_STEP_MS = 50;

type FinalStatus = 'succeeded' | 'failed' | 'expired';

/** One dispatcher process: its engine, the shards it works, its lease and its link to Postgres. */
interface Proc {
  name: string;
  engine: LaneEngine;
  owned: Set<number>;
  /** Its leases confirmed (see Dispatcher.mayStart). */
  leaseOk: boolean;
  leaseBackAt: number;
  /** Cut off from Postgres until then (its own partition): reads fail, writes wait, leases go unconfirmed. */
  cutOffUntil: number;
  /** Shards another process claimed while this one was cut off: it finds out when it is back. */
  lostUnnoticed: Set<number>;
  /**
   * The highest count of requeues each webhook's lane here has had word of: on a job offered to it, or in
   * an answer of the record it took in. Until then a delivery that requeue put back may be passed by the
   * jobs the lane holds, published before it: they went first in production too (see Lane.readFirst).
   */
  known: Map<string, number>;
  /** Attempts in flight (execute called, not yet answered). */
  open: number;
}

/** An attempt in flight: a call to the receiver, or an execute that found the job past its TTL. */
interface OpenAttempt {
  proc: Proc;
  webhookId: string;
  deliveryId: string;
  seq: number;
  jobKey: string;
  shard: number;
  epoch: number;
  /** Still in flight when a later owner claimed its shard. */
  zombie: boolean;
  what: string;
}

interface CallInfo {
  proc: Proc;
  deliveryId: string;
  webhookId: string;
  seq: number;
  /** The job's ordering key, and whether the webhook was ordered by key when the attempt started. */
  jobKey: string;
  orderedByKey: boolean;
  attempt: OpenAttempt;
  /** What the attempt leaves the delivery in, as the dispatcher would decide it. */
  result?: FinalStatus | 'retry' | 'notStarted';
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
  const stats: Stats = { finals: { succeeded: 0, failed: 0, expired: 0 }, expiredUntried: 0, rescheduled: 0, toggles: 0, handovers: { released: 0, lapsed: 0 }, zombies: 0, evicted: 0, revived: 0 };

  const record = new FakeRecord();
  record.loadDelayMs = p.loadDelayMs;
  record.isPendingDelayMs = p.isPendingDelayMs;
  record.notifyDelayMs = p.notifyDelayMs;
  record.ttlMs = p.ttlMs;
  for (const w of p.webhooks) {
    record.addWebhook(w.id, { orderedByKey: w.orderedByKey, rateLimitPerSecond: w.rateLimitPerSecond, retrySchedule: w.retrySchedule });
    record.shardOf.set(w.id, w.shard);
  }
  const label = (job: Pick<DeliveryJob, 'webhookId' | 'seq'>) => `${job.webhookId}#${job.seq}`;

  // The world the driver keeps.
  let downUntil = -Infinity;
  const cutOff = (proc: Proc) => Date.now() < proc.cutOffUntil;
  /** Postgres does not answer this process: down for everyone, or cut off from it alone. */
  const down = (proc?: Proc) => Date.now() < downUntil || (proc !== undefined && cutOff(proc));
  /** When a write of this process can reach Postgres again (now, unless it is down or cut off). */
  const writableAt = (proc: Proc) => Math.max(Date.now(), downUntil, proc.cutOffUntil);
  let feedOpen = true;
  let inTransit = 0;
  /** Requeues as they were made: `at` is the number of calls started before it. */
  const requeueLog: { webhookId: string; seqs: number[]; at: number; count: number }[] = [];
  const requeuedTimes = new Map<string, number>();
  const openPerLane = new Map<string, number>();
  const errors: string[] = [];
  const callInfo: CallInfo[] = [];
  const callIndex = new Map<Call, number>();
  const openAttempts = new Set<OpenAttempt>();
  /**
   * Deliveries an attempt of a former owner touched after the shard changed hands (see claim), and the
   * processes those attempts were of. Another process may send such a delivery beside it, or after it
   * without knowing; the same process may not (its engine holds a shard claimed again until the attempts
   * of the lanes it dropped are recorded).
   */
  const zombieTouched = new Map<string, Set<Proc>>();
  const touchedByOther = (deliveryId: string, proc: Proc) => [...(zombieTouched.get(deliveryId) ?? [])].some((q) => q !== proc);
  const touch = (attempt: OpenAttempt) => {
    if (!zombieTouched.has(attempt.deliveryId)) zombieTouched.set(attempt.deliveryId, new Set());
    zombieTouched.get(attempt.deliveryId)!.add(attempt.proc);
  };
  /** The word each attempt's lane had at its start. */
  const knownAtStart: number[] = [];
  /** The attempt being started: the responder and the ordering check's excuse run inside execute. */
  let starting: { proc: Proc; webhook: LaneWebhook; job: DeliveryJob } | undefined;

  // Shards: who owns each (the last to claim it), its ownership epoch, its feed subscriber, and the feed
  // messages that came while nobody was subscribed (a durable consumer keeps them for the next one).
  const epoch = Array.from({ length: p.shardCount }, () => 0);
  const owner: (Proc | undefined)[] = Array.from({ length: p.shardCount }, () => undefined);
  const subscriber: (Proc | undefined)[] = Array.from({ length: p.shardCount }, () => undefined);
  const backlog: { message: DeliveryJob[]; what: string }[][] = Array.from({ length: p.shardCount }, () => []);
  /** Shards changing hands, and how: a release drains before the next owner claims; a lapse does not. */
  const handing = new Map<number, 'released' | 'lapsed'>();

  const learn = (proc: Proc, webhookId: string, requeues: number | undefined) => {
    if (requeues !== undefined && requeues > (proc.known.get(webhookId) ?? 0)) proc.known.set(webhookId, requeues);
  };
  record.excuseEarlier = (earlier, job) => {
    const known = starting?.proc.known.get(job.webhookId) ?? 0;
    const excused = earlier.requeuedAs !== undefined && known < earlier.requeuedAs;
    if (excused) note(`${label(job)} goes before ${label(earlier.job)}, put back by requeues=${earlier.requeuedAs}: no word of it yet`);
    return excused;
  };
  const mayStart = (proc: Proc, shard: number) => proc.owned.has(shard) && proc.leaseOk;

  // As recordAttempts: a pending row takes the attempt and its outcome; a row expired untried takes a final
  // outcome (what the receiver answered); any other row stays as it is (a late writer cannot undo a final state).
  record.writeOutcome = (row, outcome, call) => {
    const index = callIndex.get(call)!;
    const info = callInfo[index]!;
    if (row.status === 'pending' || (row.status === 'expired' && row.untried && outcome.final)) {
      row.job.attempts++;
      if (outcome.final) {
        row.status = info.result as FinalStatus;
        row.untried = false;
      } else row.job.nextAttemptAt = outcome.nextAttemptAt;
    } else note(`write of call[${index}] ${label(row.job)} leaves it ${row.status}`);
    if (info.attempt.zombie) touch(info.attempt);
  };

  // The feed: each publish is one message (a webhook's jobs of one ingest), lost, late, or repeated, handed
  // to its shard's subscriber, which offers it to its engine if it owns the shard (Dispatcher.onJob).
  const published: DeliveryJob[][] = [];
  const deliverTo = (proc: Proc, message: DeliveryJob[], what: string) => {
    const shard = message[0]!.shard;
    const names = message.map(label).join(',');
    const requeues = message[0]!.requeues ? ` requeues=${message[0]!.requeues}` : '';
    if (!proc.owned.has(shard)) return note(`feed → ${proc.name} ${what} ${names}${requeues}: shard ${shard} not owned, dropped`);
    const revived = !proc.engine.has(message[0]!.webhookId) && evictedLanes.delete(`${proc.name}/${message[0]!.webhookId}`);
    if (revived) stats.revived++;
    note(`feed → ${proc.name} ${what} ${names}${requeues}${revived ? ' (its lane was evicted)' : ''}`);
    for (const job of message) {
      proc.engine.offer(job);
      learn(proc, job.webhookId, job.requeues);
    }
  };
  const arrive = (message: DeliveryJob[], what: string) => {
    const shard = message[0]!.shard;
    const proc = subscriber[shard];
    if (proc) return deliverTo(proc, message, what);
    note(`feed: ${what} ${message.map(label).join(',')} waits for shard ${shard}'s next subscriber`);
    backlog[shard]!.push({ message, what });
  };
  const publish = (jobs: DeliveryJob[], what: string) => {
    if (!feedOpen || jobs.length === 0) return;
    const names = jobs.map(label).join(',');
    published.push(jobs.map((job) => record.copy(job)));
    if (rng.chance(p.feed.lossP)) return note(`feed LOST ${what} ${names}`);
    const copies = 1 + (rng.chance(p.feed.dupP) ? rng.int(1, 2) : 0);
    for (let i = 0; i < copies; i++) {
      // Late: JetStream redelivering a message whose ack was lost, long after the lane went past it.
      const delay = rng.chance(p.feed.lateP) ? rng.int(50, 600) : rng.int(0, p.feed.maxDelayMs);
      const message = jobs.map((job) => record.copy(job));
      inTransit++;
      setTimeout(() => {
        inTransit--;
        arrive(message, `${what}${i > 0 ? ' (dup)' : ''}`);
      }, delay);
    }
  };

  record.responder = (call) => {
    const index = record.calls.length - 1;
    const info = callInfo[index]!;
    const { proc, webhook: seen, job } = starting!;
    const name = `${call.webhookId}#${call.seq}`;
    const webhook = record.webhooks.get(call.webhookId)!;
    const delay = rng.chance(p.holdP) ? rng.int(50, 400) : rng.int(0, p.respondDelayMaxMs);
    let outcome: LaneOutcome;
    let shown: string;
    if (!mayStart(proc, job.shard) || webhook.status !== 'active' || rng.chance(p.notStartedP)) {
      // As the dispatcher's execute: the lease checked again before the request goes, or the sender's
      // guard withdrew it (paused meanwhile), or the job's schedule was stale.
      outcome = { notStarted: true };
      info.result = 'notStarted';
      shown = `notStarted${!mayStart(proc, job.shard) ? ' (lease)' : webhook.status !== 'active' ? ' (paused)' : ''}`;
    } else if (rng.chance(p.failP)) {
      // As decideOutcome: the next delay of the schedule the lane read (by the attempts of its copy), unless
      // it is exhausted (failed), or the retry would come after the copy's TTL (expired).
      const schedule = seen.retrySchedule ?? p.serverSchedule;
      const wait = schedule[call.attempts];
      const answeredAt = Date.now() + delay + 2;
      if (wait === undefined) {
        outcome = { final: true, signal: 'failure' };
        info.result = 'failed';
        shown = 'failed (schedule exhausted)';
      } else if (answeredAt + wait > job.expiresAt) {
        outcome = { final: true, signal: 'failure' };
        info.result = 'expired';
        shown = `expired (retry in ${wait}ms, past its TTL)`;
      } else {
        outcome = { final: false, nextAttemptAt: answeredAt + wait, signal: 'failure' };
        info.result = 'retry';
        shown = `retry@+${answeredAt + wait - Date.now()}`;
      }
    } else {
      outcome = { final: true, signal: 'success' };
      info.result = 'succeeded';
      shown = 'success';
    }
    note(`${proc.name} call[${index}] ${name} key=${call.key || '-'} attempts=${call.attempts} → ${shown} in ${delay + 2}ms`);
    const writes = !('notStarted' in outcome);
    return (async () => {
      await sleep(delay);
      // The attempt writer commits the outcome once Postgres takes it: a process cut off (or Postgres down)
      // keeps trying, and the lane hears only then.
      while (writes && writableAt(proc) > Date.now()) await sleep(writableAt(proc) - Date.now());
      return outcome;
    })();
  };

  /** The dispatcher's execute for a job past its TTL by the lane's copy: expire it in the record, or take the record's schedule. */
  const expireOrReread = async (proc: Proc, job: DeliveryJob): Promise<LaneOutcome> => {
    const name = `${proc.name}: ${label(job)} past its TTL by the lane's copy`;
    await sleep(record.isPendingDelayMs);
    if (down(proc)) {
      note(`${name}: expiring it FAILED (down)`);
      throw new Error(EXPIRY_STATEMENT_FAILED);
    }
    const row = record.row(job.deliveryId)!;
    // expireDeliveries: pending, and past its TTL in the record.
    if (row.status === 'pending' && row.job.expiresAt <= Date.now()) {
      row.status = 'expired';
      row.untried = true;
      stats.expiredUntried++;
      note(`${name}: expired`);
      return { final: true, signal: 'neutral' };
    }
    // pendingSchedule: put back with a fresh TTL since the lane read its copy, or final.
    await sleep(record.isPendingDelayMs);
    if (down(proc)) {
      note(`${name}: reading its schedule FAILED (down)`);
      throw new Error(EXPIRY_STATEMENT_FAILED);
    }
    if (row.status !== 'pending') {
      note(`${name}: ${row.status} in the record`);
      return { final: true, signal: 'neutral' };
    }
    Object.assign(job, { attempts: row.job.attempts, nextAttemptAt: row.job.nextAttemptAt, expiresAt: row.job.expiresAt });
    if (job.expiresAt <= Date.now()) job.nextAttemptAt = Math.max(job.nextAttemptAt, Date.now() + EXPIRY_RECHECK_MS);
    stats.rescheduled++;
    note(`${name}: notStarted, takes the record's schedule (due in ${job.nextAttemptAt - Date.now()}ms, expires in ${job.expiresAt - Date.now()}ms)`);
    return { notStarted: true };
  };

  const procs: Proc[] = [];
  /** Lanes evicted in a lull whose webhook has not been offered or woken since. */
  const evictedLanes = new Set<string>();
  const makeDeps = (proc: Proc): LaneEngineDeps => {
    const base = record.deps({
      laneCapacity: p.laneCapacity,
      gapWaitMs: p.gapWaitMs,
      maxInFlight: p.maxInFlight,
      maxInFlightPerLane: p.maxInFlightPerLane,
      holdRecheckMs: p.holdRecheckMs,
      circuitPolicy: p.circuit,
      mayStart: (shard) => mayStart(proc, shard),
      // Errors only: a pump that threw or an attempt that failed to run is a bug here (but for the
      // dispatcher's statements failing while Postgres is down, which the lane tries again).
      log: pino({ level: 'error' }, { write: (line: string) => void (line.includes(EXPIRY_STATEMENT_FAILED) || errors.push(line)) }),
    });
    return {
      ...base,
      loadPending: (webhookId, afterSeq, limit, leaveOutKeys = []) => {
        const asked = `${proc.name}: load ${webhookId} after=${afterSeq} limit=${limit}${leaveOutKeys.length ? ` leaveOut=${leaveOutKeys.join('')}` : ''}`;
        const sent = Date.now() - t0;
        const answering = (async () => {
          if (down(proc)) {
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
                learn(proc, webhookId, answer.requeues);
                return result;
              }),
            onFailure,
          )) as typeof answering.then;
        return answering;
      },
      isPending: async (deliveryId) => {
        const name = record.row(deliveryId) ? label(record.row(deliveryId)!.job) : deliveryId;
        if (down(proc)) {
          await sleep(1);
          note(`${proc.name}: isPending ${name} FAILED (down)`);
          throw new Error('connect ECONNREFUSED');
        }
        const pending = await base.isPending(deliveryId);
        note(`${proc.name}: isPending ${name} → ${pending}`);
        return pending;
      },
      execute: (job, webhook) => {
        const laneKey = `${proc.name}/${job.webhookId}/${epoch[job.shard]}`;
        const perLane = (openPerLane.get(laneKey) ?? 0) + 1;
        if (perLane > p.maxInFlightPerLane) problem(job.webhookId, `${proc.name} ${job.webhookId}: ${perLane} attempts in flight at once, maxInFlightPerLane is ${p.maxInFlightPerLane}`, true);
        openPerLane.set(laneKey, perLane);
        if (++proc.open > p.maxInFlight) problem(undefined, `${proc.name}: ${proc.open} attempts in flight at once, maxInFlight is ${p.maxInFlight}`, true);
        // The lane reads its webhook each pump (getWebhook answers the record's, uncached here): it starts
        // under the webhook's `ordered_by_key` as it is now, which the checks below and the record's use.
        const orderedByKey = record.webhooks.get(job.webhookId)!.orderedByKey;
        if (webhook.orderedByKey !== orderedByKey) {
          note(`STALE ${proc.name}: ${label(job)} started with ordered_by_key ${webhook.orderedByKey ? 'on' : 'off'}, the webhook has it ${orderedByKey ? 'on' : 'off'}`);
          problem(job.webhookId, `${label(job)} started with ordered_by_key ${webhook.orderedByKey ? 'on' : 'off'}, the webhook has it ${orderedByKey ? 'on' : 'off'}`, true);
        }
        // Two attempts at once on one ordering lane, as the webhook is now (the lane's first promise): any
        // other of the webhook when FIFO, any other of the job's key when ordered by key. Beside an attempt
        // of a former owner (a lapsed lease), as production may: a duplicate, not the lane's doing.
        for (const other of openAttempts) {
          if (other.webhookId !== job.webhookId || (orderedByKey && other.jobKey !== job.orderingKey)) continue;
          if (other.zombie && other.proc !== proc) note(`${proc.name}: ${label(job)} starts beside ${other.what} of a former owner`);
          else {
            note(`VIOLATION ${proc.name}: ${label(job)} key=${job.orderingKey} started while ${other.what} (${other.proc.name}) was in flight`);
            problem(job.webhookId, `ordering violation: ${label(job)} key=${job.orderingKey} (${orderedByKey ? 'by key' : 'FIFO'}) started while ${other.what} was in flight`, true);
          }
        }
        const attempt: OpenAttempt = { proc, webhookId: job.webhookId, deliveryId: job.deliveryId, seq: job.seq, jobKey: job.orderingKey, shard: job.shard, epoch: epoch[job.shard]!, zombie: false, what: '' };
        openAttempts.add(attempt);
        const done = () => {
          openAttempts.delete(attempt);
          openPerLane.set(laneKey, openPerLane.get(laneKey)! - 1);
          proc.open--;
        };
        if (job.expiresAt <= Date.now()) {
          attempt.what = `the expiry of ${label(job)}`;
          const expiring = expireOrReread(proc, job);
          void expiring.then(done, done);
          return expiring;
        }
        const index = record.calls.length;
        attempt.what = `call[${index}] ${label(job)}`;
        knownAtStart[index] = proc.known.get(job.webhookId) ?? 0;
        // Not before it is due: its retry's time, or its turn in a paced replay, as the record has it.
        const due = record.row(job.deliveryId)?.job.nextAttemptAt ?? -Infinity;
        if (due > Date.now()) {
          if (touchedByOther(job.deliveryId, proc)) note(`${label(job)} started ${due - Date.now()}ms before the record has it due, as a former owner's attempt left it`);
          else {
            note(`EARLY ${proc.name}: ${label(job)} started ${due - Date.now()}ms before it is due`);
            problem(job.webhookId, `${label(job)} started ${due - Date.now()}ms before the record has it due`, true);
          }
        }
        callInfo[index] = { proc, deliveryId: job.deliveryId, webhookId: job.webhookId, seq: job.seq, jobKey: job.orderingKey, orderedByKey, attempt };
        const violations = record.violations.length;
        starting = { proc, webhook, job };
        let answer: Promise<LaneOutcome>;
        try {
          answer = base.execute(job, { ...webhook, orderedByKey });
        } finally {
          starting = undefined;
        }
        const call = record.calls[index]!;
        callIndex.set(call, index);
        const finish = call.finish;
        // In flight until its outcome is written (or it answered notStarted): a former owner's attempt past that is no zombie.
        call.finish = (outcome) => {
          openAttempts.delete(attempt);
          finish(outcome);
        };
        for (const v of record.violations.slice(violations)) {
          // The record's own check of two attempts at once knows only the lane as each started: the one above replaces it.
          if (v.includes('started while another attempt was in flight')) continue;
          if (v.includes('attempted while not pending') && touchedByOther(job.deliveryId, proc)) {
            note(`${proc.name}: ${label(job)} attempted while not pending, as a former owner's attempt left it`);
            continue;
          }
          note(`VIOLATION ${proc.name}: ${v}`);
          problem(job.webhookId, `ordering violation: ${v}`, true);
        }
        return answer.finally(done);
      },
    };
  };
  for (let i = 0; i < p.processes; i++) {
    const proc: Proc = { name: 'AB'[i]!, engine: undefined as unknown as LaneEngine, owned: new Set(), leaseOk: true, leaseBackAt: -Infinity, cutOffUntil: -Infinity, lostUnnoticed: new Set(), known: new Map(), open: 0 };
    proc.engine = new LaneEngine(makeDeps(proc));
    procs.push(proc);
  }
  // Shards dealt round the processes at the start.
  for (let s = 0; s < p.shardCount; s++) {
    const proc = procs[s % procs.length]!;
    proc.owned.add(s);
    owner[s] = proc;
    subscriber[s] = proc;
    epoch[s] = 1;
  }

  // The sweep: reads the webhooks of the process's shards with work due (past its grace, or coming due
  // within the lookahead) and their lowest pending seq, and wakes their lanes when its query answers, with
  // the time it was sent, if the process still owns the shard then.
  const sweep = (proc: Proc, graceMs: number, lookaheadMs: number, shards: Iterable<number>, why = 'sweep') => {
    if (down(proc)) return; // its query fails too
    const readAt = Date.now();
    const wanted = new Set(shards);
    const found: { webhookId: string; shard: number; firstSeq: number }[] = [];
    for (const [webhookId, rows] of record.rows) {
      const shard = record.shardOf.get(webhookId)!;
      if (!wanted.has(shard)) continue;
      const pending = rows.filter((r) => r.status === 'pending');
      const due = pending.some((r) => r.job.nextAttemptAt <= readAt - graceMs || (r.job.nextAttemptAt > readAt && r.job.nextAttemptAt <= readAt + lookaheadMs));
      if (due) found.push({ webhookId, shard, firstSeq: Math.min(...pending.map((r) => r.job.seq)) });
    }
    if (found.length === 0) return;
    setTimeout(() => {
      for (const { webhookId, shard, firstSeq } of found) {
        if (!proc.owned.has(shard)) continue;
        const revived = !proc.engine.has(webhookId) && evictedLanes.delete(`${proc.name}/${webhookId}`);
        note(`${proc.name} ${why} wakes ${webhookId} first=${firstSeq} (read at ${readAt - t0})${revived ? ' (its lane was evicted)' : ''}`);
        if (revived) stats.revived++;
        proc.engine.wake(webhookId, shard, firstSeq, readAt);
      }
    }, p.sweepLatencyMs);
  };
  const intervals: NodeJS.Timeout[] = [];
  for (const proc of procs) {
    intervals.push(setInterval(() => sweep(proc, p.sweepGraceMs, p.sweepEveryMs + 10, proc.owned), p.sweepEveryMs));
    // The lease tick: renews, and once the leases are confirmed again the lanes that waited for it go on.
    // Not while cut off: being back is when it finds which shards it lost (see lapse).
    intervals.push(
      setInterval(() => {
        if (cutOff(proc) || proc.lostUnnoticed.size > 0) return;
        if (!proc.leaseOk && Date.now() >= proc.leaseBackAt) {
          proc.leaseOk = true;
          note(`${proc.name}: lease confirmed again`);
        }
        if (proc.leaseOk) proc.engine.leasesConfirmed();
      }, p.leaseTickMs),
    );
  }

  /**
   * A process takes a shard nobody holds: a new ownership epoch. Attempts of an earlier one still in flight
   * are a former owner's (zombies): after a lease lost they may be, as in production (its attempts run out
   * their timeout after it stopped starting new ones); after a release they may not (dropShard resolves
   * when its attempts are recorded, and the lease is released only then).
   */
  const claim = (proc: Proc, shard: number) => {
    // Its lease tick claims: not while Postgres does not answer it, nor before that tick's renewal has
    // found the shards it lost (see lapse). It may claim a shard whose dropped lanes (its own, from before
    // a lease lost) still have attempts in flight: the engine holds the new lanes until those are recorded.
    if (down(proc) || proc.lostUnnoticed.size > 0) {
      setTimeout(() => claim(proc, shard), Math.max(1, writableAt(proc) - Date.now()) + rng.int(0, p.leaseTickMs));
      return;
    }
    const how = handing.get(shard);
    handing.delete(shard);
    epoch[shard]!++;
    proc.owned.add(shard);
    owner[shard] = proc;
    note(`${proc.name} claims shard ${shard} (epoch ${epoch[shard]})`);
    for (const attempt of openAttempts) {
      if (attempt.shard !== shard || attempt.epoch >= epoch[shard]! || attempt.zombie) continue;
      if (how === 'released') {
        problem(attempt.webhookId, `${attempt.what} of ${attempt.proc.name} still in flight when ${proc.name} claimed shard ${shard} after its release (dropShard resolved before its attempts were recorded)`, true);
      }
      attempt.zombie = true;
      touch(attempt);
      stats.zombies++;
      note(`${attempt.what} of ${attempt.proc.name} is still in flight: a former owner's`);
    }
    // The claim's sweep: everything due, or coming due within CLAIM_LOOKAHEAD_MS, whatever its age.
    setTimeout(() => sweep(proc, 0, CLAIM_LOOKAHEAD_MS, [shard], 'claim sweep'), rng.int(0, 10));
    // The feed subscription, off the lease tick: what came meanwhile is delivered to it first.
    setTimeout(() => {
      if (!proc.owned.has(shard)) return;
      subscriber[shard] = proc;
      for (const { message, what } of backlog[shard]!.splice(0)) deliverTo(proc, message, `${what} (kept for the next subscriber)`);
    }, rng.int(0, 20));
  };

  /**
   * Dispatcher.letGo: the shard leaves `owned` and its lanes are dropped at once; the feed subscription
   * stops a little later (what reaches it meanwhile is dropped by onJob). Resolves when the dropped lanes'
   * attempts are recorded.
   */
  const letGo = (proc: Proc, shard: number): Promise<void> => {
    proc.owned.delete(shard);
    const dropped = proc.engine.dropShard(shard);
    setTimeout(() => {
      if (subscriber[shard] === proc) subscriber[shard] = undefined;
    }, rng.int(0, 5));
    return dropped;
  };

  /** A rebalance lets the shard go: it drains, releases its lease, and `to` claims it. */
  const release = (shard: number, from: Proc, to: Proc) => {
    handing.set(shard, 'released');
    stats.handovers.released++;
    note(`${from.name} lets shard ${shard} go (rebalance); ${to.name} takes it next`);
    void letGo(from, shard).then(() => {
      note(`${from.name} drained shard ${shard}: lease released`);
      setTimeout(() => claim(to, shard), rng.int(0, p.leaseTickMs));
    });
  };

  /**
   * `from` is cut off from Postgres: its leases go unconfirmed (its mayStart false), its reads fail, its
   * writes wait. Its lease on `shard` lapses and `to` claims it; `from` finds out when it is back (its
   * renewal no longer lists the shard), lets it go and drops its lanes. Its attempts in flight meanwhile
   * finish beside the new owner's.
   */
  const lapse = (shard: number, from: Proc, to: Proc) => {
    handing.set(shard, 'lapsed');
    stats.handovers.lapsed++;
    const ms = rng.int(30, 400);
    from.cutOffUntil = Date.now() + ms;
    from.leaseOk = false;
    from.leaseBackAt = from.cutOffUntil;
    note(`${from.name} cut off from Postgres for ${ms}ms: its lease on shard ${shard} lapses, ${to.name} takes it`);
    setTimeout(
      () => {
        from.lostUnnoticed.add(shard);
        claim(to, shard);
      },
      rng.int(1, ms - 1),
    );
    const back = () => {
      if (cutOff(from)) return void setTimeout(back, from.cutOffUntil - Date.now());
      for (const lost of from.lostUnnoticed) {
        note(`${from.name} back: shard ${lost} is no longer its own; lets it go`);
        void letGo(from, lost).then(() => note(`${from.name} dropped shard ${lost}'s lanes; their attempts are recorded`));
      }
      from.lostUnnoticed.clear();
      from.leaseOk = true;
      note(`${from.name}: lease confirmed again`);
      from.engine.leasesConfirmed();
    };
    setTimeout(back, ms);
  };

  /** A lease loss waiting for an attempt of its shard to be in flight (or for its time to run out). */
  let lapseArmed: { shard: number; until: number } | undefined;
  const lapseWhenBusy = () => {
    const { shard, until } = lapseArmed!;
    const from = owner[shard];
    const other = procs.find((q) => q !== from);
    if (!from || !other || handing.has(shard) || cutOff(from) || cutOff(other) || !from.owned.has(shard)) return void (lapseArmed = undefined);
    if (![...openAttempts].some((a) => a.shard === shard && a.proc === from) && Date.now() < until) return;
    lapseArmed = undefined;
    lapse(shard, from, other);
  };

  const handover = () => {
    if (down() || lapseArmed) return;
    const shards = owner.flatMap((proc, shard) => (proc && !handing.has(shard) && !cutOff(proc) && proc.owned.has(shard) ? [shard] : []));
    if (shards.length === 0) return;
    const shard = rng.pick(shards);
    const from = owner[shard]!;
    const other = procs.find((q) => q !== from);
    if (other && !cutOff(other) && rng.chance(p.lapsedP)) {
      // Mostly while attempts of the shard are in flight: those are what may finish beside the next owner's.
      if (rng.chance(0.8)) lapseArmed = { shard, until: Date.now() + 100 };
      else lapse(shard, from, other);
    }
    // Taken again by the same process (the other one died, say) now and then.
    else release(shard, from, other && rng.chance(0.8) ? other : from);
  };

  const commit = () => {
    const w = rng.pick(p.webhooks);
    const jobs = Array.from({ length: rng.chance(p.burstP) ? rng.int(2, 5) : 1 }, () => record.commit(w.id, rng.pick(w.keys)));
    note(`commit ${jobs.map((j) => `${label(j)}/${j.orderingKey}`).join(',')}${jobs[0]!.requeues ? ` requeues=${jobs[0]!.requeues}` : ''}`);
    publish(jobs, 'ingest');
  };

  /** The delivery of the webhook that went final last among `rows`. */
  const lastFinal = (webhookId: string, among: Row[]) => {
    for (let i = record.calls.length - 1; i >= 0; i--) {
      const call = record.calls[i]!;
      if (call.webhookId !== webhookId) continue;
      const row = among.find((r) => r.job.seq === call.seq);
      if (row) return row;
    }
    return undefined;
  };

  /**
   * A replay (a contiguous range of final deliveries, every final state or only failed and expired ones,
   * maybe paced) or a retry by hand (one failed or expired delivery), and its word. Each gets a fresh TTL
   * from when it comes due; the attempt count goes on.
   */
  const requeue = (retry?: Row) => {
    const w = retry ? p.webhooks.find((x) => x.id === retry.job.webhookId)! : rng.pick(p.webhooks);
    const rows = record.rows.get(w.id)!;
    const byHand = retry !== undefined || rng.chance(0.5);
    const failedOnly = byHand || rng.chance(0.5);
    const finals = rows.filter((r) => r.status !== 'pending' && (!failedOnly || r.status === 'failed' || r.status === 'expired'));
    if (finals.length === 0 || (retry && !finals.includes(retry))) return;
    let chosen: typeof rows;
    // Often the delivery that went final last: its outcome may be committed while the lane has not heard yet.
    if (retry) chosen = [retry];
    else if (byHand) chosen = [rng.chance(0.5) ? lastFinal(w.id, finals) ?? rng.pick(finals) : rng.pick(finals)];
    else {
      const from = rng.int(1, record.lastSeq.get(w.id)!);
      const to = Math.min(record.lastSeq.get(w.id)!, from + rng.int(0, 5));
      chosen = finals.filter((r) => r.job.seq >= from && r.job.seq <= to);
      if (chosen.length === 0) return;
    }
    const seqs = chosen.map((r) => r.job.seq).sort((a, b) => a - b);
    record.requeue(w.id, seqs);
    // What the statement does besides: a retry by hand is due now and leaves any replay's pace; a
    // replay's n-th delivery is due n paces from now.
    const paceMs = !byHand && rng.chance(p.pacedP) ? rng.int(1, 15) : undefined;
    for (const [i, row] of chosen.sort((a, b) => a.job.seq - b.job.seq).entries()) {
      row.job.nextAttemptAt = Date.now() + (paceMs ?? 0) * i;
      row.job.expiresAt = row.job.nextAttemptAt + p.ttlMs;
      row.untried = false;
      if (paceMs === undefined) delete row.job.paceMs;
      else row.job.paceMs = paceMs;
      requeuedTimes.set(label(row.job), (requeuedTimes.get(label(row.job)) ?? 0) + 1);
    }
    const count = record.requeues.get(w.id)!;
    requeueLog.push({ webhookId: w.id, seqs, at: record.calls.length, count });
    note(`${byHand ? 'retry by hand' : failedOnly ? 'replay (failed)' : 'replay (all)'} ${w.id} [${seqs.join(',')}]${paceMs ? ` paced ${paceMs}ms` : ''} → requeues=${count}`);
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

  /** Housekeeping's expireOverdueDeliveries: every pending delivery past its TTL, whatever lane holds it. */
  const housekeep = () => {
    const expired: string[] = [];
    for (const rows of record.rows.values()) {
      for (const row of rows) {
        if (row.status !== 'pending' || row.job.expiresAt > Date.now()) continue;
        row.status = 'expired';
        row.untried = true;
        stats.expiredUntried++;
        expired.push(label(row.job));
      }
    }
    if (expired.length === 0) return;
    note(`housekeeping expires ${expired.join(',')}`);
    // An operator retries one of them by hand soon after: a lane may still hold its old copy, past its TTL.
    if (rng.chance(0.5)) {
      const [webhookId, seq] = rng.pick(expired).split('#');
      const row = record.rows.get(webhookId!)!.find((r) => r.job.seq === Number(seq))!;
      setTimeout(() => !down() && requeue(row), rng.int(0, 50));
    }
  };

  const allFinal = () => [...record.rows.values()].every((rows) => rows.every((r) => r.status !== 'pending'));
  const quiet = () =>
    allFinal() &&
    record.inFlight === 0 &&
    openAttempts.size === 0 &&
    procs.every((q) => q.engine.activeAttempts === 0 && !cutOff(q) && q.lostUnnoticed.size === 0) &&
    inTransit === 0 &&
    handing.size === 0 &&
    backlog.every((b) => b.length === 0);

  /**
   * Nothing new comes for a minute or more: once everything is final, time goes by in steps (nothing but
   * the sweeps, the lease ticks and the engines' eviction runs), and lanes idle for IDLE_EVICT_MS are
   * evicted. Then old feed messages are redelivered (stale copies), and the traffic starts again.
   */
  const lull = async (ms: number, redeliveries: number) => {
    note('--- lull: nothing new comes for a while');
    const start = Date.now();
    while (!quiet() && Date.now() - start < LULL_SETTLE_LIMIT_MS) {
      t.mock.timers.tick(1);
      await flush();
    }
    if (!quiet()) return note('--- lull cut short: never quiet');
    const lanes = new Map(procs.map((q) => [q, p.webhooks.filter((w) => q.engine.has(w.id)).map((w) => w.id)]));
    note(`--- lull: ${ms}ms go by (lanes: ${procs.map((q) => `${q.name}[${lanes.get(q)!.join(',')}]`).join(' ')})`);
    const end = Date.now() + ms;
    while (Date.now() < end) {
      t.mock.timers.tick(Math.min(LULL_STEP_MS, end - Date.now()));
      await flush();
    }
    for (const [q, ids] of lanes) {
      const gone = ids.filter((id) => !q.engine.has(id));
      for (const id of gone) evictedLanes.add(`${q.name}/${id}`);
      stats.evicted += gone.length;
      note(`--- lull over: ${q.name} evicted ${gone.length ? gone.join(',') : 'nothing'}`);
    }
    for (let i = 0; i < redeliveries && published.length > 0; i++) {
      const message = rng.pick(published).map((job) => record.copy(job));
      inTransit++;
      setTimeout(() => {
        inTransit--;
        arrive(message, 'redelivered (stale)');
      }, rng.int(0, 200));
    }
  };

  // The ingest phase: things happen.
  let ingestElapsed = 0;
  let lullPending = p.lull;
  while (ingestElapsed < p.ingestMs) {
    if (rng.chance(p.commitP)) commit();
    if (rng.chance(p.requeueP)) requeue();
    if (lapseArmed !== undefined && !down()) lapseWhenBusy();
    if (!down() && rng.chance(p.outageP)) {
      const ms = rng.chance(0.15) ? rng.int(800, 2_500) : rng.int(5, 200);
      downUntil = Date.now() + ms;
      note(`Postgres DOWN for ${ms}ms`);
    }
    for (const proc of procs) {
      if (proc.leaseOk && !cutOff(proc) && rng.chance(p.leaseLapseP)) {
        proc.leaseOk = false;
        proc.leaseBackAt = Date.now() + rng.int(10, 150);
        note(`${proc.name}: lease unconfirmed until ${proc.leaseBackAt - t0}`);
      }
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
    if (rng.chance(p.toggleKeysP)) {
      const w = record.webhooks.get(rng.pick(p.webhooks).id)!;
      w.orderedByKey = !w.orderedByKey;
      stats.toggles++;
      note(`${w.id} ordered_by_key ${w.orderedByKey ? 'on' : 'off'}`);
    }
    if (!down() && rng.chance(p.housekeepP)) housekeep();
    if (rng.chance(p.handoverP)) handover();
    if (rng.chance(p.delayChangeP)) {
      record.loadDelayMs = rng.int(0, 25);
      record.isPendingDelayMs = rng.int(0, 25);
      note(`reads now take ${record.loadDelayMs}ms, pending checks ${record.isPendingDelayMs}ms`);
    }
    const stall = rng.chance(p.stallP) ? rng.int(5, 60) : 1;
    if (stall > 1) note(`event loop stalls ${stall}ms`);
    t.mock.timers.tick(stall);
    await flush();
    ingestElapsed += stall;
    if (lullPending && ingestElapsed >= lullPending.at) {
      await lull(lullPending.ms, lullPending.redeliveries);
      lullPending = undefined;
    }
  }

  // The settling phase: no more commits, requeues, outages or handovers (those under way finish); the
  // feed stops (what is in transit still comes); the sweep goes on, as in production, and finds what the
  // feed lost.
  feedOpen = false;
  note('--- ingest stops; settling');
  const settleStart = Date.now();
  let quietSince: number | undefined;
  const progress = () => `${record.calls.length}/${[...record.rows.values()].reduce((n, rows) => n + rows.filter((r) => r.status !== 'pending').length, 0)}`;
  let lastProgress = progress();
  let movedAt = Date.now();
  while (Date.now() - settleStart < SETTLE_LIMIT_MS && Date.now() - movedAt < SETTLE_STALL_MS) {
    if (progress() !== lastProgress) {
      lastProgress = progress();
      movedAt = Date.now();
    }
    if (!quiet()) quietSince = undefined;
    else if (quietSince === undefined) quietSince = Date.now();
    else if (Date.now() - quietSince >= QUIET_MS) break;
    t.mock.timers.tick(1);
    await flush();
  }
  for (const interval of intervals) clearInterval(interval);
  const virtualMs = Date.now() - t0;
  note('--- settled (or gave up)');

  check();

  // Let whatever is still held finish, then stop the engines.
  const stopping = Promise.all(procs.map((q) => q.engine.stop()));
  for (let i = 0; i < 3_000 && procs.some((q) => q.engine.activeAttempts > 0); i++) {
    t.mock.timers.tick(1);
    await flush();
  }
  await stopping;
  for (const rows of record.rows.values()) for (const r of rows) if (r.status !== 'pending') stats.finals[r.status]++;
  return { seed, params: p, problems, focus, problemAt, trace, commits: [...record.lastSeq.values()].reduce((a, b) => a + b, 0), calls: record.calls.length, requeues: requeueLog.length, virtualMs, stats };

  function check(): void {
    for (const e of errors) problem(undefined, `error logged: ${e.trim().slice(0, 300)}`);
    // Every delivery final (succeeded, failed or expired): nothing stuck pending.
    for (const [webhookId, rows] of record.rows) {
      for (const r of rows) if (r.status === 'pending') problem(webhookId, `stuck pending: ${label(r.job)} key=${r.job.orderingKey} attempts=${r.job.attempts} (${Date.now() - settleStart}ms into settling, nothing moved for ${Date.now() - movedAt}ms)`);
    }
    // Each delivery sent to a final outcome once, and once more per requeue: never twice without one
    // between. (But for a delivery a former owner's attempt touched, sent by two processes: the new owner
    // sends it beside that attempt.)
    const finalSends = callInfo.flatMap((info, index) => (info && (info.result === 'succeeded' || info.result === 'failed' || info.result === 'expired') ? [{ ...info, index }] : []));
    const sends = new Map<string, number>();
    for (const s of finalSends) sends.set(`${s.webhookId}#${s.seq}`, (sends.get(`${s.webhookId}#${s.seq}`) ?? 0) + 1);
    for (const [name, n] of sends) {
      const allowed = 1 + (requeuedTimes.get(name) ?? 0);
      const row = record.rows.get(name.split('#')[0]!)!.find((r) => label(r.job) === name)!;
      const senders = new Set(finalSends.filter((f) => f.deliveryId === row.job.deliveryId).map((f) => f.proc));
      if (n > allowed && !(zombieTouched.has(row.job.deliveryId) && senders.size > 1)) problem(name.split('#')[0], `${name} sent to a final outcome ${n} times with ${allowed - 1} requeue(s) of it`);
    }
    // Per webhook, final outcomes in seq order on each ordering lane, as the webhook was when the later
    // seq's attempt started: a's start (FIFO, or by key with b's key) while b was pending breaks it. So a
    // final send of seq s after that of a higher seq needs a requeue of s that the lane had no word of
    // when the other started.
    const byWebhook = new Map<string, typeof finalSends>();
    for (const s of finalSends) {
      if (!byWebhook.has(s.webhookId)) byWebhook.set(s.webhookId, []);
      byWebhook.get(s.webhookId)!.push(s);
    }
    for (const [webhookId, list] of byWebhook) {
      for (const [j, b] of list.entries()) {
        const putBack = requeueLog.filter((r) => r.webhookId === webhookId && r.seqs.includes(b.seq) && r.at <= b.index).at(-1);
        const overtaken = list
          .slice(0, j)
          .find((a) => a.seq > b.seq && (!a.orderedByKey || a.jobKey === b.jobKey) && !(putBack && (putBack.at > a.index || knownAtStart[a.index]! < putBack.count)));
        if (overtaken) {
          problem(webhookId, `${webhookId}: seq ${b.seq} (key ${b.jobKey}) went final (call[${b.index}]) after seq ${overtaken.seq} (key ${overtaken.jobKey}, call[${overtaken.index}], ${overtaken.orderedByKey ? 'by key' : 'FIFO'}), with no requeue of ${b.seq} unknown to the lane between`);
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
  const first = Number(process.env.LANES_FIRST ?? 1);
  return Array.from({ length: count }, (_, i) => first + i);
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
      const totals: Record<string, number> = {};
      const add = (prefix: string, values: object) => {
        for (const [k, v] of Object.entries(values)) {
          if (typeof v === 'number') totals[`${prefix}${k}`] = (totals[`${prefix}${k}`] ?? 0) + v;
          else add(`${prefix}${k}.`, v as object);
        }
      };
      for (const seed of block) {
        const result = await runSeedOnVirtualClock(t, seed);
        add('', result.stats);
        if (process.env.LANES_TRACE) {
          console.log(`seed ${seed}: ${result.commits} deliveries, ${result.calls} calls, ${result.requeues} requeues, ${result.virtualMs} virtual ms; ${JSON.stringify(result.stats)}`);
          console.log(`params: ${JSON.stringify(result.params)}`);
          console.log(result.trace.join('\n'));
        }
        if (result.problems.length > 0) failed.push(result);
      }
      if (process.env.LANES_STATS) t.diagnostic(`stats: ${JSON.stringify(totals)}`);
      assert.ok(failed.length === 0, [`${failed.length} seed(s) failed: ${failed.map((r) => r.seed).join(', ')}`, ...failed.slice(0, 2).map(report)].join('\n\n'));
    });
  }
});
