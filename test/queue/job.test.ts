import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeJobHeads, encodeJobHeads, type DeliveryJob } from "../../src/queue/job.js";

function job(seq: number, payload: string, extra: Partial<DeliveryJob> = {}): DeliveryJob {
  return {
    deliveryId: `dlv_${String(seq).padStart(26, "0")}`,
    webhookId: "wh_01",
    shard: 3,
    seq,
    orderingKey: "",
    eventId: `evt_${seq}`,
    eventType: "order.created",
    createdAt: 1_764_000_000_000 + seq,
    payload,
    attempts: 0,
    nextAttemptAt: 1_764_000_000_000,
    expiresAt: 1_764_300_000_000,
    ...extra,
  };
}

test("a feed message carries the jobs without their payloads, everything else as it was", () => {
  const jobs = [
    job(1, JSON.stringify({ pad: "x".repeat(5_000) })),
    job(2, "{}", { orderingKey: "naïve café — 東京 🚀\nline", paceMs: 50, attempts: 3 }),
  ];
  const bytes = encodeJobHeads(jobs);
  assert.ok(bytes.byteLength < 1_000, `${bytes.byteLength} bytes for two jobs, one with a 5 KB payload`);
  assert.deepEqual(
    decodeJobHeads(bytes),
    jobs.map(({ payload: _payload, ...head }) => head),
  );
});

test("a message decodes from a view into a larger buffer, as the NATS client hands it over", () => {
  const jobs = [job(1, '{"a":1}'), job(2, '{"b":"🚀"}')];
  const bytes = encodeJobHeads(jobs);
  const larger = Buffer.concat([Buffer.from("garbage before"), bytes, Buffer.from("garbage after")]);
  const view = new Uint8Array(larger.buffer, larger.byteOffset + 14, bytes.byteLength);
  assert.deepEqual(decodeJobHeads(view).map((j) => j.deliveryId), jobs.map((j) => j.deliveryId));
});

test("a message that is not a list of job heads (an older format, a stray publish) is refused", () => {
  const oldFormat = Buffer.from(JSON.stringify(job(1, "{}")));
  assert.throws(() => decodeJobHeads(oldFormat), /not a list of job heads/);
  assert.throws(() => decodeJobHeads(Buffer.from('[{"seq":1}]')), /not a list of job heads/);
  assert.throws(() => decodeJobHeads(Buffer.from("[{")), SyntaxError);
});
