import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { WebhookService } from "../../gen/webhook/v1/webhook_pb.js";
import { main } from "../../src/cli/webhookctl.js";

const bin = fileURLToPath(new URL("../../bin/webhookctl.js", import.meta.url));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment without any WEBHOOKD_* settings of the machine running the tests, plus `extra`. */
function cleanEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.startsWith("WEBHOOKD_")) env[k] = v;
  }
  return { ...env, ...extra };
}

/** Runs `node bin/webhookctl.js …` as a real process, from a directory outside the repository. */
function run(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, ...args], { cwd: tmpdir(), env: cleanEnv(env) });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (s: string) => (stdout += s));
    child.stderr.setEncoding("utf8").on("data", (s: string) => (stderr += s));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** An HTTP server that counts requests and answers 404, to prove a command never called the server. */
async function countingServer(): Promise<{ url: string; hits: () => number; close: () => Promise<void> }> {
  let hits = 0;
  const server = createServer((_req, res) => {
    hits++;
    res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

test("--help lists the command groups", async () => {
  const r = await run(["--help"]);
  assert.equal(r.code, 0, r.stderr);
  for (const group of ["webhooks", "events", "deliveries", "tenants", "keys", "audit"]) {
    assert.match(r.stdout, new RegExp(`^\\s+${group}\\b`, "m"), `help lists ${group}`);
  }
  assert.match(r.stdout, /--api-key/);
  assert.match(r.stdout, /WEBHOOKD_URL/);
});

test("webhooks create --help shows --url and --events", async () => {
  const r = await run(["webhooks", "create", "--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /--url <url>/);
  assert.match(r.stdout, /--events <list>/);
  assert.match(r.stdout, /--json/);
});

test("a missing API key exits 2 and says how to set it", async () => {
  const r = await run(["webhooks", "list"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /WEBHOOKD_API_KEY is not set \(or pass --api-key\)/);
  assert.equal(r.stdout, "");
});

test("events publish with --data that is not JSON exits 2 without calling the server", async () => {
  const server = await countingServer();
  try {
    const r = await run(["events", "publish", "--type", "document.created", "--data", "not json"], {
      WEBHOOKD_URL: server.url,
      WEBHOOKD_API_KEY: "whk_test",
    });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--data/);
    assert.match(r.stderr, /not valid JSON/);
    assert.equal(server.hits(), 0);
  } finally {
    await server.close();
  }
});

test("events publish with --data that is not an object exits 2 without calling the server", async () => {
  const server = await countingServer();
  try {
    const env = { WEBHOOKD_URL: server.url, WEBHOOKD_API_KEY: "whk_test" };
    const inputs = ["[1]", "42", "null", '"text"'];
    const results = await Promise.all(
      inputs.map((data) => run(["events", "publish", "--type", "document.created", "--data", data], env)),
    );
    results.forEach((r, i) => {
      assert.equal(r.code, 2, `--data ${inputs[i]}`);
      assert.match(r.stderr, /--data must be a JSON object/, `--data ${inputs[i]}`);
    });
    assert.equal(server.hits(), 0);
  } finally {
    await server.close();
  }
});

test("an unreachable server gives a non-zero exit and names the URL", async () => {
  const r = await run(["webhooks", "list"], { WEBHOOKD_URL: "http://127.0.0.1:1", WEBHOOKD_API_KEY: "whk_test" });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /cannot reach .*http:\/\/127\.0\.0\.1:1/);
});

test("usage errors exit 2 (unknown command, bad option value, missing required option)", async () => {
  const env = { WEBHOOKD_API_KEY: "whk_test", WEBHOOKD_URL: "http://127.0.0.1:1" };
  const cases = [
    ["bogus"],
    ["webhooks", "list", "--page-size", "zero"],
    ["webhooks", "update", "wh_1", "--status", "sleeping"],
    ["webhooks", "create", "--url", "https://example.com/hook"],
    ["webhooks", "update", "wh_1"],
  ];
  const results = await Promise.all(cases.map((args) => run(args, env)));
  results.forEach((r, i) => {
    assert.equal(r.code, 2, `${cases[i]?.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /error/);
  });
});

test("main() runs in-process: writes to the given streams and returns the exit code", async () => {
  let stdout = "";
  let stderr = "";
  const io = {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    env: {},
  };
  assert.equal(await main(["node", "webhookctl", "deliveries", "--help"], io), 0);
  assert.match(stdout, /attempts/);
  assert.match(stdout, /retry/);
  assert.equal(await main(["node", "webhookctl", "keys", "nope"], io), 2);
  assert.match(stderr, /unknown command 'nope'/);
});

test("sends the API key and tenant, follows pages with --all and prints proto JSON with --json", async () => {
  const seen: Array<{ auth: string | null; tenant: string | null; pageToken: string }> = [];
  const handler = connectNodeAdapter({
    routes(router) {
      router.service(WebhookService, {
        listWebhooks(req, ctx) {
          seen.push({
            auth: ctx.requestHeader.get("authorization"),
            tenant: ctx.requestHeader.get("x-tenant-id"),
            pageToken: req.pageToken,
          });
          return req.pageToken === ""
            ? { webhooks: [{ webhookId: "wh_1", url: "https://a.example/h", eventTypes: ["a.b"], status: "active" }], nextPageToken: "next" }
            : { webhooks: [{ webhookId: "wh_2", url: "https://b.example/h", eventTypes: ["c.*"], status: "paused" }] };
        },
      });
    },
  });
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    let stdout = "";
    let stderr = "";
    const io = {
      stdout: { write: (s: string) => (stdout += s) },
      stderr: { write: (s: string) => (stderr += s) },
      env: { WEBHOOKD_URL: url, WEBHOOKD_API_KEY: "whk_env" },
    };
    const code = await main(["node", "webhookctl", "--api-key", "whk_flag", "--tenant", "acme", "webhooks", "list", "--all", "--json"], io);
    assert.equal(code, 0, stderr);
    const doc = JSON.parse(stdout) as { webhooks: Array<{ webhookId: string; eventTypes: string[] }>; nextPageToken?: string };
    assert.deepEqual(
      doc.webhooks.map((w) => w.webhookId),
      ["wh_1", "wh_2"],
    );
    assert.deepEqual(doc.webhooks[1]?.eventTypes, ["c.*"]);
    assert.equal(doc.nextPageToken, undefined);
    assert.deepEqual(seen, [
      { auth: "Bearer whk_flag", tenant: "acme", pageToken: "" },
      { auth: "Bearer whk_flag", tenant: "acme", pageToken: "next" },
    ]);

    stdout = "";
    assert.equal(await main(["node", "webhookctl", "webhooks", "list"], io), 0);
    const lines = stdout.trimEnd().split("\n");
    assert.match(lines[0] ?? "", /^ID\s+STATUS\s+URL\s+EVENT TYPES\s+CREATED$/);
    assert.match(lines[1] ?? "", /^wh_1\s+active\s+https:\/\/a\.example\/h\s+a\.b\s+-$/);
    assert.equal(lines.length, 2);
    assert.match(stderr, /--page-token next/);
    assert.equal(seen.at(-1)?.auth, "Bearer whk_env");
    assert.equal(seen.at(-1)?.tenant, null);
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
});
