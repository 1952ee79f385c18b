import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { freePort } from "./ports.js";
import { serverProcess } from "./server-process.js";

export const ADMIN_URL = process.env.TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** A fresh database on the real server, dropped by `drop()`: tests never share state or collide. */
export async function createTestDatabase(label: string): Promise<{ url: string; drop(graceMs?: number): Promise<void> }> {
  const name = `webhookd_test_${label.replace(/[^a-z0-9]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    /**
     * Waits up to `graceMs` for the database's sessions to end, then drops it, ending any left.
     * The wait matters: a pg Pool's end() resolves before its connections have closed, and a session
     * ended by force sends its client a FATAL that an ending pool reports as an 'error' event, which
     * is an uncaught exception in a test whose own pool has no listener.
     */
    async drop(graceMs = 5_000) {
      const client = new pg.Client({ connectionString: ADMIN_URL });
      await client.connect();
      try {
        const deadline = Date.now() + graceMs;
        while (Date.now() < deadline) {
          const { rows } = await client.query("select count(*)::int as n from pg_stat_activity where datname = $1", [name]);
          if (rows[0].n === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
        await client.query(`drop database if exists ${name} with (force)`);
      } finally {
        await client.end();
      }
    },
  };
}

/**
 * A Postgres server of the test's own (initdb in a temp dir, a free port), to crash and start again on
 * the same port and files: what a test of the shared server cannot do without breaking every other test.
 * `crash()` is an immediate shutdown (SIGQUIT to the postmaster: every backend exits at once, no
 * checkpoint), so the next `start()` runs crash recovery. `stop()` ends it and removes its files. As
 * root, the server runs as the `postgres` user (Postgres refuses to run as root). `started: false`: made
 * (initdb), its port chosen, not started yet.
 */
export async function startPostgresServer(options: { started?: boolean } = {}): Promise<{ url: string; start(): Promise<void>; crash(): Promise<void>; stop(): Promise<void> }> {
  const bin = process.env.TEST_POSTGRES_BIN ?? execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim();
  const asUser =
    process.getuid?.() === 0
      ? { uid: Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" })), gid: Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" })) }
      : {};
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-pg-"));
  if (asUser.uid !== undefined) await fs.chown(dir, asUser.uid, asUser.gid!);
  const data = path.join(dir, "data");
  const run = (cmd: string, args: string[]) =>
    new Promise<void>((resolve, reject) =>
      execFile(path.join(bin, cmd), args, { ...asUser, cwd: dir }, (err, _stdout, stderr) => (err ? reject(new Error(`${cmd} failed: ${stderr || err.message}`)) : resolve())),
    );
  await run("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
  const port = await freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const server = serverProcess("postgres", path.join(bin, "postgres"), ["-D", data, "-p", String(port), "-k", dir, "-c", "listen_addresses=127.0.0.1"], {
    ready: /ready to accept connections/,
    timeoutMs: 20_000,
    spawn: { ...asUser, cwd: dir },
  });
  const start = () => server.start();
  const crash = () => server.end("SIGQUIT");
  if (options.started ?? true) await start();
  return {
    url,
    start,
    crash,
    async stop() {
      await crash();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}
