/**
 * One delivery as the dispatcher needs it: everything to build the request but the webhook's URL and
 * secrets, which are read fresh so that an update or rotation applies to the next attempt.
 */
export interface DeliveryJob {
  deliveryId: string;
  webhookId: string;
  shard: number;
  /** Position in the webhook's order; gap-free per webhook. */
  seq: number;
  orderingKey: string;
  eventId: string;
  eventType: string;
  /** The event's creation time, ms since the epoch: the body's timestamp and the TTL's start. */
  createdAt: number;
  /** The payload's JSON text, sent verbatim. */
  payload: string;
  attempts: number;
  /** ms since the epoch; the job waits until then. */
  nextAttemptAt: number;
  /** ms since the epoch; still undelivered then, the job is expired. */
  expiresAt: number;
  /** Put back by a replay: the lane starts such jobs at least this many ms apart (the replay's pace). */
  paceMs?: number;
}

export function encodeJob(job: DeliveryJob): Uint8Array {
  return Buffer.from(JSON.stringify(job));
}

export function decodeJob(data: Uint8Array): DeliveryJob {
  return JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("utf8")) as DeliveryJob;
}
