import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { KeyedRateLimiter, TokenBucket } from "../../src/core/token-bucket.js";

test("a full bucket allows a burst, then one take per 1/rate seconds", () => {
  const bucket = new TokenBucket(10, 5, 0);
  for (let i = 0; i < 5; i++) assert.equal(bucket.take(0), 0);
  assert.equal(bucket.take(0), 100);
  assert.equal(bucket.take(50), 50);
  assert.equal(bucket.take(100), 0);
  assert.equal(bucket.take(100), 100);
});

test("over any long window the takes granted never exceed burst + rate × time", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 200 }),
      fc.integer({ min: 1, max: 50 }),
      fc.array(fc.integer({ min: 0, max: 100 }), { minLength: 1, maxLength: 300 }),
      (rate, burst, gaps) => {
        const bucket = new TokenBucket(rate, burst, 0);
        let now = 0;
        let granted = 0;
        for (const gap of gaps) {
          now += gap;
          if (bucket.take(now) === 0) granted++;
        }
        assert.ok(granted <= burst + Math.floor((rate * now) / 1000) + 1);
      },
    ),
  );
});

test("keys have buckets of their own", () => {
  const limiter = new KeyedRateLimiter(1, 1);
  assert.equal(limiter.take("a", 0), 0);
  assert.ok(limiter.take("a", 0) > 0);
  assert.equal(limiter.take("b", 0), 0);
});
