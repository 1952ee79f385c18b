import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { DeliveryFeed } from "../queue/feed.js";
import type { Db } from "../store/db.js";
import * as deliveries from "../store/deliveries.js";
import { loadPendingForLane } from "../store/deliveries.js";
import { getWebhook } from "../store/webhooks.js";
import { recordAudit } from "../store/audit.js";
import { REQUEUE_MARGIN_MS, retentionEnd } from "../store/partitions.js";
import type { DeliveryStatus } from "../store/schema.js";
import {
  DeliveryAttemptSchema,
  DeliverySchema,
  GetDeliveryResponseSchema,
  ListDeliveriesResponseSchema,
  ListDeliveryAttemptsResponseSchema,
  RetryDeliveryResponseSchema,
  type Delivery,
  type GetDeliveryRequest,
  type GetDeliveryResponse,
  type ListDeliveriesRequest,
  type ListDeliveriesResponse,
  type ListDeliveryAttemptsRequest,
  type ListDeliveryAttemptsResponse,
  type RetryDeliveryRequest,
  type RetryDeliveryResponse,
} from "../../gen/webhook/v1/delivery_pb.js";
import type { Principal } from "./auth.js";
import { againOnConflict, failedPrecondition, invalidArgument, notFound } from "./errors.js";
import { pageOf, readPage } from "./paging.js";

const STATUSES: DeliveryStatus[] = ["pending", "succeeded", "failed", "expired", "cancelled"];
const DELIVERY_ID = /^dlv_[0-9a-z]{26}$/;

type DeliveryRow = NonNullable<Awaited<ReturnType<typeof deliveries.getDelivery>>>;

export type DeliveryService = ReturnType<typeof createDeliveryService>;

export function createDeliveryService(deps: { db: Db; feed: DeliveryFeed; eventTtlMs: number }) {
  const { db } = deps;

  async function find(principal: Principal, id: string): Promise<DeliveryRow> {
    const row = DELIVERY_ID.test(id) ? await deliveries.getDelivery(db, principal.tenantId, id) : undefined;
    if (!row) throw notFound("delivery", JSON.stringify(id));
    return row;
  }

  return {
    async listDeliveries(principal: Principal, req: ListDeliveriesRequest): Promise<ListDeliveriesResponse> {
      if (!req.webhookId) throw invalidArgument("webhook_id is required");
      if (req.status && !STATUSES.includes(req.status as DeliveryStatus)) {
        throw invalidArgument(`status must be one of ${STATUSES.join(", ")} (got ${JSON.stringify(req.status)})`);
      }
      const page = readPage(req);
      const webhook = /^wh_[0-9a-z]{26}$/.test(req.webhookId) ? await getWebhook(db, principal.tenantId, req.webhookId) : undefined;
      if (!webhook) throw notFound("webhook", JSON.stringify(req.webhookId));
      const rows = await deliveries.listDeliveries(db, principal.tenantId, req.webhookId, req.status, page.afterId, page.limit);
      const { items, nextPageToken } = pageOf(rows, page);
      return create(ListDeliveriesResponseSchema, { deliveries: items.map(toDelivery), nextPageToken });
    },

    async getDelivery(principal: Principal, req: GetDeliveryRequest): Promise<GetDeliveryResponse> {
      return create(GetDeliveryResponseSchema, { delivery: toDelivery(await find(principal, req.deliveryId)) });
    },

    async listDeliveryAttempts(principal: Principal, req: ListDeliveryAttemptsRequest): Promise<ListDeliveryAttemptsResponse> {
      const delivery = await find(principal, req.deliveryId);
      const rows = await deliveries.listAttempts(db, delivery.id);
      return create(ListDeliveryAttemptsResponseSchema, {
        attempts: rows.map((a) =>
          create(DeliveryAttemptSchema, {
            attemptId: a.id,
            deliveryId: a.delivery_id,
            attemptedAt: timestampFromDate(a.attempted_at),
            durationMs: a.duration_ms,
            responseCode: a.response_code ?? 0,
            error: a.error ?? "",
            responseBody: a.response_body ?? "",
          }),
        ),
      });
    },

    async retryDelivery(principal: Principal, req: RetryDeliveryRequest): Promise<RetryDeliveryResponse> {
      const delivery = await find(principal, req.deliveryId);
      if (delivery.status === "pending") {
        // Already queued: retrying it again changes nothing.
        return create(RetryDeliveryResponseSchema, { delivery: toDelivery(delivery) });
      }
      if (delivery.status !== "failed" && delivery.status !== "expired") {
        throw failedPrecondition(`delivery ${delivery.id} is ${delivery.status}; only failed or expired deliveries can be retried`);
      }
      const removedAt = retentionEnd(delivery.created_at.getTime(), deps.eventTtlMs);
      if (removedAt - REQUEUE_MARGIN_MS <= Date.now()) {
        throw failedPrecondition(`delivery ${delivery.id} is past its retention: its records are removed at ${new Date(removedAt).toISOString()}`);
      }
      await refuseIfWebhookDeleted(db, principal, delivery);
      // The answer is the delivery as this call left it, read in its transaction: once committed, a
      // dispatcher may deliver it before a second read, and the caller would not see what it did.
      const requeued = await againOnConflict(() => db.transaction().execute(async (trx) => {
        if (!(await deliveries.requeueDelivery(trx, delivery.id, deps.eventTtlMs))) {
          // The webhook may have been deleted since the check above; the update waited for that.
          await refuseIfWebhookDeleted(trx, principal, delivery);
          throw failedPrecondition(`delivery ${delivery.id} changed state meanwhile; look at it again`);
        }
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "delivery.retry",
          resourceId: delivery.id,
          details: { previous_status: delivery.status },
        });
        return (await deliveries.getDelivery(trx, principal.tenantId, delivery.id))!;
      }));
      // The lane learns of it through the feed, with the webhook's new count of requeues, which makes it
      // read from the start before it sends on (see Lane); if that fails, the next event's job tells it,
      // or its owner's sweep finds it due in Postgres.
      const { jobs, requeues } = await loadPendingForLane(db, delivery.webhook_id, delivery.seq - 1, 1);
      await deps.feed.publish(jobs.filter((j) => j.deliveryId === delivery.id).map((j) => ({ ...j, requeues })));
      return create(RetryDeliveryResponseSchema, { delivery: toDelivery(requeued) });
    },
  };
}

/** Nothing is sent to a deleted webhook, not even by hand; a paused or disabled one holds what it is given. */
async function refuseIfWebhookDeleted(db: Db, principal: Principal, delivery: DeliveryRow): Promise<void> {
  if (!(await getWebhook(db, principal.tenantId, delivery.webhook_id))) {
    throw failedPrecondition(`delivery ${delivery.id} cannot be retried: its webhook ${delivery.webhook_id} was deleted, and nothing is sent to a deleted webhook`);
  }
}

export function toDelivery(row: DeliveryRow): Delivery {
  return create(DeliverySchema, {
    deliveryId: row.id,
    eventId: row.event_id,
    webhookId: row.webhook_id,
    status: row.status,
    attempts: row.attempts,
    nextAttemptAt: row.status === "pending" ? timestampFromDate(row.next_attempt_at) : undefined,
    lastResponseCode: row.last_response_code ?? 0,
    lastError: row.last_error ?? "",
    createdAt: timestampFromDate(row.created_at),
    deliveredAt: row.delivered_at ? timestampFromDate(row.delivered_at) : undefined,
    seq: BigInt(row.seq),
    eventType: row.event_type,
  });
}
