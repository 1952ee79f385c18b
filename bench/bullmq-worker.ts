/**
 * The benchmark's reference sender: a plain BullMQ worker on Redis, forked by bench/bullmq-reference.ts.
 * Each job becomes one POST of the body webhookd sends (CONTRACT.md), signed the Standard Webhooks way,
 * over an undici pool with as many sockets per origin as webhookd's sender. It keeps no order (jobs of
 * one webhook run concurrently) and no record of attempts: the yardstick, not a design to copy.
 *
 * argv: <queue> <redis url> <concurrency> <connections per origin>
 * Parent → child: "pause" (answered "paused" once no job runs), "resume", "stop". Child → parent: "ready".
 */
import { createHmac, randomBytes } from "node:crypto";
import { Worker } from "bullmq";
import { Pool } from "undici";

export interface ReferenceJob {
  eventId: string;
  eventType: string;
  /** The webhook's endpoint, `http://host:port/path`. */
  url: string;
  payload: unknown;
}

const [queue, redisUrl, concurrency, connections] = process.argv.slice(2) as [string, string, string, string];
const secret = randomBytes(32);
const pools = new Map<string, Pool>();

function poolFor(origin: string): Pool {
  let pool = pools.get(origin);
  if (!pool) pools.set(origin, (pool = new Pool(origin, { connections: Number(connections), pipelining: 1, keepAliveTimeout: 60_000 })));
  return pool;
}

const redis = new URL(redisUrl);
const worker = new Worker<ReferenceJob>(
  queue,
  async (job) => {
    const { eventId, eventType, url, payload } = job.data;
    const body = JSON.stringify({ event_id: eventId, event_type: eventType, timestamp: new Date().toISOString(), payload });
    const timestamp = String(Math.floor(Date.now() / 1000));
    const signature = createHmac("sha256", secret).update(`${eventId}.${timestamp}.${body}`).digest("base64");
    const target = new URL(url);
    const res = await poolFor(target.origin).request({
      method: "POST",
      path: target.pathname,
      headers: { "content-type": "application/json", "webhook-id": eventId, "webhook-timestamp": timestamp, "webhook-signature": `v1,${signature}` },
      body,
    });
    await res.body.text();
    if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`endpoint answered ${res.statusCode}`);
  },
  {
    connection: { host: redis.hostname, port: Number(redis.port || 6379) },
    concurrency: Number(concurrency),
    // What a plain sender keeps: nothing of a success, a little of the failures.
    removeOnComplete: { count: 0 },
    removeOnFail: { count: 1000 },
  },
);

worker.on("error", (err) => console.error(`bullmq worker: ${err.message}`));
await worker.waitUntilReady();
process.send?.("ready");
process.on("message", (msg) => {
  if (msg === "pause") return void worker.pause().then(() => process.send?.("paused"));
  if (msg === "resume") return worker.resume();
  if (msg !== "stop") return;
  void worker
    .close()
    .then(() => Promise.all([...pools.values()].map((p) => p.close())))
    .finally(() => process.exit(0));
});
process.on("disconnect", () => process.exit(0));
