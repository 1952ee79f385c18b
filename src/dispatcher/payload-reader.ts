import type { Db } from "../store/db.js";
import { loadPayloads } from "../store/events.js";

/** Event ids in one query at most. */
const MAX_BATCH = 500;

interface Read {
  promise: Promise<string | undefined>;
  resolve(payload: string | undefined): void;
  reject(err: unknown): void;
}

/**
 * Reads event payloads from Postgres for attempts about to start. Every read asked for in one turn of the
 * event loop goes out in one query (under load the lanes' heads come due together, and a query each
 * would cost a round trip each), and a payload already being read is not read again.
 */
export class PayloadReader {
  /** Reads not yet sent, and reads in flight: both are joined rather than repeated. */
  private readonly reads = new Map<string, Read>();
  private unsent: string[] = [];

  constructor(private readonly db: Db) {}

  /** The event's payload; undefined when Postgres has no such event. */
  read(eventId: string): Promise<string | undefined> {
    const existing = this.reads.get(eventId);
    if (existing) return existing.promise;
    let resolve!: Read["resolve"];
    let reject!: Read["reject"];
    const promise = new Promise<string | undefined>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.reads.set(eventId, { promise, resolve, reject });
    if (this.unsent.push(eventId) === 1) setImmediate(() => this.send());
    return promise;
  }

  private send(): void {
    const ids = this.unsent;
    this.unsent = [];
    for (let i = 0; i < ids.length; i += MAX_BATCH) {
      const chunk = ids.slice(i, i + MAX_BATCH);
      const settle = (each: (read: Read, id: string) => void) => {
        for (const id of chunk) {
          each(this.reads.get(id)!, id);
          this.reads.delete(id);
        }
      };
      loadPayloads(this.db, chunk).then(
        (found) => settle((read, id) => read.resolve(found.get(id))),
        (err) => settle((read) => read.reject(err)),
      );
    }
  }
}
