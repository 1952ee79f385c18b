// A stop (what SIGTERM runs) lets the requests the API has begun be answered before it cuts connections:
// cut after 2 s, a publish waiting on Postgres went on to commit unanswered, and the producer's retry
// made a second event. Requests begun after the stop are refused with 503. Real Postgres.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";

let database: Awaited<ReturnType<typeof createTestDatabase>>;
const clients: pg.Client[] = [];

before(async () => {
  database = await createTestDatabase("shutdown");
});

after(async () => {
  for (const client of clients) await client.end().catch(() => undefined);
  await database?.drop();
});

async function sql(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: database.url });
  await client.connect();
  clients.push(client);
  return client;
}

test("a publish in flight when the API stops is answered before the connections go; one begun after is refused", async () => {
  const { app, url } = await startTestApp({ DATABASE_URL: database.url }, ["api"]);
  const api = restClient(url, TEST_ADMIN_KEY);
  const hook = await api("POST", "/webhooks", { url: "http://127.0.0.1:9/h", event_types: ["a.b"] });
  assert.equal(hook.status, 201);

  // The publish waits on the webhook's row, which another session holds for 3 s.
  const locker = await sql();
  await locker.query("begin");
  await locker.query("select id from webhooks where id = $1 for update", [hook.body.webhook_id]);
  const publish = api("POST", "/events", { event_type: "a.b", payload: { n: 1 } }).then(
    (r) => `answered ${r.status}`,
    (err: Error) => `no answer: ${(err.cause as Error)?.message ?? err.message}`,
  );
  await new Promise((resolve) => setTimeout(resolve, 300));
  const stopped = app.stop();
  await new Promise((resolve) => setTimeout(resolve, 100));
  const late = await fetch(`${url}/webhooks`, { headers: { authorization: `Bearer ${TEST_ADMIN_KEY}` } }).then(
    (r) => r.status,
    () => "refused connection",
  );
  setTimeout(() => void locker.query("commit"), 3_000);
  assert.equal(await publish, "answered 201");
  await stopped;
  const { rows } = await (await sql()).query("select count(*)::int as n from events");
  assert.equal(rows[0].n, 1);
  assert.ok(late === 503 || late === "refused connection", `a request after the stop: ${late}`);
});
