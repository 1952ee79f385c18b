import type { Subscriber } from "../store/ingest.js";

/**
 * The subscribers each ingest was last planned from, per tenant and set of event-type patterns. The
 * ingest statement checks under lock that they are still the ones, so a stale list costs one statement
 * that writes nothing and a fresh read, never a wrong delivery; a current one saves the read, half the
 * round trips of an ingest.
 *
 * Bounded by the subscribers held, counted per list (a `*` subscriber is in every list of its tenant),
 * and by the keys' length: a batch of 100 long event types of one-letter segments (101 patterns each)
 * makes a key of a million characters with no subscriber at all, and counted as one list each, 150 such
 * 22 KB requests kept 156 MB. Reaching the bound drops every list, and the next ingests read theirs again.
 */
export class SubscriberLists {
  private readonly lists = new Map<string, { subscribers: Subscriber[]; cost: number }>();
  private held = 0;

  constructor(private readonly maxSubscribers = 100_000) {}

  static key(tenantId: string, patterns: readonly string[]): string {
    return `${tenantId} ${[...patterns].sort().join(" ")}`;
  }

  get(key: string): Subscriber[] | undefined {
    return this.lists.get(key)?.subscribers;
  }

  set(key: string, subscribers: Subscriber[]): void {
    this.forget(key);
    // A subscriber's row, or 256 characters of key, are about the same memory.
    const cost = subscribers.length + 1 + Math.floor(key.length / 256);
    if (this.held + cost > this.maxSubscribers) {
      this.lists.clear();
      this.held = 0;
    }
    this.lists.set(key, { subscribers, cost });
    this.held += cost;
  }

  /** Drops the list under `key` if it is still `stale` (another ingest may have read a newer one). */
  forget(key: string, stale?: Subscriber[]): void {
    const list = this.lists.get(key);
    if (!list || (stale && list.subscribers !== stale)) return;
    this.lists.delete(key);
    this.held -= list.cost;
  }

  /** What the lists hold, in subscribers: each list counts one more for itself, and one per 256 characters of its key. */
  get size(): number {
    return this.held;
  }
}
