import { after, before, mock, test } from "node:test";
import assert from "node:assert/strict";
import { createTestDatabase } from "../support/postgres.js";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { AttemptWriter } from "../../src/dispatcher/attempt-writer.js";
import { createLogger } from "../../src/logger.js";
import { newId } from "../../src/core/ids.js";
import { pino } from "pino";
import { sql } from "kysely";
import { startTcpProxy } from "../support/tcp-proxy.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let store: Store;

before(async () => {
  db = await createTestDatabase("attempt_writer");
  store = await openStore({ databaseUrl: db.url, dataDir: "/nonexistent" });
  await migrate(store.db);
});

after(async () => {
  await store?.close();
  await db?.drop();
});

async function pendingDelivery(seq: number): Promise<string> {
  const id = newId("dlv");
  const now = new Date();
  await store.db
    .insertInto("deliveries")
    .values({
      id,
      tenant_id: "default",
      webhook_id: "wh_00000000000000000000000000",
      event_id: newId("evt"),
      seq,
      shard: 0,
      ordering_key: "",
      status: "pending",
      next_attempt_at: now,
      expires_at: new Date(now.getTime() + 60_000),
      created_at: now,
    })
    .execute();
  return id;
}

const success = (deliveryId: string, responseBody = "ok") => ({
  attemptId: newId("att"),
  deliveryId,
  attemptedAt: new Date(),
  durationMs: 3,
  responseCode: 200,
  error: null,
  responseBody,
  status: "succeeded" as const,
  nextAttemptAt: new Date(),
});

test("records that queued behind a write go at once, not after the gathering delay", async () => {
  // The first two fill a batch and go at once; the third waits for that write, then for nothing more.
  // It used to wait maxDelayMs again: lanes wait for their record, so every write cost them that delay.
  const writer = new AttemptWriter(store.db, createLogger("silent", "test"), { maxBatch: 2, maxDelayMs: 5_000 });
  const ids = await Promise.all([11, 12, 13].map(pendingDelivery));
  const started = performance.now();
  await Promise.all(ids.map((id) => writer.write(success(id))));
  const elapsed = performance.now() - started;
  await writer.stop();
  assert.ok(elapsed < 2_500, `three records in two writes took ${Math.round(elapsed)} ms; the gathering delay is 5,000 ms`);
  const rows = await store.db.selectFrom("deliveries").select("status").where("id", "in", ids).execute();
  assert.deepEqual(rows.map((r) => r.status), ["succeeded", "succeeded", "succeeded"]);
});

test("records that queued behind a write go on the next turn of the event loop, with no timer", async () => {
  // setTimeout(fn, 0) is a 1 ms timer in Node: under load, every write made the lanes waiting for their
  // records wait that much more. With setTimeout frozen, only the first write (after a quiet spell, so
  // it gathers for maxDelayMs) needs the clock; the write queued behind it must not.
  const writer = new AttemptWriter(store.db, createLogger("silent", "test"), { maxBatch: 100, maxDelayMs: 5_000 });
  const ids = await Promise.all([21, 22].map(pendingDelivery));
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const first = writer.write(success(ids[0]!));
    mock.timers.tick(5_000);
    const second = writer.write(success(ids[1]!));
    let guard: NodeJS.Timeout | undefined;
    const stuck = new Promise<"stuck">((resolve) => {
      guard = setInterval(() => resolve("stuck"), 3_000);
    });
    const outcome = await Promise.race([Promise.all([first, second]).then(() => "written" as const), stuck]);
    clearInterval(guard);
    assert.equal(outcome, "written", "the record queued behind a write waited for a timer");
  } finally {
    mock.timers.reset();
  }
  await writer.stop();
  const rows = await store.db.selectFrom("deliveries").select("status").where("id", "in", ids).execute();
  assert.deepEqual(rows.map((r) => r.status), ["succeeded", "succeeded"]);
});

test("a record Postgres refuses does not stall the records batched with it", async () => {
  const writer = new AttemptWriter(store.db, createLogger("silent", "test"), { maxBatch: 10, maxDelayMs: 20 });
  const ids = await Promise.all([1, 2, 3].map(pendingDelivery));
  // A NUL byte is not storable text: this one record makes the whole batch's statement fail.
  await Promise.all([writer.write(success(ids[0]!, "fine")), writer.write(success(ids[1]!, "bad\u0000body")), writer.write(success(ids[2]!, "fine"))]);
  await writer.stop();
  const rows = await store.db.selectFrom("deliveries").select(["id", "status"]).where("id", "in", ids).execute();
  assert.deepEqual(new Set(rows.map((r) => r.status)), new Set(["succeeded"]), "every delivery recorded, the refused one without its body");
  const bodies = await store.db.selectFrom("delivery_attempts").select(["delivery_id", "response_body"]).where("delivery_id", "in", ids).execute();
  assert.equal(bodies.length, 3);
  assert.equal(bodies.find((b) => b.delivery_id === ids[1])!.response_body, null);
});

test("a record written one by one after its batch was refused is tried again while Postgres fails for a moment, not dropped and reported written", async () => {
  const ids = await Promise.all([1, 2, 3].map(pendingDelivery));
  // A moment of trouble for the writes of one fine record, as a lost connection would be: a transient
  // error (serialization failure, class 40) for its first two tries, the batch's and its own.
  // A sequence counts the tries: unlike a row, it is not rolled back with the statement that failed.
  await sql`create sequence flaky_tries`.execute(store.db);
  await sql`
    create function flaky_attempt() returns trigger language plpgsql as $$
    begin
      if new.delivery_id = ${sql.lit(ids[0]!)} and nextval('flaky_tries') <= 2 then
        raise exception 'flaky' using errcode = '40001';
      end if;
      return new;
    end $$`.execute(store.db);
  await sql`create trigger flaky before insert on delivery_attempts for each row execute function flaky_attempt()`.execute(store.db);
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  try {
    const writer = new AttemptWriter(store.db, log, { maxBatch: 10, maxDelayMs: 20 });
    // The NUL byte makes the batch's statement refused: the writer goes one by one, and meets the trouble.
    const outcomes = await Promise.allSettled([writer.write(success(ids[0]!, "fine")), writer.write(success(ids[1]!, "bad\u0000body")), writer.write(success(ids[2]!, "fine"))]);
    await writer.stop();
    assert.deepEqual(outcomes.map((o) => o.status), ["fulfilled", "fulfilled", "fulfilled"]);
    const rows = await store.db.selectFrom("deliveries").select(["id", "status"]).where("id", "in", ids).execute();
    assert.deepEqual(rows.map((r) => r.status), ["succeeded", "succeeded", "succeeded"], "a delivery reported written is written");
    const first = await store.db.selectFrom("delivery_attempts").select("response_body").where("delivery_id", "=", ids[0]!).execute();
    assert.deepEqual(first, [{ response_body: "fine" }], "the record with nothing wrong kept its response");
    assert.ok(lines.some((l) => /retrying/.test(l.msg)), "the trouble was met");
  } finally {
    await sql`drop trigger flaky on delivery_attempts`.execute(store.db);
    await sql`drop function flaky_attempt`.execute(store.db);
    await sql`drop sequence flaky_tries`.execute(store.db);
  }
});

test("a write whose commit was hidden by a lost connection is not written again, nor reported dropped", async () => {
  // The writer reaches Postgres through a proxy: the batch's statement gets through and commits, its reply
  // is lost, the connection dies. The retry then meets its own attempt ids: the batch is done.
  const proxy = await startTcpProxy(db.url);
  const proxied = await openStore({ databaseUrl: proxy.url, dataDir: "/nonexistent", onConnectionError: () => undefined });
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  try {
    const writer = new AttemptWriter(proxied.db, log);
    const ids = [await pendingDelivery(1), await pendingDelivery(2)];
    const retry = { ...success(ids[1]!), responseCode: 503, status: "pending" as const, nextAttemptAt: new Date(Date.now() + 60_000) };
    await proxied.db.selectFrom("deliveries").select("id").limit(1).execute(); // the pool's connection is open
    proxy.mute();
    const written = Promise.all([writer.write(success(ids[0]!)), writer.write(retry)]);
    const committed = async () => Number((await store.db.selectFrom("delivery_attempts").select((eb) => eb.fn.countAll().as("n")).where("delivery_id", "in", ids).executeTakeFirstOrThrow()).n);
    while ((await committed()) < 2) await new Promise((r) => setTimeout(r, 10));
    proxy.cut();
    await written;
    await writer.stop();

    const rows = await store.db.selectFrom("deliveries").select(["id", "status", "attempts"]).where("id", "in", ids).orderBy("seq").execute();
    assert.deepEqual(rows.map((r) => [r.status, r.attempts]), [["succeeded", 1], ["pending", 1]]);
    assert.equal(await committed(), 2, "one attempt row each");
    assert.deepEqual(lines.filter((l) => l.level >= 50 && !/retrying/.test(l.msg)).map((l) => l.msg), [], "no record reported refused or dropped");
  } finally {
    await proxied.close();
    await proxy.close();
  }
});

test("a stopping writer gives its records up once its grace is over when Postgres is unreachable, instead of holding the stop", async () => {
  const proxy = await startTcpProxy(db.url);
  const proxied = await openStore({ databaseUrl: proxy.url, dataDir: "/nonexistent", onConnectionError: () => undefined });
  try {
    const writer = new AttemptWriter(proxied.db, createLogger("silent", "test"));
    const id = await pendingDelivery(1);
    proxy.block();
    const written = writer.write(success(id)).then(
      () => "written",
      (err: Error) => `given up: ${err.message}`,
    );
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    writer.giveUpAfter(500);
    await writer.stop();
    const took = Date.now() - t0;
    assert.match(await written, /^given up: /);
    assert.ok(took >= 400 && took < 3_000, `the stop ended after the grace (${took} ms)`);
    const row = await store.db.selectFrom("deliveries").select(["status", "attempts"]).where("id", "=", id).executeTakeFirstOrThrow();
    assert.deepEqual(row, { status: "pending", attempts: 0 }, "the delivery stays pending, to be sent again");
  } finally {
    await proxied.close();
    await proxy.close();
  }
});
