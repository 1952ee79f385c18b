// The ingest write is one statement planned from an unlocked read of the subscribers: it must write the
// whole plan with seqs following each webhook's last, write nothing when the subscribers changed after the
// read, and, from many connections at once, hand out every seq once, in order, without a deadlock.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { createHash, randomBytes } from "node:crypto";
import { types as pgliteTypes } from "@electric-sql/pglite";
import { CompiledQuery, sql } from "kysely";
import { PublishEventRequestSchema } from "../../gen/webhook/v1/event_pb.js";
import { patternsMatching } from "../../src/core/event-types.js";
import { newId } from "../../src/core/ids.js";
import { byteaText, type Db, type Store } from "../../src/store/db.js";
import { findSubscribers, planDeliveries, writeIngest, type IngestPlan } from "../../src/store/ingest.js";
import type { Event } from "../../src/store/schema.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import type { DeliveryFeed } from "../../src/queue/feed.js";
import { createEventService } from "../../src/server/event-service.js";
import { restError, toConnectError } from "../../src/server/errors.js";
import { insertTestWebhook } from "../support/rows.js";
import { suiteStore } from "../support/store.js";
import { eventually } from "../support/wait.js";

const DAY = 86_400_000;

function newEvents(types: string[], key?: string): Event[] {
  const now = new Date();
  return types.map((eventType, i) => ({
    id: newId("evt"),
    tenant_id: DEFAULT_TENANT_ID,
    event_type: eventType,
    payload: JSON.stringify({ i }),
    idempotency_key: i === 0 && key ? key : null,
    ordering_key: null,
    delivery_count: 0,
    created_at: now,
  }));
}

/** What the event service does: read the subscribers, plan, then write. */
async function plan(db: Db, events: Event[]): Promise<IngestPlan> {
  const patterns = [...new Set(events.flatMap((e) => patternsMatching(e.event_type)))];
  const subscribers = await findSubscribers(db, DEFAULT_TENANT_ID, patterns);
  const deliveries = planDeliveries(subscribers, events);
  const createdAt = events[0]!.created_at;
  return { tenantId: DEFAULT_TENANT_ID, patterns, subscribers, events, deliveries, createdAt, expiresAt: new Date(createdAt.getTime() + DAY) };
}

async function webhook(db: Db, eventTypes: string[]): Promise<string> {
  const id = newId("wh");
  await insertTestWebhook(db, { id, shard: 5 });
  await db.updateTable("webhooks").set({ event_types: eventTypes }).where("id", "=", id).execute();
  return id;
}

async function snapshot(db: Db, webhookIds: string[]) {
  const [events, keys, deliveries, seqs] = await Promise.all([
    db.selectFrom("events").select(db.fn.countAll<number>().as("n")).executeTakeFirstOrThrow(),
    db.selectFrom("idempotency_keys").select(db.fn.countAll<number>().as("n")).executeTakeFirstOrThrow(),
    db.selectFrom("deliveries").select(db.fn.countAll<number>().as("n")).executeTakeFirstOrThrow(),
    db.selectFrom("webhooks").select(["id", "last_seq"]).where("id", "in", webhookIds).orderBy("id").execute(),
  ]);
  return { events: Number(events.n), keys: Number(keys.n), deliveries: Number(deliveries.n), seqs };
}

function checks(open: () => Store) {
  test("a plan is written whole: events, keys, and deliveries whose seqs follow each webhook's last", async () => {
    const { db } = open();
    const orders = await webhook(db, ["ingest1.order.*"]);
    const created = await webhook(db, ["ingest1.order.created", "ingest1.invoice.paid"]);
    const first = await plan(db, newEvents(["ingest1.order.created", "ingest1.order.shipped", "ingest1.order.created"], `k-${newId("evt")}`));
    // Subscribers in id order (orders first): order.created → both, order.shipped → orders only.
    assert.deepEqual((await writeIngest(db, first))?.seqs, [1, 1, 2, 3, 2]);
    const second = await plan(db, newEvents(["ingest1.order.created", "ingest1.other"]));
    assert.deepEqual((await writeIngest(db, second))?.seqs, [4, 3]);

    const rows = await db.selectFrom("deliveries").select(["id", "webhook_id", "event_id", "seq", "status", "shard"]).where("webhook_id", "in", [orders, created]).execute();
    const planned = [...first.deliveries, ...second.deliveries];
    assert.equal(rows.length, planned.length);
    const byId = new Map(rows.map((r) => [r.id, r]));
    const seqs = [1, 1, 2, 3, 2, 4, 3];
    planned.forEach((d, i) => assert.deepEqual(byId.get(d.id), { id: d.id, webhook_id: d.webhookId, event_id: d.eventId, seq: seqs[i], status: "pending", shard: 5 }));
    const events = await db.selectFrom("events").select(["id", "delivery_count"]).where("id", "in", [...first.events, ...second.events].map((e) => e.id)).orderBy("id").execute();
    assert.deepEqual(events.map((e) => e.delivery_count), [2, 1, 2, 2, 0]);
    const key = await db.selectFrom("idempotency_keys").select("event_id").where("key", "=", first.events[0]!.idempotency_key!).execute();
    assert.deepEqual(key, [{ event_id: first.events[0]!.id }]);
    const last = await db.selectFrom("webhooks").select(["id", "last_seq"]).where("id", "in", [orders, created]).execute();
    assert.deepEqual(Object.fromEntries(last.map((w) => [w.id, Number(w.last_seq)])), { [orders]: 4, [created]: 3 });
  });

  test("every payload of a batch is stored exactly as given, whatever its characters and length", async () => {
    const { db } = open();
    await webhook(db, ["ingest6.*"]);
    const texts = [
      JSON.stringify({ ascii: "plain" }),
      JSON.stringify({ accents: "é ü ß", cjk: "日本語", emoji: "🎉👩‍💻", rtl: "שלום" }),
      JSON.stringify({ escapes: 'quote " backslash \\ tab \t nul \u0000 brace {}', comma: "a,b", array: ["{", "}", "\\\""] }),
      "[]",
      JSON.stringify({ long: "ü".repeat(70_000) + "x" }),
      "null",
      JSON.stringify("a string of its own 🎉"),
    ];
    const events = newEvents(texts.map(() => "ingest6.thing"));
    events.forEach((e, i) => (e.payload = texts[i]!));
    assert.notEqual(await writeIngest(db, await plan(db, events)), null);
    const stored = await db.selectFrom("events").select(["id", "payload"]).where("id", "in", events.map((e) => e.id)).execute();
    const byId = new Map(stored.map((r) => [r.id, r.payload]));
    events.forEach((e, i) => assert.equal(byId.get(e.id), texts[i], `payload ${i}`));
  });

  test("a batch of the largest request the API takes, 100 payloads of 256 KB, is stored exactly", async () => {
    const { db } = open();
    await webhook(db, ["ingest7.*"]);
    // 256 KB of UTF-8 each, in two-byte characters, every payload different.
    const texts = Array.from({ length: 100 }, (_, i) => JSON.stringify({ i, text: "ü".repeat(131_000 - 10) }));
    assert.ok(texts.every((t) => Buffer.byteLength(t) > 250_000 && Buffer.byteLength(t) <= 256 * 1024));
    const events = newEvents(texts.map(() => "ingest7.thing"));
    events.forEach((e, i) => (e.payload = texts[i]!));
    assert.notEqual(await writeIngest(db, await plan(db, events)), null);
    const stored = await db
      .selectFrom("events")
      .select(["id", sql<string>`md5(payload)`.as("digest"), sql<number>`octet_length(payload)`.as("bytes")])
      .where("id", "in", events.map((e) => e.id))
      .execute();
    const byId = new Map(stored.map((r) => [r.id, r]));
    events.forEach((e, i) => {
      const row = byId.get(e.id);
      assert.equal(row?.bytes, Buffer.byteLength(texts[i]!), `payload ${i} length`);
      assert.equal(row?.digest, createHash("md5").update(texts[i]!).digest("hex"), `payload ${i}`);
    });
  });

  const changes: [string, (db: Db, subscribed: string) => Promise<unknown>][] = [
    ["a subscriber's event types changed", (db, id) => db.updateTable("webhooks").set({ event_types: ["ingest2.other"] }).where("id", "=", id).execute()],
    ["a subscriber was disabled", (db, id) => db.updateTable("webhooks").set({ status: "disabled" }).where("id", "=", id).execute()],
    ["a subscriber was deleted", (db, id) => db.deleteFrom("webhooks").where("id", "=", id).execute()],
    ["a webhook subscribed", (db) => webhook(db, ["ingest2.*"])],
  ];
  for (const [change, make] of changes) {
    test(`nothing is written when ${change} after the read`, async () => {
      const { db } = open();
      const subscribed = await webhook(db, ["ingest2.thing.made"]);
      const other = await webhook(db, ["ingest2.*"]);
      const stale = await plan(db, newEvents(["ingest2.thing.made", "ingest2.thing.made"], `k-${newId("evt")}`));
      assert.ok(stale.deliveries.length >= 4);
      await make(db, subscribed);
      const before = await snapshot(db, [subscribed, other]);
      assert.equal(await writeIngest(db, stale), null);
      assert.deepEqual(await snapshot(db, [subscribed, other]), before);
      // Planned again from a fresh read, it goes through.
      const fresh = await plan(db, stale.events);
      assert.notEqual(await writeIngest(db, fresh), null);
      assert.equal((await snapshot(db, [subscribed, other])).events, before.events + 2);
    });
  }
}

test("PGlite's bytea parameters are written as its own serializer writes them, for any view of a buffer", () => {
  const pooled = Buffer.from("ü a pooled buffer 🎉", "utf8");
  assert.notEqual(pooled.byteOffset, 0, "a small Buffer.from lies in Node's shared pool");
  const views = [pooled, Buffer.from(randomBytes(4096)), new Uint8Array(randomBytes(64).buffer, 7, 33), new Uint8Array(0)];
  for (const view of views) assert.equal(byteaText(view), pgliteTypes.serializers[pgliteTypes.BYTEA]!(view));
});

describe("the ingest write on Postgres", () => {
  const store = suiteStore("postgres", "ingest", { poolSize: 12 });
  checks(store);

  test("ingests from many connections at once into overlapping webhooks take every seq once, in order, without a deadlock", async () => {
    const { db } = store();
    // Webhook i takes "ingest3.t<i>" and the catch-all "ingest3.all"; each ingest touches a different subset.
    const ids = await Promise.all(Array.from({ length: 8 }, (_, i) => webhook(db, [`ingest3.t${i}`, "ingest3.all"])));
    const written: { plan: IngestPlan; seqs: number[] }[] = [];
    await Promise.all(
      Array.from({ length: 12 }, async (_, writer) => {
        for (let round = 0; round < 15; round++) {
          const types = Array.from({ length: 1 + ((writer + round) % 5) }, (_, k) => (k === 4 ? "ingest3.all" : `ingest3.t${(writer * 3 + round * 5 + k * 7) % 8}`));
          for (;;) {
            const p = await plan(db, newEvents(types));
            const result = await writeIngest(db, p);
            if (result === null) continue; // not expected here, but a concurrent change would be planned again
            written.push({ plan: p, seqs: result.seqs });
            break;
          }
        }
      }),
    );
    assert.equal(written.length, 12 * 15);
    const rows = await db.selectFrom("deliveries").select(["id", "webhook_id", "seq"]).where("webhook_id", "in", ids).execute();
    const seqOf = new Map(rows.map((r) => [r.id, Number(r.seq)]));
    for (const { plan: p, seqs } of written) {
      p.deliveries.forEach((d, i) => assert.equal(seqOf.get(d.id), seqs[i], "the seq returned is the one stored"));
      // Within one ingest a webhook's deliveries take consecutive seqs, in event order.
      const perWebhook = new Map<string, number[]>();
      p.deliveries.forEach((d, i) => perWebhook.set(d.webhookId, [...(perWebhook.get(d.webhookId) ?? []), seqs[i]!]));
      for (const list of perWebhook.values()) list.forEach((seq, k) => assert.equal(seq, list[0]! + k));
    }
    const last = await db.selectFrom("webhooks").select(["id", "last_seq"]).where("id", "in", ids).execute();
    for (const w of last) {
      const seqs = rows.filter((r) => r.webhook_id === w.id).map((r) => Number(r.seq)).sort((a, b) => a - b);
      assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `webhook ${w.id}: every seq once, none skipped`);
      assert.equal(Number(w.last_seq), seqs.length);
    }
  });
});

/** Events of a type nobody subscribes to, one per key, in the order given. */
function keyedEvents(keys: string[]): Event[] {
  return keys.map((key) => ({ ...newEvents(["ingest4.unheard"])[0]!, idempotency_key: key }));
}

/** The SQLSTATE a promise was rejected with, or "ok". */
async function outcome(write: Promise<unknown>): Promise<string> {
  return write.then(
    () => "ok",
    (err: { code?: string }) => err.code ?? String(err),
  );
}

/** The store's db, but the ingest statement fails with a deadlock the first `times` times it is sent. */
function deadlockingIngest(db: Db, times: number): Db {
  let left = times;
  return new Proxy(db, {
    get(target, prop) {
      if (prop === "executeQuery") {
        return (query: CompiledQuery) => {
          if (query.sql.includes("prepared: ingest") && left-- > 0) throw Object.assign(new Error("deadlock detected"), { code: "40P01" });
          return target.executeQuery(query);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

const quietFeed: DeliveryFeed = {
  kind: "embedded",
  publish: async () => undefined,
  consume: async () => ({ stop: async () => undefined }),
  healthy: () => true,
  close: async () => undefined,
};

const principal = { tenantId: DEFAULT_TENANT_ID, admin: true, actor: "test" };

describe("idempotency keys shared by concurrent ingests", () => {
  const store = suiteStore("postgres", "ingest_keys");

  test("two batches holding the same keys in opposite orders wait for each other instead of deadlocking", async () => {
    const { db } = store();
    const run = newId("evt");
    const [k1, k2, kx, ky] = ["a", "b", "x", "y"].map((k) => `${run}-${k}`);
    // Another transaction holds kx and ky (uncommitted), so each batch stops after its first key:
    // in the order given, one batch would hold k1 and the other k2 when both went on.
    const first = await plan(db, keyedEvents([k1!, kx!, k2!]));
    const second = await plan(db, keyedEvents([k2!, ky!, k1!]));
    let writes: Promise<string>[] = [];
    await db
      .transaction()
      .execute(async (trx) => {
        for (const key of [kx!, ky!]) {
          await trx.insertInto("idempotency_keys").values({ tenant_id: DEFAULT_TENANT_ID, key, event_id: newId("evt"), created_at: new Date() }).execute();
        }
        writes = [outcome(writeIngest(db, first)), outcome(writeIngest(db, second))];
        await eventually(
          async () => (await db.executeQuery<{ n: number }>(CompiledQuery.raw("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"))).rows[0]!.n,
          (n) => n >= 2,
          "both ingests waiting on a lock",
        );
        throw new Error("rolled back on purpose");
      })
      .catch((err: Error) => assert.equal(err.message, "rolled back on purpose"));
    // One goes through; the other finds the keys taken (the event service then returns the first's events).
    assert.deepEqual((await Promise.all(writes)).sort(), ["23505", "ok"]);
  });

  test("a publish that lost a deadlock is tried again and goes through, once", async () => {
    const { db } = store();
    const events = createEventService({ db: deadlockingIngest(db, 1), feed: quietFeed, eventTtlMs: DAY });
    const key = `retried-${newId("evt")}`;
    const res = await events.publishEvent(principal, create(PublishEventRequestSchema, { eventType: "ingest5.thing", payload: { a: 1 }, idempotencyKey: key }));
    assert.equal(res.duplicate, false);
    const rows = await db.selectFrom("events").select("id").where("idempotency_key", "=", key).execute();
    assert.deepEqual(rows, [{ id: res.eventId }]);
  });

  test("one that keeps losing answers aborted (409 over REST), not internal, and writes nothing", async () => {
    const { db } = store();
    const events = createEventService({ db: deadlockingIngest(db, 100), feed: quietFeed, eventTtlMs: DAY });
    const key = `lost-${newId("evt")}`;
    const err = await events.publishEvent(principal, create(PublishEventRequestSchema, { eventType: "ingest5.thing", payload: {}, idempotencyKey: key })).then(
      () => assert.fail("the publish should fail"),
      (e: unknown) => e,
    );
    assert.equal(toConnectError(err).code, Code.Aborted);
    const rest = restError(err);
    assert.equal(rest.status, 409);
    assert.equal(rest.body.error.code, "aborted");
    assert.match(rest.body.error.message, /try again/);
    assert.deepEqual(await db.selectFrom("idempotency_keys").select("key").where("key", "=", key).execute(), []);
  });
});

describe("the ingest write on PGlite", () => {
  checks(suiteStore("pglite", "ingest"));
});
