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
    const outcome = await this.commit(batch.map((b) => b.record));
    if (outcome === "written") for (const b of batch) b.resolve();
    // Postgres refuses something in the batch itself: retrying it whole would stall every lane.
    else if ("refused" in outcome) await this.writeOneByOne(batch);
    else for (const b of batch) b.reject(outcome.givenUp);
  }

  /**
   * Writes the records in one statement, trying again while Postgres cannot be reached (capped at 1 s
   * apart: lanes wait on these records, and a try a second costs a down Postgres nothing), until the
   * writer gives up (`giveUpAfter`). Refused: Postgres refused the data itself.
   */
  private async commit(records: AttemptRecord[]): Promise<"written" | { refused: unknown } | { givenUp: unknown }> {
    for (let backoff = 100, retry = false; ; backoff = Math.min(backoff * 2, 1_000), retry = true) {
      try {
        await recordAttempts(this.db, records);
        return "written";
      } catch (err) {
        if (Date.now() >= this.giveUpAt) {
          this.log.error({ err, records: records.length }, "stopping: attempt records given up; their deliveries stay pending and will be sent again");
          return { givenUp: err };
        }
        // A statement's attempt ids are new: meeting them stored, a retry learns that the try before it
        // committed and only its reply was lost with the connection.
        if (retry && isUniqueViolation(err)) return "written";
        if (isRejectedData(err)) return { refused: err };
        this.log.error({ err, records: records.length }, "recording attempts failed; retrying");
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  /**
   * Isolates the record Postgres refuses and writes it again without the receiver-controlled text. One
   * that cannot be written even so is not reported written: its lane sends the delivery again, in its
   * place. Reported written, the lane went on to the next while the delivery stayed pending, and sent it
   * again after later ones; a connection lost during these writes did that to records with nothing wrong.
   */
  private async writeOneByOne(batch: Pending[]): Promise<void> {
    for (const { record, resolve, reject } of batch) {
      let outcome = await this.commit([record]);
      if (outcome !== "written" && "refused" in outcome) {
        this.log.error({ err: outcome.refused, deliveryId: record.deliveryId }, "attempt record refused; storing it without the response body");
        outcome = await this.commit([{ ...record, responseBody: null, error: record.error && "attempt error not storable" }]);
      }
      if (outcome === "written") resolve();
      else if ("refused" in outcome) {
        this.log.error({ err: outcome.refused, deliveryId: record.deliveryId }, "attempt record refused even without the response; the attempt is made again");
        reject(outcome.refused);
      } else reject(outcome.givenUp);
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
