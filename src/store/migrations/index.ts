import type { Migration, MigrationProvider } from "kysely";
import * as foundation from "./2026-11-28-001-foundation.js";
import * as delivery from "./2026-11-28-002-delivery.js";
import * as signatureScheme from "./2026-11-29-003-signature-scheme.js";
import * as retrySchedule from "./2026-11-29-004-retry-schedule.js";
import * as dailyPartitions from "./2026-11-29-005-daily-partitions.js";
import * as endpointHealth from "./2026-11-29-006-endpoint-health-and-replays.js";
import * as payloadLz4 from "./2026-11-29-007-payload-lz4.js";
import * as deploymentSettings from "./2026-12-04-008-deployment-settings.js";
import * as webhookRequeues from "./2026-12-05-009-webhook-requeues.js";

/** Listed explicitly: a folder-reading provider breaks under bundlers and tsx alike. */
const migrations: Record<string, Migration> = {
  "2026-11-28-001-foundation": foundation,
  "2026-11-28-002-delivery": delivery,
  "2026-11-29-003-signature-scheme": signatureScheme,
  "2026-11-29-004-retry-schedule": retrySchedule,
  "2026-11-29-005-daily-partitions": dailyPartitions,
  "2026-11-29-006-endpoint-health-and-replays": endpointHealth,
  "2026-11-29-007-payload-lz4": payloadLz4,
  "2026-12-04-008-deployment-settings": deploymentSettings,
  "2026-12-05-009-webhook-requeues": webhookRequeues,
};

export const migrationProvider: MigrationProvider = {
  getMigrations: async () => migrations,
};
