import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeJobs, encodeJobs, type DeliveryJob } from "../../src/queue/job.js";

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

test("a feed message carries jobs and their payloads verbatim, whatever characters they hold", () => {
  const jobs = [
    job(1, JSON.stringify({ quote: 'say "hi"', slash: "a\\b", line: "one\ntwo" })),
    job(2, JSON.stringify({ text: "naïve café — 東京 🚀" }), { orderingKey: "key\nwith newline", paceMs: 50 }),
    job(3, "{}"),
    job(4, JSON.stringify({ pad: "x".repeat(5_000) })),
  ];
  assert.deepEqual(decodeJobs(encodeJobs(jobs)), jobs);
});

test("a message decodes from a view into a larger buffer, as the NATS client hands it over", () => {
  const jobs = [job(1, '{"a":1}'), job(2, '{"b":"🚀"}')];
  const bytes = encodeJobs(jobs);
  const larger = Buffer.concat([Buffer.from("garbage before"), bytes, Buffer.from("garbage after")]);
  const view = new Uint8Array(larger.buffer, larger.byteOffset + 14, bytes.byteLength);
  assert.deepEqual(decodeJobs(view), jobs);
});

test("a message that is cut short or has no heads line is refused, not half-read", () => {
  const bytes = Buffer.from(encodeJobs([job(1, '{"a":1}'), job(2, '{"b":2}')]));
  assert.throws(() => decodeJobs(bytes.subarray(0, bytes.length - 3)), /shorter than its heads say/);
  assert.throws(() => decodeJobs(Buffer.from(JSON.stringify(job(1, "{}")))), /without its heads line/);
});
