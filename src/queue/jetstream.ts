import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
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
import { decodeJobHeads, encodeJobHeads, type DeliveryJob } from "./job.js";
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
/** Jobs in one feed message at most (a head is about 300 bytes: a message stays far below max_payload). */
const MAX_JOBS_PER_MESSAGE = 500;

/** The jobs of each webhook, in order, in runs of at most `MAX_JOBS_PER_MESSAGE`. */
function* byWebhook(jobs: DeliveryJob[]): Generator<DeliveryJob[]> {
  const runs = new Map<string, DeliveryJob[]>();
  for (const job of jobs) {
    let run = runs.get(job.webhookId);
    if (run && run.length >= MAX_JOBS_PER_MESSAGE) {
      yield run;
      run = undefined;
    }
    if (!run) {
      run = [];
      runs.set(job.webhookId, run);
    }
    run.push(job);
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
  const nc: NatsConnection = await connect({
    servers: options.url,
    name: options.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  });
  const log = options.logger.child({ component: "jetstream" });
  let connected = true;
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") connected = false;
      if (status.type === "reconnect") connected = true;
      if (status.type === "disconnect" || status.type === "reconnect") log.warn({ status: status.type }, "nats connection");
    }
  })();

  const jsm: JetStreamManager = await jetstreamManager(nc);
  const js: JetStreamClient = jetstream(nc);
  await ensureStream(jsm, names, options.storage ?? "memory", log);

  const subscriptions = new Set<FeedSubscription>();

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
      if (!connected || jobs.length === 0) return;
      // Plain publishes into the stream's subjects and one flush, not a request and a PubAck per job:
      // Postgres holds every job already and the owners' sweep sends whatever the stream missed, so an
      // acknowledgement would only tell us what the sweep finds out anyway. A webhook's jobs of one call
      // travel in one message, in seq order, without their payloads (the owner reads those from
      // Postgres). The dedup id is the first job's and the count; its attempt count lets a manual retry through.
      for (const group of byWebhook(jobs)) {
        const first = group[0]!;
        const h = headers();
        h.set("Nats-Msg-Id", `${first.deliveryId}:${first.attempts}${group.length > 1 ? `+${group.length}` : ""}`);
        try {
          nc.publish(`${names.subjectRoot}.${first.shard}.${first.webhookId}`, encodeJobHeads(group), { headers: h });
        } catch (err) {
          // A connection closing under us: the rest still go, and the sweep sends these.
          log.warn({ err, webhookId: first.webhookId, jobs: group.length }, "publish failed; the owners' sweep picks these up from Postgres");
        }
      }
      await withTimeout(nc.flush(), PUBLISH_TIMEOUT_MS).catch((err) =>
        log.warn({ err, jobs: jobs.length }, "flush failed; the owners' sweep picks these up from Postgres"),
      );
    },

    async consume(shard, onJob) {
      const durable = `${names.consumerPrefix}_${shard}`;
      await ensureConsumer(jsm, names, durable, `${names.subjectRoot}.${shard}.>`);
      const consumer = await js.consumers.get(names.stream, durable);
      const messages = await consumer.consume({ max_messages: 500 });
      const done = (async () => {
        for await (const m of messages) {
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
        }
      })();
      const subscription: FeedSubscription = {
        async stop() {
          subscriptions.delete(subscription);
          await messages.close();
          await done.catch(() => undefined);
        },
      };
      subscriptions.add(subscription);
      return subscription;
    },

    healthy: () => connected && !nc.isClosed(),

    async close() {
      await Promise.allSettled([...subscriptions].map((s) => s.stop()));
      ackAll();
      await nc.drain().catch(() => nc.close());
    },
  };
}

/** What a memory-backed stream may hold; past it the oldest jobs are dropped and the sweep sends them. */
const MEMORY_STREAM_MAX_BYTES = 256 * 1024 * 1024;

async function ensureStream(jsm: JetStreamManager, names: JetStreamNames, storage: "memory" | "file", log: Logger): Promise<void> {
  const limits = {
    subjects: [`${names.subjectRoot}.>`],
    duplicate_window: DUPLICATE_WINDOW_NS,
    max_age: MAX_AGE_NS,
    max_bytes: storage === "memory" ? MEMORY_STREAM_MAX_BYTES : -1,
  };
  try {
    const info = await jsm.streams.info(names.stream);
    if (info.config.storage !== storage) {
      log.warn({ stream: names.stream, storage: info.config.storage, wanted: storage }, "the stream's storage cannot change in place; delete the stream to change it (the sweep resends what it held)");
    }
    await jsm.streams.update(names.stream, { ...limits, max_bytes: info.config.storage === StorageType.Memory ? MEMORY_STREAM_MAX_BYTES : -1 });
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.streams.add({
      name: names.stream,
      ...limits,
      // Each shard's consumer owns a disjoint subject range, so a work queue keeps the stream to what is unread.
      retention: RetentionPolicy.Workqueue,
      storage: storage === "memory" ? StorageType.Memory : StorageType.File,
    });
  }
}

async function ensureConsumer(jsm: JetStreamManager, names: JetStreamNames, durable: string, filter: string): Promise<void> {
  try {
    await jsm.consumers.info(names.stream, durable);
  } catch (err) {
    if (!(err instanceof JetStreamApiError) || err.status !== 404) throw err;
    await jsm.consumers.add(names.stream, {
      durable_name: durable,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: 30 * 1e9,
      max_ack_pending: 10_000,
    });
  }
}

/** Deletes a stream, for tests that made their own. */
export async function deleteStream(url: string, prefix: string): Promise<void> {
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(jetStreamNames(prefix).stream).catch(() => false);
  } finally {
    await nc.close();
  }
}
