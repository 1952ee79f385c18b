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
  /**
   * The payload's JSON text, sent verbatim, when the job carries it: the embedded feed hands jobs over
   * with theirs, and a lane keeps it only for a job it is about to send. Without it the sender's side
   * reads it from Postgres, the record, just before the attempt.
   */
  payload?: string | undefined;
  attempts: number;
  /** ms since the epoch; the job waits until then. */
  nextAttemptAt: number;
  /** ms since the epoch; still undelivered then, the job is expired. */
  expiresAt: number;
  /** Put back by a replay: the lane starts such jobs at least this many ms apart (the replay's pace). */
  paceMs?: number;
  /**
   * The webhook's count of deliveries put back to pending (replays, retries by hand) as ingest found it;
   * absent: 0. A lane that sees it grow reads the record from the start before it sends on.
   */
  requeues?: number;
}

/**
 * One webhook's jobs of a publish, as one feed message: JSON, without their payloads. Through NATS and
 * back the 5 KB of a payload cost more CPU than reading it from Postgres, and the stream holds over ten
 * times as many jobs in its memory.
 */
export function encodeJobHeads(jobs: readonly DeliveryJob[]): Uint8Array {
  return joinJobHeads(jobs.map(encodeJobHead));
}

/** One job's part of a feed message, for a publisher that sizes its messages before it makes them. */
export function encodeJobHead({ payload: _payload, ...head }: DeliveryJob): string {
  return JSON.stringify(head);
}

/** The feed message of heads made by `encodeJobHead`: 2 bytes besides theirs, and one between each two. */
export function joinJobHeads(heads: readonly string[]): Uint8Array {
  return Buffer.from(`[${heads.join(",")}]`);
}

export function decodeJobHeads(data: Uint8Array): DeliveryJob[] {
  const heads: unknown = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("utf8"));
  if (!Array.isArray(heads) || !heads.every((h) => typeof h === "object" && h !== null && typeof h.deliveryId === "string" && typeof h.eventId === "string")) {
    throw new Error("feed message is not a list of job heads");
  }
  return heads as DeliveryJob[];
}
