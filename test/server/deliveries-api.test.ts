// DeliveryService through both doors — REST and Connect JSON — against real Postgres and a real receiver:
// paging a webhook's deliveries, filtering them by status, reading one delivery and its attempts, and the
// refusals (bad page token, unknown status, another tenant's or a made-up delivery).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import pg from "pg";
import { newId } from "../../src/core/ids.js";
import { createTestDatabase } from "../support/postgres.js";
import { connectClient, restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver } from "../support/receiver.js";
import { eventually, sleep } from "../support/wait.js";

type Rest = ReturnType<typeof restClient>;
type Rpc = ReturnType<typeof connectClient>;

const DELIVERY_ID = /^dlv_[0-9a-z]{26}$/;
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
/** Longer than the 4 KB of a response body an attempt keeps, and not the same byte over and over. */
const KNOWN_BODY = Array.from({ length: 600 }, (_, i) => `line ${String(i).padStart(3, "0")}|`).join("");
const RECEIVER_DELAY_MS = 150;

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let pool: pg.Pool;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;
let rest: Rest;
let rpc: Rpc;
/** A second tenant, its own key, and the admin acting on it. */
let other: { id: string; rest: Rest; rpc: Rpc; adminRest: Rest; adminRpc: Rpc };
/** While true, the receiver answers 500 on /mixed. */
let mixedFailing = false;

before(async () => {
  db = await createTestDatabase("deliveries_api");
  pool = new pg.Pool({ connectionString: db.url, max: 2 });
  receiver = await startReceiver((req) => {
    if (req.path === "/mixed" && mixedFailing) return { status: 500, body: "upstream broken" };
    if (req.path.startsWith("/failing/")) return { status: 500, body: "always broken" };
    if (req.path === "/known") return { status: 200, delayMs: RECEIVER_DELAY_MS, headers: { "content-type": "text/plain" }, body: KNOWN_BODY };
    return undefined;
  });
  server = await startTestApp({ DATABASE_URL: db.url });
  rest = restClient(server.url, TEST_ADMIN_KEY);
  rpc = connectClient(server.url, TEST_ADMIN_KEY);

  const tenant = await rpc("AdminService", "CreateTenant", { name: "deliveries-other" });
  assert.equal(tenant.status, 200, JSON.stringify(tenant.body));
  const tenantId: string = tenant.body.tenant.tenantId;
  const key = await rpc("AdminService", "CreateApiKey", { tenantId, admin: false });
  assert.equal(key.status, 200, JSON.stringify(key.body));
  other = {
    id: tenantId,
    rest: restClient(server.url, key.body.key),
    rpc: connectClient(server.url, key.body.key),
    adminRest: restClient(server.url, TEST_ADMIN_KEY, tenantId),
    adminRpc: connectClient(server.url, TEST_ADMIN_KEY, tenantId),
  };
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await pool?.end();
  await db?.drop();
});

async function createWebhook(path: string, eventType: string, extra: Record<string, unknown> = {}): Promise<string> {
  const res = await rest("POST", "/webhooks", { url: receiver.url(path), event_types: [eventType], ...extra });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body.webhook_id;
}

async function publish(eventType: string, payload: Record<string, unknown>): Promise<string> {
  const res = await rest("POST", "/events", { event_type: eventType, payload });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  assert.equal(res.body.delivery_count, 1, `${eventType} goes to exactly one webhook`);
  return res.body.event_id;
}

/** What a read-only call could have written. */
async function counts() {
  const { rows } = await pool.query(
    `select (select count(*) from deliveries)::int as deliveries,
            (select count(*) from delivery_attempts)::int as attempts,
            (select count(*) from audit_log where action <> 'auth.failure')::int as audit,
            (select string_agg(id || ':' || status || ':' || attempts, ',' order by id) from deliveries) as states`,
  );
  return rows[0];
}

function assertRestError(res: { status: number; body: any }, status: number, code: string, message: RegExp) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.deepEqual(Object.keys(res.body), ["error"], JSON.stringify(res.body));
  assert.equal(res.body.error.code, code, JSON.stringify(res.body));
  assert.match(res.body.error.message, message);
}

function assertConnectError(res: { status: number; body: any }, status: number, code: string, message: RegExp) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.code, code, JSON.stringify(res.body));
  assert.match(res.body.message, message);
}

interface RestPage {
  deliveries: Record<string, any>[];
  next_page_token?: string;
}

/** Every page of a webhook's deliveries over REST, each page as answered. */
async function restPages(client: Rest, webhookId: string, query: string): Promise<RestPage[]> {
  const pages: RestPage[] = [];
  let token: string | undefined;
  do {
    const q = `${query}${token ? `&page_token=${encodeURIComponent(token)}` : ""}`;
    const res = await client("GET", `/webhooks/${webhookId}/deliveries?${q}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    pages.push(res.body);
    token = res.body.next_page_token;
    assert.ok(pages.length <= 30, "paging ends");
  } while (token);
  return pages;
}

/** Every page over Connect. */
async function rpcPages(client: Rpc, request: Record<string, unknown>): Promise<{ deliveries?: Record<string, any>[]; nextPageToken?: string }[]> {
  const pages = [];
  let pageToken = "";
  do {
    const res = await client("DeliveryService", "ListDeliveries", { ...request, pageToken });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    pages.push(res.body);
    pageToken = res.body.nextPageToken ?? "";
    assert.ok(pages.length <= 30, "paging ends");
  } while (pageToken);
  return pages;
}

describe("ListDeliveries paging", () => {
  const TOTAL = 25;
  let webhookId: string;
  const eventIds: string[] = [];

  before(async () => {
    webhookId = await createWebhook("/paging", "paging.created");
    for (let n = 0; n < TOTAL; n++) eventIds.push(await publish("paging.created", { n }));
    await receiver.waitFor(() => receiver.forPath("/paging").length >= TOTAL, 30_000, `${TOTAL} deliveries to /paging`);
    await eventually(
      () => rest("GET", `/webhooks/${webhookId}/deliveries?status=succeeded&page_size=100`),
      (r) => r.status === 200 && r.body.deliveries.length === TOTAL,
      "every paging delivery recorded as succeeded",
    );
  });

  test("REST pages hold every delivery exactly once, oldest first, and the last page has no token", async () => {
    const pages = await restPages(rest, webhookId, "page_size=10");
    assert.deepEqual(pages.map((p) => p.deliveries.length), [10, 10, 5]);
    assert.deepEqual(pages.map((p) => typeof p.next_page_token), ["string", "string", "undefined"]);
    assert.ok(!("next_page_token" in pages[2]!), "the last page carries no next_page_token at all");

    const all = pages.flatMap((p) => p.deliveries);
    const ids = all.map((d) => d.delivery_id as string);
    assert.equal(new Set(ids).size, TOTAL, "no delivery twice");
    for (const id of ids) assert.match(id, DELIVERY_ID);
    assert.deepEqual(all.map((d) => d.event_id), eventIds, "in publish order");
    assert.deepEqual(all.map((d) => d.seq), Array.from({ length: TOTAL }, (_, i) => i + 1));
    assert.deepEqual([...ids].sort(), ids, "ordered by delivery id");
    for (const d of all) {
      assert.equal(d.webhook_id, webhookId);
      assert.equal(d.status, "succeeded");
      assert.equal(d.event_type, "paging.created");
    }

    // A page size that divides the total: no empty page at the end.
    const fives = await restPages(rest, webhookId, "page_size=5");
    assert.deepEqual(fives.map((p) => p.deliveries.length), [5, 5, 5, 5, 5]);
    assert.deepEqual(fives.flatMap((p) => p.deliveries.map((d) => d.delivery_id)), ids);

    // The default page (50) holds them all and says there is no more.
    const whole = await rest("GET", `/webhooks/${webhookId}/deliveries`);
    assert.equal(whole.status, 200);
    assert.deepEqual(whole.body.deliveries.map((d: { delivery_id: string }) => d.delivery_id), ids);
    assert.equal(whole.body.next_page_token, undefined);
  });

  test("Connect pages agree with REST, and a token from one door continues in the other", async () => {
    const restIds = (await restPages(rest, webhookId, "page_size=100")).flatMap((p) => p.deliveries.map((d) => d.delivery_id));
    const pages = await rpcPages(rpc, { webhookId, pageSize: 10 });
    assert.deepEqual(pages.map((p) => p.deliveries?.length), [10, 10, 5]);
    assert.deepEqual(pages.map((p) => typeof p.nextPageToken), ["string", "string", "undefined"]);
    const all = pages.flatMap((p) => p.deliveries ?? []);
    assert.deepEqual(all.map((d) => d.deliveryId), restIds);
    assert.deepEqual(all.map((d) => d.eventId), eventIds);
    // int64 in proto JSON is a string.
    assert.deepEqual(all.map((d) => d.seq), Array.from({ length: TOTAL }, (_, i) => String(i + 1)));
    for (const d of all) {
      assert.equal(d.webhookId, webhookId);
      assert.equal(d.status, "succeeded");
      assert.equal(d.attempts, 1);
      assert.equal(d.lastResponseCode, 200);
    }

    const firstRest = await rest("GET", `/webhooks/${webhookId}/deliveries?page_size=10`);
    const secondRpc = await rpc("DeliveryService", "ListDeliveries", { webhookId, pageSize: 10, pageToken: firstRest.body.next_page_token });
    assert.equal(secondRpc.status, 200, JSON.stringify(secondRpc.body));
    assert.deepEqual(secondRpc.body.deliveries.map((d: { deliveryId: string }) => d.deliveryId), restIds.slice(10, 20));
  });

  test("a page token or page size the server did not issue is refused, naming the parameter", async () => {
    const before = await counts();
    assertRestError(await rest("GET", `/webhooks/${webhookId}/deliveries?page_token=junk!`), 400, "invalid_argument", /page_token/);
    const notAnId = Buffer.from("not an id").toString("base64url");
    assertRestError(await rest("GET", `/webhooks/${webhookId}/deliveries?page_token=${notAnId}`), 400, "invalid_argument", /page_token/);
    assertRestError(await rest("GET", `/webhooks/${webhookId}/deliveries?page_size=101`), 400, "invalid_argument", /page_size.*101/);
    assertRestError(await rest("GET", `/webhooks/${webhookId}/deliveries?page_size=ten`), 400, "invalid_argument", /page_size/);

    assertConnectError(await rpc("DeliveryService", "ListDeliveries", { webhookId, pageToken: "junk!" }), 400, "invalid_argument", /page_token/);
    assertConnectError(await rpc("DeliveryService", "ListDeliveries", { webhookId, pageToken: notAnId }), 400, "invalid_argument", /page_token/);
    assertConnectError(await rpc("DeliveryService", "ListDeliveries", { webhookId, pageSize: 101 }), 400, "invalid_argument", /page_size.*101/);
    assertConnectError(await rpc("DeliveryService", "ListDeliveries", { pageSize: 10 }), 400, "invalid_argument", /webhook_id/);
    assert.deepEqual(await counts(), before);
  });

  test("another tenant cannot list this tenant's deliveries", async () => {
    for (const client of [other.rest, other.adminRest]) {
      assertRestError(await client("GET", `/webhooks/${webhookId}/deliveries`), 404, "not_found", new RegExp(webhookId));
    }
    for (const client of [other.rpc, other.adminRpc]) {
      assertConnectError(await client("DeliveryService", "ListDeliveries", { webhookId }), 404, "not_found", new RegExp(webhookId));
    }
    const unknown = newId("wh");
    assertRestError(await rest("GET", `/webhooks/${unknown}/deliveries`), 404, "not_found", new RegExp(unknown));
  });
});

describe("ListDeliveries status filter", () => {
  let webhookId: string;
  const delivered: string[] = [];
  const held: string[] = [];

  before(async () => {
    // One retry, an hour away: a failed first attempt leaves the delivery pending for the whole test.
    webhookId = await createWebhook("/mixed", "mixed.created", { retry_schedule: "1h" });
    for (let n = 0; n < 3; n++) delivered.push(await publish("mixed.created", { n }));
    await eventually(
      () => rest("GET", `/webhooks/${webhookId}/deliveries?status=succeeded`),
      (r) => r.status === 200 && r.body.deliveries.length === 3,
      "the first three mixed deliveries succeeded",
    );
    mixedFailing = true;
    for (let n = 3; n < 5; n++) held.push(await publish("mixed.created", { n }));
    await eventually(
      () => rest("GET", `/webhooks/${webhookId}/deliveries?status=pending`),
      (r) => r.status === 200 && r.body.deliveries.length === 2 && r.body.deliveries[0].attempts === 1,
      "the fourth delivery's failed attempt recorded",
    );
  });

  test("REST: succeeded lists only succeeded, pending only pending, and no filter lists all", async () => {
    const succeeded = await rest("GET", `/webhooks/${webhookId}/deliveries?status=succeeded`);
    assert.equal(succeeded.status, 200);
    assert.deepEqual(succeeded.body.deliveries.map((d: { event_id: string }) => d.event_id), delivered);
    for (const d of succeeded.body.deliveries) {
      assert.equal(d.status, "succeeded");
      assert.equal(d.last_response_code, 200);
      assert.ok(!("next_attempt_at" in d), "a final delivery has no next attempt");
    }

    const pending = await rest("GET", `/webhooks/${webhookId}/deliveries?status=pending`);
    assert.equal(pending.status, 200);
    assert.deepEqual(pending.body.deliveries.map((d: { event_id: string }) => d.event_id), held);
    const [head, behind] = pending.body.deliveries;
    assert.equal(head.status, "pending");
    assert.equal(head.attempts, 1);
    assert.equal(head.last_response_code, 500);
    assert.ok(!("delivered_at" in head), JSON.stringify(head));
    assert.match(head.next_attempt_at, ISO);
    assert.ok(Date.parse(head.next_attempt_at) > Date.now() + 30 * 60_000, `the retry waits for the 1h schedule: ${head.next_attempt_at}`);
    // Ordered per webhook: the one behind the failing head has not been tried.
    assert.equal(behind.status, "pending");
    assert.equal(behind.attempts, 0);
    assert.ok(!("last_response_code" in behind), JSON.stringify(behind));
    assert.match(behind.next_attempt_at, ISO);

    const failed = await rest("GET", `/webhooks/${webhookId}/deliveries?status=failed`);
    assert.deepEqual(failed.body, { deliveries: [] });

    const all = await rest("GET", `/webhooks/${webhookId}/deliveries`);
    assert.deepEqual(all.body.deliveries.map((d: { event_id: string }) => d.event_id), [...delivered, ...held]);

    // The filter holds across pages.
    const pages = await restPages(rest, webhookId, "status=succeeded&page_size=2");
    assert.deepEqual(pages.map((p) => p.deliveries.length), [2, 1]);
    assert.deepEqual(pages.flatMap((p) => p.deliveries.map((d) => d.event_id)), delivered);
  });

  test("Connect: the same filter", async () => {
    const succeeded = await rpc("DeliveryService", "ListDeliveries", { webhookId, status: "succeeded" });
    assert.equal(succeeded.status, 200, JSON.stringify(succeeded.body));
    assert.deepEqual(succeeded.body.deliveries.map((d: { eventId: string }) => d.eventId), delivered);
    assert.ok(succeeded.body.deliveries.every((d: { status: string }) => d.status === "succeeded"));

    const pending = await rpc("DeliveryService", "ListDeliveries", { webhookId, status: "pending" });
    assert.equal(pending.status, 200, JSON.stringify(pending.body));
    assert.deepEqual(pending.body.deliveries.map((d: { eventId: string }) => d.eventId), held);
    assert.ok(pending.body.deliveries.every((d: { status: string }) => d.status === "pending"));
    assert.equal(pending.body.deliveries[0].lastResponseCode, 500);

    const expired = await rpc("DeliveryService", "ListDeliveries", { webhookId, status: "expired" });
    assert.equal(expired.status, 200);
    assert.deepEqual(expired.body, {});
  });

  test("an unknown status is refused, naming it and the allowed ones, and changes nothing", async () => {
    const before = await counts();
    const res = await rest("GET", `/webhooks/${webhookId}/deliveries?status=bogus`);
    assertRestError(res, 400, "invalid_argument", /"bogus"/);
    assert.match(res.body.error.message, /pending/);
    assert.match(res.body.error.message, /succeeded/);
    assertConnectError(await rpc("DeliveryService", "ListDeliveries", { webhookId, status: "bogus" }), 400, "invalid_argument", /"bogus"/);
    assertRestError(await rest("GET", `/webhooks/${webhookId}/deliveries?status=Succeeded`), 400, "invalid_argument", /"Succeeded"/);
    assert.deepEqual(await counts(), before);
    const pending = await rest("GET", `/webhooks/${webhookId}/deliveries?status=pending`);
    assert.deepEqual(pending.body.deliveries.map((d: { event_id: string }) => d.event_id), held);
  });
});

describe("GetDelivery and ListDeliveryAttempts", () => {
  let webhookId: string;
  let eventId: string;
  let deliveryId: string;
  let publishedFrom: number;
  let publishedTo: number;

  before(async () => {
    webhookId = await createWebhook("/known", "known.created");
    publishedFrom = Date.now();
    eventId = await publish("known.created", { hello: "world" });
    publishedTo = Date.now();
    await receiver.waitFor(() => receiver.forPath("/known").length >= 1, 15_000, "the delivery to /known");
    const list = await eventually(
      () => rest("GET", `/webhooks/${webhookId}/deliveries`),
      (r) => r.status === 200 && r.body.deliveries[0]?.status === "succeeded",
      "the /known delivery recorded",
    );
    deliveryId = list.body.deliveries[0].delivery_id;
  });

  test("REST GET /deliveries/{id} answers the contract's fields with the right values", async () => {
    const res = await rest("GET", `/deliveries/${deliveryId}`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const d = res.body;
    assert.deepEqual(Object.keys(d).sort(), [
      "attempts",
      "created_at",
      "delivered_at",
      "delivery_id",
      "event_id",
      "event_type",
      "last_response_code",
      "seq",
      "status",
      "webhook_id",
    ]);
    assert.equal(d.delivery_id, deliveryId);
    assert.equal(d.event_id, eventId);
    assert.equal(d.webhook_id, webhookId);
    assert.equal(d.event_type, "known.created");
    assert.equal(d.status, "succeeded");
    assert.equal(d.attempts, 1);
    assert.equal(d.last_response_code, 200);
    assert.equal(d.seq, 1);
    assert.match(d.created_at, ISO);
    assert.match(d.delivered_at, ISO);
    const created = Date.parse(d.created_at);
    const deliveredAt = Date.parse(d.delivered_at);
    assert.ok(created >= publishedFrom - 1_000 && created <= publishedTo + 1_000, `created_at ${d.created_at} is when it was published`);
    const receivedAt = receiver.forPath("/known")[0]!.at;
    assert.ok(deliveredAt >= created, "delivered after it was created");
    assert.ok(Math.abs(deliveredAt - receivedAt) < 2_000, `delivered_at ${d.delivered_at} is when the receiver got it (${new Date(receivedAt).toISOString()})`);

    const listed = await rest("GET", `/webhooks/${webhookId}/deliveries`);
    assert.deepEqual(listed.body.deliveries, [d], "the list shows the same delivery");
  });

  test("Connect GetDelivery agrees with REST", async () => {
    const restView = (await rest("GET", `/deliveries/${deliveryId}`)).body;
    const res = await rpc("DeliveryService", "GetDelivery", { deliveryId });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const d = res.body.delivery;
    assert.equal(d.deliveryId, deliveryId);
    assert.equal(d.eventId, eventId);
    assert.equal(d.webhookId, webhookId);
    assert.equal(d.eventType, "known.created");
    assert.equal(d.status, "succeeded");
    assert.equal(d.attempts, 1);
    assert.equal(d.lastResponseCode, 200);
    assert.equal(d.seq, "1");
    assert.equal(d.nextAttemptAt, undefined);
    assert.equal(Date.parse(d.createdAt), Date.parse(restView.created_at));
    assert.equal(Date.parse(d.deliveredAt), Date.parse(restView.delivered_at));
  });

  test("attempts: status 200, the duration, and the first 4 KB of the receiver's answer", async () => {
    const res = await rest("GET", `/deliveries/${deliveryId}/attempts`);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.attempts.length, 1);
    const a = res.body.attempts[0];
    assert.deepEqual(Object.keys(a).sort(), ["attempt_id", "attempted_at", "duration_ms", "response_body", "response_code"]);
    assert.match(a.attempt_id, /^att_[0-9a-z]{26}$/);
    assert.equal(a.response_code, 200);
    assert.ok(Number.isInteger(a.duration_ms), String(a.duration_ms));
    assert.ok(a.duration_ms >= RECEIVER_DELAY_MS - 10 && a.duration_ms < 10_000, `duration ${a.duration_ms} ms includes the receiver's ${RECEIVER_DELAY_MS} ms`);
    assert.ok(KNOWN_BODY.length > 4096);
    assert.equal(a.response_body, KNOWN_BODY.slice(0, 4096));
    const attemptedAt = Date.parse(a.attempted_at);
    const deliveredAt = Date.parse((await rest("GET", `/deliveries/${deliveryId}`)).body.delivered_at);
    assert.ok(attemptedAt <= deliveredAt && deliveredAt <= attemptedAt + a.duration_ms + 1_000, `${a.attempted_at} / ${a.duration_ms} ms / delivered ${deliveredAt}`);

    const viaRpc = await rpc("DeliveryService", "ListDeliveryAttempts", { deliveryId });
    assert.equal(viaRpc.status, 200, JSON.stringify(viaRpc.body));
    assert.equal(viaRpc.body.attempts.length, 1);
    const r = viaRpc.body.attempts[0];
    assert.equal(r.attemptId, a.attempt_id);
    assert.equal(r.deliveryId, deliveryId);
    assert.equal(r.responseCode, 200);
    assert.equal(r.durationMs, a.duration_ms);
    assert.equal(r.responseBody, a.response_body);
    assert.equal(r.error, undefined);
    assert.equal(Date.parse(r.attemptedAt), attemptedAt);
  });

  test("another tenant's delivery and a made-up id are not found, through both doors", async () => {
    const madeUp = newId("dlv");
    const before = await counts();
    for (const client of [other.rest, other.adminRest]) {
      assertRestError(await client("GET", `/deliveries/${deliveryId}`), 404, "not_found", new RegExp(deliveryId));
      assertRestError(await client("GET", `/deliveries/${deliveryId}/attempts`), 404, "not_found", new RegExp(deliveryId));
    }
    for (const client of [other.rpc, other.adminRpc]) {
      assertConnectError(await client("DeliveryService", "GetDelivery", { deliveryId }), 404, "not_found", new RegExp(deliveryId));
      assertConnectError(await client("DeliveryService", "ListDeliveryAttempts", { deliveryId }), 404, "not_found", new RegExp(deliveryId));
    }
    assertRestError(await rest("GET", `/deliveries/${madeUp}`), 404, "not_found", new RegExp(madeUp));
    assertRestError(await rest("GET", `/deliveries/${madeUp}/attempts`), 404, "not_found", new RegExp(madeUp));
    assertRestError(await rest("GET", "/deliveries/not-a-delivery"), 404, "not_found", /not-a-delivery/);
    assertConnectError(await rpc("DeliveryService", "GetDelivery", { deliveryId: madeUp }), 404, "not_found", new RegExp(madeUp));
    assertConnectError(await rpc("DeliveryService", "ListDeliveryAttempts", { deliveryId: madeUp }), 404, "not_found", new RegExp(madeUp));
    assertConnectError(await rpc("DeliveryService", "GetDelivery", {}), 404, "not_found", /delivery/);
    assert.deepEqual(await counts(), before);

    // Still there for its own tenant.
    const own = await rest("GET", `/deliveries/${deliveryId}`);
    assert.equal(own.status, 200);
    assert.equal(own.body.delivery_id, deliveryId);
  });
});

describe("RetryDelivery and replay of a deleted webhook", () => {
  /** A webhook without retries whose one delivery has failed: its id and the delivery's. */
  async function failedDelivery(name: string): Promise<{ webhookId: string; deliveryId: string }> {
    const webhookId = await createWebhook(`/failing/${name}`, `${name}.created`, { retry_schedule: "none" });
    await publish(`${name}.created`, {});
    const failed = await eventually(
      () => rest("GET", `/webhooks/${webhookId}/deliveries?status=failed`),
      (r) => r.status === 200 && r.body.deliveries.length === 1,
      `the ${name} delivery failed`,
    );
    return { webhookId, deliveryId: failed.body.deliveries[0].delivery_id };
  }

  /**
   * Runs `call` while another transaction has marked the webhook deleted and holds its row, as
   * DeleteWebhook does; commits that once `call` waits on it (or has answered), then returns its answer.
   */
  async function racingDelete<T>(webhookId: string, call: () => Promise<T>): Promise<T> {
    const deleter = await pool.connect();
    try {
      await deleter.query("begin");
      await deleter.query("update webhooks set status = 'deleted' where id = $1", [webhookId]);
      let settled = false;
      const answer = call().finally(() => (settled = true));
      await eventually(
        async () => settled || (await pool.query("select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'")).rows[0].n > 0,
        (done) => done,
        "the call to wait on the deleting transaction, or to answer",
      );
      await deleter.query("commit");
      return await answer;
    } finally {
      deleter.release();
    }
  }

  test("retrying a failed delivery of a deleted webhook is refused through both doors, and changes nothing", async () => {
    const { webhookId, deliveryId } = await failedDelivery("retrydeleted");
    assert.equal((await rest("DELETE", `/webhooks/${webhookId}`)).status, 200);
    const before = await counts();
    const refusal = new RegExp(`${deliveryId}.*${webhookId} was deleted`);
    assertRestError(await rest("POST", `/deliveries/${deliveryId}/retry`), 409, "failed_precondition", refusal);
    assertConnectError(await rpc("DeliveryService", "RetryDelivery", { deliveryId }), 400, "failed_precondition", refusal);
    await sleep(300);
    assert.deepEqual(await counts(), before);
    assert.equal(receiver.forPath("/failing/retrydeleted").length, 1, "nothing more is sent to the deleted webhook");
  });

  test("a retry racing the delete of its webhook waits for it and is refused; nothing is put back", async () => {
    const { webhookId, deliveryId } = await failedDelivery("retryrace");
    const before = await counts();
    const res = await racingDelete(webhookId, () => rest("POST", `/deliveries/${deliveryId}/retry`));
    assertRestError(res, 409, "failed_precondition", new RegExp(`${webhookId} was deleted`));
    assert.deepEqual(await counts(), before);
  });

  test("a replay racing the delete of its webhook is refused and puts nothing back", async () => {
    const { webhookId } = await failedDelivery("replayrace");
    const before = await counts();
    const since = new Date(Date.now() - 3_600_000).toISOString();
    const res = await racingDelete(webhookId, () => rest("POST", `/webhooks/${webhookId}/replay`, { since }));
    assertRestError(res, 404, "not_found", new RegExp(webhookId));
    assert.deepEqual(await counts(), before);
    assert.equal((await pool.query("select count(*)::int as n from replays where webhook_id = $1", [webhookId])).rows[0].n, 0);
  });

  test("a paused webhook's failed delivery may still be retried: its lane holds it", async () => {
    const { webhookId, deliveryId } = await failedDelivery("retrypaused");
    assert.equal((await rest("PUT", `/webhooks/${webhookId}`, { status: "paused" })).status, 200);
    const res = await rest("POST", `/deliveries/${deliveryId}/retry`);
    assert.equal(res.status, 202, JSON.stringify(res.body));
    assert.equal(res.body.status, "pending");
  });
});
