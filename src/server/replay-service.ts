import { create } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { newId, isId } from "../core/ids.js";
import type { DeliveryFeed } from "../queue/feed.js";
import type { Db } from "../store/db.js";
import { loadPendingForLane } from "../store/deliveries.js";
import type { ReplayScope } from "../store/schema.js";
import { countRequeue, getWebhook } from "../store/webhooks.js";
import { recordAudit } from "../store/audit.js";
import * as replays from "../store/replays.js";
import {
  GetReplayResponseSchema,
  ReplayWebhookResponseSchema,
  type GetReplayRequest,
  type GetReplayResponse,
  type ReplayWebhookRequest,
  type ReplayWebhookResponse,
} from "../../gen/webhook/v1/webhook_pb.js";
import type { Principal } from "./auth.js";
import { toReplay } from "./convert.js";
import { againOnConflict, failedPrecondition, invalidArgument, notFound } from "./errors.js";

export const MAX_REPLAY_RATE = 10_000;
/** One delivery every 11.6 days; slower paces overflowed Postgres's intervals and answered a puzzling 400. */
export const MIN_REPLAY_RATE = 0.000001;

/** ReplayWebhook and GetReplay: deliveries of a time range put back in their lane, paced, and their progress. */
export function createReplayService(deps: { db: Db; feed: DeliveryFeed; eventTtlMs: number; replayRate: number }) {
  const { db } = deps;

  function validateScope(scope: string): ReplayScope {
    if (scope === "" || scope === "failed") return "failed";
    if (scope === "all") return "all";
    throw invalidArgument(`scope must be "failed" (failed and expired deliveries) or "all" (every final delivery) (got ${JSON.stringify(scope)})`);
  }

  function validateRate(rate: number): number {
    if (rate === 0) return deps.replayRate;
    if (!Number.isFinite(rate) || rate < MIN_REPLAY_RATE || rate > MAX_REPLAY_RATE) {
      throw invalidArgument(`rate_per_second must be from ${MIN_REPLAY_RATE.toFixed(6)} to ${MAX_REPLAY_RATE}, or 0 for the server's default (got ${rate})`);
    }
    return rate;
  }

  function validateRange(since: Timestamp | undefined, until: Timestamp | undefined, now: Date): { since: Date; until: Date } {
    if (!since) throw invalidArgument("since is required: the replay takes deliveries created from that time on");
    const from = timestampDate(since);
    const to = until ? timestampDate(until) : now;
    if (Number.isNaN(from.getTime())) throw invalidArgument("since is out of range");
    if (Number.isNaN(to.getTime())) throw invalidArgument("until is out of range");
    if (from.getTime() > now.getTime()) throw invalidArgument(`since is in the future (${from.toISOString()})`);
    if (to.getTime() <= from.getTime()) throw invalidArgument(`until (${to.toISOString()}) must be after since (${from.toISOString()})`);
    return { since: from, until: to };
  }

  async function findWebhook(principal: Principal, id: string) {
    const webhook = isId(id, "wh") ? await getWebhook(db, principal.tenantId, id) : undefined;
    if (!webhook) throw notFound("webhook", JSON.stringify(id));
    return webhook;
  }

  return {
    async replayWebhook(principal: Principal, req: ReplayWebhookRequest): Promise<ReplayWebhookResponse> {
      const scope = validateScope(req.scope);
      const ratePerSecond = validateRate(req.ratePerSecond);
      const range = validateRange(req.since, req.until, new Date());
      const webhook = await findWebhook(principal, req.webhookId);
      const { replay, progress } = await againOnConflict(() => db.transaction().execute(async (trx) => {
        const { replay: row, late } = await replays.startReplay(trx, {
          id: newId("rpl"),
          tenantId: principal.tenantId,
          webhookId: webhook.id,
          scope,
          ...range,
          ratePerSecond,
          eventTtlMs: deps.eventTtlMs,
        });
        if (late > 0) {
          // Thrown inside the transaction: nothing is put back.
          throw failedPrecondition(
            `at ${ratePerSecond} per second, ${late} of the ${row.total} deliveries would come due after their records are removed ` +
              `(retention: the event TTL and about two days); raise rate_per_second or narrow since/until`,
          );
        }
        await recordAudit(trx, {
          tenantId: principal.tenantId,
          actor: principal.actor,
          action: "webhook.replay",
          resourceId: webhook.id,
          details: { replay_id: row.id, scope, since: range.since.toISOString(), until: range.until.toISOString(), total: row.total, rate_per_second: ratePerSecond },
        });
        // Locked as DeleteWebhook locks it, and only now, so ingest into the webhook never waits on a
        // long replay: a delete that committed meanwhile rolls the replay back, and one still to come
        // waits for this commit, then cancels what the replay put back. The count it bumps reaches the
        // lanes with the jobs of the next ingest, which waits for this commit: that event does not go
        // before the deliveries put back.
        if (!(await countRequeue(trx, principal.tenantId, webhook.id))) throw notFound("webhook", JSON.stringify(req.webhookId));
        // The answer is the replay as this call left it, read in its transaction: once the lane hears of
        // it (below), the first deliveries may go before a later read, and the answer showed 9 of 10 pending.
        return { replay: row, progress: await replays.replayProgress(trx, row.id) };
      }));
      // The lane learns of it through the feed: the webhook's lowest pending delivery, with the new count
      // of requeues, makes it read from the start, and it sends what the replay put back in seq order as
      // each one's time comes. If that fails, the next event's job tells it, or its owner's sweep.
      const { jobs, requeues } = await loadPendingForLane(db, webhook.id, 0, 1);
      await deps.feed.publish(jobs.map((j) => ({ ...j, requeues })));
      return create(ReplayWebhookResponseSchema, { replay: toReplay(replay, progress) });
    },

    async getReplay(principal: Principal, req: GetReplayRequest): Promise<GetReplayResponse> {
      const webhook = await findWebhook(principal, req.webhookId);
      const row = isId(req.replayId, "rpl") ? await replays.getReplay(db, principal.tenantId, webhook.id, req.replayId) : undefined;
      if (!row) throw notFound("replay", JSON.stringify(req.replayId));
      return create(GetReplayResponseSchema, { replay: toReplay(row, await replays.replayProgress(db, row.id)) });
    },
  };
}
