import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  MAX_RETRY_AFTER_MS,
  MIN_RETRY_AFTER_MS,
  decideOutcome,
  deliveryStatusAfter,
  nextRetryDelay,
  parseRetryAfter,
  type AttemptOutcome,
  type AttemptResult,
} from '../../src/core/retry-policy.js';

const SCHEDULE = [5_000, 300_000, 1_800_000];
const NOW = new Date('2024-05-01T12:00:00.000Z');
const FAR = new Date('2024-06-01T00:00:00.000Z');
const middle = (): number => 0.5; // no jitter

function decide(result: AttemptResult, attemptsMade = 1, expiresAt = FAR): AttemptOutcome {
  return decideOutcome({ result, attemptsMade, schedule: SCHEDULE, now: NOW, expiresAt, random: middle });
}

function retryDelay(outcome: AttemptOutcome): number {
  assert.equal(outcome.kind, 'retry');
  return outcome.kind === 'retry' ? outcome.at.getTime() - NOW.getTime() : NaN;
}

test('nextRetryDelay walks the schedule and ends with null', () => {
  assert.equal(nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 1, random: middle }), 5_000);
  assert.equal(nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 2, random: middle }), 300_000);
  assert.equal(nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 3, random: middle }), 1_800_000);
  assert.equal(nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 4, random: middle }), null);
  assert.equal(nextRetryDelay({ schedule: [], attemptsMade: 1 }), null);
  assert.throws(() => nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 0 }), RangeError);
  assert.throws(() => nextRetryDelay({ schedule: SCHEDULE, attemptsMade: 1.5 }), RangeError);
});

test('nextRetryDelay jitter spans ±20% by default and can be disabled', () => {
  assert.equal(nextRetryDelay({ schedule: [10_000], attemptsMade: 1, random: () => 0 }), 8_000);
  assert.equal(nextRetryDelay({ schedule: [10_000], attemptsMade: 1, random: () => 0.999999 }), 12_000);
  assert.equal(nextRetryDelay({ schedule: [10_000], attemptsMade: 1, jitter: 0, random: () => 0 }), 10_000);
  assert.equal(nextRetryDelay({ schedule: [10_000], attemptsMade: 1, jitter: 0.5, random: () => 0 }), 5_000);
});

test('property: jittered delays stay within the band', () => {
  fc.assert(
    fc.property(
      fc.array(fc.nat({ max: 86_400_000 }), { minLength: 1, maxLength: 10 }),
      fc.nat({ max: 12 }),
      fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      (schedule, extra, r) => {
        const attemptsMade = 1 + extra;
        const delay = nextRetryDelay({ schedule, attemptsMade, random: () => r });
        const base = schedule[attemptsMade - 1];
        if (base === undefined) return delay === null;
        return delay !== null && delay >= Math.floor(base * 0.8) && delay <= Math.ceil(base * 1.2);
      },
    ),
  );
});

test('any 2xx succeeds', () => {
  for (const status of [200, 201, 202, 204, 299]) {
    assert.deepEqual(decide({ kind: 'response', status }, 99), { kind: 'succeeded' });
  }
});

test('3xx, 4xx, 5xx, 1xx and connection errors retry per the schedule', () => {
  for (const status of [100, 199, 300, 301, 302, 304, 400, 404, 410, 500, 502, 599]) {
    assert.equal(retryDelay(decide({ kind: 'response', status })), 5_000, String(status));
  }
  assert.equal(retryDelay(decide({ kind: 'error', blocked: false }, 2)), 300_000);
});

test('exhausted schedule fails; blocked destinations fail at once', () => {
  assert.deepEqual(decide({ kind: 'response', status: 500 }, 4), { kind: 'failed' });
  assert.deepEqual(decide({ kind: 'error', blocked: false }, 4), { kind: 'failed' });
  assert.deepEqual(decide({ kind: 'error', blocked: true }, 1), { kind: 'failed' });
  assert.deepEqual(
    decideOutcome({ result: { kind: 'response', status: 500 }, attemptsMade: 1, schedule: [], now: NOW, expiresAt: FAR }),
    { kind: 'failed' },
  );
});

test('Retry-After on 429 and 503 overrides the schedule, clamped to [1 s, 24 h]', () => {
  assert.equal(retryDelay(decide({ kind: 'response', status: 429, retryAfterMs: 120_000 })), 120_000);
  assert.equal(retryDelay(decide({ kind: 'response', status: 503, retryAfterMs: 60_000 }, 3)), 60_000);
  assert.equal(retryDelay(decide({ kind: 'response', status: 429, retryAfterMs: 0 })), MIN_RETRY_AFTER_MS);
  assert.equal(
    retryDelay(decide({ kind: 'response', status: 429, retryAfterMs: 7 * MAX_RETRY_AFTER_MS })),
    MAX_RETRY_AFTER_MS,
  );
  // Other statuses ignore it.
  assert.equal(retryDelay(decide({ kind: 'response', status: 500, retryAfterMs: 120_000 })), 5_000);
  assert.equal(retryDelay(decide({ kind: 'response', status: 302, retryAfterMs: 120_000 })), 5_000);
  // It does not extend the number of attempts.
  assert.deepEqual(decide({ kind: 'response', status: 429, retryAfterMs: 1_000 }, 4), { kind: 'failed' });
});

test('a retry that would land after the TTL expires the delivery', () => {
  const soon = new Date(NOW.getTime() + 4_000);
  assert.deepEqual(decide({ kind: 'response', status: 500 }, 1, soon), { kind: 'expired' });
  assert.deepEqual(decide({ kind: 'error', blocked: false }, 1, new Date(NOW.getTime() - 1)), { kind: 'expired' });
  assert.equal(retryDelay(decide({ kind: 'response', status: 500 }, 1, new Date(NOW.getTime() + 5_000))), 5_000);
  assert.deepEqual(
    decide({ kind: 'response', status: 429, retryAfterMs: 86_400_000 }, 1, new Date(NOW.getTime() + 3_600_000)),
    { kind: 'expired' },
  );
  // Success still counts after the TTL.
  assert.deepEqual(decide({ kind: 'response', status: 200 }, 1, new Date(0)), { kind: 'succeeded' });
});

test('deliveryStatusAfter maps every outcome', () => {
  assert.equal(deliveryStatusAfter({ kind: 'succeeded' }), 'succeeded');
  assert.equal(deliveryStatusAfter({ kind: 'retry', at: NOW }), 'pending');
  assert.equal(deliveryStatusAfter({ kind: 'failed' }), 'failed');
  assert.equal(deliveryStatusAfter({ kind: 'expired' }), 'expired');
});

test('parseRetryAfter reads delta-seconds and HTTP-dates', () => {
  assert.equal(parseRetryAfter('120', NOW), 120_000);
  assert.equal(parseRetryAfter(' 0 ', NOW), 0);
  assert.equal(parseRetryAfter('Wed, 01 May 2024 12:01:30 GMT', NOW), 90_000);
  assert.equal(parseRetryAfter('Wednesday, 01-May-24 12:00:10 GMT', NOW), 10_000);
  assert.equal(parseRetryAfter('Wed May  1 12:00:05 2024', NOW), 5_000);
  assert.equal(parseRetryAfter('Tue, 30 Apr 2024 12:00:00 GMT', NOW), 0); // in the past
  assert.equal(parseRetryAfter('9'.repeat(40), NOW), MAX_RETRY_AFTER_MS);
});

test('parseRetryAfter ignores absent and malformed values', () => {
  for (const bad of [undefined, '', '-5', '1.5', '1e3', 'soon', '12-13 GMT', 'Wed, 01 May 2024 12:01:30 +0100', 'Wed, 99 Foo 2024 12:01:30 GMT']) {
    assert.equal(parseRetryAfter(bad, NOW), undefined, String(bad));
  }
});
