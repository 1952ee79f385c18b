import { Counter, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export const registry = new Registry();
collectDefaultMetrics({ register: registry });

export const eventsIngested = new Counter({
  name: "webhookd_events_ingested_total",
  help: "Events accepted (idempotent repeats not counted)",
  registers: [registry],
});

export const authFailures = new Counter({
  name: "webhookd_auth_failures_total",
  help: "API calls refused for a missing, malformed, unknown or revoked key, or a tenant mismatch",
  registers: [registry],
});

export const deliveriesCreated = new Counter({
  name: "webhookd_deliveries_created_total",
  help: "Deliveries queued at ingest",
  registers: [registry],
});

export const attemptsMade = new Counter({
  name: "webhookd_delivery_attempts_total",
  help: "Delivery attempts by the status they left the delivery in",
  labelNames: ["status"] as const,
  registers: [registry],
});

export const webhookReads = new Counter({
  name: "webhookd_dispatcher_webhook_reads_total",
  help: "Webhooks the dispatcher confirmed before sending, by whether the row had changed since it last read it",
  labelNames: ["result"] as const,
  registers: [registry],
});

export const attemptDuration = new Histogram({
  name: "webhookd_delivery_attempt_duration_seconds",
  help: "Duration of delivery attempts",
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  registers: [registry],
});

export const deliveryLatency = new Histogram({
  name: "webhookd_delivery_latency_seconds",
  help: "From event creation to a successful delivery",
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300, 3600],
  registers: [registry],
});
