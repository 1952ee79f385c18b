import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import { AdminService } from "../../gen/webhook/v1/admin_pb.js";
import { DeliveryService } from "../../gen/webhook/v1/delivery_pb.js";
import { EventService } from "../../gen/webhook/v1/event_pb.js";
import { WebhookService } from "../../gen/webhook/v1/webhook_pb.js";
import type { Services } from "./services.js";

/** The Connect, gRPC and gRPC-Web door: each method authenticates, then calls the service layer. */
export function connectRoutes(services: Services) {
  const { auth } = services;
  const principal = (ctx: HandlerContext) => auth.authenticate(ctx.requestHeader);
  return (router: ConnectRouter) => {
    router.service(WebhookService, {
      createWebhook: async (req, ctx) => services.webhooks.createWebhook(await principal(ctx), req),
      getWebhook: async (req, ctx) => services.webhooks.getWebhook(await principal(ctx), req),
      listWebhooks: async (req, ctx) => services.webhooks.listWebhooks(await principal(ctx), req),
      updateWebhook: async (req, ctx) => services.webhooks.updateWebhook(await principal(ctx), req),
      deleteWebhook: async (req, ctx) => services.webhooks.deleteWebhook(await principal(ctx), req),
      rotateWebhookSecret: async (req, ctx) => services.webhooks.rotateWebhookSecret(await principal(ctx), req),
      replayWebhook: async (req, ctx) => services.replays.replayWebhook(await principal(ctx), req),
      getReplay: async (req, ctx) => services.replays.getReplay(await principal(ctx), req),
    });
    router.service(EventService, {
      publishEvent: async (req, ctx) => services.events.publishEvent(await principal(ctx), req),
      publishEvents: async (req, ctx) => services.events.publishEvents(await principal(ctx), req),
      getEvent: async (req, ctx) => services.events.getEvent(await principal(ctx), req),
      listEvents: async (req, ctx) => services.events.listEvents(await principal(ctx), req),
    });
    router.service(DeliveryService, {
      listDeliveries: async (req, ctx) => services.deliveries.listDeliveries(await principal(ctx), req),
      getDelivery: async (req, ctx) => services.deliveries.getDelivery(await principal(ctx), req),
      listDeliveryAttempts: async (req, ctx) => services.deliveries.listDeliveryAttempts(await principal(ctx), req),
      retryDelivery: async (req, ctx) => services.deliveries.retryDelivery(await principal(ctx), req),
    });
    router.service(AdminService, {
      createTenant: async (req, ctx) => services.admin.createTenant(await principal(ctx), req),
      listTenants: async (req, ctx) => services.admin.listTenants(await principal(ctx), req),
      createApiKey: async (req, ctx) => services.admin.createApiKey(await principal(ctx), req),
      revokeApiKey: async (req, ctx) => services.admin.revokeApiKey(await principal(ctx), req),
      listAuditLog: async (req, ctx) => services.admin.listAuditLog(await principal(ctx), req),
    });
  };
}
