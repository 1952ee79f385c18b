// Property-based fuzzing of every REST route and every Connect RPC with hostile input.
//
//   1. REST: random methods, paths built from the real route shapes with hostile segments, random query
//      strings, bodies and headers: never 5xx, never a crash (/healthz answers after every request),
//      every 4xx is `{error: {code, message}}` JSON with a non-empty message, and a refusal writes nothing.
//   2. Connect: random JSON (application/json) and binary (application/proto) bodies at every method of
//      WebhookService, EventService, DeliveryService and AdminService: never 5xx or `internal`, every
//      error carries a code, and a refusal writes nothing.
//   3. Tenant isolation: tenant A's key naming tenant B's webhooks, events and deliveries always answers
//      404 / not_found, B's rows stay as they were, and nothing A is answered names B's ids or URLs.
//
// "Writes nothing" is checked on the database itself: row counts of every table plus a digest of the
// mutable tables, before and after each refused request. Failed authentications are audited on purpose
// (`auth.failure`, rate-limited, asynchronous): those audit rows are left out of the comparison, as in
// test/server/rest-api.test.ts.
//
// The minimal counterexamples of the bugs found so far are pinned twice: as `examples` of the property
// that found them (so every run replays them before the random ones) and as one small test each under
// "bugs found by the fuzzer" (so a run says which ones are open). See the `// BUG` comments: REST 1-5 and
// Connect 1-3 were fixed in src/ while this file was written and stay as regression examples; Connect 4
// is open, so property 2b and its test fail until it is fixed.
//
// FUZZ_RUNS_SCALE=N multiplies every numRuns (a longer hunt); FUZZ_SKIP_KNOWN=1, below.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { randomBytes } from "node:crypto";
import fc from "fast-check";
import pg from "pg";
import { create, fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { WebhookService } from "../../gen/webhook/v1/webhook_pb.js";
import { EventService } from "../../gen/webhook/v1/event_pb.js";
import { DeliveryService } from "../../gen/webhook/v1/delivery_pb.js";
import { AdminService } from "../../gen/webhook/v1/admin_pb.js";
import { createTestDatabase } from "../support/postgres.js";
import { startTestApp, TEST_ADMIN_KEY } from "../support/app.js";

type App = Awaited<ReturnType<typeof startTestApp>>;

/**
 * FUZZ_SKIP_KNOWN=1 lets a 5xx pass when it is one of the known bugs below, so that the properties keep
 * hunting past them (their own tests still fail). Off by default: a property fails while its bug is open.
 */
const SKIP_KNOWN = process.env.FUZZ_SKIP_KNOWN === "1";
const NUM_RUNS_SCALE = Number(process.env.FUZZ_RUNS_SCALE ?? "1");

/** How the answers were spread, printed as a diagnostic of each property: a fuzzer that only ever hits 401 proves little. */
const answers = new Map<string, number>();
const tally = (key: string) => answers.set(key, (answers.get(key) ?? 0) + 1);
function report(t: { diagnostic(message: string): void }): void {
  const lines = [...answers].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${n}× ${k}`);
  t.diagnostic(`answers: ${lines.join(" | ")}`);
  answers.clear();
}

const NUM_RUNS = {
  rest: 500,
  connectJson: 400,
  connectBinary: 250,
  isolation: 300,
};

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let pool: pg.Pool;
let main: App;
let host: string;
let port: number;
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

interface TenantFixture {
  tenantId: string;
  keyId: string;
  key: string;
  webhookIds: string[];
  webhookUrls: string[];
  eventIds: string[];
  idempotencyKeys: string[];
  deliveryIds: string[];
  attemptIds: string[];
}
/** The tenant whose key and id properties 1 and 2 use. */
let fuzzTenant: TenantFixture;
/** Property 3's tenants: nothing else touches them, so what property 3 sees is its own doing. */
let tenantA: TenantFixture;
let tenantB: TenantFixture;
/** The built-in tenant's fixtures, reached with the admin key and no x-tenant-id. */
let defaults: { webhookIds: string[]; eventIds: string[]; deliveryIds: string[] };

// ---------------------------------------------------------------------------------------------------
// Plumbing

interface Answer {
  status: number;
  contentType: string;
  text: string;
}

/**
 * One request with node:http, not fetch: fetch normalises the path (`..`, `%2e`) and refuses some
 * headers, and the point is to send exactly what a hostile client would.
 */
function send(method: string, path: string, headers: Record<string, string>, body?: string | Uint8Array): Promise<Answer> {
  const payload = body === undefined ? undefined : Buffer.from(body);
  // node:http sends a GET or DELETE body without a length unless told: say it, as any client would.
  if (payload !== undefined) headers = { ...headers, "content-length": String(payload.length) };
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path, headers, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, contentType: String(res.headers["content-type"] ?? ""), text: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.setTimeout(15_000, () => req.destroy(new Error(`${method} ${path.slice(0, 200)} timed out`)));
    req.end(payload);
  });
}

function parse(text: string): any {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function show(value: unknown, max = 600): string {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s === undefined ? String(value) : s.length > max ? `${s.slice(0, max)}… (${s.length} chars)` : s;
}

/** A Connect unary call with plain fetch, JSON in and out. */
async function rpc(path: string, body: unknown, key: string | undefined, extra: Record<string, string> = {}) {
  const res = await fetch(`${main.url}${path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "connect-protocol-version": "1",
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...extra,
    },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, body: parse(text) };
}

/** A REST call with plain fetch (fixtures and isolation checks: well-formed requests only). */
async function rest(method: string, path: string, key: string, body?: unknown, extra: Record<string, string> = {}) {
  const res = await fetch(`${main.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json", ...extra },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, text, body: parse(text) };
}

async function ok<T extends { status: number; text: string; body: any }>(what: string, p: Promise<T>): Promise<any> {
  const res = await p;
  assert.ok(res.status >= 200 && res.status < 300, `${what}: ${res.status} ${show(res.text)}`);
  return res.body;
}

/**
 * What a refusal must leave untouched: row counts of every table, and a digest of the rows of the tables
 * a call can update in place.
 */
async function dbState(): Promise<Record<string, unknown>> {
  const { rows } = await pool.query(`
    select
      (select count(*) from tenants)::int as tenants,
      (select count(*) from api_keys)::int as api_keys,
      (select count(*) from webhooks)::int as webhooks,
      (select count(*) from events)::int as events,
      (select count(*) from deliveries)::int as deliveries,
      (select count(*) from delivery_attempts)::int as delivery_attempts,
      (select count(*) from audit_log where action <> 'auth.failure')::int as audit_log,
      (select md5(coalesce(string_agg(t::text, '|' order by t.id), '')) from tenants t) as tenants_digest,
      (select md5(coalesce(string_agg(k::text, '|' order by k.id), '')) from api_keys k) as api_keys_digest,
      (select md5(coalesce(string_agg(w::text, '|' order by w.id), '')) from webhooks w) as webhooks_digest,
      (select md5(coalesce(string_agg(d::text, '|' order by d.id), '')) from deliveries d) as deliveries_digest,
      (select md5(coalesce(string_agg(e::text, '|' order by e.id), '')) from events e) as events_digest`);
  return rows[0];
}

/** Every row that belongs to one tenant, as JSON. */
async function tenantRows(tenantId: string): Promise<unknown> {
  const { rows } = await pool.query(
    `select json_build_object(
       'tenant', (select row_to_json(t) from tenants t where t.id = $1),
       'api_keys', (select coalesce(json_agg(k order by k.id), '[]') from api_keys k where k.tenant_id = $1),
       'webhooks', (select coalesce(json_agg(w order by w.id), '[]') from webhooks w where w.tenant_id = $1),
       'events', (select coalesce(json_agg(e order by e.id), '[]') from events e where e.tenant_id = $1),
       'deliveries', (select coalesce(json_agg(d order by d.id), '[]') from deliveries d where d.tenant_id = $1),
       'attempts', (select coalesce(json_agg(a order by a.id), '[]') from delivery_attempts a
                      where a.delivery_id in (select id from deliveries where tenant_id = $1)),
       'audit_log', (select coalesce(json_agg(l order by l.id), '[]') from audit_log l where l.tenant_id = $1)
     ) as rows`,
    [tenantId],
  );
  return rows[0].rows;
}

async function healthy(): Promise<void> {
  const res = await send("GET", "/healthz", {});
  assert.equal(res.status, 200, `/healthz after the request: ${res.status} ${show(res.text)}`);
}

/** The path as the server routes it: `new URL` resolves `..` and `%2e` segments. */
function routedPath(path: string): string {
  try {
    return new URL(path, "http://localhost").pathname;
  } catch {
    return path;
  }
}

const REST_PREFIXES = ["/webhooks", "/events", "/deliveries"];
const isRestPath = (path: string) => {
  const p = routedPath(path);
  return REST_PREFIXES.some((prefix) => p === prefix || p.startsWith(`${prefix}/`));
};

/** Checks the error body of a REST refusal. */
function assertRestError(res: Answer, what: string): void {
  assert.match(res.contentType, /^application\/json/, `${what}: content-type ${res.contentType}`);
  const body = parse(res.text);
  assert.ok(body && typeof body === "object" && !Array.isArray(body), `${what}: body is not a JSON object: ${show(res.text)}`);
  assert.deepEqual(Object.keys(body), ["error"], `${what}: ${show(res.text)}`);
  assert.equal(typeof body.error?.code, "string", `${what}: ${show(res.text)}`);
  assert.ok(body.error.code.length > 0, `${what}: empty error code`);
  assert.equal(typeof body.error.message, "string", `${what}: ${show(res.text)}`);
  assert.ok(body.error.message.trim().length > 0, `${what}: empty error message`);
}

/** Checks a Connect error answer. */
function assertConnectError(res: Answer, what: string): void {
  assert.ok(res.status < 500, `${what}: ${res.status} ${show(res.text)}`);
  assert.match(res.contentType, /^application\/json/, `${what}: content-type ${res.contentType}`);
  const body = parse(res.text);
  assert.equal(typeof body?.code, "string", `${what}: no code in ${show(res.text)}`);
  assert.ok(body.code.length > 0, `${what}: empty code`);
  assert.ok(!["internal", "unknown", "unimplemented", "unavailable", "data_loss"].includes(body.code), `${what}: code ${body.code}`);
}

const hasLoneSurrogate = (s: string) => /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);

/** Whether a value holds a string field `name` that matches `bad`, at any depth. */
function hasField(value: unknown, names: string[], bad: (s: string) => boolean): boolean {
  if (Array.isArray(value)) return value.some((v) => hasField(v, names, bad));
  if (value === null || typeof value !== "object") return false;
  return Object.entries(value).some(([k, v]) => (names.includes(k) && typeof v === "string" && bad(v)) || hasField(v, names, bad));
}

function nestingDepth(text: string): number {
  let depth = 0;
  let max = 0;
  for (const ch of text) {
    if (ch === "[" || ch === "{") max = Math.max(max, ++depth);
    else if (ch === "]" || ch === "}") depth--;
  }
  return max;
}

/** The known bugs' inputs (see the BUG comments), for FUZZ_SKIP_KNOWN. */
function knownRestBug(path: string, body: string | undefined): boolean {
  const segments = routedPath(path).split("/");
  if (segments.some((s) => { try { decodeURIComponent(s); return false; } catch { return true; } })) return true; // REST 1
  if (body === undefined) return false;
  if (nestingDepth(body) > 1000) return true; // REST 3
  const value = parse(body);
  if (hasField(value, ["description"], (s) => s.includes("\u0000"))) return true; // REST 2
  if (hasField(value, ["idempotency_key"], hasLoneSurrogate)) return true; // REST 4
  return false;
}

function knownRpcBug(c: RpcCase, res: Answer): boolean {
  if (c.binary && /parse binary/.test(res.text)) return true; // Connect 4
  let value: unknown;
  if (c.binary) {
    try {
      value = fromBinary(METHODS[c.method]!.input, c.body as Uint8Array);
    } catch {
      return false;
    }
  } else value = parse(c.body as string);
  const nul = (s: string) => s.includes("\u0000");
  return (
    res.text.includes("Maximum call stack size exceeded") || // REST 5: a poisoned event stored by property 1
    hasField(value, ["tenantId", "tenant_id", "eventType", "event_type", "description"], nul) || // Connect 1, 2, 3
    hasField(value, ["idempotencyKey", "idempotency_key"], hasLoneSurrogate) // REST 4 through Connect
  );
}

// ---------------------------------------------------------------------------------------------------
// Fixtures

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
const fakeIdBody = () => `0${Array.from(randomBytes(25), (b) => ALPHABET[b % 32]).join("")}`;

async function createTenant(label: string): Promise<{ tenantId: string; keyId: string; key: string }> {
  const tenant = await ok(`CreateTenant ${label}`, rpc("/webhook.v1.AdminService/CreateTenant", { name: `${label}-${randomBytes(3).toString("hex")}` }, TEST_ADMIN_KEY));
  const tenantId = tenant.tenant.tenantId as string;
  const key = await ok(`CreateApiKey ${label}`, rpc("/webhook.v1.AdminService/CreateApiKey", { tenantId }, TEST_ADMIN_KEY));
  return { tenantId, keyId: key.apiKey.keyId, key: key.key };
}

/** Webhooks, events and deliveries of one tenant: two webhooks, three events, a failed, an expired delivery, an attempt. */
async function populate(label: string, key: string, tenantId: string): Promise<Omit<TenantFixture, "tenantId" | "keyId" | "key">> {
  const webhookIds: string[] = [];
  const webhookUrls: string[] = [];
  for (const types of [["shared.thing", `${label}.created`], ["shared.*"]]) {
    const url = `http://127.0.0.1:9/${label}-${randomBytes(6).toString("hex")}`;
    const created = await ok(`create webhook ${label}`, rest("POST", "/webhooks", key, { url, event_types: types, description: `${label} hook` }));
    webhookIds.push(created.webhook_id);
    webhookUrls.push(created.url);
  }
  const eventIds: string[] = [];
  const idempotencyKeys: string[] = [];
  for (const [i, type] of ["shared.thing", `${label}.created`, "shared.other"].entries()) {
    const idem = `${label}-idem-${i}-${randomBytes(3).toString("hex")}`;
    const event = await ok(`publish ${label}`, rest("POST", "/events", key, { event_type: type, payload: { tenant: label, i }, idempotency_key: idem, ordering_key: `${label}-order` }));
    eventIds.push(event.event_id);
    idempotencyKeys.push(idem);
  }
  const { rows } = await pool.query<{ id: string }>("select id from deliveries where tenant_id = $1 order by id", [tenantId]);
  const deliveryIds = rows.map((r) => r.id);
  assert.ok(deliveryIds.length >= 4, `${label} has deliveries`);
  // The dispatcher does not run here: settle some deliveries by hand so retry has something to act on.
  await pool.query("update deliveries set status = 'failed', attempts = 7, last_response_code = 500, last_error = $2 where id = $1", [deliveryIds[0], `${label} failed`]);
  await pool.query("update deliveries set status = 'expired' where id = $1", [deliveryIds[1]]);
  await pool.query("update deliveries set status = 'succeeded', attempts = 1, delivered_at = now() where id = $1", [deliveryIds[2]]);
  const attemptIds = [`att_${fakeIdBody()}`];
  await pool.query(
    "insert into delivery_attempts (id, delivery_id, attempted_at, duration_ms, response_code, error, response_body) values ($1, $2, now(), 12, 500, $3, $4)",
    [attemptIds[0], deliveryIds[0], `${label} attempt error`, `${label} response body`],
  );
  return { webhookIds, webhookUrls, eventIds, idempotencyKeys, deliveryIds, attemptIds };
}

before(async () => {
  db = await createTestDatabase("fuzz");
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  // The API role alone: nothing in the background writes, so a changed row is the request's doing. Every
  // made-up host name resolves to a public address at once instead of waiting on real DNS.
  main = await startTestApp({ DATABASE_URL: db.url, WEBHOOKD_API_RATE_LIMIT: "0" }, ["api"], {
    resolve: async () => [{ address: "93.184.216.34", family: 4 }],
  });
  const u = new URL(main.url);
  host = u.hostname;
  port = Number(u.port);

  const f = await createTenant("fuzz-t");
  fuzzTenant = { ...f, ...(await populate("fuzz-t", f.key, f.tenantId)) };
  const a = await createTenant("tenant-a");
  const b = await createTenant("tenant-b");
  tenantA = { ...a, ...(await populate("tenant-a", a.key, a.tenantId)) };
  tenantB = { ...b, ...(await populate("tenant-b", b.key, b.tenantId)) };
  const d = await populate("default", TEST_ADMIN_KEY, "default");
  defaults = { webhookIds: d.webhookIds, eventIds: d.eventIds, deliveryIds: d.deliveryIds };
});

after(async () => {
  agent.destroy();
  await main?.app.stop();
  await pool?.end();
  await db?.drop();
});

// ---------------------------------------------------------------------------------------------------
// Hostile values

const HUGE = "\u0001HUGE\u0001";
const HUGE_LITERALS = ["1e400", "-1e400", "123456789012345678901234567890123456789", "1.7976931348623157e309", "-0", "0.0000000000000000000000001"];
/** JSON.stringify, then the HUGE markers become number literals no JS number can hold. */
function toJsonText(value: unknown, huge: string): string {
  const text = JSON.stringify(value) ?? "null";
  return text.split(JSON.stringify(HUGE)).join(huge);
}

const nasty = fc.constantFrom(
  "",
  " ",
  "\u0000",
  "a\u0000b",
  "\ud800",
  "\udfff",
  "x\ud800y",
  "\ufffd",
  "\u202e",
  "😀",
  "%00",
  "../../etc/passwd",
  "'; drop table webhooks; --",
  "${7*7}",
  "<script>alert(1)</script>",
  "\r\n",
  "null",
  "true",
  "0",
  "-1",
  "NaN",
  "Infinity",
);
const longString = fc.integer({ min: 257, max: 5000 }).chain((n) => fc.constantFrom("a", "\u0000", "é", "😀", ".").map((c) => c.repeat(n)));
const anyString = fc.oneof(
  { weight: 3, arbitrary: fc.string({ unit: "binary", maxLength: 30 }) },
  { weight: 3, arbitrary: nasty },
  { weight: 1, arbitrary: longString },
  { weight: 1, arbitrary: fc.string({ unit: "grapheme", maxLength: 30 }) },
);

const plausible = fc.constantFrom(
  "https://93.184.216.34/hook",
  "https://hooks.example.com/x",
  "http://127.0.0.1:9/fuzz",
  "http://10.0.0.1/internal",
  "http://169.254.169.254/latest/meta-data",
  "https://user:pass@93.184.216.34/",
  "https://93.184.216.34/#frag",
  "ftp://93.184.216.34/",
  "javascript:alert(1)",
  "https://[::1]/",
  "https://0x7f000001/",
  "a.b",
  "document.created",
  "document.*",
  "*",
  "a..b",
  "*.a",
  "active",
  "paused",
  "deleted",
  "v1",
  "v1a",
  "pending",
  "failed",
  "default",
);

/** A JSON value as deep as asked: a plain nest of arrays or objects. */
const deepNest = fc
  .record({
    depth: fc.oneof(fc.integer({ min: 50, max: 150 }), fc.integer({ min: 1000, max: 5000 }), fc.integer({ min: 5000, max: 20_000 })),
    kind: fc.constantFrom("array", "object"),
  })
  .map(({ depth, kind }) => ({ depth, kind }));
function nestText(depth: number, kind: string): string {
  return kind === "array" ? `${"[".repeat(depth)}${"]".repeat(depth)}` : `${'{"a":'.repeat(depth)}1${"}".repeat(depth)}`;
}

const hostileScalar: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.integer(),
  fc.double(),
  fc.constant(HUGE),
  anyString,
  plausible,
);
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 6, arbitrary: hostileScalar },
  { weight: 2, arbitrary: fc.array(fc.oneof(plausible, anyString, hostileScalar), { maxLength: 60 }) },
  { weight: 1, arbitrary: fc.dictionary(anyString, hostileScalar, { maxKeys: 5 }) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }) },
);

const goodUrl = fc.constantFrom(
  "https://93.184.216.34/hook",
  "https://hooks.example.com/x?y=1",
  "http://127.0.0.1:9/fuzz",
  "https://xn--bcher-kva.example/",
  "https://93.184.216.34:8443/a/b",
);
const goodEventType = fc.constantFrom("a.b", "document.created", "shared.thing", "x", "a-b_c.d-e");
const goodPattern = fc.oneof(goodEventType, fc.constantFrom("document.*", "*", "shared.*"));
const shortKey = fc.stringMatching(/^[a-z0-9-]{1,12}$/);
const retrySchedule = fc.oneof(
  fc.constantFrom("", " ", "none", "NONE", "5s,5m,30m", "1ms", "7d", "8d", "0s", "0.4ms", "1.5s", "-1s", "5s,", ",", "5s,,5m", "1e3s", "99999999999999d", "9007199254740991ms", "5", "5 s"),
  fc.array(fc.tuple(fc.nat({ max: 100_000 }), fc.constantFrom("ms", "s", "m", "h", "d")).map(([n, u]) => `${n}${u}`), { minLength: 1, maxLength: 40 }).map((l) => l.join(",")),
);

/**
 * The fields of the real request shapes: mostly of the right JSON type with hostile content (so the
 * request gets past the shape checks into validation and the store), sometimes of a wrong type.
 */
const FIELDS: Record<string, () => fc.Arbitrary<unknown>> = {
  url: () => fc.oneof(goodUrl, plausible, anyString),
  event_types: () =>
    fc.oneof(
      { weight: 4, arbitrary: fc.array(goodPattern, { minLength: 1, maxLength: 4 }) },
      { weight: 2, arbitrary: fc.array(fc.oneof(goodPattern, plausible, anyString), { minLength: 0, maxLength: 4 }) },
      { weight: 1, arbitrary: fc.array(fc.constantFrom("a.b", "x.*", "y.z"), { minLength: 51, maxLength: 60 }) },
      { weight: 1, arbitrary: fc.array(goodPattern, { minLength: 51, maxLength: 60 }).map((l) => l.map((p, i) => `${p.replace(/\*$/, "x")}.n${i}`)) },
    ),
  description: () => fc.oneof(fc.constantFrom("", "a hook"), anyString),
  ordered_by_key: () => fc.boolean(),
  rate_limit_per_second: () => fc.oneof(fc.constantFrom(0, 1, 0.5, 10_000, 10_001, -1, -0, 1e-300, HUGE), fc.double()),
  signature_scheme: () => fc.oneof(fc.constantFrom("", "v1", "v1a", "V1", "v2"), anyString),
  status: () => fc.oneof(fc.constantFrom("active", "paused", "deleted", "ACTIVE", ""), anyString),
  event_type: () => fc.oneof({ weight: 3, arbitrary: goodEventType }, { weight: 1, arbitrary: plausible }, { weight: 1, arbitrary: anyString }),
  payload: () => fc.oneof(fc.dictionary(anyString, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 6 }), fc.constant({})),
  idempotency_key: () => fc.oneof(shortKey, anyString),
  ordering_key: () => fc.oneof(shortKey, anyString),
  retry_schedule: () => fc.oneof(retrySchedule, anyString),
};
const WEBHOOK_FIELDS = ["url", "event_types", "description", "ordered_by_key", "rate_limit_per_second", "signature_scheme", "status", "retry_schedule"];
const EVENT_FIELDS = ["event_type", "payload", "idempotency_key", "ordering_key"];

/** A well-formed value per field: what a careful client sends. */
const VALID: Record<string, () => fc.Arbitrary<unknown>> = {
  url: () => goodUrl,
  event_types: () => fc.array(goodPattern, { minLength: 1, maxLength: 4 }),
  description: () => fc.string({ maxLength: 40 }),
  ordered_by_key: () => fc.boolean(),
  rate_limit_per_second: () => fc.oneof(fc.constant(0), fc.double({ min: 0.001, max: 10_000, noNaN: true })),
  signature_scheme: () => fc.constantFrom("", "v1", "v1a"),
  status: () => fc.constantFrom("active", "paused"),
  retry_schedule: () => fc.constantFrom("", "none", "5s,5m", "1ms", "7d"),
  event_type: () => goodEventType,
  payload: () => fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 }),
  idempotency_key: () => shortKey,
  ordering_key: () => shortKey,
};

/**
 * An object of the given fields: all well-formed (the request should succeed), well-formed but for one
 * hostile field (exactly that field's check is on trial), or every field drawn freely, wrong types included.
 */
function shapedObject(fields: string[], required: string[] = []): fc.Arbitrary<Record<string, unknown>> {
  const valid = fc.record(Object.fromEntries(fields.map((f) => [f, VALID[f]!()])), { requiredKeys: required });
  const oneBad = fc
    .tuple(valid, fc.constantFrom(...fields).chain((f) => fc.tuple(fc.constant(f), fc.oneof({ weight: 4, arbitrary: FIELDS[f]!() }, { weight: 1, arbitrary: hostileValue }))))
    .map(([v, [f, bad]]) => ({ ...v, [f]: bad }));
  const model = Object.fromEntries(fields.map((f) => [f, fc.oneof({ weight: 12, arbitrary: FIELDS[f]!() }, { weight: 1, arbitrary: hostileValue })]));
  const free = fc
    .tuple(
      fc.oneof(fc.record(model, { requiredKeys: required }), fc.record(model, { requiredKeys: [] })),
      fc.option(fc.dictionary(anyString, hostileScalar, { minKeys: 1, maxKeys: 2 }), { freq: 12 }),
    )
    .map(([known, extra]) => ({ ...known, ...(extra ?? {}) }));
  return fc.oneof({ weight: 2, arbitrary: valid }, { weight: 4, arbitrary: oneBad }, { weight: 3, arbitrary: free });
}
const webhookCreateObject = shapedObject(WEBHOOK_FIELDS.filter((f) => f !== "status"), ["url", "event_types"]);
const webhookUpdateObject = shapedObject(WEBHOOK_FIELDS.filter((f) => f !== "signature_scheme"));
const webhookObject = fc.oneof(webhookCreateObject, webhookUpdateObject);
const eventObject = shapedObject(EVENT_FIELDS, ["event_type"]);
/** Around the batch limit of 100: the same well-formed event, n times. */
const aroundBatchLimit = fc.tuple(fc.integer({ min: 99, max: 102 }), fc.boolean()).map(([n, sameKey]) =>
  Array.from({ length: n }, (_, i) => ({ event_type: "a.b", payload: { i }, idempotency_key: sameKey ? "same" : `k${i}` })),
);
const batchObject = fc.record(
  {
    events: fc.oneof(
      { weight: 6, arbitrary: fc.array(fc.oneof({ weight: 8, arbitrary: eventObject }, { weight: 1, arbitrary: hostileScalar }), { maxLength: 8 }) },
      { weight: 1, arbitrary: aroundBatchLimit },
      { weight: 1, arbitrary: hostileValue },
    ),
  },
  { requiredKeys: [] },
);

type BodyKind = "webhook" | "webhookUpdate" | "event" | "batch" | "none";
const shapedFor: Record<BodyKind, fc.Arbitrary<Record<string, unknown>>> = {
  webhook: webhookCreateObject,
  webhookUpdate: webhookUpdateObject,
  event: eventObject,
  batch: batchObject,
  none: fc.oneof(webhookObject, eventObject),
};

/** A REST request body for a route: mostly shaped like that route's, otherwise generic or broken. */
const restBody = (kind: BodyKind): fc.Arbitrary<string | undefined> =>
  fc.oneof(
    { weight: kind === "none" ? 8 : 1, arbitrary: fc.constant(undefined) },
    {
      weight: 16,
      arbitrary: fc.tuple(shapedFor[kind], fc.constantFrom(...HUGE_LITERALS)).map(([value, huge]) => toJsonText(value, huge)),
    },
    { weight: 2, arbitrary: fc.tuple(fc.oneof(webhookObject, eventObject, batchObject), fc.constantFrom(...HUGE_LITERALS)).map(([value, huge]) => toJsonText(value, huge)) },
    { weight: 1, arbitrary: fc.json() },
    { weight: 1, arbitrary: fc.anything().map((v) => JSON.stringify(v) ?? "undefined") },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 60 }) },
    {
      weight: 1,
      arbitrary: fc.tuple(shapedFor[kind], fc.nat()).map(([v, cut]) => {
        const text = JSON.stringify(v);
        return text.slice(0, cut % Math.max(1, text.length));
      }),
    },
    {
      weight: 1,
      arbitrary: fc
        .tuple(deepNest, fc.constantFrom("payload", "top", "event_types", "batch"))
        .map(([{ depth, kind: nest }, where]) =>
          where === "top"
            ? nestText(depth, nest)
            : where === "payload"
              ? `{"event_type":"a.b","payload":{"x":${nestText(depth, nest)}}}`
              : where === "batch"
                ? `{"events":[{"event_type":"a.b","payload":{"x":${nestText(depth, nest)}}}]}`
                : `{"url":"https://93.184.216.34/","event_types":${nestText(depth, nest)}}`,
        ),
    },
    { weight: 1, arbitrary: fc.constantFrom("[]", "null", "true", "0", '""', "{}", "{", "}", "\ufeff{}", '{"a":1,"a":2}', '{"__proto__":{"admin":true}}', '{"constructor":{"prototype":{"x":1}}}') },
    { weight: 1, arbitrary: fc.integer({ min: 250 * 1024, max: 400 * 1024 }).map((n) => `{"event_type":"a.b","payload":{"x":"${"a".repeat(n)}"}}`) },
  );

function pctEncode(s: string): string {
  return Array.from(Buffer.from(s, "utf8"), (b) => `%${b.toString(16).padStart(2, "0").toUpperCase()}`).join("");
}

/** A well-formed id body (a ULID in lowercase Crockford base32), drawn by fast-check so runs replay. */
const idBody = fc.array(fc.constantFrom(...ALPHABET), { minLength: 25, maxLength: 25 }).map((cs) => `0${cs.join("")}`);
const fakeId = (prefix: string) => idBody.map((body) => `${prefix}_${body}`);

type IdKind = "wh" | "evt" | "dlv";
type Owner = "default" | "fuzz";
/**
 * Ids that exist, per owner and kind: the fixtures', plus what property 1 and 2 create (they also delete,
 * so the pool grows to keep real ids in play). Read lazily: the fixtures exist only once `before` ran.
 */
const created: Record<Owner, Record<IdKind, string[]>> = { default: { wh: [], evt: [], dlv: [] }, fuzz: { wh: [], evt: [], dlv: [] } };
function realIds(kind: IdKind, owner?: Owner): string[] {
  const fixture = (o: Owner) => {
    const f = o === "default" ? defaults : fuzzTenant;
    return kind === "wh" ? f.webhookIds : kind === "evt" ? f.eventIds : f.deliveryIds;
  };
  const owners: Owner[] = owner ? [owner] : ["default", "fuzz"];
  return owners.flatMap((o) => [...fixture(o), ...created[o][kind]]);
}
const pickReal = (kind: IdKind, owner?: Owner) => fc.nat().map((i) => realIds(kind, owner)[i % realIds(kind, owner).length]!);

/** A path segment where an id of `kind` goes. */
const segment = (kind: IdKind, owner: Owner): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 8, arbitrary: pickReal(kind, owner) },
    { weight: 1, arbitrary: pickReal(kind) },
    { weight: 1, arbitrary: fc.constantFrom<IdKind>("wh", "evt", "dlv").chain((k) => pickReal(k)) },
    { weight: 2, arbitrary: fakeId(kind) },
    { weight: 2, arbitrary: fc.constantFrom("key", "ten", "aud", "att", "WH", "Wh", "wh-", "evt", "dlv", "wh", "").chain(fakeId) },
    { weight: 1, arbitrary: pickReal(kind, owner).map((id) => id.toUpperCase()) },
    { weight: 1, arbitrary: fc.tuple(pickReal(kind, owner), fc.constantFrom("%00", "%20", "x", "%2F", "/", ".")).map(([id, tail]) => `${id}${tail}`) },
    { weight: 2, arbitrary: fc.string({ unit: "binary", maxLength: 20 }).map(pctEncode) },
    {
      weight: 3,
      arbitrary: fc.constantFrom("..", ".", "%2e%2e", "%2E", "%", "%%", "%zz", "%E0%A4%A", "%C0%AE", "%00", "%FF", "%ED%A0%80", "%F4%90%80%80", "%2F", "%5C", "", "%20", "wh_%00"),
    },
    { weight: 1, arbitrary: fc.integer({ min: 200, max: 4000 }).chain((n) => fc.constantFrom("a", "wh_a", "%41").map((c) => c.repeat(Math.ceil(n / c.length)))) },
    { weight: 2, arbitrary: fc.stringMatching(/^[A-Za-z0-9_.~!$&'()*+,;=:@-]{0,40}$/) },
  );

/** The REST routes: their path, the methods they answer, the kind of id they take, the body they read. */
const ROUTES: { path: (id: string) => string; methods: string[]; kind: IdKind; body: BodyKind }[] = [
  { path: () => "/webhooks", methods: ["POST", "GET"], kind: "wh", body: "webhook" },
  { path: (id) => `/webhooks/${id}`, methods: ["GET", "PUT", "DELETE"], kind: "wh", body: "webhookUpdate" },
  { path: (id) => `/webhooks/${id}/rotate-secret`, methods: ["POST"], kind: "wh", body: "none" },
  { path: (id) => `/webhooks/${id}/deliveries`, methods: ["GET"], kind: "wh", body: "none" },
  { path: () => "/events", methods: ["POST"], kind: "evt", body: "event" },
  { path: () => "/events/batch", methods: ["POST"], kind: "evt", body: "batch" },
  { path: (id) => `/events/${id}`, methods: ["GET"], kind: "evt", body: "none" },
  { path: (id) => `/deliveries/${id}`, methods: ["GET"], kind: "dlv", body: "none" },
  { path: (id) => `/deliveries/${id}/attempts`, methods: ["GET"], kind: "dlv", body: "none" },
  { path: (id) => `/deliveries/${id}/retry`, methods: ["POST"], kind: "dlv", body: "none" },
];

const queryValue = fc.oneof(
  fc.constantFrom("", "0", "1", "100", "101", "-1", "1e2", "0x10", "1.5", "NaN", "Infinity", "9".repeat(30), "pending", "failed", "bogus", "%", "%zz", "ZGVmYXVsdA", "d2hfMDE"),
  fc.string({ unit: "binary", maxLength: 20 }).map(pctEncode),
  fc.stringMatching(/^[A-Za-z0-9_=-]{0,40}$/),
);
const queryString = fc.option(
  fc
    .array(fc.tuple(fc.constantFrom("page_size", "page_token", "status", "tenant_id", "x", "page_size", "__proto__"), queryValue), { maxLength: 4 })
    .map((pairs) => `?${pairs.map(([k, v]) => `${k}=${v}`).join("&")}`),
  { freq: 2 },
);

/** Authorization and tenant headers; the keys are read lazily, once the fixtures exist. */
type AuthChoice = "none" | "empty" | "bearer-x" | "basic-admin" | "bearer-no-key" | "admin" | "admin-lower" | "tenant" | "revoked-shape" | "latin1";
const authChoice = fc.oneof(
  { weight: 6, arbitrary: fc.constant<AuthChoice>("admin") },
  { weight: 4, arbitrary: fc.constant<AuthChoice>("tenant") },
  { weight: 1, arbitrary: fc.constantFrom<AuthChoice>("none", "empty", "bearer-x", "basic-admin", "bearer-no-key", "admin-lower", "revoked-shape", "latin1") },
);
function authHeader(choice: AuthChoice): string | undefined {
  switch (choice) {
    case "none":
      return undefined;
    case "empty":
      return "";
    case "bearer-x":
      return "Bearer x";
    case "basic-admin":
      return `Basic ${Buffer.from(`admin:${TEST_ADMIN_KEY}`).toString("base64")}`;
    case "bearer-no-key":
      return "Bearer ";
    case "admin":
      return `Bearer ${TEST_ADMIN_KEY}`;
    case "admin-lower":
      return `bearer   ${TEST_ADMIN_KEY}  `;
    case "tenant":
      return `Bearer ${fuzzTenant.key}`;
    case "revoked-shape":
      return "Bearer whk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"; // well-formed, never issued
    case "latin1":
      return `Bearer ${TEST_ADMIN_KEY}\u00e9\u00ff`;
  }
}
/** x-tenant-id: absent, the fuzzing tenant's, default, unknown, junk. Never property 3's tenants. */
type TenantChoice = { kind: "none" } | { kind: "fuzz" } | { kind: "default" } | { kind: "fake" } | { kind: "junk"; value: string };
const tenantChoice: fc.Arbitrary<TenantChoice> = fc.oneof(
  { weight: 12, arbitrary: fc.constant({ kind: "none" } as const) },
  { weight: 2, arbitrary: fc.constant({ kind: "fuzz" } as const) },
  { weight: 1, arbitrary: fc.constant({ kind: "default" } as const) },
  { weight: 1, arbitrary: fc.constant({ kind: "fake" } as const) },
  {
    weight: 1,
    arbitrary: fc
      .string({ unit: fc.integer({ min: 0x20, max: 0xff }).filter((c) => c !== 0x7f && (c < 0x80 || c > 0x9f)).map((c) => String.fromCharCode(c)), maxLength: 30 })
      .map((value) => ({ kind: "junk", value }) as const),
  },
);
function tenantHeader(choice: TenantChoice): string | undefined {
  switch (choice.kind) {
    case "none":
      return undefined;
    case "fuzz":
      return fuzzTenant.tenantId;
    case "default":
      return "default";
    case "fake":
      return "ten_0aaaaaaaaaaaaaaaaaaaaaaaaa";
    case "junk":
      return choice.value;
  }
}

const contentType = fc.constantFrom<string | undefined>("application/json", "application/json", "application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded", "application/proto", undefined);

// ---------------------------------------------------------------------------------------------------
// 1. REST

interface RestCase {
  method: string;
  shape: number;
  id: string;
  decoration: string;
  query: string | null;
  body: string | undefined;
  auth: AuthChoice;
  tenant: TenantChoice;
  contentType: string | undefined;
}

/** Whose resources a request acts on, as the server will see it (when the key is accepted at all). */
const ownerOf = (auth: AuthChoice, tenant: TenantChoice): Owner => (auth === "tenant" || tenant.kind === "fuzz" ? "fuzz" : "default");

const restCase: fc.Arbitrary<RestCase> = fc.tuple(fc.nat({ max: ROUTES.length - 1 }), authChoice, tenantChoice).chain(([shape, auth, tenant]) =>
  fc.record({
    method: fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...ROUTES[shape]!.methods) }, { weight: 1, arbitrary: fc.constantFrom("GET", "POST", "PUT", "DELETE", "PATCH") }),
    shape: fc.constant(shape),
    id: segment(ROUTES[shape]!.kind, ownerOf(auth, tenant)),
    decoration: fc.oneof({ weight: 12, arbitrary: fc.constant("") }, { weight: 1, arbitrary: fc.constantFrom("/", "//", "/extra", "/..", "/%2e%2e", "?", "#x", ";x") }),
    query: queryString,
    body: restBody(ROUTES[shape]!.body),
    auth: fc.constant(auth),
    tenant: fc.constant(tenant),
    contentType,
  }),
);

async function checkRestCase(c: RestCase, skipKnown = SKIP_KNOWN): Promise<void> {
  const path = `${ROUTES[c.shape]!.path(c.id)}${c.decoration}${c.query ?? ""}`;
  const headers: Record<string, string> = {};
  const authorization = authHeader(c.auth);
  if (authorization !== undefined) headers.authorization = authorization;
  const tenant = tenantHeader(c.tenant);
  if (tenant !== undefined) headers["x-tenant-id"] = tenant;
  if (c.contentType) headers["content-type"] = c.contentType;
  const what = `${c.method} ${show(path, 200)} [auth ${c.auth}, x-tenant-id ${show(tenant ?? "-", 60)}] body ${show(c.body ?? "-", 200)}`;

  const beforeState = await dbState();
  const res = await send(c.method, path, headers, c.body);
  tally(`REST ${res.status}${res.status < 300 ? ` ${c.method} ${ROUTES[c.shape]!.path(":id")}` : ""}`);
  if (skipKnown && res.status >= 500 && knownRestBug(path, c.body)) return;
  assert.ok(res.status < 500, `${what} → ${res.status} ${show(res.text)}`);
  if (isRestPath(path)) {
    assert.match(res.contentType, /^application\/json/, `${what} → content-type ${res.contentType}`);
    assert.notEqual(parse(res.text), undefined, `${what} → not JSON: ${show(res.text)}`);
    if (res.status >= 400) assertRestError(res, `${what} → ${res.status}`);
  }
  if (res.status >= 400) assert.deepEqual(await dbState(), beforeState, `${what} → ${res.status} ${show(res.text)} wrote to the database`);
  // (With FUZZ_SKIP_KNOWN, deep payloads are REST 5's: their read-back is known to fail.)
  if (res.status < 300 && c.method === "POST" && !(skipKnown && c.body !== undefined && nestingDepth(c.body) > 1000)) {
    const body = parse(res.text);
    const auth = { ...(authorization !== undefined ? { authorization } : {}), ...(tenant !== undefined ? { "x-tenant-id": tenant } : {}) };
    const events: string[] = Array.isArray(body?.events) ? body.events.map((e: any) => e.event_id) : body?.event_id ? [body.event_id] : [];
    for (const id of events) await readBack("event", id, auth, what);
    if (ROUTES[c.shape]!.path(":id") === "/webhooks" && body?.webhook_id) await readBack("webhook", body.webhook_id, auth, what);
    remember(c.auth, c.tenant, body?.webhook_id ? [body.webhook_id] : [], events);
  }
  await healthy();
}

/** Keeps what a request created in play for later ones (admin calls with an unknown tenant create nothing). */
function remember(auth: AuthChoice, tenant: TenantChoice, webhookIds: string[], eventIds: string[]): void {
  if (tenant.kind !== "none" && tenant.kind !== "fuzz" && tenant.kind !== "default") return;
  const pool = created[ownerOf(auth, tenant)];
  pool.wh.push(...webhookIds);
  pool.evt.push(...eventIds);
}

/**
 * What was accepted can be read back, through both doors: a stored row that one door cannot render is
 * a poisoned row (it breaks every later read and list that includes it).
 */
async function readBack(kind: "event" | "webhook", id: string, auth: Record<string, string>, what: string): Promise<void> {
  const restPath = kind === "event" ? `/events/${id}` : `/webhooks/${id}`;
  const viaRest = await send("GET", restPath, auth);
  assert.equal(viaRest.status, 200, `${what} was accepted, then GET ${restPath} → ${viaRest.status} ${show(viaRest.text)}`);
  const rpcPath = kind === "event" ? "/webhook.v1.EventService/GetEvent" : "/webhook.v1.WebhookService/GetWebhook";
  const viaConnect = await send("POST", rpcPath, { ...auth, "content-type": "application/json", "connect-protocol-version": "1" }, JSON.stringify(kind === "event" ? { eventId: id } : { webhookId: id }));
  assert.equal(viaConnect.status, 200, `${what} was accepted, then ${rpcPath} → ${viaConnect.status} ${show(viaConnect.text)}`);
}

const restCaseDefaults: Omit<RestCase, "shape" | "id"> = {
  method: "GET",
  decoration: "",
  query: null,
  body: undefined,
  auth: "admin",
  tenant: { kind: "none" },
  contentType: "application/json",
};

// Found by this fuzzer; all five fixed in src/ since (decodePathSegment in rest-routes.ts; src/core/input-limits.ts:
// isStorableText, MAX_JSON_DEPTH = 64, exceedsDepth; Postgres class-22 errors → invalid_argument in errors.ts).
// BUG (REST 1, fixed): a malformed percent-encoding in a path parameter answers 500. rest-routes.ts, in `handle`:
//   `found.pattern.exec(url.pathname)!.slice(1).map(decodeURIComponent)` throws URIError, which `restError`
//   maps to 500 internal. Minimal counterexample: GET /webhooks/%  (also %E0%A4%A, %ED%A0%80, %FF).
// BUG (REST 2, fixed): a NUL in `description` answers 500: webhook-service.ts `validateDescription` checks only the
//   length, and Postgres refuses U+0000 in text ("invalid byte sequence for encoding UTF8: 0x00").
//   Minimal counterexample: POST /webhooks {"url":"https://93.184.216.34/hook","event_types":["a.b"],"description":"\u0000"}
//   (PUT /webhooks/{id} {"description":"\u0000"} likewise).
// BUG (REST 3, fixed): a deeply nested payload answers 500: rest-routes.ts `eventInput` runs JSON.stringify(payload)
//   on it and overflows the stack (RangeError). Minimal counterexample: POST /events with
//   {"event_type":"a.b","payload":{"x":[[[…5000 levels…]]]}}. (Connect JSON refuses depth > 100 with
//   invalid_argument; REST accepts depth 100..~4000 and then crashes the request past that.)
// BUG (REST 4, fixed): two different lone-surrogate idempotency keys answer 500 on the second. event-service.ts
//   `accept` lets "\ud800" through; pg stores it as U+FFFD; "\udfff" is looked up as itself (no match in the
//   in-memory map keyed by the stored U+FFFD), its insert hits the unique index events_idempotency_key, the
//   retry loop gives up and the unique violation surfaces as 500. Minimal counterexample:
//   POST /events {"event_type":"a.b","idempotency_key":"\ud800"} then {"event_type":"a.b","idempotency_key":"\udfff"}.
// BUG (REST 5, fixed): REST stores payloads too deep for the Connect door to render, and the event poisons every
//   read that includes it. A payload nested ~2500..4400 deep passes rest-routes.ts `eventInput` (201), then
//   EventService/GetEvent answers 500 `internal` "Maximum call stack size exceeded" (protobuf-es's Struct
//   conversion recurses), and so does EventService/ListEvents for every page that holds it, JSON and binary
//   ("serialize binary: Maximum call stack size exceeded"): one publish breaks the tenant's event listing.
//   Minimal counterexample: POST /events {"event_type":"a.b","payload":{"x":[[[…3000 levels…]]]}} → 201, then
//   POST /webhook.v1.EventService/GetEvent {"eventId": <it>} → 500. The fix for REST 3 (a depth limit,
//   checked without recursion, before JSON.stringify) fixes this too if it is at most Connect's 100.
const restExamples: [RestCase][] = [
  [{ ...restCaseDefaults, shape: 1, id: "%" }],
  [{ ...restCaseDefaults, shape: 0, id: "", method: "POST", body: JSON.stringify({ url: "https://93.184.216.34/hook", event_types: ["a.b"], description: "\u0000" }) }],
  [{ ...restCaseDefaults, shape: 4, id: "", method: "POST", body: `{"event_type":"a.b","payload":{"x":${nestText(5000, "array")}}}` }],
  [{ ...restCaseDefaults, shape: 4, id: "", method: "POST", body: JSON.stringify({ event_type: "a.b", idempotency_key: "\ud800" }) }],
  [{ ...restCaseDefaults, shape: 4, id: "", method: "POST", body: JSON.stringify({ event_type: "a.b", idempotency_key: "\udfff" }) }],
  [{ ...restCaseDefaults, shape: 4, id: "", method: "POST", body: `{"event_type":"a.b","payload":{"x":${nestText(3000, "array")}}}` }],
];

test("1. REST: hostile requests never answer 5xx, always answer a JSON error, and never write when refused", async (t) => {
  await fc.assert(fc.asyncProperty(restCase, (c) => checkRestCase(c)), { numRuns: NUM_RUNS.rest * NUM_RUNS_SCALE, includeErrorInReport: true, examples: SKIP_KNOWN ? [] : restExamples });
  report(t);
  await healthy();
});

// ---------------------------------------------------------------------------------------------------
// 2. Connect

const SERVICES: DescService[] = [WebhookService, EventService, DeliveryService, AdminService];
const METHODS = SERVICES.flatMap((s) => s.methods.map((m) => ({ path: `/${s.typeName}/${m.name}`, input: m.input as DescMessage, name: `${s.name}.${m.name}` })));

/** Known ids worth naming in an RPC; never an API key id (a revocation would lock the fixtures out). */
const rpcIds = () => [...realIds("wh"), ...realIds("evt"), ...realIds("dlv"), fuzzTenant.tenantId, "default"];

/** A value of the right JSON type for a proto field, hostile in content, or of a wrong type. */
/** Likely-looking values per field name, so calls get past the shape checks into the services. */
const BY_NAME: Record<string, () => fc.Arbitrary<unknown>> = {
  webhookId: () => fc.oneof({ weight: 4, arbitrary: pickReal("wh") }, { weight: 1, arbitrary: fakeId("wh") }),
  eventId: () => fc.oneof({ weight: 4, arbitrary: pickReal("evt") }, { weight: 1, arbitrary: fakeId("evt") }),
  deliveryId: () => fc.oneof({ weight: 4, arbitrary: pickReal("dlv") }, { weight: 1, arbitrary: fakeId("dlv") }),
  tenantId: () => fc.oneof(fc.constantFrom("default", "ten_0aaaaaaaaaaaaaaaaaaaaaaaaa"), fc.constant(null).map(() => fuzzTenant.tenantId)),
  keyId: () => fakeId("key"),
  url: () => goodUrl,
  eventType: () => goodEventType,
  eventTypes: () => fc.array(goodPattern, { minLength: 0, maxLength: 4 }),
  status: () => fc.constantFrom("active", "paused", "deleted", "pending", "failed", "expired", "succeeded", "cancelled", ""),
  signatureScheme: () => fc.constantFrom("", "v1", "v1a", "v2"),
  name: () => fc.oneof(fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,10}$/), fc.constantFrom("default", "A", "-x", "a".repeat(64))),
  pageToken: () => fc.constantFrom("", Buffer.from("default").toString("base64url"), "!!", "a".repeat(201), "d2hf"),
  pageSize: () => fc.constantFrom(0, 1, 50, 100, 101, -1),
  idempotencyKey: () => shortKey,
  orderingKey: () => shortKey,
  description: () => fc.constantFrom("", "a hook"),
  rateLimitPerSecond: () => fc.constantFrom(0, 1, 0.5, 10_000),
  retrySchedule: () => retrySchedule,
  events: () =>
    fc.oneof(
      fc.array(
        fc.record(
          {
            eventType: fc.oneof({ weight: 4, arbitrary: goodEventType }, { weight: 1, arbitrary: anyString }),
            payload: fc.dictionary(anyString, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 4 }),
            idempotencyKey: fc.oneof({ weight: 4, arbitrary: shortKey }, { weight: 1, arbitrary: anyString }),
            orderingKey: fc.oneof({ weight: 4, arbitrary: shortKey }, { weight: 1, arbitrary: anyString }),
          },
          { requiredKeys: ["eventType"] },
        ),
        { maxLength: 6 },
      ),
      aroundBatchLimit.map((l) => l.map((e) => ({ eventType: e.event_type, payload: e.payload, idempotencyKey: e.idempotency_key }))),
    ),
};

/** A value of the right JSON type for a proto field, hostile in content, or of a wrong type. */
function fieldValue(field: DescMessage["fields"][number]): fc.Arbitrary<unknown> {
  const right: fc.Arbitrary<unknown> = (() => {
    if (field.fieldKind === "list") return fc.array(fc.oneof(plausible, anyString), { maxLength: 60 });
    if (field.fieldKind === "message") {
      // google.protobuf.Struct (the payload): JSON objects of some depth.
      return fc.oneof(
        fc.dictionary(anyString, fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 }),
        // Connect's JSON reader stops at depth 100: around it, not far beyond (fast-check's reporter recurses too).
        fc.record({ depth: fc.integer({ min: 90, max: 110 }), kind: fc.constantFrom("array", "object") }).map(({ depth, kind }) => ({ x: JSON.parse(nestText(depth, kind)) })),
      );
    }
    if (field.fieldKind === "scalar") {
      switch (field.scalar) {
        case 9: // string
          return fc.oneof(plausible, anyString, fc.nat().map((i) => rpcIds()[i % rpcIds().length]!));
        case 8: // bool
          return fc.oneof(fc.boolean(), fc.constantFrom("true", "false", 1, 0));
        case 1: // double
          return fc.oneof(fc.double(), fc.constantFrom("NaN", "Infinity", "-Infinity", "1e400", 1e308, -1, 10_001, "5"));
        default: // int32 and friends
          return fc.oneof(fc.integer(), fc.constantFrom(0, 1, 100, 101, -1, 2 ** 31, -(2 ** 31) - 1, "12", "1e2", 1.5, "0x10"));
      }
    }
    return hostileScalar;
  })();
  const likely = Object.hasOwn(BY_NAME, field.jsonName) ? [{ weight: 8, arbitrary: BY_NAME[field.jsonName]!() }] : [];
  return fc.oneof(...likely, { weight: 6, arbitrary: right }, { weight: 1, arbitrary: hostileValue });
}

/** A well-formed value for a proto field, by its name: what a careful client sends. */
function validRpcValue(input: DescMessage, field: DescMessage["fields"][number]): fc.Arbitrary<unknown> | undefined {
  switch (field.jsonName) {
    case "webhookId":
      return pickReal("wh");
    case "eventId":
      return pickReal("evt");
    case "deliveryId":
      return pickReal("dlv");
    case "tenantId":
      return fc.oneof(fc.constant("default"), fc.constant(null).map(() => fuzzTenant.tenantId));
    case "keyId":
      return fakeId("key");
    case "url":
      return goodUrl;
    case "eventType":
      return goodEventType;
    case "eventTypes":
      return fc.array(goodPattern, { minLength: 1, maxLength: 4 });
    case "status":
      return input.typeName.endsWith("ListDeliveriesRequest") ? fc.constantFrom("", "pending", "failed", "expired", "succeeded", "cancelled") : fc.constantFrom("active", "paused");
    case "signatureScheme":
      return fc.constantFrom("", "v1", "v1a");
    case "name":
      return fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,20}$/);
    case "pageToken":
      return fc.constant("");
    case "pageSize":
      return fc.integer({ min: 0, max: 100 });
    case "idempotencyKey":
    case "orderingKey":
      return shortKey;
    case "description":
      return fc.string({ maxLength: 40 });
    case "rateLimitPerSecond":
      return fc.oneof(fc.constant(0), fc.double({ min: 0.001, max: 10_000, noNaN: true }));
    case "retrySchedule":
      return fc.constantFrom("", "none", "5s,5m", "7d");
    case "orderedByKey":
    case "admin":
      return fc.boolean();
    case "payload":
      return fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 5 });
    case "events":
      return fc.array(fc.record({ eventType: goodEventType, payload: fc.dictionary(fc.string({ maxLength: 10 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 3 }), idempotencyKey: shortKey }, { requiredKeys: ["eventType"] }), { minLength: 1, maxLength: 5 });
    default:
      return undefined;
  }
}

function rpcJsonBody(input: DescMessage): fc.Arbitrary<string> {
  const model: Record<string, fc.Arbitrary<unknown>> = {};
  const validModel: Record<string, fc.Arbitrary<unknown>> = {};
  for (const field of input.fields) {
    model[field.jsonName] = fieldValue(field);
    validModel[field.jsonName] = validRpcValue(input, field) ?? fieldValue(field);
  }
  const valid = fc.record(validModel, { requiredKeys: [] });
  // Well-formed but for one field: exactly that field's checks are on trial.
  const oneBad =
    input.fields.length === 0
      ? valid
      : fc
          .tuple(valid, fc.constantFrom(...input.fields).chain((f) => fc.tuple(fc.constant(f.jsonName), fc.oneof({ weight: 4, arbitrary: fieldValue(f) }, { weight: 1, arbitrary: hostileValue }))))
          .map(([v, [name, bad]]) => ({ ...v, [name]: bad }));
  const free = fc
    .tuple(fc.record(model, { requiredKeys: [] }), fc.option(fc.dictionary(anyString, hostileScalar, { minKeys: 1, maxKeys: 2 }), { freq: 12 }))
    .map(([value, extra]) => ({ ...value, ...(extra ?? {}) }));
  const shaped = fc
    .tuple(
      fc.oneof({ weight: 3, arbitrary: valid }, { weight: 4, arbitrary: oneBad }, { weight: 3, arbitrary: free }),
      fc.boolean(), // proto field names (snake_case) instead of JSON names: both are valid proto JSON
      fc.constantFrom(...HUGE_LITERALS),
    )
    .map(([value, snake, huge]) => {
      const renamed = snake ? Object.fromEntries(Object.entries(value).map(([k, v]) => [input.fields.find((f) => f.jsonName === k)?.name ?? k, v])) : value;
      return toJsonText(renamed, huge);
    });
  return fc.oneof(
    { weight: 12, arbitrary: shaped },
    { weight: 1, arbitrary: fc.json() },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 60 }) },
    { weight: 1, arbitrary: fc.tuple(shaped, fc.nat()).map(([t, cut]) => t.slice(0, cut % Math.max(1, t.length))) },
    { weight: 1, arbitrary: fc.constantFrom("", "[]", "null", "{}", "{", '"x"', "1", '{"__proto__":{"admin":true}}') },
  );
}

/** A binary body: a real encoding of a shaped message, then cut, flipped or padded; or pure noise. */
function rpcBinaryBody(input: DescMessage): fc.Arbitrary<Uint8Array> {
  const encoded = fc
    .record(
      Object.fromEntries(
        input.fields
          .filter((f) => f.fieldKind === "scalar" || (f.fieldKind === "list" && f.listKind === "scalar"))
          .map((f) => [
            f.localName,
            f.fieldKind === "list"
              ? fc.array(anyString, { maxLength: 5 })
              : f.scalar === 9
                ? fc.oneof(plausible, anyString, fc.nat().map((i) => rpcIds()[i % rpcIds().length]!))
                : f.scalar === 8
                  ? fc.boolean()
                  : f.scalar === 1
                    ? fc.double()
                    : fc.integer(),
          ]),
      ),
      { requiredKeys: [] },
    )
    .map((init) => toBinary(input, create(input, init as never)));
  const mutated = fc.tuple(encoded, fc.nat(), fc.nat({ max: 255 }), fc.constantFrom("cut", "flip", "pad", "none", "none", "none", "none")).map(([bytes, at, byte, how]) => {
    const i = bytes.length === 0 ? 0 : at % bytes.length;
    if (how === "cut") return bytes.slice(0, i);
    if (how === "flip" && bytes.length > 0) {
      const copy = Uint8Array.from(bytes);
      copy[i] = byte;
      return copy;
    }
    if (how === "pad") return Uint8Array.from([...bytes, byte, 0xff, 0xff]);
    return bytes;
  });
  return fc.oneof(
    { weight: 4, arbitrary: mutated },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 80 }) },
    // Field 1, wire type 2 (length-delimited), with a length running past the end.
    { weight: 1, arbitrary: fc.constantFrom(Uint8Array.from([0x0a, 0x7f, 0x61]), Uint8Array.from([0xff, 0xff]), Uint8Array.from([0x0a, 0x01]), Uint8Array.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])) },
  );
}

interface RpcCase {
  method: number;
  body: string | Uint8Array;
  binary: boolean;
  auth: AuthChoice;
  tenant: TenantChoice;
  protocolHeader: string | undefined;
  contentType: string;
}

const rpcCase = (binary: boolean): fc.Arbitrary<RpcCase> =>
  fc.nat({ max: METHODS.length - 1 }).chain((method) =>
    fc.record({
      method: fc.constant(method),
      body: binary ? rpcBinaryBody(METHODS[method]!.input) : rpcJsonBody(METHODS[method]!.input),
      binary: fc.constant(binary),
      auth: authChoice,
      tenant: tenantChoice,
      protocolHeader: fc.constantFrom<string | undefined>("1", "1", "1", undefined),
      contentType: binary ? fc.constant("application/proto") : fc.constantFrom("application/json", "application/json; charset=utf-8"),
    }),
  );

async function checkRpcCase(c: RpcCase, skipKnown = SKIP_KNOWN): Promise<void> {
  const m = METHODS[c.method]!;
  const headers: Record<string, string> = { "content-type": c.contentType };
  if (c.protocolHeader !== undefined) headers["connect-protocol-version"] = c.protocolHeader;
  const authorization = authHeader(c.auth);
  if (authorization !== undefined) headers.authorization = authorization;
  const tenant = tenantHeader(c.tenant);
  if (tenant !== undefined) headers["x-tenant-id"] = tenant;
  const shownBody = typeof c.body === "string" ? show(c.body, 300) : `0x${Buffer.from(c.body).toString("hex").slice(0, 300)}`;
  const what = `${m.name} [${c.contentType}, auth ${c.auth}, x-tenant-id ${show(tenant ?? "-", 60)}] body ${shownBody}`;

  const beforeState = await dbState();
  const res = await send("POST", m.path, headers, c.body);
  tally(`${c.binary ? "proto" : "json"} ${res.status < 300 ? `ok ${m.name}` : (parse(res.text)?.code ?? res.status)}`);
  if (skipKnown && res.status >= 500 && knownRpcBug(c, res)) return;
  assert.ok(res.status < 500, `${what} → ${res.status} ${show(res.text)}`);
  if (res.status >= 300) {
    assertConnectError(res, `${what} → ${res.status}`);
    assert.deepEqual(await dbState(), beforeState, `${what} → ${res.status} ${show(res.text)} wrote to the database`);
  } else if (!c.binary) {
    const body = parse(res.text);
    const auth = { ...(authorization !== undefined ? { authorization } : {}), ...(tenant !== undefined ? { "x-tenant-id": tenant } : {}) };
    const events: string[] = m.name === "EventService.PublishEvents" ? (body?.events ?? []).map((e: any) => e.event?.eventId) : m.name === "EventService.PublishEvent" ? [body?.event?.eventId] : [];
    for (const id of events) if (id) await readBack("event", id, auth, what);
    if (m.name === "WebhookService.CreateWebhook" && body?.webhook?.webhookId) await readBack("webhook", body.webhook.webhookId, auth, what);
    remember(c.auth, c.tenant, m.name === "WebhookService.CreateWebhook" && body?.webhook?.webhookId ? [body.webhook.webhookId] : [], events.filter(Boolean));
  }
  await healthy();
}

const rpcIndex = (name: string) => METHODS.findIndex((m) => m.name === name);
const rpcDefaults = { auth: "admin" as AuthChoice, tenant: { kind: "none" } as TenantChoice, protocolHeader: "1" };

// Found by this fuzzer; fixed in src/ since (invalid_argument now, via toConnectError in errors.ts and isStorableText).
// BUG (Connect 1, fixed): a NUL in a tenant id answers 500 internal: admin-service.ts `tenantFor` passes the
//   unchecked id to `tenants.getTenant`, and Postgres refuses U+0000. Minimal counterexamples:
//   AdminService/CreateApiKey {"tenantId":"\u0000"} and AdminService/ListAuditLog {"tenantId":"\u0000"}.
// BUG (Connect 2, fixed): a NUL in ListEvents' event type filter answers 500 internal: event-service.ts `listEvents`
//   hands `req.eventType` to the store unchecked. Minimal counterexample: EventService/ListEvents {"eventType":"\u0000"}.
// BUG (Connect 3, fixed): the NUL-in-description bug of REST 2 through WebhookService/CreateWebhook and UpdateWebhook:
//   {"url":"https://93.184.216.34/hook","eventTypes":["a.b"],"description":"\u0000"}.
const rpcJsonExamples: [RpcCase][] = [
  [{ ...rpcDefaults, method: rpcIndex("AdminService.CreateApiKey"), body: JSON.stringify({ tenantId: "\u0000" }), binary: false, contentType: "application/json" }],
  [{ ...rpcDefaults, method: rpcIndex("AdminService.ListAuditLog"), body: JSON.stringify({ tenantId: "\u0000" }), binary: false, contentType: "application/json" }],
  [{ ...rpcDefaults, method: rpcIndex("EventService.ListEvents"), body: JSON.stringify({ eventType: "\u0000" }), binary: false, contentType: "application/json" }],
  [
    {
      ...rpcDefaults,
      method: rpcIndex("WebhookService.CreateWebhook"),
      body: JSON.stringify({ url: "https://93.184.216.34/hook", eventTypes: ["a.b"], description: "\u0000" }),
      binary: false,
      contentType: "application/json",
    },
  ],
];

// BUG (Connect 4, OPEN): a binary (application/proto) body that does not parse answers HTTP 500 with code
//   `internal` ("parse binary: premature EOF"), for every method. connect-es's binary serialization throws
//   Code.Internal on a parse failure (JSON parse failures get invalid_argument:
//   node_modules/@connectrpc/connect/dist/esm/protocol/serialization.js), and the unary handler parses
//   before any interceptor runs, so the interceptor in http-server.ts never sees it: webhookd has to catch
//   it in front of the adapter. Minimal counterexample: POST /webhook.v1.WebhookService/GetWebhook,
//   content-type application/proto, connect-protocol-version 1, body 0x0a01 (field 1, length 1, no byte).
const rpcBinaryExamples: [RpcCase][] = [
  [{ ...rpcDefaults, method: rpcIndex("WebhookService.GetWebhook"), body: Uint8Array.from([0x0a, 0x01]), binary: true, contentType: "application/proto" }],
  // Connect 1 through the binary door (fixed): CreateApiKey {tenant_id: "\0"}.
  [{ ...rpcDefaults, method: rpcIndex("AdminService.CreateApiKey"), body: Uint8Array.from([0x0a, 0x01, 0x00]), binary: true, contentType: "application/proto" }],
];

test("2a. Connect JSON: hostile bodies at every RPC never answer 5xx/internal and never write when refused", async (t) => {
  assert.ok(METHODS.length >= 6 + 4 + 4 + 5, "every RPC of the four services is fuzzed");
  await fc.assert(fc.asyncProperty(rpcCase(false), (c) => checkRpcCase(c)), { numRuns: NUM_RUNS.connectJson * NUM_RUNS_SCALE, includeErrorInReport: true, examples: SKIP_KNOWN ? [] : rpcJsonExamples });
  report(t);
  await healthy();
});

test("2b. Connect binary: hostile application/proto bodies at every RPC never answer 5xx/internal and never write when refused", async (t) => {
  await fc.assert(fc.asyncProperty(rpcCase(true), (c) => checkRpcCase(c)), { numRuns: NUM_RUNS.connectBinary * NUM_RUNS_SCALE, includeErrorInReport: true, examples: SKIP_KNOWN ? [] : rpcBinaryExamples });
  report(t);
  await healthy();
});

// ---------------------------------------------------------------------------------------------------
// 3. Tenant isolation

type Expect = "not_found" | "permission_denied" | "ok";
interface IsolationOp {
  /** What is sent, for the failure message. */
  what: string;
  run: () => Promise<{ status: number; text: string; body: any }>;
  expect: Expect;
  /** B's values the request itself names: an error message may echo them back. */
  named: string[];
  /** REST or Connect, for the shape of the error. */
  door: "rest" | "connect";
}

const B_STATUSES = ["", "pending", "failed", "expired", "succeeded", "cancelled"];
const restUpdate = fc.constantFrom<Record<string, unknown>>(
  {},
  { status: "paused" },
  { status: "active" },
  { url: "https://93.184.216.34/stolen" },
  { event_types: ["stolen.*"] },
  { description: "taken over by A" },
  { rate_limit_per_second: 1, ordered_by_key: true },
);
const rpcUpdate = fc.constantFrom<Record<string, unknown>>(
  {},
  { status: "paused" },
  { url: "https://93.184.216.34/stolen" },
  { eventTypes: ["stolen.*"] },
  { description: "taken over by A" },
  { rateLimitPerSecond: 1, orderedByKey: true },
);

function isolationOp(): fc.Arbitrary<IsolationOp> {
  const pick = (list: () => string[]) => fc.nat().map((i) => list()[i % list().length]!);
  const bWebhook = pick(() => tenantB.webhookIds);
  const bEvent = pick(() => tenantB.eventIds);
  const bDelivery = pick(() => tenantB.deliveryIds);
  const aKey = () => tenantA.key;
  const restOp = (method: string, path: (id: string) => string, id: fc.Arbitrary<string>, body: fc.Arbitrary<unknown> = fc.constant(undefined), expect: Expect = "not_found") =>
    fc.tuple(id, body).map(([i, b]) => ({
      what: `REST ${method} ${path(i)} ${b === undefined ? "" : JSON.stringify(b)}`,
      run: () => rest(method, path(i), aKey(), b),
      expect,
      named: [i],
      door: "rest" as const,
    }));
  const rpcOp = (method: string, body: (id: string) => fc.Arbitrary<Record<string, unknown>>, id: fc.Arbitrary<string>, expect: Expect = "not_found") =>
    id.chain((i) =>
      body(i).map((b) => ({
        what: `Connect ${method} ${JSON.stringify(b)}`,
        run: () => rpc(`/webhook.v1.${method}`, b, aKey()),
        expect,
        named: [i],
        door: "connect" as const,
      })),
    );
  return fc.oneof(
    // A naming B's resources by id: 404 / not_found, always.
    restOp("GET", (id) => `/webhooks/${id}`, bWebhook),
    restOp("PUT", (id) => `/webhooks/${id}`, bWebhook, restUpdate),
    restOp("DELETE", (id) => `/webhooks/${id}`, bWebhook),
    restOp("POST", (id) => `/webhooks/${id}/rotate-secret`, bWebhook),
    fc.tuple(bWebhook, fc.constantFrom(...B_STATUSES)).chain(([id, status]) =>
      restOp("GET", (i) => `/webhooks/${i}/deliveries${status ? `?status=${status}` : ""}`, fc.constant(id)),
    ),
    restOp("GET", (id) => `/events/${id}`, bEvent),
    restOp("GET", (id) => `/deliveries/${id}`, bDelivery),
    restOp("GET", (id) => `/deliveries/${id}/attempts`, bDelivery),
    restOp("POST", (id) => `/deliveries/${id}/retry`, bDelivery),
    rpcOp("WebhookService/GetWebhook", (id) => fc.constant({ webhookId: id }), bWebhook),
    rpcOp("WebhookService/UpdateWebhook", (id) => rpcUpdate.map((u) => ({ webhookId: id, ...u })), bWebhook),
    rpcOp("WebhookService/DeleteWebhook", (id) => fc.constant({ webhookId: id }), bWebhook),
    rpcOp("WebhookService/RotateWebhookSecret", (id) => fc.constant({ webhookId: id }), bWebhook),
    rpcOp("EventService/GetEvent", (id) => fc.constant({ eventId: id }), bEvent),
    rpcOp("DeliveryService/ListDeliveries", (id) => fc.constantFrom(...B_STATUSES).map((status) => ({ webhookId: id, ...(status ? { status } : {}) })), bWebhook),
    rpcOp("DeliveryService/GetDelivery", (id) => fc.constant({ deliveryId: id }), bDelivery),
    rpcOp("DeliveryService/ListDeliveryAttempts", (id) => fc.constant({ deliveryId: id }), bDelivery),
    rpcOp("DeliveryService/RetryDelivery", (id) => fc.constant({ deliveryId: id }), bDelivery),
    // A's key claiming B's tenant: refused outright, whatever the call.
    fc.tuple(bWebhook, fc.boolean()).map(([id, connect]) => ({
      what: `${connect ? "Connect GetWebhook" : "REST GET /webhooks/{B}"} with x-tenant-id: B`,
      run: () =>
        connect
          ? rpc("/webhook.v1.WebhookService/GetWebhook", { webhookId: id }, aKey(), { "x-tenant-id": tenantB.tenantId })
          : rest("GET", `/webhooks/${id}`, aKey(), undefined, { "x-tenant-id": tenantB.tenantId }),
      expect: "permission_denied" as const,
      named: [id, tenantB.tenantId],
      door: connect ? ("connect" as const) : ("rest" as const),
    })),
    rpcOp("AdminService/ListAuditLog", () => fc.constant({ tenantId: tenantB.tenantId }), fc.constant(""), "permission_denied"),
    rpcOp("AdminService/CreateApiKey", () => fc.constant({ tenantId: tenantB.tenantId }), fc.constant(""), "permission_denied"),
    // A's own reads and writes, reaching for B's data sideways: they work, and show nothing of B.
    fc.constantFrom("", "?page_size=1", "?page_size=100").map((q) => ({
      what: `REST GET /webhooks${q}`,
      run: () => rest("GET", `/webhooks${q}`, aKey()),
      expect: "ok" as const,
      named: [],
      door: "rest" as const,
    })),
    // A page token is the last id of a page: one made of B's id must not open B's list.
    bWebhook.map((id) => ({
      what: `REST GET /webhooks?page_token=<B's ${id}>`,
      run: () => rest("GET", `/webhooks?page_token=${Buffer.from(id).toString("base64url")}`, aKey()),
      expect: "ok" as const,
      named: [id],
      door: "rest" as const,
    })),
    fc.constantFrom("", "shared.thing", "tenant-b.created").map((eventType) => ({
      what: `Connect ListEvents ${eventType}`,
      run: () => rpc("/webhook.v1.EventService/ListEvents", { pageSize: 100, ...(eventType ? { eventType } : {}) }, aKey()),
      expect: "ok" as const,
      named: [],
      door: "connect" as const,
    })),
    fc.constant<IsolationOp>({
      what: "Connect ListWebhooks",
      run: () => rpc("/webhook.v1.WebhookService/ListWebhooks", { pageSize: 100 }, aKey()),
      expect: "ok" as const,
      named: [],
      door: "connect" as const,
    }),
    fc.constantFrom(...B_STATUSES).map((status) => ({
      what: `REST GET /webhooks/{A's}/deliveries?status=${status}`,
      run: () => rest("GET", `/webhooks/${isolationWebhookOfA}/deliveries${status ? `?status=${status}` : ""}`, aKey()),
      expect: "ok" as const,
      named: [],
      door: "rest" as const,
    })),
    // Publishing as A with B's event types and B's idempotency keys: no delivery to B, and never B's event back.
    fc.tuple(pick(() => tenantB.idempotencyKeys), fc.constantFrom("shared.thing", "tenant-b.created", "shared.other"), fc.boolean()).map(([idem, eventType, connect]) => ({
      what: `${connect ? "Connect PublishEvents" : "REST POST /events"} as A with B's idempotency key ${idem} and type ${eventType}`,
      run: () =>
        connect
          ? rpc("/webhook.v1.EventService/PublishEvents", { events: [{ eventType, payload: { by: "a" }, idempotencyKey: idem }] }, aKey())
          : rest("POST", "/events", aKey(), { event_type: eventType, payload: { by: "a" }, idempotency_key: idem }),
      expect: "ok" as const,
      named: [],
      door: connect ? ("connect" as const) : ("rest" as const),
    })),
  );
}

/** B's ids and URLs that an answer to A must never contain (other than those A itself named). */
function secretsOfB(): string[] {
  return [tenantB.tenantId, tenantB.keyId, ...tenantB.webhookIds, ...tenantB.webhookUrls, ...tenantB.eventIds, ...tenantB.deliveryIds, ...tenantB.attemptIds, "tenant-b response body", "tenant-b attempt error", "tenant-b failed", "tenant-b hook"];
}

/** A webhook of A's made for property 3: properties 1 and 2 may have deleted the fixtures' ones. */
let isolationWebhookOfA = "";

test("3. Tenant isolation: A's key never reaches, changes or sees B's webhooks, events and deliveries", async (t) => {
  isolationWebhookOfA = (await ok("create A's webhook", rest("POST", "/webhooks", tenantA.key, { url: "http://127.0.0.1:9/tenant-a-isolation", event_types: ["shared.*"] }))).webhook_id;
  const bBefore = await tenantRows(tenantB.tenantId);
  await fc.assert(
    fc.asyncProperty(isolationOp(), async (op) => {
      const res = await op.run();
      const what = `${op.what} → ${res.status} ${show(res.text)}`;
      tally(`${res.status} ${op.what.replace(/ .*$/, "")} ${op.what.split(" ")[1]} (expected ${op.expect})`);
      if (op.expect === "ok") {
        assert.ok(res.status >= 200 && res.status < 300, what);
      } else {
        const status = op.expect === "not_found" ? 404 : 403;
        assert.equal(res.status, status, what);
        const code = op.door === "rest" ? res.body?.error?.code : res.body?.code;
        assert.equal(code, op.expect, what);
      }
      let text = res.text;
      for (const named of op.named) text = text.split(named).join("<named>");
      for (const secret of secretsOfB()) assert.ok(!text.includes(secret), `${what}: the answer shows B's ${secret}`);
      // Publishing as A may add A's rows; B's rows stay exactly as they were.
      assert.deepEqual(await tenantRows(tenantB.tenantId), bBefore, `${op.what} changed tenant B's rows`);
    }),
    { numRuns: NUM_RUNS.isolation * NUM_RUNS_SCALE, includeErrorInReport: true },
  );
  // And every one of B's resources is still there for B.
  for (const id of tenantB.webhookIds) assert.equal((await rest("GET", `/webhooks/${id}`, tenantB.key)).status, 200);
  for (const id of tenantB.eventIds) assert.equal((await rest("GET", `/events/${id}`, tenantB.key)).status, 200);
  for (const id of tenantB.deliveryIds) assert.equal((await rest("GET", `/deliveries/${id}`, tenantB.key)).status, 200);
  report(t);
  await healthy();
});

// ---------------------------------------------------------------------------------------------------
// The bugs found so far, one minimal counterexample each: a test fails while its bug is open.

describe("bugs found by the fuzzer (minimal counterexamples; regression tests once fixed)", () => {
  test("REST 1: a malformed percent-encoding in a path parameter answers 400/404, not 500", async () => {
    for (const segment of ["%", "%E0%A4%A", "%ED%A0%80", "%FF"]) {
      await checkRestCase({ ...restCaseDefaults, shape: 1, id: segment }, false);
    }
  });

  test("REST 2: a NUL in a webhook description answers 400, not 500", async () => {
    await checkRestCase({ ...restCaseDefaults, shape: 0, id: "", method: "POST", body: JSON.stringify({ url: "https://93.184.216.34/hook", event_types: ["a.b"], description: "\u0000" }) }, false);
    const hook = await ok("create webhook", rest("POST", "/webhooks", TEST_ADMIN_KEY, { url: "https://93.184.216.34/hook", event_types: ["a.b"] }));
    await checkRestCase({ ...restCaseDefaults, shape: 1, id: hook.webhook_id, method: "PUT", body: JSON.stringify({ description: "a\u0000b" }) }, false);
  });

  test("REST 3: a deeply nested event payload answers 400, not 500", async () => {
    await checkRestCase({ ...restCaseDefaults, shape: 4, id: "", method: "POST", body: `{"event_type":"a.b","payload":{"x":${nestText(5000, "array")}}}` }, false);
  });

  test("REST 4: lone surrogates in an idempotency key are refused (or kept apart), never a 500", async () => {
    const first = await rest("POST", "/events", TEST_ADMIN_KEY, { event_type: "a.b", idempotency_key: "\ud800" });
    assert.ok(first.status < 500, `first: ${first.status} ${first.text}`);
    const second = await rest("POST", "/events", TEST_ADMIN_KEY, { event_type: "a.b", idempotency_key: "\udfff" });
    assert.ok(second.status < 500, `second: ${second.status} ${second.text}`);
    if (first.status === 201 && second.status < 300) {
      // Two different keys: two different events, not the first one as a "duplicate".
      assert.notEqual(second.body.event_id, first.body.event_id, "\\udfff deduplicated against \\ud800");
    }
  });

  test("REST 5: an event REST accepts can be read back over Connect, and does not break ListEvents", async () => {
    // In a tenant of its own: the poisoned event must not break anything else in this file.
    const { tenantId } = await createTenant("poison");
    await checkRestCase(
      { ...restCaseDefaults, shape: 4, id: "", method: "POST", tenant: { kind: "junk", value: tenantId }, body: `{"event_type":"a.b","payload":{"x":${nestText(3000, "array")}}}` },
      false,
    );
    const list = await rpc("/webhook.v1.EventService/ListEvents", {}, TEST_ADMIN_KEY, { "x-tenant-id": tenantId });
    assert.equal(list.status, 200, `ListEvents: ${list.status} ${show(list.text)}`);
  });

  test("Connect 1+2+3: a NUL in a tenant id, an event type filter or a description answers invalid_argument/not_found, not internal", async () => {
    for (const [example] of rpcJsonExamples) await checkRpcCase(example, false);
  });

  test("BUG Connect 4 (open): an application/proto body that does not parse answers invalid_argument, not internal", async () => {
    for (const [example] of rpcBinaryExamples) await checkRpcCase(example, false);
  });
});
