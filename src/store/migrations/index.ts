import type { Migration, MigrationProvider } from "kysely";
import * as foundation from "./2026-11-28-001-foundation.js";
import * as delivery from "./2026-11-28-002-delivery.js";
import * as signatureScheme from "./2026-11-29-003-signature-scheme.js";

/** Listed explicitly: a folder-reading provider breaks under bundlers and tsx alike. */
const migrations: Record<string, Migration> = {
  "2026-11-28-001-foundation": foundation,
  "2026-11-28-002-delivery": delivery,
  "2026-11-29-003-signature-scheme": signatureScheme,
};

export const migrationProvider: MigrationProvider = {
  getMigrations: async () => migrations,
};
