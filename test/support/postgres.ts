import { randomBytes } from "node:crypto";
import pg from "pg";

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
