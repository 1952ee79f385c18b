import type { Subscriber } from "../store/ingest.js";

/**
 * The subscribers each ingest was last planned from, per tenant and set of event-type patterns. The
 * ingest statement checks under lock that they are still the ones, so a stale list costs one statement
 * that writes nothing and a fresh read, never a wrong delivery; a current one saves the read, half the
 * round trips of an ingest.
 *
 * Bounded by the subscribers held, counted per list (a `*` subscriber is in every list of its tenant):
 * reaching the bound drops every list, and the next ingests read theirs again.
 */
export class SubscriberLists {
  private readonly lists = new Map<string, Subscriber[]>();
  private held = 0;

  constructor(private readonly maxSubscribers = 100_000) {}

  static key(tenantId: string, patterns: readonly string[]): string {
    return `${tenantId} ${[...patterns].sort().join(" ")}`;
  }

  get(key: string): Subscriber[] | undefined {
    return this.lists.get(key);
  }

  set(key: string, subscribers: Subscriber[]): void {
    this.forget(key);
    if (this.held + subscribers.length + 1 > this.maxSubscribers) {
      this.lists.clear();
      this.held = 0;
    }
    this.lists.set(key, subscribers);
    this.held += subscribers.length + 1;
  }

  /** Drops the list under `key` if it is still `stale` (another ingest may have read a newer one). */
  forget(key: string, stale?: Subscriber[]): void {
    const list = this.lists.get(key);
    if (!list || (stale && list !== stale)) return;
    this.lists.delete(key);
    this.held -= list.length + 1;
  }

  /** Subscribers held across all lists (each list counts one more for itself). */
  get size(): number {
    return this.held;
  }
}
