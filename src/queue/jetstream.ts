import {
  AuthorizationError,
  connect,
  headers,
  InvalidArgumentError,
  PermissionViolationError,
  UserAuthenticationExpiredError,
  type NatsConnection,
} from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { Logger } from "pino";
import type { DeliveryFeed, FeedSubscription } from "./feed.js";
import { decodeJobHeads, encodeJobHead, joinJobHeads, type DeliveryJob } from "./job.js";
import { withTimeout } from "../core/timeout.js";

export interface JetStreamNames {
  stream: string;
  /** Subjects are `<root>.<shard>.<webhook_id>`. */
  subjectRoot: string;
  consumerPrefix: string;
}

/** `WEBHOOK` gives the documented names: stream WEBHOOK_DELIVERIES, subjects webhooks.deliveries.<shard>.<webhook_id>. */
export function jetStreamNames(prefix: string): JetStreamNames {
  return {
    stream: `${prefix}_DELIVERIES`,
    subjectRoot: `${prefix.toLowerCase()}s.deliveries`,
    consumerPrefix: `${prefix}_shard`,
  };
}

const DUPLICATE_WINDOW_NS = 2 * 60 * 1e9;
const MAX_AGE_NS = 7 * 24 * 3600 * 1e9;
const PUBLISH_TIMEOUT_MS = 2_000;
const DRAIN_TIMEOUT_MS = 2_000;
/** Jobs in one feed message at most. */
const MAX_JOBS_PER_MESSAGE = 500;
/**
 * Bytes of one feed message at most, half of what a shard's pull asks for (PULL_MAX_BYTES) and a quarter
 * of the server's default max_payload. Most heads are about 300 bytes, but the longest ordering key and
 * event type accepted make one of 1.2 KB: 500 of them were 614 KB, which no pull of 512 KB could take,
 * and NATS delivers nothing of a consumer past a message its pulls cannot take.
 */
const MAX_MESSAGE_BYTES = 256 * 1024;

interface FeedMessage {
  jobs: DeliveryJob[];
  heads: string[];
  /** Of the message once made: the heads, a comma after each but the last, and the brackets. */
  bytes: number;
}

/**
 * The jobs of each webhook, in order, in messages of at most `MAX_JOBS_PER_MESSAGE` jobs and
 * `MAX_MESSAGE_BYTES` bytes (a single head larger than that goes alone). The split depends on the
 * heads alone, so a repeated publish of the same jobs makes the same messages, with the same ids.
 */
function* byWebhook(jobs: DeliveryJob[]): Generator<FeedMessage> {
  const runs = new Map<string, FeedMessage>();
  for (const job of jobs) {
    const head = encodeJobHead(job);
    const bytes = Buffer.byteLength(head) + 1;
    let run = runs.get(job.webhookId);
    if (run && (run.jobs.length >= MAX_JOBS_PER_MESSAGE || run.bytes + bytes > MAX_MESSAGE_BYTES)) {
      yield run;
      run = undefined;
    }
    if (!run) {
      run = { jobs: [], heads: [], bytes: 1 };
      runs.set(job.webhookId, run);
    }
    run.jobs.push(job);
    run.heads.push(head);
    run.bytes += bytes;
  }
  yield* runs.values();
}

export async function createJetStreamFeed(options: {
  url: string;
  prefix: string;
  logger: Logger;
  name: string;
  /**
   * Where the stream keeps jobs. Memory (the default) halves the NATS server's CPU per job and its tail
   * latency; a NATS restart then loses the queued jobs, which the owners' sweep resends from Postgres.
   */
  storage?: "memory" | "file";
}): Promise<DeliveryFeed> {
  const names = jetStreamNames(options.prefix);
  const log = options.logger.child({ component: "jetstream" });
  const storage = options.storage ?? "memory";
  // A connection whose server stopped answering is given up after three pings 10 s apart, not the
  // client's default of two 2 minutes apart; then it reconnects.
  // A server that takes the connection and says nothing is given up on after 5 s (not the client's 20 s,
  // which held the start that long) and tried again.
  const server = natsServer(options.url);
  const connectOptions = { ...server.connect, name: options.name, timeout: 5_000, maxReconnectAttempts: -1, reconnectTimeWait: 500, pingInterval: 10_000, maxPingOut: 3 };

  /** The connection and its JetStream handles, once NATS has answered. */
  let link: { nc: NatsConnection; jsm: JetStreamManager; js: JetStreamClient } | undefined;
  let connected = false;
  const subscriptions = new Set<FeedSubscription>();
  /** The consumers this process reads, by durable name, for `restore`. */
  const consumed = new Map<string, { filter: string; repull(): Promise<void> }>();
  let closing = false;

  /**
   * Puts back the stream and this process's consumers. A restarted server forgets a memory stream (its
   * configuration too), and an operator may delete either: until they are back, publishes go nowhere and
   * every job waits for the sweep, seconds instead of milliseconds.
   */
  let restoring: Promise<void> | undefined;
  const restore = (reason: string): Promise<void> => {
    const { nc, jsm } = link!;
    return (restoring ??= (async () => {
      for (let backoff = 250; !closing && !nc.isClosed(); backoff = Math.min(backoff * 2, 5_000)) {
        try {
          const streamCreated = await ensureStream(jsm, names, storage, log);
          let consumersCreated = 0;
          for (const [durable, { filter, repull }] of consumed) {
            if (!(await ensureConsumer(jsm, names, durable, filter, log))) continue;
            // The pulls made before the consumer was lost are retried on a 30 s interval: pull afresh now.
            await repull();
            consumersCreated++;
          }
          if (streamCreated || consumersCreated > 0) log.warn({ reason, streamCreated, consumersCreated }, "stream or consumers were missing; put back");
          return;
        } catch (err) {
          // JetStream answers "not available" for a moment after a server starts.
          log.warn({ err, reason }, "could not restore the stream and consumers yet; retrying");
          await new Promise((resolve) => setTimeout(resolve, backoff).unref());
        }
      }
    })().finally(() => {
      restoring = undefined;
    }));
  };

  /**
   * Set while a flush has gone unanswered: a server that stops answering without closing the connection
   * (a host gone, a dropped flow) would cost every publish the whole flush timeout, and with it the
   * tenant's group commit. Until that flush is answered, or the connection is given up as stale and
   * replaced, publishes are written and not waited on; the sweep sends whatever they lose.
   */
  let silentSince: number | undefined;
  const awaitAnswer = (nc: NatsConnection) => {
    const since = (silentSince = Date.now());
    nc.flush()
      .then(
        () => log.warn({ silentMs: Date.now() - since }, "nats answers again"),
        () => undefined,
      )
      .finally(() => {
        if (silentSince === since) silentSince = undefined;
      });
  };

  /** Takes the connection; the feed is on (`connected`) once the stream is known to be there. */
  const attach = async (nc: NatsConnection) => {
    link = { nc, jsm: await jetstreamManager(nc), js: jetstream(nc) };
    void (async () => {
      for await (const status of nc.status()) {
        if (status.type === "disconnect") connected = false;
        if (status.type === "reconnect") {
          connected = true;
          // A new connection: its flushes are waited on again.
          silentSince = undefined;
        }
        if (status.type === "disconnect" || status.type === "reconnect") log.warn({ status: status.type }, "nats connection");
        if (status.type === "reconnect") void restore("reconnected");
      }
    })();
  };

  /** Connects and takes the connection once the stream is there; a failure closes what it opened. */
  const join = async (): Promise<NatsConnection> => {
    const nc = await connect(connectOptions);
    try {
      await attach(nc);
      await ensureStream(link!.jsm, names, storage, log);
      return nc;
    } catch (err) {
      link = undefined;
      await nc.close().catch(() => undefined);
      throw err;
    }
  };

  try {
    const nc = await join();
    connected = true;
    // The server's release: what a stream or consumer does can differ between them (see ensureConsumer).
    log.info({ url: server.shown, serverVersion: nc.info?.version }, "NATS reached; the feed is on");
  } catch (err) {
    if (cannotMend(err)) throw err;
    // Postgres is the record and the owners' sweep sends what the feed does not: NATS down at start, or
    // starting after webhookd (a name not resolving yet, a server not answering yet, a cluster whose
    // JetStream has no leader yet), slows delivery down; it does not stop webhookd. Whatever the failure,
    // the feed goes on trying: given up after one that was not a refused connection, it stayed off for
    // the life of the process, and /readyz answered 503 with NATS long healthy.
    log.warn({ err, url: server.shown }, "NATS is not usable yet; the feed joins when it is, the sweep delivers until then");
    void (async () => {
      let lastFailure = String(err);
      for (let wait = 500; !closing; wait = Math.min(wait * 2, 5_000)) {
        // An unref'd timer: a process told to stop does not wait for NATS to come.
        await new Promise((resolve) => setTimeout(resolve, wait).unref());
        if (closing) return;
        try {
          const nc = await join();
          if (closing) return void (await nc.close());
          connected = !nc.isClosed();
          log.warn({ url: server.shown, serverVersion: nc.info?.version }, "NATS reached; the feed is on");
          return;
        } catch (again) {
          // Said once per kind of failure, not every few seconds.
          if (String(again) !== lastFailure) log.warn({ err: again, url: server.shown }, "NATS is still not usable; trying again");
          lastFailure = String(again);
        }
      }
    })();
  }

  // Acks of every shard wait for the end of the turn and leave together: one socket write (and one read
  // for the server) for all the messages that arrived at once, instead of one each.
  let unacked: JsMsg[] = [];
  const ackAll = () => {
    const batch = unacked;
    unacked = [];
    for (const m of batch) m.ack();
  };
  const ackSoon = (m: JsMsg) => {
    if (unacked.push(m) === 1) setImmediate(ackAll);
  };

  return {
    kind: "jetstream",
    async publish(jobs: DeliveryJob[]) {
      if (!link || !connected || jobs.length === 0) return;
      const { nc } = link;
      // Plain publishes into the stream's subjects and one flush, not a request and a PubAck per job:
      // Postgres holds every job already and the owners' sweep sends whatever the stream missed, so an
      // acknowledgement would only tell us what the sweep finds out anyway. A webhook's jobs of one call
      // travel in one message, in seq order, without their payloads (the owner reads those from
      // Postgres). The dedup id is the first job's and the count: the messages of one webhook's run start
      // at different jobs, and a repeated publish splits them alike. The attempt count lets a manual retry
      // through, and the webhook's count of requeues the word of a replay or retry: two replays within the
      // window whose lowest pending delivery had not moved made the same id, and the second was dropped.
      for (const message of byWebhook(jobs)) {
        const first = message.jobs[0]!;
        const count = message.jobs.length;
        const h = headers();
        h.set("Nats-Msg-Id", `${first.deliveryId}:${first.attempts}${first.requeues ? `r${first.requeues}` : ""}${count > 1 ? `+${count}` : ""}`);
        try {
          nc.publish(`${names.subjectRoot}.${first.shard}.${first.webhookId}`, joinJobHeads(message.heads), { headers: h });
        } catch (err) {
          // A connection closing under us: the rest still go, and the sweep sends these.
          log.warn({ err, webhookId: first.webhookId, jobs: count }, "publish failed; the owners' sweep picks these up from Postgres");
        }
      }
      if (silentSince !== undefined) return;
      await withTimeout(nc.flush(), PUBLISH_TIMEOUT_MS).catch((err) => {
        log.warn({ err, jobs: jobs.length }, "flush failed; the owners' sweep picks these up from Postgres");
        if (silentSince === undefined) awaitAnswer(nc);
      });
    },

    async consume(shard, onJob) {
      if (!link) throw new Error(`NATS at ${server.shown} has not been reached yet`);
      const { jsm, js } = link;
      const durable = `${names.consumerPrefix}_${shard}`;
      const filter = `${names.subjectRoot}.${shard}.>`;
      await ensureConsumer(jsm, names, durable, filter, log);
      const consumer = await js.consumers.get(names.stream, durable);
      const take = (m: JsMsg) => {
        let jobs: DeliveryJob[] = [];
        try {
          jobs = decodeJobHeads(m.data);
        } catch (err) {
          log.error({ err, shard }, "undecodable feed message dropped; the sweep finds its jobs in Postgres");
        }
        for (const job of jobs) onJob(job);
        // Acked as soon as it is read: from here Postgres and the dispatcher carry its jobs, so nothing
        // parks in the consumer's ack window however long a delivery waits.
        ackSoon(m);
      };
      let fetchingOversized = false;
      /**
       * A message larger than a pull that the stream held before it had its max_msg_size (a release
       * without it): the server answers every pull of the shard 409 and nothing after it came for the
       * stream's max_age, 7 days. It is fetched alone, with no limit on its size, and the consumer pulls
       * afresh (the client does not pull again after such an answer until two idle heartbeats are missed).
       */
      const takeOversized = async () => {
        if (fetchingOversized) return;
        fetchingOversized = true;
        try {
          // One message: the first the shard has, which is the one too large for a pull.
          const batch = await consumer.fetch({ max_messages: 1, expires: 5_000 });
          for await (const m of batch) {
            log.warn({ shard, bytes: m.data.byteLength }, "a feed message larger than a pull was taken on its own");
            take(m);
          }
          await consumed.get(durable)?.repull();
        } catch (err) {
          log.warn({ err, shard }, "could not fetch a feed message larger than a pull; trying again at the next pull");
        } finally {
          fetchingOversized = false;
        }
      };
      const open = async () => {
        const messages = await consumer.consume({ max_bytes: PULL_MAX_BYTES, idle_heartbeat: PULL_IDLE_HEARTBEAT_MS });
        void (async () => {
          // The server also answers 409 when the next message does not fit what is left of a pull that
          // brought others: the client pulls again. Only a pull refused whole (its bytes all left over, in
          // the discard that comes just before) meets a message larger than any pull.
          let refusedWhole = false;
          for await (const status of messages.status()) {
            if (status.type === "stream_not_found" || status.type === "consumer_not_found" || status.type === "consumer_deleted") void restore(status.type);
            if (status.type === "discard") refusedWhole = status.bytesLeft >= PULL_MAX_BYTES;
            if (status.type === "exceeded_limits" && status.description === "message size exceeds maxbytes" && refusedWhole) void takeOversized();
          }
        })();
        const done = (async () => {
          for await (const m of messages) take(m);
        })();
        return { messages, done };
      };
      const close = async ({ messages, done }: Awaited<ReturnType<typeof open>>) => {
        await messages.close();
        await done.catch(() => undefined);
      };
      let reading = await open();
      let stopped = false;
      consumed.set(durable, {
        filter,
        async repull() {
          await close(reading);
          if (!stopped) reading = await open();
          if (stopped) await close(reading);
        },
      });
      const subscription: FeedSubscription = {
        async stop() {
          stopped = true;
          subscriptions.delete(subscription);
          consumed.delete(durable);
          await close(reading);
        },
      };
      subscriptions.add(subscription);
      return subscription;
    },

    // A server that stopped answering (a flush unanswered) is not a healthy feed, connected or not.
    healthy: () => link !== undefined && connected && !link.nc.isClosed() && silentSince === undefined,

    async close() {
      closing = true;
      await Promise.allSettled([...subscriptions].map((s) => s.stop()));
      ackAll();
      const nc = link?.nc;
      // A drain waits for the server: one that stopped answering would hold a stopping process until
      // the client gives the connection up as stale, half a minute.
      await (nc && withTimeout(nc.drain(), DRAIN_TIMEOUT_MS).catch(() => nc.close()));
    },
  };
}

function isNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.status === 404;
}

/** What a memory-backed stream may hold; past it the oldest jobs are dropped and the sweep sends them. */
const MEMORY_STREAM_MAX_BYTES = 256 * 1024 * 1024;

/** Creates the stream, or brings its limits to today's; true when it had to be created. */
async function ensureStream(jsm: JetStreamManager, names: JetStreamNames, storage: "memory" | "file", log: Logger): Promise<boolean> {
  const limits = {
    subjects: [`${names.subjectRoot}.>`],
    duplicate_window: DUPLICATE_WINDOW_NS,
    max_age: MAX_AGE_NS,
    max_bytes: storage === "memory" ? MEMORY_STREAM_MAX_BYTES : -1,
    max_msg_size: MAX_STORED_MESSAGE_BYTES,
  };
  try {
    const info = await jsm.streams.info(names.stream);
    if (info.config.storage !== storage) {
      log.warn({ stream: names.stream, storage: info.config.storage, wanted: storage }, "the stream's storage cannot change in place; delete the stream to change it (the sweep resends what it held)");
    }
    await jsm.streams.update(names.stream, { ...limits, max_bytes: info.config.storage === StorageType.Memory ? MEMORY_STREAM_MAX_BYTES : -1 });
    return false;
  } catch (err) {
    if (!isNotFound(err)) throw err;
    await jsm.streams.add({
      name: names.stream,
      ...limits,
      // Each shard's consumer owns a disjoint subject range, so a work queue keeps the stream to what is unread.
      retention: RetentionPolicy.Workqueue,
      storage: storage === "memory" ? StorageType.Memory : StorageType.File,
    });
    return true;
  }
}

/** What every shard's consumer is, besides its name and filter. */
const CONSUMER_SETTINGS = { ack_wait: 30 * 1e9, max_ack_pending: 10_000 };
/**
 * Bytes a shard's pull asks for at once, rather than a count of messages. At 500 messages a pull, 64
 * shards of a large fan-out's job heads (15 KB for 100 events to one webhook) let the server push more
 * than its 64 MB per-client buffer at a process still busy with the ingest that published them, and it
 * closed the connection as a slow consumer. 64 × 512 KB stays at half that.
 */
const PULL_MAX_BYTES = 512 * 1024;
/**
 * What the stream takes of one message at most; the server refuses a larger one at publish, and the sweep
 * sends its jobs. A message no pull can take (a stray publish, an older release's 500 long heads) would
 * hold up every later message of its shard until max_age, 7 days. Nor may one be larger than what is
 * left of a pull before the client asks for more (it does at 3/4 of PULL_MAX_BYTES left): the server
 * then ends the only pull the client has out with a 409, and the client, its buffer empty, waits for two
 * idle heartbeats before it pulls again (44 s for a 432 KB message after a 101 KB one, with the default
 * heartbeats). 64 KB of that are left for the subject and headers a pull also counts.
 */
const MAX_STORED_MESSAGE_BYTES = (PULL_MAX_BYTES * 3) / 4 - 64 * 1024;
/**
 * A pull that the server ended without the client asking again ends two missed heartbeats later; the
 * client's default (half the pull's 30 s expiry) made that 30 s. Idle, each shard's pull costs one
 * heartbeat every 5 s.
 */
const PULL_IDLE_HEARTBEAT_MS = 5_000;

/**
 * Creates the consumer, or brings one an earlier release (or an operator) left otherwise to today's
 * settings; true when it had to be created.
 */
async function ensureConsumer(jsm: JetStreamManager, names: JetStreamNames, durable: string, filter: string, log: Logger): Promise<boolean> {
  const create = () =>
    jsm.consumers.add(names.stream, {
      durable_name: durable,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ...CONSUMER_SETTINGS,
    });
  let config;
  try {
    ({ config } = await jsm.consumers.info(names.stream, durable));
  } catch (err) {
    if (!isNotFound(err)) throw err;
    await create();
    return true;
  }
  if (config.filter_subject !== filter) {
    // Made again rather than changed: NATS 2.9.10 takes a new filter in place, but a message on it does
    // not wake the pulls that wait (2.10.27 and 2.15.1 do), so jobs came only as each pull expired, 30 s
    // apart. What the old consumer had not acked stays in the work-queue stream for the new one.
    await jsm.consumers.delete(names.stream, durable).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
    await create();
    log.info({ durable, filter, had: config.filter_subject }, "consumer made again with today's filter");
    return true;
  }
  if (config.ack_wait === CONSUMER_SETTINGS.ack_wait && config.max_ack_pending === CONSUMER_SETTINGS.max_ack_pending) return false;
  try {
    await jsm.consumers.update(names.stream, durable, CONSUMER_SETTINGS);
    log.info({ durable }, "consumer settings updated");
  } catch (err) {
    log.warn({ err, durable }, "consumer settings could not be updated; delete the consumer to recreate it");
  }
  return false;
}

/** Deletes a stream, for tests that made their own. */
export async function deleteStream(url: string, prefix: string): Promise<void> {
  const nc = await connect(natsServer(url).connect);
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(jetStreamNames(prefix).stream).catch(() => false);
  } finally {
    await nc.close();
  }
}

/** What no retry mends (credentials, permissions, options, a server without JetStream): the start stops, naming it. */
function cannotMend(err: unknown): boolean {
  return (
    // No responder to the JetStream API at all, where a cluster without a leader answers "unavailable".
    (err instanceof Error && err.name === "JetStreamNotEnabled") ||
    err instanceof AuthorizationError ||
    err instanceof UserAuthenticationExpiredError ||
    err instanceof PermissionViolationError ||
    err instanceof InvalidArgumentError
  );
}

/**
 * NATS_URL as the client takes it: the client does not read credentials from the URL, so they go as
 * options (user:password@, or a token as token@), and what logs show of it carries none.
 */
function natsServer(url: string): { connect: { servers: string; user?: string; pass?: string; token?: string }; shown: string } {
  const parsed = new URL(url);
  const user = decodeURIComponent(parsed.username);
  const pass = decodeURIComponent(parsed.password);
  parsed.username = "";
  parsed.password = "";
  const credentials = user && pass ? { user, pass } : user ? { token: user } : {};
  return { connect: { servers: parsed.toString().replace(/\/$/, ""), ...credentials }, shown: `${parsed.protocol}//${parsed.host}` };
}
