import fs from "node:fs";
import path from "node:path";
import { formatDuration, parseDuration, parseRetrySchedule } from "./core/durations.js";
import { parseCidrList } from "./core/address-policy.js";
import { SecretBox } from "./core/secret-box.js";
import { LOG_LEVELS, type LogLevel } from "./logger.js";

/** Everything webhookd reads from its environment, parsed once at start. Nothing else reads process.env. */
export interface Config {
  listen: { host: string; port: number };
  /** Where /healthz, /readyz and /metrics are served on their own (any role); unset: not. */
  metricsListen: { host: string; port: number } | undefined;
  databaseUrl: string | undefined;
  natsUrl: string | undefined;
  dataDir: string;
  adminKey: string | undefined;
  /** Seals signing secrets at rest (AES-256-GCM); base64 or hex of 32 bytes. Required with DATABASE_URL. */
  encryptionKey: string | undefined;
  /** Requests per second per API key (token bucket, burst of twice that); 0 turns the limit off. */
  apiRateLimit: number;
  allowHttp: boolean;
  allowedCidrs: string[];
  retrySchedule: number[];
  deliveryTimeoutMs: number;
  eventTtlMs: number;
  /** How long a rotated-out signing secret keeps signing beside the new one. */
  secretGraceMs: number;
  /** Extra CA certificates (WEBHOOKD_CA_FILE's PEM, read at start) trusted for deliveries, beside the system's. */
  caPem: string | undefined;
  /**
   * Node's own extra CAs (NODE_EXTRA_CA_CERTS's PEM), part of the default trust store that an explicit CA
   * list replaces; read only when caPem is set, since only then does webhookd pass a list of its own.
   */
  nodeExtraCaPem: string | undefined;
  /** Stream and consumer names are prefixed with this, so that test runs never collide. */
  natsPrefix: string;
  /** memory (default) or file: where the JetStream stream keeps jobs; Postgres is the record either way. */
  natsStorage: "memory" | "file";
  /** Number of shards the webhooks are hashed into; fixed for the life of a deployment. */
  shardCount: number;
  maxInFlight: number;
  /** Attempts in flight at once to one endpoint (webhooks ordered by key can have several). */
  maxInFlightPerEndpoint: number;
  /** Sockets the sender keeps to one origin (scheme, host, port), shared by every webhook there. */
  connectionsPerOrigin: number;
  /** A dispatcher silent this long loses its shards to the others. */
  leaseTtlMs: number;
  /** Failures in a row that open an endpoint's circuit; 0 turns the breaker off. */
  circuitFailures: number;
  /** How long an opened circuit first waits before its probe; doubles per failed probe, up to 10 min or this. */
  circuitCooldownMs: number;
  /** An endpoint failing every attempt this long is disabled; 0: never. */
  autoDisableAfterMs: number;
  /** Default pace of a replay, deliveries per second. */
  replayRate: number;
  logLevel: LogLevel;
}

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function nonEmpty(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

/** Variables whose values are never repeated in an error: it goes to logs. */
const SECRETS = new Set(["WEBHOOKD_ADMIN_KEY", "WEBHOOKD_ENCRYPTION_KEY"]);
/**
 * Variables whose values may carry credentials, in forms no pattern catches reliably (a password with a
 * slash, key=value strings, lists of URLs): only their scheme and host are repeated, when they parse.
 */
const URLS = new Set(["DATABASE_URL", "NATS_URL"]);

/** The variable as an error names it: its value, but no secret of it. */
function named(name: string, raw: string): string {
  if (SECRETS.has(name)) return name;
  if (URLS.has(name)) {
    const url = URL.canParse(raw) ? new URL(raw) : undefined;
    return url?.host ? `${name} (${url.protocol}//${url.host})` : name;
  }
  return `${name}=${JSON.stringify(raw)}`;
}

function parseWith<T>(env: Env, name: string, fallback: string, parse: (raw: string) => T): T {
  const raw = nonEmpty(env, name) ?? fallback;
  try {
    return parse(raw);
  } catch (err) {
    throw new ConfigError(`${named(name, raw)} is invalid: ${(err as Error).message}`);
  }
}

export function parseListen(raw: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(raw);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535) throw new Error("expected host:port, e.g. 127.0.0.1:8080");
  return { host: match[1] ?? (match[2] || "0.0.0.0"), port };
}

function parseBoolean(raw: string): boolean {
  const value = raw.toLowerCase();
  if (["1", "true", "yes", "on"].includes(value)) return true;
  if (["0", "false", "no", "off"].includes(value)) return false;
  throw new Error("expected true or false");
}

function parsePositiveInt(raw: string): number {
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) throw new Error("expected a positive whole number");
  return value;
}

function parseCount(raw: string): number {
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) throw new Error("expected a whole number, 0 or more");
  return value;
}

const SECOND_MS = 1_000;
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const MAX_EVENT_TTL_MS = 90 * DAY_MS;
const MAX_SHARDS = 4096;
/** A webhook's own retry_schedule has the same limits (server/webhook-service.ts). */
const MAX_RETRIES = 30;
const MAX_RETRY_DELAY_MS = 7 * DAY_MS;

/**
 * A duration from min to max. Node runs a timer of more than 2^31-1 ms (24.8 days) after 1 ms, and a
 * Date past about 270,000 years is invalid, so every duration has an upper bound as well as a lower one.
 */
function durationWithin(min: number, max: number) {
  return (raw: string): number => {
    const ms = parseDuration(raw);
    if (ms < min || ms > max) throw new Error(`expected a duration from ${formatDuration(min)} to ${formatDuration(max)}`);
    return ms;
  };
}

function parseGlobalRetrySchedule(raw: string): number[] {
  const schedule = parseRetrySchedule(raw);
  if (schedule.length > MAX_RETRIES) throw new Error(`${schedule.length} retries; the limit is ${MAX_RETRIES}`);
  const bad = schedule.findIndex((ms) => ms < 1 || ms > MAX_RETRY_DELAY_MS);
  if (bad >= 0) throw new Error(`entry ${bad + 1}: expected a delay from 1ms to ${formatDuration(MAX_RETRY_DELAY_MS)}`);
  return schedule;
}

/** A PEM file's text, read at start so that a wrong path stops the process before anything is created. */
function readPem(raw: string): string {
  let text: string;
  try {
    text = fs.readFileSync(raw, "utf8");
  } catch (err) {
    throw new Error(`cannot read it: ${(err as Error).message}`);
  }
  if (!text.includes("-----BEGIN CERTIFICATE-----")) throw new Error("expected PEM certificates (-----BEGIN CERTIFICATE-----)");
  return text;
}

function parseUrl(protocols: string[]) {
  return (raw: string): string => {
    const url = new URL(raw);
    if (!protocols.includes(url.protocol)) throw new Error(`expected a ${protocols.join(" or ")} URL`);
    return raw;
  };
}

export function loadConfig(env: Env = process.env): Config {
  const databaseUrl = nonEmpty(env, "DATABASE_URL");
  const natsUrl = nonEmpty(env, "NATS_URL");
  const caFile = nonEmpty(env, "WEBHOOKD_CA_FILE");
  return {
    listen: parseWith(env, "WEBHOOKD_LISTEN", "127.0.0.1:8080", parseListen),
    metricsListen: env.WEBHOOKD_METRICS_LISTEN ? parseWith(env, "WEBHOOKD_METRICS_LISTEN", "", parseListen) : undefined,
    databaseUrl: databaseUrl && parseWith(env, "DATABASE_URL", "", parseUrl(["postgres:", "postgresql:"])),
    natsUrl: natsUrl && parseWith(env, "NATS_URL", "", parseUrl(["nats:", "tls:"])),
    dataDir: path.resolve(nonEmpty(env, "WEBHOOKD_DATA_DIR") ?? ".webhookd"),
    adminKey: nonEmpty(env, "WEBHOOKD_ADMIN_KEY") && parseWith(env, "WEBHOOKD_ADMIN_KEY", "", (raw) => {
      // Sent as "Authorization: Bearer <key>": a key with a space in it could never be presented.
      if (!/^[\x21-\x7e]+$/.test(raw)) throw new Error("expected printable ASCII without spaces");
      if (raw.length < 16) throw new Error("expected at least 16 characters");
      return raw;
    }),
    encryptionKey: nonEmpty(env, "WEBHOOKD_ENCRYPTION_KEY") && parseWith(env, "WEBHOOKD_ENCRYPTION_KEY", "", (raw) => {
      SecretBox.fromEncodedKey(raw);
      return raw;
    }),
    apiRateLimit: parseWith(env, "WEBHOOKD_API_RATE_LIMIT", "2000", (raw) => {
      const value = Number(raw);
      if (!Number.isFinite(value) || value < 0) throw new Error("expected requests per second, 0 for no limit");
      return value;
    }),
    allowHttp: parseWith(env, "WEBHOOKD_ALLOW_HTTP", "false", parseBoolean),
    allowedCidrs: parseWith(env, "WEBHOOKD_ALLOWED_CIDRS", "", parseCidrList),
    // Set but empty means no retries at all: the first failure is final.
    retrySchedule:
      env.WEBHOOKD_RETRY_SCHEDULE?.trim() === ""
        ? []
        : parseWith(env, "WEBHOOKD_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h", parseGlobalRetrySchedule),
    // 0 would end every attempt at once; an endpoint slower than an hour is down.
    deliveryTimeoutMs: parseWith(env, "WEBHOOKD_DELIVERY_TIMEOUT", "15s", durationWithin(1, HOUR_MS)),
    // The store keeps a partition a day of the TTL, and statements that cannot narrow to a few read them
    // all: past a few hundred, concurrent ones ran a stock Postgres (max_locks_per_transaction 64) out of
    // lock memory, and reads answered 503.
    eventTtlMs: parseWith(env, "WEBHOOKD_EVENT_TTL", "30d", durationWithin(SECOND_MS, MAX_EVENT_TTL_MS)),
    secretGraceMs: parseWith(env, "WEBHOOKD_SECRET_GRACE", "24h", durationWithin(0, 365 * DAY_MS)),
    caPem: caFile && parseWith(env, "WEBHOOKD_CA_FILE", "", readPem),
    nodeExtraCaPem:
      caFile && nonEmpty(env, "NODE_EXTRA_CA_CERTS") !== undefined ? parseWith(env, "NODE_EXTRA_CA_CERTS", "", readPem) : undefined,
    natsStorage: parseWith(env, "WEBHOOKD_NATS_STORAGE", "memory", (raw) => {
      if (raw !== "memory" && raw !== "file") throw new Error('expected "memory" or "file"');
      return raw;
    }),
    natsPrefix: parseWith(env, "WEBHOOKD_NATS_PREFIX", "WEBHOOK", (raw) => {
      if (!/^[A-Za-z0-9_-]+$/.test(raw)) throw new Error("letters, digits, _ and - only");
      return raw;
    }),
    shardCount: parseWith(env, "WEBHOOKD_SHARDS", "64", (raw) => {
      const value = parsePositiveInt(raw);
      // Each shard is a lease row, a NATS subject and a consumer while owned; a claim picks among them all.
      if (value > MAX_SHARDS) throw new Error(`expected at most ${MAX_SHARDS}`);
      return value;
    }),
    maxInFlight: parseWith(env, "WEBHOOKD_MAX_IN_FLIGHT", "512", parsePositiveInt),
    maxInFlightPerEndpoint: parseWith(env, "WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "16", parsePositiveInt),
    connectionsPerOrigin: parseWith(env, "WEBHOOKD_CONNECTIONS_PER_ORIGIN", "16", parsePositiveInt),
    // Attempts start only within three quarters of the TTL after a renewal, and renewals come every fifth
    // of it but no more often than every 100 ms: a TTL of a few milliseconds is over before the renewal's
    // round trip to the database ends, so no lease is ever confirmed and nothing is delivered.
    leaseTtlMs: parseWith(env, "WEBHOOKD_LEASE_TTL", "10s", durationWithin(SECOND_MS, HOUR_MS)),
    circuitFailures: parseWith(env, "WEBHOOKD_CIRCUIT_FAILURES", "5", parseCount),
    circuitCooldownMs: parseWith(env, "WEBHOOKD_CIRCUIT_COOLDOWN", "30s", durationWithin(1, MAX_RETRY_DELAY_MS)),
    autoDisableAfterMs: parseWith(env, "WEBHOOKD_AUTO_DISABLE_AFTER", "5d", (raw) => {
      if (raw === "0") return 0;
      const ms = parseDuration(raw);
      // Under a second, one failed attempt would disable an endpoint.
      if (ms !== 0 && (ms < SECOND_MS || ms > 3650 * DAY_MS)) throw new Error("expected 0 (never) or a duration from 1s to 3650d");
      return ms;
    }),
    replayRate: parseWith(env, "WEBHOOKD_REPLAY_RATE", "20", (raw) => {
      const value = Number(raw);
      if (!Number.isFinite(value) || value <= 0 || value > 10_000) throw new Error("expected deliveries per second, more than 0 and at most 10000");
      return value;
    }),
    logLevel: parseWith(env, "WEBHOOKD_LOG_LEVEL", "info", (raw) => {
      const level = raw.toLowerCase();
      if (!LOG_LEVELS.includes(level as LogLevel)) throw new Error(`expected one of ${LOG_LEVELS.join(", ")}`);
      return level as LogLevel;
    }),
  };
}
