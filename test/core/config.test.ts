import { after, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { ConfigError, loadConfig } from "../../src/config.js";

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "webhookd-config-test-"));
after(() => fs.rmSync(scratch, { recursive: true, force: true }));
const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

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
    [{ WEBHOOKD_METRICS_LISTEN: "9090" }, /WEBHOOKD_METRICS_LISTEN="9090" is invalid/],
    [{ WEBHOOKD_REPLAY_RATE: "20000" }, /WEBHOOKD_REPLAY_RATE/],
    [{ WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT: "0" }, /WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT="0" is invalid/],
    [{ WEBHOOKD_CONNECTIONS_PER_ORIGIN: "0" }, /WEBHOOKD_CONNECTIONS_PER_ORIGIN="0" is invalid/],
    [{ WEBHOOKD_CONNECTIONS_PER_ORIGIN: "many" }, /WEBHOOKD_CONNECTIONS_PER_ORIGIN="many" is invalid/],
    [{ WEBHOOKD_NATS_STORAGE: "disk" }, /WEBHOOKD_NATS_STORAGE="disk" is invalid: expected "memory" or "file"/],
    [{ WEBHOOKD_DELIVERY_TIMEOUT: "15" }, /WEBHOOKD_DELIVERY_TIMEOUT="15" is invalid/],
    [{ WEBHOOKD_LEASE_TTL: "forever" }, /WEBHOOKD_LEASE_TTL="forever" is invalid/],
    // Node runs a timer of 0 or of more than 2^31-1 ms (24.8 days) after 1 ms: every attempt would time out.
    [{ WEBHOOKD_DELIVERY_TIMEOUT: "0s" }, /WEBHOOKD_DELIVERY_TIMEOUT="0s" is invalid: expected a duration from 1ms to 1h/],
    [{ WEBHOOKD_DELIVERY_TIMEOUT: "25d" }, /WEBHOOKD_DELIVERY_TIMEOUT="25d" is invalid: expected a duration from 1ms to 1h/],
    [{ WEBHOOKD_DELIVERY_TIMEOUT: "61m" }, /WEBHOOKD_DELIVERY_TIMEOUT="61m" is invalid/],
    // A lease shorter than its own renewal is never confirmed, and nothing is delivered.
    [{ WEBHOOKD_LEASE_TTL: "0s" }, /WEBHOOKD_LEASE_TTL="0s" is invalid: expected a duration from 1s to 1h/],
    [{ WEBHOOKD_LEASE_TTL: "1ms" }, /WEBHOOKD_LEASE_TTL="1ms" is invalid: expected a duration from 1s to 1h/],
    [{ WEBHOOKD_LEASE_TTL: "25d" }, /WEBHOOKD_LEASE_TTL="25d" is invalid/],
    [{ WEBHOOKD_EVENT_TTL: "0s" }, /WEBHOOKD_EVENT_TTL="0s" is invalid: expected a duration from 1s to 90d/],
    [{ WEBHOOKD_EVENT_TTL: "91d" }, /WEBHOOKD_EVENT_TTL="91d" is invalid: expected a duration from 1s to 90d/],
    [{ WEBHOOKD_SHARDS: "100000000" }, /WEBHOOKD_SHARDS="100000000" is invalid: expected at most 4096/],
    // Secrets are named, never repeated: the error goes to logs.
    [{ WEBHOOKD_ADMIN_KEY: "correct horse battery staple" }, /^WEBHOOKD_ADMIN_KEY is invalid: expected printable ASCII without spaces$/],
    [{ WEBHOOKD_ADMIN_KEY: "short" }, /^WEBHOOKD_ADMIN_KEY is invalid: expected at least 16 characters$/],
    // URLs may carry credentials in forms no pattern catches: only their scheme and host are repeated.
    [{ DATABASE_URL: "postgresql+psycopg://webhookd:S3cr3t@db.internal:5432/webhookd" }, /^DATABASE_URL \(postgresql\+psycopg:\/\/db\.internal:5432\) is invalid: expected a postgres: or postgresql: URL$/],
    [{ DATABASE_URL: "postgres://webhookd:ab/S3cr3t@db.internal:5432/webhookd" }, /^DATABASE_URL( \([^)]*\))? is invalid: (?![^]*S3cr3t)/],
    [{ DATABASE_URL: "host=db.internal user=webhookd password=S3cr3t dbname=webhookd" }, /^DATABASE_URL is invalid: (?![^]*S3cr3t)/],
    [{ NATS_URL: "https://user:S3cr3t@nats.internal:4222" }, /^NATS_URL \(https:\/\/nats\.internal:4222\) is invalid/],
    [{ WEBHOOKD_ENCRYPTION_KEY: "not-a-key-but-maybe-a-secret" }, /^WEBHOOKD_ENCRYPTION_KEY is invalid: [^]*$(?<!not-a-key-but-maybe-a-secret[^]*)/],
    [{ WEBHOOKD_EVENT_TTL: "500ms" }, /WEBHOOKD_EVENT_TTL="500ms" is invalid/],
    [{ WEBHOOKD_EVENT_TTL: "100000000d" }, /WEBHOOKD_EVENT_TTL="100000000d" is invalid/],
    [{ WEBHOOKD_SECRET_GRACE: "366d" }, /WEBHOOKD_SECRET_GRACE="366d" is invalid: expected a duration from 0s to 365d/],
    [{ WEBHOOKD_CIRCUIT_COOLDOWN: "0s" }, /WEBHOOKD_CIRCUIT_COOLDOWN="0s" is invalid: expected a duration from 1ms to 7d/],
    [{ WEBHOOKD_CIRCUIT_COOLDOWN: "8d" }, /WEBHOOKD_CIRCUIT_COOLDOWN="8d" is invalid/],
    // The same limits as a webhook's own schedule.
    [{ WEBHOOKD_RETRY_SCHEDULE: "5s,0s" }, /WEBHOOKD_RETRY_SCHEDULE="5s,0s" is invalid: entry 2: expected a delay from 1ms to 7d/],
    [{ WEBHOOKD_RETRY_SCHEDULE: "5s,8d" }, /WEBHOOKD_RETRY_SCHEDULE="5s,8d" is invalid: entry 2: expected a delay from 1ms to 7d/],
    [{ WEBHOOKD_RETRY_SCHEDULE: Array(31).fill("1s").join(",") }, /WEBHOOKD_RETRY_SCHEDULE=.* is invalid: 31 retries; the limit is 30/],
    [{ WEBHOOKD_AUTO_DISABLE_AFTER: "500ms" }, /WEBHOOKD_AUTO_DISABLE_AFTER="500ms" is invalid: expected 0 \(never\) or a duration from 1s to 3650d/],
    [{ WEBHOOKD_LOG_LEVEL: "loud" }, /WEBHOOKD_LOG_LEVEL="loud" is invalid: expected one of fatal, error, warn, info, debug, trace, silent/],
    [{ WEBHOOKD_CA_FILE: path.join(scratch, "missing.pem") }, /WEBHOOKD_CA_FILE=".*missing\.pem" is invalid: cannot read it: ENOENT/],
    [{ WEBHOOKD_CA_FILE: scratch }, /WEBHOOKD_CA_FILE=".*" is invalid: cannot read it: EISDIR/],
    [{ WEBHOOKD_CA_FILE: notPem() }, /WEBHOOKD_CA_FILE=".*not-pem\.txt" is invalid: expected PEM certificates/],
  ];
  for (const [env, message] of cases) {
    assert.throws(() => loadConfig(env), (err: unknown) => err instanceof ConfigError && message.test(err.message), JSON.stringify(env));
  }
});

test("duration bounds: the edges are accepted, and the CA file is read at start", () => {
  const caFile = path.join(scratch, "ca.pem");
  fs.writeFileSync(caFile, PEM);
  const config = loadConfig({
    WEBHOOKD_DELIVERY_TIMEOUT: "1h",
    WEBHOOKD_LEASE_TTL: "1s",
    WEBHOOKD_EVENT_TTL: "1s",
    WEBHOOKD_SECRET_GRACE: "0s",
    WEBHOOKD_CIRCUIT_COOLDOWN: "1ms",
    WEBHOOKD_RETRY_SCHEDULE: "1ms,7d",
    WEBHOOKD_AUTO_DISABLE_AFTER: "1s",
    WEBHOOKD_LOG_LEVEL: "DEBUG",
    WEBHOOKD_CA_FILE: caFile,
  });
  assert.equal(config.deliveryTimeoutMs, 3_600_000);
  assert.equal(config.leaseTtlMs, 1_000);
  assert.equal(config.eventTtlMs, 1_000);
  assert.equal(config.secretGraceMs, 0);
  assert.equal(config.circuitCooldownMs, 1);
  assert.deepEqual(config.retrySchedule, [1, 7 * 86_400_000]);
  assert.equal(config.autoDisableAfterMs, 1_000);
  assert.equal(config.logLevel, "debug");
  assert.equal(config.caPem, PEM);
  // "0s" is spelled out as well as "0" for never.
  assert.equal(loadConfig({ WEBHOOKD_AUTO_DISABLE_AFTER: "0s" }).autoDisableAfterMs, 0);
});

function notPem(): string {
  const file = path.join(scratch, "not-pem.txt");
  fs.writeFileSync(file, "hello\n");
  return file;
}
