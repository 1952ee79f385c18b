import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, verify } from "node:crypto";
import { createTestDatabase } from "../support/postgres.js";
import { restClient, startTestApp, TEST_ADMIN_KEY } from "../support/app.js";
import { startReceiver, type Received } from "../support/receiver.js";

let db: Awaited<ReturnType<typeof createTestDatabase>>;
let server: Awaited<ReturnType<typeof startTestApp>>;
let receiver: Awaited<ReturnType<typeof startReceiver>>;

before(async () => {
  db = await createTestDatabase("ed25519");
  server = await startTestApp({ DATABASE_URL: db.url });
  receiver = await startReceiver();
});

after(async () => {
  await server?.app.stop();
  await receiver?.close();
  await db?.drop();
});

/** Verifies a v1a signature with Node's own crypto, from the whpk_ public key alone. */
function verifiesWith(entry: Received, publicKey: string): boolean {
  const raw = Buffer.from(publicKey.replace(/^whpk_/, ""), "base64");
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: raw.toString("base64url") }, format: "jwk" });
  const signed = Buffer.from(`${entry.headers["webhook-id"]}.${entry.headers["webhook-timestamp"]}.${entry.body}`);
  return String(entry.headers["webhook-signature"])
    .split(" ")
    .some((part) => part.startsWith("v1a,") && verify(null, signed, key, Buffer.from(part.slice(4), "base64")));
}

test("a v1a webhook is signed with ed25519 and verifiable from its public key alone", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  const created = await api("POST", "/webhooks", { url: receiver.url("/ed"), event_types: ["a.b"], signature_scheme: "v1a" });
  assert.equal(created.status, 201);
  assert.equal(created.body.signature_scheme, "v1a");
  assert.match(created.body.public_key, /^whpk_/);
  assert.equal(created.body.secret, undefined, "an asymmetric webhook has no shared secret to hand out");
  const fetched = await api("GET", `/webhooks/${created.body.webhook_id}`);
  assert.equal(fetched.body.public_key, created.body.public_key);

  await api("POST", "/events", { event_type: "a.b", payload: { n: 1 } });
  await receiver.waitFor(() => receiver.forPath("/ed").length === 1, 15_000, "the first delivery");
  const first = receiver.forPath("/ed")[0]!;
  assert.match(String(first.headers["webhook-signature"]), /^v1a,/);
  assert.ok(verifiesWith(first, created.body.public_key));

  const rotated = await api("POST", `/webhooks/${created.body.webhook_id}/rotate-secret`);
  assert.match(rotated.body.public_key, /^whpk_/);
  assert.notEqual(rotated.body.public_key, created.body.public_key);
  await new Promise((r) => setTimeout(r, 1_100)); // the dispatcher re-reads webhooks at most every second
  await api("POST", "/events", { event_type: "a.b", payload: { n: 2 } });
  await receiver.waitFor(() => receiver.forPath("/ed").length === 2, 15_000, "the second delivery");
  const second = receiver.forPath("/ed")[1]!;
  assert.equal(String(second.headers["webhook-signature"]).split(" ").length, 2);
  assert.ok(verifiesWith(second, rotated.body.public_key), "the new key signs");
  assert.ok(verifiesWith(second, created.body.public_key), "the old key still signs during the grace period");

  const tampered = { ...second, body: second.body.replace('"n":2', '"n":3') };
  assert.equal(verifiesWith(tampered, rotated.body.public_key), false);
});

test("an unknown signature scheme is refused and nothing is created", async () => {
  const api = restClient(server.url, TEST_ADMIN_KEY);
  const before = (await api("GET", "/webhooks")).body.webhooks.length;
  const bad = await api("POST", "/webhooks", { url: receiver.url("/x"), event_types: ["a.b"], signature_scheme: "v2" });
  assert.equal(bad.status, 400);
  assert.match(bad.body.error.message, /signature_scheme/);
  assert.equal((await api("GET", "/webhooks")).body.webhooks.length, before);
});
