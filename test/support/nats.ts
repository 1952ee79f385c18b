import { randomBytes } from "node:crypto";
import { deleteStream } from "../../src/queue/jetstream.js";

export const NATS_URL = process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222";

/** A stream and consumer prefix of the test's own; `cleanup()` deletes the stream. */
export function natsPrefix(label: string): { prefix: string; cleanup(): Promise<void> } {
  const prefix = `T${label.replace(/[^a-z0-9]/gi, "").toUpperCase()}${randomBytes(3).toString("hex").toUpperCase()}`;
  return { prefix, cleanup: () => deleteStream(NATS_URL, prefix) };
}
