import fs from "node:fs/promises";
import path from "node:path";
import tls from "node:tls";
import { generateApiKey } from "./server/auth.js";
import { SecretBox } from "./core/secret-box.js";
import type { Config } from "./config.js";
import { createLogger, type Logger } from "./logger.js";
import { awaitDatabase, describeDatabase, migrate, openStore, type Store } from "./store/db.js";
import { ensureDefaultTenant } from "./store/tenants.js";
import { highestShardInUse, newestSealedSecrets } from "./store/webhooks.js";
import { forgetAllDispatchers } from "./store/leases.js";
import { ensureDataDir } from "./store/data-dir-lock.js";
import { recordShardCount, shardCountOnRecord } from "./store/deployment.js";
import type { DeliveryFeed } from "./queue/feed.js";
import { createEmbeddedFeed } from "./queue/embedded.js";
import { createJetStreamFeed } from "./queue/jetstream.js";
import { createServices } from "./server/services.js";
import { createApiHandler, createOpsHandler, listen, type ApiServer } from "./server/http-server.js";
import { Dispatcher } from "./dispatcher/dispatcher.js";
import { createSender, type Sender } from "./dispatcher/sender.js";
import type { Resolver } from "./dispatcher/guarded-lookup.js";

export type Role = "api" | "dispatcher";

export interface Webhookd {
  /** Where the API listens, when it runs. */
  url: string | undefined;
  /** Set when this start generated the embedded admin key (shown once). */
  generatedAdminKey: string | undefined;
  /** Where health, readiness and metrics are served on their own (WEBHOOKD_METRICS_LISTEN). */
  metricsUrl: string | undefined;
  store: Store;
  feed: DeliveryFeed;
  dispatcher: Dispatcher | undefined;
  log: Logger;
  /** Stops accepting work, drains attempts in flight, closes connections. */
  stop(): Promise<void>;
}

export interface StartOptions {
  roles: Role[];
  logger?: Logger;
  /** How long a start waits for Postgres to answer (30 s); tests shorten it. */
  databaseWaitMs?: number;
  /** Tests answer DNS for made-up names with this. */
  resolve?: Resolver;
  dispatcherTimings?: {
    leaseTtlMs?: number;
    leaseIntervalMs?: number;
    sweepIntervalMs?: number;
    sweepGraceMs?: number;
    housekeepingIntervalMs?: number;
    housekeepingClock?: () => number;
    sweepPageSize?: number;
  };
}

export class StartupError extends Error {}

/** Long enough for a database started beside webhookd (a compose file, a fresh VM) to come up. */
export const DATABASE_WAIT_MS = 30_000;
/**
 * A statement unanswered this long means its connection is dead (a server gone without a word). The
 * slowest statements once migrations are done (a replay of a large range, housekeeping DDL waiting on
 * a lock) take seconds; TCP alone would hold a dead connection about 15 minutes.
 */
const STATEMENT_WATCHDOG_MS = 60_000;

export async function startWebhookd(config: Config, options: StartOptions): Promise<Webhookd> {
  const log = options.logger ?? createLogger(config.logLevel, "webhookd");
  const embedded = !config.databaseUrl;
  if (embedded && options.roles.length < 2) {
    throw new StartupError(
      "the embedded database serves one process: run `webhookd serve`, or set DATABASE_URL to run the api and dispatcher roles apart",
    );
  }
  if (embedded) await ensureDataDir(config.dataDir);
  const secretBox = await openSecretBox(config, embedded);
  const store = await openStore({
    databaseUrl: config.databaseUrl,
    dataDir: config.dataDir,
    poolSize: 20,
    // The message only: pg hangs the whole client (config, statements) on the error.
    onConnectionError: (err) => log.warn({ reason: err.message }, "an idle Postgres connection was lost; the next statement opens a new one"),
  });
  const stops: (() => Promise<unknown>)[] = [() => store.close()];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch((err) => log.warn({ err }, "shutdown step failed"));
  };
  let generatedAdminKey: string | undefined;
  try {
    if (config.databaseUrl) {
      const timeoutMs = options.databaseWaitMs ?? DATABASE_WAIT_MS;
      await awaitDatabase(store.db, config.databaseUrl, {
        timeoutMs,
        onWait: (reason) => log.warn({ database: describeDatabase(config.databaseUrl!), reason }, `Postgres is not reachable yet; waiting up to ${timeoutMs / 1000} s`),
      });
    }
    const applied = await migrate(store.db);
    if (applied.length > 0) log.info({ applied }, "migrations applied");
    store.watchStatements(STATEMENT_WATCHDOG_MS);
    await ensureDefaultTenant(store.db);
    await checkEncryptionKey(store.db, secretBox);
    await checkShardCount(store.db, config.shardCount);
    if (store.embedded) await forgetAllDispatchers(store.db);

    let adminKey = config.adminKey;
    if (!adminKey && embedded) ({ adminKey, generatedAdminKey } = await embeddedAdminKey(config.dataDir));
    if (!adminKey && options.roles.includes("api")) log.warn("WEBHOOKD_ADMIN_KEY is not set: only API keys already in the database are accepted");

    const feed: DeliveryFeed = config.natsUrl
      ? await createJetStreamFeed({
          url: config.natsUrl,
          prefix: config.natsPrefix,
          storage: config.natsStorage,
          logger: log,
          name: `webhookd-${process.pid}`,
        }).catch((err: Error) => {
          // Only what no retry mends is thrown (credentials, permissions, no JetStream): NATS merely down is waited for.
          throw new StartupError(`NATS at NATS_URL refused webhookd: ${err.message}`);
        })
      : createEmbeddedFeed();
    stops.push(() => feed.close());

    let dispatcher: Dispatcher | undefined;
    let sender: Sender | undefined;
    if (options.roles.includes("dispatcher")) {
      // Node's `ca` replaces the trust store: the operator's CAs are added to it, not put in its place.
      // loadConfig read the files, so a wrong path stopped the start before the store was opened.
      const ca = config.caPem ? [...tls.rootCertificates, ...(config.nodeExtraCaPem ? [config.nodeExtraCaPem] : []), config.caPem] : undefined;
      sender = createSender({
        addressPolicy: { allowedCidrs: config.allowedCidrs },
        allowHttp: config.allowHttp,
        timeoutMs: config.deliveryTimeoutMs,
        connectionsPerOrigin: config.connectionsPerOrigin,
        resolve: options.resolve,
        ca,
      });
      stops.push(() => sender!.close());
      dispatcher = new Dispatcher({
        db: store.db,
        feed,
        sender,
        log,
        shardCount: config.shardCount,
        retrySchedule: config.retrySchedule,
        maxInFlight: config.maxInFlight,
        maxInFlightPerEndpoint: config.maxInFlightPerEndpoint,
        secretBox,
        leaseTtlMs: config.leaseTtlMs,
        circuitPolicy: {
          failureThreshold: config.circuitFailures,
          cooldownMs: config.circuitCooldownMs,
          maxCooldownMs: Math.max(config.circuitCooldownMs, 10 * 60 * 1000),
        },
        autoDisableAfterMs: config.autoDisableAfterMs,
        eventTtlMs: config.eventTtlMs,
        leaseIntervalMs: Math.max(100, Math.round(config.leaseTtlMs / 5)),
        ...options.dispatcherTimings,
      });
      await dispatcher.start();
      stops.push(() => dispatcher!.stop());
    }

    let server: ApiServer | undefined;
    const readiness = {
      store: async () => {
        await store.db.selectFrom("tenants").select("id").limit(1).execute();
        return true;
      },
      queue: async () => feed.healthy(),
    };
    if (options.roles.includes("api")) {
      const services = createServices({
        db: store.db,
        feed,
        urlPolicy: { allowedCidrs: config.allowedCidrs, allowHttp: config.allowHttp, maxLength: 2048 },
        shardCount: config.shardCount,
        eventTtlMs: config.eventTtlMs,
        replayRate: config.replayRate,
        secretGraceMs: config.secretGraceMs,
        secretBox,
        apiRateLimit: config.apiRateLimit,
        bootstrapAdminKey: adminKey,
        resolve: options.resolve,
      });
      server = await listenOn(createApiHandler({ services, readiness }), config.listen, "WEBHOOKD_LISTEN, or --listen");
      stops.push(() => server!.close());
    }
    let metricsServer: ApiServer | undefined;
    if (config.metricsListen) {
      metricsServer = await listenOn(createOpsHandler(readiness), config.metricsListen, "WEBHOOKD_METRICS_LISTEN");
      stops.push(() => metricsServer!.close());
    }

    // Recorded once the start has succeeded: a first start that failed (a port in use) fixed the count
    // for good, though nothing had run with it. Two first starts racing with different counts: the
    // one that loses stops here.
    const recorded = await recordShardCount(store.db, config.shardCount);
    if (recorded !== config.shardCount) throw shardCountDiffers(config.shardCount, recorded);

    return {
      url: server && urlOf(server),
      metricsUrl: metricsServer && urlOf(metricsServer),
      generatedAdminKey,
      store,
      feed,
      dispatcher,
      log,
      stop: stopAll,
    };
  } catch (err) {
    await stopAll();
    // Made by this start, which never got to print it: the next start makes and prints another. Kept,
    // it was printed never (a first start that could not listen, then one that could).
    if (generatedAdminKey) await fs.rm(path.join(config.dataDir, ADMIN_KEY_FILE), { force: true });
    throw err;
  }
}

/**
 * The key that seals signing secrets. Embedded, it is made on first start and kept in the data dir
 * beside the database (so a copy of the database files alone does not reveal secrets); with a shared
 * Postgres every process must be given the same key.
 */
async function openSecretBox(config: Config, embedded: boolean): Promise<SecretBox> {
  if (config.encryptionKey) return SecretBox.fromEncodedKey(config.encryptionKey);
  if (!embedded) {
    throw new StartupError(
      "WEBHOOKD_ENCRYPTION_KEY is not set: with DATABASE_URL every webhookd process needs the same key to seal and open signing secrets (make one with `openssl rand -base64 32`)",
    );
  }
  const { value } = await keyFile(config.dataDir, "encryption-key", SecretBox.generateEncodedKey);
  return SecretBox.fromEncodedKey(value);
}

/**
 * Refuses a shard count other than the deployment's. Each webhook keeps the shard it was hashed to, and a
 * process claims only shards below its count: one with a lower count left webhooks out (their deliveries
 * pending, unsent, until they expired), and an API with a higher one made webhooks on shards that running
 * dispatchers never claimed. The first start to succeed records the count (see recordShardCount); before
 * that record existed, the shards webhooks are on tell a count that is too low.
 */
async function checkShardCount(db: Store["db"], shardCount: number): Promise<void> {
  const highest = await highestShardInUse(db);
  if (highest !== undefined && highest >= shardCount) {
    throw new StartupError(
      `WEBHOOKD_SHARDS=${shardCount} is lower than the deployment's: webhooks in the database are on shards up to ${highest}, which no process would work; set WEBHOOKD_SHARDS to the value the deployment was started with (at least ${highest + 1})`,
    );
  }
  const recorded = await shardCountOnRecord(db);
  if (recorded !== undefined && recorded !== shardCount) throw shardCountDiffers(shardCount, recorded);
}

function shardCountDiffers(shardCount: number, recorded: number): StartupError {
  return new StartupError(
    `WEBHOOKD_SHARDS=${shardCount} differs from the deployment's ${recorded} (recorded by its first start): every process of a deployment must use the same shard count`,
  );
}

/**
 * Refuses a key that opens none of the newest webhooks' secrets: every process of a deployment must have
 * the same one. Started with another (a typo, a key changed on one host), an API sealed every webhook it
 * made under it and said nothing, and no dispatcher could ever sign their deliveries.
 */
async function checkEncryptionKey(db: Store["db"], secretBox: SecretBox): Promise<void> {
  const sealed = await newestSealedSecrets(db, 20);
  if (sealed.length === 0) return;
  const opens = sealed.some(({ id, sealed }) => {
    try {
      secretBox.open(sealed, id);
      return true;
    } catch {
      return false;
    }
  });
  if (!opens) {
    throw new StartupError(
      `WEBHOOKD_ENCRYPTION_KEY opens none of the signing secrets in the database (the newest webhook is ${sealed[0]!.id}): every webhookd process of a deployment needs the key they were sealed with`,
    );
  }
}

const ADMIN_KEY_FILE = "admin-key";

async function listenOn(handler: Parameters<typeof listen>[0], at: { host: string; port: number }, setting: string): Promise<ApiServer> {
  return listen(handler, at.host, at.port).catch((err: NodeJS.ErrnoException) => {
    throw new StartupError(`cannot listen on ${at.host}:${at.port} (${setting}): ${err.code ?? err.message}`);
  });
}

function urlOf(server: ApiServer): string {
  const host = server.address.host.includes(":") ? `[${server.address.host}]` : server.address.host;
  return `http://${host}:${server.address.port}`;
}

/** The embedded mode's admin key: made on first start and printed then, kept in the data dir. */
async function embeddedAdminKey(dataDir: string): Promise<{ adminKey: string; generatedAdminKey: string | undefined }> {
  const { value, created } = await keyFile(dataDir, ADMIN_KEY_FILE, generateApiKey);
  return { adminKey: value, generatedAdminKey: created ? value : undefined };
}

/** A key kept in a file of the data dir (mode 600), made by `generate` when the file is not there yet. */
async function keyFile(dataDir: string, name: string, generate: () => string): Promise<{ value: string; created: boolean }> {
  const file = path.join(dataDir, name);
  try {
    return { value: (await fs.readFile(file, "utf8")).trim(), created: false };
  } catch (err) {
    if ((err as { code?: string }).code !== "ENOENT") throw err;
  }
  const value = generate();
  await fs.mkdir(dataDir, { recursive: true });
  await fs.writeFile(file, `${value}\n`, { mode: 0o600, flag: "wx" });
  return { value, created: true };
}
