import { sql } from "kysely";
import { idFloor } from "../core/ids.js";
import type { Db } from "../store/db.js";
import { expireOverdueDeliveries } from "../store/deliveries.js";
import { forgetIdempotencyKeys } from "../store/events.js";
import { DAY_MS, RETENTION_GRACE_MS, dayStart, dropExpiredPartitions, ensurePartitions } from "../store/partitions.js";

export interface HousekeepingReport {
  /** Days whose partitions could not be made (their rows stay in the default partition). */
  partitionsFailed: string[];
  expired: number;
  keysForgotten: number;
  partitionsDropped: string[];
}

/**
 * Retention: makes the coming days' partitions, ends deliveries past their TTL, forgets idempotency
 * keys older than it and drops the day partitions whose retention is over. Run by one dispatcher at a
 * time (the owner of shard 0); every step is idempotent, so two running at once only repeat work.
 *
 * `now` defaults to Postgres' clock, which set every delivery's expiry: by the dispatcher's own, one
 * whose clock ran ahead expired deliveries (and dropped partitions) early by the skew.
 */
export async function runHousekeeping(db: Db, eventTtlMs: number, now?: number): Promise<HousekeepingReport> {
  now ??= (await sql<{ now: Date }>`select now() as now`.execute(db)).rows[0]!.now.getTime();
  const partitionsFailed = await ensurePartitions(db, now);
  // The first day that survives this round: anything older is dropped below, so none of it may stay pending.
  const firstKeptDay = dayStart(now - eventTtlMs - RETENTION_GRACE_MS - DAY_MS) + DAY_MS;
  const expired = await expireOverdueDeliveries(db, new Date(now), idFloor("dlv", Math.max(0, firstKeptDay)));
  // In batches, so no single statement holds a lock on a large part of the table.
  let keysForgotten = 0;
  for (;;) {
    const forgotten = await forgetIdempotencyKeys(db, new Date(now - eventTtlMs));
    if (forgotten === 0) break;
    keysForgotten += forgotten;
  }
  const partitionsDropped = await dropExpiredPartitions(db, now, eventTtlMs);
  return { partitionsFailed, expired, keysForgotten, partitionsDropped };
}
