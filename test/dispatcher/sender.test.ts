import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { buildDeliveryBody } from "../../src/core/signing.js";
import { createSender, type SendRequest, type SendOutcome, type Sender, type SenderOptions } from "../../src/dispatcher/sender.js";
import { freePort } from "../support/ports.js";

/**
 * One HTTP attempt against a real loopback server: what the receiver gets, what the attempt reports,
 * and that a single deadline and a read cap bound every way an endpoint can misbehave.
 */

const TIMEOUT_MS = 400;
/** How late past its deadline an attempt may report, on a busy 2-core machine. */
const LATE_MS = 250;
/** Long enough for any attempt that honours its deadline; a broken deadline fails here instead of hanging. */
const SETTLE_MS = TIMEOUT_MS + 1_000;
const SECRET = `whsec_${randomBytes(32).toString("base64")}`;
const LOOPBACK: SenderOptions = { addressPolicy: { allowedCidrs: ["127.0.0.0/8"] }, allowHttp: true, timeoutMs: TIMEOUT_MS };

interface Arrival {
  path: string;
  method: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}
type Route = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** Recorded as soon as the request line arrives, so a request that is never answered still counts. */
const arrivals: Arrival[] = [];
const routes = new Map<string, Route>();
const senders: Sender[] = [];
let server: http.Server;
let port: number;
let sender: Sender;

const arrivalsAt = (path: string) => arrivals.filter((a) => a.path === path);

function track(created: Sender): Sender {
  senders.push(created);
  return created;
}

function delivery(path: string, overrides: Partial<SendRequest> = {}): SendRequest {
  return {
    url: `http://127.0.0.1:${port}${path}`,
    secrets: [SECRET],
    scheme: "v1",
    eventId: "evt_sender_test",
    eventType: "order.created",
    createdAt: Date.UTC(2024, 0, 2, 3, 4, 5),
    payload: '{"order":42,"note":"café"}',
    ...overrides,
  };
}

function assertTimedOut(result: SendOutcome, what: string): void {
  assert.ok(result.kind === "error", `${what}: ${JSON.stringify(result)}`);
  assert.equal(result.error, `timed out after ${TIMEOUT_MS} ms`, what);
  assert.equal(result.blocked, false, what);
  // Node counts a timer from the event loop's cached clock, which may lag performance.now() by a ms or two.
  assert.ok(result.durationMs >= TIMEOUT_MS - 2, `${what}: ended after ${result.durationMs} ms, before its deadline`);
  assert.ok(result.durationMs <= TIMEOUT_MS + LATE_MS, `${what}: ended after ${result.durationMs} ms, long past its deadline`);
}

/** Rejects naming `what` when `promise` has not settled within `ms`, so a broken sender fails instead of hanging. */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

before(async () => {
  server = http.createServer((req, res) => {
    const arrival: Arrival = { path: req.url ?? "/", method: req.method ?? "", headers: req.headers, body: "" };
    arrivals.push(arrival);
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      arrival.body = Buffer.concat(chunks).toString("utf8");
      const route = routes.get(arrival.path);
      if (route) route(req, res);
      else res.end("ok");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  port = (server.address() as AddressInfo).port;
  sender = track(createSender(LOOPBACK));
  routes.set("/hang", () => {});
});

after(async () => {
  // Connections first: an attempt a broken sender left hanging then ends, and close() does not wait on it.
  server?.closeAllConnections();
  await Promise.all(senders.map((s) => s.close()));
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
});

test("a 200 delivery carries the exact body, verifies with standardwebhooks, and reports the response", { timeout: 5_000 }, async () => {
  routes.set("/ok-200", (_req, res) => res.end("thanks"));
  const request = delivery("/ok-200");
  const result = await sender.send(request);
  assert.ok(result.kind === "response", JSON.stringify(result));
  assert.equal(result.status, 200);
  assert.equal(result.body, "thanks");
  assert.equal(result.retryAfter, undefined);

  const [arrival, ...more] = arrivalsAt("/ok-200");
  assert.ok(arrival, "the server got the delivery");
  assert.equal(more.length, 0, "exactly one request");
  const expected = buildDeliveryBody({
    eventId: request.eventId,
    eventType: request.eventType,
    timestamp: new Date(request.createdAt),
    payloadJson: request.payload,
  });
  assert.equal(arrival.method, "POST");
  assert.equal(arrival.body, expected);
  assert.equal(arrival.headers["content-type"], "application/json");
  assert.equal(arrival.headers["user-agent"], "webhookd/0.1");
  assert.equal(arrival.headers["webhook-id"], request.eventId);
  const verified = new Webhook(SECRET).verify(arrival.body, {
    "webhook-id": String(arrival.headers["webhook-id"]),
    "webhook-timestamp": String(arrival.headers["webhook-timestamp"]),
    "webhook-signature": String(arrival.headers["webhook-signature"]),
  });
  assert.deepEqual(verified, JSON.parse(expected));
});

test("a 429 reports its status and Retry-After", { timeout: 5_000 }, async () => {
  routes.set("/busy", (_req, res) => {
    res.writeHead(429, { "retry-after": "7" });
    res.end("slow down");
  });
  const result = await sender.send(delivery("/busy"));
  assert.ok(result.kind === "response", JSON.stringify(result));
  assert.equal(result.status, 429);
  assert.equal(result.retryAfter, "7");
  assert.equal(result.body, "slow down");
});

test("an endpoint that never answers times out at the deadline", { timeout: 5_000 }, async () => {
  const result = await within(sender.send(delivery("/hang")), SETTLE_MS, "never answers");
  assertTimedOut(result, "never answers");
});

test("a body dripping a byte every 50 ms still times out at the deadline: it is not restarted per chunk", { timeout: 5_000 }, async () => {
  let dripped = 0;
  routes.set("/drip", (_req, res) => {
    res.writeHead(200, { "content-type": "text/plain" });
    res.flushHeaders();
    const timer = setInterval(() => {
      res.write(".");
      dripped++;
    }, 50);
    res.on("close", () => clearInterval(timer));
  });
  const result = await within(sender.send(delivery("/drip")), SETTLE_MS, "dripping body");
  assertTimedOut(result, "dripping body");
  // Otherwise this would only repeat the never-answers case.
  assert.ok(dripped >= 3, `only ${dripped} bytes dripped before the deadline`);
});

test("a 1 MB response is cut after the read limit: 4 KB kept, the connection closed mid-body", { timeout: 5_000 }, async () => {
  const megabyte = Buffer.from("0123456789abcdef".repeat(64 * 1024));
  const chunk = 16 * 1024;
  let serverSide!: (seen: { written: number; finished: boolean }) => void;
  const closed = new Promise<{ written: number; finished: boolean }>((resolve) => (serverSide = resolve));
  routes.set("/megabyte", (_req, res) => {
    res.writeHead(200, { "content-length": String(megabyte.length) });
    // Paced so that reading the whole megabyte takes 640 ms, past the deadline: an uncapped read ends
    // timed out instead of as a response, and kernel buffers cannot swallow the body before the cut.
    let written = 0;
    const timer = setInterval(() => {
      if (written >= megabyte.length) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(megabyte.subarray(written, written + chunk));
      written += chunk;
    }, 10);
    res.on("close", () => {
      clearInterval(timer);
      serverSide({ written, finished: res.writableFinished });
    });
  });
  const result = await sender.send(delivery("/megabyte"));
  assert.ok(result.kind === "response", JSON.stringify(result).slice(0, 300));
  assert.equal(result.status, 200);
  assert.equal(result.body, megabyte.subarray(0, 4096).toString("utf8"));
  assert.ok(result.durationMs < TIMEOUT_MS, `took ${result.durationMs} ms`);
  const seen = await within(closed, 1_000, "server-side close of the cut response");
  assert.equal(seen.finished, false, "the server never got to finish the response");
  assert.ok(seen.written < megabyte.length, `the server wrote ${seen.written} of ${megabyte.length} bytes`);
});

test("time queued behind the per-origin connection cap counts toward the deadline", { timeout: 5_000 }, async () => {
  routes.set("/quick", (_req, res) => res.end("quick"));
  // Answers 50 ms after it gets the socket, which it gets only when the hanging request is cut at its
  // deadline: by then the queued request's own deadline, a few ms later, has passed unless the time it
  // queued is not counted. (Answering at once, it could get in under its deadline on a busy machine,
  // where the two sends start several ms apart.)
  routes.set("/soon", (_req, res) => setTimeout(() => res.end("soon"), 50));
  const single = track(createSender({ ...LOOPBACK, connectionsPerOrigin: 1 }));
  const hanging = single.send(delivery("/hang"));
  const queued = single.send(delivery("/soon"));
  const [first, second] = await within(Promise.all([hanging, queued]), SETTLE_MS, "hanging and queued requests");
  assertTimedOut(first, "the hanging request");
  assertTimedOut(second, "the request queued behind it");
  // Cutting the hung connection freed the only slot: the next attempt goes through.
  const third = await within(single.send(delivery("/quick")), SETTLE_MS, "the request after both timed out");
  assert.ok(third.kind === "response", JSON.stringify(third));
  assert.equal(third.status, 200);
  assert.equal(third.body, "quick");
});

test("a request whose guard says no when its socket comes is withdrawn unsent; the guard is refreshed while it waits", { timeout: 10_000 }, async () => {
  routes.set("/held-socket", (_req, res) => setTimeout(() => res.end("done"), 2_500));
  routes.set("/after", (_req, res) => res.end("after"));
  const single = track(createSender({ ...LOOPBACK, connectionsPerOrigin: 1, timeoutMs: 8_000 }));
  const holding = single.send(delivery("/held-socket"));
  let allowed = true;
  let refreshed = 0;
  const waiting = single.send({ ...delivery("/withdrawn"), guard: { mayGo: () => allowed, refresh: () => refreshed++ } });
  await new Promise((resolve) => setTimeout(resolve, 100));
  allowed = false; // deleted, paused or its lease lapsed while it waits
  const [first, second] = await within(Promise.all([holding, waiting]), 5_000, "the held request and the one behind it");
  assert.equal(first.kind, "response");
  assert.equal(second.kind, "withdrawn", JSON.stringify(second));
  assert.ok(second.durationMs >= 2_000, `withdrawn when the socket came, after ${second.durationMs} ms`);
  assert.ok(refreshed >= 1, "refreshed while it waited more than a second");
  assert.equal(arrivals.filter((a) => a.path === "/withdrawn").length, 0, "never sent");
  const next = await within(single.send({ ...delivery("/after"), guard: { mayGo: () => true, refresh: () => undefined } }), 3_000, "the next request");
  assert.ok(next.kind === "response" && next.status === 200, JSON.stringify(next));
});

test("a request that waited for its socket past the signature's freshness is withdrawn unsent, and goes signed afresh", { timeout: 10_000 }, async () => {
  routes.set("/slow-socket", (_req, res) => setTimeout(() => res.end("done"), 1_000));
  const single = track(createSender({ ...LOOPBACK, connectionsPerOrigin: 1, timeoutMs: 8_000, freshSignatureMs: 500 }));
  const holding = single.send(delivery("/slow-socket"));
  const waiting = single.send(delivery("/stale"));
  const [first, second] = await within(Promise.all([holding, waiting]), 5_000, "the held request and the one behind it");
  assert.equal(first.kind, "response");
  assert.equal(second.kind, "withdrawn", JSON.stringify(second));
  assert.ok(second.durationMs >= 500, `withdrawn after ${second.durationMs} ms`);
  assert.equal(arrivalsAt("/stale").length, 0, "never sent with the stale timestamp");
  const again = await within(single.send(delivery("/stale")), 3_000, "the request sent again");
  assert.ok(again.kind === "response" && again.status === 200, JSON.stringify(again));
  const sent = Number(arrivalsAt("/stale")[0]!.headers["webhook-timestamp"]);
  assert.ok(Math.abs(sent - Date.now() / 1000) <= 2, `signed at ${sent}, sent at ${Date.now() / 1000}`);
});

test("a refused connection is an error, not a blocked address", { timeout: 5_000 }, async () => {
  const deadPort = await freePort();
  const result = await sender.send(delivery("/", { url: `http://127.0.0.1:${deadPort}/hook` }));
  assert.ok(result.kind === "error", JSON.stringify(result));
  assert.equal(result.blocked, false);
  assert.match(result.error, /ECONNREFUSED/);
});

test("the kept body has no NUL and never ends in half a character", { timeout: 5_000 }, async () => {
  // 4094 bytes, then a 3-byte euro sign whose last byte falls past the 4096 kept.
  const head = "ok\u0000" + "x".repeat(4091);
  assert.equal(Buffer.byteLength(head), 4094);
  routes.set("/nul", (_req, res) => res.end(Buffer.from(head + "€ and more")));
  const result = await sender.send(delivery("/nul"));
  assert.ok(result.kind === "response", JSON.stringify(result).slice(0, 300));
  assert.ok(!result.body.includes("\u0000"), "NUL removed");
  assert.ok(!result.body.includes("\uFFFD"), "no replacement character for the cut euro sign");
  assert.equal(result.body, "ok" + "x".repeat(4091));
});

test("without loopback in allowedCidrs a send is refused as blocked and never reaches the server", { timeout: 5_000 }, async () => {
  const strict = track(
    createSender({
      addressPolicy: { allowedCidrs: [] },
      allowHttp: true,
      timeoutMs: TIMEOUT_MS,
      // A name only the connect-time lookup can judge, beside the IP literal checked before connecting.
      resolve: async () => [{ address: "127.0.0.1", family: 4 }],
    }),
  );
  for (const url of [`http://127.0.0.1:${port}/blocked`, `http://hooks.example.test:${port}/blocked`]) {
    const result = await strict.send(delivery("/blocked", { url }));
    assert.ok(result.kind === "error", `${url}: ${JSON.stringify(result)}`);
    assert.equal(result.blocked, true, url);
    assert.match(result.error, /127\.0\.0\.1.*loopback/, url);
  }
  assert.equal(arrivalsAt("/blocked").length, 0, "the server never saw a request");
});

test("with http not allowed, a webhook stored with an http URL is refused as blocked at every attempt, naming the setting", { timeout: 5_000 }, async () => {
  const httpsOnly = track(createSender({ ...LOOPBACK, allowHttp: false }));
  const result = await httpsOnly.send(delivery("/plain"));
  assert.ok(result.kind === "error", JSON.stringify(result));
  assert.equal(result.blocked, true);
  assert.match(result.error, /http:\/\/ URLs are not allowed \(WEBHOOKD_ALLOW_HTTP is off\)/);
  assert.equal(arrivalsAt("/plain").length, 0, "nothing sent in plain text");
});
