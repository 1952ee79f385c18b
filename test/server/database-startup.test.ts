// webhookd started against a Postgres that is not there yet, never comes, or refuses it: it waits for a
// database that comes, and otherwise stops with one line naming where and why (no stack, no password).
import { after, test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { DatabaseUnreachableError } from "../../src/store/db.js";
import { restClient, startTestApp, TEST_ADMIN_KEY, TEST_ENCRYPTION_KEY } from "../support/app.js";
import { ADMIN_URL, createTestDatabase, startPostgresServer } from "../support/postgres.js";
import { freePort } from "../support/ports.js";
import { runBin } from "../support/processes.js";
import { sleep } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => console.error("cleanup failed", err));
});

test("started before Postgres: the start waits for it, then serves", async () => {
  const server = await startPostgresServer({ started: false });
  cleanups.push(() => server.stop());
  const t0 = Date.now();
  const starting = startTestApp({ DATABASE_URL: server.url }, ["api"]);
  await sleep(1_500);
  await server.start();
  const { app, url } = await starting;
  cleanups.push(() => app.stop());
  assert.ok(Date.now() - t0 >= 1_500, "the start waited for the database");
  const res = await restClient(url, TEST_ADMIN_KEY)("GET", "/webhooks");
  assert.equal(res.status, 200, JSON.stringify(res.body));
});

test("Postgres never comes: the start fails after the wait, naming where, without the password", async () => {
  const port = await freePort();
  const t0 = Date.now();
  await assert.rejects(startTestApp({ DATABASE_URL: `postgres://webhookd:s3cret@127.0.0.1:${port}/hooks` }, ["api"], { databaseWaitMs: 1_000 }), (err: Error) => {
    assert.ok(err instanceof DatabaseUnreachableError, String(err));
    assert.equal(err.message, `cannot reach Postgres at 127.0.0.1:${port}/hooks (connect ECONNREFUSED 127.0.0.1:${port}); waited 1 s`);
    return true;
  });
  const took = Date.now() - t0;
  assert.ok(took >= 900 && took < 5_000, `gave up after the wait (${took} ms)`);
});

test("a database that does not exist: the binary exits 2 at once with one line naming it", async () => {
  const url = new URL(ADMIN_URL);
  url.pathname = "/webhookd_no_such_database";
  const t0 = Date.now();
  const { code, output } = await runBin("webhookd", ["api"], { DATABASE_URL: url.toString(), WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY, WEBHOOKD_LISTEN: "127.0.0.1:0" });
  assert.equal(code, 2, output);
  assert.equal(output, `webhookd: Postgres at ${url.hostname}:${url.port || 5432}/webhookd_no_such_database refused this process: database "webhookd_no_such_database" does not exist\n`);
  assert.ok(Date.now() - t0 < 10_000, "no wait for a server that answered");
});

// The embedded serve creates the data dir, the database and the key files first thing; a bad value must
// stop it before any of that (the CA file used to be read once the database had been migrated).
test("an unreadable WEBHOOKD_CA_FILE or unknown WEBHOOKD_LOG_LEVEL: exit 2 naming it, nothing created", async () => {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-bad-config-"));
  cleanups.push(() => fs.rm(root, { recursive: true, force: true }));
  const cases: [Record<string, string>, RegExp][] = [
    [{ WEBHOOKD_CA_FILE: path.join(root, "no-such-ca.pem") }, /^webhookd: WEBHOOKD_CA_FILE=".*no-such-ca\.pem" is invalid: cannot read it: ENOENT/],
    [{ WEBHOOKD_LOG_LEVEL: "loud" }, /^webhookd: WEBHOOKD_LOG_LEVEL="loud" is invalid: expected one of fatal, error, warn, info, debug, trace, silent/],
  ];
  const results = await Promise.all(
    cases.map(([env], i) => runBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: path.join(root, `data-${i}`), WEBHOOKD_LISTEN: "127.0.0.1:0", ...env })),
  );
  for (const [i, [env, message]] of cases.entries()) {
    const res = results[i]!;
    assert.equal(res.code, 2, `${JSON.stringify(env)}: ${res.output}`);
    assert.match(res.output, message);
    assert.doesNotMatch(res.output, /\n\s+at /, "a message, not a stack trace");
  }
  assert.deepEqual(await fs.readdir(root), [], "no data dir, database or key file was created");
});

/** A database a first start made (the API, in this process), with one webhook on it. */
async function deployedWithWebhook(label: string) {
  const database = await createTestDatabase(label);
  cleanups.push(() => database.drop());
  const { app, url } = await startTestApp({ DATABASE_URL: database.url }, ["api"]);
  const created = await restClient(url, TEST_ADMIN_KEY)("POST", "/webhooks", { url: "http://127.0.0.1:9/h", event_types: ["a.b"] });
  assert.equal(created.status, 201);
  await app.stop();
  return { database, webhookId: created.body.webhook_id as string };
}

/** What the binary is started with on that database: the tests' keys, any free port. */
function binEnv(databaseUrl: string) {
  return { DATABASE_URL: databaseUrl, WEBHOOKD_ADMIN_KEY: TEST_ADMIN_KEY, WEBHOOKD_LISTEN: "127.0.0.1:0", WEBHOOKD_ENCRYPTION_KEY: TEST_ENCRYPTION_KEY };
}

test("a WEBHOOKD_ENCRYPTION_KEY that opens none of the database's signing secrets: exit 2 naming it", async () => {
  const { database, webhookId } = await deployedWithWebhook("wrong_key");
  const { code, output } = await runBin("webhookd", ["api"], { ...binEnv(database.url), WEBHOOKD_ENCRYPTION_KEY: Buffer.alloc(32, 9).toString("base64") });
  assert.equal(code, 2, output);
  assert.equal(
    output,
    `webhookd: WEBHOOKD_ENCRYPTION_KEY opens none of the signing secrets in the database (the newest webhook is ${webhookId}): every webhookd process of a deployment needs the key they were sealed with\n`,
  );
});

test("a WEBHOOKD_SHARDS lower than the shards webhooks are on: exit 2 naming it, as nothing would work those shards", async () => {
  const { database } = await deployedWithWebhook("shards_lowered");
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  await client.query("update webhooks set shard = 41");
  await client.end();
  const { code, output } = await runBin("webhookd", ["dispatcher"], { ...binEnv(database.url), WEBHOOKD_SHARDS: "8" });
  assert.equal(code, 2, output);
  assert.match(output, /^webhookd: WEBHOOKD_SHARDS=8 is lower than the deployment's: webhooks in the database are on shards up to 41, which no process would work; set WEBHOOKD_SHARDS to the value the deployment was started with \(at least 42\)\n$/);
});

test("a WEBHOOKD_SHARDS other than the deployment's recorded one: exit 2, even a higher one (running dispatchers would never claim its shards)", async () => {
  const database = await createTestDatabase("shards_recorded");
  cleanups.push(() => database.drop());
  const { app } = await startTestApp({ DATABASE_URL: database.url }, ["api"]);
  await app.stop();
  const { code, output } = await runBin("webhookd", ["api"], { ...binEnv(database.url), WEBHOOKD_SHARDS: "128" });
  assert.equal(code, 2, output);
  assert.equal(output, "webhookd: WEBHOOKD_SHARDS=128 differs from the deployment's 64 (recorded by its first start): every process of a deployment must use the same shard count\n");
});

test("a first start that fails records no shard count: the next may use another", async () => {
  const database = await createTestDatabase("shards_failed_start");
  cleanups.push(() => database.drop());
  const busy = net.createServer();
  await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => new Promise((resolve) => busy.close(resolve)));
  const failed = await runBin("webhookd", ["api"], { ...binEnv(database.url), WEBHOOKD_LISTEN: `127.0.0.1:${(busy.address() as net.AddressInfo).port}` });
  assert.equal(failed.code, 2, failed.output);
  assert.match(failed.output, /cannot listen/);
  const { app } = await startTestApp({ DATABASE_URL: database.url, WEBHOOKD_SHARDS: "128" }, ["api"]);
  await app.stop();
});
