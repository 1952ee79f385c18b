import { after, before } from "node:test";
import fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { migrate, openStore, type Store } from "../../src/store/db.js";
import { ensureDefaultTenant } from "../../src/store/tenants.js";
import { createTestDatabase } from "./postgres.js";

/**
 * A migrated store with the default tenant for the tests of the enclosing describe: opened before them
 * on a fresh Postgres database or on PGlite in a fresh directory, closed and removed after them. Returns
 * a getter, as the store exists only once the suite's `before` has run.
 */
export function suiteStore(kind: "postgres" | "pglite", label: string, options: { poolSize?: number } = {}): () => Store {
  let store: Store | undefined;
  let cleanup: (() => Promise<void>) | undefined;
  before(async () => {
    if (kind === "postgres") {
      const database = await createTestDatabase(label);
      cleanup = () => database.drop();
      store = await openStore({ databaseUrl: database.url, dataDir: os.tmpdir(), poolSize: options.poolSize });
    } else {
      const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), `webhookd-${label}-`));
      cleanup = () => fs.rm(dataDir, { recursive: true, force: true });
      store = await openStore({ databaseUrl: undefined, dataDir });
    }
    await migrate(store.db);
    await ensureDefaultTenant(store.db);
  });
  after(async () => {
    await store?.close();
    await cleanup?.();
  });
  return () => {
    if (!store) throw new Error("the suite's store is opened in its before hook");
    return store;
  };
}
