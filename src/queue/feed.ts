import type { DeliveryJob } from "./job.js";

/**
 * The fast path from a commit to the shard owner. Postgres stays the record: a feed may lose or repeat a
 * job and nothing is lost, because owners rebuild their lanes from Postgres; the feed only makes it quick.
 */
export interface DeliveryFeed {
  readonly kind: "jetstream" | "embedded";
  /** Hands committed jobs to their shards' owners. Never throws: a job it could not hand over is found in Postgres. */
  publish(jobs: DeliveryJob[]): Promise<void>;
  /** Streams one shard's jobs to `onJob` until stopped, in publish order per webhook. */
  consume(shard: number, onJob: (job: DeliveryJob) => void): Promise<FeedSubscription>;
  /** For /readyz. */
  healthy(): boolean;
  close(): Promise<void>;
}

export interface FeedSubscription {
  stop(): Promise<void>;
}
