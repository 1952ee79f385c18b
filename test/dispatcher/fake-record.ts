import pino from 'pino';
import type { LaneEngineDeps, LaneOutcome, LaneWebhook } from '../../src/dispatcher/lanes.js';
import type { DeliveryJob } from '../../src/queue/job.js';
import type { LaneLoad } from '../../src/store/deliveries.js';
import { HEALTHY, type EndpointHealth } from '../../src/core/endpoint-gate.js';

/**
 * An in-memory stand-in for the delivery table ("the record") answering LaneEngine's injected functions,
 * so each ordering rule can be driven step by step (lanes.test.ts) or at random (lanes-randomized.test.ts).
 * Not a test file itself: the suite runs only *.test.ts.
 */

export const log = pino({ level: 'silent' });
export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export async function until(predicate: () => boolean, what: string, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

export interface Row {
  job: DeliveryJob;
  status: 'pending' | 'succeeded' | 'failed' | 'expired';
  /** Expired without an attempt (its TTL ran out before a lane tried it): a final attempt outcome still lands. */
  untried?: boolean;
  /** The webhook's count of requeues once the requeue that last put this delivery back committed. */
  requeuedAs?: number;
}

export interface Call {
  webhookId: string;
  seq: number;
  key: string;
  attempts: number;
  at: number;
  finish(outcome?: LaneOutcome): void;
}

export type Responder = (call: Call) => LaneOutcome | 'hold' | Promise<LaneOutcome>;

/** A responder: the calls `fails` picks get a retry at `retryAt()`, every other call succeeds. */
export function retriesWhen(fails: (call: Call) => boolean, retryAt: () => number): Responder {
  return (call) => (fails(call) ? { final: false, nextAttemptAt: retryAt(), signal: 'failure' } : { final: true, signal: 'success' });
}

export class FakeRecord {
  readonly rows = new Map<string, Row[]>();
  readonly lastSeq = new Map<string, number>();
  /** Each webhook's count of deliveries put back to pending (WebhookTable.requeues). */
  readonly requeues = new Map<string, number>();
  readonly webhooks = new Map<string, LaneWebhook>();
  readonly loads: { webhookId: string; afterSeq: number; limit: number; at: number; leaveOutKeys: readonly string[] }[] = [];
  readonly calls: Call[] = [];
  readonly savedHealth: { webhookId: string; health: EndpointHealth }[] = [];
  /** Broken ordering promises seen by execute: two attempts of one (webhook, key) at once. */
  readonly violations: string[] = [];
  private readonly open = new Set<string>();
  inFlight = 0;
  maxInFlight = 0;
  /** How long a read of the record takes to answer. */
  loadDelayMs = 1;
  /** How long a pending check takes to answer. */
  isPendingDelayMs = 1;
  /** How long after an outcome is committed the lane hears of it (the attempt writer's commit answering). */
  notifyDelayMs = 0;
  responder: Responder = () => ({ final: true, signal: 'success' });
  /**
   * How an attempt's outcome is written to its row. Absent: a final one makes it succeeded, a retry counts the
   * attempt and takes its schedule, whatever the row's state (lanes-randomized.test.ts writes as Postgres does).
   */
  writeOutcome: ((row: Row, outcome: Exclude<LaneOutcome, { notStarted: true }>, call: Call) => void) | undefined = undefined;
  /** Each webhook's shard (0 unless set), given to its jobs at commit. */
  readonly shardOf = new Map<string, number>();
  /** A committed delivery expires this long after it is created. */
  ttlMs = 3_600_000;
  /**
   * An earlier pending delivery that `execute` does not count against a start, when this says so: one put
   * back by a requeue that the lane has had no word of yet (lanes-randomized.test.ts). Absent: none.
   */
  excuseEarlier: ((earlier: Row, job: DeliveryJob) => boolean) | undefined = undefined;
  private counter = 0;

  addWebhook(id: string, options: Partial<LaneWebhook> = {}): LaneWebhook {
    const webhook: LaneWebhook = { id, url: `http://example.test/${id}`, secrets: ['whsec_x'], status: 'active', orderedByKey: false, signatureScheme: 'v1', rateLimitPerSecond: 0, retrySchedule: null, health: HEALTHY, ...options };
    this.webhooks.set(id, webhook);
    this.rows.set(id, []);
    this.lastSeq.set(id, 0);
    return webhook;
  }

  /** Commits the next delivery of a webhook (gap-free seq) and returns its job, as ingest would. */
  commit(webhookId: string, orderingKey = ''): DeliveryJob {
    const seq = this.lastSeq.get(webhookId)! + 1;
    this.lastSeq.set(webhookId, seq);
    const now = Date.now();
    const job: DeliveryJob = {
      deliveryId: `dlv_${webhookId}_${seq}_${this.counter++}`,
      webhookId,
      shard: this.shardOf.get(webhookId) ?? 0,
      seq,
      orderingKey,
      eventId: `evt_${webhookId}_${seq}`,
      eventType: 'thing.happened',
      createdAt: now,
      payload: JSON.stringify({ seq }),
      attempts: 0,
      nextAttemptAt: now,
      expiresAt: now + this.ttlMs,
      ...(this.requeues.get(webhookId) ? { requeues: this.requeues.get(webhookId) } : {}),
    };
    this.rows.get(webhookId)!.push({ job: { ...job }, status: 'pending' });
    return job;
  }

  /** Puts final deliveries back to pending, due now, as a replay or a retry by hand does; the feed hears nothing. */
  requeue(webhookId: string, seqs: number[]): void {
    const requeues = (this.requeues.get(webhookId) ?? 0) + 1;
    for (const row of this.rows.get(webhookId)!) {
      if (!seqs.includes(row.job.seq)) continue;
      row.status = 'pending';
      row.requeuedAs = requeues;
    }
    this.requeues.set(webhookId, requeues);
  }

  /** A copy as the feed would hand it (a fresh object each time, like a decoded message). */
  copy(job: DeliveryJob): DeliveryJob {
    return { ...job };
  }

  row(deliveryId: string): Row | undefined {
    for (const list of this.rows.values()) {
      const row = list.find((r) => r.job.deliveryId === deliveryId);
      if (row) return row;
    }
    return undefined;
  }

  sent(webhookId: string): number[] {
    return this.calls.filter((c) => c.webhookId === webhookId).map((c) => c.seq);
  }

  deps(overrides: Partial<LaneEngineDeps> = {}): LaneEngineDeps {
    return {
      loadPending: async (webhookId, afterSeq, limit, leaveOutKeys = []): Promise<LaneLoad> => {
        this.loads.push({ webhookId, afterSeq, limit, at: Date.now(), leaveOutKeys });
        // Like one SQL statement: the snapshot is taken when the query starts, the answer comes later.
        const jobs = (this.rows.get(webhookId) ?? [])
          .filter((r) => r.status === 'pending' && r.job.seq > afterSeq && !leaveOutKeys.includes(r.job.orderingKey))
          .sort((a, b) => a.job.seq - b.job.seq)
          .slice(0, limit)
          .map((r) => ({ ...r.job }));
        const lastSeq = this.lastSeq.get(webhookId) ?? 0;
        const requeues = this.requeues.get(webhookId) ?? 0;
        await sleep(this.loadDelayMs);
        return { jobs, lastSeq, requeues };
      },
      isPending: async (deliveryId) => {
        // Like the statement: the answer is read when it runs, and comes back later.
        const pending = this.row(deliveryId)?.status === 'pending';
        await sleep(this.isPendingDelayMs);
        return pending;
      },
      getWebhook: async (id) => {
        const webhook = this.webhooks.get(id);
        return webhook && { ...webhook };
      },
      execute: (job, webhook) => {
        this.inFlight++;
        this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
        const lane = `${job.webhookId}/${webhook.orderedByKey ? job.orderingKey : ''}`;
        if (this.open.has(lane)) this.violations.push(`${lane} seq ${job.seq} started while another attempt was in flight`);
        if (this.row(job.deliveryId)?.status !== 'pending') this.violations.push(`${job.deliveryId} attempted while not pending`);
        const earlier = (this.rows.get(job.webhookId) ?? []).find(
          (r) =>
            r.status === 'pending' &&
            r.job.seq < job.seq &&
            (!webhook.orderedByKey || r.job.orderingKey === job.orderingKey) &&
            !this.excuseEarlier?.(r, job),
        );
        if (earlier) this.violations.push(`${lane} seq ${job.seq} started before seq ${earlier.job.seq} was final`);
        this.open.add(lane);
        return new Promise<LaneOutcome>((resolve) => {
          let done = false;
          const call: Call = {
            webhookId: job.webhookId,
            seq: job.seq,
            key: webhook.orderedByKey ? job.orderingKey : '',
            attempts: job.attempts,
            at: Date.now(),
            finish: (outcome = { final: true, signal: 'success' }) => {
              if (done) return;
              done = true;
              this.inFlight--;
              this.open.delete(lane);
              // The outcome is "committed" before the lane hears of it, as the attempt writer does.
              const row = this.row(job.deliveryId)!;
              if ('notStarted' in outcome) return void resolve(outcome);
              if (this.writeOutcome) this.writeOutcome(row, outcome, call);
              else if (outcome.final) row.status = 'succeeded';
              else {
                row.job.attempts++;
                row.job.nextAttemptAt = outcome.nextAttemptAt;
              }
              if (this.notifyDelayMs > 0) setTimeout(() => resolve(outcome), this.notifyDelayMs);
              else resolve(outcome);
            },
          };
          this.calls.push(call);
          const answer = this.responder(call);
          if (answer === 'hold') return;
          void Promise.resolve(answer).then((outcome) => setTimeout(() => call.finish(outcome), 2));
        });
      },
      saveHealth: (webhookId, health) => this.savedHealth.push({ webhookId, health }),
      circuitPolicy: { failureThreshold: 0, cooldownMs: 1_000, maxCooldownMs: 1_000 },
      maxInFlight: 100,
      log,
      gapWaitMs: 100,
      holdRecheckMs: 30,
      ...overrides,
    };
  }
}

/** The record's deps with reads of it that fail, `failNext` times, as they do while Postgres is down. */
export function flaky(record: FakeRecord, overrides: Partial<LaneEngineDeps> = {}) {
  const state = { failNext: 0, failures: 0 };
  const deps = record.deps(overrides);
  return {
    state,
    deps: {
      ...deps,
      loadPending: async (...args: Parameters<LaneEngineDeps['loadPending']>) => {
        if (state.failNext > 0) {
          state.failNext--;
          state.failures++;
          await sleep(1);
          throw new Error('connect ECONNREFUSED');
        }
        return deps.loadPending(...args);
      },
    } satisfies LaneEngineDeps,
  };
}
