import type { Logger } from "pino";
import { recordAttempts, type AttemptRecord } from "../store/deliveries.js";
import { isUniqueViolation, type Db } from "../store/db.js";

/**
 * Batches attempt records into one statement (group commit): one write in flight, and what arrives
 * meanwhile goes in the next, whole, as soon as it ends. The throughput of the dispatcher is the
 * throughput of these writes. A gathering delay (`maxDelayMs`) for the first record after a quiet spell
 * is off by default: 1 ms of it took a loop of 10 lanes on real Postgres from 5,767–7,264 records/s to
 * 3,061–4,095, and saved no CPU per record, in Node or in Postgres. `write` resolves once its record is committed, so a lane moves on
 * only after its head's outcome is durable; while Postgres is down the batch waits and retries.
 */
export class AttemptWriter {
  private pending: Pending[] = [];
  /** The next flush, when one is scheduled: on the next turn of the event loop, or after the gathering delay. */
  private scheduled: { immediate: boolean; cancel(): void } | undefined;
  /**
   * Writes in flight. One by default: what arrives during a write goes in the next, whole (group commit).
   * Three at once made batches a third the size (about 16 records), and each statement costs Postgres
   * some 300 µs besides its rows; one at a time used 7–13 % less CPU per delivery in alternating bench runs.
   * Two at once did not shorten the lanes' wait either: delivery alone 5,608–7,009/s against 5,786–6,912
   * (three alternated runs each), Postgres CPU per delivery 0.070–0.094 ms against 0.070–0.074. A commit's
   * fsync here takes 0.1 ms (pg_test_fsync), so the disk is not what the lanes wait for.
   */
  private readonly flushing = new Set<Promise<void>>();
  /** After this (Date.now()), a write that fails is given up rather than tried again: see `giveUpAfter`. */
  private giveUpAt = Infinity;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly options: { maxBatch: number; maxDelayMs: number; maxConcurrent?: number } = {
      maxBatch: 500,
      maxDelayMs: 0,
      maxConcurrent: 1,
    },
  ) {}

  /** Resolves once the record is committed; rejects only when the writer gave it up (`giveUpAfter`). */
  write(record: AttemptRecord): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pending.push({ record, resolve, reject });
      this.kick();
    });
  }

  /**
   * For a stopping process: records that cannot be written within `ms` from now (Postgres down) are given
   * up, and their writes reject, instead of holding the stop until Postgres is back. Their deliveries
   * stay pending, and the next owner sends them again (at least once).
   */
  giveUpAfter(ms: number): void {
    this.giveUpAt = Math.min(this.giveUpAt, Date.now() + ms);
  }

  private kick(afterFlush = false): void {
    if (this.pending.length === 0 || this.flushing.size >= (this.options.maxConcurrent ?? 1)) return;
    // Records that queued behind a write have waited for it already: they go at once, and so does every
    // record unless a gathering delay is set. "At once" is the next turn of the event loop, so the records
    // of this turn go together; not a timer of 0 ms, which Node makes 1 ms.
    const now = afterFlush || this.pending.length >= this.options.maxBatch || this.options.maxDelayMs <= 0;
    if (this.scheduled && (this.scheduled.immediate || !now)) return;
    this.scheduled?.cancel();
    const start = () => {
      this.scheduled = undefined;
      const flush: Promise<void> = this.flush().finally(() => {
        this.flushing.delete(flush);
        this.kick(true);
      });
      this.flushing.add(flush);
      this.kick();
    };
    if (now) {
      const immediate = setImmediate(start);
      this.scheduled = { immediate: true, cancel: () => clearImmediate(immediate) };
    } else {
      const timer = setTimeout(start, this.options.maxDelayMs);
      this.scheduled = { immediate: false, cancel: () => clearTimeout(timer) };
    }
  }

  private async flush(): Promise<void> {
    const batch = this.pending.splice(0, this.options.maxBatch);
    // Capped at 1 s: lanes wait on these records, and a try a second costs a down Postgres nothing.
    for (let backoff = 100, retry = false; ; backoff = Math.min(backoff * 2, 1_000), retry = true) {
      try {
        await recordAttempts(
          this.db,
          batch.map((b) => b.record),
        );
        for (const b of batch) b.resolve();
        return;
      } catch (err) {
        if (Date.now() >= this.giveUpAt) {
          this.log.error({ err, records: batch.length }, "stopping: attempt records given up; their deliveries stay pending and will be sent again");
          for (const b of batch) b.reject(err);
          return;
        }
        if (retry && isUniqueViolation(err)) {
          // A batch is one statement and its attempt ids are new: meeting them stored, a retry learns that
          // the try before it committed and only its reply was lost with the connection.
          for (const b of batch) b.resolve();
          return;
        }
        if (isRejectedData(err)) {
          // Postgres refuses something in the batch itself: retrying it whole would stall every lane.
          await this.writeOneByOne(batch);
          return;
        }
        this.log.error({ err, records: batch.length }, "recording attempts failed; retrying");
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  /**
   * Isolates the record Postgres refuses. It is written again without the receiver-controlled text; if
   * even that fails it is dropped, and its delivery stays pending, to be sent again (at least once).
   */
  private async writeOneByOne(batch: Pending[]): Promise<void> {
    for (const { record, resolve } of batch) {
      try {
        await recordAttempts(this.db, [record]);
      } catch (err) {
        this.log.error({ err, deliveryId: record.deliveryId }, "attempt record refused; storing it without the response body");
        await recordAttempts(this.db, [{ ...record, responseBody: null, error: record.error && "attempt error not storable" }]).catch(
          (again) => this.log.error({ err: again, deliveryId: record.deliveryId }, "attempt record dropped; the delivery stays pending"),
        );
      }
      resolve();
    }
  }

  async stop(): Promise<void> {
    while (this.pending.length > 0 || this.flushing.size > 0 || this.scheduled) {
      this.kick();
      await (this.flushing.size > 0 ? Promise.race(this.flushing) : new Promise((r) => setTimeout(r, 1)));
    }
  }
}

interface Pending {
  record: AttemptRecord;
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** SQLSTATE classes 22 (data exception) and 23 (integrity): the data is wrong, not the connection. */
function isRejectedData(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && /^2[23]/.test(code);
}
