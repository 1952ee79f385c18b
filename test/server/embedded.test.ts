// The real binary: embedded mode on PGlite across a restart, `migrate`, and refusals at start.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createTestDatabase } from "../support/postgres.js";
import { restClient } from "../support/app.js";
import { runBin, spawnBin, type Spawned } from "../support/processes.js";

const PUBLIC_URL = "https://93.184.216.34/hook";

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
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

    async function serve(): Promise<{ proc: Spawned; url: string }> {
      for (let attempt = 1; ; attempt++) {
        const port = await freePort();
        const proc = spawnBin("webhookd", ["serve"], { WEBHOOKD_DATA_DIR: dataDir, WEBHOOKD_LISTEN: `127.0.0.1:${port}` });
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

    test("first start prints an admin key that works, keeps data across a restart, and prints no key again", async () => {
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
