// The JetStream feed on a real NATS server: a webhook's jobs of one publish travel together and without
// their payloads, arrive in seq order, and a message that is not ours costs nothing but itself.
import { after, test } from "node:test";
import net from "node:net";
import assert from "node:assert/strict";
import { connect } from "@nats-io/transport-node";
import { pino, type Logger } from "pino";
import { createJetStreamFeed, jetStreamNames } from "../../src/queue/jetstream.js";
import type { DeliveryFeed } from "../../src/queue/feed.js";
import { encodeJobHeads, type DeliveryJob } from "../../src/queue/job.js";
import { createLogger } from "../../src/logger.js";
import { NATS_URL, natsPrefix, startNatsServer } from "../support/nats.js";
import { startTcpProxy } from "../support/tcp-proxy.js";
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

/**
 * Jobs whose heads are as long as accepted input makes them: the longest event type (200 characters) and
 * an ordering key of 256 `keyChar`s (a CJK character is 3 bytes).
 */
function longJobs(webhookId: string, shard: number, count: number, options: { keyChar?: string; payloadChars?: number } = {}): DeliveryJob[] {
  const orderingKey = (options.keyChar ?? "注").repeat(256);
  const eventType = `a${"b".repeat(98)}.${"c".repeat(100)}`;
  return Array.from({ length: count }, (_, i) => ({ ...job(webhookId, shard, i + 1, options.payloadChars ?? 0), orderingKey, eventType }));
}

async function feedOn(url: string, label: string, options: { logger?: Logger; storage?: "memory" | "file" } = {}): Promise<{ feed: DeliveryFeed; prefix: string }> {
  const names = natsPrefix(label);
  const feed = await createJetStreamFeed({ url, prefix: names.prefix, logger: options.logger ?? log, name: `feed-test-${label}`, storage: options.storage });
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

test("a webhook's jobs of one publish go in as few messages as allowed, without payloads, and come out in seq order", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "batch");
  // 1,200 jobs of one webhook: three messages of at most 500; five of another webhook: one more.
  const big = Array.from({ length: 1_200 }, (_, i) => job("wh_big", 7, i + 1, 5_000));
  const small = Array.from({ length: 5 }, (_, i) => job("wh_small", 7, i + 1, 100));
  const mixed = big.flatMap((j, i) => (i < small.length ? [j, small[i]!] : [j]));
  await feed.publish(mixed);
  assert.equal(await messagesOn(NATS_URL, prefix, 7), 4);

  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(7, (j) => received.push(j));
  await eventually(async () => received.length, (n) => n >= 1_205, "all 1,205 jobs consumed", 10_000);
  await subscription.stop();
  const heads = (jobs: DeliveryJob[]) => jobs.map(({ payload: _payload, ...head }) => head);
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_big"), heads(big));
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_small"), heads(small));
});

test("a backlog bigger than the server's per-client buffer, met by a process too busy to read: no slow-consumer disconnect, every job arrives", async () => {
  // A large fan-out leaves messages of hundreds of job heads on every shard (100 KB each here). Pulls
  // sized by message count let the server push the whole backlog at once, past its 64 MB per client,
  // while the process was still busy with the ingest, and the server closed the connection.
  const lines: { msg: string; status?: string }[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const { feed } = await feedOn(NATS_URL, "backlog", { logger });
  const SHARDS = 64;
  const MESSAGES_PER_SHARD = 12;
  let published = 0;
  let bytes = 0;
  for (let shard = 0; shard < SHARDS; shard++) {
    for (let m = 0; m < MESSAGES_PER_SHARD; m++) {
      // One webhook's 500 jobs make one message.
      const jobs = Array.from({ length: 500 }, (_, i) => job(`wh_backlog_${shard}_${m}`, shard, i + 1, 0));
      bytes += encodeJobHeads(jobs).byteLength;
      await feed.publish(jobs);
      published += jobs.length;
    }
  }
  assert.ok(bytes > 80 * 1024 * 1024, `the backlog (${Math.round(bytes / 1024 / 1024)} MB) is past the server's 64 MB per client`);

  let received = 0;
  const subscriptions = await Promise.all(Array.from({ length: SHARDS }, (_, shard) => feed.consume(shard, () => received++)));
  cleanups.push(() => Promise.all(subscriptions.map((s) => s.stop())));
  // Busy for three seconds, as a process building a large ingest statement is: nothing is read.
  const busyUntil = Date.now() + 3_000;
  while (Date.now() < busyUntil);
  await eventually(async () => received, (n) => n >= published, `all ${published} jobs`, 60_000);
  await sleep(200);
  assert.equal(received, published, "each job once (a closed connection loses the acks, and the jobs come again)");
  assert.deepEqual(
    lines.filter((l) => l.status === "disconnect").map((l) => l.msg),
    [],
    "the connection was never closed",
  );
  // Pulls that end on a message too large for what is left of them are not messages too large for any pull.
  assert.deepEqual(lines.filter((l) => /larger than a pull/.test(l.msg)), [], "no message taken on its own");
});

test("a run of heads as long as accepted input makes them goes in messages a pull can take: every job arrives, in order, and the jobs after it too", async () => {
  // 500 heads with the longest ordering key (256 CJK characters, 768 bytes) and event type (200) made one
  // message of 614 KB: no 512 KB pull could take it, and the shard's later messages waited behind it.
  const { feed, prefix } = await feedOn(NATS_URL, "bigheads");
  const big = longJobs("wh_big", 6, 500, { payloadChars: 100 });
  const bytes = encodeJobHeads(big).byteLength;
  assert.ok(bytes > 512 * 1024, `the run's heads (${bytes} bytes) are past a pull's 512 KB`);
  await feed.publish(big);
  // Published again (a relay's repeat): the same messages with the same ids, each dropped as a repeat.
  await feed.publish(big);
  await feed.publish([job("wh_after", 6, 1, 100)]);
  const stored = await messagesOn(NATS_URL, prefix, 6);
  console.log(`# ${bytes} bytes of heads in ${stored - 1} messages`);
  assert.equal(stored, Math.ceil(bytes / (256 * 1024)) + 1, "the run split by size, the repeat dropped");

  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(6, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await eventually(async () => received.length, (n) => n >= 501, "the run and the job after it", 10_000);
  await sleep(300);
  assert.equal(received.length, 501, "each job once");
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_big").map((j) => j.seq), big.map((j) => j.seq));
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_big")[499], (({ payload: _payload, ...head }) => head)(big[499]!));
  assert.deepEqual(received.filter((j) => j.webhookId === "wh_after").map((j) => j.seq), [1]);
});

test("a message no pull can take (a stray publish, an older release's) is refused by the stream, and the shard's jobs after it arrive", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "toolarge");
  const heads = encodeJobHeads(longJobs("wh_old", 8, 500));
  assert.ok(heads.byteLength > 512 * 1024 && heads.byteLength < 1024 * 1024, `${heads.byteLength} bytes: past a pull, within max_payload`);
  const nc = await connect({ servers: NATS_URL });
  try {
    nc.publish(`${jetStreamNames(prefix).subjectRoot}.8.wh_old`, heads);
    await nc.flush();
  } finally {
    await nc.close();
  }
  await feed.publish([job("wh_after", 8, 1, 100)]);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(8, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await eventually(async () => received.length, (n) => n >= 1, "the job published after the oversized message", 10_000);
  await sleep(200);
  assert.deepEqual(received.map((j) => `${j.webhookId}:${j.seq}`), ["wh_after:1"], "the oversized message's jobs are the sweep's");
});

test("a message a pull could take, but not what an earlier one left of it, is refused by the stream: the jobs after it come at once", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "partial");
  const subject = (webhookId: string) => `${jetStreamNames(prefix).subjectRoot}.5.${webhookId}`;
  const a = encodeJobHeads(longJobs("wh_a", 5, 150, { keyChar: "k" }));
  const b = encodeJobHeads(longJobs("wh_b", 5, 640, { keyChar: "k" }));
  assert.ok(a.byteLength > 64 * 1024 && b.byteLength > 512 * 1024 - a.byteLength && b.byteLength < 448 * 1024, `${a.byteLength} + ${b.byteLength}`);
  const received: { webhookId: string; at: number }[] = [];
  // The shard's consumer runs, idle, as a dispatcher's does: A comes and is taken, then B, then C.
  const subscription = await feed.consume(5, (j) => received.push({ webhookId: j.webhookId, at: Date.now() }));
  cleanups.push(() => subscription.stop());
  const nc = await connect({ servers: NATS_URL });
  cleanups.push(() => nc.close());
  nc.publish(subject("wh_a"), a);
  await nc.flush();
  await eventually(async () => received.length, (n) => n === 150, "A's jobs", 5_000);
  nc.publish(subject("wh_b"), b);
  await nc.flush();
  const publishedAt = Date.now();
  await feed.publish([job("wh_c", 5, 1, 100)]);
  await eventually(async () => received.filter((r) => r.webhookId === "wh_c").length, (n) => n === 1, "C's job", 15_000);
  const c = received.find((r) => r.webhookId === "wh_c")!;
  assert.ok(c.at - publishedAt < 3_000, `C's job came ${c.at - publishedAt} ms after it was published`);
  assert.equal(received.filter((r) => r.webhookId === "wh_b").length, 0, "B's jobs are the sweep's");
});

test("a message no pull can take that the stream held already (stored before its size limit) is taken on its own: its jobs and the ones after it arrive", async () => {
  const names = natsPrefix("oversized");
  const { subjectRoot, stream } = jetStreamNames(names.prefix);
  const nc = await connect({ servers: NATS_URL });
  cleanups.push(() => names.cleanup().catch(() => undefined), () => nc.close());
  const { jetstreamManager, RetentionPolicy, StorageType } = await import("@nats-io/jetstream");
  const jsm = await jetstreamManager(nc);
  // As a release without the stream's max_msg_size made it, and published to it.
  await jsm.streams.add({ name: stream, subjects: [`${subjectRoot}.>`], retention: RetentionPolicy.Workqueue, storage: StorageType.Memory });
  const heads = encodeJobHeads(longJobs("wh_old", 8, 500));
  assert.ok(heads.byteLength > 512 * 1024 && heads.byteLength < 1024 * 1024, `${heads.byteLength} bytes: past a pull, within max_payload`);
  nc.publish(`${subjectRoot}.8.wh_old`, heads);
  await nc.flush();

  const feed = await createJetStreamFeed({ url: NATS_URL, prefix: names.prefix, logger: log, name: "feed-test-oversized" });
  cleanups.push(() => feed.close());
  await feed.publish([job("wh_after", 8, 1, 100)]);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(8, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await eventually(async () => received.length, (n) => n >= 501, "the stored oversized message's 500 jobs and the job after it", 10_000);
  await sleep(200);
  assert.deepEqual(
    received.map((j) => `${j.webhookId}:${j.seq}`),
    [...Array.from({ length: 500 }, (_, i) => `wh_old:${i + 1}`), "wh_after:1"],
  );
  await eventually(() => messagesOn(NATS_URL, names.prefix, 8), (n) => n === 0, "both messages acked", 5_000);
});

test("a message that is not a list of job heads is acked and dropped; the ones after it still arrive", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "stray");
  const subject = `${jetStreamNames(prefix).subjectRoot}.4.wh_x`;
  const nc = await connect({ servers: NATS_URL });
  try {
    // As an older webhookd wrote them: one whole job, payload inside.
    nc.publish(subject, JSON.stringify(job("wh_x", 4, 1, 100)));
    await nc.flush();
  } finally {
    await nc.close();
  }
  await feed.publish([job("wh_x", 4, 2, 100)]);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(4, (j) => received.push(j));
  await eventually(async () => received.length, (n) => n >= 1, "the well-formed job consumed", 10_000);
  await sleep(200);
  await subscription.stop();
  assert.deepEqual(received.map((j) => j.seq), [2]);
  assert.equal(await messagesOn(NATS_URL, prefix, 4), 0, "both messages acked (work-queue retention removes them)");
});

test("a publish repeated with the same jobs (the same Nats-Msg-Id) is delivered once; a manual retry's, or word of a requeue, is not a repeat", async () => {
  const { feed } = await feedOn(NATS_URL, "dedup");
  const jobs = [job("wh_d", 9, 1, 100), job("wh_d", 9, 2, 100)];
  await feed.publish(jobs);
  await feed.publish(jobs);
  // The same delivery sent again by hand carries its attempt count: it must get through.
  await feed.publish([{ ...jobs[0]!, attempts: 1 }]);
  // Word of two replays whose lowest pending delivery is the same one: each carries the webhook's count.
  await feed.publish([{ ...jobs[0]!, attempts: 1, requeues: 1 }]);
  await feed.publish([{ ...jobs[0]!, attempts: 1, requeues: 2 }]);
  await feed.publish([{ ...jobs[0]!, attempts: 1, requeues: 2 }]);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(9, (j) => received.push(j));
  await eventually(async () => received.length, (n) => n >= 5, "the first publish, the retry and the two words", 10_000);
  await sleep(300);
  await subscription.stop();
  assert.deepEqual(
    received.map((j) => `${j.seq}:${j.attempts}:${j.requeues ?? 0}`),
    ["1:0:0", "2:0:0", "1:1:0", "1:1:1", "1:1:2"],
  );
});

test("a consumer an earlier release left with other settings is brought to today's", async () => {
  const { feed, prefix } = await feedOn(NATS_URL, "upgrade");
  const names = jetStreamNames(prefix);
  const durable = `${names.consumerPrefix}_3`;
  const nc = await connect({ servers: NATS_URL });
  cleanups.push(() => nc.close());
  const { jetstreamManager, AckPolicy, DeliverPolicy } = await import("@nats-io/jetstream");
  const jsm = await jetstreamManager(nc);
  await jsm.consumers.add(names.stream, {
    durable_name: durable,
    filter_subject: `${names.subjectRoot}.3.>`,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 5 * 1e9,
    max_ack_pending: 7,
  });
  const subscription = await feed.consume(3, () => undefined);
  const { config } = await jsm.consumers.info(names.stream, durable);
  await subscription.stop();
  assert.equal(config.ack_wait, 30 * 1e9);
  assert.equal(config.max_ack_pending, 10_000);
});

test("a consumer an earlier release left with another filter is made again with today's, and carries today's jobs at once", async () => {
  // NATS 2.9.10 took a new filter in place, but its waiting pulls were not woken by jobs on it: they came
  // only as a pull expired, 30 s apart. This runs on 2.10+ too (`npm run test:nats-versions`).
  const lines: { level: number; msg: string; serverVersion?: string }[] = [];
  const logger = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const { feed, prefix } = await feedOn(NATS_URL, "filter", { logger });
  const { stream, subjectRoot, consumerPrefix } = jetStreamNames(prefix);
  const durable = `${consumerPrefix}_3`;
  const nc = await connect({ servers: NATS_URL });
  cleanups.push(() => nc.close());
  const { jetstreamManager, AckPolicy, DeliverPolicy } = await import("@nats-io/jetstream");
  const jsm = await jetstreamManager(nc);
  await jsm.consumers.add(stream, {
    durable_name: durable,
    filter_subject: `${subjectRoot}.3.legacy.>`,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 5 * 1e9,
  });

  // Queued before the consumer is made again: the work-queue stream keeps it for the new one.
  await feed.publish([job("wh_f", 3, 1, 100)]);

  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(3, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  const { config } = await jsm.consumers.info(stream, durable);
  assert.equal(config.filter_subject, `${subjectRoot}.3.>`, `NATS ${nc.info?.version} took the new filter`);
  assert.equal(config.ack_wait, 30 * 1e9);
  await feed.publish([job("wh_f", 3, 2, 100)]);
  await eventually(async () => received.length, (n) => n === 2, "both jobs on today's subject", 5_000);
  assert.deepEqual(received.map((j) => j.seq), [1, 2]);
  assert.deepEqual(lines.filter((l) => l.level >= 40), [], "no warning or error");
  // The server's release is in the log, for telling such differences apart.
  assert.equal(lines.find((l) => l.msg === "NATS reached; the feed is on")?.serverVersion, nc.info?.version);
});

test("a restarted server's lost memory stream is put back, and the feed carries jobs again", async () => {
  // A memory stream does not outlive its server, configuration included: without the feed putting it
  // back, publishes went nowhere for good and every job waited for the owners' sweep.
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const { feed, prefix } = await feedOn(nats.url, "restart");
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(5, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await feed.publish([job("wh_r", 5, 1, 100)]);
  await eventually(async () => received.length, (n) => n === 1, "the job before the restart", 10_000);

  await nats.kill();
  await nats.start();
  let seq = 2;
  let lastPublish = 0;
  await eventually(
    async () => {
      // One a second: whatever went in before the stream was back is lost, as the sweep would find.
      if (Date.now() - lastPublish >= 1_000) {
        lastPublish = Date.now();
        await feed.publish([job("wh_r", 5, seq++, 100)]);
      }
      return received.length;
    },
    (n) => n >= 2,
    "a job published after the restart, through the feed",
    15_000,
  );
  const nc = await connect({ servers: nats.url });
  try {
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const info = await (await jetstreamManager(nc)).streams.info(jetStreamNames(prefix).stream);
    assert.equal(info.config.storage, "memory");
    assert.equal(info.state.consumer_count, 1);
  } finally {
    await nc.close();
  }
});

test("with file storage (WEBHOOKD_NATS_STORAGE=file), jobs queued when the server is killed are still there after it restarts", async () => {
  const nats = await startNatsServer();
  cleanups.push(() => nats.stop());
  const { feed, prefix } = await feedOn(nats.url, "file", { storage: "file" });
  // Queued with no one reading them: a memory stream would lose them with the server.
  await feed.publish([job("wh_d", 4, 1, 100), job("wh_d", 4, 2, 100)]);
  await feed.publish([job("wh_d", 4, 3, 100)]);
  // The feed publishes without waiting for the stream to store (Postgres is the record; the sweep sends
  // what the stream missed), so a job published just before a kill may not be stored: wait until it is.
  await eventually(() => messagesOn(nats.url, prefix, 4), (n) => n === 2, "both messages stored before the kill", 5_000);

  await nats.kill();
  await nats.start();
  await eventually(async () => feed.healthy(), (up) => up, "the feed reconnected", 10_000);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(4, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await eventually(async () => received.length, (n) => n === 3, "the jobs queued before the kill", 10_000);
  assert.deepEqual(received.map((j) => j.seq), [1, 2, 3]);

  const nc = await connect({ servers: nats.url });
  try {
    const { jetstreamManager } = await import("@nats-io/jetstream");
    const jsm = await jetstreamManager(nc);
    const { stream } = jetStreamNames(prefix);
    assert.equal((await jsm.streams.info(stream)).config.storage, "file");
    // Work-queue retention: what the consumer acked is gone from the stream.
    await eventually(async () => (await jsm.streams.info(stream)).state.messages, (n) => n === 0, "the acked jobs removed", 5_000);
  } finally {
    await nc.close();
  }
});

test("a feed made while NATS is down is up at once, off, and on by itself when NATS comes", async () => {
  const nats = await startNatsServer({ started: false });
  cleanups.push(() => nats.stop());
  const { feed } = await feedOn(nats.url, "late");
  assert.equal(feed.healthy(), false);
  await feed.publish([job("wh_l", 2, 1, 100)]);
  await assert.rejects(feed.consume(2, () => undefined), /has not been reached yet/);

  await nats.start();
  await eventually(async () => feed.healthy(), (up) => up, "the feed connected", 10_000);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(2, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await feed.publish([job("wh_l", 2, 2, 100)]);
  await eventually(async () => received.map((j) => j.seq), (seqs) => seqs.length === 1, "the job published once connected", 10_000);
  assert.deepEqual(received.map((j) => j.seq), [2], "what was published before NATS existed is the sweep's");
});

test("a feed started while NATS takes connections but says nothing starts off, and is on by itself once NATS answers", async () => {
  // In front of NATS: first a listener that accepts and never answers (a server still starting, a
  // cluster without a leader), then a plain pass-through.
  let answering = false;
  const sockets = new Set<net.Socket>();
  const front = net.createServer((client) => {
    sockets.add(client);
    client.on("error", () => undefined);
    if (!answering) return; // silent: the client's connect times out
    const upstream = net.connect(Number(new URL(NATS_URL).port), new URL(NATS_URL).hostname);
    upstream.on("error", () => undefined);
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => front.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => {
    // The silent connection's client may leave it open: closed here, or the listener never closes.
    for (const socket of sockets) socket.destroy();
    return new Promise((resolve) => front.close(resolve));
  });
  const t0 = Date.now();
  const { feed } = await feedOn(`nats://127.0.0.1:${(front.address() as net.AddressInfo).port}`, "silentstart");
  assert.equal(feed.healthy(), false, "started, with the feed off");
  assert.ok(Date.now() - t0 < 8_000, `the start waited ${Date.now() - t0} ms`);
  answering = true;
  await eventually(async () => feed.healthy(), (up) => up, "the feed on once NATS answers", 15_000);
  const received: DeliveryJob[] = [];
  const subscription = await feed.consume(4, (j) => received.push(j));
  cleanups.push(() => subscription.stop());
  await feed.publish([job("wh_ss", 4, 1, 100)]);
  await eventually(async () => received.length, (n) => n === 1, "a job through the feed", 10_000);
});

test("credentials in NATS_URL (user:password@ or token@) are used, and never logged", async () => {
  for (const [args, credentials] of [
    [["--user", "webhookd", "--pass", "S3cr3t/pw"], "webhookd:S3cr3t%2Fpw@"],
    [["--auth", "T0ken-S3cr3t"], "T0ken-S3cr3t@"],
  ] as const) {
    const nats = await startNatsServer({ args: [...args] });
    cleanups.push(() => nats.stop());
    const lines: string[] = [];
    const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(line) });
    const url = nats.url.replace("nats://", `nats://${credentials}`);
    const names = natsPrefix("auth");
    const feed = await createJetStreamFeed({ url, prefix: names.prefix, logger, name: "feed-test-auth" });
    cleanups.push(() => feed.close());
    assert.equal(feed.healthy(), true, `${args[0]}: connected with the URL's credentials`);
    assert.ok(lines.length > 0 && !lines.some((l) => l.includes("S3cr3t")), `${args[0]}: no credential in the log: ${lines.join("")}`);
    await feed.close();
    // Wrong ones stop the start: no retry mends them.
    await assert.rejects(createJetStreamFeed({ url: nats.url.replace("nats://", "nats://wrong:wrong@"), prefix: names.prefix, logger, name: "feed-test-auth" }), { name: "AuthorizationError" });
  }
});

test("a NATS server without JetStream stops the start, saying so: no retry mends it", async () => {
  const nats = await startNatsServer({ jetstream: false });
  cleanups.push(() => nats.stop());
  const names = natsPrefix("nojs");
  await assert.rejects(createJetStreamFeed({ url: nats.url, prefix: names.prefix, logger: log, name: "feed-test-nojs" }), { name: "JetStreamNotEnabled" });
});

test("a NATS that stops answering without closing the connection costs one publish the flush timeout, not every publish", async () => {
  const proxy = await startTcpProxy(NATS_URL);
  cleanups.push(() => proxy.close());
  const { feed } = await feedOn(proxy.url, "silent");
  const timed = async () => {
    const t0 = Date.now();
    await feed.publish([job("wh_s", 3, 1, 100)]);
    return Date.now() - t0;
  };
  assert.ok((await timed()) < 1_000, "a healthy publish is quick");
  assert.equal(feed.healthy(), true);
  // The server's side goes silent and the connection stays open, as with a host gone without a word.
  proxy.freeze();
  const first = await timed();
  assert.ok(first >= 1_500, `the first publish waits for its flush, up to the timeout (${first} ms)`);
  assert.equal(feed.healthy(), false, "/readyz says the feed is not ready while NATS does not answer");
  const next: number[] = [];
  for (let i = 0; i < 5; i++) next.push(await timed());
  assert.ok(Math.max(...next) < 200, `later publishes do not wait on a server that does not answer: ${next.join(", ")} ms`);
  const t0 = Date.now();
  await feed.close();
  assert.ok(Date.now() - t0 < 5_000, `closing does not wait for the silent server (${Date.now() - t0} ms)`);
});
