import type { DeliveryFeed, FeedSubscription } from "./feed.js";
import type { DeliveryJob } from "./job.js";

/**
 * The in-process feed of the embedded mode: API and dispatcher share one process, so a committed job goes
 * straight to the shard's consumer. A job published while nobody consumes its shard is dropped here and
 * picked up from Postgres when the shard gets an owner.
 */
export function createEmbeddedFeed(): DeliveryFeed {
  const consumers = new Map<number, (job: DeliveryJob) => void>();
  return {
    kind: "embedded",
    async publish(jobs) {
      for (const job of jobs) consumers.get(job.shard)?.(job);
    },
    async consume(shard, onJob): Promise<FeedSubscription> {
      consumers.set(shard, onJob);
      return {
        async stop() {
          if (consumers.get(shard) === onJob) consumers.delete(shard);
        },
      };
    },
    healthy: () => true,
    async close() {
      consumers.clear();
    },
  };
}
