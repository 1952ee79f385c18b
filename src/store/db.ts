import fs from "node:fs/promises";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, Migrator, PostgresDialect, sql } from "kysely";
import pg from "pg";
import { migrationProvider } from "./migrations/index.js";
import { PGliteDialect } from "./pglite-dialect.js";
import { lockDataDir } from "./data-dir-lock.js";
import { WatchedClient, type WatchedClientConfig } from "./watched-client.js";
import { ensurePartitions } from "./partitions.js";
import type { Database } from "./schema.js";

export type Db = Kysely<Database>;

const INT8_OID = 20;
const BYTEA_OID = 17;
// Seqs and counts are bigint in SQL; they stay far below 2^53, so numbers are exact.
pg.types.setTypeParser(INT8_OID, (value) => Number(value));

export interface StoreOptions {
  /** postgres://… for a server; undefined for the embedded PGlite under dataDir. */
  databaseUrl: string | undefined;
  dataDir: string;
  poolSize?: number;
  /**
   * An idle pooled connection failed (Postgres restarted, a backend was terminated). The pool drops it
   * and the next statement opens a new one; without a listener the error would end the process.
   */
  onConnectionError?: (err: Error) => void;
}

export interface Store {
  db: Db;
  embedded: boolean;
  close(): Promise<void>;
  /**
   * From now on, a statement Postgres has not answered within `ms` gives its connection up and fails
   * as the database unavailable (WatchedClient). Off at first, so that migrations may take their time.
   */
  watchStatements(ms: number): void;
}

export async function openStore(options: StoreOptions): Promise<Store> {
  if (options.databaseUrl) {
    const watchdog: { ms?: number } = {};
    const config: pg.PoolConfig & WatchedClientConfig = {
      connectionString: options.databaseUrl,
      max: options.poolSize ?? 10,
      Client: WatchedClient,
      // pg-pool hands its options to each client it makes; this object is shared, not copied.
      statementWatchdog: watchdog,
    };
    const pool = new pg.Pool(config);
    pool.on("error", (err) => options.onConnectionError?.(err));
    // pg also emits 'error' on a client whose connection ends while it is checked out, and the pool
    // listens only to idle ones: unheard, that event ends the process. The statement running on it
    // fails with the same error, which its caller handles; the pool drops the client when it returns.
    pool.on("connect", (client) => client.on("error", () => undefined));
    const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
    return {
      db,
      embedded: false,
      close: () => db.destroy(),
      watchStatements(ms) {
        watchdog.ms = ms;
        // A server that takes a connection and never finishes the handshake is given up on too.
        pool.options.connectionTimeoutMillis = ms;
      },
    };
  }
  const dir = path.join(options.dataDir, "pg");
  await fs.mkdir(dir, { recursive: true });
  const lock = await lockDataDir(options.dataDir);
  try {
    const pglite = await PGlite.create(dir, {
      parsers: { [INT8_OID]: (value: string) => Number(value) },
      serializers: { [BYTEA_OID]: byteaText },
    });
    const db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
    return {
      db,
      embedded: true,
      // In-process: there is no connection to lose.
      watchStatements() {},
      async close() {
        await db.destroy();
        await lock.release();
      },
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/**
 * A bytea parameter as PGlite sends it, in Postgres' hex format, by Buffer's own encoder. PGlite's
 * default built an array of one string per byte: the ingest's payloads (one bytea of up to 26 MB in a
 * call) took 13 s and 3 GB there, with the embedded server's event loop stopped meanwhile.
 */
export function byteaText(value: Uint8Array): string {
  return `\\x${Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString("hex")}`;
}

/** The database could not be reached at start, or refused this process; the message says which and where. */
export class DatabaseUnreachableError extends Error {}

/**
 * Waits until Postgres answers, up to `timeoutMs`: a deployment's processes often start before their
 * database is ready. A server that answers and refuses (no such database, a wrong password) fails at
 * once. `onWait` hears the first failure and one every 5 s.
 */
export async function awaitDatabase(db: Db, databaseUrl: string, options: { timeoutMs: number; onWait?: (reason: string) => void }): Promise<void> {
  const where = describeDatabase(databaseUrl);
  const deadline = Date.now() + options.timeoutMs;
  let told = 0;
  for (let backoff = 100; ; backoff = Math.min(backoff * 2, 1_000)) {
    try {
      await sql`select 1`.execute(db);
      return;
    } catch (err) {
      const reason = (err as Error).message;
      if (!isDatabaseUnavailable(err)) throw new DatabaseUnreachableError(`Postgres at ${where} refused this process: ${reason}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new DatabaseUnreachableError(`cannot reach Postgres at ${where} (${reason}); waited ${Math.round(options.timeoutMs / 1000)} s`);
      if (Date.now() - told >= 5_000) {
        told = Date.now();
        options.onWait?.(reason);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(backoff, left)));
    }
  }
}

/** host:port/database of a connection URL, never its password; the URL's scheme alone when it has no host. */
export function describeDatabase(databaseUrl: string): string {
  try {
    const url = new URL(databaseUrl);
    const host = url.hostname || url.searchParams.get("host") || "localhost";
    return `${host}:${url.port || "5432"}${url.pathname.length > 1 ? url.pathname : ""}`;
  } catch {
    return "DATABASE_URL";
  }
}

/** Applies every pending migration; an error names the migration that failed. */
export async function migrate(db: Db): Promise<string[]> {
  const migrator = new Migrator({ db, provider: migrationProvider });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error) {
    const name = failed ? ` (${failed.migrationName})` : "";
    throw new Error(`database migration failed${name}: ${(error as Error).message ?? String(error)}`);
  }
  // Every start makes the coming days' partitions, so a deployment without a dispatcher still has them.
  await ensurePartitions(db, Date.now());
  return (results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
}

/** Kysely errors from pg carry the SQLSTATE in `code`. */
export function isUniqueViolation(err: unknown): boolean {
  return sqlState(err) === "23505";
}

/** A table the statement names does not exist (a day partition never made, or dropped meanwhile). */
export function isUndefinedTable(err: unknown): boolean {
  return sqlState(err) === "42P01";
}

/** Node's codes for a connection that could not be made or was cut. */
const CONNECTION_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN"]);

/**
 * The database could not be reached, or went away mid-statement: a refused or cut connection, a server
 * shutting down, crashing or still starting (SQLSTATE class 08, 57P01–57P03), or out of a resource (class
 * 53: too many connections, disk full, out of memory). The statement may be tried again once it is back;
 * nothing about the request was wrong.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  const code = sqlState(err);
  if (code !== undefined && (CONNECTION_ERRNOS.has(code) || /^(08|53)/.test(code) || /^57P0[123]$/.test(code))) return true;
  // pg reports a connection lost under a running statement, and pg-pool a connect that timed out, without a code.
  return err instanceof Error && /^Connection terminated|connection error and is not queryable|^timeout exceeded when trying to connect/.test(err.message);
}

function sqlState(err: unknown): string | undefined {
  return typeof err === "object" && err !== null ? (err as { code?: string }).code : undefined;
}
