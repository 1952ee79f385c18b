import type { UrlPolicy } from "../core/url-policy.js";
import type { SecretBox } from "../core/secret-box.js";
import type { DeliveryFeed } from "../queue/feed.js";
import type { Db } from "../store/db.js";
import { createAdminService } from "./admin-service.js";
import { createAuthenticator, type Authenticator } from "./auth.js";
import { createDeliveryService } from "./delivery-service.js";
import { createEventService } from "./event-service.js";
import { createWebhookService, type WebhookServiceDeps } from "./webhook-service.js";
import { createReplayService } from "./replay-service.js";

export interface ServiceDeps {
  db: Db;
  feed: DeliveryFeed;
  urlPolicy: UrlPolicy;
  shardCount: number;
  eventTtlMs: number;
  /** Default pace of a replay, deliveries per second. */
  replayRate: number;
  secretGraceMs: number;
  bootstrapAdminKey: string | undefined;
  secretBox: SecretBox;
  apiRateLimit: number;
  resolve?: WebhookServiceDeps["resolve"];
}

/** The service layer, one object per resource; every door (Connect, REST, CLI through Connect) uses these. */
export interface Services {
  auth: Authenticator;
  webhooks: ReturnType<typeof createWebhookService>;
  events: ReturnType<typeof createEventService>;
  deliveries: ReturnType<typeof createDeliveryService>;
  replays: ReturnType<typeof createReplayService>;
  admin: ReturnType<typeof createAdminService>;
}

export function createServices(deps: ServiceDeps): Services {
  const auth = createAuthenticator({ db: deps.db, bootstrapAdminKey: deps.bootstrapAdminKey, rateLimit: deps.apiRateLimit });
  return {
    auth,
    webhooks: createWebhookService(deps),
    events: createEventService(deps),
    deliveries: createDeliveryService(deps),
    replays: createReplayService(deps),
    admin: createAdminService({ db: deps.db, onKeyRevoked: () => auth.forget() }),
  };
}
