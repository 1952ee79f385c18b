// The test databases' own lifecycle: drop() must not cut a session that is on its way out (pools
// close their connections after end() resolves), and must still drop a database a session holds on to.
import { test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { ADMIN_URL, createTestDatabase } from "./postgres.js";

async function databaseExists(url: string): Promise<boolean> {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    const { rows } = await admin.query("select 1 from pg_database where datname = $1", [new URL(url).pathname.slice(1)]);
    return rows.length === 1;
  } finally {
    await admin.end();
  }
}

test("drop waits for a session that is finishing instead of terminating it", async () => {
  const db = await createTestDatabase("drop_waits");
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  const finishing = client.query("select pg_sleep(0.3)").then(() => client.end());
  await db.drop();
  await finishing; // rejects with "terminating connection due to administrator command" if drop used force at once
  assert.equal(await databaseExists(db.url), false);
});

test("drop still removes a database whose session never leaves, once the grace has passed", async () => {
  const db = await createTestDatabase("drop_forces");
  const client = new pg.Client({ connectionString: db.url });
  const errors: Error[] = [];
  client.on("error", (err) => errors.push(err));
  await client.connect();
  await client.query("select 1");
  await db.drop(200);
  assert.equal(await databaseExists(db.url), false);
  assert.ok(errors.some((err) => /terminating connection/.test(err.message)), `the session was ended by force: ${errors}`);
  await client.end().catch(() => {});
});
