// The JetStream feed on a real NATS server: a webhook's jobs of one publish travel together, cut into
// messages the server accepts, arrive in seq order, and a job the server refuses costs only itself.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs/promises";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { connect } from "@nats-io/transport-node";
import { createJetStreamFeed, jetStreamNames } from "../../src/queue/jetstream.js";
import type { DeliveryFeed } from "../../src/queue/feed.js";
import type { DeliveryJob } from "../../src/queue/job.js";
import { createLogger } from "../../src/logger.js";
import { NATS_URL, natsPrefix } from "../support/nats.js";
import { eventually, sleep } from "../support/wait.js";

const cleanups: (() => Promise<unknown>)[] = [];
after(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((err) => console.error("cleanup failed", err));
});

const log = createLogger("silent", "feed-test");

function job(webhookId: string, shard: number, seq: number, payloadChars: number): DeliveryJob {
  const pad = "x".repeat(Math.max(0, payloadChars - 20));
  return {
    deliveryId: `dlv_${webhookId}_${String(seq).padStart(6, "0")}`,
    webhookId,
    shard,
    seq,
    orderingKey: "",
    eventId: `evt_${seq}`,
    eventType: "order.created",
    createdAt: Date.now(),
    payload: JSON.stringify({ seq, pad }),
    attempts: 0,
    nextAttemptAt: Date.now(),
    expiresAt: Date.now() + 60_000,
  };
}

async function feedOn(url: string, label: string): Promise<{ feed: DeliveryFeed; prefix: string }> {
  const names = natsPrefix(label);
  const feed = await createJetStreamFeed({ url, prefix: names.prefix, logger: log, name: `feed-test-${label}` });
  cleanups.push(() => names.cleanup().catch(() => undefined), () => feed.close());
  return { feed, prefix: names.prefix };
}

/** Messages in the stream on one shard's subjects, counted by the server. */
async function messagesOn(url: string, prefix: string, shard: number): Promise<number> {
  const nc = await connect({ servers: url });
  try {
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(jetStreamNames(prefix).stream, { subjects_filter: `${jetStreamNames(prefix).subjectRoot}.${shard}.>` });
    return Object.values(info.state.subjects ?? {}).reduce((n, c) => n + c, 0);
  } finally {
    await nc.close();
  }
}

test("a webhook's jobs of one publish go in as few messages as fit, and come out whole and in seq order", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "batch");
  // 60 jobs of 10 K characters: 600 K of payload, past the 256 K a message may hold, so at least 3 messages.
  const big = Array.from({ length: 60 }, (_, i) => job("wh_big", 7, i + 1, 10_000));
  const small = Array.from({ length: 5 }, (_, i) => job("wh_small", 7, i + 1, 100));
  const mixed = big.flatMap((j, i) => (i < small.length ? [j, small[i]!] : [j]));
  await feed.publish(mixed);
  const messages = await messagesOn(NATS_URL, prefix, 7);
  assert.ok(messages >= 4 && messages <= 5, `${messages} messages for 2 webhooks' 65 jobs`);

  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(7, (j) => received.push(j));
  await eventually(async () => received.length, (n) => n >= 65, "all 65 jobs consumed", 10_000);
  await subscription.stop();
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_big"), big);
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_small"), small);
});

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

test("a job larger than the server takes is dropped alone: publish does not throw and the rest arrive", async () => {
  const port = await freePort();
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "webhookd-nats-small-"));
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  const config = path.join(dir, "nats.conf");
  await fs.writeFile(config, `listen: 127.0.0.1:${port}\nmax_payload: 65536\njetstream { store_dir: "${dir}" }\n`);
  const server: ChildProcess = spawn("/usr/sbin/nats-server", ["-c", config], { stdio: ["ignore", "pipe", "pipe"] });
  cleanups.push(async () => {
    if (server.exitCode === null) {
      const exited = new Promise((resolve) => server.once("exit", resolve));
      server.kill("SIGKILL");
      await exited;
    }
  });
  let out = "";
  server.stdout!.on("data", (c: Buffer) => (out += c.toString()));
  server.stderr!.on("data", (c: Buffer) => (out += c.toString()));
  for (const deadline = Date.now() + 10_000; !/Server is ready/.test(out); await sleep(50)) {
    if (server.exitCode !== null || Date.now() > deadline) throw new Error(`nats-server did not start:\n${out}`);
  }
  const url = `nats://127.0.0.1:${port}`;
  const { feed } = await feedOn(url, "oversize");
  const jobs = [job("wh_a", 2, 1, 100), job("wh_huge", 2, 1, 200_000), job("wh_b", 2, 1, 100), job("wh_a", 2, 2, 100)];
  await feed.publish(jobs);

  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(2, (j) => received.push(j));
  await eventually(async () => received.length, (n) => n >= 3, "the three jobs that fit consumed", 10_000);
  await sleep(200);
  await subscription.stop();
  assert.deepEqual(
    received.map((j) => `${j.webhookId}#${j.seq}`).sort(),
    ["wh_a#1", "wh_a#2", "wh_b#1"],
  );
});
