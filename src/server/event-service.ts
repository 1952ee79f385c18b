import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { JsonObject } from "@bufbuild/protobuf";
import { newId } from "../core/ids.js";
import { exceedsDepth, isStorableText, longerThan, MAX_JSON_DEPTH } from "../core/input-limits.js";
import { patternsMatching, validateEventType } from "../core/event-types.js";
import type { DeliveryFeed } from "../queue/feed.js";
import type { DeliveryJob } from "../queue/job.js";
import type { Db } from "../store/db.js";
import { isUniqueViolation } from "../store/db.js";
import * as events from "../store/events.js";
import { findSubscribers, planDeliveries, writeIngest } from "../store/ingest.js";
import type { Event as EventRow } from "../store/schema.js";
import { deliveriesCreated, eventsIngested } from "../metrics.js";
import {
  EventSchema,
  GetEventResponseSchema,
  ListEventsResponseSchema,
  PublishEventResponseSchema,
  PublishEventsResponseSchema,
  type Event,
  type EventInput,
  type GetEventRequest,
  type GetEventResponse,
  type ListEventsRequest,
  type ListEventsResponse,
  type PublishEventRequest,
  type PublishEventResponse,
  type PublishEventsRequest,
  type PublishEventsResponse,
} from "../../gen/webhook/v1/event_pb.js";
import type { Principal } from "./auth.js";
import { PayloadTooLargeError, aborted, invalidArgument, isTransactionConflict, notFound } from "./errors.js";
import { pageOf, readPage } from "./paging.js";
import { GroupCommit } from "./group-commit.js";
import { SubscriberLists } from "./subscriber-lists.js";

export const MAX_PAYLOAD_BYTES = 256 * 1024;
export const MAX_BATCH = 100;
export const MAX_KEY_LENGTH = 256;
/** Payload characters one ingest statement carries at most, unless a single call brings more. */
const MAX_INGEST_PAYLOAD_CHARS = 16 * 1024 * 1024;
/** Reads of the subscribers an ingest makes before giving up on a tenant whose webhooks keep changing. */
const MAX_INGEST_PLANS = 5;

export interface EventServiceDeps {
  db: Db;
  feed: DeliveryFeed;
  eventTtlMs: number;
}

/** An event as the caller gave it, checked and serialised. */
interface Accepted {
  eventType: string;
  payloadJson: string;
  idempotencyKey: string | null;
  orderingKey: string | null;
}

export type EventService = ReturnType<typeof createEventService>;

export function createEventService(deps: EventServiceDeps) {
  const { db } = deps;

  function accept(input: { eventType: string; payload?: JsonObject | undefined; idempotencyKey: string; orderingKey: string }, where: string): Accepted {
    const typeError = validateEventType(input.eventType);
    if (typeError) throw invalidArgument(`${where}event_type: ${typeError}`);
    for (const [name, value] of [["idempotency_key", input.idempotencyKey], ["ordering_key", input.orderingKey]] as const) {
      // Control characters (NUL above all) are not storable text and are never a sensible key.
      if (/[\u0000-\u001f\u007f]/.test(value)) throw invalidArgument(`${where}${name} must not contain control characters`);
      if (!isStorableText(value)) throw invalidArgument(`${where}${name} is not well-formed Unicode (a lone surrogate)`);
    }
    if (longerThan(input.idempotencyKey, MAX_KEY_LENGTH)) throw invalidArgument(`${where}idempotency_key is longer than ${MAX_KEY_LENGTH} characters`);
    if (longerThan(input.orderingKey, MAX_KEY_LENGTH)) throw invalidArgument(`${where}ordering_key is longer than ${MAX_KEY_LENGTH} characters`);
    if (exceedsDepth(input.payload, MAX_JSON_DEPTH)) throw invalidArgument(`${where}payload nests deeper than ${MAX_JSON_DEPTH} levels`);
    const payloadJson = JSON.stringify(input.payload ?? {});
    const size = Buffer.byteLength(payloadJson);
    if (size > MAX_PAYLOAD_BYTES) {
      throw new PayloadTooLargeError(`${where}payload is ${size} bytes; the limit is ${MAX_PAYLOAD_BYTES} bytes (256 KB)`);
    }
    return {
      eventType: input.eventType,
      payloadJson,
      idempotencyKey: input.idempotencyKey || null,
      orderingKey: input.orderingKey || null,
    };
  }

  /**
   * Commits the events and one delivery per subscribed webhook in one statement, then hands the
   * deliveries to the feed. Once this returns, every delivery exists in Postgres: a feed that fails
   * afterwards only slows them down.
   */
  async function ingest(tenantId: string, batch: Accepted[]): Promise<{ row: EventRow; duplicate: boolean }[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        const { results, jobs } = await ingestOnce(tenantId, batch);
        await deps.feed.publish(jobs);
        return results;
      } catch (err) {
        // Two callers raced on one idempotency key: the loser starts over and finds the winner's event.
        // A deadlock or serialization failure rolled the statement back whole: starting over is safe.
        if ((isUniqueViolation(err) || isTransactionConflict(err)) && attempt < 3) continue;
        throw err;
      }
    }
  }

  // One ingest at a time per tenant, taking every call that arrived meanwhile: under load a commit
  // serves dozens of events, and a tenant's seq reservations never wait on each other's locks. Up to
  // 16 MB of payloads: they travel as one parameter, and 500 events of 256 KB would make it 128 MB.
  const groupCommit = new GroupCommit<Accepted, { row: EventRow; duplicate: boolean }>(ingest, 500, (e) => e.payloadJson.length, MAX_INGEST_PAYLOAD_CHARS);

  const subscriberLists = new SubscriberLists();

  async function ingestOnce(tenantId: string, batch: Accepted[]) {
    const keys = [...new Set(batch.flatMap((e) => (e.idempotencyKey ? [e.idempotencyKey] : [])))];
    const now = new Date();
    const claims = await events.findEventsByIdempotencyKeys(db, tenantId, keys);
    // A key reused after the TTL makes a new event, as it would once housekeeping had forgotten it.
    const claimedSince = new Date(now.getTime() - deps.eventTtlMs);
    const expired = claims.filter((e) => e.claimed_at < claimedSince);
    if (expired.length > 0) await events.releaseIdempotencyKeys(db, tenantId, expired.map((e) => e.idempotency_key!), claimedSince);
    const existing = new Map(claims.filter((e) => e.claimed_at >= claimedSince).map((e) => [e.idempotency_key!, e]));

    const results: { row: EventRow; duplicate: boolean }[] = [];
    const fresh: EventRow[] = [];
    const seenKeys = new Map<string, EventRow>();
    for (const input of batch) {
      const earlier = input.idempotencyKey ? (existing.get(input.idempotencyKey) ?? seenKeys.get(input.idempotencyKey)) : undefined;
      if (earlier) {
        results.push({ row: earlier, duplicate: true });
        continue;
      }
      const row: EventRow = {
        id: newId("evt"),
        tenant_id: tenantId,
        event_type: input.eventType,
        payload: input.payloadJson,
        idempotency_key: input.idempotencyKey,
        ordering_key: input.orderingKey,
        delivery_count: 0,
        created_at: now,
      };
      if (input.idempotencyKey) seenKeys.set(input.idempotencyKey, row);
      fresh.push(row);
      results.push({ row, duplicate: false });
    }
    if (fresh.length === 0) return { results, jobs: [] };

    const patterns = [...new Set(fresh.flatMap((e) => patternsMatching(e.event_type)))];
    const expiresAt = new Date(now.getTime() + deps.eventTtlMs);
    const listKey = SubscriberLists.key(tenantId, patterns);
    for (let plans = 1; ; plans++) {
      let subscribers = subscriberLists.get(listKey);
      if (!subscribers) {
        subscribers = await findSubscribers(db, tenantId, patterns);
        subscriberLists.set(listKey, subscribers);
      }
      const deliveries = planDeliveries(subscribers, fresh);
      const written = await writeIngest(db, { tenantId, patterns, subscribers, events: fresh, deliveries, createdAt: now, expiresAt });
      if (written === null) {
        // A subscriber was added, changed or removed since the list was read: read it again and re-plan.
        subscriberLists.forget(listKey, subscribers);
        if (plans < MAX_INGEST_PLANS) continue;
        throw aborted(`the tenant's webhooks changed during ${MAX_INGEST_PLANS} attempts to publish; nothing was published, try again`);
      }
      const freshById = new Map(fresh.map((e) => [e.id, e]));
      const jobs: DeliveryJob[] = deliveries.map((d, i) => {
        const event = freshById.get(d.eventId)!;
        return {
          deliveryId: d.id,
          webhookId: d.webhookId,
          shard: d.shard,
          seq: written.seqs[i]!,
          orderingKey: d.orderingKey,
          eventId: event.id,
          eventType: event.event_type,
          createdAt: now.getTime(),
          payload: event.payload,
          attempts: 0,
          nextAttemptAt: now.getTime(),
          expiresAt: expiresAt.getTime(),
          // Left out while 0, as it is for most webhooks: every byte of a head travels through NATS.
          ...(written.requeues[i] ? { requeues: written.requeues[i] } : {}),
        };
      });
      eventsIngested.inc(fresh.length);
      deliveriesCreated.inc(deliveries.length);
      return { results, jobs };
    }
  }

  function published({ row, duplicate }: { row: EventRow; duplicate: boolean }): PublishEventResponse {
    // The caller has the payload: echoing it back would cost a parse and a serialisation per event.
    return create(PublishEventResponseSchema, { event: toEvent(row, false), duplicate, eventId: row.id });
  }

  return {
    async publishEvent(principal: Principal, req: PublishEventRequest): Promise<PublishEventResponse> {
      const [result] = await groupCommit.submit(principal.tenantId, [accept(req, "")]);
      return published(result!);
    },

    async publishEvents(principal: Principal, req: PublishEventsRequest): Promise<PublishEventsResponse> {
      if (req.events.length === 0) throw invalidArgument("events must hold at least one event");
      if (req.events.length > MAX_BATCH) throw invalidArgument(`events holds ${req.events.length} events; the limit is ${MAX_BATCH}`);
      const accepted = req.events.map((e: EventInput, i) => accept(e, `events[${i}].`));
      const results = await groupCommit.submit(principal.tenantId, accepted);
      return create(PublishEventsResponseSchema, {
        events: results.map(published),
      });
    },

    async getEvent(principal: Principal, req: GetEventRequest): Promise<GetEventResponse> {
      const row = /^evt_[0-9a-z]{26}$/.test(req.eventId) ? await events.getEvent(db, principal.tenantId, req.eventId) : undefined;
      if (!row) throw notFound("event", JSON.stringify(req.eventId));
      return create(GetEventResponseSchema, { event: toEvent(row) });
    },

    async listEvents(principal: Principal, req: ListEventsRequest): Promise<ListEventsResponse> {
      const typeError = req.eventType ? validateEventType(req.eventType) : null;
      if (typeError) throw invalidArgument(`event_type: ${typeError}`);
      const page = readPage(req);
      const rows = await events.listEvents(db, principal.tenantId, req.eventType, page.afterId, page.limit);
      const { items, nextPageToken } = pageOf(rows, page);
      return create(ListEventsResponseSchema, { events: items.map((row) => toEvent(row)), nextPageToken });
    },
  };
}

export function toEvent(row: EventRow, withPayload = true): Event {
  return create(EventSchema, {
    eventId: row.id,
    eventType: row.event_type,
    payload: withPayload ? (JSON.parse(row.payload) as JsonObject) : undefined,
    idempotencyKey: row.idempotency_key ?? "",
    orderingKey: row.ordering_key ?? "",
    createdAt: timestampFromDate(row.created_at),
    deliveryCount: row.delivery_count,
  });
}
