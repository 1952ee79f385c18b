import pino from "pino";
import { SecretBox } from "../../src/core/secret-box.js";
import { Dispatcher, type DispatcherOptions } from "../../src/dispatcher/dispatcher.js";
import type { Sender } from "../../src/dispatcher/sender.js";
import { TEST_ENCRYPTION_KEY } from "./app.js";

/**
 * A Dispatcher on its own (no API, no HTTP), for tests of what it does with its leases, sweeps and feed:
 * quick lease and sweep timings, one shard unless told otherwise, and the given feed and sender.
 */
export function testDispatcher(options: Pick<DispatcherOptions, "db" | "feed" | "sender"> & Partial<DispatcherOptions>): Dispatcher {
  return new Dispatcher({
    log: pino({ level: "silent" }),
    shardCount: 1,
    retrySchedule: [5_000],
    maxInFlight: 10,
    maxInFlightPerEndpoint: 4,
    secretBox: SecretBox.fromEncodedKey(TEST_ENCRYPTION_KEY),
    circuitPolicy: { failureThreshold: 5, cooldownMs: 1_000, maxCooldownMs: 10_000 },
    autoDisableAfterMs: 0,
    eventTtlMs: 3_600_000,
    leaseTtlMs: 3_000,
    leaseIntervalMs: 500,
    sweepIntervalMs: 500,
    housekeepingIntervalMs: 3_600_000,
    ...options,
  });
}

/** A sender that answers every request 200 at once, without sending anything, and counts them. */
export function countingSender(): Sender & { sends: number } {
  const sender = {
    sends: 0,
    send: async () => {
      sender.sends++;
      return { kind: "response" as const, status: 200, body: "", retryAfter: undefined, durationMs: 1 };
    },
    close: async () => undefined,
  };
  return sender;
}
