import type { Logger } from "pino";
import type { DeliveryJob } from "../queue/job.js";
import type { LaneLoad } from "../store/deliveries.js";
import type { SignatureScheme, WebhookStatus } from "../store/schema.js";
import type { HealthSeen } from "../store/webhooks.js";
import { EndpointGate, HEALTHY, sameHealth, type AttemptSignal, type CircuitPolicy, type EndpointHealth } from "../core/endpoint-gate.js";

/** What a lane needs to know of its webhook, read fresh (cached briefly) before each attempt. */
export interface LaneWebhook {
  id: string;
  url: string;
  secrets: string[];
  status: WebhookStatus;
  orderedByKey: boolean;
  signatureScheme: SignatureScheme;
  /** 0: no limit. */
  rateLimitPerSecond: number;
  /** Retry delays in ms; null: the server's schedule. */
  retrySchedule: number[] | null;
  /** As last saved; the lane's gate starts from it. */
  health: EndpointHealth;
  /**
   * When the API last changed the webhook (its updated_at): a change that reset the health (re-enabled,
   * a new URL) makes the lane start its gate again from the saved health.
   */
  changedAt?: number;
}

/**
 * What became of an attempt, once it is durable in Postgres, and what it says of the endpoint; or that
 * it was not made, and the head stays as it is: the lease was no longer confirmed when the request would
 * have gone, or the job's schedule was stale and has been read again.
 */
export type LaneOutcome = (({ final: true } | { final: false; nextAttemptAt: number }) & { signal: AttemptSignal }) | { notStarted: true };

export interface LaneEngineDeps {
  /** Pending deliveries after `afterSeq`, in seq order, but for those of `leaveOutKeys` (keys a lane parked). */
  loadPending(webhookId: string, afterSeq: number, limit: number, leaveOutKeys?: readonly string[]): Promise<LaneLoad>;
  isPending(deliveryId: string): Promise<boolean>;
  getWebhook(webhookId: string): Promise<LaneWebhook | undefined>;
  /**
   * Sends the job and records the outcome; resolves only once the outcome is committed. Checks
   * `mayStart` again after its own waits (reading the payload), right before the request goes.
   */
  execute(job: DeliveryJob, webhook: LaneWebhook): Promise<LaneOutcome>;
  /** Gets the job ready to go next (reads its payload) while the one before it is in flight. */
  prefetch?(job: DeliveryJob): void;
  /**
   * The endpoint's health changed; called in order per webhook, with what the lane knew (the URL its gate
   * is for, the webhook's `changedAt` as the gate last saw it, the health before this change), so that a
   * save does not undo a reset the lane has not seen yet.
   */
  saveHealth(webhookId: string, health: EndpointHealth, seen: HealthSeen): void;
  /**
   * Whether attempts may start on the shard now: this process's lease on it is confirmed. When not, its
   * lanes wait until `leasesConfirmed()`. Absent: always.
   */
  mayStart?(shard: number): boolean;
  circuitPolicy: CircuitPolicy;
  maxInFlight: number;
  log: Logger;
  /** Jobs a lane keeps in memory; the rest stay in Postgres until the lane drains. */
  laneCapacity?: number;
  /**
   * Attempts in flight at once to one webhook (ordering keys let several go): a hanging endpoint holds
   * at most this many of the global slots and sockets.
   */
  maxInFlightPerLane?: number;
  /** How long an out-of-order job waits for its predecessor before the lane reads Postgres. */
  gapWaitMs?: number;
  /** How often a held (paused, disabled) lane looks at its webhook again. */
  holdRecheckMs?: number;
}

const IDLE_EVICT_MS = 60_000;
/** The longest a lane's timer is set for at once. */
const MAX_TIMER_MS = 3_600_000;
/** Queue positions whose jobs keep the payload they came with. */
const PAYLOADS_KEPT = 2;
/**
 * How long a lane remembers the seqs it finished. A sweep's answer names each webhook's lowest pending
 * seq as it was when the sweep read it; a lane that finished that seq since is ahead of the answer, not
 * behind a put-back delivery. A sweep slower than this costs a needless read of the record, no more.
 */
const RECENT_FINALS_MS = 30_000;
/**
 * How long a lane waits to read the record again after a read failed (Postgres down), doubling with each
 * failure in a row up to the longest: every lane with work reads, and a long outage would make thousands of
 * failing reads (and warnings) a second.
 */
const REREAD_AFTER_FAILURE_MS = 1_000;
const REREAD_AFTER_FAILURE_MAX_MS = 30_000;

/**
 * Per-webhook lanes. The invariant: a lane sends only the head of each ordering key (the whole webhook
 * is one key unless it opted in), and a head leaves the lane only when its outcome is committed, so
 * delivery n+1 is never attempted before delivery n is final.
 *
 * `knownThrough` is the lane's promise: every pending delivery with seq ≤ knownThrough is in `queue`.
 * Seqs are gap-free per webhook, so a job with the next seq extends it; any other job waits in `ahead`
 * until the gap is filled from Postgres.
 *
 * Ordering keys: a key whose head waits for a retry while the rest of it fills the lane is parked (see
 * `park`): the promise above then leaves its deliveries out, but for its head, until the head is final.
 *
 * Payloads: a lane keeps one only for the first jobs of its queue (`PAYLOADS_KEPT`) and asks for the next
 * one's while an attempt is in flight. Everything else waits as a head of a few hundred bytes, so the
 * memory of a backlog does not grow with its payloads (up to 256 KB each, hundreds of jobs a lane).
 */
export class LaneEngine {
  private readonly lanes = new Map<string, Lane>();
  private readonly waitingForSlot = new Set<Lane>();
  private readonly waitingForLease = new Set<Lane>();
  /** Shard → its drops whose lanes' attempts are still in flight (see dropShard). */
  private readonly settling = new Map<number, number>();
  private inFlight = 0;
  private readonly idle: Set<() => void> = new Set();
  private readonly sweeper: NodeJS.Timeout;
  readonly capacity: number;
  readonly gapWaitMs: number;
  readonly holdRecheckMs: number;

  constructor(readonly deps: LaneEngineDeps) {
    this.capacity = deps.laneCapacity ?? 256;
    this.gapWaitMs = deps.gapWaitMs ?? 1_000;
    this.holdRecheckMs = deps.holdRecheckMs ?? 1_000;
    this.sweeper = setInterval(() => this.evictIdle(), IDLE_EVICT_MS / 2);
    this.sweeper.unref();
  }

  /** A job from the feed. */
  offer(job: DeliveryJob): void {
    this.laneFor(job.webhookId, job.shard).offer(job);
  }

  /**
   * From the sweep: the webhook has due work in Postgres, and its lowest pending seq is `firstPendingSeq`
   * (as of `readAt`, when the sweep's query was sent); make sure a lane is on it.
   */
  wake(webhookId: string, shard: number, firstPendingSeq?: number, readAt = Date.now()): void {
    this.laneFor(webhookId, shard).poke(firstPendingSeq, readAt);
  }

  has(webhookId: string): boolean {
    return this.lanes.has(webhookId);
  }

  get size(): number {
    return this.lanes.size;
  }

  get activeAttempts(): number {
    return this.inFlight;
  }

  /**
   * Forgets the shard's lanes at once; resolves when their attempts in flight have been recorded. Until
   * then the shard's new lanes (it was claimed again meanwhile) start nothing: beside an attempt still in
   * flight, its delivery, pending in the record, went a second time, and the next one before it was final.
   * Then they are made afresh, from a read of the record that has those attempts' outcomes.
   */
  async dropShard(shard: number): Promise<void> {
    const dropped = [...this.lanes.values()].filter((lane) => lane.shard === shard);
    for (const lane of dropped) this.remove(lane);
    this.settling.set(shard, (this.settling.get(shard) ?? 0) + 1);
    try {
      await Promise.all(dropped.map((lane) => lane.settled()));
    } finally {
      const left = this.settling.get(shard)! - 1;
      if (left > 0) this.settling.set(shard, left);
      else {
        this.settling.delete(shard);
        for (const lane of [...this.lanes.values()]) {
          if (lane.shard !== shard) continue;
          this.remove(lane);
          this.laneFor(lane.webhookId, shard);
        }
      }
    }
  }

  /** Whether the shard's lanes may start attempts: its lease is confirmed, and no dropped lane of it has one in flight. */
  mayStart(shard: number): boolean {
    return !this.settling.has(shard) && this.deps.mayStart?.(shard) !== false;
  }

  /** Stops every lane; resolves when nothing is in flight. */
  async stop(): Promise<void> {
    clearInterval(this.sweeper);
    for (const lane of [...this.lanes.values()]) this.remove(lane);
    if (this.inFlight > 0) await new Promise<void>((resolve) => this.idle.add(resolve));
  }

  remove(lane: Lane): void {
    lane.close();
    if (this.lanes.get(lane.webhookId) === lane) this.lanes.delete(lane.webhookId);
    this.waitingForSlot.delete(lane);
    this.waitingForLease.delete(lane);
  }

  /** A lane that may not start (see mayStart) waits here rather than on a timer of its own. */
  waitForLease(lane: Lane): void {
    this.waitingForLease.add(lane);
  }

  /** The leases were confirmed again: the lanes that waited for it go on. */
  leasesConfirmed(): void {
    const waiting = [...this.waitingForLease];
    this.waitingForLease.clear();
    for (const lane of waiting) lane.pump();
  }

  /** A lane asks for a global slot; false means it is queued and will be pumped when one frees. */
  acquireSlot(lane: Lane): boolean {
    if (this.inFlight < this.deps.maxInFlight) {
      this.inFlight++;
      return true;
    }
    this.waitingForSlot.add(lane);
    return false;
  }

  releaseSlot(): void {
    this.inFlight--;
    this.offerSlot();
    if (this.inFlight === 0) {
      for (const resolve of this.idle) resolve();
      this.idle.clear();
    }
  }

  /**
   * A free slot goes to the lane that has waited longest. A lane that does not take it (paused, deleted,
   * its lease unconfirmed, its gate says wait) passes it on when its pump ends: handed to one lane only,
   * a slot it let go stayed free while the others waited for the next sweep.
   */
  offerSlot(): void {
    if (this.inFlight >= this.deps.maxInFlight) return;
    const next = this.waitingForSlot.values().next();
    if (next.done) return;
    this.waitingForSlot.delete(next.value);
    next.value.offerSlot();
  }

  private laneFor(webhookId: string, shard: number): Lane {
    let lane = this.lanes.get(webhookId);
    if (!lane) {
      lane = new Lane(this, webhookId, shard);
      this.lanes.set(webhookId, lane);
    }
    return lane;
  }

  private evictIdle(): void {
    const cutoff = Date.now() - IDLE_EVICT_MS;
    for (const lane of this.lanes.values()) {
      if (lane.isIdleSince(cutoff)) this.remove(lane);
    }
  }
}

class Lane {
  private queue: DeliveryJob[] = [];
  private readonly ahead = new Map<number, DeliveryJob>();
  private knownThrough = 0;
  private loaded = false;
  /** More pending deliveries exist in Postgres past knownThrough than the lane holds. */
  private truncated = false;
  /**
   * Seqs past knownThrough up to here are taken from the record only, not from the feed: the last seq a
   * cut read saw committed, or the position before it moved back. Some of them went final (here, before
   * another process took the shard, or here more than RECENT_FINALS_MS ago), and a late or redelivered
   * feed copy of one, appended as the next seq without asking, was sent again.
   */
  private recordOnlyThrough = 0;
  /** Jobs dropped for want of room in `ahead`: a load that began before a drop cannot clear `truncated`. */
  private overflows = 0;
  private loading: Promise<void> | undefined;
  /** Deliveries that became final while a load was in flight: its snapshot may still list them as pending. */
  private readonly finalWhileLoading = new Set<string>();
  /**
   * Seq → when it left the queue final, oldest first, for RECENT_FINALS_MS, and its attempt count then.
   * Attempts only grow, and a put-back keeps the count: a copy with fewer predates the final outcome, and
   * one pending now was put back since by a replay the lane has no word of yet. Taken as it came, it went
   * at once, before its turn in the replay's pace and before the replay's deliveries below it.
   */
  private readonly recentFinals = new Map<number, { at: number; attempts: number }>();
  /**
   * Delivery id → the retry its last attempt here committed, kept until RECENT_FINALS_MS past it is due.
   * A copy of the delivery from before that attempt (a read whose snapshot predates the outcome, a late
   * feed message) is taken with this schedule: taken as it came, it went at once, hours before its
   * retry, with the attempt count from before it (see insertSorted).
   */
  private readonly recentRetries = new Map<string, { attempts: number; nextAttemptAt: number; until: number }>();
  /**
   * Jobs in flight. Their ordering keys are worked out at each pump under the webhook's current setting:
   * a key kept from the start of an attempt let the same job start again beside itself when
   * `ordered_by_key` changed meanwhile.
   */
  private readonly inFlight = new Set<DeliveryJob>();
  private readonly attempts = new Set<Promise<void>>();
  /**
   * Parked ordering keys: the lane holds each one's head only, and `knownThrough` promises nothing of the
   * rest of them (see park). Empty unless the webhook is ordered by key.
   */
  private readonly parked = new Set<string>();
  /** The lowest seq a parked key left in Postgres: below it the lane holds every pending delivery. */
  private parkedFrom = Infinity;
  /** Counts the times parked keys were let go: a read begun before that left them out, and is not used. */
  private unparkings = 0;
  /** The webhook's highest `requeues` the lane has seen, on a job or in a read of the record. */
  private requeuesSeen = 0;
  /**
   * The highest `requeues` a read from the start has answered for: what those put back is in the queue,
   * or past the lane's position. Below `requeuesSeen`, nothing starts until such a read has answered.
   */
  private requeuesRead = 0;
  private loadFailedAt = -Infinity;
  /** Reads failed in a row. */
  private loadFailures = 0;
  /** The lowest `afterSeq` of the reads a failure held back, made again after the back-off (see rereadAt). */
  private rereadFrom = Infinity;
  private rereadTimer: NodeJS.Timeout | undefined;
  /** The engine handed this lane a free slot; passed on if the pump does not take one. */
  private slotOffered = false;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;
  private gapTimer: NodeJS.Timeout | undefined;
  private pumping = false;
  /** Rate limit, 429 slow-down and circuit breaker; made from the saved health on the first pump. */
  private gate: EndpointGate | undefined;
  private gateUrl = "";
  private gateChangedAt: number | undefined;
  /** When the lane last started a replayed job: replays are paced here, however late the lane saw them. */
  private lastPacedStart = -Infinity;
  private pumpAgain = false;
  private closed = false;
  private lastActivity = Date.now();

  constructor(
    private readonly engine: LaneEngine,
    readonly webhookId: string,
    readonly shard: number,
  ) {
    this.load();
  }

  offer(job: DeliveryJob): void {
    if (this.closed) return;
    this.lastActivity = Date.now();
    // Published after deliveries were put back, maybe below the lane's position: the lane reads from the
    // start before it starts anything (see readFirst), whatever becomes of this job (held, queued already).
    if (job.requeues !== undefined && job.requeues > this.requeuesSeen) {
      this.requeuesSeen = job.requeues;
      this.pump();
    }
    if (this.loaded && job.seq > this.knownThrough && job.seq <= this.recordOnlyThrough) {
      // The lane is truncated meanwhile, and reads it from Postgres in its turn, pending or not.
      return;
    }
    // (A parked key's next job takes no room: the lane only moves its position past it.)
    if (!this.loaded || job.seq > this.knownThrough + 1 || (this.queue.length >= this.engine.capacity && !this.parked.has(job.orderingKey))) {
      this.holdAhead(job);
      return;
    }
    // The next seq, unless the lane finished it lately: its position moved back below it since (a read
    // of the record cut short), and this is a late or repeated copy.
    if (job.seq === this.knownThrough + 1 && !this.recentFinals.has(job.seq)) {
      this.append(job);
      this.absorbAhead();
      this.pump();
      return;
    }
    this.takeIfPending(job);
  }

  /**
   * A job at or below knownThrough (a repeat, or a delivery put back by a retry by hand), or one the lane
   * finished lately: taken only if the record says it is pending, and it did not become final here while
   * the record was asked (a sweep's read sent it meanwhile; the stale answer sent it a second time).
   */
  private takeIfPending(job: DeliveryJob): void {
    if (this.queue.some((j) => j.deliveryId === job.deliveryId)) return;
    // Not even asked about: the feed's late copies of a parked key's deliveries were a pending check each.
    if (this.leftToRecord(job)) return;
    const asked = Date.now();
    void this.engine.deps.isPending(job.deliveryId).then((pending) => {
      const final = this.recentFinals.get(job.seq);
      if (!pending || this.closed || (final && (final.at >= asked || job.attempts < final.attempts))) return;
      if (this.leftToRecord(job)) return;
      if (job.seq > this.knownThrough + 1) {
        // The position moved back meanwhile (a key let go, a cut read): queued here, it went before the
        // pending deliveries of its key between. The lane reads it from Postgres in its turn.
        this.truncated = true;
        this.load();
        return;
      }
      if (this.insertSorted(job)) this.pump();
    }, (err) => this.engine.deps.log.warn({ err, deliveryId: job.deliveryId }, "pending check failed; the sweep will retry"));
  }

  /** A parked key's job past the head the lane holds: Postgres has it, and the lane reads it when the key is let go. */
  private leftToRecord(job: DeliveryJob): boolean {
    return this.parked.has(job.orderingKey) && job.seq >= this.parkedFrom;
  }

  /** The sweep found due work for this webhook in Postgres, reading it at `readAt`. */
  poke(firstPendingSeq: number | undefined, readAt: number): void {
    if (this.closed || this.loading) return;
    // The sweep's query answered after the lane's last read failed: Postgres is back, read now.
    if (readAt > this.loadFailedAt) this.loadFailures = 0;
    if (
      this.loaded &&
      firstPendingSeq !== undefined &&
      firstPendingSeq <= this.knownThrough &&
      !this.queue.some((j) => j.seq === firstPendingSeq) &&
      !((this.recentFinals.get(firstPendingSeq)?.at ?? -Infinity) >= readAt)
    ) {
      // Put back behind the lane's position (a retry by hand, a replay): read from there; the load merges.
      // Not when the lane finished that seq after the sweep read it: with a thousand busy lanes, those
      // stale answers made a read of up to `capacity` deliveries per lane and sweep, and cut delivery
      // to a quarter of its rate until the backlog was older than the sweep's window.
      this.load(firstPendingSeq - 1);
      return;
    }
    if (this.attempts.size > 0) return;
    const head = this.queue[0];
    if (head && !this.truncated && head.nextAttemptAt <= Date.now()) {
      this.pump();
      return;
    }
    // An idle lane rereads from the start. That finds deliveries put back below knownThrough: a replay
    // publishes none to the feed, and the sweep names only the lowest pending seq, which behind a head
    // waiting for its retry is that head, held here (with ordering keys, a replayed delivery of another
    // key above it went after that key's later ones). It finds seqs past the position whose feed message
    // has not come (lost with the stream, or never published), which with ordering keys may go beside a
    // head that waits for hours. It trims a lane grown past its capacity. And with parked keys it lets
    // them go and reads a whole lane, and the pump parks them again.
    this.load(0);
  }

  isIdleSince(cutoff: number): boolean {
    return (
      this.queue.length === 0 && this.ahead.size === 0 && this.attempts.size === 0 && !this.loading && this.lastActivity < cutoff
    );
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.gapTimer);
    clearTimeout(this.rereadTimer);
  }

  async settled(): Promise<void> {
    await Promise.all([...this.attempts]);
  }

  private append(job: DeliveryJob): void {
    // At the end but for a job in flight past the lane's position (see load): sorted all the same. A
    // parked key's is left to Postgres, where the lane reads it when the key is let go.
    if (!this.parked.has(job.orderingKey)) this.insertSorted(job);
    this.knownThrough = job.seq;
  }

  /**
   * In seq order; false when the queue holds that seq already (a seq is one delivery): a second copy of a
   * job in flight, left when the first went final, was sent again.
   */
  private insertSorted(job: DeliveryJob): boolean {
    // Attempts only grow (a put-back starts from a final outcome, which counted one more): a copy with
    // fewer than the lane's last retry here is older than that retry.
    const retry = this.recentRetries.get(job.deliveryId);
    if (retry && retry.attempts > job.attempts) {
      job.attempts = retry.attempts;
      job.nextAttemptAt = retry.nextAttemptAt;
    }
    const last = this.queue.at(-1);
    let index = !last || last.seq < job.seq ? -1 : this.queue.findIndex((j) => j.seq >= job.seq);
    if (index === -1) index = this.queue.length;
    else if (this.queue[index]!.seq === job.seq) return false;
    if (index >= PAYLOADS_KEPT) job.payload = undefined;
    this.queue.splice(index, 0, job);
    return true;
  }

  private holdAhead(job: DeliveryJob): void {
    job.payload = undefined;
    if (this.ahead.size < this.engine.capacity) this.ahead.set(job.seq, job);
    else {
      this.truncated = true;
      this.overflows++;
    }
    if (this.loaded && !this.gapTimer) {
      this.gapTimer = setTimeout(() => {
        this.gapTimer = undefined;
        if (this.ahead.size > 0 && this.queue.length < this.engine.capacity) this.load();
      }, this.engine.gapWaitMs);
    }
  }

  private absorbAhead(): void {
    for (const seq of this.ahead.keys()) if (seq <= Math.max(this.knownThrough, this.recordOnlyThrough)) this.ahead.delete(seq);
    while (this.queue.length < this.engine.capacity) {
      const next = this.ahead.get(this.knownThrough + 1);
      if (!next) break;
      this.ahead.delete(next.seq);
      // Finished lately: a stale copy, held while the lane's position was past it (see offer).
      if (this.recentFinals.has(next.seq)) {
        this.takeIfPending(next);
        break;
      }
      this.append(next);
    }
  }

  /** Reads the pending deliveries past knownThrough from Postgres, the record. */
  private load(afterSeq = this.knownThrough): void {
    if (this.loading || this.closed) return;
    if (Date.now() < this.rereadAt()) {
      // Not at once after a failed read (Postgres down): the pump that follows it read again every few
      // milliseconds, about 850 reads a second of one lane.
      this.rereadLater(afterSeq);
      return;
    }
    let letGo = false;
    if (afterSeq < this.knownThrough && this.parked.size > 0) {
      // From below the lane's position: parked keys are read again with the rest.
      letGo = true;
      this.unpark();
      afterSeq = Math.min(afterSeq, this.knownThrough);
    }
    const fromBelow = afterSeq < this.knownThrough;
    // Having let keys go, a read is mostly of jobs the lane holds: sized by its room, it refilled the lane
    // one short of full, where nothing parks, and the keys stayed let go.
    const limit = letGo ? this.engine.capacity : Math.max(1, this.engine.capacity - this.queue.length);
    const overflowsBefore = this.overflows;
    const unparkings = this.unparkings;
    const requeuesBefore = this.requeuesSeen;
    let stale = false;
    this.finalWhileLoading.clear();
    this.loading = this.engine.deps
      .loadPending(this.webhookId, afterSeq, limit, [...this.parked])
      .then(({ jobs, lastSeq, requeues }) => {
        if (this.closed) return;
        // Keys it left out were let go meanwhile: its lastSeq promises nothing of them. Read again.
        if (unparkings !== this.unparkings) {
          stale = true;
          return;
        }
        this.loadFailures = 0;
        this.requeuesSeen = Math.max(this.requeuesSeen, requeues);
        // From the start, it has what every count seen before it began put back: that requeue committed
        // before the ingest that carried the count, and the job came after that commit. (Not only its own
        // count: one that read lower, however it came to, would have the lane read for ever.) Unless it
        // lists as pending a delivery that went final here while it was out: it may have been put back
        // after that outcome, or not; the next read tells.
        if (afterSeq === 0 && !jobs.some((j) => this.finalWhileLoading.has(j.deliveryId))) {
          this.requeuesRead = Math.max(this.requeuesRead, requeues, requeuesBefore);
        }
        const known = new Set(this.queue.map((j) => j.deliveryId));
        // (No parked key's among them: the read left those out, and no key is parked while a read is out.)
        for (const job of jobs) if (!known.has(job.deliveryId) && !this.finalWhileLoading.has(job.deliveryId)) this.insertSorted(job);
        this.finalWhileLoading.clear();
        const cut = jobs.length >= limit;
        if (cut) this.recordOnlyThrough = Math.max(this.recordOnlyThrough, lastSeq);
        if (cut && fromBelow && jobs.at(-1)!.seq < this.knownThrough) {
          // Read from below the lane's position (deliveries put back: a replay, retries by hand) and cut
          // short: between the cut and knownThrough may lie more of them, which no later job may pass.
          // The position moves back to the cut, and the jobs past it leave the queue but for those in
          // flight; Postgres has them, and the lane reads on from the cut as it drains. (Only a read from
          // below: a read from the position ends below it when the feed moved it on past parked keys'
          // jobs meanwhile, and everything up to it is held or parked.)
          const cutAt = jobs.at(-1)!.seq;
          this.knownThrough = cutAt;
          this.queue = this.queue.filter((j) => j.seq <= cutAt || this.inFlight.has(j));
          this.ahead.clear();
        } else {
          // A whole read's snapshot may predate jobs the feed brought while it was out: they stay known.
          this.knownThrough = Math.max(this.knownThrough, cut ? jobs.at(-1)!.seq : lastSeq);
        }
        this.truncated = cut || this.overflows !== overflowsBefore;
        this.loaded = true;
        this.absorbAhead();
      })
      .catch((err) => {
        this.loadFailedAt = Date.now();
        this.loadFailures++;
        this.rereadLater(afterSeq);
        // Once per outage: the sweep's and the attempt writer's own warnings tell that it goes on.
        if (this.loadFailures === 1) this.engine.deps.log.warn({ err, webhookId: this.webhookId }, "lane load failed; reading again shortly");
      })
      .finally(() => {
        this.loading = undefined;
        if (stale) this.load();
        this.pump();
      });
  }

  /**
   * A read that failed, or was held back after a failure, is made again after the back-off, from the
   * lowest seq asked for: left to the pump, a read from below (a put-back the sweep named) or a lane's
   * first read was not made again until a sweep, and with ordering keys a gap waited behind a head's retry.
   */
  private rereadLater(afterSeq: number, delayMs = Math.max(10, this.rereadAt() - Date.now())): void {
    this.rereadFrom = Math.min(this.rereadFrom, afterSeq);
    if (this.rereadTimer) return;
    this.rereadTimer = setTimeout(() => {
      this.rereadTimer = undefined;
      if (this.closed) return;
      // Another read is out (Postgres is back): this one after it.
      if (this.loading) return this.rereadLater(this.rereadFrom, REREAD_AFTER_FAILURE_MS);
      const from = Math.min(this.rereadFrom, this.knownThrough);
      this.rereadFrom = Infinity;
      this.load(from);
    }, delayMs);
  }

  /** When a read may be made again after the failures in a row so far. */
  private rereadAt(): number {
    if (this.loadFailures === 0) return -Infinity;
    return this.loadFailedAt + Math.min(REREAD_AFTER_FAILURE_MAX_MS, REREAD_AFTER_FAILURE_MS * 2 ** (this.loadFailures - 1));
  }

  pump(): void {
    if (this.closed || !this.loaded) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    void this.pumpOnce()
      .catch((err) => this.engine.deps.log.error({ err, webhookId: this.webhookId }, "lane pump failed"))
      .finally(() => {
        this.pumping = false;
        if (this.slotOffered) {
          this.slotOffered = false;
          this.engine.offerSlot();
        }
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.pump();
        }
      });
  }

  /** A slot is free for this lane: see LaneEngine.offerSlot. */
  offerSlot(): void {
    if (this.closed || !this.loaded) return this.engine.offerSlot();
    this.slotOffered = true;
    this.pump();
  }

  /**
   * Deliveries were put back to pending (a replay, a retry by hand) before a job the lane holds was
   * published: below its position, they were found by the sweep seconds later, and meanwhile the jobs
   * published after them went first. So nothing starts until a read from the start has them: true while
   * that is so, and the lane is reading (or waits to read again after a failed read).
   */
  private readFirst(): boolean {
    if (this.requeuesRead >= this.requeuesSeen) return false;
    this.load(0);
    return true;
  }

  private async pumpOnce(): Promise<void> {
    if (this.readFirst()) return;
    if (this.queue.length === 0) {
      if (this.truncated || this.ahead.size > 0) this.load();
      return;
    }
    const webhook = await this.engine.deps.getWebhook(this.webhookId);
    if (this.closed) return;
    // After the wait, not before it: the webhook's confirmation waits for Postgres, and a partition
    // from Postgres is when the lease may lapse and another process take the shard.
    if (!this.engine.mayStart(this.shard)) {
      // Another process may own the shard by now: sending beside it would break the lane's order.
      this.engine.waitForLease(this);
      return;
    }
    // Again after the wait: word of a requeue may have come meanwhile.
    if (this.readFirst()) return;
    if (!webhook || webhook.status === "deleted") {
      // Its pending deliveries were cancelled with it.
      this.engine.remove(this);
      return;
    }
    if (webhook.status !== "active") {
      // Paused or disabled: hold everything, fail nothing, look again shortly. The gate is rebuilt from
      // the saved health on resumption (re-enabling a webhook resets it).
      this.gate = undefined;
      this.schedule(Date.now() + this.engine.holdRecheckMs);
      return;
    }
    if (!this.gate || this.gateUrl !== webhook.url || (webhook.changedAt !== this.gateChangedAt && sameHealth(webhook.health, HEALTHY))) {
      // A new URL is a new endpoint, and re-enabling a webhook starts it afresh: both reset the saved
      // health. A lane whose webhook was disabled while its head waited for a retry never saw it disabled,
      // and without this kept its old failures: one more, and the webhook was disabled again.
      this.gate = new EndpointGate(this.engine.deps.circuitPolicy, webhook.health);
      this.gateUrl = webhook.url;
    }
    this.gateChangedAt = webhook.changedAt;
    const now = Date.now();
    const seenKeys = new Set<string>();
    let earliest = Infinity;
    const perLane = this.engine.deps.maxInFlightPerLane ?? 16;
    const keyOf = (job: DeliveryJob) => (webhook.orderedByKey ? job.orderingKey : "");
    const busyKeys = new Set([...this.inFlight].map(keyOf));
    for (const job of this.queue) {
      // Room again when an attempt ends: its completion pumps the lane.
      if (this.attempts.size >= perLane) break;
      const key = keyOf(job);
      if (seenKeys.has(key)) continue;
      seenKeys.add(key);
      if (!busyKeys.has(key)) {
        const paceWait = job.paceMs ? this.lastPacedStart + job.paceMs - now : 0;
        if (job.nextAttemptAt > now) earliest = Math.min(earliest, job.nextAttemptAt);
        else if (paceWait > 0) earliest = Math.min(earliest, now + paceWait);
        else {
          // The slot first: the gate counts a start (a token, a probe) only when it says go.
          if (!this.engine.acquireSlot(this)) break;
          this.slotOffered = false;
          const wait = this.gate.admit(now, webhook.rateLimitPerSecond);
          if (wait > 0) {
            this.engine.releaseSlot();
            earliest = Math.min(earliest, now + wait);
            break;
          }
          if (job.paceMs) this.lastPacedStart = now;
          this.start(job, key, webhook, this.gate.admittedProbe);
        }
      }
      if (!webhook.orderedByKey) break;
    }
    if (earliest === Infinity) return;
    this.schedule(earliest);
    // Some head waits: with the lane full, maybe for a retry, holding up the keys the lane has no room for.
    if (webhook.orderedByKey && this.queue.length >= this.engine.capacity && this.park(now)) this.load();
  }

  /**
   * Ordered by key, a lane full of one key's deliveries whose head waits for its retry (for hours, maybe)
   * had no room for the other keys' behind them, and they waited with it. Such a key is parked: the lane
   * keeps its head, leaves the rest of it in Postgres and reads past them, until the head is final. True
   * if a key was parked (the lane has room to read on).
   */
  private park(now: number): boolean {
    // Not under a read in flight: it may be from below the position, for a put-back of a key parked meanwhile
    // that its answer then skipped (and a stale answer was read again from the position, above it). The
    // read's end pumps the lane, and that pump parks.
    if (this.loading) return false;
    const heads = new Map<string, DeliveryJob>();
    const held = new Map<string, number>();
    for (const job of this.queue) {
      if (!heads.has(job.orderingKey)) heads.set(job.orderingKey, job);
      held.set(job.orderingKey, (held.get(job.orderingKey) ?? 0) + 1);
    }
    const busy = new Set([...this.inFlight].map((j) => j.orderingKey));
    let parkedAny = false;
    for (const [key, head] of heads) {
      if (waitsForRetry(head, now) && held.get(key)! > 1 && !busy.has(key)) {
        this.parked.add(key);
        parkedAny = true;
      }
    }
    if (!parkedAny) return false;
    this.queue = this.queue.filter((job) => {
      // A job in flight stays, whatever its place (a put-back may have come before a parked head in flight):
      // dropped, it was read again while in flight, and that copy sent a second time.
      if (!this.parked.has(job.orderingKey) || heads.get(job.orderingKey) === job || this.inFlight.has(job)) return true;
      this.parkedFrom = Math.min(this.parkedFrom, job.seq);
      return false;
    });
    this.truncated = true;
    return true;
  }

  /**
   * Lets every parked key go. The lane's position moves back to below the lowest seq they left in
   * Postgres, and it reads on from there: everything pending up to its position is in the queue again.
   */
  private unpark(): void {
    if (this.parked.size === 0) return;
    this.parked.clear();
    this.unparkings++;
    const below = this.parkedFrom - 1;
    this.parkedFrom = Infinity;
    if (below >= this.knownThrough) return;
    this.recordOnlyThrough = Math.max(this.recordOnlyThrough, this.knownThrough);
    this.knownThrough = below;
    this.queue = this.queue.filter((j) => j.seq <= below || this.inFlight.has(j));
    this.ahead.clear();
    this.truncated = true;
  }

  private start(job: DeliveryJob, key: string, webhook: LaneWebhook, probe: boolean): void {
    this.inFlight.add(job);
    const requeuesAtStart = this.requeuesSeen;
    const attempt = this.engine.deps
      .execute(job, webhook)
      .then((outcome) => {
        if ("notStarted" in outcome) {
          // Untouched at the head; the pump that follows finds the lease unconfirmed and waits for it.
          // A probe that never went is given back, or the half-open circuit waited for it for good.
          this.recordSignal("neutral", probe);
          return;
        }
        this.recordSignal(outcome.signal, probe);
        if (outcome.final) {
          // Word of a requeue came while this was in flight: a read from the start that answered meanwhile
          // may have found this delivery put back again (a retry by hand right after its outcome was
          // committed) and taken it for the copy in flight, which now leaves. Read from the start again.
          if (this.requeuesSeen > requeuesAtStart) this.requeuesRead = Math.min(this.requeuesRead, requeuesAtStart);
          this.leaveQueue(job);
          if (this.loading) this.finalWhileLoading.add(job.deliveryId);
          // A neutral final may have made no attempt (expired, or gone from the record): counted as none.
          this.rememberFinal(job.seq, outcome.signal === "neutral" ? job.attempts : job.attempts + 1);
          this.recentRetries.delete(job.deliveryId);
          // A parked key's head is done: the rest of the key may go, read from Postgres.
          if (this.parked.has(job.orderingKey)) this.unpark();
        } else {
          job.attempts++;
          job.nextAttemptAt = outcome.nextAttemptAt;
          this.rememberRetry(job);
          // A retry may be hours away; it reads the payload again when it comes due.
          job.payload = undefined;
        }
      })
      .catch((err) => {
        this.engine.deps.log.error({ err, deliveryId: job.deliveryId }, "attempt failed to run; trying again shortly");
        this.recordSignal("neutral", probe);
        job.nextAttemptAt = Date.now() + 1_000;
      })
      .finally(() => {
        this.attempts.delete(attempt);
        this.inFlight.delete(job);
        if (job.seq > this.knownThrough + 1) {
          // Kept past the lane's position because it was in flight when a cut read moved the position
          // back (see load), and not final: the deliveries between are unread and go first (it went
          // before replayed ones). Postgres has it, and the lane reads it in its turn.
          this.leaveQueue(job);
          this.truncated = true;
        }
        this.lastActivity = Date.now();
        this.engine.releaseSlot();
        this.absorbAhead();
        if (this.queue.length < this.engine.capacity / 2 && this.truncated) this.load();
        this.pump();
      });
    this.attempts.add(attempt);
    const next = this.nextInLine(job, key, webhook.orderedByKey);
    if (next) this.engine.deps.prefetch?.(next);
  }

  /** In place: a backlogged lane holds up to `capacity` jobs, and a filtered copy per attempt was garbage. */
  private leaveQueue(job: DeliveryJob): void {
    const index = this.queue.indexOf(job);
    if (index >= 0) this.queue.splice(index, 1);
  }

  private rememberFinal(seq: number, attempts: number): void {
    const now = Date.now();
    for (const [old, { at }] of this.recentFinals) {
      if (at > now - RECENT_FINALS_MS) break;
      this.recentFinals.delete(old);
    }
    // Deleted first so that the map stays in time order when a seq put back is finished again.
    this.recentFinals.delete(seq);
    this.recentFinals.set(seq, { at: now, attempts });
  }

  private rememberRetry(job: DeliveryJob): void {
    const now = Date.now();
    // One entry per key whose head waits for a retry, mostly: swept only when there are many.
    if (this.recentRetries.size >= this.engine.capacity) {
      for (const [id, retry] of this.recentRetries) if (retry.until <= now) this.recentRetries.delete(id);
    }
    const until = Math.max(now, job.nextAttemptAt) + RECENT_FINALS_MS;
    this.recentRetries.set(job.deliveryId, { attempts: job.attempts, nextAttemptAt: job.nextAttemptAt, until });
  }

  /** The job that follows `job` on its ordering key (on the whole lane, unless the webhook opted in). */
  private nextInLine(job: DeliveryJob, key: string, orderedByKey: boolean): DeliveryJob | undefined {
    for (let i = this.queue.indexOf(job) + 1; i < this.queue.length; i++) {
      const candidate = this.queue[i]!;
      if (!orderedByKey || candidate.orderingKey === key) return candidate;
    }
    return undefined;
  }

  private recordSignal(signal: AttemptSignal, probe: boolean): void {
    if (!this.gate) return;
    const previous = this.gate.snapshot;
    const changed = this.gate.record(signal, Date.now(), probe);
    // A 429 at the slow-down's cap changes nothing, yet counts toward auto-disable, which the save checks.
    if (changed || signal === "throttled") this.engine.deps.saveHealth(this.webhookId, this.gate.snapshot, { url: this.gateUrl, changedAt: this.gateChangedAt, previous });
  }

  private schedule(at: number): void {
    if (this.timer && this.timerAt <= at) return;
    clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(
      () => {
        this.timer = undefined;
        this.timerAt = Infinity;
        this.pump();
      },
      // Node runs a delay past 2^31 − 1 ms (24.8 days: a slow replay, a long retry schedule) after 1 ms,
      // and the lane spun; a pump before its time sets the timer again.
      Math.min(Math.max(0, at - Date.now()), MAX_TIMER_MS),
    );
  }
}

/**
 * Whether a job waits for a retry: tried before and not yet due. From its data, not from what this lane
 * saw: a lane rebuilt from Postgres (a restart, a takeover) or after keys were let go holds new objects.
 * Not a paced replay's, which waits for its turn: parking that made every replayed delivery read the
 * lane's window again.
 */
function waitsForRetry(job: DeliveryJob, now: number): boolean {
  return job.nextAttemptAt > now && job.attempts > 0 && job.paceMs === undefined;
}
