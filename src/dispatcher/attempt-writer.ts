import type { Logger } from "pino";
import { recordAttempts, type AttemptRecord } from "../store/deliveries.js";
import type { Db } from "../store/db.js";

/**
 * Batches attempt records into one transaction every few milliseconds: the throughput of the dispatcher
 * is the throughput of these writes. `write` resolves once its record is committed, so a lane moves on
 * only after its head's outcome is durable; while Postgres is down the batch waits and retries.
 */
export class AttemptWriter {
  private pending: { record: AttemptRecord; resolve: () => void }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly options: { maxBatch: number; maxDelayMs: number } = { maxBatch: 500, maxDelayMs: 1 },
  ) {}

  write(record: AttemptRecord): Promise<void> {
    return new Promise((resolve) => {
      this.pending.push({ record, resolve });
      if (this.pending.length >= this.options.maxBatch) this.kick(0);
      else this.kick(this.options.maxDelayMs);
    });
  }

  private kick(delay: number): void {
    if (this.flushing) return;
    if (this.timer && delay > 0) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flushing = this.flush().finally(() => {
        this.flushing = undefined;
        if (this.pending.length > 0) this.kick(0);
      });
    }, delay);
  }

  private async flush(): Promise<void> {
    const batch = this.pending.splice(0, this.options.maxBatch);
    for (let backoff = 100; ; backoff = Math.min(backoff * 2, 5_000)) {
      try {
        await recordAttempts(
          this.db,
          batch.map((b) => b.record),
        );
        for (const b of batch) b.resolve();
        return;
      } catch (err) {
        if (this.stopped) throw err;
        this.log.error({ err, records: batch.length }, "recording attempts failed; retrying");
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  async stop(): Promise<void> {
    while (this.flushing || this.pending.length > 0 || this.timer) {
      if (!this.flushing && this.pending.length > 0) this.kick(0);
      await (this.flushing ?? new Promise((r) => setTimeout(r, 1)));
    }
    this.stopped = true;
  }
}
