import { test } from "node:test";
import assert from "node:assert/strict";
import { ConfigError, loadConfig } from "../../src/config.js";

test("endpoint health, replay and stream settings: defaults", () => {
  const config = loadConfig({});
  assert.equal(config.circuitFailures, 5);
  assert.equal(config.circuitCooldownMs, 30_000);
  assert.equal(config.autoDisableAfterMs, 5 * 24 * 3600 * 1000);
  assert.equal(config.replayRate, 20);
  assert.equal(config.maxInFlightPerEndpoint, 16);
  assert.equal(config.connectionsPerOrigin, 16);
  assert.equal(config.natsStorage, "memory");
  assert.equal(config.deliveryTimeoutMs, 15_000);
  // With the renewal every 2 s, a dead dispatcher's shards are taken within about 12 s (the issue: 15).
  assert.equal(config.leaseTtlMs, 10_000);
});

test("endpoint health, replay and stream settings: values and off switches", () => {
  const config = loadConfig({
    WEBHOOKD_CIRCUIT_FAILURES: "0",
    WEBHOOKD_CIRCUIT_COOLDOWN: "2m",
    WEBHOOKD_AUTO_DISABLE_AFTER: "0",
    WEBHOOKD_REPLAY_RATE: "2.5",
    WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT: "4",
    WEBHOOKD_CONNECTIONS_PER_ORIGIN: "64",
    WEBHOOKD_NATS_STORAGE: "file",
    WEBHOOKD_DELIVERY_TIMEOUT: "2500ms",
    WEBHOOKD_LEASE_TTL: "30s",
  });
  assert.equal(config.circuitFailures, 0);
  assert.equal(config.circuitCooldownMs, 120_000);
  assert.equal(config.autoDisableAfterMs, 0);
  assert.equal(config.replayRate, 2.5);
  assert.equal(config.maxInFlightPerEndpoint, 4);
  assert.equal(config.connectionsPerOrigin, 64);
  assert.equal(config.natsStorage, "file");
  assert.equal(config.deliveryTimeoutMs, 2_500);
  assert.equal(config.leaseTtlMs, 30_000);
});

test("a bad value names the variable and what it expects", () => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ WEBHOOKD_CIRCUIT_FAILURES: "-1" }, /WEBHOOKD_CIRCUIT_FAILURES="-1" is invalid: expected a whole number/],
    [{ WEBHOOKD_CIRCUIT_FAILURES: "2.5" }, /WEBHOOKD_CIRCUIT_FAILURES/],
    [{ WEBHOOKD_CIRCUIT_COOLDOWN: "30" }, /WEBHOOKD_CIRCUIT_COOLDOWN="30" is invalid/],
    [{ WEBHOOKD_AUTO_DISABLE_AFTER: "soon" }, /WEBHOOKD_AUTO_DISABLE_AFTER="soon" is invalid/],
    [{ WEBHOOKD_REPLAY_RATE: "0" }, /WEBHOOKD_REPLAY_RATE="0" is invalid: expected deliveries per second/],
    [{ WEBHOOKD_REPLAY_RATE: "20000" }, /WEBHOOKD_REPLAY_RATE/],
    [{ WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT: "0" }, /WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT="0" is invalid/],
    [{ WEBHOOKD_CONNECTIONS_PER_ORIGIN: "0" }, /WEBHOOKD_CONNECTIONS_PER_ORIGIN="0" is invalid/],
    [{ WEBHOOKD_CONNECTIONS_PER_ORIGIN: "many" }, /WEBHOOKD_CONNECTIONS_PER_ORIGIN="many" is invalid/],
    [{ WEBHOOKD_NATS_STORAGE: "disk" }, /WEBHOOKD_NATS_STORAGE="disk" is invalid: expected "memory" or "file"/],
    [{ WEBHOOKD_DELIVERY_TIMEOUT: "15" }, /WEBHOOKD_DELIVERY_TIMEOUT="15" is invalid/],
    [{ WEBHOOKD_LEASE_TTL: "forever" }, /WEBHOOKD_LEASE_TTL="forever" is invalid/],
  ];
  for (const [env, message] of cases) {
    assert.throws(() => loadConfig(env), (err: unknown) => err instanceof ConfigError && message.test(err.message), JSON.stringify(env));
  }
});
