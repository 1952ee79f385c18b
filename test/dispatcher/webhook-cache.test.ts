// The dispatcher's webhook cache on Postgres and on the embedded PGlite: an attempt never uses settings
// confirmed longer than the ttl ago, and a confirmation of an unchanged row costs its version, not the row.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import pino from "pino";
import { SecretBox } from "../../src/core/secret-box.js";
import { createWebhookCache } from "../../src/dispatcher/webhook-cache.js";
import { webhookReads } from "../../src/metrics.js";
import type { Store } from "../../src/store/db.js";
import { DEFAULT_TENANT_ID } from "../../src/store/tenants.js";
import { insertWebhook, updateWebhook } from "../../src/store/webhooks.js";
import { suiteStore } from "../support/store.js";
import { sleep } from "../support/wait.js";

const TTL_MS = 100;
const box = SecretBox.fromEncodedKey(SecretBox.generateEncodedKey());
/** What the cache logs, kept for the tests that look at it. */
const logged: { level: number; msg: string; webhookIds?: string[] }[] = [];
const log = pino({ level: "info" }, { write: (line: string) => void logged.push(JSON.parse(line)) });
const caches: ReturnType<typeof createWebhookCache>[] = [];
after(() => caches.forEach((cache) => cache.close()));

async function reads(): Promise<{ changed: number; unchanged: number }> {
  const { values } = await webhookReads.get();
  const of = (result: string) => values.find((v) => v.labels.result === result)?.value ?? 0;
  return { changed: of("changed"), unchanged: of("unchanged") };
}

/** Reads counted while `work` runs. */
async function counting(work: () => Promise<unknown>): Promise<{ changed: number; unchanged: number }> {
  const before = await reads();
  await work();
  const later = await reads();
  return { changed: later.changed - before.changed, unchanged: later.unchanged - before.unchanged };
}

async function addWebhook(store: Store, id: string, secrets: { plain: string; expiresAt: Date | null }[], sealer = box): Promise<void> {
  await insertWebhook(store.db, {
    id,
    tenant_id: DEFAULT_TENANT_ID,
    url: `https://hooks.example.com/${id}`,
    event_types: ["order.created"],
    status: "active",
    description: "",
    signing_secrets: JSON.stringify(secrets.map((s) => ({ secret: sealer.seal(s.plain, id), expires_at: s.expiresAt?.toISOString() ?? null }))),
    shard: 1,
    public_key: null,
    retry_schedule: null,
    updated_at: new Date(),
  });
}

function checks(getStore: () => Store, label: string) {
  const newCache = () => {
    const cache = createWebhookCache(getStore().db, box, log, TTL_MS);
    caches.push(cache);
    return cache;
  };

  test("a webhook is read once, then confirmed by its version after each ttl; a change reaches the first ask after the ttl", async () => {
    const id = `wh_${label}_change`;
    await addWebhook(getStore(), id, [{ plain: "whsec_first", expiresAt: null }]);
    const cache = newCache();
    let seen = await counting(async () => {
      const webhook = await cache.get(id);
      assert.equal(webhook?.url, `https://hooks.example.com/${id}`);
      assert.deepEqual(webhook?.secrets, ["whsec_first"], "the secret, opened");
    });
    assert.deepEqual(seen, { changed: 1, unchanged: 0 }, "the first ask reads the row");

    seen = await counting(() => Promise.all([cache.get(id), cache.get(id)]));
    assert.deepEqual(seen, { changed: 0, unchanged: 0 }, "within the ttl nothing is read");

    await sleep(TTL_MS + 20);
    seen = await counting(async () => assert.equal((await cache.get(id))?.url, `https://hooks.example.com/${id}`));
    assert.deepEqual(seen, { changed: 0, unchanged: 1 }, "after the ttl the unchanged row is confirmed by its version");

    await updateWebhook(getStore().db, id, { url: "https://hooks.example.com/moved", status: "paused" });
    await sleep(TTL_MS + 20);
    seen = await counting(async () => {
      const webhook = await cache.get(id);
      assert.equal(webhook?.url, "https://hooks.example.com/moved");
      assert.equal(webhook?.status, "paused");
    });
    assert.deepEqual(seen, { changed: 1, unchanged: 0 }, "a changed row is read again");
  });

  test("a rotated-out secret stops signing when its grace period ends, with no change to the row", async () => {
    const id = `wh_${label}_rotated`;
    await addWebhook(getStore(), id, [
      { plain: "whsec_new", expiresAt: null },
      { plain: "whsec_old", expiresAt: new Date(Date.now() + 300) },
    ]);
    const cache = newCache();
    assert.deepEqual((await cache.get(id))?.secrets, ["whsec_new", "whsec_old"]);
    await sleep(300 + TTL_MS + 20);
    const seen = await counting(async () => assert.deepEqual((await cache.get(id))?.secrets, ["whsec_new"]));
    assert.deepEqual(seen, { changed: 0, unchanged: 1 });
  });

  test("an id with no row is undefined, and stays so; a forgotten webhook is read again at once", async () => {
    const cache = newCache();
    assert.equal(await cache.get(`wh_${label}_none`), undefined);
    await sleep(TTL_MS + 20);
    assert.equal(await cache.get(`wh_${label}_none`), undefined);

    const id = `wh_${label}_forgotten`;
    await addWebhook(getStore(), id, [{ plain: "whsec_x", expiresAt: null }]);
    assert.equal((await cache.get(id))?.status, "active");
    await updateWebhook(getStore().db, id, { status: "deleted" });
    cache.forget(id);
    assert.equal((await cache.get(id))?.status, "deleted", "within the ttl, after forget");
  });

  test("a webhook whose secret does not open waits alone: the others read in the same round are answered", async () => {
    const broken = `wh_${label}_a_broken`;
    const healthy = `wh_${label}_b_healthy`;
    // Sealed under another key: what a row written by a deployment with another WEBHOOKD_ENCRYPTION_KEY holds.
    await addWebhook(getStore(), broken, [{ plain: "whsec_x", expiresAt: null }], SecretBox.fromEncodedKey(SecretBox.generateEncodedKey()));
    await addWebhook(getStore(), healthy, [{ plain: "whsec_y", expiresAt: null }]);
    const cache = newCache();
    let brokenAnswered = false;
    void cache.get(broken).then(() => (brokenAnswered = true));
    const answer = await Promise.race([cache.get(healthy), sleep(2_000).then(() => "no answer" as const)]);
    assert.ok(answer !== "no answer", "the healthy webhook, read in the same round after the broken one, is answered");
    assert.deepEqual(answer?.secrets, ["whsec_y"]);
    assert.equal(brokenAnswered, false, "the broken one is not answered: nothing could be signed for it");
    assert.ok(
      logged.some((l) => l.level === 50 && l.webhookIds?.includes(broken)),
      "the broken webhook is named in an error",
    );
    // Deleted, it needs no secret: its lane learns that it is gone and goes.
    await updateWebhook(getStore().db, broken, { status: "deleted" });
    assert.equal((await Promise.race([cache.get(broken), sleep(7_000).then(() => "no answer" as const)]) as { status?: string })?.status, "deleted");
  });

  test("hundreds of webhooks asked for in one turn are read in chunks, each with its own row", async () => {
    const ids = Array.from({ length: 520 }, (_, i) => `wh_${label}_many_${String(i).padStart(3, "0")}`);
    for (const id of ids) await addWebhook(getStore(), id, [{ plain: `whsec_${id}`, expiresAt: null }]);
    const cache = newCache();
    let seen = await counting(async () => {
      const webhooks = await Promise.all(ids.map((id) => cache.get(id)));
      assert.deepEqual(webhooks.map((w) => w?.secrets[0]), ids.map((id) => `whsec_${id}`));
    });
    assert.deepEqual(seen, { changed: 520, unchanged: 0 });
    await updateWebhook(getStore().db, ids[517]!, { url: "https://hooks.example.com/changed" });
    await sleep(TTL_MS + 20);
    seen = await counting(async () => {
      const webhooks = await Promise.all(ids.map((id) => cache.get(id)));
      assert.deepEqual(webhooks.filter((w) => w?.url === "https://hooks.example.com/changed").map((w) => w!.id), [ids[517]]);
    });
    assert.deepEqual(seen, { changed: 1, unchanged: 519 }, "only the changed row is read whole");
  });
}

describe("webhook cache on Postgres", () => {
  checks(suiteStore("postgres", "webhook_cache"), "pg");
});

describe("webhook cache on PGlite", () => {
  checks(suiteStore("pglite", "webhook-cache"), "lite");
});
