import path from "node:path";
import { parseDuration, parseRetrySchedule } from "./core/durations.js";
import { parseCidrList } from "./core/address-policy.js";
import { SecretBox } from "./core/secret-box.js";

/** Everything webhookd reads from its environment, parsed once at start. Nothing else reads process.env. */
export interface Config {
  listen: { host: string; port: number };
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
  /** Extra CA certificates (PEM file) trusted for deliveries, beside the system's. */
  caFile: string | undefined;
  /** Node's own extra-CA file, part of the default trust store that an explicit CA list replaces. */
  nodeExtraCaFile: string | undefined;
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
  logLevel: string;
}

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function nonEmpty(env: Env, name: string): string | undefined {
  const value = env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

function parseWith<T>(env: Env, name: string, fallback: string, parse: (raw: string) => T): T {
  const raw = nonEmpty(env, name) ?? fallback;
  try {
    return parse(raw);
  } catch (err) {
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is invalid: ${(err as Error).message}`);
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
  return {
    listen: parseWith(env, "WEBHOOKD_LISTEN", "127.0.0.1:8080", parseListen),
    databaseUrl: databaseUrl && parseWith(env, "DATABASE_URL", "", parseUrl(["postgres:", "postgresql:"])),
    natsUrl: natsUrl && parseWith(env, "NATS_URL", "", parseUrl(["nats:", "tls:"])),
    dataDir: path.resolve(nonEmpty(env, "WEBHOOKD_DATA_DIR") ?? ".webhookd"),
    adminKey: nonEmpty(env, "WEBHOOKD_ADMIN_KEY"),
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
        : parseWith(env, "WEBHOOKD_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h", parseRetrySchedule),
    deliveryTimeoutMs: parseWith(env, "WEBHOOKD_DELIVERY_TIMEOUT", "15s", parseDuration),
    eventTtlMs: parseWith(env, "WEBHOOKD_EVENT_TTL", "30d", parseDuration),
    secretGraceMs: parseWith(env, "WEBHOOKD_SECRET_GRACE", "24h", parseDuration),
    caFile: nonEmpty(env, "WEBHOOKD_CA_FILE"),
    nodeExtraCaFile: nonEmpty(env, "NODE_EXTRA_CA_CERTS"),
    natsStorage: parseWith(env, "WEBHOOKD_NATS_STORAGE", "memory", (raw) => {
      if (raw !== "memory" && raw !== "file") throw new Error('expected "memory" or "file"');
      return raw;
    }),
    natsPrefix: parseWith(env, "WEBHOOKD_NATS_PREFIX", "WEBHOOK", (raw) => {
      if (!/^[A-Za-z0-9_-]+$/.test(raw)) throw new Error("letters, digits, _ and - only");
      return raw;
    }),
    shardCount: parseWith(env, "WEBHOOKD_SHARDS", "64", parsePositiveInt),
    maxInFlight: parseWith(env, "WEBHOOKD_MAX_IN_FLIGHT", "512", parsePositiveInt),
    maxInFlightPerEndpoint: parseWith(env, "WEBHOOKD_MAX_IN_FLIGHT_PER_ENDPOINT", "16", parsePositiveInt),
    connectionsPerOrigin: parseWith(env, "WEBHOOKD_CONNECTIONS_PER_ORIGIN", "16", parsePositiveInt),
    leaseTtlMs: parseWith(env, "WEBHOOKD_LEASE_TTL", "10s", parseDuration),
    circuitFailures: parseWith(env, "WEBHOOKD_CIRCUIT_FAILURES", "5", parseCount),
    circuitCooldownMs: parseWith(env, "WEBHOOKD_CIRCUIT_COOLDOWN", "30s", parseDuration),
    autoDisableAfterMs: parseWith(env, "WEBHOOKD_AUTO_DISABLE_AFTER", "5d", (raw) => (raw === "0" ? 0 : parseDuration(raw))),
    replayRate: parseWith(env, "WEBHOOKD_REPLAY_RATE", "20", (raw) => {
      const value = Number(raw);
      if (!Number.isFinite(value) || value <= 0 || value > 10_000) throw new Error("expected deliveries per second, more than 0 and at most 10000");
      return value;
    }),
    logLevel: nonEmpty(env, "WEBHOOKD_LOG_LEVEL") ?? "info",
  };
}
