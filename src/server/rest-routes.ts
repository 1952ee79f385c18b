import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { create } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { JsonObject } from "@bufbuild/protobuf";
import {
  CreateWebhookRequestSchema,
  DeleteWebhookRequestSchema,
  GetReplayRequestSchema,
  GetWebhookRequestSchema,
  ReplayWebhookRequestSchema,
  ListWebhooksRequestSchema,
  RotateWebhookSecretRequestSchema,
  UpdateWebhookRequestSchema,
  type Replay,
  type Webhook,
} from "../../gen/webhook/v1/webhook_pb.js";
import { EventInputSchema, GetEventRequestSchema, PublishEventRequestSchema, PublishEventsRequestSchema, type Event } from "../../gen/webhook/v1/event_pb.js";
import {
  GetDeliveryRequestSchema,
  ListDeliveriesRequestSchema,
  ListDeliveryAttemptsRequestSchema,
  RetryDeliveryRequestSchema,
  type Delivery,
} from "../../gen/webhook/v1/delivery_pb.js";
import type { Services } from "./services.js";
import { invalidArgument, notFound, restError } from "./errors.js";
import { parseRfc3339 } from "../core/rfc3339.js";
import { MAX_BATCH, MAX_PAYLOAD_BYTES } from "./event-service.js";

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** A maximal payload plus its envelope. */
export const MAX_REST_BODY_BYTES = MAX_PAYLOAD_BYTES + 64 * 1024;

/** The most a route reads of a body, and what a refusal says besides the number. */
interface BodyLimit {
  bytes: number;
  note?: string;
}
/**
 * What the event routes read of a body: as much as Connect reads of any call (http-server.ts), since a
 * tighter limit here would guard nothing and would refuse what Connect takes. It only stops abuse; the
 * payload limit is the event service's, on the payload re-serialised as compact JSON, because a client
 * may spell the same payload six times larger (`\u0061` for `a`; Python's json.dumps writes every
 * non-ASCII character as `\uXXXX`) or pretty-print it larger still.
 */
const MAX_EVENT_BODY_BYTES = MAX_BATCH * MAX_REST_BODY_BYTES;
const EVENT_BODY_LIMIT: BodyLimit = {
  bytes: MAX_EVENT_BODY_BYTES,
  note: `the most the API reads of a request; an event's payload may be at most ${MAX_PAYLOAD_BYTES} bytes (256 KB) as compact JSON`,
};
const BATCH_BODY_LIMIT: BodyLimit = { bytes: MAX_EVENT_BODY_BYTES, note: "the most the API reads of a request; split the batch" };

interface Reply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

type Handler = (ctx: { params: string[]; query: URLSearchParams; body: () => Promise<Record<string, unknown>>; headers: Headers }) => Promise<Reply>;

/**
 * The seed's REST API: thin translation between snake_case JSON and the service layer's messages.
 * Validation of meaning lives in the services; here only JSON shapes are checked.
 */
export function createRestRouter(services: Services) {
  const { auth } = services;
  const routes: { method: string; pattern: RegExp; handler: Handler; bodyLimit?: BodyLimit }[] = [];
  const route = (method: string, path: string, handler: Handler, bodyLimit?: BodyLimit) =>
    routes.push({ method, pattern: new RegExp(`^${path.replace(/:\w+/g, "([^/]+)")}$`), handler, bodyLimit });

  route("POST", "/webhooks", async ({ body, headers }) => {
    const principal = await auth.authenticate(headers);
    const b = await body();
    only(b, ["url", "event_types", "description", "ordered_by_key", "rate_limit_per_second", "signature_scheme", "retry_schedule"]);
    const res = await services.webhooks.createWebhook(
      principal,
      create(CreateWebhookRequestSchema, {
        url: str(b, "url", true),
        eventTypes: strList(b, "event_types", true),
        description: str(b, "description") ?? "",
        orderedByKey: bool(b, "ordered_by_key") ?? false,
        rateLimitPerSecond: num(b, "rate_limit_per_second") ?? 0,
        signatureScheme: str(b, "signature_scheme") ?? "",
        retrySchedule: str(b, "retry_schedule") ?? "",
      }),
    );
    return { status: 201, body: { ...webhookJson(res.webhook!), ...(res.secret ? { secret: res.secret } : {}) } };
  });

  route("GET", "/webhooks", async ({ query, headers }) => {
    const res = await services.webhooks.listWebhooks(await auth.authenticate(headers), create(ListWebhooksRequestSchema, pageQuery(query)));
    return { status: 200, body: { webhooks: res.webhooks.map(webhookJson), ...nextPage(res.nextPageToken) } };
  });

  route("GET", "/webhooks/:id", async ({ params, headers }) => {
    const res = await services.webhooks.getWebhook(await auth.authenticate(headers), create(GetWebhookRequestSchema, { webhookId: params[0] }));
    return { status: 200, body: webhookJson(res.webhook!) };
  });

  route("PUT", "/webhooks/:id", async ({ params, body, headers }) => {
    const principal = await auth.authenticate(headers);
    const b = await body();
    only(b, ["url", "event_types", "status", "description", "ordered_by_key", "rate_limit_per_second", "retry_schedule"]);
    const eventTypes = strList(b, "event_types");
    if (eventTypes && eventTypes.length === 0) throw invalidArgument("event_types must not be empty");
    const res = await services.webhooks.updateWebhook(
      principal,
      create(UpdateWebhookRequestSchema, {
        webhookId: params[0],
        url: str(b, "url"),
        eventTypes: eventTypes ?? [],
        status: str(b, "status"),
        description: str(b, "description"),
        orderedByKey: bool(b, "ordered_by_key"),
        rateLimitPerSecond: num(b, "rate_limit_per_second"),
        retrySchedule: str(b, "retry_schedule"),
      }),
    );
    return { status: 200, body: { status: "updated", webhook: webhookJson(res.webhook!) } };
  });

  route("DELETE", "/webhooks/:id", async ({ params, headers }) => {
    await services.webhooks.deleteWebhook(await auth.authenticate(headers), create(DeleteWebhookRequestSchema, { webhookId: params[0] }));
    return { status: 200, body: { status: "deleted" } };
  });

  route("POST", "/webhooks/:id/rotate-secret", async ({ params, headers }) => {
    const res = await services.webhooks.rotateWebhookSecret(
      await auth.authenticate(headers),
      create(RotateWebhookSecretRequestSchema, { webhookId: params[0] }),
    );
    return { status: 200, body: res.secret ? { secret: res.secret } : { public_key: res.publicKey } };
  });

  route("POST", "/events", async ({ body, headers }) => {
    const principal = await auth.authenticate(headers);
    const res = await services.events.publishEvent(principal, create(PublishEventRequestSchema, eventInput(await body(), "")));
    return { status: res.duplicate ? 200 : 201, body: { ...eventJson(res.event!), duplicate: res.duplicate } };
  }, EVENT_BODY_LIMIT);

  route(
    "POST",
    "/events/batch",
    async ({ body, headers }) => {
      const principal = await auth.authenticate(headers);
      const b = await body();
      only(b, ["events"]);
      const list = b.events;
      if (!Array.isArray(list)) throw invalidArgument("events must be an array of events");
      if (list.length > MAX_BATCH) throw invalidArgument(`events holds ${list.length} events; the limit is ${MAX_BATCH}`);
      const events = list.map((e, i) => {
        if (!isObject(e)) throw invalidArgument(`events[${i}] must be an object`);
        return create(EventInputSchema, eventInput(e, `events[${i}].`));
      });
      const res = await services.events.publishEvents(principal, create(PublishEventsRequestSchema, { events }));
      return { status: 201, body: { events: res.events.map((r) => ({ ...eventJson(r.event!), duplicate: r.duplicate })) } };
    },
    BATCH_BODY_LIMIT,
  );

  route("GET", "/events/:id", async ({ params, headers }) => {
    const res = await services.events.getEvent(await auth.authenticate(headers), create(GetEventRequestSchema, { eventId: params[0] }));
    return { status: 200, body: eventJson(res.event!) };
  });

  route("POST", "/webhooks/:id/replay", async ({ params, body, headers }) => {
    const principal = await auth.authenticate(headers);
    const b = await body();
    only(b, ["since", "until", "scope", "rate_per_second"]);
    const res = await services.replays.replayWebhook(
      principal,
      create(ReplayWebhookRequestSchema, {
        webhookId: params[0],
        since: time(b, "since", true),
        until: time(b, "until"),
        scope: str(b, "scope") ?? "",
        ratePerSecond: num(b, "rate_per_second") ?? 0,
      }),
    );
    return { status: 202, body: replayJson(res.replay!) };
  });

  route("GET", "/webhooks/:id/replays/:replay", async ({ params, headers }) => {
    const res = await services.replays.getReplay(
      await auth.authenticate(headers),
      create(GetReplayRequestSchema, { webhookId: params[0], replayId: params[1] }),
    );
    return { status: 200, body: replayJson(res.replay!) };
  });

  route("GET", "/webhooks/:id/deliveries", async ({ params, query, headers }) => {
    const res = await services.deliveries.listDeliveries(
      await auth.authenticate(headers),
      create(ListDeliveriesRequestSchema, { webhookId: params[0], status: query.get("status") ?? "", ...pageQuery(query) }),
    );
    return { status: 200, body: { deliveries: res.deliveries.map(deliveryJson), ...nextPage(res.nextPageToken) } };
  });

  route("GET", "/deliveries/:id", async ({ params, headers }) => {
    const res = await services.deliveries.getDelivery(await auth.authenticate(headers), create(GetDeliveryRequestSchema, { deliveryId: params[0] }));
    return { status: 200, body: deliveryJson(res.delivery!) };
  });

  route("GET", "/deliveries/:id/attempts", async ({ params, headers }) => {
    const res = await services.deliveries.listDeliveryAttempts(
      await auth.authenticate(headers),
      create(ListDeliveryAttemptsRequestSchema, { deliveryId: params[0] }),
    );
    return {
      status: 200,
      body: {
        attempts: res.attempts.map((a) => ({
          attempt_id: a.attemptId,
          attempted_at: iso(a.attemptedAt),
          duration_ms: a.durationMs,
          ...(a.responseCode ? { response_code: a.responseCode } : {}),
          ...(a.error ? { error: a.error } : {}),
          ...(a.responseBody ? { response_body: a.responseBody } : {}),
        })),
      },
    };
  });

  route("POST", "/deliveries/:id/retry", async ({ params, headers }) => {
    const res = await services.deliveries.retryDelivery(await auth.authenticate(headers), create(RetryDeliveryRequestSchema, { deliveryId: params[0] }));
    return { status: 202, body: deliveryJson(res.delivery!) };
  });

  const prefixes = ["/webhooks", "/events", "/deliveries"];

  /** Answers the request if it is a REST call; false leaves it to the next handler. */
  return async function handle(req: Request, res: Response): Promise<boolean> {
    const url = new URL(req.url ?? "/", "http://localhost");
    if (!prefixes.some((p) => url.pathname === p || url.pathname.startsWith(`${p}/`))) return false;
    const headers = toHeaders(req);
    let reply: Reply;
    try {
      const matched = routes.filter((r) => r.pattern.test(url.pathname));
      const found = matched.find((r) => r.method === req.method);
      if (!found) {
        if (matched.length === 0) throw notFound("route", `${req.method} ${url.pathname}`);
        reply = { status: 405, body: { error: { code: "method_not_allowed", message: `${req.method} is not allowed on ${url.pathname}; use ${matched.map((r) => r.method).join(", ")}` } } };
      } else {
        const params = found.pattern.exec(url.pathname)!.slice(1).map(decodePathSegment);
        reply = await found.handler({ params, query: url.searchParams, headers, body: () => readJson(req, found.bodyLimit ?? { bytes: MAX_REST_BODY_BYTES }) });
      }
    } catch (err) {
      if (err instanceof HttpError) reply = { status: err.status, body: { error: { code: err.code, message: err.message } } };
      else {
        const mapped = restError(err);
        if (mapped.status === 500) console.error(err);
        reply = mapped;
      }
    }
    const payload = JSON.stringify(reply.body);
    res.writeHead(reply.status, { ...reply.headers, "content-type": "application/json", "content-length": Buffer.byteLength(payload) });
    res.end(payload);
    return true;
  };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw invalidArgument(`malformed percent-encoding in the path: ${JSON.stringify(segment.slice(0, 100))}`);
  }
}

function toHeaders(req: Request): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith(":") || value === undefined) continue;
    headers.set(name, Array.isArray(value) ? value.join(", ") : value);
  }
  return headers;
}

async function readJson(req: Request, limit: BodyLimit): Promise<Record<string, unknown>> {
  // The body is read as JSON whatever its content-type says: `curl -d` labels JSON as a form.
  const note = limit.note ? `: ${limit.note}` : "";
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit.bytes) throw new HttpError(413, "payload_too_large", `request body is ${declared} bytes; the limit is ${limit.bytes} bytes${note}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit.bytes) throw new HttpError(413, "payload_too_large", `request body is larger than ${limit.bytes} bytes${note}`);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") throw invalidArgument("request body is empty; expected a JSON object");
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`request body is not valid JSON: ${(err as Error).message}`);
  }
  if (!isObject(value)) throw invalidArgument("request body must be a JSON object");
  return value;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function only(body: Record<string, unknown>, allowed: string[]): void {
  const unknown = Object.keys(body).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) throw invalidArgument(`unknown field${unknown.length > 1 ? "s" : ""} ${unknown.join(", ")}; allowed: ${allowed.join(", ")}`);
}

function str(body: Record<string, unknown>, name: string, required: true): string;
function str(body: Record<string, unknown>, name: string, required?: false): string | undefined;
function str(body: Record<string, unknown>, name: string, required = false): string | undefined {
  const value = body[name];
  if (value === undefined || value === null) {
    if (required) throw invalidArgument(`${name} is required`);
    return undefined;
  }
  if (typeof value !== "string") throw invalidArgument(`${name} must be a string`);
  return value;
}

function strList(body: Record<string, unknown>, name: string, required = false): string[] | undefined {
  const value = body[name];
  if (value === undefined || value === null) {
    if (required) throw invalidArgument(`${name} is required`);
    return undefined;
  }
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) throw invalidArgument(`${name} must be an array of strings`);
  return value as string[];
}

function bool(body: Record<string, unknown>, name: string): boolean | undefined {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "boolean") throw invalidArgument(`${name} must be true or false`);
  return value;
}

function num(body: Record<string, unknown>, name: string): number | undefined {
  const value = body[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "number") throw invalidArgument(`${name} must be a number`);
  return value;
}

/** An RFC 3339 time. */
function time(body: Record<string, unknown>, name: string, required = false): Timestamp | undefined {
  const value = str(body, name, required as false);
  if (value === undefined) return undefined;
  const at = parseRfc3339(value);
  if (!at) throw invalidArgument(`${name} must be an RFC 3339 time such as 2026-11-29T08:00:00Z (got ${JSON.stringify(value)})`);
  return timestampFromDate(at);
}

/** One event of a publish; `where` (`events[2].`) names it in a batch's errors, as the event service's own do. */
function eventInput(b: Record<string, unknown>, where: string) {
  try {
    only(b, ["event_type", "payload", "idempotency_key", "ordering_key"]);
    const payload = b.payload ?? {};
    // Depth and size are the event service's to check (413 comes back through restError).
    if (!isObject(payload)) throw invalidArgument("payload must be a JSON object");
    return {
      eventType: str(b, "event_type", true),
      payload: payload as JsonObject,
      idempotencyKey: str(b, "idempotency_key") ?? "",
      orderingKey: str(b, "ordering_key") ?? "",
    };
  } catch (err) {
    if (where && err instanceof ConnectError) throw new ConnectError(`${where}${err.rawMessage}`, err.code);
    throw err;
  }
}

function pageQuery(query: URLSearchParams): { pageSize: number; pageToken: string } {
  const raw = query.get("page_size");
  const pageSize = raw === null ? 0 : Number(raw);
  if (!Number.isInteger(pageSize) || pageSize < 0) throw invalidArgument(`page_size must be a whole number (got ${JSON.stringify(raw)})`);
  return { pageSize: Math.min(pageSize, 2 ** 31 - 1), pageToken: query.get("page_token") ?? "" };
}

function nextPage(token: string) {
  return token ? { next_page_token: token } : {};
}

function iso(ts: Timestamp | undefined): string | undefined {
  return ts ? timestampDate(ts).toISOString() : undefined;
}

function webhookJson(w: Webhook) {
  return {
    webhook_id: w.webhookId,
    url: w.url,
    event_types: w.eventTypes,
    status: w.status,
    description: w.description,
    ordered_by_key: w.orderedByKey,
    rate_limit_per_second: w.rateLimitPerSecond,
    signature_scheme: w.signatureScheme,
    ...(w.retrySchedule ? { retry_schedule: w.retrySchedule } : {}),
    ...(w.publicKey ? { public_key: w.publicKey } : {}),
    health: {
      circuit_state: w.health?.circuitState ?? "closed",
      ...(w.health?.circuitOpenUntil ? { circuit_open_until: iso(w.health.circuitOpenUntil) } : {}),
      consecutive_failures: w.health?.consecutiveFailures ?? 0,
      ...(w.health?.failingSince ? { failing_since: iso(w.health.failingSince) } : {}),
      throttle_ms: w.health?.throttleMs ?? 0,
    },
    created_at: iso(w.createdAt),
    updated_at: iso(w.updatedAt),
  };
}

function replayJson(r: Replay) {
  return {
    replay_id: r.replayId,
    webhook_id: r.webhookId,
    scope: r.scope,
    since: iso(r.since),
    until: iso(r.until),
    rate_per_second: r.ratePerSecond,
    total: r.total,
    pending: r.pending,
    succeeded: r.succeeded,
    failed: r.failed,
    created_at: iso(r.createdAt),
  };
}

function eventJson(e: Event) {
  return {
    event_id: e.eventId,
    event_type: e.eventType,
    ...(e.payload ? { payload: e.payload } : {}),
    ...(e.idempotencyKey ? { idempotency_key: e.idempotencyKey } : {}),
    ...(e.orderingKey ? { ordering_key: e.orderingKey } : {}),
    delivery_count: e.deliveryCount,
    created_at: iso(e.createdAt),
  };
}

function deliveryJson(d: Delivery) {
  return {
    delivery_id: d.deliveryId,
    event_id: d.eventId,
    webhook_id: d.webhookId,
    event_type: d.eventType,
    seq: Number(d.seq),
    status: d.status,
    attempts: d.attempts,
    ...(d.nextAttemptAt ? { next_attempt_at: iso(d.nextAttemptAt) } : {}),
    ...(d.lastResponseCode ? { last_response_code: d.lastResponseCode } : {}),
    ...(d.lastError ? { last_error: d.lastError } : {}),
    created_at: iso(d.createdAt),
    ...(d.deliveredAt ? { delivered_at: iso(d.deliveredAt) } : {}),
  };
}
