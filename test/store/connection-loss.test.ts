// Postgres restarting (or an administrator terminating backends) kills every idle pooled connection. The
// process must live through it, and the next statement must work on a fresh connection; an 'error' on
// an idle pg client that nobody listens to is an uncaught exception, which ends the process.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import os from "node:os";
import pg from "pg";
import { sql } from "kysely";
import { isDatabaseUnavailable, openStore } from "../../src/store/db.js";
import { restError } from "../../src/server/errors.js";
import { ADMIN_URL, createTestDatabase } from "../support/postgres.js";
import { startTcpProxy } from "../support/tcp-proxy.js";
import { collectUncaught } from "../support/uncaught.js";
import { sleep } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => console.error("cleanup failed", err));
});

/** The error `statement` fails with, or undefined when it succeeds. */
function failureOf(statement: Promise<unknown>): Promise<(Error & { code?: string }) | undefined> {
  return statement.then(
    () => undefined,
    (err: Error) => err,
  );
}

test("idle connections terminated by the server are replaced, and the process lives on", async () => {
  const database = await createTestDatabase("connection_loss");
  cleanups.push(() => database.drop());
  const failures: Error[] = [];
  const store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: 4, onConnectionError: (err) => failures.push(err) });
  cleanups.push(() => store.close());
  const uncaught = collectUncaught();
  cleanups.push(uncaught.stop);

  // Four idle connections in the pool.
  await Promise.all(Array.from({ length: 4 }, () => sql`select pg_sleep(0.05)`.execute(store.db)));
  const name = new URL(database.url).pathname.slice(1);
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    const { rows } = await admin.query("select pg_terminate_backend(pid) as done from pg_stat_activity where datname = $1", [name]);
    assert.equal(rows.length, 4, "four backends to terminate");
  } finally {
    await admin.end();
  }
  await sleep(300);

  assert.deepEqual(uncaught.errors.map((e) => e.message), [], "no uncaught exception");
  assert.equal(failures.length, 4, "each lost connection reported once");
  assert.match(failures[0]!.message, /terminating connection/);
  const { rows } = await sql<{ one: number }>`select 1 as one`.execute(store.db);
  assert.deepEqual(rows, [{ one: 1 }]);
});

test("a connection cut under a running statement fails that statement as 'unavailable', and the process lives on", async () => {
  const database = await createTestDatabase("connection_loss_busy");
  cleanups.push(() => database.drop());
  // The store reaches Postgres through a proxy that can close its connections with no word from the
  // server, as a crashed server or a broken network does.
  const proxy = await startTcpProxy(database.url);
  cleanups.push(() => proxy.close());
  const store = await openStore({ databaseUrl: proxy.url, dataDir: os.tmpdir(), poolSize: 2, onConnectionError: () => undefined });
  cleanups.push(() => store.close());
  const uncaught = collectUncaught();
  cleanups.push(uncaught.stop);

  // pg emits 'error' on a client whose connection ends while it is checked out; the pool listens only
  // to idle ones, so without a listener of the store's own that event is an uncaught exception.
  const running = failureOf(sql`select pg_sleep(1)`.execute(store.db));
  await sleep(200);
  proxy.cut();
  const failure = await running;
  await sleep(300);

  assert.deepEqual(uncaught.errors.map((e) => e.message), [], "no uncaught exception");
  assert.ok(failure instanceof Error, "the statement failed");
  assert.equal(isDatabaseUnavailable(failure), true, `classed as the database unavailable: ${failure.message}`);
  const { rows } = await sql<{ one: number }>`select 1 as one`.execute(store.db);
  assert.deepEqual(rows, [{ one: 1 }]);
});

test("a server that stops answering without a word: the statement fails as 'unavailable' after the watchdog, and the next one works", async () => {
  const database = await createTestDatabase("connection_loss_silent");
  cleanups.push(() => database.drop());
  const proxy = await startTcpProxy(database.url);
  cleanups.push(() => proxy.close());
  const store = await openStore({ databaseUrl: proxy.url, dataDir: os.tmpdir(), poolSize: 1, onConnectionError: () => undefined });
  cleanups.push(() => store.close());
  store.watchStatements(500);

  await sql`select 1`.execute(store.db);
  // The open connection goes silent and stays open, as one to a host that lost power does; a new
  // connection (the failed-over server at the same address) answers.
  proxy.freeze();
  const t0 = Date.now();
  const failure = await failureOf(sql`select 2`.execute(store.db));
  const took = Date.now() - t0;
  assert.ok(failure instanceof Error, "the statement failed");
  assert.equal(isDatabaseUnavailable(failure), true, `classed as the database unavailable: ${failure.message}`);
  assert.match(failure.message, /did not answer within 500 ms/);
  assert.ok(took >= 450 && took < 3_000, `given up after the watchdog (${took} ms)`);
  const { rows } = await sql<{ three: number }>`select 3 as three`.execute(store.db);
  assert.deepEqual(rows, [{ three: 3 }]);
});

test("a server out of connections for the role is unavailable, not an internal error", async () => {
  const database = await createTestDatabase("connection_loss_full");
  cleanups.push(() => database.drop());
  // A role allowed no connection at all: Postgres answers "too many connections for role" (53300), as a
  // server whose max_connections the deployment's pools outgrew does.
  const role = `webhookd_test_full_${Date.now().toString(36)}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`create role ${role} login connection limit 0`);
  cleanups.push(async () => {
    await admin.query(`drop role if exists ${role}`);
    await admin.end();
  });
  const url = new URL(database.url);
  url.username = role;
  const store = await openStore({ databaseUrl: url.toString(), dataDir: os.tmpdir(), poolSize: 1 });
  cleanups.push(() => store.close());
  const failure = await failureOf(sql`select 1`.execute(store.db));
  assert.equal(failure?.code, "53300", failure?.message);
  assert.equal(isDatabaseUnavailable(failure), true);
  assert.equal(restError(failure).status, 503, "the API answers 503 'unavailable'");
});
