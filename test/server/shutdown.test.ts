// A stop (what SIGTERM runs) lets the requests the API has begun be answered before it cuts connections:
// cut after 2 s, a publish waiting on Postgres went on to commit unanswered, and the producer's retry
// made a second event. Requests begun after the stop are refused with 503; idle keep-alive connections are
// closed and a stalled upload is cut, so neither holds the stop. Real Postgres.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http2 from "node:http2";
import net from "node:net";
import pg from "pg";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { listen } from "../../src/server/http-server.js";

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

test("a stop closes idle keep-alive connections at once and cuts an upload that stalls, within about 2 s", async () => {
  const { app, url } = await startTestApp({ DATABASE_URL: database.url }, ["api"]);
  const { port } = new URL(url);
  const connect = () =>
    new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect(Number(port), "127.0.0.1", () => resolve(socket));
      socket.once("error", reject);
    });
  const closed = (socket: net.Socket) => new Promise<number>((resolve) => socket.once("close", () => resolve(Date.now())));
  // A keep-alive connection, idle after one answered request.
  const idle = await connect();
  const idleClosed = closed(idle);
  idle.write(`GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n`);
  await new Promise((resolve) => idle.once("data", resolve));
  // An upload that sends its headers and a few bytes of its body, then nothing.
  const stalled = await connect();
  const stalledClosed = closed(stalled);
  stalled.write(`POST /events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${TEST_ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{"event_`);
  await new Promise((resolve) => setTimeout(resolve, 200));

  const t0 = Date.now();
  await app.stop();
  const stoppedAfter = Date.now() - t0;
  assert.ok((await idleClosed) - t0 < 500, "the idle connection is closed at the stop");
  assert.ok((await stalledClosed) - t0 < 3_000, "the stalled upload is cut");
  assert.ok(stoppedAfter < 3_000, `the stop took ${stoppedAfter} ms`);
});

test("pipelined requests received before the stop are each answered; an HTTP/2 request without a body, busy past 2 s, is answered too", async () => {
  const server = await listen(
    async (req, res) => {
      for await (const _ of req as AsyncIterable<Buffer>);
      await new Promise((resolve) => setTimeout(resolve, req.url === "/slow" ? 2_500 : req.url === "/one" ? 500 : 10));
      res.writeHead(200, { "content-type": "text/plain" });
      res.end(`answered ${req.url}`);
    },
    "127.0.0.1",
    0,
  );
  const socket = net.connect(server.address.port, "127.0.0.1");
  let received = "";
  socket.on("data", (data) => (received += data));
  await new Promise((resolve) => socket.once("connect", resolve));
  socket.write(["/one", "/two"].map((path) => `POST ${path} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}`).join(""));
  const h2 = http2.connect(`http://127.0.0.1:${server.address.port}`);
  const stream = h2.request({ ":path": "/slow", ":method": "GET" });
  let h2Body = "";
  stream.on("data", (data) => (h2Body += data));
  const h2Ended = new Promise<void>((resolve) => stream.once("close", () => resolve()));
  await new Promise((resolve) => setTimeout(resolve, 200));
  await server.close();
  await h2Ended;
  h2.close();
  assert.deepEqual([...received.matchAll(/answered (\/\w+)/g)].map((m) => m[1]), ["/one", "/two"]);
  assert.equal(h2Body, "answered /slow");
});
