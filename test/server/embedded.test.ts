// The real binary: embedded mode on PGlite across a restart, `migrate`, and refusals at start.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createTestDatabase } from "../support/postgres.js";
import { restClient } from "../support/app.js";
import { freePort } from "../support/ports.js";
import { runBin, spawnBin, type Spawned } from "../support/processes.js";
import { startReceiver, verifyDelivery, type Received } from "../support/receiver.js";

const PUBLIC_URL = "https://93.184.216.34/hook";

/** `webhookd serve` on a free port of its own, in embedded mode on `dataDir`; resolves once it listens. */
async function serveOn(dataDir: string, running: Spawned[], env: Record<string, string> = {}): Promise<{ proc: Spawned; url: string }> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const proc = spawnBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: dataDir, WEBHOOKD_LISTEN: `127.0.0.1:${port}`, ...env });
    running.push(proc);
    try {
      const [, url] = await proc.waitFor(/listening on (http:\/\/\S+)/, 60_000);
      assert.equal(url, `http://127.0.0.1:${port}`);
      return { proc, url: url! };
    } catch (err) {
      // Someone else may take the free port between our probe and the server's listen.
      if (attempt < 3 && proc.output().includes("EADDRINUSE")) continue;
      throw err;
    }
  }
}

// Nothing here shares state, so the tests run side by side: each mostly waits for processes to start.
describe("the webhookd binary", { concurrency: 2 }, () => {
  describe("webhookd serve, embedded", () => {
    let dataDir: string;
    const running: Spawned[] = [];

    before(async () => {
      dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-embedded-"));
    });

    after(async () => {
      for (const p of running) await p.kill("SIGKILL");
      await fs.rm(dataDir, { recursive: true, force: true });
    });

    const serve = () => serveOn(dataDir, running);

    test("first start prints an admin key that works, keeps data across a restart, and prints no key again", async () => {
      // A first start that cannot listen exits 2 naming where, and leaves no key it never printed.
      const squatter = net.createServer();
      await new Promise<void>((resolve) => squatter.listen(0, "127.0.0.1", resolve));
      const taken = (squatter.address() as net.AddressInfo).port;
      const refused = await runBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: dataDir, WEBHOOKD_LISTEN: `127.0.0.1:${taken}` });
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
      assert.equal(refused.code, 2, refused.output);
      assert.match(refused.output, new RegExp(`^webhookd: cannot listen on 127\\.0\\.0\\.1:${taken} \\(WEBHOOKD_LISTEN, or --listen\\): EADDRINUSE\\n$`, "m"));
      await assert.rejects(fs.stat(path.join(dataDir, "admin-key")), /ENOENT/);

      const first = await serve();
      const [, key] = await first.proc.waitFor(/admin API key[^\n]*?(whk_\S+)/);
      assert.match(first.proc.output(), /embedded database/);
      const stored = (await fs.readFile(path.join(dataDir, "admin-key"), "utf8")).trim();
      assert.equal(stored, key);
      assert.equal((await fs.stat(path.join(dataDir, "admin-key"))).mode & 0o777, 0o600);

      const rest = restClient(first.url, key!);
      const created = await rest("POST", "/webhooks", { url: PUBLIC_URL, event_types: ["document.created"], description: "survives" });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      assert.match(created.body.webhook_id, /^wh_/);
      assert.match(created.body.secret, /^whsec_/);
      assert.equal((await restClient(first.url, "whk_wrong")("GET", "/webhooks")).status, 401);
      const ready = await fetch(`${first.url}/readyz`);
      assert.equal(ready.status, 200);

      const code = await first.proc.kill("SIGTERM");
      assert.equal(code, 0, `a SIGTERM ends the server cleanly:\n${first.proc.output()}`);

      const second = await serve();
      // The key line, when there is one, follows the listening line at once.
      await new Promise((r) => setTimeout(r, 300));
      assert.doesNotMatch(second.proc.output(), /admin API key/);
      assert.ok(!second.proc.output().includes(key!), "the key is not printed again");
      const again = restClient(second.url, key!);
      const got = await again("GET", `/webhooks/${created.body.webhook_id}`);
      assert.equal(got.status, 200, JSON.stringify(got.body));
      assert.equal(got.body.url, PUBLIC_URL);
      assert.equal(got.body.description, "survives");
      assert.deepEqual(got.body.event_types, ["document.created"]);
      const list = await again("GET", "/webhooks");
      assert.deepEqual(list.body.webhooks.map((w: { webhook_id: string }) => w.webhook_id), [created.body.webhook_id]);

      assert.equal(await second.proc.kill("SIGTERM"), 0, second.proc.output());
    });

    test("a reader of its output that goes away (`| head`) does not stop it: it serves on, and stops on SIGTERM", async () => {
      const ownDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-embedded-pipe-"));
      const port = await freePort();
      const proc = spawnBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: ownDir, WEBHOOKD_LISTEN: `127.0.0.1:${port}`, WEBHOOKD_LOG_LEVEL: "info" });
      running.push(proc);
      try {
        // Closed after its first log line, before "listening": that line met EPIPE. Unhandled, it crashed
        // the process, which then hung for good in the logger's exit flush, holding port and lock.
        await new Promise<void>((resolve) => proc.child.stdout!.once("data", () => resolve()));
        proc.child.stdout!.destroy();
        const deadline = Date.now() + 60_000;
        let status: number | string = "no answer";
        while (status !== 200 && Date.now() < deadline && proc.child.exitCode === null) {
          await new Promise((r) => setTimeout(r, 300));
          status = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(2_000) }).then((r) => r.status, (e: Error) => e.name);
        }
        assert.equal(status, 200, `serving (exit code ${proc.child.exitCode}): ${proc.output()}`);
        const code = await Promise.race([proc.kill("SIGTERM"), new Promise<string>((r) => setTimeout(() => r("still running 15 s after SIGTERM"), 15_000))]);
        assert.equal(code, 0, proc.output());
      } finally {
        await proc.kill("SIGKILL");
        await fs.rm(ownDir, { recursive: true, force: true });
      }
    });
  });

  // The default a new user gets from `npm start`: PGlite and the in-process feed, delivering to a real
  // receiver, then a SIGKILL while deliveries are pending and a restart on the same data dir.
  // The two tests share the server, webhook and receiver, so they run one after the other.
  describe("webhookd serve, embedded: delivery and crash recovery", { concurrency: false }, () => {
    const HOOK_PATH = "/embedded";
    let dataDir: string;
    let receiver: Awaited<ReturnType<typeof startReceiver>>;
    const running: Spawned[] = [];
    /** Every request the receiver got, in arrival order, with what it answered. */
    const arrivals: { entry: Received; status: number; at: number }[] = [];
    let failing = false;
    /** Every event accepted by the API, in publish order. */
    const published: { event_id: string; event_type: string; payload: Record<string, unknown> }[] = [];
    let server: { proc: Spawned; url: string };
    let key: string;
    let webhookId: string;
    let secret: string;

    before(async () => {
      dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-embedded-delivery-"));
      receiver = await startReceiver((entry) => {
        // While failing, answers come a second late (so one is in flight at the kill) and ask for a retry in 1 s.
        const answer = failing ? { status: 503, delayMs: 1_000, headers: { "retry-after": "1" } } : { status: 200 };
        arrivals.push({ entry, status: answer.status, at: Date.now() });
        return answer;
      });
    });

    after(async () => {
      for (const p of running) await p.kill("SIGKILL");
      await receiver?.close();
      await fs.rm(dataDir, { recursive: true, force: true });
    });

    const serve = () => serveOn(dataDir, running, { WEBHOOKD_ALLOW_HTTP: "true", WEBHOOKD_ALLOWED_CIDRS: "127.0.0.0/8" });

    async function publish(events: { event_type: string; payload: Record<string, unknown> }[], batch: boolean): Promise<void> {
      const rest = restClient(server.url, key);
      if (batch) {
        const res = await rest("POST", "/events/batch", { events });
        assert.equal(res.status, 201, JSON.stringify(res.body));
        assert.equal(res.body.events.length, events.length);
        for (const [i, e] of (res.body.events as { event_id: string }[]).entries()) published.push({ ...events[i]!, event_id: e.event_id });
        return;
      }
      for (const e of events) {
        const res = await rest("POST", "/events", e);
        assert.equal(res.status, 201, JSON.stringify(res.body));
        published.push({ ...e, event_id: res.body.event_id });
      }
    }

    function eventsFrom(from: number, count: number, phase: string) {
      return Array.from({ length: count }, (_, i) => ({
        event_type: (from + i) % 2 === 0 ? "order.created" : "order.paid",
        payload: { n: from + i, phase, nested: { items: [from + i, "x"] } },
      }));
    }

    /** Checks a request's signature with the webhook's secret and its body against the event it carries. */
    function checkDelivery(entry: Received) {
      assert.equal(entry.path, HOOK_PATH);
      assert.equal(entry.headers["content-type"], "application/json");
      const body = verifyDelivery(entry, secret);
      assert.equal(entry.headers["webhook-id"], body.event_id, "webhook-id is the event id");
      const event = published.find((e) => e.event_id === body.event_id);
      assert.ok(event, `a delivery of an event never published: ${entry.body}`);
      assert.equal(body.event_type, event.event_type);
      assert.deepEqual(body.payload, event.payload);
      assert.match(body.timestamp, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/);
      return body.event_id;
    }

    const succeededIds = () => new Set(arrivals.filter((a) => a.status === 200).map((a) => String(a.entry.headers["webhook-id"])));

    async function allDeliveries() {
      const res = await restClient(server.url, key)("GET", `/webhooks/${webhookId}/deliveries?page_size=100`);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      assert.equal(res.body.next_page_token, undefined);
      return res.body.deliveries as { delivery_id: string; event_id: string; status: string; attempts: number }[];
    }

    test("delivers events published singly and in a batch, each once, in order, signed", async () => {
      server = await serve();
      [, key] = (await server.proc.waitFor(/admin API key[^\n]*?(whk_\S+)/)) as [string, string];
      assert.equal((await fs.readFile(path.join(dataDir, "admin-key"), "utf8")).trim(), key);
      assert.match(server.proc.output(), /embedded database.*embedded feed/);

      // One process per embedded database: a second one on the same files would corrupt them.
      for (const command of [["serve"], ["migrate"]]) {
        const second = await runBin("webhookd", command, { WEBHOOKD_DATA_DIR: dataDir, WEBHOOKD_LISTEN: "127.0.0.1:0" });
        assert.equal(second.code, 2, second.output);
        assert.match(second.output, /in use by another webhookd process/);
      }

      const created = await restClient(server.url, key)("POST", "/webhooks", { url: receiver.url(HOOK_PATH), event_types: ["order.*"] });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      webhookId = created.body.webhook_id;
      secret = created.body.secret;
      assert.match(secret, /^whsec_/);

      await publish(eventsFrom(0, 5, "one"), false);
      await publish(eventsFrom(5, 20, "one"), true);
      await publish(eventsFrom(25, 5, "one"), false);
      assert.equal(published.length, 30);

      await receiver.waitFor(() => arrivals.length >= 30, 60_000, "30 deliveries");
      // Time for a duplicate to show up, if one were coming.
      await new Promise((r) => setTimeout(r, 500));
      const ids = arrivals.map((a) => checkDelivery(a.entry));
      assert.deepEqual(ids, published.map((e) => e.event_id), "every event once, in publish order");
    });

    test("after a SIGKILL with deliveries pending, a restart delivers every accepted event, in order", async () => {
      assert.ok(server, "the first test started the server");
      const sentBefore = arrivals.length;
      failing = true;
      await publish(eventsFrom(30, 3, "two"), false);
      await publish(eventsFrom(33, 7, "two"), true);
      assert.equal(published.length, 40);

      // The first answer was a 503; the second request is in flight (its answer is a second away).
      await receiver.waitFor(() => arrivals.length >= sentBefore + 2, 60_000, "two attempts at the failing endpoint");
      const killedAt = Date.now();
      await server.proc.kill("SIGKILL");
      assert.equal(server.proc.child.signalCode, "SIGKILL");
      const inFlight = new Set(arrivals.filter((a) => a.status !== 200 && a.at + 1_000 >= killedAt).map((a) => String(a.entry.headers["webhook-id"])));
      assert.ok(inFlight.size > 0, "an attempt was in flight at the kill");
      assert.ok(succeededIds().size < published.length, "deliveries were pending at the kill");

      server = await serve();
      assert.doesNotMatch(server.proc.output(), /admin API key/);
      failing = false;

      await receiver.waitFor(() => published.every((e) => succeededIds().has(e.event_id)), 60_000, "every accepted event delivered after the restart");
      await new Promise((r) => setTimeout(r, 500));

      const ids = arrivals.map((a) => checkDelivery(a.entry));
      // Repeats of one event (retries, the attempt cut off by the kill) are next to each other; nothing
      // comes out of order and nothing is missing.
      const collapsed = ids.filter((id, i) => i === 0 || id !== ids[i - 1]);
      assert.deepEqual(collapsed, published.map((e) => e.event_id), "every event, in publish order");
      const retried = new Set(arrivals.filter((a) => a.status !== 200).map((a) => String(a.entry.headers["webhook-id"])));
      for (const e of published) {
        const sent = ids.filter((id) => id === e.event_id).length;
        const ok = arrivals.filter((a) => a.status === 200 && a.entry.headers["webhook-id"] === e.event_id).length;
        assert.equal(ok, 1, `${e.event_id} (n=${e.payload.n}) succeeded exactly once`);
        if (!retried.has(e.event_id) && !inFlight.has(e.event_id)) assert.equal(sent, 1, `${e.event_id} (n=${e.payload.n}) was sent once`);
      }
      // Strict order per webhook: only the head of the lane was tried while the endpoint failed.
      assert.deepEqual([...retried], [published[30]!.event_id]);

      // The record agrees once the last attempts are written.
      const deadline = Date.now() + 30_000;
      let deliveries = await allDeliveries();
      while (deliveries.some((d) => d.status !== "succeeded") && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 200));
        deliveries = await allDeliveries();
      }
      assert.equal(deliveries.length, published.length);
      assert.deepEqual(new Set(deliveries.map((d) => d.event_id)), new Set(published.map((e) => e.event_id)));
      for (const d of deliveries) assert.equal(d.status, "succeeded", JSON.stringify(d));
      const head = deliveries.find((d) => d.event_id === published[30]!.event_id)!;
      assert.ok(head.attempts >= 2, `the failing head's 503 and its success are recorded: ${JSON.stringify(head)}`);

      assert.equal(await server.proc.kill("SIGTERM"), 0, server.proc.output());
    });
  });

  describe("webhookd migrate and refusals", () => {
    let db: Awaited<ReturnType<typeof createTestDatabase>>;
    let dataDir: string;

    before(async () => {
      db = await createTestDatabase("migrate");
      dataDir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-refusals-"));
    });

    after(async () => {
      await db?.drop();
      await fs.rm(dataDir, { recursive: true, force: true });
    });

    test("migrate applies the migrations to a fresh database, then finds it up to date", async () => {
      const first = await runBin("webhookd", ["migrate"], { DATABASE_URL: db.url, WEBHOOKD_DATA_DIR: dataDir });
      assert.equal(first.code, 0, first.output);
      assert.match(first.output, /applied: /);
      assert.match(first.output, /foundation/);
      assert.match(first.output, /delivery/);
      const second = await runBin("webhookd", ["migrate"], { DATABASE_URL: db.url, WEBHOOKD_DATA_DIR: dataDir });
      assert.equal(second.code, 0, second.output);
      assert.match(second.output, /up to date/);
    });

    test("api without DATABASE_URL exits 2 and says why", async () => {
      const empty = await fs.mkdtemp(path.join(dataDir, "api-"));
      const res = await runBin("webhookd", ["api"], { WEBHOOKD_DATA_DIR: empty, WEBHOOKD_LISTEN: "127.0.0.1:0", DATABASE_URL: "" });
      assert.equal(res.code, 2, res.output);
      assert.match(res.output, /DATABASE_URL/);
      assert.match(res.output, /webhookd serve/);
      assert.doesNotMatch(res.output, /\n\s+at /, "a message, not a stack trace");
      assert.deepEqual(await fs.readdir(empty), [], "nothing was created in the data dir");
    });

    test("a data dir that is a file exits 2 naming WEBHOOKD_DATA_DIR, for serve and migrate", async () => {
      const file = path.join(dataDir, "a-file");
      await fs.writeFile(file, "not a directory\n");
      for (const command of ["serve", "migrate"]) {
        const res = await runBin("webhookd", [command], { WEBHOOKD_DATA_DIR: file, WEBHOOKD_LISTEN: "127.0.0.1:0", DATABASE_URL: "" });
        assert.equal(res.code, 2, `${command}: ${res.output}`);
        assert.equal(res.output, `webhookd: WEBHOOKD_DATA_DIR ${file} is not usable: a file is in the way of the directory\n`, command);
      }
    });

    test("a bad environment value exits 2 naming the variable", async () => {
      const cases: [Record<string, string>, RegExp][] = [
        [{ WEBHOOKD_LISTEN: "nonsense" }, /WEBHOOKD_LISTEN="nonsense" is invalid.*host:port/],
        [{ WEBHOOKD_ALLOW_HTTP: "maybe" }, /WEBHOOKD_ALLOW_HTTP="maybe" is invalid/],
      ];
      // Each start is a process of its own; they run side by side to keep the file quick.
      const results = await Promise.all(cases.map(([env]) => runBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: dataDir, ...env })));
      for (const [i, [env, message]] of cases.entries()) {
        const res = results[i]!;
        assert.equal(res.code, 2, `${JSON.stringify(env)}: ${res.output}`);
        assert.match(res.output, message);
        assert.doesNotMatch(res.output, /\n\s+at /, "a message, not a stack trace");
      }
    });
  });
});
