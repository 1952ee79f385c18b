import { randomUUID } from "node:crypto";
import type { Logger } from "pino";
import type { SecretBox } from "../core/secret-box.js";
import { newId } from "../core/ids.js";
import { decideOutcome, deliveryStatusAfter, parseRetryAfter } from "../core/retry-policy.js";
import type { DeliveryFeed, FeedSubscription } from "../queue/feed.js";
import type { DeliveryJob } from "../queue/job.js";
import type { Db } from "../store/db.js";
import type { DeliveryStatus } from "../store/schema.js";
import { expireDeliveries, findWebhooksWithDueDeliveries, isDeliveryPending, loadPendingForLane, pendingSchedule } from "../store/deliveries.js";
import * as leases from "../store/leases.js";
import { disableWebhook, saveEndpointHealth, type HealthSeen } from "../store/webhooks.js";
import type { AttemptSignal, CircuitPolicy, EndpointHealth } from "../core/endpoint-gate.js";
import { runHousekeeping } from "./housekeeping.js";
import { recordAudit } from "../store/audit.js";
import { attemptDuration, attemptsMade, deliveryLatency } from "../metrics.js";
import { AttemptWriter } from "./attempt-writer.js";
import { LaneEngine, type LaneOutcome, type LaneWebhook } from "./lanes.js";
import { PayloadReader } from "./payload-reader.js";
import type { SendResult, Sender } from "./sender.js";
import { RESPONSE_BODY_KEEP } from "./sender.js";
import { createWebhookCache } from "./webhook-cache.js";

/** A new owner loads the lanes of retries due within this long, so they go on time after a takeover. */
const CLAIM_LOOKAHEAD_MS = 60_000;
/**
 * The periodic sweep reads the deliveries that came due within this window, one index entry each; once a
 * minute (and on a claim) the full sweep asks every webhook with pending work instead. Work due for
 * longer sits in lanes already (held, backing off, or behind a busy head), and reading a dead endpoint's
 * whole backlog every period cost 0.8 µs a delivery — 40 % of a core for a million.
 */
const SWEEP_RECENT_MS = 120_000;
const FULL_SWEEP_EVERY_MS = 60_000;
/** How soon a job past its TTL by this clock, but not by Postgres', is looked at again. */
const EXPIRY_RECHECK_MS = 1_000;

/**
 * Attempts start only within this share of the lease TTL after the renewal that confirmed the leases
 * was asked for. The lease runs at least the TTL from then (the database starts it later), and no other
 * process can take the shard before it ends; the rest of the TTL is for attempts already under way to
 * reach their receiver first. Renewals come every 2 s of a 10 s TTL, so a healthy process never waits.
 */
const LEASE_USABLE_SHARE = 0.75;
/** How long a stopping dispatcher keeps trying to record its last attempts before it gives them up. */
const STOP_RECORD_GRACE_MS = 10_000;

export interface DispatcherOptions {
  db: Db;
  feed: DeliveryFeed;
  sender: Sender;
  log: Logger;
  shardCount: number;
  retrySchedule: number[];
  maxInFlight: number;
  maxInFlightPerEndpoint: number;
  secretBox: SecretBox;
  circuitPolicy: CircuitPolicy;
  /** An endpoint that has failed every attempt for this long is disabled; 0: never. */
  autoDisableAfterMs: number;
  eventTtlMs: number;
  /** How often the owner of shard 0 runs retention housekeeping. */
  housekeepingIntervalMs?: number;
  /** The clock housekeeping reads, Postgres' unless given; tests move it forward to see partitions go. */
  housekeepingClock?: () => number;
  /** A lease not renewed for this long may be taken by another process. */
  leaseTtlMs?: number;
  /** How often leases are renewed and rebalanced. */
  leaseIntervalMs?: number;
  /** How often owned shards are swept for due work that no lane is moving. */
  sweepIntervalMs?: number;
  /** Due work younger than this is left to the feed, which is usually about to deliver it. */
  sweepGraceMs?: number;
  /** Webhooks a sweep reads at a time (10,000). */
  sweepPageSize?: number;
}

/**
 * One dispatcher process: holds a fair share of the shards, feeds their lanes from the feed, and sweeps
 * Postgres for what the feed did not bring — jobs published while nobody owned the shard, jobs never
 * published (the API died between commit and publish), retries that came due, a dead owner's work.
 */
export class Dispatcher {
  readonly id = `dsp_${randomUUID()}`;
  private readonly engine: LaneEngine;
  private readonly writer: AttemptWriter;
  private readonly owned = new Map<number, FeedSubscription | undefined>();
  /** Shards let go whose attempts in flight are still being recorded: their leases are renewed until then. */
  private readonly draining = new Set<number>();
  private leaseTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private tick: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly leaseTtlMs: number;
  private readonly sweepIntervalMs: number;
  private readonly sweepPageSize: number;
  private readonly log: Logger;
  private readonly webhooks: ReturnType<typeof createWebhookCache>;
  /** Health saves per webhook, chained so they land in the order the lane made them. */
  private readonly healthSaves = new Map<string, Promise<void>>();
  private housekeeping: Promise<void> | undefined;
  /** Feed subscriptions being made, off the lease tick (see startSubscribing). */
  private subscribing: Promise<void> | undefined;
  private nextHousekeepingAt = 0;
  private nextFullSweepAt = 0;
  private readonly payloads: PayloadReader;
  /** performance.now() until which the shards held are known to be ours (see LEASE_USABLE_SHARE). */
  private leasesConfirmedUntil = 0;

  constructor(private readonly options: DispatcherOptions) {
    this.log = options.log.child({ component: "dispatcher", dispatcher: this.id });
    this.leaseTtlMs = options.leaseTtlMs ?? 10_000;
    this.sweepIntervalMs = options.sweepIntervalMs ?? 2_000;
    this.sweepPageSize = options.sweepPageSize ?? 10_000;
    this.writer = new AttemptWriter(options.db, this.log);
    this.webhooks = createWebhookCache(options.db, options.secretBox, this.log);
    this.payloads = new PayloadReader(options.db);
    this.engine = new LaneEngine({
      loadPending: (webhookId, afterSeq, limit, leaveOutKeys) => loadPendingForLane(options.db, webhookId, afterSeq, limit, leaveOutKeys),
      isPending: (deliveryId) => isDeliveryPending(options.db, deliveryId),
      getWebhook: (id) => this.webhooks.get(id),
      execute: (job, webhook) => this.execute(job, webhook),
      prefetch: (job) => this.prefetch(job),
      saveHealth: (webhookId, health, seen) => this.saveHealth(webhookId, health, seen),
      // A process cut off from Postgres (or stalled) past its TTL may have lost its shards without knowing.
      mayStart: (shard) => this.mayStart(shard),
      circuitPolicy: options.circuitPolicy,
      maxInFlight: options.maxInFlight,
      maxInFlightPerLane: options.maxInFlightPerEndpoint,
      log: this.log,
    });
  }

  get shards(): number[] {
    return [...this.owned.keys()].sort((a, b) => a - b);
  }

  async start(): Promise<void> {
    await this.rebalance();
    this.leaseTimer = setInterval(() => this.serially(() => this.rebalance()), this.options.leaseIntervalMs ?? 2_000);
    this.sweepTimer = setInterval(() => this.serially(() => this.sweep(this.options.sweepGraceMs ?? 2_000)), this.sweepIntervalMs);
    // The first subscriptions are waited for (the lease tick goes on meanwhile): a dispatcher that says it
    // has started takes its shards' jobs from the feed, not a sweep's grace later.
    await this.subscribing;
    this.log.info({ shards: this.owned.size, subscribed: [...this.owned.values()].filter(Boolean).length }, "dispatcher started");
  }

  /** Stops taking work, lets attempts in flight finish and be recorded, and hands the shards back. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    // Attempts in flight wait for their records; with Postgres down they would hold the stop until it is back.
    this.writer.giveUpAfter(STOP_RECORD_GRACE_MS);
    clearInterval(this.leaseTimer);
    clearInterval(this.sweepTimer);
    await this.tick;
    await this.subscribing;
    await Promise.all([...this.owned.values()].map((s) => s?.stop()));
    await this.engine.stop();
    await this.writer.stop();
    await Promise.all([...this.healthSaves.values(), this.housekeeping]);
    this.webhooks.close();
    await leases.removeDispatcher(this.options.db, this.id).catch((err) => this.log.warn({ err }, "could not hand back leases"));
    this.owned.clear();
  }

  private serially(work: () => Promise<void>): void {
    this.tick = this.tick.then(async () => {
      if (this.stopped) return;
      try {
        await work();
      } catch (err) {
        this.log.warn({ err }, "dispatcher housekeeping failed; trying again next tick");
      }
    });
  }

  private async rebalance(): Promise<void> {
    const { db, shardCount } = this.options;
    const asked = performance.now();
    await leases.heartbeat(db, this.id);
    const held = new Set(await leases.renewLeases(db, this.id, [...this.owned.keys(), ...this.draining], this.leaseTtlMs));
    for (const shard of [...this.owned.keys()]) {
      if (!held.has(shard)) {
        this.log.warn({ shard }, "lease lost");
        void this.letGo(shard);
      }
    }
    // Shards claimed below are confirmed from this point too: their leases start later than it.
    this.leasesConfirmedUntil = asked + this.leaseTtlMs * LEASE_USABLE_SHARE;
    this.engine.leasesConfirmed();
    const live = Math.max(1, await leases.countLiveDispatchers(db, this.leaseTtlMs));
    const target = Math.ceil(shardCount / live);
    for (const shard of this.shards.slice(target)) {
      // The lease stays ours (and renewed) until the shard's attempts in flight are recorded, so the
      // next owner never sends beside us; draining happens off this tick so renewals go on meanwhile.
      this.draining.add(shard);
      void this.letGo(shard)
        // Claimed again while it drained (its lease had lapsed): it is ours to work, not to release.
        .then(() => (this.owned.has(shard) ? undefined : leases.releaseShard(db, this.id, shard)))
        .catch((err) => this.log.warn({ err, shard }, "releasing shard failed; the next lease tick releases it"))
        .finally(() => this.draining.delete(shard));
    }
    // A lease of ours on a shard nobody here works: a release above that failed, or a claim that committed
    // but whose answer was lost. Renewed with the others, it kept the shard from every process for as long
    // as this one lived; unrenewed it would still hold it for a TTL.
    const stray = await leases.releaseLeasesExcept(db, this.id, [...this.owned.keys(), ...this.draining]).catch((err) => {
      this.log.warn({ err }, "could not release the leases of shards not worked here; they lapse within the TTL");
      return [];
    });
    if (stray.length > 0) this.log.warn({ shards: stray }, "released leases of shards not worked here");
    const claimed = await leases.claimShards(db, this.id, shardCount, this.owned.size, this.leaseTtlMs);
    for (const shard of claimed) this.owned.set(shard, undefined);
    if (claimed.length > 0) {
      this.log.info({ claimed: claimed.length, owned: this.owned.size, live }, "shards claimed");
      // Recovery: whatever the previous owner left is in Postgres.
      await this.sweep(0, claimed, CLAIM_LOOKAHEAD_MS, true);
    }
    this.startSubscribing();
    if (this.owned.has(0)) this.startHousekeeping();
  }

  /**
   * Subscribes the shards held without a feed subscription (just claimed, or taken while the feed was
   * down: the sweep alone carries them meanwhile), off the lease tick: with JetStream up but not
   * answering (a cluster without quorum) each subscription took up to its 5 s timeout, the tick waited,
   * the leases lapsed and every delivery stopped. One failure ends the round; the next tick starts another.
   */
  private startSubscribing(): void {
    if (this.subscribing || this.stopped || !this.options.feed.healthy()) return;
    this.subscribing = (async () => {
      for (const [shard, subscription] of [...this.owned]) {
        if (subscription || this.stopped) continue;
        const made = await this.subscribe(shard);
        if (!made) return;
        // Let go (or the dispatcher stopped) while it was being made: not ours to keep.
        if (this.stopped || !this.owned.has(shard) || this.owned.get(shard)) await made.stop();
        else this.owned.set(shard, made);
      }
    })()
      .catch((err) => this.log.warn({ err }, "feed subscriptions failed; the next lease tick tries again"))
      .finally(() => {
        this.subscribing = undefined;
      });
  }

  /** Off the lease tick: DDL may wait on locks, and lease renewals must not wait with it. */
  private startHousekeeping(): void {
    if (this.housekeeping || Date.now() < this.nextHousekeepingAt) return;
    this.nextHousekeepingAt = Date.now() + (this.options.housekeepingIntervalMs ?? 60 * 60 * 1000);
    this.housekeeping = runHousekeeping(this.options.db, this.options.eventTtlMs, this.options.housekeepingClock?.())
      .then((report) => {
        if (report.partitionsFailed.length > 0) this.log.error({ failed: report.partitionsFailed }, "partitions could not be created; their rows go to the default partition");
        this.log.info({ ...report, partitionsFailed: report.partitionsFailed.length }, "housekeeping done");
      })
      .catch((err) => this.log.warn({ err }, "housekeeping failed; trying again next round"))
      .finally(() => {
        this.housekeeping = undefined;
      });
  }

  private saveHealth(webhookId: string, health: EndpointHealth, seen: HealthSeen): void {
    const previous = this.healthSaves.get(webhookId) ?? Promise.resolve();
    const next = previous
      .then(async () => {
        // Not saved: the API reset the health or changed the URL since (see saveEndpointHealth).
        if (!(await saveEndpointHealth(this.options.db, webhookId, health, seen))) return;
        const limit = this.options.autoDisableAfterMs;
        if (limit > 0 && health.failingSince !== null && Date.now() - health.failingSince >= limit) {
          await this.disable(webhookId, {
            reason: `every attempt has failed since ${new Date(health.failingSince).toISOString()}`,
            failing_since: new Date(health.failingSince).toISOString(),
          });
        }
      })
      .catch((err) => this.log.warn({ err, webhookId }, "could not save endpoint health; the next change saves it"))
      .finally(() => {
        if (this.healthSaves.get(webhookId) === next) this.healthSaves.delete(webhookId);
      });
    this.healthSaves.set(webhookId, next);
  }

  private async subscribe(shard: number): Promise<FeedSubscription | undefined> {
    // A feed that is down says so once; the lease tick subscribes when it is back.
    if (!this.options.feed.healthy()) return undefined;
    try {
      return await this.options.feed.consume(shard, (job) => this.onJob(job));
    } catch (err) {
      this.log.warn({ err, shard }, "feed subscription failed; the sweep carries this shard until it succeeds");
      return undefined;
    }
  }

  private onJob(job: DeliveryJob): void {
    if (this.owned.has(job.shard)) this.engine.offer(job);
  }

  /** Reads the payload of the job a lane sends next while the one before it is in flight. */
  private prefetch(job: DeliveryJob): void {
    if (job.payload !== undefined) return;
    this.payloads.read(job.eventId).then(
      (payload) => {
        job.payload ??= payload;
      },
      // The attempt reads it again and reports what goes wrong.
      () => undefined,
    );
  }

  private async letGo(shard: number): Promise<void> {
    const subscription = this.owned.get(shard);
    this.owned.delete(shard);
    // The lanes go now, not once the subscription has stopped: claimed again meanwhile, the shard's sweep
    // woke them, and they sent what they held from before the lease was lost, which another process had
    // sent since.
    const dropped = this.engine.dropShard(shard);
    await subscription?.stop();
    await dropped;
  }

  /**
   * Wakes the lanes of webhooks with work due more than `graceMs` ago (younger work is the feed's), or
   * coming due within `lookaheadMs`: a lane that holds its retry in memory sends it on time, where the
   * next sweep would find it only after the grace. Unless `full`, work due for longer than
   * SWEEP_RECENT_MS is left to the once-a-minute full sweep.
   */
  private async sweep(graceMs: number, shards = this.shards, lookaheadMs = this.sweepIntervalMs + 1_000, full = false): Promise<void> {
    const now = Date.now();
    if (!full && now >= this.nextFullSweepAt) {
      full = true;
      this.nextFullSweepAt = now + FULL_SWEEP_EVERY_MS;
    }
    const dueSince = full ? undefined : new Date(now - SWEEP_RECENT_MS);
    const query = { shards, dueBy: new Date(now - graceMs), horizon: new Date(now + lookaheadMs), dueSince, limit: this.sweepPageSize };
    for (let after: string | undefined = ""; after !== undefined; ) {
      const page = await findWebhooksWithDueDeliveries(this.options.db, { ...query, after });
      for (const { webhook_id, shard, first_seq } of page.webhooks) {
        // first_seq is the lowest pending seq of the webhook, due or not.
        if (this.owned.has(shard)) this.engine.wake(webhook_id, shard, first_seq, now);
      }
      after = page.next;
    }
  }

  /** Stops sending to the webhook, keeping its deliveries pending for the day it is enabled again. */
  private async disable(webhookId: string, details: { reason: string } & Record<string, unknown>): Promise<void> {
    const disabled = await this.options.db.transaction().execute(async (trx) => {
      const tenantId = await disableWebhook(trx, webhookId);
      if (tenantId) {
        await recordAudit(trx, { tenantId, actor: "dispatcher", action: "webhook.disable", resourceId: webhookId, details });
      }
      return tenantId !== undefined;
    });
    this.webhooks.forget(webhookId);
    if (disabled) this.log.warn({ webhookId, reason: details.reason }, "webhook disabled");
  }

  /** Whether this process's lease on the shard is confirmed now (see LEASE_USABLE_SHARE). */
  private mayStart(shard: number): boolean {
    return this.owned.has(shard) && performance.now() < this.leasesConfirmedUntil;
  }

  private async execute(job: DeliveryJob, webhook: LaneWebhook): Promise<LaneOutcome> {
    if (job.expiresAt <= Date.now()) {
      if ((await expireDeliveries(this.options.db, [job.deliveryId])) > 0) {
        attemptsMade.inc({ status: "expired" });
        return { final: true, signal: "neutral" };
      }
      // Not past its TTL in Postgres: put back since the lane took this copy (a retry by hand or a replay
      // of a delivery housekeeping had expired while the lane held it) with a fresh one, or final. The
      // lane's copy takes the record's schedule and goes again; the stale one expired the retry unsent.
      const schedule = await pendingSchedule(this.options.db, job.deliveryId);
      if (!schedule) return { final: true, signal: "neutral" };
      Object.assign(job, schedule);
      // Past its TTL by this clock, not yet by Postgres' (this one runs ahead): asked again at once, the
      // lane spun through thousands of statements a second until the clocks agreed.
      if (job.expiresAt <= Date.now()) job.nextAttemptAt = Math.max(job.nextAttemptAt, Date.now() + EXPIRY_RECHECK_MS);
      return { notStarted: true };
    }
    const payload = job.payload ?? (await this.payloads.read(job.eventId));
    // The event row goes with the delivery's: a retention that removed one removed both.
    if (payload === undefined) throw new Error(`event ${job.eventId} of delivery ${job.deliveryId} is not in Postgres`);
    // The read may have waited out a partition from Postgres, long enough for the lease to lapse.
    if (!this.mayStart(job.shard)) return { notStarted: true };
    const attemptedAt = new Date();
    const result = await this.options.sender.send({
      url: webhook.url,
      secrets: webhook.secrets,
      scheme: webhook.signatureScheme,
      eventId: job.eventId,
      eventType: job.eventType,
      createdAt: job.createdAt,
      payload,
      guard: {
        // Checked again when the socket comes, after however long the request waited for it.
        mayGo: () => {
          const known = this.webhooks.peek(webhook.id);
          if (known && (known.webhook?.status !== "active" || known.webhook.url !== webhook.url)) return false;
          return this.mayStart(job.shard);
        },
        refresh: () => void this.webhooks.get(webhook.id),
      },
    });
    // Its webhook was deleted, paused or pointed elsewhere, or the lease lapsed, while the request
    // waited for a socket: the lane looks again.
    if (result.kind === "withdrawn") return { notStarted: true };
    const now = new Date();
    const after = await this.decide(job, webhook, result, now, attemptedAt);
    await this.writer.write({
      attemptId: newId("att"),
      deliveryId: job.deliveryId,
      attemptedAt,
      durationMs: result.durationMs,
      responseCode: result.kind === "response" ? result.status : null,
      error: after.error,
      responseBody: result.kind === "response" ? result.body.slice(0, RESPONSE_BODY_KEEP) : null,
      status: after.status,
      nextAttemptAt: after.nextAttemptAt,
    });
    attemptsMade.inc({ status: after.status });
    attemptDuration.observe(result.durationMs / 1000);
    if (after.status === "succeeded") deliveryLatency.observe((Date.now() - job.createdAt) / 1000);
    const signal = signalOf(result);
    return after.status === "pending" ? { final: false, nextAttemptAt: after.nextAttemptAt.getTime(), signal } : { final: true, signal };
  }

  /** What the attempt leaves the delivery in: the retry policy's word, unless the receiver said 410. */
  private async decide(
    job: DeliveryJob,
    webhook: LaneWebhook,
    result: SendResult,
    now: Date,
    attemptedAt: Date,
  ): Promise<{ status: DeliveryStatus; nextAttemptAt: Date; error: string | null }> {
    if (result.kind === "response" && result.status === 410) {
      // The receiver says the endpoint is gone for good (Standard Webhooks): stop sending, keep every
      // delivery pending for the day someone re-enables the webhook.
      await this.disable(webhook.id, { reason: "receiver answered 410 Gone", delivery_id: job.deliveryId });
      return { status: "pending", nextAttemptAt: now, error: "HTTP 410: the receiver asked to stop; webhook disabled" };
    }
    const outcome = decideOutcome({
      result:
        result.kind === "response"
          ? { kind: "response", status: result.status, retryAfterMs: parseRetryAfter(result.retryAfter, now) }
          : { kind: "error", blocked: result.blocked },
      attemptsMade: job.attempts + 1,
      schedule: webhook.retrySchedule ?? this.options.retrySchedule,
      now,
      expiresAt: new Date(job.expiresAt),
    });
    return {
      status: deliveryStatusAfter(outcome),
      nextAttemptAt: outcome.kind === "retry" ? outcome.at : attemptedAt,
      error: result.kind === "error" ? result.error : result.status >= 300 ? `HTTP ${result.status}` : null,
    };
  }
}

/** What an attempt says of the endpoint's health. A refused address or a 410 says nothing of it. */
function signalOf(result: SendResult): AttemptSignal {
  if (result.kind === "error") return result.blocked ? "neutral" : "failure";
  if (result.status >= 200 && result.status <= 299) return "success";
  if (result.status === 429) return "throttled";
  return result.status === 410 ? "neutral" : "failure";
}
